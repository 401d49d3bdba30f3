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

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::native::FileSink;
use super::pattern::SegmentPattern;
use super::staging::{io_at, Installer, Skip, StagedSink, Staging};
use super::traits::{Matching, Recorder, SegmentSink, UNKNOWN_HASH};
use super::StoreError;
use crate::camera::CameraId;
use crate::placeholder::{PlaceOptions, Placed};
use crate::segment::{Origin, SegmentMeta, SegmentState};
use crate::state::{mtime_ns, FileFacts, State};
use crate::units::Timestamp;

/// A file the pattern names, by its name alone.
#[derive(Debug, Clone)]
struct Named {
    /// Relative to the recorder's folder.
    rel: Box<str>,
    start: Timestamp,
}

/// A camera's files by name, every folder walked to find them as it was
/// then, and the camera's usual spacing between starts.
#[derive(Debug)]
struct Listing {
    dirs: Vec<(PathBuf, Option<DirStamp>)>,
    names: Vec<Named>,
    /// The median spacing of the whole camera: a file's duration, where
    /// its container gives none, does not depend on what was asked.
    usual: Option<i64>,
}

/// What tells a folder changed: a file made, renamed or removed in it sets
/// its ctime (which no one can set back, as `touch -d` or `rsync -a` set
/// an mtime back); a folder removed and made again has another inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirStamp {
    dev: u64,
    ino: u64,
    ctime_ns: i64,
}

impl Listing {
    /// What it counts against [`MAX_LISTED`]: its names, and one more.
    fn weight(&self) -> usize {
        1 + self.names.len()
    }

    /// Whether no folder walked has changed since (or appeared).
    fn still_current(&self) -> bool {
        self.dirs
            .iter()
            .all(|(d, was)| dir_stamp(d).is_ok_and(|now| now == *was))
    }
}

/// Cameras' listings, kept while their folders are unchanged: a camera of
/// 30 days of 60-second files has 43,200 names, which take tens of
/// milliseconds to read, and a peer asks for one segment at a time. At
/// most [`MAX_LISTED`] names are kept, the least recently used camera's
/// dropped first.
#[derive(Debug)]
struct Listings {
    inner: Mutex<Kept>,
    /// [`RACY_NS`], or another span in tests.
    racy_ns: i64,
}

impl Default for Listings {
    fn default() -> Self {
        Listings {
            inner: Mutex::default(),
            racy_ns: RACY_NS,
        }
    }
}

#[derive(Debug, Default)]
struct Kept {
    by_camera: HashMap<CameraId, (Arc<Listing>, u64)>,
    names: usize,
    tick: u64,
}

/// Whether hafill's `clock` file could not be touched (said once a
/// process: recorders are opened again and again, by the status page).
static NO_CLOCK_SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Names kept in all (about 80 bytes each, 40 MiB), a camera's listing
/// counting one more.
const MAX_LISTED: usize = 1 << 19;

/// A listing taken within this of a change to one of its folders is not
/// kept: a change in the same tick of the filesystem's clock would leave
/// the folder's ctime as it was (2 s: the coarsest clock of a common
/// filesystem).
const RACY_NS: i64 = 2_000_000_000;

impl Listings {
    fn get(&self, camera: &CameraId) -> Option<Arc<Listing>> {
        let mut k = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        k.tick += 1;
        let tick = k.tick;
        let (l, used) = k.by_camera.get_mut(camera)?;
        *used = tick;
        Some(l.clone())
    }

    fn put(&self, camera: &CameraId, listing: Arc<Listing>) {
        let mut k = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        k.tick += 1;
        let tick = k.tick;
        k.names += listing.weight();
        if let Some((old, _)) = k.by_camera.insert(camera.clone(), (listing, tick)) {
            k.names -= old.weight();
        }
        while k.names > MAX_LISTED {
            let Some(oldest) = k
                .by_camera
                .iter()
                .filter(|(c, _)| *c != camera)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(c, _)| c.clone())
            else {
                break;
            };
            if let Some((old, _)) = k.by_camera.remove(&oldest) {
                k.names -= old.weight();
            }
        }
    }
}

