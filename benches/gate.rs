//! The boot-time gate at scale: time from `hafill gate` start to COMMAND
//! start, for 500 cameras x a 2-hour outage of 60-second segments (60,000
//! placeholders) and of 10-second segments (360,000), with a real peer
//! (`hafill serve`) on loopback. Prints each run, the median, and the
//! gate's peak resident memory (GNU time).
//!
//! Run: `cargo bench --bench gate` (add `-- --runs 3` for fewer runs,
//! `-- --only 10-second` for one size).
//!
//! The peer's store is index-only (records, no segment files): the gate
//! plans from coverage and never reads the peer's bytes. Each segment is
//! 16 KiB, so the placeholders `fallocate` 1 GiB and 5.6 GiB: the count of
//! files, not their size, is what the gate pays for.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{config, free_port, index_only, keygen, Killed, BIN};
use hafill_engine::store::Store;
use hafill_engine::Timestamp;

const CAMERAS: u32 = 500;
const OUTAGE_US: i64 = 2 * 3_600_000_000;
const SEGMENT_LEN: u64 = 16 << 10;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// One gate run on a fresh local store; returns (seconds to COMMAND start,
/// placeholders, peak RSS in KiB).
///
/// Each run gets a store of its own (`store-K`): deleting the previous run's
/// tens of thousands of allocated files would leave the filesystem busy
/// with discards and journal work that no boot has.
fn run_gate(dir: &Path, run: usize, end: Timestamp, segment_us: i64) -> (f64, u64, u64) {
    let cfg = dir.join(format!("hafill-{run}.toml"));
    let text = std::fs::read_to_string(dir.join("hafill.toml")).unwrap();
    std::fs::write(
        &cfg,
        text.replace("store = \"store\"", &format!("store = \"store-{run}\"")),
    )
    .unwrap();
    let cfg = cfg.as_path();
    let store = dir.join(format!("store-{run}"));
    // The local server recorded up to the outage: one segment per camera.
    index_only(
        &store,
        CAMERAS,
        end.add_micros(-OUTAGE_US - segment_us),
        end.add_micros(-OUTAGE_US),
        segment_us,
        SEGMENT_LEN,
    );
    // At boot the page cache is clean: flush what setting up this run
    // wrote, so the gate's own syncfs pays only for the gate's writes.
    Command::new("sync").status().unwrap();
    let started = dir.join("started");
    let _ = std::fs::remove_file(&started);
    let rss = dir.join("rss");
    let t0 = now_ns();
    let out = Command::new("/usr/bin/time")
        .args([
            "-f",
            "%M",
            "-o",
            rss.to_str().unwrap(),
            BIN,
            "gate",
            "--config",
            cfg.to_str().unwrap(),
            "--",
        ])
        .args(["sh", "-c", &format!("date +%s%N > {}", started.display())])
        .env(
            "HAFILL_LOG",
            std::env::var("HAFILL_BENCH_LOG").unwrap_or_else(|_| "error".into()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if std::env::var("HAFILL_BENCH_LOG").is_ok() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let t1: u128 = std::fs::read_to_string(&started)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let local = Store::open(&store).unwrap();
    let placeholders = local
        .cameras()
        .unwrap()
        .iter()
        .map(|c| local.all_segments(c).unwrap().len() as u64 - 1)
        .sum();
    let rss: u64 = std::fs::read_to_string(&rss)
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    ((t1 - t0) as f64 / 1e9, placeholders, rss)
}

fn main() {
    let mut runs = 5;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--runs") {
        runs = args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(5);
    }
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    if !Path::new("/usr/bin/time").exists() {
        eprintln!("SKIPPED: needs GNU time at /usr/bin/time (apt-get install time)");
        return;
    }
    // Every run's folders are removed at the very end, for the same reason.
    let mut keep = Vec::new();
    for (label, segment_us) in [("60-second", 60_000_000i64), ("10-second", 10_000_000)] {
        if only.as_deref().is_some_and(|o| o != label) {
            continue;
        }
        // The system temp dir (or HAFILL_BENCH_DIR): a plain local
        // filesystem, as a recording store is. (On the project's machines
        // the checkout's filesystem is watched, which makes every file
        // creation cost ~40x more.)
        let base =
            std::env::var_os("HAFILL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        let root = tempfile::tempdir_in(base).unwrap();
        let (d1, d2) = (root.path().join("rs01"), root.path().join("rs02"));
        let (id1, id2) = (keygen(&d1, "rs01"), keygen(&d2, "rs02"));
        let (p1, p2) = (free_port(), free_port());
        let c1 = config(&d1, "rs01", p1, "rs02", p2, &id2);
        config(&d2, "rs02", p2, "rs01", p1, &id1);
        let end = Timestamp(Timestamp::now().0 / segment_us * segment_us);
        let t = Instant::now();
        index_only(
            &d1.join("store"),
            CAMERAS,
            end.add_micros(-OUTAGE_US - 3_600_000_000),
            end,
            segment_us,
            SEGMENT_LEN,
        );
        eprintln!("{label}: peer index built in {:.1?}", t.elapsed());
        let _peer = Killed(
            Command::new(BIN)
                .args(["serve", "--no-scrub", "--config", c1.to_str().unwrap()])
                .env("HAFILL_LOG", "error")
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(500));
        let mut times = Vec::new();
        for k in 0..runs {
            let (secs, placed, rss) = run_gate(&d2, k, end, segment_us);
            let expected = u64::from(CAMERAS) * (OUTAGE_US / segment_us) as u64;
            assert_eq!(
                placed,
                expected,
                "{label} run {k}: only {placed} of {expected} placeholders: the bench's \
                 filesystem ran out of room above the 1 GiB reserve (each run keeps \
                 {} MiB); give HAFILL_BENCH_DIR more room or fewer --runs",
                (expected * (SEGMENT_LEN + 4096)) >> 20
            );
            eprintln!("{label} run {k}: {placed} placeholders, COMMAND started after {secs:.2} s, peak RSS {} MiB", rss / 1024);
            times.push(secs);
        }
        keep.push(root);
        times.sort_by(f64::total_cmp);
        println!(
            "gate/{label}: median {:.2} s to COMMAND start over {runs} runs (min {:.2}, max {:.2})",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
    }
}
