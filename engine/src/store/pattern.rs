//! The file names of a `segments` recorder: `[recorder] pattern`, a path
//! relative to the recorder's folder in which `{camera}` is the camera's
//! local name and strftime-like fields are the segment's start.
//!
//! | field | meaning | width |
//! |---|---|---|
//! | `{camera}` | the camera's name on this server (one path component or part of one) | 1 or more |
//! | `%Y` `%m` `%d` `%H` `%M` `%S` | year, month, day, hour, minute, second of the start | 4, 2, 2, 2, 2, 2 |
//! | `%f` | microseconds of the start | 6 |
//! | `%z` | the offset from UTC the names are written in (`+0100`); UTC without it | 5 |
//! | `%%` | a `%` | 1 |
//!
//! Those are the fields ffmpeg's segment muxer (`-strftime 1`) and MediaMTX
//! (`recordPath`) write. A name is read back only when it matches the whole
//! pattern; anything else in the folder is not a segment and is ignored.

use std::path::PathBuf;

use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};

use crate::units::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(char),
    Camera,
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Micros,
    Offset,
}

impl Part {
    fn width(&self) -> usize {
        match self {
            Part::Year => 4,
            Part::Micros => 6,
            Part::Offset => 5,
            _ => 2,
        }
    }
}

/// A checked `[recorder] pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentPattern {
    text: String,
    parts: Vec<Part>,
}

/// What is wrong with a pattern; the message names the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    #[error("pattern {0:?} has no {{camera}}: every camera's files must be told apart, e.g. \"{{camera}}/%Y%m%d-%H%M%S.ts\"")]
    NoCamera(String),
    #[error("pattern {0:?} names {{camera}} more than once")]
    CameraTwice(String),
    #[error("pattern {0:?} lacks {1} of the segment's start: it needs %Y, %m, %d, %H, %M and %S")]
    NoStart(String, String),
    #[error("pattern {0:?} uses %{1}: the fields are %Y %m %d %H %M %S %f %z and %%")]
    UnknownField(String, char),
    #[error("pattern {0:?} must be a relative path inside the recorder's folder, without '..' or empty components")]
    NotRelative(String),
    #[error("pattern {0:?} names the same field twice")]
    FieldTwice(String),
}

