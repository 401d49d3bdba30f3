//! The simulator: synthetic recordings, deterministic per seed, written
//! through the store exactly as a recording would be.
//!
//! A segment's bytes depend only on (seed, camera, start, duration, bitrate),
//! so two stores recorded from one seed hold byte-identical segments wherever
//! both recorded, and a test can leave a window out of one of them.

pub mod hostile;
pub mod live;
pub mod steal;
pub mod stream;

use std::collections::HashSet;
use std::io::{self, Write};
use std::time::Instant;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::camera::CameraId;
use crate::segment::Origin;
use crate::store::{self, SegmentSpec, Store, MAX_SEGMENT_DURATION_US};
use crate::units::Timestamp;

/// What `hafill sim record` writes.
#[derive(Debug, Clone)]
pub struct RecordSpec {
    pub cameras: u32,
    /// Number of the first camera: 1 gives cam-0001, cam-0002, ...
    pub first_camera: u32,
    pub bitrate_bps: u64,
    pub segment_us: u64,
    pub from: Timestamp,
    pub to: Timestamp,
    /// Windows in which the affected cameras recorded nothing.
    pub outages: Vec<(Timestamp, Timestamp)>,
    /// How many cameras (the first ones) the outages hit; all when `None`.
    pub outage_cameras: Option<u32>,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    #[error("--segment must be between 1ms and {}h", MAX_SEGMENT_DURATION_US / 3_600_000_000)]
    SegmentLength,
    #[error("--cameras and --first-camera must keep camera numbers between 1 and 99999")]
    Cameras,
    #[error("--from must come before --to, with room for at least one segment")]
    Window,
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RecordSummary {
    pub segments: u64,
    pub bytes: u64,
    pub skipped_existing: u64,
    pub left_out_by_outage: u64,
    pub seconds: f64,
}

/// The id of simulated camera `i` (0-based): `cam-0001`, `cam-0002`, ...
pub fn camera_id(i: u32) -> CameraId {
    // Always a valid id: ASCII letters, digits and '-'.
    CameraId::new(format!("cam-{:04}", i + 1)).unwrap_or_else(|_| unreachable!())
}

/// The starts of the segment grid within `[from, to)`: multiples of the
/// segment length since the epoch, so runs with different windows align.
pub fn grid(from: Timestamp, to: Timestamp, segment_us: u64) -> impl Iterator<Item = Timestamp> {
    let seg = segment_us as i64;
    let first = from.0.div_euclid(seg) * seg + if from.0.rem_euclid(seg) == 0 { 0 } else { seg };
    (0..)
        .map(move |k| Timestamp(first + k * seg))
        .take_while(move |s| s.0 + seg <= to.0)
}

fn rng_for(seed: u64, camera: &CameraId, start: Timestamp, duration_us: u64) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new_derive_key("hafill sim segment v1");
    h.update(&seed.to_le_bytes());
    h.update(camera.as_str().as_bytes());
    h.update(&start.0.to_le_bytes());
    h.update(&duration_us.to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// Length of a synthetic segment: the nominal size at `bitrate`, varied by
/// up to ±10% as a variable-bit-rate encoder would.
pub fn segment_len(
    seed: u64,
    camera: &CameraId,
    start: Timestamp,
    duration_us: u64,
    bitrate_bps: u64,
) -> u64 {
    let nominal = (bitrate_bps as u128 * duration_us as u128 / 8_000_000) as u64;
    let mut rng = rng_for(seed, camera, start, duration_us);
    let jitter = (rng.next_u32() % 2001) as i64 - 1000; // per mille of 10%
    let len = nominal as i64 + nominal as i64 * jitter / 10_000;
    len.max(1) as u64
}

/// Writes the bytes of a synthetic segment: a frame header every 32 KiB
/// (compressible, as container headers are) and random payload (as
/// compressed video is).
pub fn write_segment(
    seed: u64,
    camera: &CameraId,
    start: Timestamp,
    duration_us: u64,
    bitrate_bps: u64,
    out: &mut dyn Write,
) -> io::Result<()> {
    const CHUNK: usize = 32 * 1024;
    let len = segment_len(seed, camera, start, duration_us, bitrate_bps);
    let mut rng = rng_for(seed, camera, start, duration_us);
    rng.next_u32(); // the draw that chose the length
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    let mut frame = 0u64;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        let header = format!("HFSIM frame={frame:08} cam={camera} start={} ", start.0);
        let h = header.len().min(n);
        buf[..h].copy_from_slice(&header.as_bytes()[..h]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
        frame += 1;
    }
    Ok(())
}

/// Records synthetic segments into `store`. Segments already indexed are
/// skipped, so an interrupted run can simply be run again.
pub fn record(
    store: &Store,
    spec: &RecordSpec,
    mut progress: impl FnMut(u64, u64),
) -> Result<RecordSummary, SimError> {
    if spec.segment_us < 1_000 || spec.segment_us > MAX_SEGMENT_DURATION_US {
        return Err(SimError::SegmentLength);
    }
    if spec.cameras == 0
        || spec.first_camera == 0
        || spec.first_camera as u64 + spec.cameras as u64 - 1 > 99_999
    {
        return Err(SimError::Cameras);
    }
    let starts: Vec<Timestamp> = grid(spec.from, spec.to, spec.segment_us).collect();
    if starts.is_empty() {
        return Err(SimError::Window);
    }
    let t0 = Instant::now();
    let first = spec.first_camera - 1;
    let cameras: Vec<CameraId> = (first..first + spec.cameras).map(camera_id).collect();
    let mut existing: Vec<HashSet<i64>> = Vec::with_capacity(cameras.len());
    for c in &cameras {
        existing.push(
            store
                .segments(c, spec.from, spec.to)?
                .iter()
                .map(|s| s.start.0)
                .collect(),
        );
    }
    let mut summary = RecordSummary::default();
    let seg = spec.segment_us as i64;
    let in_outage = |cam: u32, start: Timestamp| {
        spec.outage_cameras.is_none_or(|k| cam < k)
            && spec
                .outages
                .iter()
                .any(|(a, b)| start.0 < b.0 && start.0 + seg > a.0)
    };
    // Time-major order, as a recorder writes: every camera's segment of one
    // slot before the next slot.
    let mut todo = Vec::new();
    for &start in &starts {
        for (i, cam) in cameras.iter().enumerate() {
            if existing[i].contains(&start.0) {
                summary.skipped_existing += 1;
            } else if in_outage(i as u32, start) {
                summary.left_out_by_outage += 1;
            } else {
                todo.push(SegmentSpec {
                    camera: cam.clone(),
                    start,
                    duration_us: spec.segment_us,
                    origin: Origin::Local,
                });
            }
        }
    }
    let total = todo.len() as u64;
    let nominal = (spec.bitrate_bps as u128 * spec.segment_us as u128 / 8_000_000).max(1) as u64;
    // Batches of about 256 MiB or 512 segments: large enough to amortise the
    // directory and index fsyncs, small enough to bound what a crash redoes.
    let per_batch = ((256u64 << 20) / nominal).clamp(1, 512) as usize;
    progress(0, total);
    for batch in todo.chunks(per_batch) {
        let metas = store.write_segments(batch, |sp, out| {
            write_segment(
                spec.seed,
                &sp.camera,
                sp.start,
                sp.duration_us,
                spec.bitrate_bps,
                out,
            )
        })?;
        summary.segments += metas.len() as u64;
        summary.bytes += metas.iter().map(|m| m.len).sum::<u64>();
        progress(summary.segments, total);
    }
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_aligns_to_the_epoch() {
        let g: Vec<_> = grid(Timestamp(90), Timestamp(400), 100).collect();
        assert_eq!(g, vec![Timestamp(100), Timestamp(200), Timestamp(300)]);
        let g: Vec<_> = grid(Timestamp(100), Timestamp(399), 100).collect();
        assert_eq!(g, vec![Timestamp(100), Timestamp(200)]);
    }

    #[test]
    fn segments_are_deterministic_and_distinct() {
        let cam = camera_id(0);
        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut c = Vec::new();
        write_segment(7, &cam, Timestamp(60_000_000), 60_000_000, 100_000, &mut a).unwrap();
        write_segment(7, &cam, Timestamp(60_000_000), 60_000_000, 100_000, &mut b).unwrap();
        write_segment(8, &cam, Timestamp(60_000_000), 60_000_000, 100_000, &mut c).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a.len() as u64,
            segment_len(7, &cam, Timestamp(60_000_000), 60_000_000, 100_000)
        );
        let nominal = 100_000 * 60 / 8;
        assert!(a.len() >= nominal * 9 / 10 && a.len() <= nominal * 11 / 10);
    }
}
