//! Each segment's block list (the BLAKE3 chaining values of its blocks),
//! kept once it is known, so that serving a segment needs no hashing pass
//! over its file before the header: the list is made when the segment
//! arrives (its blocks verified as they come) or the first time it is
//! served. The serving side sends the list and the blocks as it reads
//! them, unhashed; a file that changed since is found by its receiver,
//! which says which block (see `transfer::server`), and its list is then
//! forgotten here.
//!
//! One small file per segment,
//! `<dir>/<camera>/<YYYY-MM-DD>/<start_us>-<BLAKE3 hex>`: `HOB1`, the
//! block size, the segment's length and its file's
//! modification time in nanoseconds (little-endian u32, u64, i64), then
//! the chaining values. It is a cache: a list is used only if the file's
//! length and modification time are still those and its chaining values
//! merge into the segment's BLAKE3, so a lost, torn or stale list, or a
//! file rewritten since, costs one hashing pass and nothing else. It is written to a temporary name and renamed, with
//! no `fsync`. A list longer than [`MAX_KEPT`] blocks is kept at a coarser
//! block size (merged), from which any larger size is derived; a fetch of
//! smaller blocks than the kept ones is hashed.
//!
//! When a day's folder of a camera is made, that camera's folders older
//! than the retention (and a day) are removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hafill_protocol::{block_count, tree, valid_block_size};

use crate::segment::SegmentMeta;
use crate::store::traits::UNKNOWN_HASH;

const MAGIC: &[u8; 4] = b"HOB1";
const HEADER: usize = 24;
/// Blocks kept per segment at most (32 KiB of chaining values), up to
/// segments of 16 GiB (past that, a list of 16 MiB blocks, the largest, is
/// longer): a segment of up to 1 GiB in 1 MiB blocks (the default) is kept
/// as it arrived.
pub const MAX_KEPT: usize = 1024;

/// The most bytes the kept list of a segment of `len` bytes takes on disk,
/// whatever block size it arrives in (the smallest gives the most blocks,
/// up to [`MAX_KEPT`]): what a placeholder's budget counts for it, so that
/// the lists of filled segments do not eat into the reserve.
pub fn most_bytes(len: u64) -> u64 {
    use hafill_protocol::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
    // Past 16 GiB even the largest blocks are more than MAX_KEPT.
    let blocks = block_count(len, MIN_BLOCK_SIZE)
        .min(MAX_KEPT as u64)
        .max(block_count(len, MAX_BLOCK_SIZE));
    HEADER as u64 + 32 * blocks
}

/// The kept block lists of one store (or one recorder's state).
#[derive(Debug, Clone)]
pub struct Outboards {
    dir: PathBuf,
    keep_days: i64,
}

impl Outboards {
    /// Lists under `dir`, kept `retention_days` (and a day more).
    pub fn new(dir: PathBuf, retention_days: u64) -> Outboards {
        Outboards {
            dir,
            keep_days: retention_days.min(100_000) as i64 + 1,
        }
    }

    fn day_dir(&self, meta: &SegmentMeta) -> PathBuf {
        self.dir
            .join(meta.camera.as_str())
            .join(super::layout::day_name(meta.start))
    }

    fn path(&self, meta: &SegmentMeta) -> PathBuf {
        self.day_dir(meta)
            .join(format!("{}-{}", meta.start.0, meta.blake3.to_hex()))
    }

    /// The chaining values of `meta`'s blocks of `block_size`, if its list
    /// is kept at that size or a smaller one, for its file as it is now
    /// (modified at `mtime_ns`), and still merges into its BLAKE3.
    pub fn get(&self, meta: &SegmentMeta, block_size: u32, mtime_ns: i64) -> Option<Vec<[u8; 32]>> {
        if meta.blake3 == UNKNOWN_HASH || !valid_block_size(block_size) {
            return None;
        }
        let bytes = fs::read(self.path(meta)).ok()?;
        let (kept_size, cvs) = decode(&bytes, meta.len, mtime_ns)?;
        if block_size < kept_size || tree::root_of(&cvs)? != meta.blake3 {
            return None;
        }
        Some(tree::coarser(&cvs, (block_size / kept_size) as usize))
    }

