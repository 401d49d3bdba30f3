//! `sim live`: writes like a recording server, in real time. Each camera
//! writes a frame every frame interval into its open segment; when a
//! segment closes it is made durable (data, record, name, index) as a
//! recording must be. What it measures is what live recording would feel:
//! each write's latency, frames not written within their interval, and
//! segments not durable within a second of closing. On a virtual machine
//! it also counts the late frames that were late while the hypervisor held
//! the CPU (see [`steal`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::steal;
use crate::segment::{Origin, Record, SegmentMeta, SegmentState};
use crate::store::{self, Store, StoreError};
use crate::units::Timestamp;

/// A segment must be durable within this long after it closes.
pub const SEGMENT_DEADLINE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct LiveSpec {
    pub cameras: u32,
    pub bitrate_bps: u64,
    pub segment: Duration,
    pub duration: Duration,
    pub fps: u32,
    pub seed: u64,
}

/// Latency percentiles.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut v: Vec<f64>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveReport {
    pub cameras: u32,
    pub bitrate_bps: u64,
    pub fps: u32,
    pub seconds: f64,
    pub frames: u64,
    pub bytes: u64,
    pub segments: u64,
    /// Latency of each frame's write, in milliseconds.
    pub write_latency_ms: Percentiles,
    /// Frames written later than one frame interval after their time.
    pub frame_deadline_misses: u64,
    /// Of those, the ones whose slot opened a new segment file (directory
    /// and file creation went first).
    pub late_at_segment_open: u64,
    /// How late each camera thread woke for its frame, in ms: CPU
    /// contention shows here, not in the write latency.
    pub wake_delay_ms: Percentiles,
    /// From a segment's close to its index record being durable, in ms.
    pub segment_durable_ms: Percentiles,
    /// Segments not durable within [`SEGMENT_DEADLINE`] of closing.
    pub segment_deadline_misses: u64,
    /// CPU time the hypervisor stole during the run (summed over the CPUs;
    /// 0 on bare metal), in ms.
    pub steal_ms: f64,
    /// Of the late frames, those late while the hypervisor stole at least
    /// [`steal::STEAL_EXPLAINS`] of CPU time between their due time and
    /// their write.
    pub late_while_stolen: u64,
}

#[derive(Default)]
struct CameraStats {
    frames: u64,
    bytes: u64,
    segments: u64,
    write_ms: Vec<f64>,
    frame_misses: u64,
    late_at_open: u64,
    /// Due time and write time of each late frame.
    late_spans: Vec<(Instant, Instant)>,
    wake_ms: Vec<f64>,
    durable_ms: Vec<f64>,
    segment_misses: u64,
}

/// An open segment: its temporary file, its hash so far, its start.
struct Open {
    file: File,
    tmp: std::path::PathBuf,
    hasher: blake3::Hasher,
    start: Timestamp,
    len: u64,
    duration: Duration,
}

/// Records `spec.cameras` cameras in real time for `spec.duration` (or
/// until `stop`), then reports. Cameras are `live-0001`...
pub fn live(store: &Store, spec: &LiveSpec, stop: &AtomicBool) -> Result<LiveReport, StoreError> {
    let fps = spec.fps.max(1);
    let interval = Duration::from_secs(1) / fps;
    let frame_bytes = (spec.bitrate_bps / 8 / u64::from(fps)).max(1) as usize;
    let frames_per_segment = (spec.segment.as_secs_f64() * f64::from(fps))
        .round()
        .max(1.0) as u64;
    let total_frames = (spec.duration.as_secs_f64() * f64::from(fps)).round() as u64;
    let t0 = Instant::now();
    let wall0 = Timestamp::now();
    let cameras_done = AtomicBool::new(false);
    let (stats, steal) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| steal::sample_until(&cameras_done));
        let handles: Vec<_> = (0..spec.cameras)
            .map(|c| {
                scope.spawn(move || {
                    camera_loop(
                        store,
                        c,
                        spec.seed,
                        (t0, wall0),
                        interval,
                        frame_bytes,
                        frames_per_segment,
                        total_frames,
                        stop,
                    )
                })
            })
            .collect();
        let stats: Vec<Result<CameraStats, StoreError>> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(StoreError::Io {
                        path: store.root().to_path_buf(),
                        source: std::io::Error::other("a camera thread panicked"),
                    })
                })
            })
            .collect();
        cameras_done.store(true, Ordering::Relaxed);
        (stats, sampler.join().unwrap_or_default())
    });
    let mut all = CameraStats::default();
    for s in stats {
        let s = s?;
        all.frames += s.frames;
        all.bytes += s.bytes;
        all.segments += s.segments;
        all.frame_misses += s.frame_misses;
        all.late_at_open += s.late_at_open;
        all.late_spans.extend(s.late_spans);
        all.wake_ms.extend(s.wake_ms);
        all.segment_misses += s.segment_misses;
        all.write_ms.extend(s.write_ms);
        all.durable_ms.extend(s.durable_ms);
    }
    Ok(LiveReport {
        cameras: spec.cameras,
        bitrate_bps: spec.bitrate_bps,
        fps,
        seconds: t0.elapsed().as_secs_f64(),
        frames: all.frames,
        bytes: all.bytes,
        segments: all.segments,
        write_latency_ms: Percentiles::of(all.write_ms),
        frame_deadline_misses: all.frame_misses,
        late_at_segment_open: all.late_at_open,
        wake_delay_ms: Percentiles::of(all.wake_ms),
        segment_durable_ms: Percentiles::of(all.durable_ms),
        segment_deadline_misses: all.segment_misses,
        steal_ms: steal.total().as_secs_f64() * 1000.0,
        late_while_stolen: all
            .late_spans
            .iter()
            .filter(|(due, wrote)| steal.stolen_between(*due, *wrote) >= steal::STEAL_EXPLAINS)
            .count() as u64,
    })
}

