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

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
