//! `hafill sim live` records in real time into a real store: every closed
//! segment is durable, indexed complete and re-hashes to its record, and
//! the report counts what was written.

mod common;
use common::*;

#[test]
fn live_recording_is_durable_indexed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("live");
    let report = dir.path().join("report.json");
    run_ok(&[
        "sim",
        "live",
        "--store",
        p(&store),
        "--cameras",
        "3",
        "--bitrate",
        "2Mbit",
        "--segment",
        "1s",
        "--for",
        "3s",
        "--fps",
        "10",
        "--report",
        p(&report),
    ]);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    // 3 cameras x 3 s x 10 frames of 2 Mbit/s / 8 / 10 = 25,000 bytes.
    assert_eq!(r["frames"], 90);
    assert_eq!(r["bytes"], 90 * 25_000);
    assert_eq!(r["segments"], 9);
    for key in ["p50", "p99", "max"] {
        assert!(r["write_latency_ms"][key].as_f64().is_some(), "{r}");
        assert!(r["segment_durable_ms"][key].as_f64().is_some(), "{r}");
    }
    assert!(
        r["frame_deadline_misses"].as_u64().is_some()
            && r["segment_deadline_misses"].as_u64().is_some()
    );
    // Late frames while the hypervisor stole CPU time are a part of the
    // late frames, never more.
    let stolen = r["late_while_stolen"].as_u64().expect("late_while_stolen");
    assert!(
        stolen <= r["frame_deadline_misses"].as_u64().unwrap(),
        "{r}"
    );
    assert!(r["steal_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{r}");

    let ls = json(&["store", "ls", "--store", p(&store), "--json"]);
    assert_eq!(ls["segments"], 9);
    assert_eq!(ls["bytes"], 90 * 25_000);
    for c in ls["cameras"].as_array().unwrap() {
        for s in c["segments"].as_array().unwrap() {
            assert_eq!(s["state"], "complete");
            assert_eq!(s["duration_us"], 1_000_000);
        }
    }
    run_ok(&["store", "verify", "--store", p(&store)]);
}
