//! Resume: either side killed with SIGKILL mid-transfer; the next run
//! fetches no durable block again, only what was in flight, and the result
//! is byte-identical.

mod common;
use common::cluster::{differing_files, file_hashes, gated_outage, Cluster};
use common::*;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const STREAMS: u64 = 2;
const WINDOW: u64 = 4 << 20;
const BLOCK: u64 = 1 << 20;
/// Per segment in flight: the window, the block that crossed it, and the
/// verification pipeline (8 blocks).
const BOUND: u64 = STREAMS * (WINDOW + 9 * BLOCK);

/// rs01 recorded 4 cameras x 10 minutes at 2 Mbit (600 MB); rs02 missed 8
/// of them: 480 MB to fetch, about 16 s at the 240 Mbit cap, time enough
/// for three kills. Two of these clusters run at once, so it stays small.
fn setup() -> (Cluster, String) {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    let (from, to) = (rfc3339(t0), rfc3339(t0 + 600));
    let outage = format!("{}..{}", rfc3339(t0 + 60), rfc3339(t0 + 540));
    let rec = [
        "--cameras",
        "4",
        "--bitrate",
        "2Mbit",
        "--segment",
        "60s",
        "--from",
        &from,
        "--to",
        &to,
        "--seed",
        "5",
    ];
    run_ok(
        &[
            &["sim", "record", "--store", p(&c.server("rs01").store())][..],
            &rec,
        ]
        .concat(),
    );
    run_ok(
        &[
            &[
                "sim",
                "record",
                "--store",
                p(&c.server("rs02").store()),
                "--outage",
                &outage,
            ][..],
            &rec,
        ]
        .concat(),
    );
    c.serve("rs01");
    let cfg = p(&c.server("rs02").config()).to_string();
    (c, cfg)
}

