//! What the store knows about one segment, and its compact binary record,
//! shared by the index log and the segment file's extended attribute.

use serde::Serialize;

use crate::camera::CameraId;
use crate::units::Timestamp;

/// Longest peer name an origin may carry.
pub const MAX_ORIGIN_LEN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentState {
    /// Every byte is durable and hashes to `blake3`.
    Complete,
    /// A reserved file of the right size, no verified bytes yet; `blake3` is
    /// the source's hash.
    Placeholder,
    /// Some blocks are verified and durable; `blake3` is the source's hash.
    Partial,
}

impl SegmentState {
    fn code(self) -> u8 {
        match self {
            Self::Complete => 1,
            Self::Placeholder => 2,
            Self::Partial => 3,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::Complete,
            2 => Self::Placeholder,
            3 => Self::Partial,
            _ => return None,
        })
    }
}

/// Where a segment's bytes came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Recorded on this server.
    Local,
    /// Backfilled from the named peer.
    Peer(String),
}

impl Serialize for Origin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Origin::Local => s.serialize_str("local"),
            Origin::Peer(p) => s.serialize_str(&format!("peer:{p}")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentMeta {
    pub camera: CameraId,
    pub start: Timestamp,
    pub duration_us: u64,
    pub len: u64,
    pub blake3: blake3::Hash,
    pub state: SegmentState,
    pub origin: Origin,
    /// What the recorder says of the segment besides its bytes (Frigate's
    /// motion, objects, dBFS, regions), as the recorder's adapter wrote it:
    /// a JSON object of at most [`MAX_NOTES_LEN`] bytes. Carried from a
    /// peer's coverage to the reservation, for the adapter to keep with the
    /// installed copy. Never part of the segment's identity.
    pub notes: Option<std::sync::Arc<str>>,
}

/// Longest recorder notes a segment carries (the wire's limit).
pub const MAX_NOTES_LEN: usize = 255;

impl SegmentMeta {
    pub fn end(&self) -> Timestamp {
        self.start.add_micros(self.duration_us as i64)
    }

    pub fn interval(&self) -> (i64, i64) {
        (self.start.0, self.end().0)
    }
}

/// The JSON shape of a segment, as `store ls` and `plan` print it.
#[derive(Debug, Serialize)]
pub struct SegmentJson<'a> {
    pub camera: &'a CameraId,
    pub start: String,
    pub start_us: i64,
    pub duration_us: u64,
    pub bytes: u64,
    pub blake3: String,
    pub state: SegmentState,
    pub origin: &'a Origin,
}

impl<'a> From<&'a SegmentMeta> for SegmentJson<'a> {
    fn from(m: &'a SegmentMeta) -> Self {
        SegmentJson {
            camera: &m.camera,
            start: m.start.to_string(),
            start_us: m.start.0,
            duration_us: m.duration_us,
            bytes: m.len,
            blake3: m.blake3.to_hex().to_string(),
            state: m.state,
            origin: &m.origin,
        }
    }
}

/// The camera-less part of a segment's metadata, as encoded on disk.
///
/// ```text
/// u8      version (1)
/// u8      kind: 1 = put, 2 = remove
/// i64 LE  start, microseconds since the Unix epoch
/// u64 LE  duration, microseconds
/// u64 LE  length in bytes
/// [32]    BLAKE3 of the bytes (for placeholder and partial: the source's)
/// u8      state: 1 complete, 2 placeholder, 3 partial
/// u8      origin length n (0 = recorded here), then n bytes of peer name
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub start: Timestamp,
    pub duration_us: u64,
    pub len: u64,
    pub blake3: blake3::Hash,
    pub state: SegmentState,
    pub origin: Origin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Put,
    Remove,
}

