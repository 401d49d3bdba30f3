//! Placeholders: files of the source's size at the segment's path, marked
//! `placeholder` with the source's BLAKE3 and peer, so the timeline is whole
//! before the bytes arrive. And the block progress of a segment being
//! filled, which survives `kill -9`.
//!
//! Placeholders never eat into the free-space reserve of live recording.
//! They are made newest first, and when the room above the reserve runs
//! out, **placing stops at the first gap that does not fit**: it and every
//! older gap are reported as left out, even where a smaller, older segment
//! would still fit (see [`Budget`]).
//!
//! Progress lives on the segment file as the extended attribute
//! `user.hafill.progress`:
//!
//! ```text
//! u32 LE block size | u32 LE block count n | durable bitmap | seen bitmap
//! ```
//!
//! each bitmap `ceil(n / 8)` bytes, bit `i` of byte `i / 8` for block `i`.
//! *Durable*: the block was verified and its bytes `fdatasync`ed before the
//! bitmap was written and the file `fsync`ed. *Seen*: the block was verified
//! and written, not yet synced; it only measures what a crash made us fetch
//! again.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::camera::CameraId;
use crate::segment::{Origin, Record, SegmentMeta, SegmentState};
use crate::store::layout::{day_number, day_start, hour_number, segment_file_name};
use crate::store::{read_xattr_record, write_xattr_record, Store, StoreError};

pub const PROGRESS_XATTR: &str = "user.hafill.progress";

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How placeholders take their space.
#[derive(Debug, Clone, Copy)]
pub struct PlaceOptions {
    /// Holes only (no blocks allocated) instead of `fallocate`.
    pub sparse: bool,
    /// Free space that belongs to live recording: placeholders (counted at
    /// their full size, sparse or not, since they will be filled) never eat
    /// into it.
    pub reserve_bytes: u64,
}

/// What [`create`] did.
#[derive(Debug, Default)]
pub struct Placed {
    /// Placeholders now in the store (new, or kept from an earlier run).
    pub placed: Vec<SegmentMeta>,
    /// Sources left out because the reserve would have been crossed.
    pub no_room: Vec<(SegmentMeta, String)>,
    /// Sources the recorder refused (and logged why): not reserved, never
    /// fetched, reported as problems.
    pub refused: Vec<(SegmentMeta, String)>,
}

