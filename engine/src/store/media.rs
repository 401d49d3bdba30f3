//! A segment file's duration, read cheaply from its container: MP4 from its
//! `mvhd` box (mp4-atom), MPEG-TS from the first and last video
//! timestamps in its head and tail (mpeg2ts-reader). Reads an MPEG-TS
//! file's first and last 512 KiB, and of an MP4 its box headers and its
//! `moov` (at most 16 MiB); never panics on bad input.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use mp4_atom::{Atom, Decode, DecodeAtom, Header, Moov, Mvhd, ReadFrom};
use mpeg2ts_reader::packet::Packet;
use mpeg2ts_reader::pes::{PesContents, PesHeader, PtsDts};

/// The containers hafill reads a duration from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Mp4,
    MpegTs,
}

impl Container {
    /// By the file's extension; None for a container hafill does not read.
    pub fn of(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "mp4" | "m4v" | "mov" => Some(Container::Mp4),
            "ts" | "m2ts" | "mts" => Some(Container::MpegTs),
            _ => None,
        }
    }
}

/// The duration of the segment at `path` in microseconds: Ok(None) for a
/// container hafill does not read, Err when the file is not a whole segment
/// of its container.
pub fn duration_us(path: &Path) -> Result<Option<u64>, String> {
    let Some(kind) = Container::of(path) else {
        return Ok(None);
    };
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    match kind {
        Container::Mp4 => mp4_duration_us(&mut f, len),
        Container::MpegTs => ts_duration_us(&mut f, len).map(Some),
    }
}

/// Largest `moov` read whole.
const MAX_MOOV: u64 = 16 << 20;

/// Ok(None) for a fragmented MP4 (MediaMTX's default): its `mvhd` gives no
/// duration, and the spacing to the next file stands in.
fn mp4_duration_us(f: &mut File, len: u64) -> Result<Option<u64>, String> {
    let err = |e: mp4_atom::Error| format!("not an MP4 segment: {e}");
    // A segment has a handful of top-level boxes; thousands is not one.
    for _ in 0..4096 {
        let header = <Option<Header> as ReadFrom>::read_from(&mut *f)
            .map_err(err)?
            .ok_or(
                "not a whole MP4 segment: it has no moov box (still being written, or cut short)",
            )?;
        let body = f.stream_position().map_err(|e| e.to_string())?;
        let size = header
            .size
            .ok_or("not a whole MP4 segment: a box runs to the end of the file before moov")?
            as u64;
        let end = body
            .checked_add(size)
            .filter(|&e| e <= len)
            .ok_or_else(|| {
                format!(
                    "not a whole MP4 segment: box {} runs past the end",
                    header.kind
                )
            })?;
        if header.kind != Moov::KIND {
            f.seek(SeekFrom::Start(end)).map_err(|e| e.to_string())?;
            continue;
        }
        if size > MAX_MOOV {
            return Err(format!(
                "MP4 moov box of {size} bytes is larger than {MAX_MOOV}"
            ));
        }
        let mut moov = vec![0u8; size as usize];
        f.read_exact(&mut moov).map_err(|e| e.to_string())?;
        let mut buf: &[u8] = &moov;
        while !buf.is_empty() {
            let child = Header::decode(&mut buf).map_err(err)?;
            if child.kind == Mvhd::KIND {
                let m = Mvhd::decode_atom(&child, &mut buf).map_err(err)?;
                if m.timescale == 0 {
                    return Err("MP4 mvhd has a timescale of 0".into());
                }
                if m.duration == 0 || m.duration == u32::MAX as u64 || m.duration == u64::MAX {
                    return Ok(None);
                }
                return u64::try_from(m.duration as u128 * 1_000_000 / m.timescale as u128)
                    .map(Some)
                    .map_err(|_| "MP4 duration overflows".to_string());
            }
            let n = child.size.unwrap_or(buf.len());
            buf = buf.get(n..).ok_or("MP4 moov child runs past moov")?;
        }
        return Err("MP4 moov has no mvhd".into());
    }
    Err("not an MP4 segment: no moov among its first 4096 boxes".into())
}

/// How much of the head and of the tail of an MPEG-TS file is read.
const TS_WINDOW: u64 = 512 * 1024;
/// PTS and DTS count at 90 kHz and wrap at 2^33.
const PTS_MASK: u64 = (1 << 33) - 1;

