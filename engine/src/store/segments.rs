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

/// A camera's files by name, and every folder walked to find them with
/// its mtime then (None: it did not exist).
#[derive(Debug)]
struct Listing {
    dirs: Vec<(PathBuf, Option<i64>)>,
    names: Vec<Named>,
}

impl Listing {
    /// Whether no folder walked has changed since: a file made, renamed
    /// or removed changes its folder's mtime.
    fn still_current(&self) -> bool {
        self.dirs.iter().all(|(d, m)| dir_mtime(d).ok() == Some(*m))
    }
}

/// Cameras' listings, kept while their folders are unchanged: a camera of
/// 30 days of 60-second files has 43,200 names, which take tens of
/// milliseconds to read, and a peer asks for one segment at a time. At
/// most [`MAX_LISTED`] names are kept, the least recently used camera's
/// dropped first.
#[derive(Debug, Default)]
struct Listings {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    by_camera: HashMap<CameraId, (Arc<Listing>, u64)>,
    names: usize,
    tick: u64,
}

/// Names kept in all (about 50 bytes each).
const MAX_LISTED: usize = 1 << 19;

/// A listing taken within this of a change to one of its folders is not
/// kept: a change in the same tick of the filesystem's clock would leave
/// the folder's mtime as it was (2 s: the coarsest clock of a common
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
        k.names += listing.names.len();
        if let Some((old, _)) = k.by_camera.insert(camera.clone(), (listing, tick)) {
            k.names -= old.names.len();
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
                k.names -= old.names.len();
            }
        }
    }
}

fn dir_mtime(dir: &Path) -> Result<Option<i64>, StoreError> {
    match fs::metadata(dir) {
        Ok(m) => Ok(Some(mtime_ns(&m))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(dir)(e)),
    }
}

/// Spacings read on each side of a window for a camera's usual spacing.
const SPACING_SAMPLE: usize = 64;

