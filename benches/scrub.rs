//! The scrub where nothing changed: two servers holding the same 500
//! cameras x 30 days of 60-second segments (21.6 million a side), one
//! serving (`hafill serve`), the other running scrub rounds against it
//! in this process. The first round asks for the whole window, as every
//! round did before summaries; the rounds after it ask for summaries
//! only. Prints each round's time, bytes on the wire (both ways, the QUIC
//! handshake included), entries received, and both sides' peak memory.
//!
//! Run: `cargo bench --bench scrub` (`-- --cameras 100 --days 7` for a
//! smaller site, `-- --rounds 5` for more quiet rounds). The stores are
//! index-only (records, no segment files): the scrub reads no video when
//! nothing is missing. Building them writes about 3 GB.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{config, free_port, index_only, keygen, peak_rss_kib, reset_peak_rss, Killed, BIN};
use hafill_engine::backfill::{plan_options, BackfillOptions, Session};
use hafill_engine::config::Config;
use hafill_engine::scrub::{prepare_round, ScrubMemory, ScrubSettings};
use hafill_engine::Timestamp;

const SEGMENT_US: i64 = 60_000_000;
const DAY_US: i64 = 86_400_000_000;

fn arg(args: &[String], name: &str, default: u32) -> u32 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cameras = arg(&args, "--cameras", 500);
    let days = arg(&args, "--days", 30);
    let rounds = arg(&args, "--rounds", 3).max(2);
    let base = std::env::var_os("HAFILL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let root = tempfile::tempdir_in(base).unwrap();
    let (d1, d2) = (root.path().join("rs01"), root.path().join("rs02"));
    let (id1, id2) = (keygen(&d1, "rs01"), keygen(&d2, "rs02"));
    let (p1, p2) = (free_port(), free_port());
    let c1 = config(&d1, "rs01", p1, "rs02", p2, &id2);
    let c2 = config(&d2, "rs02", p2, "rs01", p1, &id1);

    // Both hold every minute of the retention up to the last whole minute.
    let end = Timestamp(Timestamp::now().0 / SEGMENT_US * SEGMENT_US);
    let from = end.add_micros(-(days as i64) * DAY_US + SEGMENT_US);
    let t = Instant::now();
    for d in [&d1, &d2] {
        index_only(&d.join("store"), cameras, from, end, SEGMENT_US, 30_000_000);
    }
    let per_side = cameras as u64 * ((end.0 - from.0) / SEGMENT_US) as u64;
    eprintln!(
        "built two indexes of {cameras} cameras x {days} days ({per_side} segments a side) in {:.1?}",
        t.elapsed()
    );

    // The receiver's peak from here on: the rounds, not the building.
    if !reset_peak_rss() {
        eprintln!(
            "could not reset this process's peak memory: its figure includes building the indexes"
        );
    }

    let peer = Killed(
        Command::new(BIN)
            .args(["serve", "--no-scrub", "--config", c1.to_str().unwrap()])
            .env("HAFILL_LOG", "error")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));

    let config = Config::load(&c2).unwrap();
    let opts = BackfillOptions {
        coverage_deadline: Duration::from_secs(3600),
        ..BackfillOptions::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut memory = ScrubMemory::default();
    for round in 0..rounds {
        let t0 = Instant::now();
        let (jobs, looks) = rt.block_on(async {
            let mut session = Session::connect(&config, &opts).await.unwrap();
            let (prepared, looks) = prepare_round(
                &mut session,
                &plan_options(&config, &opts),
                t0,
                &mut memory,
                &ScrubSettings::default(),
            )
            .await
            .unwrap();
            assert!(
                !looks.is_empty(),
                "the peer was not asked: {:?}",
                session.peer_statuses()
            );
            let jobs = prepared.jobs();
            session.close().await;
            (jobs, looks)
        });
        let secs = t0.elapsed().as_secs_f64();
        let (_, l) = &looks[0];
        println!(
            "scrub/{cameras}x{days}d round {round}: {} {secs:.3} s, {} bytes on the wire ({:.2} MiB), {} entries, {} day summaries, {} hour summaries, {jobs} segments to fetch",
            if l.full { "full, " } else { "summaries," },
            l.wire_bytes,
            l.wire_bytes as f64 / (1 << 20) as f64,
            l.entries,
            l.day_summaries,
            l.hour_summaries,
        );
        assert_eq!(jobs, 0, "the two stores hold the same");
    }
    println!(
        "scrub/{cameras}x{days}d peak resident: the receiver (this process, since the indexes were built) {} MiB, serving peer {} MiB",
        peak_rss_kib(std::process::id()) / 1024,
        peak_rss_kib(peer.0.id()) / 1024
    );
    drop(peer);
}