/// Creates placeholders for `sources` (the peer's metadata, and the peer),
/// newest first, as far as the free space above the reserve allows (the
/// rule is [`Budget`]'s), as one batch: files (in parallel), one `syncfs`, then the index appended and
/// made durable by a second `syncfs`. A file already there with the same
/// source hash (an earlier run's placeholder or partial) is kept with its
/// progress; a complete segment is never touched.
pub fn create(
    store: &Store,
    sources: &[(&SegmentMeta, &str)],
    opts: PlaceOptions,
) -> Result<Placed, StoreError> {
    use rayon::prelude::*;
    let t = std::time::Instant::now();
    let mut order: Vec<&(&SegmentMeta, &str)> = sources.iter().collect();
    order.par_sort_by_key(|(m, _)| std::cmp::Reverse(m.start));
    // One folder per camera and hour, its path built and its existence
    // looked up once. A file in a missing folder cannot exist, so most of a
    // fresh gap needs no look-up at all.
    let mut dirs: HashMap<(&CameraId, i64), Dir> = HashMap::new();
    for (m, _) in &order {
        dirs.entry((&m.camera, hour_number(m.start)))
            .or_insert_with(|| Dir {
                path: store.segment_dir(&m.camera, m.start),
                exists: false,
                used: false,
            });
    }
    dirs.par_iter_mut()
        .for_each(|(_, d)| d.exists = d.path.is_dir());
    let ledger = SparseLedger::in_dir(store.root());
    let mut budget = Budget::on_filesystem(store.root(), opts.reserve_bytes, &ledger)?;
    let mut out = Placed::default();
    let mut pending: Vec<((&CameraId, i64), SegmentMeta)> = Vec::new();
    // Placeholders an earlier run made, as their files record them.
    let mut kept: Vec<SegmentMeta> = Vec::new();
    for (src, peer) in order {
        let Some(dir) = dirs.get_mut(&(&src.camera, hour_number(src.start))) else {
            continue;
        };
        if dir.exists {
            let path = dir.path.join(segment_file_name(src.start));
            if let Some(existing) = read_xattr_record(&path)? {
                if existing.state == SegmentState::Complete {
                    continue;
                }
                if existing.blake3 == src.blake3 && existing.len == src.len {
                    budget.owe_list(src.len);
                    let on_file = existing.into_meta(src.camera.clone());
                    kept.push(on_file.clone());
                    out.placed.push(SegmentMeta {
                        state: SegmentState::Placeholder,
                        ..on_file
                    });
                    continue;
                }
            }
        }
        if !budget.take(space_cost(src.len)) {
            out.no_room.push(((*src).clone(), peer.to_string()));
            continue;
        }
        dir.used = true;
        pending.push((
            (&src.camera, hour_number(src.start)),
            SegmentMeta {
                state: SegmentState::Placeholder,
                origin: Origin::Peer(peer.to_string()),
                ..(*src).clone()
            },
        ));
    }
    // Each file with its folder, now that the map no longer changes.
    let to_create: Vec<(&Path, SegmentMeta)> = pending
        .into_iter()
        .filter_map(|(key, m)| Some((dirs.get(&key)?.path.as_path(), m)))
        .collect();
    let chosen = t.elapsed();
    // Missing folders, in parallel (`create_dir_all` accepts a sibling
    // creating a shared parent at the same moment).
    let missing: Vec<&Path> = dirs
        .values()
        .filter(|d| d.used && !d.exists)
        .map(|d| d.path.as_path())
        .collect();
    missing
        .par_iter()
        .try_for_each(|d| fs::create_dir_all(d).map_err(io_at(d)))?;
    let dirs_made = t.elapsed();
    // Sparse placeholders are listed before they exist (see
    // `SparseLedger`); so are those where `fallocate` failed, after.
    if opts.sparse {
        let listed: Vec<(PathBuf, u64)> = to_create
            .iter()
            .map(|(dir, m)| (dir.join(segment_file_name(m.start)), m.len))
            .collect();
        ledger.charge(&listed)?;
    }
    let unallocated = std::sync::Mutex::new(Vec::new());
    let make = |(dir, meta): &(&Path, SegmentMeta)| -> Result<(), StoreError> {
        let path = &dir.join(segment_file_name(meta.start));
        let f = match OpenOptions::new().create_new(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // An earlier run's placeholder for other bytes: start over,
                // without its progress.
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_at(path))?;
                forget_progress(&f, path)?;
                f.set_len(0).map_err(io_at(path))?;
                f
            }
            Err(e) => return Err(io_at(path)(e)),
        };
        if !reserve_space(&f, path, meta.len, opts.sparse)? && !opts.sparse {
            unallocated
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((path.clone(), meta.len));
        }
        write_xattr_record(&f, path, &Record::put(meta))
    };
    // Two threads a core: while one waits for the filesystem's journal,
    // another creates. Measured with `cargo bench --bench gate` on a fresh
    // ext4, 360,000 files: 9.0-10.3 s with 2 threads, 8.2-8.9 s with 4,
    // 8.0-8.4 s with 8.
    let threads = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(|| to_create.par_iter().try_for_each(make))?,
        Err(_) => to_create.par_iter().try_for_each(make)?,
    }
    ledger.charge(&unallocated.into_inner().unwrap_or_else(|p| p.into_inner()))?;
    let files = t.elapsed();
    if !to_create.is_empty() {
        // One flush for the whole batch, then the index says `placeholder`.
        store.sync_fs()?;
        let synced = t.elapsed();
        let metas: Vec<SegmentMeta> = to_create.into_iter().map(|(_, m)| m).collect();
        store.append_index_by_syncfs(&metas)?;
        tracing::debug!(
            placeholders = metas.len(),
            chosen = ?chosen,
            dirs = ?dirs_made - chosen,
            files = ?files - dirs_made,
            syncfs = ?synced - files,
            index = ?t.elapsed() - synced,
            "placeholders created"
        );
        out.placed.extend(metas);
    }
    index_the_unindexed(store, kept)?;
    Ok(out)
}

