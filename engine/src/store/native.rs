//! `[recorder] kind = "native"`: hafill's own store as a recorder. Its
//! placeholders are files at the segment's own path, marked `placeholder`;
//! a filled one is marked `complete` on its file, then in the index.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::traits::{Matching, Recorder, SegmentSink};
use super::{layout, Store, StoreError};
use crate::camera::CameraId;
use crate::placeholder::{self, PlaceOptions, Placed, Progress};
use crate::segment::{SegmentMeta, SegmentState};
use crate::summary::Summary;
use crate::units::Timestamp;

/// The native store behind the adapter trait.
#[derive(Debug)]
pub struct NativeRecorder {
    store: Store,
    /// What each day log says in brief, with the log's identity (inode,
    /// length, modification time) when it was read: a log is only
    /// appended to, so one that is the same still says the same.
    days: Arc<Mutex<Briefs>>,
}

type LogStamp = (u64, u64, Option<std::time::SystemTime>);
type Briefs = BTreeMap<(CameraId, i64), (LogStamp, Arc<DayBrief>)>;

/// The briefs of the store at `root`, shared by every [`NativeRecorder`]
/// of it in this process: each scrub round opens the store again, and
/// must not read every log again. (A brief is checked against its log's
/// identity before it is used, so sharing is safe.)
fn shared_briefs(root: &Path) -> Arc<Mutex<Briefs>> {
    static ALL: std::sync::OnceLock<Mutex<BTreeMap<PathBuf, Arc<Mutex<Briefs>>>>> =
        std::sync::OnceLock::new();
    let key = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    ALL.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default()
        .clone()
}

/// One day log in brief: what a scrub round asks of it.
#[derive(Debug)]
struct DayBrief {
    /// Summaries of its complete segments, by hour.
    hours: Vec<(i64, Summary)>,
    /// Its segments that are not complete (reservations being filled).
    unfinished: Vec<SegmentMeta>,
}

