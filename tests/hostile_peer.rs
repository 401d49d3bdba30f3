//! Hostile peers: a scripted peer that speaks the protocol and lies
//! (`hafill sim hostile`) beside an honest one. The receiver refuses every
//! lie, cuts the liar off, completes from the honest peer with the source's
//! bytes, and marks nothing complete that came from the liar. A peer that
//! floods connections is refused past the per-peer limit.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::cluster::{file_hashes, Cluster};
use common::*;

const LIES: [&str; 7] = [
    "wrong-hash",
    "wrong-size",
    "bad-block",
    "oversized",
    "extra",
    "stall",
    "drip",
];

struct Hostile(Child);

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_hostile(c: &Cluster, lie: &str) -> Hostile {
    let s = c.server("rs03");
    let log = s.dir.join(format!("hostile-{lie}.log"));
    let child = hafill()
        .env("HAFILL_LOG", "info")
        .args(["sim", "hostile", "--config", p(&s.config()), "--lie", lie])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let h = Hostile(child);
    for _ in 0..400 {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("HOSTILE")
        {
            return h;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "hostile peer did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Runs `hafill backfill` for rs02, killed (and the test failed) if it has
/// not finished in two minutes: a receiver that waits forever on a
/// stalling peer fails here.
fn backfill_rs02(c: &Cluster) -> serde_json::Value {
    backfill_rs02_with(c, "2s")
}

fn backfill_rs02_with(c: &Cluster, stall: &str) -> serde_json::Value {
    let child = hafill()
        .args([
            "backfill",
            "--config",
            p(&c.server("rs02").config()),
            "--json",
            "--block-size",
            "64KiB",
            "--stall-timeout",
            stall,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_or_kill(
        child,
        Duration::from_secs(120),
        "the backfill beside the hostile peer",
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    })
}

/// rs01 (serving) and rs03 hold the same recordings (same seed), 2 cameras
/// x 15 segments; rs02 holds none. Returns rs01's file hashes too.
fn liar_site() -> (Cluster, std::collections::BTreeMap<String, String>) {
    let mut c = Cluster::new(&["rs01", "rs02", "rs03"]);
    let t0 = base_time();
    for n in ["rs01", "rs03"] {
        sim_record(&c.server(n).store(), 2, "200kbit", "60s", t0, t0 + 900, 5);
    }
    let source = file_hashes(&c.server("rs01").store());
    c.serve("rs01");
    (c, source)
}

/// The report's entry for `peer`.
fn peer_entry<'a>(r: &'a serde_json::Value, peer: &str) -> &'a serde_json::Value {
    r["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == peer)
        .unwrap_or_else(|| panic!("{peer} not in {r:#}"))
}

#[test]
fn every_lie_is_refused_the_liar_cut_off_and_the_honest_peer_completes() {
    let (c, source) = liar_site();
    for lie in LIES {
        let _ = std::fs::remove_dir_all(c.server("rs02").store());
        run_ok(&["store", "init", "--store", p(&c.server("rs02").store())]);
        let hostile = start_hostile(&c, lie);
        let r = backfill_rs02(&c);
        drop(hostile);
        assert_eq!(r["failed"], serde_json::json!([]), "{lie}: {r:#}");
        assert_eq!(r["segments"], 30, "{lie}: {r:#}");
        let rs03 = peer_entry(&r, "rs03");
        assert!(
            rs03["error"].as_str().unwrap_or("").starts_with("cut off"),
            "{lie}: the liar should be cut off: {r:#}"
        );
        // Every segment complete, fetched from rs01, with rs01's bytes.
        let ls = json(&[
            "store",
            "ls",
            "--store",
            p(&c.server("rs02").store()),
            "--json",
        ]);
        let mut n = 0;
        for cam in ls["cameras"].as_array().unwrap() {
            for s in cam["segments"].as_array().unwrap() {
                n += 1;
                assert_eq!(s["state"], "complete", "{lie}: {s}");
                assert_eq!(s["origin"], "peer:rs01", "{lie}: {s}");
            }
        }
        assert_eq!(n, 30, "{lie}");
        assert_eq!(file_hashes(&c.server("rs02").store()), source, "{lie}");
    }
}

/// With a stall timeout far beyond the two-minute guard, only the end game
/// can finish this run: once nothing is queued, the segments held by the
/// stalling peer move to the idle honest one after a few seconds without a
/// frame. Slowness is not a proven lie: the peer is not cut off.
#[test]
fn a_stalling_peer_s_segments_move_to_an_idle_holder_at_the_end_of_the_run() {
    let (c, source) = liar_site();
    let hostile = start_hostile(&c, "stall");
    let r = backfill_rs02_with(&c, "10m");
    drop(hostile);
    assert_eq!(r["failed"], serde_json::json!([]), "{r:#}");
    assert_eq!(r["segments"], 30, "{r:#}");
    let rs03 = peer_entry(&r, "rs03");
    assert_eq!(rs03["error"], serde_json::Value::Null, "{r:#}");
    assert_eq!(file_hashes(&c.server("rs02").store()), source);
}

#[test]
fn a_peer_flooding_connections_is_refused_past_the_limit() {
    use hafill_engine::transfer::{client, client_endpoint};

    let mut c = Cluster::new(&["rs01", "rs02"]);
    c.serve("rs01");
    let (me, peer) = c.speaker("rs02", "rs01");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ep = client_endpoint(peer.addr).unwrap();
        let mut open = Vec::new();
        let limit = hafill_engine::transfer::server::MAX_CONNECTIONS_PER_PEER;
        for i in 0..limit {
            let conn = client::connect(&ep, &me, "rs02", &peer, Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("connection {i} of {limit}: {e}"));
            open.push(conn);
        }
        let refused = client::connect(&ep, &me, "rs02", &peer, Duration::from_secs(10)).await;
        let e = refused.expect_err("one connection past the limit must be refused");
        assert!(e.to_string().contains("too many connections"), "{e}");
        // Closing one makes room again.
        open.pop().unwrap().close(0u32.into(), b"bye");
        let mut again = None;
        for _ in 0..100 {
            match client::connect(&ep, &me, "rs02", &peer, Duration::from_secs(10)).await {
                Ok(c) => {
                    again = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert!(again.is_some(), "a freed slot is usable again");
    });
    assert!(c.serve_log("rs01").contains("connections already open"));
}

#[test]
fn a_stream_that_never_finishes_its_request_gets_a_bad_request_error() {
    use hafill_engine::transfer::{client, client_endpoint, read_message};
    use hafill_protocol::{ErrorCode, Message};

    let mut c = Cluster::new(&["rs01", "rs02"]);
    c.serve("rs01");
    let (me, peer) = c.speaker("rs02", "rs01");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ep = client_endpoint(peer.addr).unwrap();
        let conn = client::connect(&ep, &me, "rs02", &peer, Duration::from_secs(10))
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        // Half a length prefix, then silence.
        send.write_all(&[8, 0]).await.unwrap();
        let limit = hafill_engine::transfer::server::REQUEST_TIMEOUT * 3;
        let answer = tokio::time::timeout(limit, read_message(&mut recv, 1 << 16))
            .await
            .expect("the server must give up on a silent stream");
        match answer {
            Ok(Some(Message::Error { code, message })) => {
                assert_eq!(code, ErrorCode::BadRequest);
                assert!(message.contains("no request within"), "{message}");
            }
            other => panic!("expected a BadRequest error, got {other:?}"),
        }
    });
}

/// The gate's promise: every peer asked at once, and the whole of the
/// planning under `--deadline`. A peer whose coverage answer trickles (a
/// frame every 10 seconds, each in time) and never ends held the gate, and
/// the recording service, forever; now it is skipped at the deadline and
/// the honest peer's segments are placed.
#[test]
fn a_peer_whose_coverage_never_ends_is_skipped_at_the_gate_s_deadline() {
    let (c, _) = liar_site();
    let hostile = start_hostile(&c, "drip-coverage");
    let child = hafill()
        .env("HAFILL_LOG", "info")
        .args([
            "gate",
            "--config",
            p(&c.server("rs02").config()),
            "--deadline",
            "3s",
            "--then-exit",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A gate that waits on a coverage answer that never ends fails here.
    let out = wait_or_kill(child, Duration::from_secs(120), "the gate");
    drop(hostile);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("rs03") && l.contains("coverage failed")),
        "the skipped peer is named: {log}"
    );
    let ls = json(&[
        "store",
        "ls",
        "--store",
        p(&c.server("rs02").store()),
        "--json",
    ]);
    assert_eq!(ls["segments"], 30, "rs01's segments are placed: {ls:#}");
}

/// A receiver's report of a damaged block (`BlockDamaged`) is answered,
/// after the fetch's last block too: a block that still matches on the
/// server's disk with `Internal` (the receiver then knows the bad bytes
/// were not the disk's), a block the segment does not have with
/// `BadRequest`. A hostile receiver gets nothing else out of it.
#[test]
fn a_report_of_a_damaged_block_is_answered_after_the_last_block() {
    use hafill_engine::transfer::{client, client_endpoint, read_message};
    use hafill_protocol::{Compression, ErrorCode, Message, MAX_FRAME_LEN};

    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    sim_record(&c.server("rs01").store(), 1, "1Mbit", "60s", t0, t0 + 60, 5);
    c.serve("rs01");
    let (me, peer) = c.speaker("rs02", "rs01");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ep = client_endpoint(peer.addr).unwrap();
        let conn = client::connect(&ep, &me, "rs02", &peer, Duration::from_secs(10))
            .await
            .unwrap();
        for (index, expect, says) in [
            (0, ErrorCode::Internal, "matches its BLAKE3 here"),
            (999, ErrorCode::BadRequest, "has no block 999"),
        ] {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let request = Message::FetchRequest {
                camera: "cam-0001".into(),
                start_us: t0 * 1_000_000,
                block_size: 1 << 20,
                compression: Compression::Off,
                ranges: vec![],
            };
            send.write_all(&request.to_frame()).await.unwrap();
            let (mut blocks, mut expected) = (0, 0);
            loop {
                let m = read_message(&mut recv, MAX_FRAME_LEN).await.unwrap();
                match m {
                    Some(Message::FetchHeader { len, .. }) => expected = len.div_ceil(1 << 20),
                    Some(Message::Block { .. }) => blocks += 1,
                    Some(Message::FetchEnd) => break,
                    other => panic!("expected a fetch, got {other:?}"),
                }
            }
            // A minute at 1 Mbit/s is about 7 MB: 7 or 8 blocks.
            assert!(expected >= 2, "{expected} blocks");
            assert_eq!(blocks, expected, "every block, then FetchEnd");
            // Every block is in: the server still listens.
            let report = Message::BlockDamaged { index };
            send.write_all(&report.to_frame()).await.unwrap();
            send.finish().unwrap();
            let answer = tokio::time::timeout(
                Duration::from_secs(60),
                read_message(&mut recv, MAX_FRAME_LEN),
            )
            .await
            .expect("the server must answer the report");
            match answer {
                Ok(Some(Message::Error { code, message })) => {
                    assert_eq!(code, expect, "{message}");
                    assert!(message.contains(says), "{message}");
                }
                other => panic!("expected an Error, got {other:?}"),
            }
        }
    });
}