fn backfill_args(cfg: &str) -> Vec<String> {
    [
        "backfill",
        "--config",
        cfg,
        "--json",
        "--streams",
        "2",
        "--connections",
        "1",
        "--window",
        "4MiB",
        "--block-size",
        "1MiB",
        "--max-rate",
        "240Mbit",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Bytes that are durable (complete segments, durable blocks), and bytes
/// seen but not durable (what the next run fetches again).
fn progress_of(store: &Path) -> (u64, u64) {
    let mut durable = 0;
    let mut at_risk = 0;
    let mut stack = vec![store.join("segments")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if let Some(p) = xattr::get(&path, "user.hafill.progress").unwrap() {
                let bs = u32::from_le_bytes(p[0..4].try_into().unwrap()) as u64;
                let n = u32::from_le_bytes(p[4..8].try_into().unwrap()) as usize;
                let bytes = n.div_ceil(8);
                let (dur, seen) = (&p[8..8 + bytes], &p[8 + bytes..]);
                for i in 0..n {
                    let bit = |b: &[u8]| b[i / 8] & (1 << (i % 8)) != 0;
                    if bit(dur) {
                        durable += bs;
                    } else if bit(seen) {
                        at_risk += bs;
                    }
                }
            } else if let Some(r) = xattr::get(&path, "user.hafill").unwrap() {
                if r[58] == 1 {
                    durable += std::fs::metadata(&path).unwrap().len();
                }
            }
        }
    }
    (durable, at_risk)
}

#[test]
fn the_receiver_killed_three_times_resumes_and_ends_identical() {
    let (c, cfg) = setup();
    let b = c.server("rs02").store();
    let mut last_durable = progress_of(&b).0;
    for round in 0..3 {
        let mut child = hafill()
            .args(backfill_args(&cfg))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill once this run has made something durable.
        let mut waited = 0;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            waited += 1;
            assert!(
                child.try_wait().unwrap().is_none(),
                "round {round}: backfill finished before it could be killed"
            );
            assert!(waited < 600, "round {round}: no progress in 60 s");
            if progress_of(&b).0 > last_durable + 8 * BLOCK {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let (durable, at_risk) = progress_of(&b);
        assert!(
            durable > last_durable,
            "round {round}: nothing became durable"
        );
        assert!(
            at_risk <= BOUND,
            "round {round}: {at_risk} bytes would be fetched again, bound {BOUND}"
        );
        last_durable = durable;
    }
    let report: serde_json::Value =
        serde_json::from_slice(&hafill().args(backfill_args(&cfg)).output().unwrap().stdout)
            .unwrap();
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");
    let refetched = report["refetched_bytes"].as_u64().unwrap();
    assert!(refetched <= BOUND, "refetched {refetched} > {BOUND}");
    assert_eq!(file_hashes(&c.server("rs01").store()), file_hashes(&b));
    assert!(run(&["store", "verify", "--store", p(&b)]).status.success());
}

#[test]
fn the_source_killed_mid_transfer_loses_nothing_verified() {
    let (mut c, cfg) = setup();
    let b = c.server("rs02").store();
    let recorded = progress_of(&b).0;
    let child = hafill()
        .args(backfill_args(&cfg))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for i in 0..=600 {
        assert!(i < 600, "no progress in 60 s");
        if progress_of(&b).0 > recorded + 8 * BLOCK {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    c.kill_servers();
    let out = child.wait_with_output().unwrap();
    // The receiver reports what it could not make whole, and exits 1.
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!report["failed"].as_array().unwrap().is_empty());
    let (durable, at_risk) = progress_of(&b);
    assert!(durable > recorded && at_risk <= BOUND);
    // Nothing incomplete is marked complete.
    assert!(run(&["store", "verify", "--store", p(&b)]).status.success());

    c.serve("rs01");
    let report: serde_json::Value =
        serde_json::from_slice(&hafill().args(backfill_args(&cfg)).output().unwrap().stdout)
            .unwrap();
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");
    // (A machine short of disk space leaves the oldest gaps unplaced.)
    assert_eq!(report["no_room_segments"], 0, "{report}");
    assert!(report["refetched_bytes"].as_u64().unwrap() <= BOUND);
    assert_eq!(file_hashes(&c.server("rs01").store()), file_hashes(&b));
}

/// A progress record hafill never writes (block size 0, from a damaged
/// attribute or another tool) made a fetch worker panic on a division by
/// zero, and the run never ended. Now the segment starts over and the run
/// completes.
#[test]
fn a_damaged_progress_record_starts_its_segment_over() {
    let (c, cfg) = gated_outage("2Mbit");
    let cfg = p(&cfg).to_string();
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    let placeholder = b.join(&differing_files(&a, &b)[0]);
    // Block size 0, 8 blocks: the right length for 8 blocks.
    let mut record = vec![0u8; 10];
    record[4..8].copy_from_slice(&8u32.to_le_bytes());
    xattr::set(&placeholder, "user.hafill.progress", &record).unwrap();

    let child = hafill()
        .args(backfill_args(&cfg))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The backfill takes seconds; a hang fails here.
    let out = wait_or_kill(child, Duration::from_secs(300), "the backfill");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(file_hashes(&a), file_hashes(&b));
}

/// A crash after a segment's file was marked complete and before the index
/// append leaves the index saying placeholder. The next run reads the
/// file's own record first: the segment is indexed complete, not fetched
/// again (nor refused as "already complete" for ever).
#[test]
fn a_segment_complete_on_its_file_but_not_in_the_index_is_indexed() {
    let (c, cfg) = gated_outage("2Mbit");
    let cfg = p(&cfg).to_string();
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    let name = differing_files(&a, &b)[0].clone();
    // The install of `name` finished on the file (its bytes, its record
    // marked complete), and the process died before the index append.
    let (src, dst) = (a.join(&name), b.join(&name));
    std::fs::write(&dst, std::fs::read(&src).unwrap()).unwrap();
    let record = xattr::get(&src, "user.hafill").unwrap().unwrap();
    xattr::set(&dst, "user.hafill", &record).unwrap();
    let _ = xattr::remove(&dst, "user.hafill.progress");
    assert_eq!(
        segment_states(&b)
            .iter()
            .filter(|s| *s != "complete")
            .count(),
        16
    );

    let report = json(
        &backfill_args(&cfg)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(report["failed"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["segments"], 15, "{report:#}");
    let after = segment_states(&b);
    assert!(after.iter().all(|s| s == "complete"), "{after:?}");
    assert_eq!(file_hashes(&a), file_hashes(&b));
}

/// A placeholder file deleted by hand (or lost) while the index still
/// lists it: every run failed on it ("not a placeholder") and it was never
/// made again. Now the run drops it from the index as it reads what
/// earlier runs left, before it plans: it is placed again and filled in
/// the same run.
#[test]
fn a_deleted_placeholder_is_placed_again_and_filled() {
    let (c, cfg) = gated_outage("2Mbit");
    let cfg = p(&cfg).to_string();
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    std::fs::remove_file(b.join(&differing_files(&a, &b)[0])).unwrap();

    let args = backfill_args(&cfg);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = json(&args);
    assert_eq!(first["failed"], serde_json::json!([]), "{first:#}");
    assert_eq!(first["planned_segments"], 1, "{first:#}");
    assert_eq!(first["placeholders_created"], 1, "{first:#}");
    assert_eq!(first["segments"], 16, "{first:#}");
    assert_eq!(file_hashes(&a), file_hashes(&b));
    let second = json(&args);
    assert_eq!(second["segments"], 0, "{second:#}");
}
