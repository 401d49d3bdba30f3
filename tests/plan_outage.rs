//! The planner lists exactly the segments an outage left out.

mod common;
use common::*;
use std::collections::BTreeSet;

#[test]
fn plan_lists_exactly_the_segments_an_outage_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let t0 = base_time();
    let (from, to) = (rfc3339(t0), rfc3339(t0 + 3600));
    let outage = format!("{}..{}", rfc3339(t0 + 900), rfc3339(t0 + 2700));
    let common = [
        "--cameras",
        "100",
        "--bitrate",
        "2kbit",
        "--segment",
        "60s",
        "--from",
        &from,
        "--to",
        &to,
        "--seed",
        "42",
    ];
    run_ok(&[&["sim", "record", "--store", p(&a)][..], &common].concat());
    run_ok(
        &[
            &[
                "sim",
                "record",
                "--store",
                p(&b),
                "--outage",
                &outage,
                "--outage-cameras",
                "20",
            ][..],
            &common,
        ]
        .concat(),
    );

    let plan = json(&[
        "plan",
        "--store",
        p(&b),
        "--peer-store",
        &format!("rs01={}", p(&a)),
        "--json",
    ]);

    // Expected: cameras 1..=20, the 30 one-minute segments of the outage.
    let mut expected = BTreeSet::new();
    for cam in 1..=20 {
        for m in 15..45 {
            expected.insert((format!("cam-{cam:04}"), (t0 + m * 60) * 1_000_000));
        }
    }
    let mut planned = BTreeSet::new();
    let mut listed_bytes = 0u64;
    for gap in plan["gaps"].as_array().unwrap() {
        for s in gap["segments"].as_array().unwrap() {
            let cam = s["camera"].as_str().unwrap().to_string();
            let start = s["start_us"].as_i64().unwrap();
            assert!(
                planned.insert((cam.clone(), start)),
                "listed twice: {cam} {start}"
            );
            assert_eq!(s["peer"], "rs01");
            // Size and hash are those of the peer's file.
            let file = a.join("segments").join(&cam);
            let path = walk_find(&file, start);
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(s["bytes"].as_u64().unwrap(), bytes.len() as u64);
            assert_eq!(
                s["blake3"].as_str().unwrap(),
                blake3::hash(&bytes).to_hex().as_str()
            );
            listed_bytes += bytes.len() as u64;
        }
    }
    assert_eq!(planned, expected);
    assert_eq!(plan["segments"].as_u64().unwrap(), expected.len() as u64);
    assert_eq!(plan["bytes"].as_u64().unwrap(), listed_bytes);

    // The other direction: b holds nothing that a lacks.
    let back = json(&[
        "plan",
        "--store",
        p(&a),
        "--peer-store",
        &format!("rs02={}", p(&b)),
        "--json",
    ]);
    assert_eq!(back["segments"], 0);
    assert_eq!(back["bytes"], 0);
}

/// Finds the segment file starting at `start_us` under a camera directory.
fn walk_find(dir: &std::path::Path, start_us: i64) -> std::path::PathBuf {
    let secs = start_us / 1_000_000;
    let name = rfc3339(secs)
        .replace(['-', ':'], "")
        .replace('Z', ".000000Z.seg");
    for day in std::fs::read_dir(dir).unwrap() {
        for hour in std::fs::read_dir(day.unwrap().path()).unwrap() {
            let p = hour.unwrap().path().join(&name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("no file {name} under {}", dir.display());
}