    /// Forgets `meta`'s kept list (its file no longer matches it).
    pub fn forget(&self, meta: &SegmentMeta) {
        let _ = fs::remove_file(self.path(meta));
    }

    /// Keeps `cvs`, the chaining values of `meta`'s blocks of `block_size`
    /// (checked: they must merge into its BLAKE3), for its file as it is
    /// now (modified at `mtime_ns`). A failure is logged: it only costs a
    /// hashing pass later.
    pub fn put(&self, meta: &SegmentMeta, block_size: u32, cvs: &[[u8; 32]], mtime_ns: i64) {
        if meta.blake3 == UNKNOWN_HASH
            || !valid_block_size(block_size)
            || cvs.len() as u64 != block_count(meta.len, block_size)
            || tree::root_of(cvs) != Some(meta.blake3)
        {
            return;
        }
        let (mut size, mut cvs) = (block_size, cvs.to_vec());
        while cvs.len() > MAX_KEPT && valid_block_size(size * 2) {
            cvs = tree::coarser(&cvs, 2);
            size *= 2;
        }
        if let Err(e) = self.write(meta, size, &cvs, mtime_ns) {
            tracing::debug!(camera = %meta.camera, start = %meta.start, "block list not kept: {e}");
        }
    }

    fn write(
        &self,
        meta: &SegmentMeta,
        block_size: u32,
        cvs: &[[u8; 32]],
        mtime_ns: i64,
    ) -> io::Result<()> {
        let day = self.day_dir(meta);
        if !day.is_dir() {
            // Never a store or state folder of its own: on a volume that is
            // not mounted, nothing is made.
            if !self.dir.parent().is_some_and(Path::is_dir) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: its folder is not there", self.dir.display()),
                ));
            }
            fs::create_dir_all(&day)?;
            if let Some(camera) = day.parent() {
                self.prune(camera, meta);
            }
        }
        let path = self.path(meta);
        let mut bytes = Vec::with_capacity(HEADER + 32 * cvs.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&block_size.to_le_bytes());
        bytes.extend_from_slice(&meta.len.to_le_bytes());
        bytes.extend_from_slice(&mtime_ns.to_le_bytes());
        for cv in cvs {
            bytes.extend_from_slice(cv);
        }
        // A name of this process's own, so that a serving and a filling
        // process never write into one file.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = day.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let written = fs::write(&tmp, &bytes).and_then(|()| fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// Removes `camera`'s day folders older than the retention and a day
    /// before `newest` (a day older than others removes nothing newer).
    fn prune(&self, camera: &Path, newest: &SegmentMeta) {
        let cutoff = newest
            .start
            .0
            .saturating_sub(self.keep_days.saturating_mul(86_400_000_000));
        let cutoff = super::layout::day_name(crate::units::Timestamp(cutoff));
        let cutoff = cutoff.as_str();
        let Ok(days) = fs::read_dir(camera) else {
            return;
        };
        for d in days.flatten() {
            let name = d.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() == 10 && name < cutoff {
                let _ = fs::remove_dir_all(d.path());
            }
        }
    }
}

