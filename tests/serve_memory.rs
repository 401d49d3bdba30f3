//! The serving side's memory is bounded whatever a peer asks for: a
//! backfill with the most connections and streams `hafill backfill`
//! allows, of segments that would take far more than the bound if each
//! were read whole, leaves `hafill serve` under 256 MiB at its peak.

mod common;
use common::cluster::{file_hashes, Cluster};
use common::*;

const BOUND: u64 = 256 << 20;

#[test]
fn a_peer_asking_all_it_may_leaves_the_server_under_256_mib() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    // 24 segments of 30 MB (720 MB); rs02 holds the first minute of each
    // camera, so 20 are fetched, all at once: read whole, they would hold
    // 600 MB.
    sim_record(&a, 4, "4Mbit", "60s", t0, t0 + 360, 5);
    sim_record(&b, 4, "4Mbit", "60s", t0, t0 + 60, 5);
    c.serve("rs01");
    let report = json(&[
        "backfill",
        "--config",
        p(&c.server("rs02").config()),
        "--json",
        "--connections",
        "16",
        "--streams",
        "256",
    ]);
    assert_eq!(report["failed"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["segments"], 20, "{report:#}");
    assert_eq!(file_hashes(&a), file_hashes(&b));
    let peak = c.peak_resident(0);
    println!("hafill serve: peak resident {} MiB", peak >> 20);
    assert!(
        peak < BOUND,
        "hafill serve peaked at {} MiB resident, bound {} MiB",
        peak >> 20,
        BOUND >> 20
    );
}