impl SegmentPattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let t = || text.to_string();
        if text.starts_with('/')
            || text.ends_with('/')
            || text
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(PatternError::NotRelative(t()));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("{camera}") {
                parts.push(Part::Camera);
                rest = after;
                continue;
            }
            rest = &rest[c.len_utf8()..];
            if c != '%' {
                parts.push(Part::Literal(c));
                continue;
            }
            let f = rest.chars().next().unwrap_or('%');
            rest = &rest[f.len_utf8().min(rest.len())..];
            parts.push(match f {
                'Y' => Part::Year,
                'm' => Part::Month,
                'd' => Part::Day,
                'H' => Part::Hour,
                'M' => Part::Minute,
                'S' => Part::Second,
                'f' => Part::Micros,
                'z' => Part::Offset,
                '%' => Part::Literal('%'),
                other => return Err(PatternError::UnknownField(t(), other)),
            });
        }
        match parts.iter().filter(|p| **p == Part::Camera).count() {
            0 => return Err(PatternError::NoCamera(t())),
            1 => {}
            _ => return Err(PatternError::CameraTwice(t())),
        }
        let needed = [
            (Part::Year, "%Y"),
            (Part::Month, "%m"),
            (Part::Day, "%d"),
            (Part::Hour, "%H"),
            (Part::Minute, "%M"),
            (Part::Second, "%S"),
        ];
        let missing: Vec<&str> = needed
            .iter()
            .filter(|(p, _)| !parts.contains(p))
            .map(|(_, n)| *n)
            .collect();
        if !missing.is_empty() {
            return Err(PatternError::NoStart(t(), missing.join(", ")));
        }
        for f in [
            Part::Year,
            Part::Month,
            Part::Day,
            Part::Hour,
            Part::Minute,
            Part::Second,
            Part::Micros,
            Part::Offset,
        ] {
            if parts.iter().filter(|p| **p == f).count() > 1 {
                return Err(PatternError::FieldTwice(t()));
            }
        }
        Ok(SegmentPattern {
            text: text.to_string(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The relative path of `camera`'s segment starting at `start`. Without
    /// `%f` the start is cut to the second.
    pub fn expand(&self, camera: &str, start: Timestamp) -> PathBuf {
        let secs = start.0.div_euclid(1_000_000);
        let micros = start.0.rem_euclid(1_000_000);
        let dt = time::OffsetDateTime::from_unix_timestamp(secs)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let mut s = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(c) => s.push(*c),
                Part::Camera => s.push_str(camera),
                Part::Year => s.push_str(&format!("{:04}", dt.year())),
                Part::Month => s.push_str(&format!("{:02}", u8::from(dt.month()))),
                Part::Day => s.push_str(&format!("{:02}", dt.day())),
                Part::Hour => s.push_str(&format!("{:02}", dt.hour())),
                Part::Minute => s.push_str(&format!("{:02}", dt.minute())),
                Part::Second => s.push_str(&format!("{:02}", dt.second())),
                Part::Micros => s.push_str(&format!("{micros:06}")),
                Part::Offset => s.push_str("+0000"),
            }
        }
        PathBuf::from(s)
    }

    /// The folder (relative) under which every file of `camera` lies: the
    /// pattern's leading components that hold no time field.
    pub fn camera_root(&self, camera: &str) -> PathBuf {
        let mut root = PathBuf::new();
        let mut component = String::new();
        for p in &self.parts {
            match p {
                Part::Literal('/') => {
                    root.push(&component);
                    component.clear();
                }
                Part::Literal(c) => component.push(*c),
                Part::Camera => component.push_str(camera),
                _ => return root,
            }
        }
        root
    }

    /// How many path components a segment's name has.
    pub fn depth(&self) -> usize {
        1 + self
            .parts
            .iter()
            .filter(|p| **p == Part::Literal('/'))
            .count()
    }

    /// Reads a relative path (with '/' separators) back: the camera's local
    /// name and the start. None when the path is not one of this pattern's
    /// names (or names no valid time).
    pub fn parse_name(&self, rel: &str) -> Option<(String, Timestamp)> {
        let mut f = Fields::default();
        if !match_parts(&self.parts, rel.as_bytes(), &mut f) {
            return None;
        }
        let date =
            Date::from_calendar_date(f.year?, Month::try_from(f.month?).ok()?, f.day?).ok()?;
        let t = Time::from_hms_micro(f.hour?, f.minute?, f.second?, f.micros.unwrap_or(0)).ok()?;
        let offset = UtcOffset::from_whole_seconds(f.offset_secs.unwrap_or(0)).ok()?;
        let at = PrimitiveDateTime::new(date, t).assume_offset(offset);
        let us = at.unix_timestamp() * 1_000_000 + at.microsecond() as i64;
        Some((f.camera?, Timestamp(us)))
    }
}

#[derive(Debug, Default, Clone)]
struct Fields {
    camera: Option<String>,
    year: Option<i32>,
    month: Option<u8>,
    day: Option<u8>,
    hour: Option<u8>,
    minute: Option<u8>,
    second: Option<u8>,
    micros: Option<u32>,
    offset_secs: Option<i32>,
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.iter().all(u8::is_ascii_digit) {
        std::str::from_utf8(s).ok()?.parse().ok()
    } else {
        None
    }
}

