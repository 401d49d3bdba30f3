//! The store and the planner at the size the design promises: 1,000
//! cameras x 30 days of 60-second segments (43.2 million index records) on
//! each of two servers; the local one has been down for the last 2 hours
//! on every camera.
//!
//! Run: `cargo bench --bench store` (`STORE_DAYS=1` for a one-day store).
//! Besides criterion's times it prints the time and peak resident memory
//! of the gate's plan for the outage, and of one whole-retention plan.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use hafill_engine::gate;
use hafill_engine::plan::{self, PlanOptions};
use hafill_engine::segment::{Origin, SegmentMeta, SegmentState};
use hafill_engine::store::native::NativeRecorder;
use hafill_engine::store::Store;
use hafill_engine::{sim, Timestamp};

const CAMERAS: u32 = 1000;
const SEGMENT_US: i64 = 60_000_000;
const OUTAGE_US: i64 = 2 * 3_600_000_000;

/// Index records only: this measures the index and planner, not the disk's
/// ability to hold a petabyte of video. Segments from `from` to `to`,
/// less the last `missing_us`.
fn build_store(dir: &std::path::Path, from: Timestamp, to: Timestamp, missing_us: i64) {
    let store = Store::open_writer(dir, true).expect("store");
    let end = to.add_micros(-missing_us);
    for c in 0..CAMERAS {
        let camera = sim::camera_id(c);
        let metas: Vec<SegmentMeta> = (0..)
            .map(|k| from.add_micros(k * SEGMENT_US))
            .take_while(|t| *t < end)
            .map(|start| SegmentMeta {
                camera: camera.clone(),
                start,
                duration_us: SEGMENT_US as u64,
                len: 30_000_000,
                blake3: blake3::hash(
                    &[c.to_le_bytes().as_slice(), &start.0.to_le_bytes()].concat(),
                ),
                state: SegmentState::Complete,
                origin: Origin::Local,
                notes: None,
            })
            .collect();
        store.append_index_by_syncfs(&metas).expect("append");
    }
}

/// Resets this process's peak resident memory, runs `f`, and returns its
/// result, the time it took and the peak (MiB).
fn measured<T>(f: impl FnOnce() -> T) -> (T, std::time::Duration, u64) {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = Instant::now();
    let out = f();
    let elapsed = t.elapsed();
    let peak = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    (out, elapsed, peak / 1024)
}

fn bench(c: &mut Criterion) {
    let days: i64 = std::env::var("STORE_DAYS")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(30);
    let base = std::env::var_os("HAFILL_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let now = Timestamp::now();
    let end = Timestamp(now.0 / SEGMENT_US * SEGMENT_US);
    let from = end.add_micros(-days * 86_400_000_000);
    let t = Instant::now();
    build_store(&dir.path().join("peer"), from, end, 0);
    build_store(&dir.path().join("local"), from, end, OUTAGE_US);
    eprintln!(
        "built two indexes of {CAMERAS} cameras x {days} days ({} segments a side) in {:.1?}",
        CAMERAS as i64 * days * 1440,
        t.elapsed()
    );
    let local_dir = dir.path().join("local");
    let peer_dir = dir.path().join("peer");
    let retention = PlanOptions {
        now,
        retention_us: days as u64 * 86_400_000_000,
        from: None,
        to: None,
    };
    // The gate's plan: from where local recording stopped (the last day of
    // each camera's index tells), both indexes read over that window only.
    let gate_plan = || {
        let local = Store::open(&local_dir).expect("open");
        let peer = Store::open(&peer_dir).expect("open");
        let recorder = NativeRecorder::new(Store::open(&local_dir).expect("open"));
        let start = gate::window_start(&recorder, now, 86_400_000_000).expect("window");
        let opts = PlanOptions {
            from: Some(start),
            ..retention.clone()
        };
        plan::plan_stores(&local, &[("peer".into(), peer)], None, &opts).expect("plan")
    };
    let expected = CAMERAS as u64 * (OUTAGE_US / SEGMENT_US) as u64;
    let (p, took, peak) = measured(gate_plan);
    eprintln!(
        "gate plan, 2-hour outage: {} segments in {took:.2?}; peak RSS {peak} MiB",
        p.segments()
    );
    assert_eq!(p.segments(), expected);
    drop(p);
    let (p, took, peak) = measured(|| {
        let local = Store::open(&local_dir).expect("open");
        let peer = Store::open(&peer_dir).expect("open");
        plan::plan_stores(&local, &[("peer".into(), peer)], None, &retention).expect("plan")
    });
    eprintln!(
        "whole-retention plan ({days} days, both indexes read in full): {} segments in {took:.2?}; peak RSS {peak} MiB",
        p.segments()
    );
    assert_eq!(p.segments(), expected);
    drop(p);

    let mut g = c.benchmark_group("index");
    g.bench_function("open_and_list_1000_cameras", |b| {
        b.iter(|| {
            black_box(
                Store::open(&local_dir)
                    .expect("open")
                    .cameras()
                    .expect("cameras")
                    .len(),
            )
        })
    });
    let store = Store::open(&local_dir).expect("open");
    let cam = sim::camera_id(517);
    // An hour in the middle of the retention, and one right after midnight
    // (its segments' look-back reaches the day before).
    let mid = Timestamp((from.0 + end.0) / 2 / 3_600_000_000 * 3_600_000_000);
    let midnight = Timestamp(mid.0 / 86_400_000_000 * 86_400_000_000);
    for (name, t) in [
        ("coverage_one_camera_hour", mid),
        ("coverage_one_camera_hour_after_midnight", midnight),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    store
                        .coverage(&cam, t, t.add_micros(3_600_000_000))
                        .expect("coverage")
                        .measure(),
                )
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("plan");
    g.sample_size(10);
    g.bench_function("gate_1000_cameras_2h_outage", |b| {
        b.iter(|| black_box(gate_plan().segments()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
