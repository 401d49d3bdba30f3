//! Camera identifiers. A camera id becomes a directory name in the store, so
//! it is checked once, here, and every other module holds a [`CameraId`].

use std::fmt;

/// Longest camera id accepted, in bytes.
pub const MAX_CAMERA_ID_LEN: usize = 64;

/// A camera id that is safe to use as one path component: 1 to 64 ASCII
/// letters, digits, `-`, `_` or `.`, not starting with `.`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct CameraId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CameraIdError {
    #[error("camera id is empty")]
    Empty,
    #[error("camera id {0:?} is longer than {MAX_CAMERA_ID_LEN} bytes")]
    TooLong(String),
    #[error("camera id {0:?} starts with '.'; ids use letters, digits, '-', '_' and '.' and must not start with '.'")]
    LeadingDot(String),
    #[error(
        "camera id {0:?} contains {1:?}; ids use only ASCII letters, digits, '-', '_' and '.'"
    )]
    BadChar(String, char),
}

impl CameraId {
    pub fn new(s: impl Into<String>) -> Result<Self, CameraIdError> {
        let s = s.into();
        if s.is_empty() {
            return Err(CameraIdError::Empty);
        }
        if s.len() > MAX_CAMERA_ID_LEN {
            return Err(CameraIdError::TooLong(s));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(CameraIdError::BadChar(s, c));
        }
        if s.starts_with('.') {
            return Err(CameraIdError::LeadingDot(s));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CameraId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for CameraId {
    type Err = CameraIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids() {
        for ok in ["cam-0001", "lobby_2", "192.168.1.10", "a"] {
            assert!(CameraId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_anything_that_could_leave_its_directory() {
        let long = "x".repeat(65);
        for bad in [
            "", "..", ".", ".hidden", "a/b", "/etc", "a\\b", "a\0b", "cam 1",
            "cаm", // Cyrillic а
            &long,
        ] {
            assert!(CameraId::new(bad).is_err(), "{bad:?}");
        }
    }
}