fn dir_stamp(dir: &Path) -> Result<Option<DirStamp>, StoreError> {
    match fs::metadata(dir) {
        Ok(m) => Ok(Some(DirStamp {
            dev: m.dev(),
            ino: m.ino(),
            ctime_ns: ctime_ns(&m),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(dir)(e)),
    }
}

fn ctime_ns(m: &fs::Metadata) -> i64 {
    m.ctime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.ctime_nsec())
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
    staging: Staging,
    listings: Listings,
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
            staging: Staging::new(state.clone()),
            listings: Listings::default(),
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

    /// Every file of `camera` the pattern names, by name only (no `stat`
    /// of each), sorted by start; kept while its folders are unchanged.
    fn names_of(&self, camera: &CameraId) -> Result<Arc<Listing>, StoreError> {
        if let Some(l) = self.listings.get(camera) {
            if l.still_current() {
                return Ok(l);
            }
        }
        let listed_at = self.filesystem_now();
        let rel_root = self.pattern.camera_root(camera.as_str());
        let depth = self.pattern.depth() - rel_root.components().count();
        let mut found = Vec::new();
        let mut dirs = Vec::new();
        walk(&self.path.join(&rel_root), depth, &mut found, &mut dirs)?;
        let mut names = Vec::new();
        for path in found {
            let Some(rel) = path.strip_prefix(&self.path).ok().and_then(|r| r.to_str()) else {
                continue;
            };
            match self.pattern.parse_name(rel) {
                Some((cam, start)) if cam == camera.as_str() => names.push(Named {
                    rel: rel.into(),
                    start,
                }),
                _ => {}
            }
        }
        names.sort_by_key(|f| f.start);
        let spacing: Vec<i64> = names
            .windows(2)
            .map(|w| w[1].start.0 - w[0].start.0)
            .collect();
        let usual = median(&spacing);
        // Not kept: a camera with no files (asking costs a walk, and a
        // peer may ask for any number of names a pattern pairs), or one
        // listed just after a change.
        let absent = names.is_empty();
        let racy = listed_at.is_none_or(|at| {
            dirs.iter().any(|(_, stamp)| {
                stamp.is_some_and(|st| st.ctime_ns > at.saturating_sub(self.listings.racy_ns))
            })
        });
        let listing = Arc::new(Listing { dirs, names, usual });
        if !absent && !racy {
            self.listings.put(camera, listing.clone());
        }
        Ok(listing)
    }

    /// Now, by the clock that stamps files (ns since the epoch): the ctime
    /// the kernel gives a file of hafill's state it touches, as it gives
    /// the recorder's folders theirs (a process's own clock may differ, as
    /// under `faketime`). None if the file cannot be touched (said once):
    /// then no listing is kept.
    fn filesystem_now(&self) -> Option<i64> {
        let now = self.touch_clock();
        if now.is_none() && !NO_CLOCK_SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "{}: cannot be touched, so the recorder's folders are listed again at each request (slow with many files); let hafill's user write it",
                self.state.dir().join("clock").display()
            );
        }
        now
    }

    fn touch_clock(&self) -> Option<i64> {
        use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD, UTIME_NOW};
        let path = self.state.dir().join("clock");
        // Both times "now": any user who may write the file may set that
        // (an explicit time needs its owner).
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_NOW,
            },
            last_modification: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_NOW,
            },
        };
        if utimensat(CWD, &path, &times, AtFlags::empty()).is_err() {
            File::create(&path).ok()?;
        }
        fs::metadata(&path).ok().map(|m| ctime_ns(&m))
    }

    /// The files of `names` with their length and mtime (a file removed
    /// meanwhile is left out).
    fn stat(&self, names: &[Named]) -> Result<Vec<RecFile>, StoreError> {
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let path = self.path.join(&*n.rel);
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => out.push(RecFile {
                    path,
                    start: n.start,
                    len: m.len(),
                    mtime_ns: mtime_ns(&m),
                }),
                Ok(_) => {}
                // Removed by the recorder's retention meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(&path)(e)),
            }
        }
        Ok(out)
    }

    /// The cameras as the names of every file say: the folder walked to
    /// the pattern's depth.
    fn cameras_by_walk(&self) -> Result<Vec<CameraId>, StoreError> {
        let mut found = Vec::new();
        walk(
            &self.path,
            self.pattern.depth(),
            &mut found,
            &mut Vec::new(),
        )?;
        let mut out: Vec<CameraId> = found
            .iter()
            .filter_map(|p| {
                let rel = p.strip_prefix(&self.path).ok()?.to_str()?;
                let (cam, _) = self.pattern.parse_name(rel)?;
                CameraId::new(cam).ok()
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Where each camera has a folder of its own named after it
    /// (`{camera}/...`, `rec/{camera}/...`): the folder (relative) that
    /// holds them.
    fn camera_folders_in(&self) -> Option<PathBuf> {
        let a = self.pattern.camera_root("a");
        let b = self.pattern.camera_root("b");
        (a.file_name()? == "a" && b.file_name()? == "b" && a.parent() == b.parent())
            .then(|| a.parent().map(Path::to_path_buf).unwrap_or_default())
    }

    /// The cameras of a pattern that gives each its own folder: each
    /// folder in `parent` that holds one file the pattern names for it,
    /// found without reading the rest (a camera of 30 days of 60-second
    /// files has 43,200).
    fn cameras_by_folder(&self, parent: &Path) -> Result<Vec<CameraId>, StoreError> {
        let dir = self.path.join(parent);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_at(&dir)(e)),
        };
        // Levels from a camera's folder to its files.
        let depth = self.pattern.depth() - parent.components().count() - 1;
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(io_at(&dir))?;
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(camera) = e.file_name().to_str().and_then(|n| CameraId::new(n).ok()) else {
                continue;
            };
            if self.pattern.camera_root(camera.as_str()) != parent.join(camera.as_str()) {
                continue;
            }
            if self.holds_one(&camera, &e.path(), depth)? {
                out.push(camera);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether `dir`, `depth` levels above the files, holds one file the
    /// pattern names for `camera`; stops at the first.
    fn holds_one(&self, camera: &CameraId, dir: &Path, depth: usize) -> Result<bool, StoreError> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_at(dir)(e)),
        };
        for e in rd {
            let e = e.map_err(io_at(dir))?;
            let Ok(ft) = e.file_type() else { continue };
            let path = e.path();
            if depth > 1 && ft.is_dir() {
                if self.holds_one(camera, &path, depth - 1)? {
                    return Ok(true);
                }
            } else if depth == 1 && ft.is_file() {
                let named = path
                    .strip_prefix(&self.path)
                    .ok()
                    .and_then(|r| r.to_str())
                    .and_then(|rel| self.pattern.parse_name(rel));
                if named.is_some_and(|(cam, _)| cam == camera.as_str()) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// What the file is: from the state's cache, else read (and cached).
    fn facts(&self, f: &RecFile) -> FileFacts {
        let (k, fresh) = self.state.facts_or_read(&f.path, f.len, f.mtime_ns);
        if let (true, Some(why)) = (fresh, &k.not_a_segment) {
            tracing::error!(
                "{}: named like a segment by [recorder] pattern, but {why}; not offered, not touched",
                f.path.display()
            );
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
        let listing = self.names_of(camera)?;
        let names = &listing.names;
        let longest = super::MAX_SEGMENT_DURATION_US as i64;
        // The files that may overlap the window (a file starts at most the
        // longest segment before it), and the one after them, whose start
        // ends the last one when its container gives no duration.
        let lo = names.partition_point(|n| n.start.0.saturating_add(longest) <= from.0);
        // An empty or reversed window (a peer may ask for one) holds none.
        let hi = names.partition_point(|n| n.start.0 < to.0).max(lo);
        let usual = listing.usual;
        let files = self.stat(&names[lo..hi])?;
        let next_start = names.get(hi).map(|n| n.start);
        let now_ns = Timestamp::now().0.saturating_mul(1000);
        let mut out = Vec::new();
        for (i, f) in files.iter().enumerate() {
            if self.unsettled(f, now_ns) {
                continue; // the recorder may still be writing it
            }
            let k = self.facts(f);
            if k.not_a_segment.is_some() {
                continue;
            }
            let next = files.get(i + 1).map(|n| n.start).or(next_start);
            let duration_us = match (k.duration_us, next, usual) {
                (Some(d), _, _) => d,
                (None, Some(next), Some(u)) => (next.0 - f.start.0).min(u) as u64,
                (None, Some(next), None) => (next.0 - f.start.0) as u64,
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
                notes: None,
            };
            out.push((f.clone(), meta));
        }
        Ok(out)
    }

    /// Where `meta` goes in the recorder's folder.
    fn target(&self, meta: &SegmentMeta) -> PathBuf {
        self.path
            .join(self.pattern.expand(meta.camera.as_str(), meta.start))
    }

    /// Whether the recorder may still be writing `f`: changed within
    /// `settle`.
    fn unsettled(&self, f: &RecFile, now_ns: i64) -> bool {
        self.settle_us > 0
            && now_ns.saturating_sub(f.mtime_ns) < (self.settle_us as i64).saturating_mul(1000)
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

/// Regular files exactly `depth` levels below `dir`, by the type the
/// directory gives (no `stat` of each file); and each folder walked as it
/// was before its entries were read.
fn walk(
    dir: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    dirs: &mut Vec<(PathBuf, Option<DirStamp>)>,
) -> Result<(), StoreError> {
    let stamp = dir_stamp(dir)?;
    dirs.push((dir.to_path_buf(), stamp));
    if stamp.is_none() {
        return Ok(());
    }
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_at(dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io_at(dir))?;
        let ft = match e.file_type() {
            Ok(ft) => ft,
            // Removed by the recorder's retention meanwhile.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_at(&e.path())(err)),
        };
        if depth > 1 && ft.is_dir() {
            walk(&e.path(), depth - 1, out, dirs)?;
        } else if depth == 1 && ft.is_file() {
            out.push(e.path());
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
        match self.camera_folders_in() {
            Some(parent) => self.cameras_by_folder(&parent),
            None => self.cameras_by_walk(),
        }
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
            .chain(self.staging.reservations(Some(camera))?)
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
        // The recorder writes at the camera's newest end; a segment hafill
        // installed is new too, but is not being recorded.
        // From the newest file back to the newest settled one the recorder
        // wrote: those after it changed within `settle`.
        let listing = self.names_of(camera)?;
        let now = Timestamp::now();
        let now_ns = now.0.saturating_mul(1000);
        // A file that started before this ended before `settle` ago.
        let oldest = now
            .0
            .saturating_sub(self.settle_us as i64)
            .saturating_sub(super::MAX_SEGMENT_DURATION_US as i64);
        let mut since = None;
        for n in listing.names.iter().rev() {
            if n.start.0 < oldest {
                break;
            }
            let Some(f) = self.stat(std::slice::from_ref(n))?.pop() else {
                continue;
            };
            if self.state.origin_of(&f.path).is_some() {
                continue; // hafill installed it: not being recorded
            }
            if !self.unsettled(&f, now_ns) {
                break;
            }
            since = Some(f.start);
        }
        Ok(since)
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
        if f.len == meta.len {
            self.state.remember_hash(self.facts(&f), hash);
        }
    }

    fn reserve(
        &self,
        sources: &[(&SegmentMeta, &str)],
        opts: PlaceOptions,
    ) -> Result<Placed, StoreError> {
        self.staging.reserve(&self.path, sources, opts, |src| {
            // The recorder holds a file of that name (one it cannot
            // finish, or cut within the same second): never replaced.
            let target = self.target(src);
            if target.exists() {
                return Skip::benign(format!("{} exists", target.display()));
            }
            None
        })
    }

    fn outstanding(&self, from: Timestamp, to: Timestamp) -> Result<Vec<SegmentMeta>, StoreError> {
        self.staging.outstanding(from, to)
    }

    fn release(&self, metas: &[SegmentMeta]) -> Result<Vec<SegmentMeta>, StoreError> {
        self.staging.release(metas)
    }

    fn sink(&self, meta: &SegmentMeta) -> Result<Box<dyn SegmentSink>, StoreError> {
        Ok(Box::new(StagedSink {
            inner: self.staging.sink(meta)?,
            installer: Rename {
                target: self.target(meta),
                root: self.path.clone(),
                staging: self.staging.clone(),
            },
        }))
    }
}

/// Installs a verified reservation by renaming it to its name in the
/// recorder's folder, never over a file that is there.
#[derive(Debug)]
struct Rename {
    target: PathBuf,
    root: PathBuf,
    staging: Staging,
}

impl Installer for Rename {
    fn install(&self, sink: &FileSink, meta: &SegmentMeta) -> Result<SegmentMeta, StoreError> {
        self.staging.prepare(sink, &self.target, meta)?;
        self.staging
            .rename_into(sink, &self.target, &self.root, meta)?;
        // Renamed with its record on, so a crash before this point leaves a
        // reservation that the next run installs; now it carries nothing
        // of hafill's.
        self.staging.forget(sink.file());
        self.staging.record_installed(&self.target, meta)?;
        Ok(SegmentMeta {
            state: SegmentState::Complete,
            ..meta.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    fn recorder(dir: &Path) -> SegmentsRecorder {
        settling(dir, 0)
    }

    /// A recorder of `{camera}/%Y%m%d-%H%M%S.bin` files in `dir/rec`,
    /// with `settle_us`.
    fn settling(dir: &Path, settle_us: u64) -> SegmentsRecorder {
        let folder = dir.join("rec");
        let state = dir.join("state");
        fs::create_dir_all(&folder).unwrap();
        State::init(&state).unwrap();
        let pattern = SegmentPattern::parse("{camera}/%Y%m%d-%H%M%S.bin").unwrap();
        SegmentsRecorder::open(&folder, pattern, settle_us, &state, false).unwrap()
    }

    fn add(r: &SegmentsRecorder, camera: &str, start: i64) {
        let path = r.path.join(r.pattern.expand(camera, Timestamp(start)));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }

    /// A recorder that keeps listings (`racy_ns` 0) or never does.
    fn keeping(dir: &Path, keep: bool) -> SegmentsRecorder {
        let mut r = recorder(dir);
        r.listings.racy_ns = if keep { 0 } else { i64::MAX / 2 };
        r
    }

    /// Makes a file the way a recorder does, and makes sure its folder's
    /// ctime moved on (a coarse clock may stamp two changes alike; the
    /// guard against that is tested apart).
    fn record(r: &SegmentsRecorder, camera: &str, start: i64) {
        let path = r.path.join(r.pattern.expand(camera, Timestamp(start)));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        changing(path.parent().unwrap(), || add(r, camera, start));
    }

    /// Does `change` in `dir`, then changes `dir` again until its stamp
    /// moved on.
    fn changing(dir: &Path, change: impl FnOnce()) {
        let before = dir_stamp(dir).unwrap();
        change();
        while dir_stamp(dir).unwrap() == before {
            std::thread::sleep(std::time::Duration::from_millis(1));
            let scratch = dir.join(".scratch");
            fs::write(&scratch, b"").unwrap();
            fs::remove_file(&scratch).unwrap();
        }
    }

    fn starts(r: &SegmentsRecorder, camera: &CameraId) -> Vec<i64> {
        r.segments(camera, Timestamp(0), Timestamp(i64::MAX / 2))
            .unwrap()
            .iter()
            .map(|m| m.start.0)
            .collect()
    }

    #[test]
    fn a_kept_listing_follows_what_the_recorder_adds_and_removes() {
        let tmp = tempfile::tempdir().unwrap();
        let r = keeping(tmp.path(), true);
        let cam = CameraId::new("cam-1").unwrap();
        let t0 = 1_700_000_000 * 1_000_000;
        for i in 0..3 {
            record(&r, "cam-1", t0 + i * MIN);
        }
        assert_eq!(starts(&r, &cam), [t0, t0 + MIN, t0 + 2 * MIN]);
        let kept = r.listings.get(&cam).expect("kept");
        // The recorder starts a new file.
        record(&r, "cam-1", t0 + 3 * MIN);
        assert_eq!(starts(&r, &cam), [t0, t0 + MIN, t0 + 2 * MIN, t0 + 3 * MIN]);
        assert!(
            !Arc::ptr_eq(&kept, &r.listings.get(&cam).unwrap()),
            "listed again"
        );
        // Retention removes the oldest, from a kept listing.
        let oldest = r.path.join(r.pattern.expand("cam-1", Timestamp(t0)));
        changing(oldest.parent().unwrap(), || {
            fs::remove_file(&oldest).unwrap()
        });
        assert_eq!(starts(&r, &cam), [t0 + MIN, t0 + 2 * MIN, t0 + 3 * MIN]);
        // Nothing changed: the same listing serves.
        let kept = r.listings.get(&cam).unwrap();
        assert_eq!(starts(&r, &cam), [t0 + MIN, t0 + 2 * MIN, t0 + 3 * MIN]);
        assert!(Arc::ptr_eq(&kept, &r.listings.get(&cam).unwrap()));
    }

    #[test]
    fn a_listing_taken_soon_after_a_change_is_not_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let r = keeping(tmp.path(), false);
        let cam = CameraId::new("cam-1").unwrap();
        let t0 = 1_700_000_000 * 1_000_000;
        add(&r, "cam-1", t0);
        add(&r, "cam-1", t0 + MIN);
        assert_eq!(starts(&r, &cam), [t0, t0 + MIN]);
        assert!(r.listings.get(&cam).is_none());
        add(&r, "cam-1", t0 + 2 * MIN);
        assert_eq!(starts(&r, &cam), [t0, t0 + MIN, t0 + 2 * MIN]);
    }

    #[test]
    fn a_camera_that_appears_later_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let r = keeping(tmp.path(), true);
        let cam = CameraId::new("cam-2").unwrap();
        assert!(starts(&r, &cam).is_empty());
        assert!(
            r.listings.get(&cam).is_none(),
            "a camera with no folder is not kept"
        );
        let t0 = 1_700_000_000 * 1_000_000;
        add(&r, "cam-2", t0);
        add(&r, "cam-2", t0 + MIN);
        assert_eq!(starts(&r, &cam), [t0, t0 + MIN]);
    }

    #[test]
    fn a_new_day_folder_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = keeping(tmp.path(), true);
        r.pattern = SegmentPattern::parse("{camera}/%Y-%m-%d/%H%M%S.bin").unwrap();
        let cam = CameraId::new("cam-1").unwrap();
        // 2023-11-14 23:58 and 23:59 UTC.
        let t0 = 1_700_006_280 * 1_000_000;
        record(&r, "cam-1", t0);
        record(&r, "cam-1", t0 + MIN);
        assert_eq!(starts(&r, &cam), [t0, t0 + MIN]);
        assert!(r.listings.get(&cam).is_some());
        // Midnight: the recorder makes the next day's folder.
        record(&r, "cam-1", t0 + 2 * MIN);
        assert!(r.path.join("cam-1/2023-11-15").is_dir());
        assert_eq!(starts(&r, &cam), [t0, t0 + MIN, t0 + 2 * MIN]);
        // And a file into a day folder listed before.
        record(&r, "cam-1", t0 + 3 * MIN);
        assert_eq!(starts(&r, &cam), [t0, t0 + MIN, t0 + 2 * MIN, t0 + 3 * MIN]);
    }

    #[test]
    fn the_cameras_are_the_folders_that_hold_a_segment() {
        for pattern in [
            "{camera}/%Y%m%d-%H%M%S.bin",
            "{camera}/%Y-%m-%d/%H%M%S.bin",
            "rec/{camera}/%Y%m%d-%H%M%S.bin",
            "{camera}-%Y%m%d-%H%M%S.bin",
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let mut r = recorder(tmp.path());
            r.pattern = SegmentPattern::parse(pattern).unwrap();
            let t0 = 1_700_000_000 * 1_000_000;
            for (cam, n) in [("cam-1", 3), ("cam-2", 1)] {
                for i in 0..n {
                    add(&r, cam, t0 + i * MIN);
                }
            }
            // Not cameras: a folder with a file the pattern does not name,
            // an empty one, a file beside the folders.
            let beside = r.path.join(r.pattern.camera_root("cam-3"));
            fs::create_dir_all(beside.join("2023-11-14")).unwrap();
            fs::write(beside.join("notes.txt"), b"").unwrap();
            fs::write(beside.join("2023-11-14/notes.txt"), b"").unwrap();
            fs::create_dir_all(r.path.join(r.pattern.camera_root("cam-4"))).unwrap();
            fs::write(r.path.join("README"), b"").unwrap();
            let want = [
                CameraId::new("cam-1").unwrap(),
                CameraId::new("cam-2").unwrap(),
            ];
            assert_eq!(r.cameras().unwrap(), want, "{pattern}");
            assert_eq!(r.cameras_by_walk().unwrap(), want, "{pattern}");
        }
    }

    #[test]
    fn a_reversed_window_holds_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let r = keeping(tmp.path(), true);
        let cam = CameraId::new("cam-1").unwrap();
        let t0 = 1_700_000_000 * 1_000_000;
        for i in 0..3 {
            record(&r, "cam-1", t0 + i * 4 * 3_600_000_000);
        }
        let day = 86_400_000_000;
        assert!(r
            .segments(&cam, Timestamp(t0 + day), Timestamp(t0))
            .unwrap()
            .is_empty());
        assert!(r
            .summaries(&cam, Timestamp(t0 + day), Timestamp(t0), 3_600_000_000)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn kept_listings_are_bounded_least_recently_used_first() {
        let l = Listings::default();
        let listing = |n: usize| {
            Arc::new(Listing {
                dirs: Vec::new(),
                names: (0..n)
                    .map(|i| Named {
                        rel: "x".into(),
                        start: Timestamp(i as i64),
                    })
                    .collect(),
                usual: None,
            })
        };
        let (a, b, c) = (
            CameraId::new("a").unwrap(),
            CameraId::new("b").unwrap(),
            CameraId::new("c").unwrap(),
        );
        l.put(&a, listing(MAX_LISTED / 3));
        l.put(&b, listing(MAX_LISTED / 3));
        assert!(l.get(&a).is_some()); // a is now used after b
        l.put(&c, listing(MAX_LISTED / 2));
        assert!(l.get(&b).is_none(), "the least recently used goes first");
        assert!(l.get(&a).is_some() && l.get(&c).is_some());
        // One camera larger than the bound is kept alone.
        l.put(&b, listing(MAX_LISTED + 1));
        assert!(l.get(&a).is_none() && l.get(&c).is_none() && l.get(&b).is_some());
    }

    #[test]
    fn recording_since_is_the_newest_unsettled_files_not_an_installed_one() {
        let tmp = tempfile::tempdir().unwrap();
        // Settle is an hour: the newest six files are not settled yet.
        let r = settling(tmp.path(), 3_600_000_000);
        let cam = CameraId::new("cam-1").unwrap();
        // Named as a recorder names them: by when they start, minutes ago.
        let t0 = (Timestamp::now().0 / MIN - 10) * MIN;
        let path = |i: i64| {
            r.path
                .join(r.pattern.expand("cam-1", Timestamp(t0 + i * MIN)))
        };
        for i in 0..10 {
            add(&r, "cam-1", t0 + i * MIN);
            // By this process's clock, which settle is counted by.
            let changed = if i < 4 {
                std::time::SystemTime::now() - std::time::Duration::from_secs(7200)
            } else {
                std::time::SystemTime::now()
            };
            File::options()
                .write(true)
                .open(path(i))
                .unwrap()
                .set_modified(changed)
                .unwrap();
        }
        assert_eq!(
            r.recording_since(&cam).unwrap(),
            Some(Timestamp(t0 + 4 * MIN))
        );
        // Two of them hafill installed (backfilled segments, one new and
        // one settled): not being recorded.
        for i in [4, 2] {
            r.state
                .record_origin(crate::state::OriginRecord {
                    path: path(i),
                    camera: "cam-1".into(),
                    start_us: t0 + i * MIN,
                    len: 1,
                    blake3: blake3::hash(b"x").to_hex().to_string(),
                    peer: "rs01".into(),
                })
                .unwrap();
        }
        assert_eq!(
            r.recording_since(&cam).unwrap(),
            Some(Timestamp(t0 + 5 * MIN))
        );
    }
}