/// Matches `parts` against all of `s`, filling `f`. `{camera}` takes one or
/// more bytes other than '/', as few or as many as the rest needs.
fn match_parts(parts: &[Part], s: &[u8], f: &mut Fields) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return s.is_empty();
    };
    match first {
        Part::Literal(c) => {
            let mut buf = [0u8; 4];
            let lit = c.encode_utf8(&mut buf).as_bytes();
            s.starts_with(lit) && match_parts(rest, &s[lit.len()..], f)
        }
        Part::Camera => {
            for end in 1..=s.len() {
                if s[end - 1] == b'/' {
                    return false;
                }
                let mut g = f.clone();
                if match_parts(rest, &s[end..], &mut g) {
                    let Ok(name) = std::str::from_utf8(&s[..end]) else {
                        return false;
                    };
                    g.camera = Some(name.to_string());
                    *f = g;
                    return true;
                }
            }
            false
        }
        Part::Offset => {
            if s.len() < 5 {
                return false;
            }
            let sign = match s[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return false,
            };
            let (Some(h), Some(m)) = (digits(&s[1..3]), digits(&s[3..5])) else {
                return false;
            };
            if h > 23 || m > 59 {
                return false;
            }
            f.offset_secs = Some(sign * (h as i32 * 3600 + m as i32 * 60));
            match_parts(rest, &s[5..], f)
        }
        field => {
            let w = field.width();
            if s.len() < w {
                return false;
            }
            let Some(v) = digits(&s[..w]) else {
                return false;
            };
            match field {
                Part::Year => f.year = Some(v as i32),
                Part::Month => f.month = u8::try_from(v).ok(),
                Part::Day => f.day = u8::try_from(v).ok(),
                Part::Hour => f.hour = u8::try_from(v).ok(),
                Part::Minute => f.minute = u8::try_from(v).ok(),
                Part::Second => f.second = u8::try_from(v).ok(),
                Part::Micros => f.micros = Some(v),
                _ => {}
            }
            match_parts(rest, &s[w..], f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse(s, Timestamp(0)).unwrap()
    }

    #[test]
    fn names_round_trip() {
        for text in [
            "{camera}/%Y%m%d-%H%M%S.ts",
            "{camera}/%Y-%m-%d/%H/%M-%S.mp4",
            "rec_{camera}_%Y-%m-%d_%H-%M-%S-%f.mp4",
        ] {
            let p = SegmentPattern::parse(text).unwrap();
            let t = at("2026-12-01T22:30:05.123456Z");
            let name = p.expand("c-lobby_2", t);
            let (cam, back) = p.parse_name(name.to_str().unwrap()).unwrap();
            assert_eq!(cam, "c-lobby_2", "{text}");
            let want = if text.contains("%f") {
                t
            } else {
                at("2026-12-01T22:30:05Z")
            };
            assert_eq!(back, want, "{text}");
        }
    }

    #[test]
    fn reads_an_offset() {
        let p = SegmentPattern::parse("{camera}/%Y%m%d-%H%M%S%z.ts").unwrap();
        let (_, t) = p.parse_name("a/20261202-013000+0100.ts").unwrap();
        assert_eq!(t, at("2026-12-02T00:30:00Z"));
    }

    #[test]
    fn other_names_are_not_segments() {
        let p = SegmentPattern::parse("{camera}/%Y%m%d-%H%M%S.ts").unwrap();
        for name in [
            "a/20261202-013000.mp4",
            "a/20261302-013000.ts",
            "a/2026120-0130000.ts",
            "a/b/20261202-013000.ts",
            "20261202-013000.ts",
            "a/20261202-016000.ts",
            "a/20261202-013000.ts.tmp",
        ] {
            assert_eq!(p.parse_name(name), None, "{name}");
        }
    }

    #[test]
    fn bad_patterns_say_what_is_missing() {
        assert!(matches!(
            SegmentPattern::parse("%Y%m%d-%H%M%S.ts"),
            Err(PatternError::NoCamera(_))
        ));
        match SegmentPattern::parse("{camera}/%Y%m%d.ts") {
            Err(PatternError::NoStart(_, m)) => assert_eq!(m, "%H, %M, %S"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            SegmentPattern::parse("{camera}/%Y%m%d-%H%M%S-%q.ts"),
            Err(PatternError::UnknownField(_, 'q'))
        ));
        for bad in ["/abs/{camera}/%Y%m%d%H%M%S", "../{camera}/%Y%m%d%H%M%S"] {
            assert!(
                matches!(
                    SegmentPattern::parse(bad),
                    Err(PatternError::NotRelative(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_camera_root_is_the_fixed_prefix() {
        let p = SegmentPattern::parse("rec/{camera}/%Y-%m-%d/%H/%M-%S.mp4").unwrap();
        assert_eq!(p.camera_root("lobby"), PathBuf::from("rec/lobby"));
        assert_eq!(p.depth(), 5);
        let q = SegmentPattern::parse("{camera}_%Y%m%d%H%M%S.ts").unwrap();
        assert_eq!(q.camera_root("lobby"), PathBuf::new());
    }
}
