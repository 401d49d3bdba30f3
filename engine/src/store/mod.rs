//! The recording store: one file per segment per camera, and an index over
//! them. See `docs/store.md` for the format and the crash analysis.
//!
//! Writers hold the store's lock; readers do not need it. A batch of new
//! segments is committed in five steps (journal, write + fsync, rename, index,
//! clear journal) so a crash at any instant leaves the old state or the new
//! one, never a `complete` segment with wrong bytes.

mod file;
pub mod frigate;
pub mod layout;
pub mod log;
pub mod media;
pub mod native;
pub mod outboard;
pub mod pattern;
pub mod segments;
pub mod staging;
pub mod traits;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::camera::CameraId;
use crate::interval::IntervalSet;
use crate::segment::{Record, RecordKind, SegmentMeta, SegmentState};
use crate::units::Timestamp;
use layout::*;

pub use file::LogFile;

/// Longest segment the store accepts; queries look back this far for
/// segments that began before the window and reach into it.
pub const MAX_SEGMENT_DURATION_US: u64 = 6 * 3600 * 1_000_000;

/// Opens the recorder `config` names. A `writer` (backfill, gate, scrub)
/// holds the lock that keeps a second hafill from filling at the same time;
/// the recorder itself never needs it. Nothing is created: a store (or
/// hafill's state beside a recorder) that lacks its marker is refused, so
/// an unmounted volume is never filled on the root filesystem; `hafill
/// store init` ([`init`]) makes one.
/// Where a server keeps its segments' block lists (see [`outboard`]): in
/// the native store, or in hafill's state beside a recorder.
pub fn outboards_of(config: &crate::config::Config) -> outboard::Outboards {
    let dir = match config.recorder {
        crate::config::RecorderConfig::Native => config.store.join("outboard"),
        _ => config.state.join("outboard"),
    };
    outboard::Outboards::new(dir, config.retention_us.div_ceil(86_400_000_000))
}

pub fn open_recorder(
    config: &crate::config::Config,
    writer: bool,
) -> Result<std::sync::Arc<dyn traits::Recorder>> {
    use crate::config::RecorderConfig;
    Ok(match &config.recorder {
        RecorderConfig::Native => {
            let store = if writer {
                Store::open_filler(&config.store, false)?
            } else {
                Store::open(&config.store)?
            };
            std::sync::Arc::new(native::NativeRecorder::new(store))
        }
        RecorderConfig::Segments {
            path,
            pattern,
            settle_us,
            ..
        } => std::sync::Arc::new(segments::SegmentsRecorder::open(
            path,
            pattern.clone(),
            *settle_us,
            &config.state,
            writer,
        )?),
        RecorderConfig::Frigate(f) => {
            std::sync::Arc::new(frigate::FrigateRecorder::open(f, &config.state, writer)?)
        }
    })
}

/// What [`init`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// Made a new store (or state folder) at this path.
    Made(PathBuf),
    /// One was there already; nothing changed.
    Present(PathBuf),
}

/// Makes what `config` needs before hafill may write: the native store at
/// `[server] store`, or hafill's state folder beside a recorder (whose own
/// folder must exist: it is the recorder's to make). The parent folder
/// must exist, and the folder must be new or empty: nothing is made on a
/// volume that is not mounted unless its mount point is named.
pub fn init(config: &crate::config::Config) -> Result<Init> {
    use crate::config::RecorderConfig;
    match &config.recorder {
        RecorderConfig::Native => init_native(&config.store),
        RecorderConfig::Segments { path, .. }
        | RecorderConfig::Frigate(crate::config::FrigateConfig { path, .. }) => {
            segments::check_recorder_folder(path)?;
            let made = init_at(
                &config.state,
                crate::state::MARKER,
                crate::state::MARKER_CONTENT,
                crate::state::State::init,
            )?;
            segments::SegmentsRecorder::check_same_filesystem(path, &config.state)?;
            Ok(made)
        }
    }
}

/// What hafill itself puts in a store or state folder: a folder holding
/// only these may be made one by [`init`].
const OWN_ENTRIES: [&str; 11] = [
    "index",
    "outboard",
    "installing",
    "segments",
    "staging",
    "lock",
    "segments.jsonl",
    "origins.jsonl",
    "sparse-reservations.jsonl",
    "journal",
    "index.lock",
];

/// [`init`] for a native store at `root`.
pub fn init_native(root: &Path) -> Result<Init> {
    init_at(root, MARKER, MARKER_CONTENT, init_store)
}