/// Appends to the index the placeholders among `kept` (found on their
/// files) that it lacks: a crash between a batch's file `syncfs` and its
/// index append leaves such files, and nothing else would ever index them.
fn index_the_unindexed(store: &Store, kept: Vec<SegmentMeta>) -> Result<(), StoreError> {
    let mut by_day: HashMap<(CameraId, i64), Vec<SegmentMeta>> = HashMap::new();
    for m in kept {
        by_day
            .entry((m.camera.clone(), day_number(m.start)))
            .or_default()
            .push(m);
    }
    let mut missing = Vec::new();
    for ((camera, day), metas) in by_day {
        let from = day_start(day);
        let indexed: std::collections::HashSet<i64> = store
            .segments(&camera, from, day_start(day + 1))?
            .into_iter()
            .map(|s| s.start.0)
            .collect();
        missing.extend(metas.into_iter().filter(|m| !indexed.contains(&m.start.0)));
    }
    if !missing.is_empty() {
        tracing::warn!(
            placeholders = missing.len(),
            "placeholders on disk that the index lacked (a crash before their index append): indexed"
        );
        store.append_index(&missing)?;
    }
    Ok(())
}

/// The free space above the reserve, spent on new placeholders in the
/// order they are offered (newest first).
///
/// The rule when it runs out: **placing stops at the first gap that does
/// not fit.** Everything older is left out and reported, even a smaller
/// segment that would still fit. The timeline is then whole from now back to
/// one moment, never a scatter of older pieces bought with the room a newer
/// gap needed; and what is left of the free space stays with live recording.
/// A placeholder an earlier run made already holds its space and is kept
/// whatever its age.
///
/// Each placeholder is a file, and once filled has a kept block list
/// (`store::outboard`), so it also takes two inodes: files stop where
/// the filesystem would be left with fewer free inodes than
/// [`inode_reserve`] (a peer advertising millions of tiny segments cannot
/// exhaust them; live recording needs them too).
#[derive(Debug)]
pub(crate) struct Budget {
    left: u64,
    inodes_left: u64,
    exhausted: bool,
}

impl Budget {
    /// `bytes` of room and no limit on files.
    #[cfg(test)]
    pub(crate) fn new(bytes: u64) -> Self {
        Self::with_inodes(bytes, u64::MAX)
    }

    pub(crate) fn with_inodes(bytes: u64, inodes: u64) -> Self {
        Budget {
            left: bytes,
            inodes_left: inodes,
            exhausted: false,
        }
    }

    /// The room on the filesystem holding `path`: free bytes above
    /// `reserve_bytes`, free inodes above [`inode_reserve`] (none counted
    /// where the filesystem has no fixed number of inodes).
    /// The bytes sparse placeholders still owe (`ledger`) are not free.
    pub(crate) fn on_filesystem(
        path: &Path,
        reserve_bytes: u64,
        ledger: &SparseLedger,
    ) -> Result<Self, StoreError> {
        let v = rustix::fs::statvfs(path)
            .map_err(io::Error::from)
            .map_err(io_at(path))?;
        let bytes = v
            .f_bavail
            .saturating_mul(v.f_frsize)
            .saturating_sub(ledger.uncharged()?);
        let inodes = match v.f_files {
            0 => u64::MAX,
            total => v.f_favail.saturating_sub(inode_reserve(total)),
        };
        Ok(Self::with_inodes(
            bytes.saturating_sub(reserve_bytes),
            inodes,
        ))
    }

