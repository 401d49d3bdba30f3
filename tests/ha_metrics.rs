//! The daemon's HTTP side: `/metrics` scraped during a real backfill shows
//! the byte counter rising and the pending gaps falling; `/status` serves
//! the JSON of `hafill status`; SIGTERM stops the daemon without waiting
//! out its dials to a peer that is down.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{base_time, http_get, metric, segment_bytes, sim_record};

#[test]
fn metrics_show_bytes_rising_and_pending_gaps_falling_during_a_backfill() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    // rs02 takes at most 40 Mbit/s: the 2 x 60 segments (about 57 MB) take
    // at least ten seconds, however fast the machine.
    let cams = "[[camera]]\nid = \"cam-*\"\nservers = [\"rs01\", \"rs02\"]\n\n[throttle]\nmax_rate = \"40Mbit\"\n";
    for s in &c.servers {
        c.write_config(s, cams);
    }
    let t0 = base_time();
    sim_record(
        &c.server("rs01").store(),
        2,
        "64kbit",
        "60s",
        t0,
        t0 + 3600,
        7,
    );
    let total_bytes = segment_bytes(&c.server("rs01").store().join("segments"));
    c.serve("rs01");
    c.serve_with("rs02", &["--scrub-every", "1h", "--status-every", "1s"]);
    let port = c.server("rs02").status_port;

    let mut samples: Vec<(f64, f64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(
            Instant::now() < deadline,
            "backfill did not finish: {}",
            c.serve_log("rs02")
        );
        if let Some((200, m)) = http_get(port, "/metrics") {
            if let (Some(b), Some(p)) = (
                metric(&m, "hafill_backfilled_bytes_total"),
                metric(&m, "hafill_gaps_pending_segments"),
            ) {
                let rounds = metric(&m, "hafill_backfill_rounds_total").unwrap_or(0.0);
                if rounds >= 1.0 {
                    samples.push((b, p));
                    if p == 0.0 && b > 0.0 {
                        break;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (last_bytes, _) = *samples.last().unwrap();
    assert_eq!(last_bytes, total_bytes, "every byte counted once");
    for w in samples.windows(2) {
        assert!(w[1].0 >= w[0].0, "bytes went down: {samples:?}");
        assert!(w[1].1 <= w[0].1, "pending gaps went up: {samples:?}");
    }
    let midway: Vec<_> = samples
        .iter()
        .filter(|(b, p)| *b > 0.0 && *b < total_bytes && *p > 0.0 && *p < 120.0)
        .collect();
    let distinct: std::collections::BTreeSet<u64> = midway.iter().map(|(b, _)| *b as u64).collect();
    assert!(
        distinct.len() >= 3,
        "too few scrapes during the backfill: {samples:?}"
    );

    let m = http_get(port, "/metrics").unwrap().1;
    assert_eq!(
        metric(&m, "hafill_peer_up{peer=\"rs01\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "hafill_verify_failures_total"), Some(0.0), "{m}");
    assert!(
        m.contains("hafill_alerts{kind=\"stream-not-recording\",severity=\"critical\"}"),
        "{m}"
    );

    // /status: the JSON of `hafill status`, as the daemon last took it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match http_get(port, "/status") {
            Some((200, body)) => break body,
            Some((503, _)) | None if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            other => panic!("/status: {other:?}"),
        }
    };
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(s["server"], "rs02");
    assert_eq!(s["overview"]["cameras"], 2, "{s:#}");
    assert_eq!(http_get(port, "/nope").unwrap().0, 404);
}

#[test]
fn sigterm_stops_serve_without_waiting_out_its_dials_to_a_peer_that_is_down() {
    // rs02 is configured but never started: rs01's scrub and status loops
    // dial it and would wait the dial's full timeout for an answer.
    let mut c = Cluster::new(&["rs01", "rs02"]);
    c.serve_with("rs01", &["--scrub-every", "1h", "--status-every", "1h"]);
    // Both loops dial at start; give them a moment to be mid-dial.
    std::thread::sleep(Duration::from_millis(500));
    let statuses = c.terminate_servers();
    let log = c.serve_log("rs01");
    assert!(statuses[0].success(), "serve failed on SIGTERM: {log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        !log.contains("no answer within"),
        "the shutdown waited for a dial to time out:\n{log}"
    );
}