impl NativeRecorder {
    pub fn new(store: Store) -> Self {
        NativeRecorder {
            days: shared_briefs(store.root()),
            store,
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Briefs> {
        self.days.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `camera`'s day `day` in brief, read again only when its log
    /// changed.
    fn day_brief(&self, camera: &CameraId, day: i64) -> Result<Arc<DayBrief>, StoreError> {
        let path = self.store.day_log_path(camera, day);
        let stamp: LogStamp = match std::fs::metadata(&path) {
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                (m.ino(), m.len(), m.modified().ok())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 0, None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let key = (camera.clone(), day);
        if let Some((s, v)) = self.cache().get(&key) {
            if *s == stamp && stamp.2.is_some() {
                return Ok(v.clone());
            }
        }
        let start = layout::day_start(day);
        let segs = self.store.day_segments(camera, day)?;
        let v = Arc::new(DayBrief {
            hours: crate::summary::summarize(
                &segs,
                crate::summary::HOUR_US,
                (start.0, start.0 + crate::summary::DAY_US as i64),
            ),
            // Copied out, not filtered in place: a `Vec` collected from
            // its own `into_iter` keeps the whole day's allocation, and
            // the brief is kept as long as the log.
            unfinished: segs
                .iter()
                .filter(|s| s.state != SegmentState::Complete)
                .cloned()
                .collect(),
        });
        self.cache().insert(key, (stamp, v.clone()));
        Ok(v)
    }

    /// `camera`'s days with an index log in `[first, last]`, in brief;
    /// what was kept of days whose log is gone is dropped.
    fn briefs(
        &self,
        camera: &CameraId,
        (first, last): (i64, i64),
    ) -> Result<Vec<Arc<DayBrief>>, StoreError> {
        let days = self.store.days(camera)?;
        self.cache()
            .retain(|(c, d), _| c != camera || days.binary_search(d).is_ok());
        days.into_iter()
            .filter(|d| (first..=last).contains(d))
            .map(|d| self.day_brief(camera, d))
            .collect()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl Recorder for NativeRecorder {
    fn describe(&self) -> String {
        format!("native store {}", self.store.root().display())
    }

    fn matching(&self) -> Matching {
        Matching::Identical
    }

    fn data_dir(&self) -> &Path {
        self.store.root()
    }

    fn cameras(&self) -> Result<Vec<CameraId>, StoreError> {
        self.store.cameras()
    }

    fn segments(
        &self,
        camera: &CameraId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<SegmentMeta>, StoreError> {
        self.store.segments(camera, from, to)
    }

    fn last_segment_end(&self, camera: &CameraId) -> Result<Option<Timestamp>, StoreError> {
        self.store.last_segment_end(camera)
    }

    fn summaries(
        &self,
        camera: &CameraId,
        from: Timestamp,
        to: Timestamp,
        bucket_us: u64,
    ) -> Result<Vec<(i64, Summary)>, StoreError> {
        let bounds = crate::summary::bucket_bounds(from, to, bucket_us);
        if bounds.0 >= bounds.1 {
            return Ok(Vec::new());
        }
        let days = (
            layout::day_number(Timestamp(bounds.0)),
            layout::day_number(Timestamp(bounds.1 - 1)),
        );
        let hours: Vec<(i64, Summary)> = self
            .briefs(camera, days)?
            .iter()
            .flat_map(|b| b.hours.iter().copied())
            .collect();
        Ok(crate::summary::regroup(hours, bucket_us, bounds))
    }

    fn open(
        &self,
        camera: &CameraId,
        start: Timestamp,
    ) -> Result<Option<(File, SegmentMeta)>, StoreError> {
        let meta = self
            .store
            .segments(camera, start, start.add_micros(1))?
            .into_iter()
            .find(|s| s.start == start && s.state == SegmentState::Complete);
        let Some(meta) = meta else {
            return Ok(None);
        };
        let path = self.store.segment_path(camera, start);
        match File::open(&path) {
            Ok(f) => Ok(Some((f, meta))),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    fn reserve(
        &self,
        sources: &[(&SegmentMeta, &str)],
        opts: PlaceOptions,
    ) -> Result<Placed, StoreError> {
        placeholder::create(&self.store, sources, opts)
    }

    fn outstanding(&self, from: Timestamp, to: Timestamp) -> Result<Vec<SegmentMeta>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        // From each day log's brief: a scrub round that finds nothing
        // missing reads no log that did not change.
        let days = (
            layout::day_number(from.add_micros(-(super::MAX_SEGMENT_DURATION_US as i64))),
            layout::day_number(to.add_micros(-1)),
        );
        let mut candidates = Vec::new();
        for c in self.store.cameras()? {
            for b in self.briefs(&c, days)? {
                candidates.extend(
                    b.unfinished
                        .iter()
                        .filter(|s| s.start < to && s.end() > from)
                        .cloned(),
                );
            }
        }
        placeholder::outstanding_among(&self.store, candidates)
    }

    fn release(&self, metas: &[SegmentMeta]) -> Result<Vec<SegmentMeta>, StoreError> {
        let gone = super::release_reservations(
            metas
                .iter()
                .map(|m| (self.store.segment_path(&m.camera, m.start), m.clone())),
        )?;
        self.store.remove_from_index(&gone)?;
        Ok(gone)
    }

    fn sink(&self, meta: &SegmentMeta) -> Result<Box<dyn SegmentSink>, StoreError> {
        let path = self.store.segment_path(&meta.camera, meta.start);
        // Only a placeholder (or partial) of these bytes is written into: a
        // file the recorder wrote meanwhile, or one already complete, is
        // never touched.
        let bad = |reason: String| StoreError::BadSegment {
            camera: meta.camera.clone(),
            start: meta.start,
            reason,
        };
        match super::read_xattr_record(&path)? {
            Some(r) if r.state == SegmentState::Complete => {
                return Err(bad("already complete; not written into".into()))
            }
            Some(r) if r.len != meta.len || r.blake3 != meta.blake3 => {
                return Err(bad(
                    "the placeholder is for other bytes; not written into".into()
                ))
            }
            Some(_) => {}
            None => {
                return Err(bad(format!(
                    "{} is not a placeholder (no record); not written into",
                    path.display()
                )))
            }
        }
        Ok(Box::new(FileSink::open(path, meta.len)?))
    }

    fn commit(&self, done: &[SegmentMeta]) -> Result<(), StoreError> {
        self.store.append_index(done)
    }
}

/// A placeholder file filled in place; its progress and record are
/// extended attributes on it (see [`placeholder`]).
#[derive(Debug)]
pub struct FileSink {
    file: Arc<File>,
    path: PathBuf,
}

impl FileSink {
    /// Opens the reserved file at `path`, giving it `len` bytes if it lost
    /// them.
    pub fn open(path: PathBuf, len: u64) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        if file.metadata().map_err(io)?.len() != len {
            // Its bytes are not the ones its progress describes: that goes
            // first.
            crate::placeholder::forget_progress(&file, &path)?;
            file.set_len(len).map_err(io)?;
        }
        Ok(FileSink {
            file: Arc::new(file),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SegmentSink for FileSink {
    fn file(&self) -> &Arc<File> {
        &self.file
    }

    fn progress(&self) -> Result<Option<Progress>, StoreError> {
        placeholder::read_progress(&self.path)
    }

    fn record_seen(&self, p: &Progress) -> Result<(), StoreError> {
        placeholder::write_seen(&self.file, &self.path, p)
    }

    fn record_durable(&self, meta: &SegmentMeta, p: &Progress) -> Result<(), StoreError> {
        placeholder::write_durable(&self.file, &self.path, meta, p)
    }

    fn install(&self, meta: &SegmentMeta) -> Result<SegmentMeta, StoreError> {
        placeholder::mark_complete(&self.file, &self.path, meta)?;
        Ok(SegmentMeta {
            state: SegmentState::Complete,
            ..meta.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::Origin;

    fn meta(cam: &CameraId, start: i64) -> SegmentMeta {
        SegmentMeta {
            camera: cam.clone(),
            start: Timestamp(start),
            duration_us: 60_000_000,
            len: 1000,
            blake3: blake3::hash(&start.to_le_bytes()),
            state: SegmentState::Complete,
            origin: Origin::Local,
            notes: None,
        }
    }

    #[test]
    fn a_kept_brief_holds_no_room_for_the_days_segments() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), true).unwrap();
        let cam = CameraId::new("cam-1").unwrap();
        let day = 20_000 * crate::summary::DAY_US as i64;
        let mut metas: Vec<SegmentMeta> = (0..1440)
            .map(|k| meta(&cam, day + k * 60_000_000))
            .collect();
        metas[7].state = SegmentState::Placeholder;
        store.append_index(&metas).unwrap();
        let rec = NativeRecorder::new(store);
        let brief = rec
            .day_brief(&cam, day / crate::summary::DAY_US as i64)
            .unwrap();
        assert_eq!(brief.unfinished.len(), 1);
        // Kept as long as the log: a brief of one unfinished segment
        // keeps room for one, not for the day's 1,440.
        assert!(
            brief.unfinished.capacity() < 16,
            "{}",
            brief.unfinished.capacity()
        );
    }

    #[test]
    fn kept_summaries_follow_appends_to_the_day_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_writer(dir.path(), true).unwrap();
        let cam = CameraId::new("cam-1").unwrap();
        let day = 20_000 * crate::summary::DAY_US as i64;
        let hour = crate::summary::HOUR_US as i64;
        store
            .append_index(&[meta(&cam, day), meta(&cam, day + hour)])
            .unwrap();
        let rec = NativeRecorder::new(store);
        let window = (Timestamp(day - 5 * hour), Timestamp(day + 30 * hour));
        let by_day = |r: &NativeRecorder| {
            r.summaries(&cam, window.0, window.1, crate::summary::DAY_US)
                .unwrap()
        };
        let first = by_day(&rec);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].0, first[0].1.count), (day, 2));
        // The same again, from what was kept; and the hours add up to it.
        assert_eq!(by_day(&rec), first);
        let hours = rec
            .summaries(&cam, window.0, window.1, crate::summary::HOUR_US)
            .unwrap();
        assert_eq!(hours.len(), 2);
        // An append changes the day's summary at once.
        rec.store()
            .append_index(&[meta(&cam, day + 2 * hour)])
            .unwrap();
        let after = by_day(&rec);
        assert_eq!(after[0].1.count, 3);
        assert_ne!(after[0].1.digest, first[0].1.digest);
        // What the default (reading every segment) says is the same.
        let direct = crate::summary::summarize(
            &rec.segments(&cam, window.0, window.1).unwrap(),
            crate::summary::DAY_US,
            crate::summary::bucket_bounds(window.0, window.1, crate::summary::DAY_US),
        );
        assert_eq!(after, direct);
    }
}