    /// Takes `cost` bytes and two files (the placeholder, and the block
    /// list kept once it is filled) for the next (older) placeholder, or
    /// refuses it and every one after it.
    pub(crate) fn take(&mut self, cost: u64) -> bool {
        if self.exhausted || cost > self.left || self.inodes_left < 2 {
            self.exhausted = true;
            return false;
        }
        self.left -= cost;
        self.inodes_left -= 2;
        true
    }

    /// What a placeholder an earlier run made still owes once filled: its
    /// kept block list (its own bytes and inode are spent already). Taken
    /// whatever is left; it refuses nothing.
    pub(crate) fn owe_list(&mut self, len: u64) {
        self.left = self.left.saturating_sub(list_cost(len));
        self.inodes_left = self.inodes_left.saturating_sub(1);
    }
}

/// The reservations the filesystem does not count: placeholders made
/// sparse (asked for, or where `fallocate` is not supported) hold holes,
/// so free space does not go down when they are made, and a later gate or
/// scrub would budget the same bytes again. Each is listed here (a JSON
/// line: path and length) before its file is made, and [`Self::uncharged`]
/// counts what the listed files still lack: the budget takes it off the
/// free space. A file filled, installed elsewhere or gone leaves the list.
#[derive(Debug)]
pub(crate) struct SparseLedger {
    path: PathBuf,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Reserved {
    p: PathBuf,
    len: u64,
}

impl SparseLedger {
    /// The ledger kept in `dir` (the store, or hafill's state folder).
    pub(crate) fn in_dir(dir: &Path) -> Self {
        SparseLedger {
            path: dir.join("sparse-reservations.jsonl"),
        }
    }

    /// Lists `files` (path, length) durably, in one append.
    pub(crate) fn charge(&self, files: &[(PathBuf, u64)]) -> Result<(), StoreError> {
        let lines: Vec<Reserved> = files
            .iter()
            .map(|(p, len)| Reserved {
                p: p.clone(),
                len: *len,
            })
            .collect();
        crate::state::append_lines(&self.path, &lines, true)
    }

    /// Bytes the listed placeholders still lack (each file's length less
    /// what it has allocated, for those not yet complete). Entries that no
    /// longer hold anything back are dropped from the list.
    pub(crate) fn uncharged(&self) -> Result<u64, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let lines: Vec<Reserved> = crate::state::read_lines(&self.path)?;
        if lines.is_empty() {
            return Ok(0);
        }
        // A path listed again (re-placed) counts once, at its last length.
        let mut latest: HashMap<&Path, u64> = HashMap::new();
        for e in &lines {
            latest.insert(e.p.as_path(), e.len);
        }
        let entries: Vec<Reserved> = latest
            .into_iter()
            .map(|(p, len)| Reserved {
                p: p.to_path_buf(),
                len,
            })
            .collect();
        let mut owed = 0u64;
        let mut keep = Vec::new();
        for e in &entries {
            let Ok(m) = fs::metadata(&e.p) else { continue };
            let complete =
                matches!(read_xattr_record(&e.p), Ok(Some(r)) if r.state == SegmentState::Complete);
            let allocated = m.blocks().saturating_mul(512);
            if complete || allocated >= e.len {
                continue;
            }
            owed = owed.saturating_add(e.len - allocated);
            keep.push(e);
        }
        if keep.len() < lines.len() {
            let tmp = self.path.with_extension("jsonl.tmp");
            let mut text = Vec::new();
            for e in keep {
                serde_json::to_writer(&mut text, e)
                    .map_err(|e| io_at(&tmp)(io::Error::other(e)))?;
                text.push(b'\n');
            }
            let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
            io::Write::write_all(&mut f, &text).map_err(io_at(&tmp))?;
            f.sync_data().map_err(io_at(&tmp))?;
            fs::rename(&tmp, &self.path).map_err(io_at(&self.path))?;
        }
        Ok(owed)
    }
}