const RECORD_VERSION: u8 = 1;
const FIXED_LEN: usize = 1 + 1 + 8 + 8 + 8 + 32 + 1 + 1;
pub const MAX_RECORD_LEN: usize = FIXED_LEN + MAX_ORIGIN_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("record is {0} bytes, expected {FIXED_LEN} to {MAX_RECORD_LEN}")]
    Length(usize),
    #[error("record version {0} is not supported (this build reads version {RECORD_VERSION})")]
    Version(u8),
    #[error("record has unknown kind {0}")]
    Kind(u8),
    #[error("record has unknown state {0}")]
    State(u8),
    #[error("record origin is not valid UTF-8 of the declared length")]
    Origin,
    #[error("record has a negative duration or a start outside years 1970 to 9999")]
    Time,
}

impl Record {
    pub fn put(m: &SegmentMeta) -> Self {
        Record {
            kind: RecordKind::Put,
            start: m.start,
            duration_us: m.duration_us,
            len: m.len,
            blake3: m.blake3,
            state: m.state,
            origin: m.origin.clone(),
        }
    }

    pub fn into_meta(self, camera: CameraId) -> SegmentMeta {
        SegmentMeta {
            camera,
            start: self.start,
            duration_us: self.duration_us,
            len: self.len,
            blake3: self.blake3,
            state: self.state,
            origin: self.origin,
            notes: None,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(RECORD_VERSION);
        out.push(match self.kind {
            RecordKind::Put => 1,
            RecordKind::Remove => 2,
        });
        out.extend_from_slice(&self.start.0.to_le_bytes());
        out.extend_from_slice(&self.duration_us.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(self.blake3.as_bytes());
        out.push(self.state.code());
        match &self.origin {
            Origin::Local => out.push(0),
            Origin::Peer(p) => {
                // Peer names are validated at config load; clamp defensively.
                let b = &p.as_bytes()[..p.len().min(MAX_ORIGIN_LEN)];
                out.push(b.len() as u8);
                out.extend_from_slice(b);
            }
        }
    }

    pub fn decode(b: &[u8]) -> Result<Self, RecordError> {
        if b.len() < FIXED_LEN || b.len() > MAX_RECORD_LEN {
            return Err(RecordError::Length(b.len()));
        }
        if b[0] != RECORD_VERSION {
            return Err(RecordError::Version(b[0]));
        }
        let kind = match b[1] {
            1 => RecordKind::Put,
            2 => RecordKind::Remove,
            k => return Err(RecordError::Kind(k)),
        };
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            a
        };
        let start = Timestamp(i64::from_le_bytes(u64_at(2)));
        let duration_us = u64::from_le_bytes(u64_at(10));
        let len = u64::from_le_bytes(u64_at(18));
        let mut h = [0u8; 32];
        h.copy_from_slice(&b[26..58]);
        let state = SegmentState::from_code(b[58]).ok_or(RecordError::State(b[58]))?;
        let n = b[59] as usize;
        if b.len() != FIXED_LEN + n {
            return Err(RecordError::Origin);
        }
        let origin = if n == 0 {
            Origin::Local
        } else {
            let s = std::str::from_utf8(&b[FIXED_LEN..]).map_err(|_| RecordError::Origin)?;
            Origin::Peer(s.to_string())
        };
        if !(crate::units::MIN_TIME..=crate::units::MAX_TIME).contains(&start)
            || duration_us > i64::MAX as u64
        {
            return Err(RecordError::Time);
        }
        Ok(Record {
            kind,
            start,
            duration_us,
            len,
            blake3: blake3::Hash::from_bytes(h),
            state,
            origin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn record_round_trips(start in 0i64..253_402_300_799_999_999, dur in 0u64..(1<<40), len: u64,
                              h: [u8; 32], st in 1u8..=3, origin in proptest::option::of("[a-z0-9-]{1,64}")) {
            let r = Record {
                kind: RecordKind::Put, start: Timestamp(start), duration_us: dur, len,
                blake3: blake3::Hash::from_bytes(h),
                state: SegmentState::from_code(st).unwrap(),
                origin: origin.map(Origin::Peer).unwrap_or(Origin::Local),
            };
            let mut buf = Vec::new();
            r.encode(&mut buf);
            prop_assert_eq!(Record::decode(&buf), Ok(r));
        }

        #[test]
        fn decode_never_panics(b in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode(&b);
        }
    }
}
