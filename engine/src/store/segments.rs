//! `[recorder] kind = "segments"`: a recorder's folder of segment files,
//! one per camera and start, named by `[recorder] pattern` (the ffmpeg
//! segment muxer with `-strftime 1`, MediaMTX's `recordPath`, many
//! home-made recorders).
//!
//! The recorder owns the folder. hafill reads the files the pattern names,
//! never touches any other, never changes or removes one, and adds a file
//! only by renaming a verified, fsynced segment from its own state folder
//! (same filesystem) to a name that is free. Reservations for gaps live in
//! the state folder (`staging/`), never in the recorder's.
//!
//! A segment's duration is read from its container (MP4 `mvhd`, MPEG-TS
//! timestamps); for other containers it is the spacing to the next segment,
//! at most the camera's usual spacing. A camera's newest file is offered
//! only once it has not changed for `[recorder] settle`: before that the
//! recorder may still be writing it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::native::FileSink;
use super::pattern::SegmentPattern;
use super::traits::{Matching, Recorder, SegmentSink, UNKNOWN_HASH};
use super::{media, read_xattr_record, write_xattr_record, StoreError, XATTR_NAME};
use crate::camera::CameraId;
use crate::placeholder::{
    self, Budget, PlaceOptions, Placed, Progress, SparseLedger, PROGRESS_XATTR,
};
use crate::segment::{Origin, Record, SegmentMeta, SegmentState};
use crate::state::{mtime_ns, FileFacts, OriginRecord, State};
use crate::units::Timestamp;

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A recorder file the pattern names.
#[derive(Debug, Clone)]
struct RecFile {
    path: PathBuf,
    start: Timestamp,
    len: u64,
    mtime_ns: i64,
}

/// A folder of segment files behind the adapter trait.
#[derive(Debug)]
pub struct SegmentsRecorder {
    path: PathBuf,
    pattern: SegmentPattern,
    settle_us: u64,
    state: Arc<State>,
    /// Held while this process fills (backfill, gate, scrub).
    _lock: Option<File>,
}

/// The recorder's folder: it must exist (the recorder makes it; hafill
/// never does, so an unmounted volume is not filled on the root
/// filesystem).
pub fn check_recorder_folder(path: &Path) -> Result<fs::Metadata, StoreError> {
    let meta = fs::metadata(path).map_err(|e| StoreError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(
            e.kind(),
            format!("[recorder] path: the recorder's folder cannot be read ({e}); is its volume mounted?"),
        ),
    })?;
    if !meta.is_dir() {
        return Err(StoreError::Io {
            path: path.to_path_buf(),
            source: io::Error::other("[recorder] path is not a folder"),
        });
    }
    Ok(meta)
}

impl SegmentsRecorder {
    /// Opens the recorder's folder `path` (which must exist) with hafill's
    /// state in `state`. A `writer` takes the state's lock and checks that
    /// the state is on the recorder's filesystem (installs are renames).
    pub fn open(
        path: &Path,
        pattern: SegmentPattern,
        settle_us: u64,
        state: &Path,
        writer: bool,
    ) -> Result<Self, StoreError> {
        check_recorder_folder(path)?;
        let state = Arc::new(State::open(state)?);
        let lock = if writer {
            let lock = state.lock()?;
            Self::check_same_filesystem(path, state.dir())?;
            Some(lock)
        } else {
            None
        };
        Ok(SegmentsRecorder {
            path: path.to_path_buf(),
            pattern,
            settle_us,
            state,
            _lock: lock,
        })
    }

