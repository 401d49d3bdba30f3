//! Scale of the store and the planner: 1,000 cameras x 1 day of 60-second
//! segments (1.44 million index records) on each of two servers, the local
//! one missing 2 hours on every camera.
//!
//! Run: `cargo bench --bench store`. Besides criterion's times it prints the
//! peak resident memory of one planning run.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use hafill_engine::plan::{self, PlanOptions};
use hafill_engine::segment::{Origin, SegmentMeta, SegmentState};
use hafill_engine::store::Store;
use hafill_engine::{sim, Timestamp};

const CAMERAS: u32 = 1000;
const SEGMENT_US: i64 = 60_000_000;
const DAY_SEGMENTS: i64 = 1440;

/// Index records only: this measures the index and planner, not the disk's
/// ability to hold 43 TB of video.
fn build_store(dir: &std::path::Path, day0: Timestamp, outage: Option<(i64, i64)>) {
    let store = Store::open_writer(dir, true).expect("store");
    for c in 0..CAMERAS {
        let camera = sim::camera_id(c);
        let metas: Vec<SegmentMeta> = (0..DAY_SEGMENTS)
            .filter(|k| outage.is_none_or(|(a, b)| !(a..b).contains(k)))
            .map(|k| SegmentMeta {
                camera: camera.clone(),
                start: day0.add_micros(k * SEGMENT_US),
                duration_us: SEGMENT_US as u64,
                len: 30_000_000,
                blake3: blake3::hash(&[c.to_le_bytes(), (k as u32).to_le_bytes()].concat()),
                state: SegmentState::Complete,
                origin: Origin::Local,
                notes: None,
            })
            .collect();
        store.append_index(&metas).expect("append");
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = Timestamp::now();
    let day0 = Timestamp((now.0 / 86_400_000_000 - 1) * 86_400_000_000);
    let t = std::time::Instant::now();
    build_store(&dir.path().join("peer"), day0, None);
    // The local server was down from 10:00 to 12:00 on every camera.
    build_store(&dir.path().join("local"), day0, Some((600, 720)));
    eprintln!(
        "built two indexes of {} cameras x {DAY_SEGMENTS} segments in {:.1?}",
        CAMERAS,
        t.elapsed()
    );

    let opts = PlanOptions {
        now,
        retention_us: 30 * 86_400_000_000,
        from: None,
        to: None,
    };
    let local_dir = dir.path().join("local");
    let peer_dir = dir.path().join("peer");
    let run_plan = || {
        let local = Store::open(&local_dir).expect("open");
        let peer = Store::open(&peer_dir).expect("open");
        plan::plan_stores(&local, &[("peer".into(), peer)], None, &opts).expect("plan")
    };

    // Peak memory of one planning run alone: reset the high-water mark first.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = peak_rss_kib();
    let t = std::time::Instant::now();
    let p = run_plan();
    eprintln!(
        "plan: {} segments, {} bytes planned in {:.2?}; peak RSS {} MiB (was {} MiB before)",
        p.segments(),
        p.bytes(),
        t.elapsed(),
        peak_rss_kib() / 1024,
        before / 1024
    );
    assert_eq!(p.segments(), CAMERAS as u64 * 120);
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
    let (from, to) = (
        day0.add_micros(9 * 3600 * 1_000_000),
        day0.add_micros(13 * 3600 * 1_000_000),
    );
    g.bench_function("coverage_one_camera_4h", |b| {
        b.iter(|| black_box(store.coverage(&cam, from, to).expect("coverage").measure()))
    });
    g.finish();

    let mut g = c.benchmark_group("plan");
    g.sample_size(10);
    g.bench_function("1000_cameras_1_day_2h_outage", |b| {
        b.iter(|| black_box(run_plan().segments()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