fn init_at(
    root: &Path,
    marker: &str,
    content: &str,
    make: fn(&Path) -> Result<()>,
) -> Result<Init> {
    match fs::read_to_string(root.join(marker)) {
        Ok(s) if s == content => return Ok(Init::Present(root.to_path_buf())),
        Ok(_) => return Err(StoreError::Version(root.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).at(&root.join(marker)),
    }
    let refuse = |reason: &str| StoreError::Io {
        path: root.to_path_buf(),
        source: io::Error::other(reason.to_string()),
    };
    match fs::read_dir(root) {
        Ok(d) => {
            // Empty, or holding only what hafill itself puts there (an
            // init a crash cut short; a state folder from before markers).
            for e in d {
                let e = e.at(root)?;
                let name = e.file_name();
                let name = name.to_string_lossy();
                if !OWN_ENTRIES.contains(&name.as_ref()) && !name.ends_with(TMP_SUFFIX) {
                    return Err(refuse(&format!(
                        "holds {name}: not a hafill store, and hafill makes one only in a new or empty folder"
                    )));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = root.parent().filter(|p| !p.as_os_str().is_empty());
            if parent.is_some_and(|p| !p.is_dir()) {
                return Err(refuse(
                    "its parent folder does not exist (is the volume mounted?); hafill does not make parents",
                ));
            }
            fs::create_dir(root).at(root)?;
        }
        Err(e) => return Err(e).at(root),
    }
    make(root)?;
    Ok(Init::Made(root.to_path_buf()))
}

/// Extended attribute that carries a segment's record on its file, so the
/// index can be rebuilt from the segment files alone.
pub const XATTR_NAME: &str = "user.hafill";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: not a hafill store (no {MARKER} file). If it lives on a volume that is not mounted, mount it; to start a new store there, run `hafill store init --config FILE`")]
    NotAStore(PathBuf),
    #[error("{0}: not hafill's state folder (no {marker} file). If it lives on a volume that is not mounted, mount it; to start one there, run `hafill store init --config FILE`", marker = crate::state::MARKER)]
    NoState(PathBuf),
    #[error("{0}: store format not supported by this build (it reads '{MARKER}' files that say 'hafill-store 1')")]
    Version(PathBuf),
    #[error("{0}: the store is locked by another writer (hafill sim record, backfill or rebuild); wait for it to finish")]
    Locked(PathBuf),
    #[error("{path}: index {reason}; run `hafill store rebuild --store {store}` to rebuild the index from the segment files")]
    Damaged {
        path: PathBuf,
        store: PathBuf,
        reason: String,
    },
    #[error("{0}: the filesystem does not support user extended attributes, which the store needs to keep each segment's metadata with its file")]
    NoXattr(PathBuf),
    /// The recorder's own records (Frigate's database) cannot be used.
    #[error("{path}: {reason}")]
    Recorder { path: PathBuf, reason: String },
    #[error("segment {camera} {start}: {reason}")]
    BadSegment {
        camera: CameraId,
        start: Timestamp,
        reason: String,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Held by the recorder (`sim record`, `sim live`, `store rebuild`) for
    /// as long as the store is open: one recorder at a time.
    lock: Option<File>,
    /// Held by a filler (backfill, gate, scrub) for as long as the store is
    /// open: one filler at a time, beside the recorder, never in its way.
    filler: Option<File>,
}

/// A segment to write: what is known before its bytes are.
#[derive(Debug, Clone)]
pub struct SegmentSpec {
    pub camera: CameraId,
    pub start: Timestamp,
    pub duration_us: u64,
    pub origin: crate::segment::Origin,
}

/// One problem `verify` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyProblem {
    pub camera: CameraId,
    pub start: String,
    pub path: String,
    pub problem: String,
}

/// What `verify` looked at.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub segments: u64,
    pub bytes: u64,
    pub problems: Vec<VerifyProblem>,
}

/// What `rebuild` found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RebuildReport {
    pub cameras: usize,
    pub segments: u64,
    pub skipped: Vec<String>,
}