pub fn live_camera_id(i: u32) -> crate::CameraId {
    // Always a valid id: ASCII letters, digits and '-'.
    crate::CameraId::new(format!("live-{:04}", i + 1)).unwrap_or_else(|_| super::camera_id(i))
}

#[allow(clippy::too_many_arguments)]
fn camera_loop(
    store: &Store,
    c: u32,
    seed: u64,
    (t0, wall0): (Instant, Timestamp),
    interval: Duration,
    frame_bytes: usize,
    frames_per_segment: u64,
    total_frames: u64,
    stop: &AtomicBool,
) -> Result<CameraStats, StoreError> {
    let camera = live_camera_id(c);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (u64::from(c) << 32));
    let mut frame = vec![0u8; frame_bytes];
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| StoreError::Io { path, source }
    };
    // Closed segments are made durable by a thread of their own, as a
    // recorder does: frames keep their schedule while the fsync runs.
    let (to_close, closing) = std::sync::mpsc::channel::<(Open, Instant)>();
    std::thread::scope(|scope| {
        let closer = scope.spawn(|| -> Result<CameraStats, StoreError> {
            let mut stats = CameraStats::default();
            for (seg, closed_at) in closing {
                close(store, &camera, seg, closed_at, &mut stats)?;
            }
            Ok(stats)
        });
        let mut stats = CameraStats::default();
        let mut open: Option<Open> = None;
        let mut result = Ok(());
        for i in 0..total_frames {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let due = t0 + interval * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            stats
                .wake_ms
                .push(Instant::now().saturating_duration_since(due).as_secs_f64() * 1000.0);
            let opens_segment = i % frames_per_segment == 0;
            if opens_segment {
                if let Some(seg) = open.take() {
                    let _ = to_close.send((seg, due));
                }
                let start = wall0.add_micros((interval * i as u32).as_micros() as i64);
                let path = store.segment_path(&camera, start);
                let opened = (|| {
                    if let Some(d) = path.parent() {
                        std::fs::create_dir_all(d).map_err(io(d))?;
                    }
                    let tmp = store::tmp_path(&path);
                    let file = OpenOptions::new()
                        .create(true)
                        .truncate(true)
                        .write(true)
                        .open(&tmp)
                        .map_err(io(&tmp))?;
                    Ok(Open {
                        file,
                        tmp,
                        hasher: blake3::Hasher::new(),
                        start,
                        len: 0,
                        duration: Duration::ZERO,
                    })
                })();
                match opened {
                    Ok(o) => open = Some(o),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            rng.fill_bytes(&mut frame);
            let Some(seg) = open.as_mut() else { continue };
            let before = Instant::now();
            if let Err(e) = seg.file.write_all(&frame) {
                result = Err(io(&seg.tmp)(e));
                break;
            }
            let after = Instant::now();
            seg.hasher.update(&frame);
            seg.len += frame.len() as u64;
            seg.duration += interval;
            stats.frames += 1;
            stats.bytes += frame.len() as u64;
            stats.write_ms.push((after - before).as_secs_f64() * 1000.0);
            if after.saturating_duration_since(due) > interval {
                stats.frame_misses += 1;
                stats.late_at_open += u64::from(opens_segment);
                stats.late_spans.push((due, after));
            }
        }
        if let Some(seg) = open.take() {
            let _ = to_close.send((seg, Instant::now()));
        }
        drop(to_close);
        let closed = closer.join().unwrap_or_else(|_| {
            Err(io(store.root())(std::io::Error::other(
                "the closer thread panicked",
            )))
        })?;
        result?;
        stats.segments = closed.segments;
        stats.durable_ms = closed.durable_ms;
        stats.segment_misses = closed.segment_misses;
        Ok(stats)
    })
}

/// Makes a closed segment durable: record, fsync, final name, index; and
/// times it from the moment the segment closed.
fn close(
    store: &Store,
    camera: &crate::CameraId,
    seg: Open,
    closed_at: Instant,
    stats: &mut CameraStats,
) -> Result<(), StoreError> {
    let path = store.segment_path(camera, seg.start);
    let meta = SegmentMeta {
        camera: camera.clone(),
        start: seg.start,
        duration_us: seg.duration.as_micros() as u64,
        len: seg.len,
        blake3: seg.hasher.finalize(),
        state: SegmentState::Complete,
        origin: Origin::Local,
        notes: None,
    };
    store::write_xattr_record(&seg.file, &seg.tmp, &Record::put(&meta))?;
    seg.file.sync_all().map_err(|source| StoreError::Io {
        path: seg.tmp.clone(),
        source,
    })?;
    std::fs::rename(&seg.tmp, &path).map_err(|source| StoreError::Io {
        path: path.clone(),
        source,
    })?;
    if let Some(d) = path.parent() {
        store::sync_dir(d)?;
    }
    store.append_index(std::slice::from_ref(&meta))?;
    let took = closed_at.elapsed();
    stats.segments += 1;
    stats.durable_ms.push(took.as_secs_f64() * 1000.0);
    if took > SEGMENT_DEADLINE {
        stats.segment_misses += 1;
    }
    Ok(())
}