/// Free inodes placeholders never take: 1% of the filesystem's, at least
/// 10,000.
pub(crate) fn inode_reserve(total: u64) -> u64 {
    (total / 100).max(10_000)
}

/// A segment folder of the batch.
struct Dir {
    path: PathBuf,
    exists: bool,
    /// A placeholder of the batch goes in it.
    used: bool,
}

/// What a placeholder of `len` bytes takes from the free space once filled:
/// its blocks (rounded up to 4 KiB, the common filesystem block), a block
/// for its inode, attribute, directory entry and index record, and the
/// most its kept block list can take (`store::outboard`, written as it is
/// filled), so the reserve holds even on a small filesystem.
pub(crate) fn space_cost(len: u64) -> u64 {
    fs_blocks(len)
        .saturating_add(FS_BLOCK)
        .saturating_add(list_cost(len))
}

/// The common filesystem block.
const FS_BLOCK: u64 = 4096;

fn fs_blocks(n: u64) -> u64 {
    n.div_ceil(FS_BLOCK).saturating_mul(FS_BLOCK)
}

/// The most the kept block list of a segment of `len` bytes takes.
fn list_cost(len: u64) -> u64 {
    fs_blocks(crate::store::outboard::most_bytes(len))
}

/// Gives a placeholder its size: allocated blocks (`fallocate`), or holes.
/// Returns whether the blocks were allocated (else the file is sparse).
pub(crate) fn reserve_space(
    f: &File,
    path: &Path,
    len: u64,
    sparse: bool,
) -> Result<bool, StoreError> {
    if !sparse && len > 0 {
        match rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => return Ok(true),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP => {
                tracing::debug!(
                    "fallocate not supported here; placeholder {} is sparse",
                    path.display()
                );
            }
            Err(e) => return Err(io_at(path)(io::Error::from(e))),
        }
    }
    f.set_len(len).map_err(io_at(path))?;
    Ok(len == 0)
}

/// Which blocks of a segment are verified and durable (and which were seen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub block_size: u32,
    pub blocks: u32,
    durable: Vec<u8>,
    seen: Vec<u8>,
}

impl Progress {
    pub fn new(block_size: u32, blocks: u32) -> Self {
        let n = (blocks as usize).div_ceil(8);
        Progress {
            block_size,
            blocks,
            durable: vec![0; n],
            seen: vec![0; n],
        }
    }

    fn get(bits: &[u8], i: u32) -> bool {
        bits.get(i as usize / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    fn set(bits: &mut [u8], i: u32) {
        if let Some(b) = bits.get_mut(i as usize / 8) {
            *b |= 1 << (i % 8);
        }
    }

    pub fn is_durable(&self, i: u32) -> bool {
        Self::get(&self.durable, i)
    }

    pub fn was_seen(&self, i: u32) -> bool {
        Self::get(&self.seen, i)
    }

    pub fn mark_seen(&mut self, i: u32) {
        Self::set(&mut self.seen, i);
    }

    pub fn mark_durable(&mut self, i: u32) {
        Self::set(&mut self.durable, i);
        Self::set(&mut self.seen, i);
    }

    pub fn durable_count(&self) -> u32 {
        (0..self.blocks).filter(|i| self.is_durable(*i)).count() as u32
    }

    /// Ranges `(first, count)` of blocks not yet durable.
    pub fn missing_ranges(&self) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = Vec::new();
        for i in 0..self.blocks {
            if self.is_durable(i) {
                continue;
            }
            match out.last_mut() {
                Some((first, count)) if *first + *count == i => *count += 1,
                _ => out.push((i, 1)),
            }
        }
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.durable.len() * 2);
        v.extend_from_slice(&self.block_size.to_le_bytes());
        v.extend_from_slice(&self.blocks.to_le_bytes());
        v.extend_from_slice(&self.durable);
        v.extend_from_slice(&self.seen);
        v
    }

