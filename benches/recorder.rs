//! The segments adapter at a recorder's size: cameras of 30 days of
//! 60-second files in one folder each (`{camera}/%Y%m%d-%H%M%S.bin`, a
//! container hafill does not parse, so each file's duration is the spacing
//! to the next). Measures what the serving side and the scrub ask of it:
//! opening one segment to serve, the segments of one camera-hour, a day's
//! summaries by hour, and the list of cameras.
//!
//! Run: `cargo bench --bench recorder` (`RECORDER_CAMERAS`, default 2;
//! `RECORDER_DAYS`, default 30). The files are empty; the first pass reads
//! each file's facts once, as a serving hafill does once per file.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use hafill_engine::store::pattern::SegmentPattern;
use hafill_engine::store::segments::SegmentsRecorder;
use hafill_engine::store::traits::Recorder;
use hafill_engine::{CameraId, Timestamp};

const SEGMENT_US: i64 = 60_000_000;
const HOUR_US: i64 = 3_600_000_000;

fn env(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes `days` of 60-second files for each camera, ending at `end`.
fn build(dir: &Path, cameras: i64, days: i64, end: Timestamp) -> SegmentPattern {
    let pattern = SegmentPattern::parse("{camera}/%Y%m%d-%H%M%S.bin").unwrap();
    let per_camera = days * 86_400_000_000 / SEGMENT_US;
    for c in 0..cameras {
        let cam = format!("cam-{c:04}");
        for i in 0..per_camera {
            let start = Timestamp(end.0 - (per_camera - i) * SEGMENT_US);
            let rel = pattern.expand(&cam, start);
            let path = dir.join(rel);
            if i == 0 {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            }
            std::fs::write(&path, b"").unwrap();
        }
    }
    pattern
}

fn recorder(c: &mut Criterion) {
    let cameras = env("RECORDER_CAMERAS", 2).max(1);
    let days = env("RECORDER_DAYS", 30).max(1);
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("recordings");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&folder).unwrap();
    hafill_engine::state::State::init(&state).unwrap();
    // Whole hours, a day back: every file is settled, whatever the hour.
    let end = Timestamp((Timestamp::now().0 / HOUR_US - 24) * HOUR_US);
    let pattern = build(&folder, cameras, days, end);
    let rec = SegmentsRecorder::open(&folder, pattern, 0, &state, false).unwrap();
    let cam = CameraId::new("cam-0000").unwrap();
    let first = Timestamp(end.0 - days * 86_400_000_000);
    // The facts of every file, read once (as a serving hafill does).
    let all = rec.segments(&cam, first, end).unwrap();
    println!(
        "segments adapter: {cameras} cameras x {days} days of 60-second files, {} files of cam-0000",
        all.len()
    );
    let mid = Timestamp(first.0 + (end.0 - first.0) / 2 / SEGMENT_US * SEGMENT_US);
    let mut g = c.benchmark_group("segments_adapter");
    g.sample_size(10);
    g.bench_function("open_one_segment", |b| {
        b.iter(|| black_box(rec.open(&cam, mid).unwrap().is_some()))
    });
    g.bench_function("segments_of_one_camera_hour", |b| {
        b.iter(|| {
            black_box(
                rec.segments(&cam, mid, mid.add_micros(HOUR_US))
                    .unwrap()
                    .len(),
            )
        })
    });
    g.bench_function("summaries_of_one_day_by_hour", |b| {
        b.iter(|| {
            black_box(
                rec.summaries(&cam, mid, mid.add_micros(24 * HOUR_US), HOUR_US as u64)
                    .unwrap()
                    .len(),
            )
        })
    });
    g.bench_function("cameras", |b| {
        b.iter(|| black_box(rec.cameras().unwrap().len()))
    });
    g.finish();
}

criterion_group!(benches, recorder);
criterion_main!(benches);
