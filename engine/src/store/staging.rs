//! Reservations in hafill's state folder (`staging/`), for the adapters of
//! recorders that own their folders (`segments`, `frigate`): a reservation
//! is a file of the source's size, its record (and the recorder's notes)
//! in extended attributes, filled in place, then renamed into the
//! recorder's folder. Nothing here writes into the recorder's folder except
//! [`Staging::rename_into`], and that only to a name that is free.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::native::FileSink;
use super::traits::{SegmentSink, UNKNOWN_HASH};
use super::{media, read_xattr_record, write_xattr_record, StoreError, XATTR_NAME};
use crate::camera::CameraId;
use crate::placeholder::{
    self, Budget, PlaceOptions, Placed, Progress, SparseLedger, PROGRESS_XATTR,
};
use crate::segment::{Origin, Record, SegmentMeta, SegmentState, MAX_NOTES_LEN};
use crate::state::{mtime_ns, FileFacts, OriginRecord, State};
use crate::units::Timestamp;

/// The recorder's notes on a reservation (see [`SegmentMeta::notes`]).
const NOTES_XATTR: &str = "user.hafill.notes";

pub(super) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Why a source is not reserved.
#[derive(Debug)]
pub struct Skip {
    pub why: String,
    /// A problem the operator must fix (logged as an error, and the source
    /// counted as refused), not a benign case (the recorder holds a file of
    /// that name).
    pub problem: bool,
}

impl Skip {
    pub fn benign(why: String) -> Option<Skip> {
        Some(Skip {
            why,
            problem: false,
        })
    }
    pub fn problem(why: String) -> Option<Skip> {
        Some(Skip { why, problem: true })
    }
}

/// The reservations of one state folder.
#[derive(Debug, Clone)]
pub struct Staging {
    state: Arc<State>,
}

