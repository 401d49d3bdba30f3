//! A source segment altered on disk after it was indexed is never marked
//! complete on the receiver, and the report names camera, segment and peer.

mod common;
use common::cluster::Cluster;
use common::*;

#[test]
fn an_altered_source_segment_is_never_marked_complete() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    let (from, to) = (rfc3339(t0), rfc3339(t0 + 600));
    let outage = format!("{}..{}", rfc3339(t0 + 120), rfc3339(t0 + 300));
    let rec = [
        "--cameras",
        "3",
        "--bitrate",
        "2Mbit",
        "--segment",
        "60s",
        "--from",
        &from,
        "--to",
        &to,
        "--seed",
        "8",
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

    // Alter one byte of cam-0002's segment at t0 + 180 s on the source.
    let start = rfc3339(t0 + 180);
    let name = start.replace(['-', ':'], "").replace('Z', ".000000Z.seg");
    let path = a
        .join("segments/cam-0002")
        .join(&start[..10])
        .join(&start[11..13])
        .join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1_000_000] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    c.serve("rs01");

    let out = run(&[
        "backfill",
        "--config",
        p(&c.server("rs02").config()),
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed segment makes the exit status 1"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{report}");
    assert_eq!(failed[0]["camera"], "cam-0002");
    assert_eq!(failed[0]["start"], start.as_str());
    assert_eq!(failed[0]["peers"][0], "rs01");
    assert!(failed[0]["reason"].as_str().unwrap().contains("rs01"));
    assert_eq!(report["segments"], 3 * 3 - 1);

    // On the receiver that segment is still a placeholder; all else complete.
    let ls = json(&[
        "store",
        "ls",
        "--store",
        p(&b),
        "--camera",
        "cam-0002",
        "--json",
    ]);
    let seg = ls["cameras"][0]["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["start"] == start.as_str())
        .unwrap()
        .clone();
    assert_eq!(seg["state"], "placeholder");
    assert!(run(&["store", "verify", "--store", p(&b)]).status.success());
}

/// `--verify-readback` reads each finished segment back from the disk
/// (`O_DIRECT`) and hashes it before it is installed: the backfill
/// completes, every file identical, and the store verifies.
#[test]
fn a_backfill_that_reads_back_from_the_disk_installs_identical_files() {
    let (c, cfg) = common::cluster::gated_outage("1Mbit");
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    let report = json(&[
        "backfill",
        "--config",
        p(&cfg),
        "--json",
        "--verify-readback",
    ]);
    assert_eq!(report["failed"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["segments"], 16, "{report:#}");
    assert_eq!(
        common::cluster::file_hashes(&a),
        common::cluster::file_hashes(&b)
    );
    assert!(run(&["store", "verify", "--store", p(&b)]).status.success());
}
