//! The boot-time gate: placeholders are in before the recording service
//! starts, the bytes follow in the background; an unreachable peer never
//! blocks the service, and the daemon fills the gap once the peer answers.

mod common;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{file_hashes, Cluster};
use common::*;

/// (camera, start_us) of every segment in a `store ls --json` listing, with
/// its state and origin.
fn listing(v: &serde_json::Value) -> Vec<(String, i64, String, String)> {
    let mut out = Vec::new();
    for c in v["cameras"].as_array().unwrap() {
        for s in c["segments"].as_array().unwrap() {
            out.push((
                s["camera"].as_str().unwrap().to_string(),
                s["start_us"].as_i64().unwrap(),
                s["state"].as_str().unwrap().to_string(),
                s["origin"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

fn keys(v: &serde_json::Value) -> BTreeSet<(String, i64)> {
    listing(v).into_iter().map(|(c, s, _, _)| (c, s)).collect()
}

#[test]
fn the_service_starts_with_a_placeholder_for_every_missing_segment_then_they_fill() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    let rec = |store: &std::path::Path, to: i64| sim_record(store, 50, "4kbit", "300s", t0, to, 5);
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    // rs01 recorded three hours; rs02 stopped after the first: a two-hour
    // outage on all 50 cameras, up to its boot.
    rec(&a, t0 + 3 * 3600);
    rec(&b, t0 + 3600);
    c.serve("rs01");

    let missing: BTreeSet<(String, i64)> =
        keys(&json(&["store", "ls", "--store", p(&a), "--json"]))
            .difference(&keys(&json(&["store", "ls", "--store", p(&b), "--json"])))
            .cloned()
            .collect();
    assert_eq!(
        missing.len(),
        50 * 24,
        "two hours of 5-minute segments on 50 cameras"
    );

    // The recording service: it lists the store the moment it starts, then
    // runs until the backfill has made every placeholder complete.
    let dir = c.server("rs02").dir.clone();
    let seen = dir.join("seen.json");
    let bin = env!("CARGO_BIN_EXE_hafill");
    let script = format!(
        "{bin} store ls --store {b} --json > {seen} || exit 9
         i=0
         while {bin} store ls --store {b} --json | grep -q -e '\"placeholder\"' -e '\"partial\"'; do
           i=$((i+1)); [ $i -gt 1200 ] && exit 8; sleep 0.25
         done
         exit 7",
        b = p(&b),
        seen = p(&seen)
    );
    let cfg = c.server("rs02").config();
    let out = hafill()
        .args([
            "gate",
            "--config",
            p(&cfg),
            "--deadline",
            "20s",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    // The gate exits with the service's status.
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let at_start = serde_json::from_str(&std::fs::read_to_string(&seen).unwrap()).unwrap();
    let by_key: std::collections::BTreeMap<(String, i64), (String, String)> = listing(&at_start)
        .into_iter()
        .map(|(c, s, st, o)| ((c, s), (st, o)))
        .collect();
    for k in &missing {
        let (state, origin) = by_key
            .get(k)
            .unwrap_or_else(|| panic!("no placeholder for {k:?} when the service started"));
        assert_ne!(state, "local", "{k:?}");
        assert_eq!(origin, "peer:rs01", "{k:?}");
    }

    // Afterwards: every placeholder complete, the bytes the source's.
    let after = json(&["store", "ls", "--store", p(&b), "--json"]);
    for (cam, start, state, origin) in listing(&after) {
        assert_eq!(state, "complete", "{cam} {start}");
        if missing.contains(&(cam.clone(), start)) {
            assert_eq!(origin, "peer:rs01");
        }
    }
    assert_eq!(file_hashes(&a), file_hashes(&b));
    run_ok(&["store", "verify", "--store", p(&b)]);
}

#[test]
fn an_unreachable_peer_never_holds_the_service_and_the_daemon_fills_the_gap_later() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    let rec = |store: &std::path::Path, to: i64| sim_record(store, 4, "64kbit", "60s", t0, to, 9);
    rec(&a, t0 + 3600);
    rec(&b, t0 + 1800);

    // rs01 is down: the gate plans without it and starts the service.
    let started = c.server("rs02").dir.join("started");
    let cfg = c.server("rs02").config();
    let out = hafill()
        .args([
            "gate",
            "--config",
            p(&cfg),
            "--deadline",
            "1s",
            "--",
            "touch",
            p(&started),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.exists(), "the service was not started");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("rs01"),
        "the unreachable peer is named in the log: {log}"
    );
    assert_ne!(file_hashes(&a), file_hashes(&b));

    // The daemon on rs02 scrubs every second; rs01 comes up later.
    c.serve_with("rs02", &["--scrub-every", "1s"]);
    c.serve("rs01");
    let deadline = Instant::now() + Duration::from_secs(180);
    while file_hashes(&a) != file_hashes(&b) {
        assert!(
            Instant::now() < deadline,
            "the daemon did not fill the gap: {}",
            c.serve_log("rs02")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Wait for the index to say complete too (files are complete first).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states: BTreeSet<String> = listing(&json(&["store", "ls", "--store", p(&b), "--json"]))
            .into_iter()
            .map(|(_, _, s, _)| s)
            .collect();
        if states.iter().all(|s| s == "complete") {
            break;
        }
        assert!(Instant::now() < deadline, "states {states:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    run_ok(&["store", "verify", "--store", p(&b)]);
}

/// Placeholders for a gap of `segments` 60-second segments, made by
/// `gate --then-exit` with `extra` flags; returns (apparent bytes, allocated
/// bytes) over the placeholder files.
fn placeholder_allocation(extra: &[&str]) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    let rec = |store: &std::path::Path, to: i64| sim_record(store, 2, "2Mbit", "60s", t0, to, 3);
    rec(&a, t0 + 1200);
    rec(&b, t0 + 600);
    c.serve("rs01");
    let before: BTreeSet<std::path::PathBuf> =
        segment_files(&b.join("segments")).into_iter().collect();
    let cfg = c.server("rs02").config();
    let mut args = vec!["gate", "--config", p(&cfg), "--then-exit"];
    args.extend_from_slice(extra);
    run_ok(&args);
    let placed: Vec<_> = segment_files(&b.join("segments"))
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert_eq!(placed.len(), 2 * 10, "ten minutes of two cameras placed");
    let states: BTreeSet<String> = listing(&json(&["store", "ls", "--store", p(&b), "--json"]))
        .into_iter()
        .map(|(_, _, s, _)| s)
        .collect();
    assert!(states.contains("placeholder"), "{states:?}");
    let (mut apparent, mut allocated) = (0, 0);
    for f in placed {
        let md = std::fs::metadata(&f).unwrap();
        apparent += md.len();
        allocated += md.blocks() * 512;
    }
    (apparent, allocated)
}

#[test]
fn default_placeholders_allocate_their_size_and_sparse_ones_almost_nothing() {
    let (apparent, allocated) = placeholder_allocation(&[]);
    assert!(apparent > 0);
    assert!(
        allocated >= apparent,
        "fallocated placeholders: {allocated} of {apparent} bytes allocated"
    );
    let (apparent, allocated) = placeholder_allocation(&["--sparse"]);
    assert!(apparent > 0);
    assert!(
        allocated * 100 < apparent,
        "sparse placeholders: {allocated} of {apparent} bytes allocated"
    );
}

#[test]
fn a_gate_that_cannot_plan_still_starts_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("broken.toml");
    std::fs::write(&cfg, "[server]\nname = \"rs02\"\nlisten = 7\n").unwrap();
    let started = dir.path().join("started");
    let out = hafill()
        .args([
            "gate",
            "--config",
            p(&cfg),
            "--",
            "sh",
            "-c",
            &format!("touch {}; exit 3", p(&started)),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "the gate exits with the service's status"
    );
    assert!(started.exists(), "the service was not started");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("broken.toml") && log.contains("line 3"),
        "the error names file and line: {log}"
    );
    // With --then-exit the failure is the gate's own status.
    let out = hafill()
        .args(["gate", "--config", p(&cfg), "--then-exit"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// The gate starts a recorder that writes into the same native store while
/// the gate's backfill fills it: the recorder is never locked out, and both
/// end whole.
#[test]
fn the_gate_starts_sim_live_which_records_into_the_store_while_the_backfill_fills_it() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    sim_record(&a, 2, "128kbit", "60s", t0, t0 + 1200, 4);
    sim_record(&b, 2, "128kbit", "60s", t0, t0 + 600, 4);
    // Capped (about 19 MB at 8 Mbit/s) so that it is still filling while
    // the recorder records its 6 s.
    let rs02 = c.server("rs02");
    c.write_config(
        rs02,
        "[throttle]\nmax_rate = \"8Mbit\"\n\n[[camera]]\nid = \"cam-*\"\nservers = [\"rs01\", \"rs02\"]\n",
    );
    c.serve("rs01");
    let cfg = c.server("rs02").config();
    let out = hafill()
        .args(["gate", "--config", p(&cfg), "--deadline", "10s", "--"])
        .arg(env!("CARGO_BIN_EXE_hafill"))
        .args(["sim", "live", "--store", p(&b), "--cameras", "2"])
        .args([
            "--bitrate",
            "1Mbit",
            "--segment",
            "2s",
            "--for",
            "6s",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The gate exits with the recorder's status: it recorded, not locked out.
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("locked"), "{stderr}");
    let live: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(live["segments"].as_u64().unwrap() >= 4, "{live}");

    // What the gate left, the next backfill fills; then the store holds
    // the recorder's segments and every gap, all whole.
    run_ok(&["backfill", "--config", p(&cfg), "--json"]);
    run_ok(&["store", "verify", "--store", p(&b)]);
    let held = listing(&json(&["store", "ls", "--store", p(&b), "--json"]));
    let complete = |cam: &str| {
        held.iter()
            .filter(|(c, _, s, _)| c == cam && s == "complete")
            .count()
    };
    assert_eq!(complete("cam-0001"), 20, "{held:?}");
    assert!(complete("live-0001") >= 2, "{held:?}");
}

/// One peer down and one up: the down peer uses up the connect deadline,
/// and the one that answered still gets its own time for its coverage, so
/// the gate places every gap it holds.
#[test]
fn a_peer_that_is_down_does_not_cost_the_others_their_coverage() {
    let mut c = Cluster::new(&["rs01", "rs02", "rs03"]);
    let t0 = base_time();
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    sim_record(&a, 2, "64kbit", "60s", t0, t0 + 600, 4);
    sim_record(&b, 2, "64kbit", "60s", t0, t0 + 120, 4);
    c.serve("rs01");
    // rs03 is configured but down.
    let out = hafill()
        .args([
            "gate",
            "--config",
            p(&c.server("rs02").config()),
            "--deadline",
            "2s",
            "--then-exit",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("rs03"), "the down peer is named: {log}");
    let placed = json(&["store", "ls", "--store", p(&b), "--json"]);
    assert_eq!(placed["segments"], 20, "rs01's 16 gaps placed: {placed:#}");
}