    /// Refuses hafill's state on another filesystem than the recorder's
    /// folder: a backfilled segment must be renamed into place atomically.
    pub fn check_same_filesystem(path: &Path, state: &Path) -> Result<(), StoreError> {
        let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).map_err(io_at(p));
        if dev(state)? != dev(path)? {
            return Err(StoreError::Io {
                path: state.to_path_buf(),
                source: io::Error::other(format!(
                    "[server] state must be on the same filesystem as [recorder] path ({}), so that a backfilled segment is renamed into place atomically",
                    path.display()
                )),
            });
        }
        Ok(())
    }

    /// Every file of `camera` the pattern names, sorted by start.
    fn files_of(&self, camera: &CameraId) -> Result<Vec<RecFile>, StoreError> {
        let rel_root = self.pattern.camera_root(camera.as_str());
        let depth = self.pattern.depth() - rel_root.components().count();
        let mut found = Vec::new();
        walk(&self.path.join(&rel_root), depth, &mut found)?;
        let mut out = Vec::new();
        for (path, m) in found {
            let Some(rel) = path.strip_prefix(&self.path).ok().and_then(|r| r.to_str()) else {
                continue;
            };
            match self.pattern.parse_name(rel) {
                Some((cam, start)) if cam == camera.as_str() => out.push(RecFile {
                    path,
                    start,
                    len: m.len(),
                    mtime_ns: mtime_ns(&m),
                }),
                _ => {}
            }
        }
        out.sort_by_key(|f| f.start);
        Ok(out)
    }

    /// What the file is: from the state's cache, else read (and cached).
    fn facts(&self, f: &RecFile) -> FileFacts {
        if let Some(k) = self.state.facts(&f.path, f.len, f.mtime_ns) {
            return k;
        }
        let (duration_us, not_a_segment) = match media::duration_us(&f.path) {
            Ok(d) => (d, None),
            Err(why) => {
                tracing::error!(
                    "{}: named like a segment by [recorder] pattern, but {why}; not offered, not touched",
                    f.path.display()
                );
                (None, Some(why))
            }
        };
        let k = FileFacts {
            path: f.path.clone(),
            len: f.len,
            mtime_ns: f.mtime_ns,
            duration_us,
            blake3: None,
            not_a_segment,
        };
        if let Err(e) = self.state.remember(k.clone()) {
            tracing::warn!("{e}");
        }
        k
    }

    /// The finished segments of `camera` that may overlap `[from, to)`,
    /// with their durations.
    fn finished(
        &self,
        camera: &CameraId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<(RecFile, SegmentMeta)>, StoreError> {
        let files = self.files_of(camera)?;
        let spacing: Vec<i64> = files
            .windows(2)
            .map(|w| w[1].start.0 - w[0].start.0)
            .collect();
        let usual = median(&spacing);
        let now_ns = Timestamp::now().0.saturating_mul(1000);
        let mut out = Vec::new();
        let longest = super::MAX_SEGMENT_DURATION_US as i64;
        for (i, f) in files.iter().enumerate() {
            if f.start.0 >= to.0 || f.start.0.saturating_add(longest) <= from.0 {
                continue; // outside the window: not even read
            }
            if self.unsettled(f, now_ns) {
                continue; // the recorder may still be writing it
            }
            let k = self.facts(f);
            if k.not_a_segment.is_some() {
                continue;
            }
            let duration_us = match (k.duration_us, files.get(i + 1), usual) {
                (Some(d), _, _) => d,
                (None, Some(next), Some(u)) => (next.start.0 - f.start.0).min(u) as u64,
                (None, Some(next), None) => (next.start.0 - f.start.0) as u64,
                (None, None, Some(u)) => u as u64,
                (None, None, None) => continue,
            };
            if duration_us == 0 || duration_us > super::MAX_SEGMENT_DURATION_US {
                continue;
            }
            let blake3 = k
                .blake3
                .as_deref()
                .and_then(|h| blake3::Hash::from_hex(h).ok())
                .unwrap_or(UNKNOWN_HASH);
            let origin = match self.state.origin_of(&f.path) {
                Some(p) => Origin::Peer(p),
                None => Origin::Local,
            };
            let meta = SegmentMeta {
                camera: camera.clone(),
                start: f.start,
                duration_us,
                len: f.len,
                blake3,
                state: SegmentState::Complete,
                origin,
            };
            out.push((f.clone(), meta));
        }
        Ok(out)
    }

    /// Whether the recorder may still be writing `f`: changed within
    /// `settle`.
    fn unsettled(&self, f: &RecFile, now_ns: i64) -> bool {
        self.settle_us > 0
            && now_ns.saturating_sub(f.mtime_ns) < (self.settle_us as i64).saturating_mul(1000)
    }

    fn staging_path(&self, camera: &CameraId, start: Timestamp) -> PathBuf {
        self.state
            .staging_dir()
            .join(camera.as_str())
            .join(format!("{}.part", start.0))
    }

    /// hafill's reservations, of `camera` or of all cameras.
    fn reservations(&self, camera: Option<&CameraId>) -> Result<Vec<SegmentMeta>, StoreError> {
        let dir = self.state.staging_dir();
        let cams: Vec<CameraId> = match camera {
            Some(c) => vec![c.clone()],
            None => list_dir(&dir)?
                .into_iter()
                .filter_map(|n| CameraId::new(n).ok())
                .collect(),
        };
        let mut out = Vec::new();
        for c in cams {
            let cdir = dir.join(c.as_str());
            for name in list_dir(&cdir)? {
                if !name.ends_with(".part") {
                    continue;
                }
                if let Some(r) = read_xattr_record(&cdir.join(&name))? {
                    let m = r.into_meta(c.clone());
                    if m.state != SegmentState::Complete {
                        out.push(m);
                    }
                }
            }
        }
        out.sort_by_key(|m| m.start);
        Ok(out)
    }
}

