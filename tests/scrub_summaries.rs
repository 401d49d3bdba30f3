//! The daemon's scrub asks for segment lists only where something
//! changed: after its first (full) round, a round where nothing changed
//! asks for summaries alone, and a segment the peer gains in an old hour
//! is still found (its day's and hour's summaries change) and copied.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{file_hashes, Cluster};
use common::*;

/// The `scrub: asked` lines of a daemon's log, as (full, changed_days,
/// entries).
fn rounds(log: &str) -> Vec<(bool, u64, u64)> {
    let field = |line: &str, name: &str| -> Option<String> {
        let at = line.find(&format!(" {name}="))? + name.len() + 2;
        Some(
            line[at..]
                .split_whitespace()
                .next()?
                .trim_matches('"')
                .to_string(),
        )
    };
    log.lines()
        .filter(|l| l.contains("scrub: asked"))
        .filter_map(|l| {
            Some((
                field(l, "full")? == "true",
                field(l, "changed_days")?.parse().ok()?,
                field(l, "entries")?.parse().ok()?,
            ))
        })
        .collect()
}

/// Waits until `done` holds, failing with the daemon's log after `secs`.
fn wait_until(c: &Cluster, secs: u64, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: {}", c.serve_log("rs02"));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_quiet_round_asks_for_summaries_only_and_a_change_is_still_found() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    sim_record(&a, 2, "1Mbit", "60s", t0, t0 + 600, 5);
    sim_record(&b, 2, "1Mbit", "60s", t0, t0 + 240, 5);
    c.serve_with("rs01", &["--no-scrub"]);
    c.serve_logging("rs02", &["--scrub-every", "1s"], "info");

    // The first round asks for the whole window and fills the outage.
    wait_until(&c, 120, "the first round did not fill the outage", || {
        file_hashes(&a) == file_hashes(&b)
    });
    // Then rounds where nothing changed: summaries, no segment list.
    wait_until(&c, 120, "no quiet round", || {
        rounds(&c.serve_log("rs02"))
            .iter()
            .skip(1)
            .any(|&(full, days, entries)| !full && days == 0 && entries == 0)
    });
    let quiet = rounds(&c.serve_log("rs02")).len();

    // rs01 gains segments in an hour both had settled.
    sim_record(&a, 2, "1Mbit", "60s", t0 - 1800, t0 - 1500, 5);
    wait_until(&c, 120, "the new segments were not copied", || {
        file_hashes(&a) == file_hashes(&b)
    });
    let all = rounds(&c.serve_log("rs02"));
    assert!(all[0].0, "the first round is full: {all:?}");
    assert!(
        all[1..].iter().all(|r| !r.0),
        "one full round a day, not one per round: {all:?}"
    );
    // The two cameras' day logs may change in two rounds: add them up.
    let (days, entries) = all[quiet..]
        .iter()
        .fold((0, 0), |(d, e), r| (d + r.1, e + r.2));
    assert!(
        days >= 2 && entries >= 10,
        "the change was found from the summaries of its day (2 cameras, 5 segments each): {all:?}"
    );
    run_ok(&["store", "verify", "--store", p(&b)]);
}

/// A full round asks for a few cameras at a time (`--scrub-part`): with
/// parts of 10 segments, each of 4 cameras is a part of its own. Every
/// camera's missing segments are still found and copied, each list asked
/// once (the entries received are the peer's segments, no more).
#[test]
fn a_full_round_in_parts_finds_every_camera() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    sim_record(&a, 4, "512kbit", "60s", t0, t0 + 600, 7);
    sim_record(&b, 4, "512kbit", "60s", t0, t0 + 120, 7);
    c.serve_with("rs01", &["--no-scrub"]);
    c.serve_logging(
        "rs02",
        &["--scrub-every", "1s", "--scrub-part", "10"],
        "info",
    );
    wait_until(&c, 120, "the first round did not fill the outage", || {
        file_hashes(&a) == file_hashes(&b)
    });
    wait_until(&c, 60, "no round logged", || {
        !rounds(&c.serve_log("rs02")).is_empty()
    });
    let first = rounds(&c.serve_log("rs02"))[0];
    assert!(first.0, "the first round is full: {first:?}");
    assert_eq!(first.2, 40, "4 cameras x 10 segments, each once: {first:?}");
    run_ok(&["store", "verify", "--store", p(&b)]);
}