impl Store {
    /// Opens an existing store to read. If a writer crashed mid-batch and no
    /// writer holds the lock now, its batch is recovered first.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        check_marker(&root)?;
        let store = Store {
            root,
            lock: None,
            filler: None,
        };
        store.recover_if_no_recorder()?;
        Ok(store)
    }

    /// If a recorder crashed mid-batch and none holds the lock now, its
    /// batch is recovered.
    fn recover_if_no_recorder(&self) -> Result<()> {
        if self.journal_pending()? {
            match Store::lock(&self.root, "lock") {
                Ok(lock) => {
                    let w = Store {
                        root: self.root.clone(),
                        lock: Some(lock),
                        filler: None,
                    };
                    w.recover()?;
                }
                Err(StoreError::Locked(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Opens a store to fill gaps in (backfill, gate, scrub), creating it
    /// if `create` and it does not exist. A recorder may write the store at
    /// the same time: the two share only the index lock, held for the
    /// moments of an index append.
    pub fn open_filler(root: impl AsRef<Path>, create: bool) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if create && !root.join(MARKER).exists() {
            init_store(&root)?;
        }
        check_marker(&root)?;
        let filler = Store::lock(&root, "fill.lock")?;
        let store = Store {
            root,
            lock: None,
            filler: Some(filler),
        };
        store.recover_if_no_recorder()?;
        Ok(store)
    }

    /// Opens a store for `hafill store rebuild`: as a writer, without
    /// journal recovery, which may be what failed (a damaged index log
    /// named in the journal). The rebuild reads every file's own record,
    /// so it does what recovery would, then clears the journal.
    pub fn open_to_rebuild(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        check_marker(&root)?;
        let lock = Store::lock(&root, "lock")?;
        Ok(Store {
            root,
            lock: Some(lock),
            filler: None,
        })
    }

    /// Opens a store to write, creating it if `create` and it does not exist.
    pub fn open_writer(root: impl AsRef<Path>, create: bool) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if create && !root.join(MARKER).exists() {
            init_store(&root)?;
        }
        check_marker(&root)?;
        let lock = Store::lock(&root, "lock")?;
        let store = Store {
            root,
            lock: Some(lock),
            filler: None,
        };
        store.recover()?;
        Ok(store)
    }

    fn lock(root: &Path, name: &str) -> Result<File> {
        let p = root.join(name);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .at(&p)?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked(root.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => Err(e).at(&p),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn segment_path(&self, camera: &CameraId, start: Timestamp) -> PathBuf {
        self.root.join(segment_rel_path(camera, start))
    }

    /// The folder of a segment (see [`layout::hour_number`]).
    pub fn segment_dir(&self, camera: &CameraId, start: Timestamp) -> PathBuf {
        self.root.join(layout::segment_dir_rel_path(camera, start))
    }

    fn damaged(&self, path: PathBuf, reason: String) -> StoreError {
        StoreError::Damaged {
            path,
            store: self.root.clone(),
            reason,
        }
    }

    /// Cameras that have an index, sorted.
    pub fn cameras(&self) -> Result<Vec<CameraId>> {
        let dir = self.root.join("index");
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            // A lost index must not read as an empty store: planning against
            // it would fetch everything again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.damaged(dir, "directory is missing".into()))
            }
            Err(e) => return Err(e).at(&dir),
        };
        for e in rd {
            let e = e.at(&dir)?;
            if let Some(cam) = e.file_name().to_str().and_then(|s| CameraId::new(s).ok()) {
                out.push(cam);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Day numbers with an index log for `camera`, sorted.
    pub fn days(&self, camera: &CameraId) -> Result<Vec<i64>> {
        let dir = self.root.join("index").join(camera.as_str());
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).at(&dir),
        };
        for e in rd {
            let e = e.at(&dir)?;
            let name = e.file_name();
            let Some(day) = name.to_str().and_then(|s| s.strip_suffix(".log")) else {
                continue;
            };
            let t = Timestamp::parse(&format!("{day}T00:00:00Z"), Timestamp(0));
            if let Ok(t) = t {
                out.push(day_number(t));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The index log of `camera`'s day `day` (it may not exist).
    pub fn day_log_path(&self, camera: &CameraId, day: i64) -> PathBuf {
        self.root
            .join(index_rel_path(camera, &day_name(day_start(day))))
    }

    /// The segments of `camera` that start on day `day`, sorted by start.
    pub fn day_segments(&self, camera: &CameraId, day: i64) -> Result<Vec<SegmentMeta>> {
        Ok(self
            .read_day(camera, day)?
            .into_values()
            .map(|r| r.into_meta(camera.clone()))
            .collect())
    }

    fn read_day(&self, camera: &CameraId, day: i64) -> Result<BTreeMap<i64, Record>> {
        let path = self
            .root
            .join(index_rel_path(camera, &day_name(day_start(day))));
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e).at(&path),
        };
        log::decode_log(&bytes)
            .map(|c| c.records)
            .map_err(|d| self.damaged(path, d.to_string()))
    }

    /// Segments of `camera` that overlap `[from, to)`, sorted by start.
    /// Reads only the index logs of the days concerned.
    pub fn segments(
        &self,
        camera: &CameraId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<SegmentMeta>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let first = day_number(from.add_micros(-(MAX_SEGMENT_DURATION_US as i64)));
        let last = day_number(to.add_micros(-1));
        let days: Vec<i64> = if last - first > 64 {
            // A wide window: list what exists rather than probe every day.
            self.days(camera)?
                .into_iter()
                .filter(|d| (first..=last).contains(d))
                .collect()
        } else {
            (first..=last).collect()
        };
        let mut out = Vec::new();
        for day in days {
            for (_, r) in self.read_day(camera, day)? {
                // Filtered before the camera's name is copied into it.
                if r.start < to && r.start.add_micros(r.duration_us as i64) > from {
                    out.push(r.into_meta(camera.clone()));
                }
            }
        }
        Ok(out)
    }

    /// The end of the last segment of `camera`, reading only its last day.
    pub fn last_segment_end(&self, camera: &CameraId) -> Result<Option<Timestamp>> {
        let Some(&day) = self.days(camera)?.last() else {
            return Ok(None);
        };
        Ok(self
            .read_day(camera, day)?
            .into_values()
            .map(|r| r.start.add_micros(r.duration_us as i64))
            .max())
    }

    /// Every segment of `camera`, sorted by start.
    pub fn all_segments(&self, camera: &CameraId) -> Result<Vec<SegmentMeta>> {
        let mut out = Vec::new();
        for day in self.days(camera)? {
            out.extend(
                self.read_day(camera, day)?
                    .into_values()
                    .map(|r| r.into_meta(camera.clone())),
            );
        }
        Ok(out)
    }

    /// The time of `camera` held between `from` and `to` (any state).
    pub fn coverage(
        &self,
        camera: &CameraId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<IntervalSet> {
        let segs = self.segments(camera, from, to)?;
        Ok(IntervalSet::from_intervals(segs.iter().map(|s| s.interval())).clip(from.0, to.0))
    }

    fn require_writer(&self) -> Result<()> {
        if self.lock.is_none() && self.filler.is_none() {
            return Err(StoreError::Locked(self.root.clone()));
        }
        Ok(())
    }

    /// The index lock, waited for: a recorder and a filler append to the
    /// same day logs, one at a time; a rebuild holds it throughout.
    fn index_guard(&self) -> Result<File> {
        let p = self.root.join("index.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .at(&p)?;
        f.lock().at(&p)?;
        Ok(f)
    }

    /// Appends records to the index, one durable append per camera-day.
    pub fn append_index(&self, metas: &[SegmentMeta]) -> Result<()> {
        self.append_index_as(metas, RecordKind::Put, false)
    }

    /// Removes segments from the index (their files are the caller's):
    /// each only while the index still holds that unfinished reservation
    /// (same BLAKE3, not complete), checked under the index lock, so a
    /// segment the recorder completed at that start meanwhile stays.
    pub fn remove_from_index(&self, metas: &[SegmentMeta]) -> Result<()> {
        self.append_index_as(metas, RecordKind::Remove, false)
    }

    /// Appends a large batch of records (hundreds of camera-days) to the
    /// index and makes it durable with one `syncfs` instead of a sync per
    /// log file: everything else written to the filesystem is flushed too.
    pub fn append_index_by_syncfs(&self, metas: &[SegmentMeta]) -> Result<()> {
        self.append_index_as(metas, RecordKind::Put, true)
    }

    fn append_index_as(
        &self,
        metas: &[SegmentMeta],
        kind: RecordKind,
        by_syncfs: bool,
    ) -> Result<()> {
        self.require_writer()?;
        let _index = self.index_guard()?;
        let mut by_day: BTreeMap<(CameraId, i64), Vec<Record>> = BTreeMap::new();
        for m in metas {
            by_day
                .entry((m.camera.clone(), day_number(m.start)))
                .or_default()
                .push(Record {
                    kind,
                    ..Record::put(m)
                });
        }
        let mut new_dirs = BTreeSet::new();
        let mut logs = Vec::with_capacity(by_day.len());
        for ((camera, day), mut records) in by_day {
            if kind == RecordKind::Remove {
                let live = self.read_day(&camera, day)?;
                records.retain(|r| {
                    live.get(&r.start.0)
                        .is_some_and(|l| l.blake3 == r.blake3 && l.state != SegmentState::Complete)
                });
                if records.is_empty() {
                    continue;
                }
            }
            let path = self
                .root
                .join(index_rel_path(&camera, &day_name(day_start(day))));
            let dir = path.parent().unwrap_or(&self.root).to_path_buf();
            if !path.exists() {
                if !dir.exists() {
                    // One level only: an `index/` lost while the store is
                    // open is never made again by an append, which would
                    // then read as an almost empty store.
                    match fs::create_dir(&dir) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            return Err(StoreError::Damaged {
                                path: self.root.join("index"),
                                store: self.root.clone(),
                                reason: "is missing".into(),
                            })
                        }
                        Err(e) => return Err(e).at(&dir),
                    }
                    new_dirs.insert(self.root.join("index"));
                }
                new_dirs.insert(dir.clone());
            }
            logs.push((path, records));
        }
        // One log file per camera and day, in parallel: their syncs share
        // the filesystem's journal commits (a batch of placeholders spans
        // hundreds of cameras).
        logs.par_iter().try_for_each(|(path, records)| {
            let mut f = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(path)
                .at(path)?;
            if let Err(d) = log::open_for_append(&mut f).at(path)? {
                return Err(self.damaged(path.clone(), d.to_string()));
            }
            if by_syncfs {
                log::write_records(&mut f, records).at(path)
            } else {
                log::append_records(&mut f, records).at(path)
            }
        })?;
        if by_syncfs {
            return self.sync_fs();
        }
        for d in new_dirs {
            sync_dir(&d)?;
        }
        Ok(())
    }

    fn journal_path(&self) -> PathBuf {
        self.root.join("journal")
    }

    fn journal_pending(&self) -> Result<bool> {
        let p = self.journal_path();
        match fs::metadata(&p) {
            Ok(m) => Ok(m.len() > 0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).at(&p),
        }
    }

    /// Journal entry: `u32 LE camera length | camera | i64 LE start`.
    fn write_journal(&self, specs: &[SegmentSpec]) -> Result<()> {
        let mut buf = Vec::new();
        for sp in specs {
            let cam = sp.camera.as_str().as_bytes();
            buf.extend_from_slice(&(cam.len() as u32).to_le_bytes());
            buf.extend_from_slice(cam);
            buf.extend_from_slice(&sp.start.0.to_le_bytes());
        }
        let p = self.journal_path();
        let mut f = File::create(&p).at(&p)?;
        f.write_all(&buf).at(&p)?;
        f.sync_data().at(&p)?;
        Ok(())
    }

    fn read_journal(&self) -> Result<Vec<(CameraId, Timestamp)>> {
        let p = self.journal_path();
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).at(&p),
        };
        let mut out = Vec::new();
        let mut pos = 0;
        // A journal cut short was never acted on past its end: read what is whole.
        while let Some(len) = bytes
            .get(pos..pos + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        {
            let cam = bytes
                .get(pos + 4..pos + 4 + len)
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| CameraId::new(c).ok());
            let start = bytes
                .get(pos + 4 + len..pos + 12 + len)
                .and_then(|b| b.try_into().ok())
                .map(|b| Timestamp(i64::from_le_bytes(b)));
            let (Some(cam), Some(start)) = (cam, start) else {
                break;
            };
            out.push((cam, start));
            pos += 12 + len;
        }
        Ok(out)
    }

    fn clear_journal(&self) -> Result<()> {
        let p = self.journal_path();
        let f = OpenOptions::new().write(true).open(&p);
        match f {
            Ok(f) => {
                f.set_len(0).at(&p)?;
                f.sync_data().at(&p)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(&p),
        }
    }

    /// After a rebuild (which indexed every whole file): removes the
    /// temporary files of a batch a crashed writer left, and clears its
    /// journal. A journal that cannot be read leaves its temporary files,
    /// which nothing reads.
    fn discard_journal(&self) -> Result<()> {
        match self.read_journal() {
            Ok(intents) => {
                for (camera, start) in intents {
                    let tmp = tmp_path(&self.segment_path(&camera, start));
                    if tmp.exists() {
                        fs::remove_file(&tmp).at(&tmp)?;
                    }
                }
            }
            Err(e) => tracing::warn!("journal not read ({e}); cleared"),
        }
        self.clear_journal()
    }

    /// Finishes or rolls back the batch a crashed writer left in the journal:
    /// a segment whose file reached its final name (with its record attached)
    /// is indexed; a temporary file is removed.
    fn recover(&self) -> Result<()> {
        let intents = self.read_journal()?;
        if intents.is_empty() {
            return self.clear_journal();
        }
        let mut to_index = Vec::new();
        for (camera, start) in intents {
            let path = self.segment_path(&camera, start);
            let tmp = tmp_path(&path);
            if tmp.exists() {
                fs::remove_file(&tmp).at(&tmp)?;
            }
            // A file at its final name was made durable, record attached,
            // before the rename: it is whole.
            let Some(rec) = read_xattr_record(&path)? else {
                continue;
            };
            let len = fs::metadata(&path).at(&path)?.len();
            if rec.start != start || rec.len != len {
                continue;
            }
            let indexed = self
                .read_day(&camera, day_number(start))?
                .get(&start.0)
                .is_some_and(|r| *r == rec);
            if !indexed {
                to_index.push(rec.into_meta(camera));
            }
        }
        if !to_index.is_empty() {
            tracing::info!(
                segments = to_index.len(),
                "recovered segments of an interrupted batch"
            );
            self.append_index(&to_index)?;
        }
        self.clear_journal()
    }

    /// Writes new complete segments and indexes them, durably, as one batch.
    /// `fill` produces each segment's bytes, on the rayon pool, straight
    /// into its temporary file; length and BLAKE3 are taken as they pass.
    pub fn write_segments<F>(&self, specs: &[SegmentSpec], fill: F) -> Result<Vec<SegmentMeta>>
    where
        F: Fn(&SegmentSpec, &mut dyn Write) -> io::Result<()> + Sync,
    {
        self.require_writer()?;
        // 1. Intents, so a crash below can be finished or undone.
        self.write_journal(specs)?;
        // 2. Bytes and record into temporary files, each made durable.
        // Directories first: creating them is cheap, and the syncfs below
        // makes their entries durable with everything else.
        let dirs: BTreeSet<PathBuf> = specs
            .iter()
            .filter_map(|m| {
                self.segment_path(&m.camera, m.start)
                    .parent()
                    .map(Path::to_path_buf)
            })
            .collect();
        for d in &dirs {
            fs::create_dir_all(d).at(d)?;
        }
        let metas: Vec<SegmentMeta> = specs
            .par_iter()
            .map(|sp| -> Result<SegmentMeta> {
                let path = self.segment_path(&sp.camera, sp.start);
                let tmp = tmp_path(&path);
                let mut f = File::create(&tmp).at(&tmp)?;
                let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, &mut f));
                fill(sp, &mut w).at(&tmp)?;
                let (blake3, len, buf) = w.finish();
                buf.into_inner().map_err(|e| e.into_error()).at(&tmp)?;
                let m = SegmentMeta {
                    camera: sp.camera.clone(),
                    start: sp.start,
                    duration_us: sp.duration_us,
                    len,
                    blake3,
                    state: SegmentState::Complete,
                    origin: sp.origin.clone(),
                    notes: None,
                };
                write_xattr_record(&f, &tmp, &Record::put(&m))?;
                Ok(m)
            })
            .collect::<Result<_>>()?;
        // One syncfs makes every file of the batch durable (data, size,
        // attribute), where an fsync each would cost a flush each.
        self.sync_fs()?;
        // 3. Final names, and the directories that hold them, durable.
        for m in &metas {
            let path = self.segment_path(&m.camera, m.start);
            fs::rename(tmp_path(&path), &path).at(&path)?;
        }
        self.sync_fs()?;
        // 4. The index.
        self.append_index(&metas)?;
        // 5. Done: nothing left to recover.
        self.clear_journal()?;
        Ok(metas)
    }

    /// Flushes everything written to the store's filesystem (Linux
    /// `syncfs`): data, metadata, directory entries.
    pub fn sync_fs(&self) -> Result<()> {
        let f = File::open(&self.root).at(&self.root)?;
        rustix::fs::syncfs(&f)
            .map_err(io::Error::from)
            .at(&self.root)
    }

    /// Re-hashes every complete segment (of `camera`, or all), in parallel.
    pub fn verify(&self, camera: Option<&CameraId>) -> Result<VerifyReport> {
        let cameras = match camera {
            Some(c) => vec![c.clone()],
            None => self.cameras()?,
        };
        let mut segs = Vec::new();
        for c in &cameras {
            segs.extend(
                self.all_segments(c)?
                    .into_iter()
                    .filter(|s| s.state == SegmentState::Complete),
            );
        }
        let problems: Vec<VerifyProblem> = segs
            .par_iter()
            .filter_map(|m| {
                let path = self.segment_path(&m.camera, m.start);
                check_segment_file(&path, m)
                    .err()
                    .map(|problem| VerifyProblem {
                        camera: m.camera.clone(),
                        start: m.start.to_string(),
                        path: path.display().to_string(),
                        problem,
                    })
            })
            .collect();
        Ok(VerifyReport {
            segments: segs.len() as u64,
            bytes: segs.iter().map(|s| s.len).sum(),
            problems,
        })
    }

    /// Rebuilds the index from the segment files and their attached records.
    /// The new index is built beside the old one and swapped in at the end.
    pub fn rebuild(&self) -> Result<RebuildReport> {
        self.require_writer()?;
        let _index = self.index_guard()?;
        let seg_root = self.root.join("segments");
        let mut report = RebuildReport::default();
        let mut by_camera: BTreeMap<CameraId, Vec<SegmentMeta>> = BTreeMap::new();
        let mut files = Vec::new();
        walk_files(&seg_root, &mut files)?;
        let found: Vec<std::result::Result<SegmentMeta, String>> = files
            .par_iter()
            .filter(|p| p.extension().is_some_and(|e| e == SEGMENT_EXT))
            .map(|p| rebuild_one(&seg_root, p))
            .collect();
        for f in found {
            match f {
                Ok(m) => by_camera.entry(m.camera.clone()).or_default().push(m),
                Err(why) => report.skipped.push(why),
            }
        }
        let new_index = self.root.join("index.new");
        if new_index.exists() {
            fs::remove_dir_all(&new_index).at(&new_index)?;
        }
        fs::create_dir_all(&new_index).at(&new_index)?;
        for (camera, metas) in &by_camera {
            let mut by_day: BTreeMap<i64, Vec<Record>> = BTreeMap::new();
            for m in metas {
                by_day
                    .entry(day_number(m.start))
                    .or_default()
                    .push(Record::put(m));
            }
            let cam_dir = new_index.join(camera.as_str());
            fs::create_dir_all(&cam_dir).at(&cam_dir)?;
            for (day, mut recs) in by_day {
                recs.sort_by_key(|r| r.start);
                let p = cam_dir.join(format!("{}.log", day_name(day_start(day))));
                let mut f = File::create(&p).at(&p)?;
                log::append_records(&mut f, &recs).at(&p)?;
            }
            sync_dir(&cam_dir)?;
            report.segments += metas.len() as u64;
        }
        report.cameras = by_camera.len();
        File::create(new_index.join("COMPLETE")).at(&new_index)?;
        sync_dir(&new_index)?;
        swap_in_rebuilt_index(&self.root)?;
        self.discard_journal()?;
        Ok(report)
    }
}

fn rebuild_one(seg_root: &Path, p: &Path) -> std::result::Result<SegmentMeta, String> {
    let rel = p.strip_prefix(seg_root).unwrap_or(p);
    let shown = || p.display().to_string();
    let camera = rel
        .components()
        .next()
        .and_then(|c| c.as_os_str().to_str())
        .and_then(|c| CameraId::new(c).ok())
        .ok_or_else(|| format!("{}: not under a valid camera directory", shown()))?;
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let start = parse_segment_file_name(name)
        .ok_or_else(|| format!("{}: not a segment file name", shown()))?;
    if Path::new("segments").join(rel) != segment_rel_path(&camera, start) {
        return Err(format!("{}: not at the path its name implies", shown()));
    }
    let rec = read_xattr_record(p)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: no hafill record attached", shown()))?;
    if rec.start != start {
        return Err(format!(
            "{}: attached record is for another start time",
            shown()
        ));
    }
    let len = fs::metadata(p)
        .map_err(|e| format!("{}: {e}", shown()))?
        .len();
    if len != rec.len {
        return Err(format!(
            "{}: {len} bytes on disk, record says {}",
            shown(),
            rec.len
        ));
    }
    Ok(rec.into_meta(camera))
}

fn swap_in_rebuilt_index(root: &Path) -> Result<()> {
    let index = root.join("index");
    let old = root.join("index.old");
    let new = root.join("index.new");
    if old.exists() {
        fs::remove_dir_all(&old).at(&old)?;
    }
    if index.exists() {
        fs::rename(&index, &old).at(&index)?;
    }
    fs::rename(&new, &index).at(&new)?;
    sync_dir(root)?;
    if old.exists() {
        fs::remove_dir_all(&old).at(&old)?;
    }
    let _ = fs::remove_file(index.join("COMPLETE"));
    Ok(())
}

/// Finishes a rebuild that a crash interrupted between its two renames.
fn finish_interrupted_rebuild(root: &Path) -> Result<()> {
    let index = root.join("index");
    let new = root.join("index.new");
    if !index.exists() && new.join("COMPLETE").exists() {
        fs::rename(&new, &index).at(&new)?;
        let _ = fs::remove_file(index.join("COMPLETE"));
        sync_dir(root)?;
    }
    Ok(())
}

/// A store carries `index/` from the moment it is made: one that has its
/// marker but no `index/` lost it (deleted by hand, a damaged filesystem).
/// Read as is, it would look empty, and the server would stop offering its
/// own recordings. So it is rebuilt from the segment files, when no
/// recorder holds the store; otherwise the open is refused with the
/// command to run.
fn heal_lost_index(root: &Path) -> Result<()> {
    let index = root.join("index");
    if index.exists() {
        return Ok(());
    }
    let lock = match Store::lock(root, "lock") {
        Ok(lock) => lock,
        Err(StoreError::Locked(_)) => {
            return Err(StoreError::Damaged {
                path: index,
                store: root.to_path_buf(),
                reason: "is missing (the store's marker says it had one), and the recorder holds the store, so it cannot be rebuilt now".into(),
            })
        }
        Err(e) => return Err(e),
    };
    tracing::warn!(
        "{}: index/ is missing; rebuilding it from the segment files",
        root.display()
    );
    let store = Store {
        root: root.to_path_buf(),
        lock: Some(lock),
        filler: None,
    };
    let report = store.rebuild()?;
    tracing::warn!(
        segments = report.segments,
        skipped = report.skipped.len(),
        "{}: index rebuilt",
        root.display()
    );
    Ok(())
}

fn init_store(root: &Path) -> Result<()> {
    if root.exists() && !root.is_dir() {
        return Err(StoreError::Io {
            path: root.to_path_buf(),
            source: io::Error::other("exists and is not a directory"),
        });
    }
    // Made again if an init was cut short (`init_at` adopts them): a
    // store's index/ exists from the moment its marker does. Unless the
    // folder already holds segment files without an index (a store that
    // lost its marker and index/): then index/ stays absent, and the first
    // open rebuilds it from the files rather than reading an empty one.
    let has_segments = fs::read_dir(root.join("segments")).is_ok_and(|mut d| d.next().is_some());
    if !has_segments || root.join("index").exists() {
        fs::create_dir_all(root.join("index")).at(root)?;
    }
    fs::create_dir_all(root.join("segments")).at(root)?;
    let marker = root.join(MARKER);
    let tmp = root.join(format!("{MARKER}{TMP_SUFFIX}"));
    let mut f = File::create(&tmp).at(&tmp)?;
    f.write_all(MARKER_CONTENT.as_bytes()).at(&tmp)?;
    if xattr::FileExt::set_xattr(&f, XATTR_NAME, b"probe").is_err() {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::NoXattr(root.to_path_buf()));
    }
    let _ = xattr::FileExt::remove_xattr(&f, XATTR_NAME);
    f.sync_all().at(&tmp)?;
    fs::rename(&tmp, &marker).at(&marker)?;
    sync_dir(root)?;
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

fn check_marker(root: &Path) -> Result<()> {
    let marker = root.join(MARKER);
    match fs::read_to_string(&marker) {
        Ok(s) if s == MARKER_CONTENT => {
            finish_interrupted_rebuild(root)?;
            heal_lost_index(root)
        }
        Ok(_) => Err(StoreError::Version(root.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(StoreError::NotAStore(root.to_path_buf()))
        }
        Err(e) => Err(e).at(&marker),
    }
}

pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

pub fn write_xattr_record(f: &File, path: &Path, rec: &Record) -> Result<()> {
    let mut buf = Vec::new();
    rec.encode(&mut buf);
    xattr::FileExt::set_xattr(f, XATTR_NAME, &buf).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTSUP) => StoreError::NoXattr(path.to_path_buf()),
        _ => StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })
}

