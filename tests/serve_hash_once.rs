//! A segment's file is hashed for its block list once: the list is kept
//! when the segment arrives (the receiver keeps the list it verified) or
//! when it is first served, and later fetches of it send that list with
//! no hashing pass first, nor as its blocks are read: a file that rotted
//! since is found by its receiver, which tells the server, which checks.

mod common;
use common::cluster::{file_hashes, Cluster};
use common::*;

const SERVER_LOG: &str = "hafill_engine::transfer::server=debug,info";

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// Kept block lists under a store's `outboard/`, once there are `n` (the
/// serving side keeps them in the background; 10 s for it).
fn kept(store: &std::path::Path, n: usize) -> usize {
    for _ in 0..100 {
        if walkdir(&store.join("outboard")) >= n {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
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
    // (A fetch asked again, after a receiver starved of CPU let the
    // server's send stall pass, is served from the kept list: the counts
    // of "kept" are at least, not exactly.)
    let log = c.serve_log("rs01");
    assert_eq!(count(&log, "block list: hashing the file"), 8, "{log}");
    let kept_before = count(&log, "block list: kept");
    assert_eq!((kept(&a, 8), kept(&b, 8)), (8, 8));

    // rs01 again, for rs03: no hashing.
    backfill(&c.server("rs03").config(), "rs01");
    let log = c.serve_log("rs01");
    assert_eq!(count(&log, "block list: hashing the file"), 8, "{log}");
    assert!(count(&log, "block list: kept") >= kept_before + 8, "{log}");
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
    assert!(count(&log, "block list: kept") >= 8, "{log}");
    assert_eq!(file_hashes(&a), file_hashes(&d));
}

/// A file whose bytes changed after its block list was kept, with its
/// length and modification time as they were (rot on the disk, a restore
/// that kept its time), is refused as damaged: the first time its
/// receiver finds the block that does not verify and says so, and the
/// server, reading that block again, confirms and forgets the list; the
/// next time the server hashes the file before it sends a byte. The
/// receiver fails that one segment and does not cut the honest server off.
#[test]
fn a_file_that_rotted_after_its_list_was_kept_is_refused_and_its_server_not_cut_off() {
    let mut c = Cluster::new(&["rs01", "rs02", "rs03"]);
    let t0 = base_time();
    let (a, b, d) = (
        c.server("rs01").store(),
        c.server("rs02").store(),
        c.server("rs03").store(),
    );
    sim_record(&a, 2, "1Mbit", "60s", t0, t0 + 300, 5);
    sim_record(&b, 2, "1Mbit", "60s", t0, t0 + 60, 5);
    sim_record(&d, 2, "1Mbit", "60s", t0, t0 + 60, 5);
    c.serve("rs01");
    let cfg = |n: &str| p(&c.server(n).config()).to_string();
    let first = json(&[
        "backfill",
        "--config",
        &cfg("rs02"),
        "--json",
        "--from",
        "rs01",
    ]);
    assert_eq!(first["segments"], 8, "{first:#}");
    assert_eq!(kept(&a, 8), 8);

    let (name, _) = rot(&a, "cam-0002", t0 + 180, 100_000);

    for (round, says) in [
        ("kept list", "the peer's copy is damaged"),
        ("hashing pass", "SourceDamaged"),
    ] {
        let out = run(&[
            "backfill",
            "--config",
            &cfg("rs03"),
            "--json",
            "--from",
            "rs01",
        ]);
        assert_eq!(out.status.code(), Some(1), "{round}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let failed = report["failed"].as_array().unwrap();
        assert_eq!(failed.len(), 1, "{round}: {report:#}");
        assert_eq!(failed[0]["camera"], "cam-0002", "{round}: {report:#}");
        let reason = failed[0]["reason"].as_str().unwrap();
        assert!(reason.contains("BLAKE3"), "{round}: {report:#}");
        assert!(reason.contains(says), "{round}: {report:#}");
        // rs01 stays connected: not cut off.
        let rs01 = &report["peers"][0];
        assert_eq!(rs01["peer"], "rs01", "{report:#}");
        assert_eq!(rs01["connected"], true, "{round}: {report:#}");
        assert!(rs01["error"].is_null(), "{round}: {report:#}");
    }
    // The other seven arrived whole; the damaged one is still only
    // reserved.
    let (ours, theirs) = (file_hashes(&d), file_hashes(&a));
    let differ: Vec<&String> = ours
        .keys()
        .filter(|k| theirs.get(*k) != ours.get(*k))
        .collect();
    assert_eq!(differ.len(), 1, "{differ:?}");
    assert!(differ[0].ends_with(&name), "{differ:?}");
}

/// A server that sends more segments damaged in one run than rot
/// explains (`MAX_DAMAGED_PER_PEER`, 3) is cut off: its disk is failing,
/// or it lies that it is to escape being cut off for bad bytes.
#[test]
fn a_server_whose_segments_keep_arriving_damaged_is_cut_off_after_three() {
    let mut c = Cluster::new(&["rs01", "rs02", "rs03"]);
    let t0 = base_time();
    let (a, b, d) = (
        c.server("rs01").store(),
        c.server("rs02").store(),
        c.server("rs03").store(),
    );
    sim_record(&a, 1, "1Mbit", "60s", t0, t0 + 360, 5);
    sim_record(&b, 1, "1Mbit", "60s", t0, t0 + 60, 5);
    sim_record(&d, 1, "1Mbit", "60s", t0, t0 + 60, 5);
    c.serve("rs01");
    let cfg = |n: &str| p(&c.server(n).config()).to_string();
    let first = json(&[
        "backfill",
        "--config",
        &cfg("rs02"),
        "--json",
        "--from",
        "rs01",
    ]);
    assert_eq!(first["segments"], 5, "{first:#}");
    assert_eq!(kept(&a, 5), 5);
    for minute in 1..5 {
        rot(&a, "cam-0001", t0 + 60 * minute, 100_000);
    }

    let out = run(&[
        "backfill",
        "--config",
        &cfg("rs03"),
        "--json",
        "--from",
        "rs01",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = report["failed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["reason"]
                .as_str()
                .unwrap()
                .contains("the peer's copy is damaged")
        })
        .count();
    assert_eq!(damaged, 4, "{report:#}");
    let rs01 = &report["peers"][0];
    assert_eq!(rs01["peer"], "rs01", "{report:#}");
    let error = rs01["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("4 segments sent damaged in this run"),
        "{report:#}"
    );
}

/// Flips one byte of `camera`'s segment at `at` in the native store
/// `store` (at `offset`, from the end if negative), keeping its length
/// and modification time; returns its file name and length.
fn rot(store: &std::path::Path, camera: &str, at: i64, offset: i64) -> (String, u64) {
    let start = rfc3339(at);
    let name = start.replace(['-', ':'], "").replace('Z', ".000000Z.seg");
    let path = store
        .join("segments")
        .join(camera)
        .join(&start[..10])
        .join(&start[11..13])
        .join(&name);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let i = if offset < 0 {
        bytes.len() - offset.unsigned_abs() as usize
    } else {
        offset as usize
    };
    bytes[i] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    (name, bytes.len() as u64)
}

/// What verified before a damaged block is kept: every block that arrived
/// before it is written and made durable before the server is told, so
/// the next holder sends only the rest. Here the damage is in the last
/// of a segment's blocks: the second holder sends that one block, not the
/// segment.
#[test]
fn blocks_that_verified_before_a_damaged_one_are_kept() {
    let mut c = Cluster::new(&["rs01", "rs02", "rs03"]);
    let t0 = base_time();
    let (a, b, d) = (
        c.server("rs01").store(),
        c.server("rs02").store(),
        c.server("rs03").store(),
    );
    sim_record(&a, 1, "1Mbit", "60s", t0, t0 + 120, 5);
    sim_record(&b, 1, "1Mbit", "60s", t0, t0 + 60, 5);
    sim_record(&d, 1, "1Mbit", "60s", t0, t0 + 60, 5);
    c.serve("rs01");
    c.serve("rs02");
    let cfg = |n: &str| p(&c.server(n).config()).to_string();
    // rs01 keeps the segment's list as it first serves it, to rs02.
    let first = json(&[
        "backfill",
        "--config",
        &cfg("rs02"),
        "--json",
        "--from",
        "rs01",
    ]);
    assert_eq!(first["segments"], 1, "{first:#}");
    assert_eq!(kept(&a, 1), 1);
    let (name, len) = rot(&a, "cam-0001", t0 + 60, -100);
    let last = len.div_ceil(1 << 20) - 1;

    let out = run(&[
        "backfill",
        "--config",
        &cfg("rs03"),
        "--json",
        "--from",
        "rs01",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{report:#}");
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("block {last} ")),
        "{report:#}"
    );

    let second = json(&[
        "backfill",
        "--config",
        &cfg("rs03"),
        "--json",
        "--from",
        "rs02",
    ]);
    assert_eq!(second["segments"], 1, "{second:#}");
    assert_eq!(second["bytes"], len, "{second:#}");
    let wire = second["wire_bytes"].as_u64().unwrap();
    assert_eq!(
        wire,
        len - last * (1 << 20),
        "only the last block again: {second:#}"
    );
    let (ours, theirs) = (file_hashes(&d), file_hashes(&b));
    assert_eq!(ours.get(&name), theirs.get(&name));
}
