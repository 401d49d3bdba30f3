//! Two `hafill serve` processes on loopback with their own keys; a 1 GiB
//! outage backfilled by `hafill backfill`: every file identical to its
//! source, indexed complete with the peer as origin, sent in packets of
//! the largest size MTU discovery allows.

mod common;
use common::cluster::{file_hashes, Cluster};
use common::*;

#[test]
fn a_one_gib_outage_is_backfilled_verified_and_identical() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    let (from, to) = (rfc3339(t0), rfc3339(t0 + 600));
    // 8 cameras x 4 Mbit/s: 240 MB a minute; 6 minutes on all 8 is 1.4 GB.
    let outage = format!("{}..{}", rfc3339(t0 + 180), rfc3339(t0 + 540));
    let rec = [
        "--cameras",
        "8",
        "--bitrate",
        "4Mbit",
        "--segment",
        "60s",
        "--from",
        &from,
        "--to",
        &to,
        "--seed",
        "11",
    ];
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    run_ok(&[&["sim", "record", "--store", p(&a)][..], &rec].concat());
    run_ok(
        &[
            &["sim", "record", "--store", p(&b), "--outage", &outage][..],
            &rec,
        ]
        .concat(),
    );
    // rs01 logs each connection's packet statistics when it closes.
    c.serve_logging(
        "rs01",
        &["--no-scrub"],
        "info,hafill_engine::transfer::server=debug",
    );
    c.serve("rs02");

    let before = json(&[
        "plan",
        "--store",
        p(&b),
        "--peer-store",
        &format!("rs01={}", p(&a)),
        "--json",
    ]);
    let planned_bytes = before["bytes"].as_u64().unwrap();
    assert!(planned_bytes >= 1 << 30, "outage is {planned_bytes} bytes");

    let cfg = c.server("rs02").config();
    let report = json(&["backfill", "--config", p(&cfg), "--json"]);
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["bytes"].as_u64().unwrap(), planned_bytes);
    assert_eq!(report["segments"], before["segments"]);
    assert_eq!(report["refetched_bytes"], 0);
    for key in ["segments", "bytes", "seconds", "refetched_bytes", "failed"] {
        assert!(report.get(key).is_some(), "summary lacks {key}");
    }

    // Byte-identical stores, and the index says complete, from rs01.
    assert_eq!(file_hashes(&a), file_hashes(&b));
    let ls = json(&["store", "ls", "--store", p(&b), "--json"]);
    let mut from_peer = 0;
    for cam in ls["cameras"].as_array().unwrap() {
        for s in cam["segments"].as_array().unwrap() {
            assert_eq!(s["state"], "complete");
            if s["origin"] == "peer:rs01" {
                from_peer += 1;
            }
        }
    }
    assert_eq!(from_peer, before["segments"].as_u64().unwrap());
    let v = run(&["store", "verify", "--store", p(&b)]);
    assert!(v.status.success());

    // Nothing left: a second run moves nothing.
    let again = json(&["backfill", "--config", p(&cfg), "--json"]);
    assert_eq!(again["segments"], 0);
    assert_eq!(again["bytes"], 0);

    // The transfer kept its large packets: no burst of lost packets was
    // taken for an MTU black hole (which drops quinn to 1,200-byte packets),
    // and discovery reached the largest size allowed.
    let stats = connection_statistics(&c, "rs01", 2);
    assert!(
        stats.iter().all(|l| l.contains(" black_holes=0 ")),
        "{stats:#?}"
    );
    let top = format!(" mtu={} ", hafill_engine::transfer::MAX_MTU);
    assert!(stats.iter().any(|l| l.contains(&top)), "{stats:#?}");
}

/// The `connection statistics` lines of `name`'s log, once there are at
/// least `n` (a closed connection is logged a moment after the client exits).
fn connection_statistics(c: &Cluster, name: &str, n: usize) -> Vec<String> {
    for _ in 0..600 {
        let lines: Vec<String> = c
            .serve_log(name)
            .lines()
            .filter(|l| l.contains("connection statistics"))
            .map(str::to_string)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{name} logged fewer than {n} connection statistics lines");
}

/// A window of several days: segments on three days, two of them across
/// midnight (in two days' index logs), each planned, fetched and counted
/// once.
#[test]
fn a_window_of_days_is_filled_once_across_midnights() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    // The last midnight at least a day ago: every segment is in the past.
    let now = base_time();
    let midnight = (now / 86_400 - 1) * 86_400;
    let a = c.server("rs01").store();
    // Segments of 601 s at 64 kbit/s (sim's grid is aligned to the
    // epoch; a day is not a whole number of them, so one crosses
    // midnight): the one over midnight two days back, one at 01:00 the
    // day after, the one over the last midnight.
    const SEG: i64 = 601;
    for t in [
        midnight - 2 * 86_400 - 1,
        midnight - 86_400 + 3600,
        midnight - 1,
    ] {
        let start = t.div_euclid(SEG) * SEG;
        run_ok(&[
            "sim",
            "record",
            "--store",
            p(&a),
            "--cameras",
            "2",
            "--bitrate",
            "64kbit",
            "--segment",
            &format!("{SEG}s"),
            "--from",
            &rfc3339(start),
            "--to",
            &rfc3339(start + SEG),
            "--seed",
            "5",
        ]);
    }
    c.serve("rs01");
    c.serve("rs02");

    let cfg = c.server("rs02").config();
    let report = json(&["backfill", "--config", p(&cfg), "--json"]);
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["planned_segments"], 6, "{report}");
    assert_eq!(report["placeholders_created"], 6, "{report}");
    assert_eq!(report["segments"], 6, "{report}");
    assert_eq!(report["refetched_bytes"], 0);
    let peers = report["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "one status per peer: {report}");
    assert_eq!(peers[0]["segments_offered"], 6, "{report}");
    let b = c.server("rs02").store();
    assert_eq!(file_hashes(&a), file_hashes(&b));

    let again = json(&["backfill", "--config", p(&cfg), "--json"]);
    assert_eq!(again["segments"], 0, "{again}");
    assert_eq!(again["planned_segments"], 0, "{again}");
}