/// Block size and chaining values of a kept list for a segment of `len`
/// bytes whose file was modified at `mtime_ns`; None if it is not one.
fn decode(bytes: &[u8], len: u64, mtime_ns: i64) -> Option<(u32, Vec<[u8; 32]>)> {
    if bytes.len() < HEADER || &bytes[..4] != MAGIC || !(bytes.len() - HEADER).is_multiple_of(32) {
        return None;
    }
    let block_size = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
    let kept_len = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let kept_mtime = i64::from_le_bytes(bytes[16..24].try_into().ok()?);
    if kept_len != len || kept_mtime != mtime_ns || !valid_block_size(block_size) {
        return None;
    }
    let cvs: Vec<[u8; 32]> = bytes[HEADER..]
        .chunks_exact(32)
        .filter_map(|c| c.try_into().ok())
        .collect();
    (cvs.len() as u64 == block_count(len, block_size)).then_some((block_size, cvs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::CameraId;
    use crate::segment::{Origin, SegmentState};
    use crate::units::Timestamp;

    fn segment(start_s: i64, data: &[u8]) -> SegmentMeta {
        SegmentMeta {
            camera: CameraId::new("cam-1").unwrap(),
            start: Timestamp(start_s * 1_000_000),
            duration_us: 60_000_000,
            len: data.len() as u64,
            blake3: blake3::hash(data),
            state: SegmentState::Complete,
            origin: Origin::Local,
            notes: None,
        }
    }

    #[test]
    fn a_kept_list_serves_its_size_and_larger_ones_and_nothing_stale() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outboards::new(dir.path().to_path_buf(), 30);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let meta = segment(1_764_633_600, &data);
        assert_eq!(ob.get(&meta, 4096, 5), None);
        ob.put(&meta, 4096, &tree::block_cvs(&data, 4096), 5);
        assert_eq!(ob.get(&meta, 4096, 5), Some(tree::block_cvs(&data, 4096)));
        assert_eq!(ob.get(&meta, 65536, 5), Some(tree::block_cvs(&data, 65536)));
        assert_eq!(
            ob.get(&meta, 1 << 20, 5),
            Some(tree::block_cvs(&data, 1 << 20))
        );
        assert_eq!(ob.get(&meta, 1024, 5), None, "smaller blocks are hashed");
        assert_eq!(ob.get(&meta, 4096, 6), None, "the file was modified since");
        // A list that does not merge into the BLAKE3 is not kept.
        let other = segment(1_764_633_660, &data[1..]);
        ob.put(&other, 4096, &tree::block_cvs(&data, 4096), 5);
        assert_eq!(ob.get(&other, 4096, 5), None);
        // A torn file is not used.
        let path = ob.path(&meta);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        assert_eq!(ob.get(&meta, 4096, 5), None);
    }

    #[test]
    fn a_long_list_is_kept_coarser() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outboards::new(dir.path().to_path_buf(), 30);
        let data: Vec<u8> = (0..(MAX_KEPT * 3 * 1024) as u32).map(|i| i as u8).collect();
        let meta = segment(1_764_633_600, &data);
        ob.put(&meta, 1024, &tree::block_cvs(&data, 1024), 5);
        assert_eq!(ob.get(&meta, 1024, 5), None);
        assert_eq!(ob.get(&meta, 4096, 5), Some(tree::block_cvs(&data, 4096)));
        let kept = fs::read(ob.path(&meta)).unwrap();
        assert!((kept.len() - HEADER) / 32 <= MAX_KEPT);
    }

    #[test]
    fn a_kept_list_is_never_more_than_most_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outboards::new(dir.path().to_path_buf(), 30);
        let gib = 1u64 << 30;
        for (len, block_size) in [
            (5_000_000u64, 1024u32),
            (gib + 1, 1 << 20),
            (16 * gib, 16 << 20),
            (100 * gib + 7, 16 << 20),
            (100 * gib + 7, 4 << 20),
        ] {
            // Made-up chaining values, and the root they merge into.
            let cvs: Vec<[u8; 32]> = (0..block_count(len, block_size))
                .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
                .collect();
            let mut meta = segment(1_764_633_600, b"");
            meta.len = len;
            meta.blake3 = tree::root_of(&cvs).unwrap();
            ob.put(&meta, block_size, &cvs, 5);
            let kept = fs::metadata(ob.path(&meta)).unwrap().len();
            assert!(kept <= most_bytes(len), "{len} in {block_size}: {kept}");
        }
    }

    #[test]
    fn a_new_day_removes_days_past_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outboards::new(dir.path().to_path_buf(), 2);
        let data = vec![7u8; 5000];
        let day = 86_400;
        let t = 1_764_633_600; // 2025-12-02T00:00:00Z
        for d in [0, 1, 2, 3, 4] {
            let m = segment(t + d * day, &data);
            ob.put(&m, 1024, &tree::block_cvs(&data, 1024), 5);
        }
        let mut days: Vec<String> = fs::read_dir(dir.path().join("cam-1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        days.sort();
        // Kept: the retention (2 days) and a day before the newest.
        assert_eq!(
            days,
            ["2025-12-03", "2025-12-04", "2025-12-05", "2025-12-06"]
        );
    }
}
