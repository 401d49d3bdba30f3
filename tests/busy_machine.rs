//! A backfill beside a CPU hog on every core: the receiver, under its
//! default `--cpu idle`, waits long for a core, and that wait must not be
//! taken for the peer's stall. No peer is cut off; the backfill completes.

mod common;
use common::cluster::{file_hashes, Cluster};
use common::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Spins one thread per core at normal priority until dropped.
struct Hog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Hog {
    fn every_core() -> Hog {
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n = std::hint::black_box(
                            n.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                    n
                })
            })
            .collect();
        Hog { stop, threads }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn a_backfill_starved_of_cpu_cuts_off_no_peer_and_completes() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    // 2 cameras x 1 Mbit/s in 10-second segments; rs02 lost 2 minutes:
    // 24 segments, 30 MB.
    sim_record(&a, 2, "1Mbit", "10s", t0, t0 + 600, 5);
    run_ok(&[
        "sim",
        "record",
        "--store",
        p(&b),
        "--cameras",
        "2",
        "--bitrate",
        "1Mbit",
        "--segment",
        "10s",
        "--from",
        &rfc3339(t0),
        "--to",
        &rfc3339(t0 + 600),
        "--seed",
        "5",
        "--outage",
        &format!("{}..{}", rfc3339(t0 + 200), rfc3339(t0 + 320)),
    ]);
    // The server runs normally (as a peer on another machine would); only
    // the receiver here is starved.
    c.serve("rs01");

    let hog = Hog::every_core();
    // A short stall timeout: a receiver that counted its own wait for a
    // core as the peer's silence cut the peer off within seconds.
    let child = hafill()
        .env("HAFILL_LOG", "info,hafill_engine::transfer::client=debug")
        .args([
            "backfill",
            "--config",
            p(&c.server("rs02").config()),
            "--stall-timeout",
            "5s",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Starved, the backfill takes tens of seconds; a hang fails here.
    let out = wait_or_kill(
        child,
        std::time::Duration::from_secs(900),
        "the starved backfill",
    );
    drop(hog);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Reported, not asserted (how starved it was depends on the machine).
    let restarts = stderr.lines().filter(|l| l.contains("starts over")).count();
    println!("stall timer restarted {restarts} times for a wait on a CPU");
    for line in stderr.lines().filter(|l| l.contains("floor")) {
        println!("backfill: {line}");
    }
    assert!(
        out.status.success(),
        "backfill failed ({}):\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("cut off") && !stderr.contains("stalled"),
        "a peer was blamed for our own wait:\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["segments"], 24, "{report}");
    assert_eq!(file_hashes(&a), file_hashes(&b));
}
