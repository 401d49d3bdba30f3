//! A segment is hashed once for serving: its block list is kept when it
//! arrives (the receiver keeps the list it verified) or when it is first
//! served, and later fetches of it are answered from that list.

mod common;
use common::cluster::{file_hashes, Cluster};
use common::*;

const SERVER_LOG: &str = "hafill_engine::transfer::server=debug,info";

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// Kept block lists under a store's `outboard/`.
fn kept(store: &std::path::Path) -> usize {
    walkdir(&store.join("outboard"))
}

fn walkdir(d: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(d) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.path().is_dir() {
                walkdir(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn a_segment_is_hashed_once_to_serve_it_and_its_receiver_serves_it_unhashed() {
    let mut c = Cluster::new(&["rs01", "rs02", "rs03"]);
    let t0 = base_time();
    let (a, b, d) = (
        c.server("rs01").store(),
        c.server("rs02").store(),
        c.server("rs03").store(),
    );
    // rs01 recorded 2 cameras x 5 minutes; rs02 and rs03 the first minute.
    sim_record(&a, 2, "1Mbit", "60s", t0, t0 + 300, 5);
    sim_record(&b, 2, "1Mbit", "60s", t0, t0 + 60, 5);
    sim_record(&d, 2, "1Mbit", "60s", t0, t0 + 60, 5);
    let backfill = |cfg: &std::path::Path, from: &str| {
        let report = json(&["backfill", "--config", p(cfg), "--json", "--from", from]);
        assert_eq!(report["failed"], serde_json::json!([]), "{report:#}");
        assert_eq!(report["segments"], 8, "{report:#}");
    };

    // First serve: rs01 hashes each of the 8 segments once, and keeps its
    // list; rs02 keeps the list it verified.
    c.serve_logging("rs01", &["--no-scrub"], SERVER_LOG);
    backfill(&c.server("rs02").config(), "rs01");
    let log = c.serve_log("rs01");
    assert_eq!(count(&log, "block list: hashing the file"), 8, "{log}");
    assert_eq!(count(&log, "block list: kept"), 0, "{log}");
    assert_eq!((kept(&a), kept(&b)), (8, 8));

    // rs01 again, for rs03: no hashing.
    backfill(&c.server("rs03").config(), "rs01");
    let log = c.serve_log("rs01");
    assert_eq!(count(&log, "block list: hashing the file"), 8, "{log}");
    assert_eq!(count(&log, "block list: kept"), 8, "{log}");
    c.kill_servers();

    // rs02 serves what it received without hashing it: rs03's copies are
    // removed from its index and store, and fetched again from rs02.
    std::fs::remove_dir_all(&d).unwrap();
    run_ok(&["store", "init", "--store", p(&d)]);
    sim_record(&d, 2, "1Mbit", "60s", t0, t0 + 60, 5);
    c.serve_logging("rs02", &["--no-scrub"], SERVER_LOG);
    backfill(&c.server("rs03").config(), "rs02");
    let log = c.serve_log("rs02");
    assert_eq!(count(&log, "block list: hashing the file"), 0, "{log}");
    assert_eq!(count(&log, "block list: kept"), 8, "{log}");
    assert_eq!(file_hashes(&a), file_hashes(&d));
}