fn median(v: &[i64]) -> Option<i64> {
    let mut v: Vec<i64> = v.iter().copied().filter(|d| *d > 0).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

fn list_dir(dir: &Path) -> Result<Vec<String>, StoreError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_at(dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io_at(dir))?;
        if let Some(n) = e.file_name().to_str() {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

/// Regular files exactly `depth` levels below `dir`.
fn walk(
    dir: &Path,
    depth: usize,
    out: &mut Vec<(PathBuf, fs::Metadata)>,
) -> Result<(), StoreError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_at(dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io_at(dir))?;
        let ft = e.file_type().map_err(io_at(dir))?;
        if depth > 1 && ft.is_dir() {
            walk(&e.path(), depth - 1, out)?;
        } else if depth == 1 && ft.is_file() {
            match e.metadata() {
                Ok(m) => out.push((e.path(), m)),
                // Removed by the recorder's retention meanwhile.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_at(&e.path())(err)),
            }
        }
    }
    Ok(())
}

impl Recorder for SegmentsRecorder {
    fn describe(&self) -> String {
        format!(
            "segments {} ({})",
            self.path.display(),
            self.pattern.as_str()
        )
    }

    fn matching(&self) -> Matching {
        Matching::ByTime
    }

    fn data_dir(&self) -> &Path {
        &self.path
    }

