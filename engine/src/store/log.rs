//! The index log: an append-only file of CRC-framed segment records.
//!
//! ```text
//! frame := u32 LE body length | body (a segment::Record) | u32 LE CRC-32 of body
//! ```
//!
//! Later records for the same start supersede earlier ones. A frame cut short
//! by a crash can only be the last one, and is dropped (and truncated away by
//! the next writer); a bad frame followed by more data is damage, reported
//! with its offset so the operator can run `hafill store rebuild`.

use std::collections::BTreeMap;
use std::io;

use super::file::LogFile;
use crate::segment::{Record, RecordKind, MAX_RECORD_LEN};

const FRAME_OVERHEAD: usize = 8;
pub const MAX_FRAME_LEN: usize = MAX_RECORD_LEN + FRAME_OVERHEAD;

pub fn encode_frame(rec: &Record, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    rec.encode(out);
    let body_len = out.len() - at - 4;
    out[at..at + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    let crc = crc32fast::hash(&out[at + 4..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// What a log holds: the live record per start time, and how many bytes of
/// the file are valid.
#[derive(Debug, Default)]
pub struct LogContents {
    pub records: BTreeMap<i64, Record>,
    pub valid_len: u64,
    pub frames: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("damaged at byte {offset}: {reason}")]
pub struct LogDamage {
    pub offset: u64,
    pub reason: String,
}

/// Decodes the frame at the start of `rest`: `None` when `rest` ends inside
/// it, `Some(Err)` when it is whole but wrong, else the record and the
/// frame's length.
pub fn decode_frame(rest: &[u8]) -> Option<Result<(Record, usize), String>> {
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    if len > MAX_RECORD_LEN {
        return Some(Err(format!("frame length {len} exceeds {MAX_RECORD_LEN}")));
    }
    let body = rest.get(4..4 + len)?;
    let crc = u32::from_le_bytes(rest.get(4 + len..8 + len)?.try_into().ok()?);
    if crc32fast::hash(body) != crc {
        return Some(Err("checksum mismatch".to_string()));
    }
    Some(
        Record::decode(body)
            .map(|r| (r, 8 + len))
            .map_err(|e| e.to_string()),
    )
}

/// Decodes a whole log. A torn last frame ends the log, and so do zeros to
/// its end (a power cut after the length reached the disk and before the
/// bytes did); anything else that does not decode is damage.
pub fn decode_log(bytes: &[u8]) -> Result<LogContents, LogDamage> {
    let mut out = LogContents::default();
    let mut pos = 0usize;
    // Records in the order they were appended; a log whose starts only
    // rise and that removes nothing (the usual one) is built in one pass.
    let mut appended: Vec<Record> = Vec::new();
    let mut in_order = true;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let torn_tail_possible = rest.len() < MAX_FRAME_LEN;
        let frame = decode_frame(rest);
        match frame {
            Some(Ok((rec, n))) => {
                in_order &= rec.kind == RecordKind::Put
                    && appended.last().is_none_or(|l| l.start < rec.start);
                appended.push(rec);
                out.frames += 1;
                pos += n;
            }
            // A crash mid-append leaves a short or garbled final frame.
            None => break,
            Some(Err(_)) if torn_tail_possible => break,
            // A power cut mid-append can leave the log's new length durable
            // and not all its bytes: zeros to the end, however many frames
            // long, from a block boundary that may fall inside a frame. So
            // a bad frame after which nothing but zeros follows is torn.
            Some(Err(_))
                if rest
                    .iter()
                    .rposition(|&b| b != 0)
                    .is_none_or(|last| last < MAX_FRAME_LEN) =>
            {
                break
            }
            Some(Err(reason)) => {
                return Err(LogDamage {
                    offset: pos as u64,
                    reason,
                })
            }
        }
    }
    out.valid_len = pos as u64;
    out.records = if in_order {
        appended.into_iter().map(|r| (r.start.0, r)).collect()
    } else {
        // Later records for the same start supersede earlier ones.
        let mut records = BTreeMap::new();
        for rec in appended {
            match rec.kind {
                RecordKind::Put => {
                    records.insert(rec.start.0, rec);
                }
                RecordKind::Remove => {
                    records.remove(&rec.start.0);
                }
            }
        }
        records
    };
    Ok(out)
}

/// Reads a log through `file`, truncating a torn tail so appends continue
/// from a frame boundary.
pub fn open_for_append<F: LogFile>(file: &mut F) -> io::Result<Result<LogContents, LogDamage>> {
    let bytes = file.read_all()?;
    let contents = match decode_log(&bytes) {
        Ok(c) => c,
        Err(d) => return Ok(Err(d)),
    };
    if contents.valid_len < bytes.len() as u64 {
        let dropped = bytes.len() as u64 - contents.valid_len;
        if dropped > MAX_FRAME_LEN as u64 {
            tracing::warn!(
                offset = contents.valid_len,
                bytes = dropped,
                "an index log ends in an append a crash or power cut cut short; its tail is dropped (the journal re-indexes what it named)"
            );
        }
        file.set_len(contents.valid_len)?;
        file.sync_data()?;
    }
    Ok(Ok(contents))
}

/// Appends records and makes them durable.
pub fn append_records<F: LogFile>(file: &mut F, records: &[Record]) -> io::Result<()> {
    write_records(file, records)?;
    file.sync_data()
}

/// Appends records, leaving them to a later sync of the whole filesystem.
pub fn write_records<F: LogFile>(file: &mut F, records: &[Record]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(records.len() * 96);
    for r in records {
        encode_frame(r, &mut buf);
    }
    file.append(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{Origin, SegmentState};
    use crate::units::Timestamp;

    fn rec(start: i64, state: SegmentState) -> Record {
        Record {
            kind: RecordKind::Put,
            start: Timestamp(start),
            duration_us: 60_000_000,
            len: 1000,
            blake3: blake3::hash(&start.to_le_bytes()),
            state,
            origin: Origin::Local,
        }
    }

    /// A file that keeps its bytes in memory and, like a disk losing power,
    /// persists only the first `budget` bytes written; the write that crosses
    /// the budget fails.
    struct CrashingFile {
        data: Vec<u8>,
        budget: usize,
    }

    impl LogFile for CrashingFile {
        fn read_all(&mut self) -> io::Result<Vec<u8>> {
            Ok(self.data.clone())
        }
        fn append(&mut self, buf: &[u8]) -> io::Result<()> {
            let n = buf.len().min(self.budget);
            self.data.extend_from_slice(&buf[..n]);
            self.budget -= n;
            if n < buf.len() {
                return Err(io::Error::other("simulated crash"));
            }
            Ok(())
        }
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            self.data.truncate(len as usize);
            Ok(())
        }
        fn sync_data(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_crash_at_every_byte_leaves_a_prefix_of_whole_records() {
        let first: Vec<Record> = (0..3).map(|i| rec(i, SegmentState::Complete)).collect();
        let second: Vec<Record> = (3..6).map(|i| rec(i, SegmentState::Complete)).collect();
        let mut whole = Vec::new();
        for r in first.iter().chain(&second) {
            encode_frame(r, &mut whole);
        }
        for budget in 0..=whole.len() {
            let mut f = CrashingFile {
                data: Vec::new(),
                budget,
            };
            let ok =
                append_records(&mut f, &first).is_ok() && append_records(&mut f, &second).is_ok();
            assert_eq!(ok, budget == whole.len());
            let contents = open_for_append(&mut f).unwrap().unwrap();
            let n = contents.records.len();
            // Only whole records survive, in order, and nothing invented.
            for (i, (k, r)) in contents.records.iter().enumerate() {
                assert_eq!(*k, i as i64);
                assert_eq!(r, &rec(i as i64, SegmentState::Complete));
            }
            assert_eq!(f.data.len() as u64, contents.valid_len);
            // The writer can continue after recovery.
            f.budget = usize::MAX;
            append_records(&mut f, &[rec(100, SegmentState::Placeholder)]).unwrap();
            let again = decode_log(&f.data).unwrap();
            assert_eq!(again.records.len(), n + 1);
        }
    }

    #[test]
    fn later_records_supersede_and_removals_remove() {
        let mut buf = Vec::new();
        encode_frame(&rec(1, SegmentState::Placeholder), &mut buf);
        encode_frame(&rec(1, SegmentState::Complete), &mut buf);
        encode_frame(&rec(2, SegmentState::Complete), &mut buf);
        let mut rm = rec(2, SegmentState::Complete);
        rm.kind = RecordKind::Remove;
        encode_frame(&rm, &mut buf);
        let c = decode_log(&buf).unwrap();
        assert_eq!(c.records.len(), 1);
        assert_eq!(c.records[&1].state, SegmentState::Complete);
    }

    #[test]
    fn damage_in_the_middle_is_reported_with_its_offset() {
        let mut buf = Vec::new();
        for i in 0..50 {
            encode_frame(&rec(i, SegmentState::Complete), &mut buf);
        }
        let frame_len = buf.len() / 50;
        buf[frame_len * 3 + 10] ^= 0xff;
        let err = decode_log(&buf).unwrap_err();
        assert_eq!(err.offset, (frame_len * 3) as u64);
    }

    #[test]
    fn zeros_to_the_end_are_a_power_cut_not_damage() {
        let mut buf = Vec::new();
        for i in 0..3 {
            encode_frame(&rec(i, SegmentState::Complete), &mut buf);
        }
        let good = buf.len();
        // Many frames' worth of zeros: the length of a batch append reached
        // the disk, its bytes did not.
        buf.resize(good + 40 * MAX_FRAME_LEN, 0);
        let c = decode_log(&buf).unwrap();
        assert_eq!((c.records.len(), c.valid_len), (3, good as u64));
        // A frame torn at a block boundary: its head, then zeros.
        let mut torn = buf[..good].to_vec();
        let mut frame = Vec::new();
        encode_frame(&rec(9, SegmentState::Complete), &mut frame);
        torn.extend_from_slice(&frame[..frame.len() / 2]);
        torn.resize(good + 5 * 4096, 0);
        let c = decode_log(&torn).unwrap();
        assert_eq!((c.records.len(), c.valid_len), (3, good as u64));
        // Zeros followed by anything else are damage.
        let last = buf.len() - 1;
        buf[last] = 1;
        assert_eq!(decode_log(&buf).unwrap_err().offset, good as u64);
    }
}
