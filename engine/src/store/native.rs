//! `[recorder] kind = "native"`: hafill's own store as a recorder. Its
//! placeholders are files at the segment's own path, marked `placeholder`;
//! a filled one is marked `complete` on its file, then in the index.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::traits::{Matching, Recorder, SegmentSink};
use super::{Store, StoreError};
use crate::camera::CameraId;
use crate::placeholder::{self, PlaceOptions, Placed, Progress};
use crate::segment::{SegmentMeta, SegmentState};
use crate::units::Timestamp;

/// The native store behind the adapter trait.
#[derive(Debug)]
pub struct NativeRecorder {
    store: Store,
}

impl NativeRecorder {
    pub fn new(store: Store) -> Self {
        NativeRecorder { store }
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
        placeholder::outstanding(&self.store, from, to)
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