/// A camera's newest files that the recorder may still be writing: one,
/// and the one it closed a moment ago, and some to spare.
const RECORDING_AT_ONCE: usize = 4;

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
        let racy = listed_at.is_none_or(|at| {
            dirs.iter()
                .any(|(_, m)| m.is_some_and(|m| m > at.saturating_sub(RACY_NS)))
        });
        let listing = Arc::new(Listing { dirs, names });
        if !racy {
            self.listings.put(camera, listing.clone());
        }
        Ok(listing)
    }

    /// Now, by the clock that stamps files (ns since the epoch): the mtime
    /// the kernel gives a file of hafill's state it touches, as it gives
    /// the recorder's folders theirs (a process's own clock may differ, as
    /// under `faketime`). None if the file cannot be touched.
    fn filesystem_now(&self) -> Option<i64> {
        use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD, UTIME_NOW, UTIME_OMIT};
        let path = self.state.dir().join("clock");
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_NOW,
            },
        };
        if utimensat(CWD, &path, &times, AtFlags::empty()).is_err() {
            File::create(&path).ok()?;
        }
        fs::metadata(&path).ok().map(|m| mtime_ns(&m))
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
        let hi = names.partition_point(|n| n.start.0 < to.0);
        // The usual spacing, from the names about the window.
        let spacing: Vec<i64> = names
            [lo.saturating_sub(SPACING_SAMPLE)..(hi + SPACING_SAMPLE).min(names.len())]
            .windows(2)
            .map(|w| w[1].start.0 - w[0].start.0)
            .collect();
        let usual = median(&spacing);
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
/// directory gives (no `stat` of each file); and each folder walked with
/// its mtime, read before its entries.
fn walk(
    dir: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    dirs: &mut Vec<(PathBuf, Option<i64>)>,
) -> Result<(), StoreError> {
    let mtime = dir_mtime(dir)?;
    dirs.push((dir.to_path_buf(), mtime));
    if mtime.is_none() {
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
        // The cameras are what the names say: walk the folder to the
        // pattern's depth.
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
        let listing = self.names_of(camera)?;
        let names = &listing.names;
        let newest = &names[names.len().saturating_sub(RECORDING_AT_ONCE)..];
        let now_ns = Timestamp::now().0.saturating_mul(1000);
        Ok(self
            .stat(newest)?
            .iter()
            .filter(|f| self.unsettled(f, now_ns) && self.state.origin_of(&f.path).is_none())
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
        let folder = dir.join("rec");
        let state = dir.join("state");
        fs::create_dir_all(&folder).unwrap();
        State::init(&state).unwrap();
        let pattern = SegmentPattern::parse("{camera}/%Y%m%d-%H%M%S.bin").unwrap();
        SegmentsRecorder::open(&folder, pattern, 0, &state, false).unwrap()
    }

    fn add(r: &SegmentsRecorder, camera: &str, start: i64) {
        let path = r.path.join(r.pattern.expand(camera, Timestamp(start)));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }

    /// Sets a folder's mtime `ago` seconds back from the one the kernel
    /// gave it, as if the recorder had last changed it then (whatever this
    /// process's clock says, as under `faketime`).
    fn age(dir: &Path, ago: u64) {
        let t =
            fs::metadata(dir).unwrap().modified().unwrap() - std::time::Duration::from_secs(ago);
        File::open(dir).unwrap().set_modified(t).unwrap();
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
        let r = recorder(tmp.path());
        let cam = CameraId::new("cam-1").unwrap();
        let t0 = 1_700_000_000 * 1_000_000;
        for i in 0..3 {
            add(&r, "cam-1", t0 + i * MIN);
        }
        let dir = r.path.join("cam-1");
        age(&dir, 3600);
        // Listed once and kept: the folder changed an hour ago.
        assert_eq!(starts(&r, &cam), [t0, t0 + MIN, t0 + 2 * MIN]);
        assert!(r.listings.get(&cam).is_some());
        // The recorder starts a new file: the folder's mtime moves on.
        add(&r, "cam-1", t0 + 3 * MIN);
        assert_eq!(starts(&r, &cam), [t0, t0 + MIN, t0 + 2 * MIN, t0 + 3 * MIN]);
        // Retention removes the oldest.
        fs::remove_file(r.path.join(r.pattern.expand("cam-1", Timestamp(t0)))).unwrap();
        assert_eq!(starts(&r, &cam), [t0 + MIN, t0 + 2 * MIN, t0 + 3 * MIN]);
    }

    #[test]
    fn a_listing_taken_just_after_a_change_is_not_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let r = recorder(tmp.path());
        let cam = CameraId::new("cam-1").unwrap();
        let t0 = 1_700_000_000 * 1_000_000;
        add(&r, "cam-1", t0);
        add(&r, "cam-1", t0 + MIN);
        let dir = r.path.join("cam-1");
        let before = fs::metadata(&dir).unwrap().modified().unwrap();
        assert_eq!(starts(&r, &cam), [t0, t0 + MIN]);
        assert!(
            r.listings.get(&cam).is_none(),
            "listed within RACY_NS of a change"
        );
        // A file made in the same tick of the filesystem's clock leaves the
        // folder's mtime as it was; it is seen all the same.
        add(&r, "cam-1", t0 + 2 * MIN);
        File::open(&dir).unwrap().set_modified(before).unwrap();
        assert_eq!(starts(&r, &cam), [t0, t0 + MIN, t0 + 2 * MIN]);
    }

    #[test]
    fn a_camera_that_appears_later_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let r = recorder(tmp.path());
        let cam = CameraId::new("cam-2").unwrap();
        age(&r.path, 3600);
        assert!(starts(&r, &cam).is_empty());
        let t0 = 1_700_000_000 * 1_000_000;
        add(&r, "cam-2", t0);
        add(&r, "cam-2", t0 + MIN);
        assert_eq!(starts(&r, &cam), [t0, t0 + MIN]);
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
    fn recording_since_is_the_newest_unsettled_file_not_an_installed_one() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("rec");
        let state = tmp.path().join("state");
        fs::create_dir_all(&folder).unwrap();
        State::init(&state).unwrap();
        let pattern = SegmentPattern::parse("{camera}/%Y%m%d-%H%M%S.bin").unwrap();
        let r = SegmentsRecorder::open(&folder, pattern, 3_600_000_000, &state, false).unwrap();
        let cam = CameraId::new("cam-1").unwrap();
        let t0 = 1_700_000_000 * 1_000_000;
        for i in 0..10 {
            add(&r, "cam-1", t0 + i * MIN);
            // New by this process's clock, which settle is counted by.
            let path = r
                .path
                .join(r.pattern.expand("cam-1", Timestamp(t0 + i * MIN)));
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(std::time::SystemTime::now())
                .unwrap();
        }
        // All ten are new (settle is an hour); the recorder writes the
        // newest end only.
        assert_eq!(
            r.recording_since(&cam).unwrap(),
            Some(Timestamp(t0 + 6 * MIN))
        );
        // One of them hafill installed (a backfilled segment): not being
        // recorded.
        let installed = t0 + 6 * MIN;
        r.state
            .record_origin(crate::state::OriginRecord {
                path: r.path.join(r.pattern.expand("cam-1", Timestamp(installed))),
                camera: "cam-1".into(),
                start_us: installed,
                len: 1,
                blake3: blake3::hash(b"x").to_hex().to_string(),
                peer: "rs01".into(),
            })
            .unwrap();
        assert_eq!(
            r.recording_since(&cam).unwrap(),
            Some(Timestamp(t0 + 7 * MIN))
        );
    }
}