    fn cameras(&self) -> Result<Vec<CameraId>, StoreError> {
        // The cameras are what the names say: walk the folder to the
        // pattern's depth.
        let mut found = Vec::new();
        walk(&self.path, self.pattern.depth(), &mut found)?;
        let mut out: Vec<CameraId> = found
            .iter()
            .filter_map(|(p, _)| {
                let rel = p.strip_prefix(&self.path).ok()?.to_str()?;
                let (cam, _) = self.pattern.parse_name(rel)?;
                CameraId::new(cam).ok()
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn segments(
        &self,
        camera: &CameraId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<SegmentMeta>, StoreError> {
        let mut out: Vec<SegmentMeta> = self
            .finished(camera, from, to)?
            .into_iter()
            .map(|(_, m)| m)
            .chain(self.reservations(Some(camera))?)
            .filter(|m| m.start < to && m.end() > from)
            .collect();
        out.sort_by_key(|m| m.start);
        Ok(out)
    }

    fn last_segment_end(&self, camera: &CameraId) -> Result<Option<Timestamp>, StoreError> {
        Ok(self
            .finished(camera, crate::units::MIN_TIME, crate::units::MAX_TIME)?
            .iter()
            .map(|(_, m)| m.end())
            .max())
    }

    fn recording_since(&self, camera: &CameraId) -> Result<Option<Timestamp>, StoreError> {
        let now_ns = Timestamp::now().0.saturating_mul(1000);
        Ok(self
            .files_of(camera)?
            .iter()
            .filter(|f| self.unsettled(f, now_ns))
            .map(|f| f.start)
            .min())
    }

    fn open(
        &self,
        camera: &CameraId,
        start: Timestamp,
    ) -> Result<Option<(File, SegmentMeta)>, StoreError> {
        let Some((f, meta)) = self
            .finished(camera, start, start.add_micros(1))?
            .into_iter()
            .find(|(_, m)| m.start == start)
        else {
            return Ok(None);
        };
        let file = File::open(&f.path).map_err(io_at(&f.path))?;
        Ok(Some((file, meta)))
    }

    fn note_hash(&self, meta: &SegmentMeta, hash: blake3::Hash) {
        let Ok(Some((f, _))) = self
            .finished(&meta.camera, meta.start, meta.start.add_micros(1))
            .map(|v| v.into_iter().find(|(_, m)| m.start == meta.start))
        else {
            return;
        };
        let mut k = self.facts(&f);
        if f.len != meta.len {
            return;
        }
        k.blake3 = Some(hash.to_hex().to_string());
        if let Err(e) = self.state.remember(k) {
            tracing::warn!("{e}");
        }
    }

    fn reserve(
        &self,
        sources: &[(&SegmentMeta, &str)],
        opts: PlaceOptions,
    ) -> Result<Placed, StoreError> {
        let mut order: Vec<&(&SegmentMeta, &str)> = sources.iter().collect();
        order.sort_by_key(|(m, _)| std::cmp::Reverse(m.start));
        let ledger = SparseLedger::in_dir(self.state.dir());
        let mut budget = Budget::on_filesystem(&self.path, opts.reserve_bytes, &ledger)?;
        let mut out = Placed::default();
        let mut to_make = Vec::new();
        for (src, peer) in order {
            let target = self
                .path
                .join(self.pattern.expand(src.camera.as_str(), src.start));
            if target.exists() {
                // The recorder holds a file of that name (one it cannot
                // finish, or cut within the same second): never replaced.
                tracing::warn!(camera = %src.camera, start = %src.start, "not reserved: {} exists", target.display());
                continue;
            }
            let path = self.staging_path(&src.camera, src.start);
            if let Some(existing) = read_xattr_record(&path)? {
                // An earlier run's reservation is kept only for the same
                // peer's same bytes: another peer cuts other bytes.
                let same = existing.len == src.len
                    && existing.origin == Origin::Peer(peer.to_string())
                    && (existing.blake3 == src.blake3 || src.blake3 == UNKNOWN_HASH);
                if same && existing.state != SegmentState::Complete {
                    out.placed.push(existing.into_meta(src.camera.clone()));
                    continue;
                }
            }
            if !budget.take(placeholder::space_cost(src.len)) {
                out.no_room.push(((*src).clone(), peer.to_string()));
                continue;
            }
            let meta = SegmentMeta {
                state: SegmentState::Placeholder,
                origin: Origin::Peer(peer.to_string()),
                ..(*src).clone()
            };
            to_make.push((path, meta));
        }
        // Sparse reservations are listed before they exist (see
        // `SparseLedger`); so are those where `fallocate` failed, after.
        if opts.sparse {
            let listed: Vec<(PathBuf, u64)> =
                to_make.iter().map(|(p, m)| (p.clone(), m.len)).collect();
            ledger.charge(&listed)?;
        }
        let mut made = Vec::new();
        let mut unallocated = Vec::new();
        for (path, meta) in to_make {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(io_at(dir))?;
            }
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .map_err(io_at(&path))?;
            let _ = xattr::FileExt::remove_xattr(&f, PROGRESS_XATTR);
            if !placeholder::reserve_space(&f, &path, meta.len, opts.sparse)? && !opts.sparse {
                unallocated.push((path.clone(), meta.len));
            }
            write_xattr_record(&f, &path, &Record::put(&meta))?;
            made.push(meta);
        }
        ledger.charge(&unallocated)?;
        if !made.is_empty() {
            // One flush for the batch: the reservations and their records.
            let dir = self.state.staging_dir();
            let d = File::open(&dir).map_err(io_at(&dir))?;
            rustix::fs::syncfs(&d)
                .map_err(io::Error::from)
                .map_err(io_at(&dir))?;
        }
        out.placed.extend(made);
        Ok(out)
    }

    fn outstanding(&self, from: Timestamp, to: Timestamp) -> Result<Vec<SegmentMeta>, StoreError> {
        Ok(self
            .reservations(None)?
            .into_iter()
            .filter(|m| m.start < to && m.end() > from)
            .collect())
    }

    fn release(&self, metas: &[SegmentMeta]) -> Result<Vec<SegmentMeta>, StoreError> {
        super::release_reservations(
            metas
                .iter()
                .map(|m| (self.staging_path(&m.camera, m.start), m.clone())),
        )
    }

    fn sink(&self, meta: &SegmentMeta) -> Result<Box<dyn SegmentSink>, StoreError> {
        let staging = self.staging_path(&meta.camera, meta.start);
        Ok(Box::new(InstallSink {
            inner: FileSink::open(staging, meta.len)?,
            target: self
                .path
                .join(self.pattern.expand(meta.camera.as_str(), meta.start)),
            root: self.path.clone(),
            state: self.state.clone(),
        }))
    }
}

/// A reservation in the state folder, filled in place, then renamed into
/// the recorder's folder.
#[derive(Debug)]
struct InstallSink {
    inner: FileSink,
    target: PathBuf,
    root: PathBuf,
    state: Arc<State>,
}

impl SegmentSink for InstallSink {
    fn file(&self) -> &Arc<File> {
        self.inner.file()
    }

    fn progress(&self) -> Result<Option<Progress>, StoreError> {
        self.inner.progress()
    }

    fn record_seen(&self, p: &Progress) -> Result<(), StoreError> {
        self.inner.record_seen(p)
    }

    fn record_durable(&self, meta: &SegmentMeta, p: &Progress) -> Result<(), StoreError> {
        self.inner.record_durable(meta, p)
    }

    /// Renames the verified file to its name in the recorder's folder, never
    /// over a file that is there, then fsyncs the folders and records the
    /// origin.
    fn install(&self, meta: &SegmentMeta) -> Result<SegmentMeta, StoreError> {
        let staged = self.inner.path();
        let file = self.inner.file();
        let taken = |what: &str| StoreError::BadSegment {
            camera: meta.camera.clone(),
            start: meta.start,
            reason: format!(
                "{} {what}; the recorder's file is kept and the backfilled copy dropped",
                self.target.display()
            ),
        };
        if self.target.exists() {
            let _ = fs::remove_file(staged);
            return Err(taken("already exists"));
        }
        // A file that says it is shorter or longer than the peer claimed is
        // not installed: the gap would stay and come back every round.
        if let Ok(Some(d)) = media::duration_us(staged) {
            if d.abs_diff(meta.duration_us) > 1_000_000 {
                let _ = fs::remove_file(staged);
                return Err(StoreError::BadSegment {
                    camera: meta.camera.clone(),
                    start: meta.start,
                    reason: format!(
                        "the peer said {} µs, the file holds {d} µs; not installed",
                        meta.duration_us
                    ),
                });
            }
        }
        file.sync_all().map_err(io_at(staged))?;
        let Some(dir) = self.target.parent() else {
            return Err(taken("has no folder"));
        };
        // New folders, outermost first, so each can be fsynced in its parent.
        let mut new_dirs = Vec::new();
        let mut d = dir;
        while !d.exists() && d.starts_with(&self.root) && d != self.root {
            new_dirs.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            staged,
            rustix::fs::CWD,
            &self.target,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                let _ = fs::remove_file(staged);
                return Err(taken("appeared meanwhile"));
            }
            Err(e) => return Err(io_at(&self.target)(io::Error::from(e))),
        }
        super::sync_dir(dir)?;
        // Renamed with its record on, so a crash before this point leaves a
        // reservation that the next run installs; now it carries nothing
        // of hafill's.
        let _ = xattr::FileExt::remove_xattr(&**file, PROGRESS_XATTR);
        let _ = xattr::FileExt::remove_xattr(&**file, XATTR_NAME);
        tracing::info!(camera = %meta.camera, start = %meta.start, "installed {}", self.target.display());
        for nd in new_dirs.iter().rev() {
            if let Some(p) = nd.parent() {
                super::sync_dir(p)?;
            }
        }
        let peer = match &meta.origin {
            Origin::Peer(p) => p.clone(),
            Origin::Local => String::new(),
        };
        self.state.record_origin(OriginRecord {
            path: self.target.clone(),
            camera: meta.camera.to_string(),
            start_us: meta.start.0,
            len: meta.len,
            blake3: meta.blake3.to_hex().to_string(),
            peer,
        })?;
        if let Ok(m) = fs::metadata(&self.target) {
            let _ = self.state.remember(FileFacts {
                path: self.target.clone(),
                len: m.len(),
                mtime_ns: mtime_ns(&m),
                duration_us: media::duration_us(&self.target).ok().flatten(),
                blake3: Some(meta.blake3.to_hex().to_string()),
                not_a_segment: None,
            });
        }
        Ok(SegmentMeta {
            state: SegmentState::Complete,
            ..meta.clone()
        })
    }
}
