//! SIGHUP on a running daemon: a new `[throttle]` applies to the backfill
//! in flight without restarting it (nothing fetched twice, one round), and
//! a config that does not load is refused while the daemon goes on with
//! the old one.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{base_time, http_get, metric, segment_bytes, sim_record};
use rustix::process::Signal;

const CAMERAS: &str = "[[camera]]\nid = \"cam-*\"\nservers = [\"rs01\", \"rs02\"]\n";
/// 512 kbit/s: the source below takes minutes at this cap.
const SLOW: &str = "\n[throttle]\nmax_rate = \"512kbit\"\n";
const SLOW_BYTES_PER_SEC: f64 = 64_000.0;

/// rs02's `/metrics`, polled until `done` accepts it; fails after `limit`
/// with `what` and rs02's log.
fn wait_for(c: &Cluster, limit: Duration, what: &str, done: impl Fn(&str) -> bool) -> String {
    let port = c.server("rs02").status_port;
    let deadline = Instant::now() + limit;
    loop {
        if let Some((200, m)) = http_get(port, "/metrics") {
            if done(&m) {
                return m;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}\n{}",
            c.serve_log("rs02")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn value(m: &str, name: &str) -> f64 {
    metric(m, name).unwrap_or_else(|| panic!("{name} not in\n{m}"))
}

#[test]
fn sighup_lifts_the_cap_of_a_running_backfill_and_refuses_a_bad_config() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    c.write_config(c.server("rs01"), CAMERAS);
    c.write_config(c.server("rs02"), &format!("{CAMERAS}{SLOW}"));
    let t0 = base_time();
    sim_record(
        &c.server("rs01").store(),
        2,
        "64kbit",
        "10s",
        t0,
        t0 + 1200,
        3,
    );
    let total_bytes = segment_bytes(&c.server("rs01").store().join("segments"));
    // Under the old cap the whole copy would outlast every wait below.
    assert!(
        total_bytes / SLOW_BYTES_PER_SEC > 240.0,
        "source too small: {total_bytes} bytes"
    );
    c.serve("rs01");
    c.serve_with("rs02", &["--scrub-every", "1h", "--status-every", "1h"]);
    let rs02 = 1;

    // The cap is in force and the backfill has made durable progress.
    let m = wait_for(
        &c,
        Duration::from_secs(120),
        "first backfilled bytes",
        |m| metric(m, "hafill_backfilled_bytes_total").unwrap_or(0.0) > 0.0,
    );
    assert_eq!(
        value(&m, "hafill_throttle_net_cap_bytes_per_second"),
        SLOW_BYTES_PER_SEC
    );
    assert!(value(&m, "hafill_gaps_pending_segments") > 0.0, "{m}");

    // A config that does not load: refused, the old cap kept.
    let config = c.server("rs02").config();
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, good.replace("\"512kbit\"", "\"fast\"")).unwrap();
    c.signal(rs02, Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.serve_log("rs02").contains("keeping the running config") {
        assert!(Instant::now() < deadline, "{}", c.serve_log("rs02"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = c.serve_log("rs02");
    assert!(log.contains("max_rate"), "the error names the key: {log}");
    assert!(c.running(rs02), "a bad config on SIGHUP stopped the daemon");
    let m = wait_for(&c, Duration::from_secs(10), "metrics", |_| true);
    assert_eq!(
        value(&m, "hafill_throttle_net_cap_bytes_per_second"),
        SLOW_BYTES_PER_SEC
    );
    assert!(value(&m, "hafill_gaps_pending_segments") > 0.0, "{m}");

    // The cap removed: the same round runs on at full speed to the end.
    std::fs::write(&config, good.replace(SLOW, "\n")).unwrap();
    c.signal(rs02, Signal::HUP);
    wait_for(&c, Duration::from_secs(60), "the cap lifted", |m| {
        metric(m, "hafill_throttle_net_cap_bytes_per_second") == Some(0.0)
    });
    let m = wait_for(&c, Duration::from_secs(120), "the backfill finished", |m| {
        metric(m, "hafill_gaps_pending_segments") == Some(0.0)
            && metric(m, "hafill_backfilled_bytes_total").unwrap_or(0.0) > 0.0
    });
    assert!(c.running(rs02));
    assert!(
        c.serve_log("rs02").contains("SIGHUP: reloaded [throttle]"),
        "{}",
        c.serve_log("rs02")
    );
    // Progress kept: one round, every byte fetched once.
    assert_eq!(value(&m, "hafill_backfill_rounds_total"), 1.0, "{m}");
    assert_eq!(
        value(&m, "hafill_backfilled_bytes_total"),
        total_bytes,
        "{m}"
    );
    assert_eq!(value(&m, "hafill_failed_segments_total"), 0.0, "{m}");
    assert_eq!(
        common::cluster::file_hashes(&c.server("rs02").store()),
        common::cluster::file_hashes(&c.server("rs01").store()),
        "rs02's copy differs from rs01's"
    );
}
