//! The recorder adapter: what hafill needs of a recorder's files, in one
//! trait, so that planning, serving and backfill never see a recorder's
//! layout. `docs/recorders.md` is the contract each adapter keeps (what is
//! durable when, what a crash leaves, what it never touches).
//!
//! Cameras are named here by their **local** name (the recorder's own). The
//! transfer maps them to and from the ids the wire uses (`[[camera]] names`).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use crate::camera::CameraId;
use crate::placeholder::{PlaceOptions, Placed, Progress};
use crate::segment::SegmentMeta;
use crate::store::StoreError;
use crate::units::Timestamp;

/// A BLAKE3 not yet known: the segment's file has not been hashed. On the
/// wire (coverage) it says "ask for the segment; its header carries the
/// hash".
pub const UNKNOWN_HASH: blake3::Hash = blake3::Hash::from_bytes([0; 32]);

/// How a recorder's gaps are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// Two servers hold byte-identical segments at the same starts (the
    /// native store): a gap is a peer's segment we lack.
    Identical,
    /// Each recorder cuts its own segments: a gap is time a peer recorded
    /// and we did not.
    ByTime,
}

/// One recorder's files, as hafill sees them.
pub trait Recorder: Send + Sync + std::fmt::Debug {
    /// A line for logs: the kind and the folder.
    fn describe(&self) -> String;

    fn matching(&self) -> Matching;

    /// The folder whose device the disk throttle watches.
    fn data_dir(&self) -> &Path;

    /// The cameras it holds, by local name.
    fn cameras(&self) -> Result<Vec<CameraId>, StoreError>;

    /// The segments of `camera` that overlap `[from, to)`, sorted by start:
    /// finished recordings (`complete`; never one the recorder may still be
    /// writing), and hafill's own reservations for gaps (`placeholder` or
    /// `partial`). A hash not yet known is [`UNKNOWN_HASH`].
    fn segments(
        &self,
        camera: &CameraId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<SegmentMeta>, StoreError>;

    /// Summaries of `camera`'s finished segments by bucket of `bucket_us`
    /// (see [`crate::summary`]), over the buckets `[from, to)` touches,
    /// sorted; only buckets that hold one. Adapters that can keep them
    /// between calls do (the native store, per day log).
    fn summaries(
        &self,
        camera: &CameraId,
        from: Timestamp,
        to: Timestamp,
        bucket_us: u64,
    ) -> Result<Vec<(i64, crate::summary::Summary)>, StoreError> {
        let bounds = crate::summary::bucket_bounds(from, to, bucket_us);
        let segs = self.segments(camera, Timestamp(bounds.0), Timestamp(bounds.1))?;
        Ok(crate::summary::summarize(&segs, bucket_us, bounds))
    }

    /// The end of `camera`'s newest finished segment.
    fn last_segment_end(&self, camera: &CameraId) -> Result<Option<Timestamp>, StoreError>;

    /// The start of the segment the recorder may still be writing, if any:
    /// the time from there on is recorded here, though not offered yet.
    fn recording_since(&self, _camera: &CameraId) -> Result<Option<Timestamp>, StoreError> {
        Ok(None)
    }

    /// Opens `camera`'s finished segment that starts at `start`, to serve.
    /// None: there is none.
    fn open(
        &self,
        camera: &CameraId,
        start: Timestamp,
    ) -> Result<Option<(File, SegmentMeta)>, StoreError>;

    /// Notes the BLAKE3 of a segment that was just read whole (served), so
    /// that it is hashed once. Adapters that know every hash ignore it.
    fn note_hash(&self, _meta: &SegmentMeta, _hash: blake3::Hash) {}

    /// Makes room for gaps: a placeholder or reservation per source (the
    /// peer's segment and the peer), newest first, within the free space
    /// above the reserve.
    fn reserve(
        &self,
        sources: &[(&SegmentMeta, &str)],
        opts: PlaceOptions,
    ) -> Result<Placed, StoreError>;

    /// Reservations an earlier run left unfilled in `[from, to)`.
    fn outstanding(&self, from: Timestamp, to: Timestamp) -> Result<Vec<SegmentMeta>, StoreError>;

    /// Gives up the reservations `metas` (from [`Self::outstanding`]): each
    /// file is removed only while its own record still says `placeholder`
    /// for those bytes with no durable block, so nothing complete or
    /// partial and nothing the recorder wrote is ever touched. Returns the
    /// reservations released.
    fn release(&self, metas: &[SegmentMeta]) -> Result<Vec<SegmentMeta>, StoreError>;

    /// Where the verified blocks of the reserved `meta` go.
    fn sink(&self, meta: &SegmentMeta) -> Result<Box<dyn SegmentSink>, StoreError>;

    /// Registers segments whose sinks finished (the native store's index).
    fn commit(&self, _done: &[SegmentMeta]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Where a fetch puts one segment's verified blocks. The fetch writes each
/// verified block into [`SegmentSink::file`] at its offset, syncs, and
/// reports progress; when every block (each verified against the source's
/// BLAKE3 as it arrived) is durable, [`SegmentSink::install`] makes it the
/// recorder's.
pub trait SegmentSink: Send + Sync + std::fmt::Debug {
    /// The file the blocks are written into, at their offsets.
    fn file(&self) -> &Arc<File>;

    /// Progress an earlier attempt left.
    fn progress(&self) -> Result<Option<Progress>, StoreError>;

    /// Blocks verified and written, not synced (survives a process kill).
    fn record_seen(&self, p: &Progress) -> Result<(), StoreError>;

    /// Blocks durable: the caller has `fdatasync`ed their bytes.
    fn record_durable(&self, meta: &SegmentMeta, p: &Progress) -> Result<(), StoreError>;

    /// Whether the reservation is still where the blocks were written (an
    /// install that failed may have dropped it, or left it installed).
    fn still_reserved(&self) -> bool {
        true
    }

    /// Every byte is durable and verified against `meta.blake3`: install the
    /// segment where the recorder and its players see it. Returns the
    /// segment as installed.
    fn install(&self, meta: &SegmentMeta) -> Result<SegmentMeta, StoreError>;
}