/// The record attached to a segment file, if it has one.
pub fn read_xattr_record(path: &Path) -> Result<Option<Record>> {
    match xattr::get(path, XATTR_NAME) {
        Ok(Some(b)) => Ok(Record::decode(&b)
            .ok()
            .filter(|r| r.kind == RecordKind::Put)),
        Ok(None) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).at(path),
    }
}

/// Removes each reservation file (`path`, `meta`) whose own record still
/// says `placeholder` for those bytes (start, length, BLAKE3) with no
/// durable block, then makes the removals durable (each folder synced
/// once). A file that is complete or partial (verified blocks that may be
/// the last copy), someone else's, or gone is left alone. Returns the
/// reservations removed.
pub(crate) fn release_reservations(
    files: impl IntoIterator<Item = (PathBuf, SegmentMeta)>,
) -> Result<Vec<SegmentMeta>> {
    let mut gone = Vec::new();
    let mut dirs = BTreeSet::new();
    for (path, m) in files {
        let Some(rec) = read_xattr_record(&path)? else {
            continue;
        };
        let durable = crate::placeholder::read_progress(&path)?.map_or(0, |p| p.durable_count());
        if rec.state != SegmentState::Placeholder
            || durable > 0
            || rec.start != m.start
            || rec.len != m.len
            || rec.blake3 != m.blake3
        {
            continue;
        }
        fs::remove_file(&path).at(&path)?;
        if let Some(dir) = path.parent() {
            dirs.insert(dir.to_path_buf());
        }
        gone.push(m);
    }
    for dir in dirs {
        sync_dir(&dir)?;
    }
    Ok(gone)
}