impl Staging {
    pub fn new(state: Arc<State>) -> Self {
        Staging { state }
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub fn path(&self, camera: &CameraId, start: Timestamp) -> PathBuf {
        self.state
            .staging_dir()
            .join(camera.as_str())
            .join(format!("{}.part", start.0))
    }

    /// The reservations (not complete), of `camera` or of all cameras,
    /// sorted by start, each with the notes it was made with.
    pub fn reservations(&self, camera: Option<&CameraId>) -> Result<Vec<SegmentMeta>, StoreError> {
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
                let path = cdir.join(&name);
                if let Some(r) = read_xattr_record(&path)? {
                    let mut m = r.into_meta(c.clone());
                    if m.state != SegmentState::Complete {
                        m.notes = read_notes(&path);
                        out.push(m);
                    }
                }
            }
        }
        out.sort_by_key(|m| m.start);
        Ok(out)
    }

    /// Makes a reservation per source (the peer's segment and the peer),
    /// newest first, within the free space of `data_dir`'s filesystem
    /// above the reserve. `refuse` says why a source must not be reserved
    /// (its name is taken in the recorder's folder, ...): it is skipped,
    /// the reason logged, and a problem counted as refused. An earlier run's reservation for the same
    /// peer's same bytes is kept with its progress.
    pub fn reserve(
        &self,
        data_dir: &Path,
        sources: &[(&SegmentMeta, &str)],
        opts: PlaceOptions,
        refuse: impl Fn(&SegmentMeta) -> Option<Skip>,
    ) -> Result<Placed, StoreError> {
        let mut order: Vec<&(&SegmentMeta, &str)> = sources.iter().collect();
        order.sort_by_key(|(m, _)| std::cmp::Reverse(m.start));
        let ledger = SparseLedger::in_dir(self.state.dir());
        let mut budget = Budget::on_filesystem(data_dir, opts.reserve_bytes, &ledger)?;
        let mut out = Placed::default();
        let mut to_make = Vec::new();
        for (src, peer) in order {
            if let Some(skip) = refuse(src) {
                if skip.problem {
                    tracing::error!(camera = %src.camera, start = %src.start, "not reserved: {}", skip.why);
                    out.refused.push(((*src).clone(), peer.to_string()));
                } else {
                    tracing::warn!(camera = %src.camera, start = %src.start, "not reserved: {}", skip.why);
                }
                continue;
            }
            let path = self.path(&src.camera, src.start);
            if let Some(existing) = read_xattr_record(&path)? {
                // An earlier run's reservation is kept only for the same
                // peer's same bytes: another peer cuts other bytes.
                let same = existing.len == src.len
                    && existing.origin == Origin::Peer(peer.to_string())
                    && (existing.blake3 == src.blake3 || src.blake3 == UNKNOWN_HASH);
                if same && existing.state != SegmentState::Complete {
                    budget.owe_list(src.len);
                    let mut m = existing.into_meta(src.camera.clone());
                    m.notes = read_notes(&path).or_else(|| src.notes.clone());
                    out.placed.push(m);
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
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io_at(&path))?;
            // An earlier reservation's progress goes before its bytes do.
            placeholder::forget_progress(&f, &path)?;
            let _ = xattr::FileExt::remove_xattr(&f, NOTES_XATTR);
            f.set_len(0).map_err(io_at(&path))?;
            if !placeholder::reserve_space(&f, &path, meta.len, opts.sparse)? && !opts.sparse {
                unallocated.push((path.clone(), meta.len));
            }
            if let Some(notes) = meta.notes.as_deref().filter(|n| n.len() <= MAX_NOTES_LEN) {
                xattr::FileExt::set_xattr(&f, NOTES_XATTR, notes.as_bytes())
                    .map_err(io_at(&path))?;
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

    pub fn outstanding(
        &self,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<SegmentMeta>, StoreError> {
        Ok(self
            .reservations(None)?
            .into_iter()
            .filter(|m| m.start < to && m.end() > from)
            .collect())
    }

    pub fn release(&self, metas: &[SegmentMeta]) -> Result<Vec<SegmentMeta>, StoreError> {
        super::release_reservations(
            metas
                .iter()
                .map(|m| (self.path(&m.camera, m.start), m.clone())),
        )
    }

    /// The reservation of `meta`, to fill.
    pub fn sink(&self, meta: &SegmentMeta) -> Result<FileSink, StoreError> {
        FileSink::open(self.path(&meta.camera, meta.start), meta.len)
    }

    /// Checks a verified reservation before it is installed as `target`,
    /// and makes its bytes durable: the file must say the duration the
    /// peer claimed (else the gap would stay and come back every round),
    /// and `target` must be free. A reservation that cannot be installed is
    /// dropped: the recorder's file is kept.
    pub fn prepare(
        &self,
        sink: &FileSink,
        target: &Path,
        meta: &SegmentMeta,
    ) -> Result<(), StoreError> {
        let staged = sink.path();
        if target.exists() {
            let _ = fs::remove_file(staged);
            return Err(taken(meta, target, "already exists"));
        }
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
        sink.file().sync_all().map_err(io_at(staged))
    }

    /// Renames the prepared reservation to `target` under `root` (the
    /// recorder's folder), never over a file that is there, making any
    /// folder it needs, and makes the new name durable. The file keeps
    /// hafill's record until [`Self::forget`], so a crash in between leaves
    /// a file hafill can tell is its own.
    pub fn rename_into(
        &self,
        sink: &FileSink,
        target: &Path,
        root: &Path,
        meta: &SegmentMeta,
    ) -> Result<(), StoreError> {
        let staged = sink.path();
        let Some(dir) = target.parent() else {
            return Err(taken(meta, target, "has no folder"));
        };
        // New folders, outermost first, so each can be fsynced in its parent.
        let mut new_dirs = Vec::new();
        let mut d = dir;
        while !d.exists() && d.starts_with(root) && d != root {
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
            target,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                let _ = fs::remove_file(staged);
                return Err(taken(meta, target, "appeared meanwhile"));
            }
            Err(e) => return Err(io_at(target)(io::Error::from(e))),
        }
        super::sync_dir(dir)?;
        for nd in new_dirs.iter().rev() {
            if let Some(p) = nd.parent() {
                super::sync_dir(p)?;
            }
        }
        tracing::info!(camera = %meta.camera, start = %meta.start, "installed {}", target.display());
        Ok(())
    }

    /// Removes hafill's attributes from an installed file: it is the
    /// recorder's now.
    pub fn forget(&self, file: &File) {
        for name in [PROGRESS_XATTR, NOTES_XATTR, XATTR_NAME] {
            let _ = xattr::FileExt::remove_xattr(file, name);
        }
    }

    /// Records where an installed file came from (`status` counts it as
    /// backfilled) and its facts (so it is never hashed again).
    pub fn record_installed(&self, target: &Path, meta: &SegmentMeta) -> Result<(), StoreError> {
        let peer = match &meta.origin {
            Origin::Peer(p) => p.clone(),
            Origin::Local => String::new(),
        };
        self.state.record_origin(OriginRecord {
            path: target.to_path_buf(),
            camera: meta.camera.to_string(),
            start_us: meta.start.0,
            len: meta.len,
            blake3: meta.blake3.to_hex().to_string(),
            peer,
        })?;
        if let Ok(m) = fs::metadata(target) {
            let _ = self.state.remember(FileFacts {
                path: target.to_path_buf(),
                len: m.len(),
                mtime_ns: mtime_ns(&m),
                duration_us: media::duration_us(target).ok().flatten(),
                blake3: Some(meta.blake3.to_hex().to_string()),
                not_a_segment: None,
            });
        }
        Ok(())
    }
}

fn taken(meta: &SegmentMeta, target: &Path, what: &str) -> StoreError {
    StoreError::BadSegment {
        camera: meta.camera.clone(),
        start: meta.start,
        reason: format!(
            "{} {what}; the recorder's file is kept and the backfilled copy dropped",
            target.display()
        ),
    }
}

/// Whether `path` is `file` (same device and inode): never act on a name
/// that someone else may have taken meanwhile.
pub fn is_file(path: &Path, file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The notes a reservation was made with, if any (and if readable).
fn read_notes(path: &Path) -> Option<Arc<str>> {
    let b = xattr::get(path, NOTES_XATTR).ok().flatten()?;
    let s = String::from_utf8(b).ok()?;
    (!s.is_empty() && s.len() <= MAX_NOTES_LEN).then(|| Arc::from(s.as_str()))
}

pub(super) fn list_dir(dir: &Path) -> Result<Vec<String>, StoreError> {
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

/// A reservation filled in place, then renamed into the recorder's folder
/// at `target` by the adapter's `install`.
pub trait Installer: Send + Sync + std::fmt::Debug {
    fn install(&self, sink: &FileSink, meta: &SegmentMeta) -> Result<SegmentMeta, StoreError>;
}

/// The sink of a reservation: blocks go into the file in `staging/`; the
/// installer puts it where the recorder sees it.
#[derive(Debug)]
pub struct StagedSink<I: Installer> {
    pub inner: FileSink,
    pub installer: I,
}

impl<I: Installer> SegmentSink for StagedSink<I> {
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

    fn still_reserved(&self) -> bool {
        is_file(self.inner.path(), self.inner.file())
    }

    fn install(&self, meta: &SegmentMeta) -> Result<SegmentMeta, StoreError> {
        self.installer.install(&self.inner, meta)
    }
}