    /// A record that is not one hafill writes (a block size that is no
    /// power of two in the protocol's range, a length that does not match
    /// the block count) is `None`: the segment starts over.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let block_size = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?);
        let blocks = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
        let n = (blocks as usize).div_ceil(8);
        let sizes = hafill_protocol::MIN_BLOCK_SIZE..=hafill_protocol::MAX_BLOCK_SIZE;
        if b.len() != 8 + 2 * n || !block_size.is_power_of_two() || !sizes.contains(&block_size) {
            return None;
        }
        Some(Progress {
            block_size,
            blocks,
            durable: b[8..8 + n].to_vec(),
            seen: b[8 + n..].to_vec(),
        })
    }
}

/// Forgets a file's block progress before its bytes are dropped (truncated,
/// or given a new length): first, so that a crash in between never leaves
/// a durable bitmap over bytes that are gone. (ext4's journal keeps the
/// two in order on a power cut too.)
pub fn forget_progress(file: &File, path: &Path) -> Result<(), StoreError> {
    match xattr::FileExt::remove_xattr(file, PROGRESS_XATTR) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
        Err(e) => Err(io_at(path)(e)),
    }
}

pub fn read_progress(path: &Path) -> Result<Option<Progress>, StoreError> {
    match xattr::get(path, PROGRESS_XATTR) {
        Ok(v) => Ok(v.as_deref().and_then(Progress::decode)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(path)(e)),
    }
}

/// Records blocks seen (verified and written, not synced). No fsync: this
/// survives a process kill, which is all it is for.
pub fn write_seen(file: &File, path: &Path, p: &Progress) -> Result<(), StoreError> {
    xattr::FileExt::set_xattr(file, PROGRESS_XATTR, &p.encode()).map_err(io_at(path))
}

/// Records durable blocks. The caller has `fdatasync`ed their bytes first;
/// the record says `partial` from the first durable block on.
pub fn write_durable(
    file: &File,
    path: &Path,
    meta: &SegmentMeta,
    p: &Progress,
) -> Result<(), StoreError> {
    xattr::FileExt::set_xattr(file, PROGRESS_XATTR, &p.encode()).map_err(io_at(path))?;
    let partial = SegmentMeta {
        state: SegmentState::Partial,
        ..meta.clone()
    };
    write_xattr_record(file, path, &Record::put(&partial))?;
    file.sync_all().map_err(io_at(path))
}

/// Marks a filled segment complete on its file: every durable block was
/// verified against `meta.blake3`. The index append follows.
pub fn mark_complete(file: &File, path: &Path, meta: &SegmentMeta) -> Result<(), StoreError> {
    let complete = SegmentMeta {
        state: SegmentState::Complete,
        ..meta.clone()
    };
    write_xattr_record(file, path, &Record::put(&complete))?;
    let _ = xattr::FileExt::remove_xattr(file, PROGRESS_XATTR);
    file.sync_all().map_err(io_at(path))
}

/// The placeholder and partial segments of the store in a window: work an
/// earlier run left, to resume.
pub fn outstanding(
    store: &Store,
    from: crate::Timestamp,
    to: crate::Timestamp,
) -> Result<Vec<SegmentMeta>, StoreError> {
    let mut candidates = Vec::new();
    for c in store.cameras()? {
        candidates.extend(
            store
                .segments(&c, from, to)?
                .into_iter()
                .filter(|s| s.state != SegmentState::Complete),
        );
    }
    outstanding_among(store, candidates)
}