fn read_window(f: &mut File, off: u64, len: u64) -> Result<Vec<u8>, String> {
    f.seek(SeekFrom::Start(off)).map_err(|e| e.to_string())?;
    let mut v = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut v).map_err(|e| e.to_string())?;
    Ok(v)
}

/// The offset of the first packet in `b`: a window may start mid-packet.
fn sync_offset(b: &[u8]) -> Option<usize> {
    (0..Packet::SIZE).find(|&o| {
        o + Packet::SIZE <= b.len()
            && (0..5)
                .take_while(|k| o + k * Packet::SIZE < b.len())
                .all(|k| b[o + k * Packet::SIZE] == 0x47)
    })
}

/// The (PID, PTS) of every video PES that starts in `b`.
fn video_pts(b: &[u8]) -> Vec<(u16, u64)> {
    let mut out = Vec::new();
    let Some(o) = sync_offset(b) else {
        return out;
    };
    for chunk in b[o..].chunks_exact(Packet::SIZE) {
        let Some(pk) = Packet::try_new(chunk) else {
            continue;
        };
        if !pk.payload_unit_start_indicator() {
            continue;
        }
        let Some(payload) = pk.payload() else {
            continue;
        };
        // Video streams are ids 0xE0-0xEF; no PAT or PMT is needed.
        if payload.len() < 6 || !(0xE0..=0xEF).contains(&payload[3]) {
            continue;
        }
        let Some(h) = PesHeader::from_bytes(payload) else {
            continue;
        };
        if let PesContents::Parsed(Some(p)) = h.contents() {
            let t = match p.pts_dts() {
                Ok(PtsDts::PtsOnly(Ok(t))) | Ok(PtsDts::Both { pts: Ok(t), .. }) => t,
                _ => continue,
            };
            out.push((u16::from(pk.pid()), t.value() & PTS_MASK));
        }
    }
    out
}

/// From the earliest video PTS of the head to the latest of the tail, plus
/// one frame (the smallest step between the tail's timestamps).
fn ts_duration_us(f: &mut File, len: u64) -> Result<u64, String> {
    if len < Packet::SIZE as u64 {
        return Err("not an MPEG-TS segment: shorter than one packet".into());
    }
    let head = video_pts(&read_window(f, 0, len.min(TS_WINDOW))?);
    let &(pid, first) = head
        .first()
        .ok_or("not an MPEG-TS segment: no video timestamps at its start")?;
    let tail = if len <= TS_WINDOW {
        head.clone()
    } else {
        video_pts(&read_window(f, len - TS_WINDOW, TS_WINDOW)?)
    };
    let rel = |x: u64| {
        let d = x.wrapping_sub(first) & PTS_MASK;
        if d >= 1 << 32 {
            d as i64 - (1 << 33)
        } else {
            d as i64
        }
    };
    let start = head
        .iter()
        .filter(|p| p.0 == pid)
        .map(|p| rel(p.1))
        .min()
        .unwrap_or(0);
    let mut t: Vec<i64> = tail
        .iter()
        .filter(|p| p.0 == pid)
        .map(|p| rel(p.1))
        .collect();
    t.sort_unstable();
    t.dedup();
    let end = *t
        .last()
        .ok_or("not an MPEG-TS segment: no video timestamps at its end")?;
    let frame = t
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&d| d > 0 && d <= 90_000)
        .min()
        .unwrap_or(0);
    let span = end - start + frame;
    if span <= 0 {
        return Err("not an MPEG-TS segment: its timestamps do not advance".into());
    }
    Ok(span as u64 * 100 / 9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_segments_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("a.ts", vec![0u8; 10]),
            ("b.ts", vec![0x47u8; 188 * 20]),
            ("c.mp4", b"not a box at all".to_vec()),
            ("d.mp4", vec![]),
            ("e.mp4", [0, 0, 0, 8, b'f', b't', b'y', b'p'].to_vec()),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, &bytes).unwrap();
            assert!(duration_us(&p).is_err(), "{name}");
        }
        let p = dir.path().join("f.mkv");
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(duration_us(&p), Ok(None));
    }
}