/// Checks a file against its metadata: present, right length, right BLAKE3.
pub fn check_segment_file(path: &Path, m: &SegmentMeta) -> std::result::Result<(), String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let len = f.metadata().map_err(|e| format!("cannot stat: {e}"))?.len();
    if len != m.len {
        return Err(format!("{len} bytes on disk, index says {}", m.len));
    }
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got = h.finalize();
    if got != m.blake3 {
        return Err(format!("BLAKE3 {got} on disk, index says {}", m.blake3));
    }
    Ok(())
}

fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(dir),
    };
    for e in rd {
        let e = e.at(dir)?;
        let ft = e.file_type().at(&e.path())?;
        if ft.is_dir() {
            walk_files(&e.path(), out)?;
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

/// A writer that hashes and counts what passes through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
            len: 0,
        }
    }
    pub fn finish(self) -> (blake3::Hash, u64, W) {
        (self.hasher.finalize(), self.len, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Groups segments into coverage runs (touching or overlapping segments of
/// the same camera form one run).
pub fn runs_of(segs: &[SegmentMeta]) -> IntervalSet {
    IntervalSet::from_intervals(segs.iter().map(|s| s.interval()))
}

/// Counts segments by state, for summaries.
pub fn count_states(segs: &[SegmentMeta]) -> HashMap<&'static str, u64> {
    let mut m = HashMap::new();
    for s in segs {
        let k = match s.state {
            SegmentState::Complete => "complete",
            SegmentState::Placeholder => "placeholder",
            SegmentState::Partial => "partial",
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::Origin;

    fn meta(camera: &CameraId, start_us: i64, state: SegmentState) -> SegmentMeta {
        SegmentMeta {
            camera: camera.clone(),
            start: Timestamp(start_us),
            duration_us: 60_000_000,
            len: 4096,
            blake3: blake3::hash(&start_us.to_le_bytes()),
            state,
            origin: Origin::Local,
            notes: None,
        }
    }

    #[test]
    fn a_batch_made_durable_by_syncfs_reads_back_like_single_appends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path().join("s"), true).unwrap();
        let cams: Vec<CameraId> = (1..=3)
            .map(|i| CameraId::new(format!("cam-{i:04}")).unwrap())
            .collect();
        // Two days per camera, so the batch spans six log files.
        let day = 86_400_000_000i64;
        let starts = [day - 120_000_000, day - 60_000_000, day, day + 60_000_000];
        let batch: Vec<SegmentMeta> = cams
            .iter()
            .flat_map(|c| starts.map(|s| meta(c, s, SegmentState::Placeholder)))
            .collect();
        store.append_index_by_syncfs(&batch).unwrap();
        // A later single append to the same logs follows the batch.
        store
            .append_index(&[meta(&cams[0], day, SegmentState::Complete)])
            .unwrap();
        drop(store);

        let reader = Store::open(dir.path().join("s")).unwrap();
        assert_eq!(reader.cameras().unwrap(), cams);
        for c in &cams {
            let segs = reader.all_segments(c).unwrap();
            let got: Vec<(i64, SegmentState)> = segs.iter().map(|s| (s.start.0, s.state)).collect();
            let want: Vec<(i64, SegmentState)> = starts
                .iter()
                .map(|&s| {
                    let state = if c == &cams[0] && s == day {
                        SegmentState::Complete
                    } else {
                        SegmentState::Placeholder
                    };
                    (s, state)
                })
                .collect();
            assert_eq!(got, want, "camera {c}");
        }
    }

    #[test]
    fn a_removal_spares_a_segment_completed_at_that_start_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path().join("s"), true).unwrap();
        let cam = CameraId::new("cam-0001").unwrap();
        let (a, b) = (
            meta(&cam, 0, SegmentState::Placeholder),
            meta(&cam, 60_000_000, SegmentState::Placeholder),
        );
        store.append_index(&[a.clone(), b.clone()]).unwrap();
        // The recorder completed b's start while its release was decided.
        let done = SegmentMeta {
            state: SegmentState::Complete,
            ..b.clone()
        };
        store.append_index(std::slice::from_ref(&done)).unwrap();
        store.remove_from_index(&[a, b]).unwrap();
        assert_eq!(store.all_segments(&cam).unwrap(), vec![done]);
    }
}