/// [`outstanding`] among `candidates`, the store's segments that are not
/// complete in its index.
pub fn outstanding_among(
    store: &Store,
    candidates: Vec<SegmentMeta>,
) -> Result<Vec<SegmentMeta>, StoreError> {
    let mut out = Vec::new();
    let mut healed = Vec::new();
    let mut vanished = Vec::new();
    for s in candidates {
        if !segment_path(store, &s).exists() {
            vanished.push(s);
            continue;
        }
        match completed_on_file(store, &s) {
            Some(done) => healed.push(done),
            None => out.push(s),
        }
    }
    if !vanished.is_empty() {
        // Deleted by hand, or lost: the gap is planned and placed anew.
        tracing::warn!(
            placeholders = vanished.len(),
            "placeholder files missing: removed from the index; the next plan places them again"
        );
        store.remove_from_index(&vanished)?;
    }
    if !healed.is_empty() {
        tracing::info!(
            segments = healed.len(),
            "complete on their files but not in the index (a crash before the index append): indexed"
        );
        store.append_index(&healed)?;
    }
    Ok(out)
}

/// The segment as its file's own record has it, if that record says
/// complete, for these bytes, and the file has their length: the install
/// finished (records are marked complete only once every block is verified and durable), and only
/// its index append was lost.
fn completed_on_file(store: &Store, s: &SegmentMeta) -> Option<SegmentMeta> {
    let path = segment_path(store, s);
    let rec = crate::store::read_xattr_record(&path).ok()??;
    let len = std::fs::metadata(&path).ok()?.len();
    (rec.state == SegmentState::Complete
        && rec.start == s.start
        && rec.len == s.len
        && rec.blake3 == s.blake3
        && len == rec.len)
        .then(|| rec.into_meta(s.camera.clone()))
}

pub fn segment_path(store: &Store, meta: &SegmentMeta) -> PathBuf {
    store.segment_path(&meta.camera, meta.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_lists_missing_ranges() {
        let mut p = Progress::new(1 << 20, 20);
        for i in [0, 1, 2, 5, 19] {
            p.mark_durable(i);
        }
        p.mark_seen(7);
        assert_eq!(p.missing_ranges(), vec![(3, 2), (6, 13)]);
        assert!(p.was_seen(7) && !p.is_durable(7));
        assert_eq!(Progress::decode(&p.encode()), Some(p.clone()));
        assert_eq!(Progress::decode(&p.encode()[1..]), None);
        // A block size hafill never writes (0 would divide by zero).
        for bad in [0u32, 512, 3000, 32 << 20] {
            let mut b = p.encode();
            b[0..4].copy_from_slice(&bad.to_le_bytes());
            assert_eq!(Progress::decode(&b), None, "block size {bad}");
        }
        assert_eq!(p.durable_count(), 5);
    }

    #[test]
    fn placing_stops_at_the_first_gap_that_does_not_fit() {
        let mut b = Budget::new(100);
        assert!(b.take(60));
        assert!(!b.take(50), "the newer gap does not fit");
        assert!(!b.take(10), "an older, smaller gap must not take its place");
        assert!(!b.take(0));
    }

    #[test]
    fn a_budget_spent_exactly_refuses_the_next() {
        let mut b = Budget::new(100);
        assert!(b.take(40) && b.take(60));
        assert!(!b.take(1));
    }

    #[test]
    fn files_stop_at_the_inode_reserve_whatever_their_size() {
        // Room for any number of bytes, seven inodes above the reserve:
        // each placeholder takes two (its file, and its block list once
        // filled), so the fourth is refused, and so is every later one.
        let mut b = Budget::with_inodes(u64::MAX, 7);
        assert!(b.take(4096) && b.take(4096) && b.take(4096));
        assert!(!b.take(4096));
        assert!(!b.take(0));
        // One an earlier run made owes its list's bytes and inode.
        let mut b = Budget::with_inodes(100_000, 4);
        b.owe_list(1 << 20);
        assert_eq!((b.left, b.inodes_left), (100_000 - list_cost(1 << 20), 3));
        assert_eq!(inode_reserve(50_000), 10_000);
        assert_eq!(inode_reserve(100_000_000), 1_000_000);
    }
}
