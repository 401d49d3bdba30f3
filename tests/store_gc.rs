//! `hafill store gc`: a placeholder whose source is gone holds its space
//! until it is released. gc releases exactly those no peer holds any more
//! (and never while a peer cannot be asked), and the backfill then fills
//! the rest.

mod common;
use common::cluster::{differing_files, file_hashes, gated_outage};
use common::*;

fn placeholders(store: &std::path::Path) -> usize {
    segment_states(store)
        .iter()
        .filter(|s| *s != "complete")
        .count()
}

#[test]
fn gc_releases_the_placeholders_whose_source_is_gone_and_only_those() {
    let (mut c, cfg) = gated_outage("1Mbit");
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    assert_eq!(placeholders(&b), 16);

    // rs01 loses four of cam-0001's segments in the gap (its retention, a
    // disk): their placeholders on rs02 can never be filled.
    c.kill_servers();
    let lost: Vec<String> = differing_files(&a, &b)
        .into_iter()
        .filter(|name| name.contains("cam-0001"))
        .take(4)
        .collect();
    assert_eq!(lost.len(), 4);
    for name in &lost {
        std::fs::remove_file(a.join(name)).unwrap();
    }
    run_ok(&["store", "rebuild", "--store", p(&a)]);

    // With rs01 down, nothing can be known: nothing is released.
    let out = run(&["store", "gc", "--config", p(&cfg), "--timeout", "1s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("could not ask rs01"), "{err}");
    assert_eq!(placeholders(&b), 16);

    c.serve("rs01");
    let dry = json(&["store", "gc", "--config", p(&cfg), "--dry-run", "--json"]);
    assert_eq!(dry["released"].as_array().unwrap().len(), 4, "{dry:#}");
    assert_eq!(placeholders(&b), 16, "a dry run releases nothing");

    let report = json(&["store", "gc", "--config", p(&cfg), "--json"]);
    assert_eq!(report["outstanding"], 16, "{report:#}");
    assert_eq!(report["kept"], 12, "{report:#}");
    let released = report["released"].as_array().unwrap();
    assert_eq!(released.len(), 4, "{report:#}");
    assert!(
        released.iter().all(|r| r["camera"] == "cam-0001"),
        "{report:#}"
    );
    let bytes: u64 = released.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!(report["released_bytes"], bytes);
    assert_eq!(placeholders(&b), 12);
    for name in &lost {
        assert!(!b.join(name).exists(), "{name} still holds its space");
    }

    // The rest is filled; rs02 now holds exactly what rs01 holds.
    run_ok(&["backfill", "--config", p(&cfg)]);
    assert_eq!(placeholders(&b), 0);
    assert_eq!(file_hashes(&a), file_hashes(&b));
}
