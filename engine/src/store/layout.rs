//! Where things live inside a store directory. A segment's path is a function
//! of camera and start time alone, so two servers that recorded the same
//! segment hold it at the same relative path.
//!
//! ```text
//! STORE/
//!   HAFILL-STORE                                  marker and format version
//!   lock                                          held by the one writer
//!   journal                                       intents of the batch in flight
//!   index/<camera>/<YYYY-MM-DD>.log               index log, one per camera and UTC day
//!   segments/<camera>/<YYYY-MM-DD>/<HH>/<YYYYMMDDTHHMMSS.ffffffZ>.seg
//! ```

use std::path::{Path, PathBuf};

use crate::camera::CameraId;
use crate::units::Timestamp;

pub const MARKER: &str = "HAFILL-STORE";
pub const MARKER_CONTENT: &str = "hafill-store 1\n";
pub const SEGMENT_EXT: &str = "seg";
pub const TMP_SUFFIX: &str = ".tmp";

/// Calendar pieces of a segment's start, UTC.
pub fn day_name(t: Timestamp) -> String {
    let d = t.datetime();
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

/// The day index of `t` since the epoch, for stepping through day files.
pub fn day_number(t: Timestamp) -> i64 {
    t.0.div_euclid(86_400_000_000)
}

pub fn day_start(day: i64) -> Timestamp {
    Timestamp(day * 86_400_000_000)
}

pub fn segment_file_name(start: Timestamp) -> String {
    let d = start.datetime();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:06}Z.{SEGMENT_EXT}",
        d.year(),
        d.month() as u8,
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.microsecond()
    )
}

/// Parses a segment file name back into its start time.
pub fn parse_segment_file_name(name: &str) -> Option<Timestamp> {
    let stem = name.strip_suffix(&format!(".{SEGMENT_EXT}"))?;
    let b = stem.as_bytes();
    if b.len() != 23 || b[8] != b'T' || b[15] != b'.' || b[22] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = stem.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let date = time::Date::from_calendar_date(
        num(0..4)? as i32,
        time::Month::try_from(num(4..6)? as u8).ok()?,
        num(6..8)? as u8,
    )
    .ok()?;
    let tod = time::Time::from_hms_micro(
        num(9..11)? as u8,
        num(11..13)? as u8,
        num(13..15)? as u8,
        num(16..22)?,
    )
    .ok()?;
    let dt = time::PrimitiveDateTime::new(date, tod).assume_utc();
    Some(Timestamp((dt.unix_timestamp_nanos() / 1000) as i64))
}

/// Relative path of a segment inside the store.
pub fn segment_rel_path(camera: &CameraId, start: Timestamp) -> PathBuf {
    segment_dir_rel_path(camera, start).join(segment_file_name(start))
}

/// Relative path of the folder of a segment: one per camera and UTC hour.
pub fn segment_dir_rel_path(camera: &CameraId, start: Timestamp) -> PathBuf {
    let d = start.datetime();
    Path::new("segments")
        .join(camera.as_str())
        .join(day_name(start))
        .join(format!("{:02}", d.hour()))
}

/// The UTC hour of `t` since the epoch: segments with the same camera and
/// hour share a folder.
pub fn hour_number(t: Timestamp) -> i64 {
    t.0.div_euclid(3_600_000_000)
}

pub fn index_rel_path(camera: &CameraId, day: &str) -> PathBuf {
    Path::new("index")
        .join(camera.as_str())
        .join(format!("{day}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for us in [0i64, 1_763_700_000_123_456, 253_402_300_799_999_999] {
            let t = Timestamp(us);
            assert_eq!(parse_segment_file_name(&segment_file_name(t)), Some(t));
        }
        let cam = CameraId::new("cam-0001").unwrap();
        let p = segment_rel_path(&cam, Timestamp(1_763_700_000_123_456));
        assert_eq!(
            p,
            Path::new("segments/cam-0001/2025-11-21/04/20251121T044000.123456Z.seg")
        );
        assert_eq!(parse_segment_file_name("x.seg"), None);
        assert_eq!(parse_segment_file_name("20251321T044000.123456Z.seg"), None);
    }

    proptest::proptest! {
        /// Placeholder batches build one folder per (camera, hour_number):
        /// two starts share a folder exactly when they share an hour number.
        #[test]
        fn a_folder_is_one_camera_hour(
            a in 10_800_000_000i64..4_102_444_800_000_000,
            delta in -10_800_000_000i64..10_800_000_000,
        ) {
            let cam = CameraId::new("cam-0001").unwrap();
            // A second start within three hours of the first, so that both
            // "same folder" and "next folder" come up.
            let b = a + delta;
            let (ta, tb) = (Timestamp(a), Timestamp(b));
            let dir = segment_dir_rel_path(&cam, ta);
            let file = segment_rel_path(&cam, ta);
            proptest::prop_assert_eq!(file.parent(), Some(dir.as_path()));
            proptest::prop_assert_eq!(
                dir == segment_dir_rel_path(&cam, tb),
                hour_number(ta) == hour_number(tb)
            );
            let near = Timestamp(a - a.rem_euclid(3_600_000_000) + (b % 3_600_000_000));
            proptest::prop_assert_eq!(segment_dir_rel_path(&cam, near), dir);
        }
    }
}
