//! Transport limits against a real server on loopback: each test fails if
//! its limit is removed or changed.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::*;
use futures::FutureExt;
use hafill_engine::config::Peer;
use hafill_engine::identity::Identity;
use hafill_engine::transfer::{client, client_config, client_endpoint};

/// rs01 serving 2 cameras x 15 segments; rs02's identity and its view of
/// rs01.
fn setup() -> (Cluster, Identity, Peer) {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    sim_record(
        &c.server("rs01").store(),
        2,
        "100kbit",
        "60s",
        t0,
        t0 + 900,
        1,
    );
    c.serve("rs01");
    let (me, peer) = c.speaker("rs02", "rs01");
    (c, me, peer)
}

#[test]
fn a_connection_may_open_256_streams_at_once_and_no_more() {
    let (_c, me, peer) = setup();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ep = client_endpoint(peer.addr).unwrap();
        let cc = client_config(&me, &peer.name, &peer.id).unwrap();
        let conn = ep
            .connect_with(cc, peer.addr, "hafill")
            .unwrap()
            .await
            .unwrap();
        // The server's stream credit is known from the handshake: opening
        // within it needs no round trip, past it waits for the peer.
        let mut streams = Vec::new();
        for i in 0..256 {
            let s = conn
                .open_bi()
                .now_or_never()
                .unwrap_or_else(|| panic!("stream {i} should open at once"))
                .unwrap();
            streams.push(s);
        }
        assert!(conn.open_bi().now_or_never().is_none(), "stream 257 opened");
    });
}

#[test]
fn a_peer_that_vanishes_mid_transfer_is_dropped_after_the_idle_timeout() {
    let (c, _, _) = setup();
    // A receiver killed with SIGKILL sends no goodbye: only the idle
    // timeout tells the server it is gone.
    let mut child = hafill()
        .args([
            "backfill",
            "--config",
            p(&c.server("rs02").config()),
            "--max-rate",
            "200kbit",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !c.serve_log("rs01").contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in {}",
                c.serve_log("rs01")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("peer connected");
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for("peer disconnected: timed out");
}

#[test]
fn a_coverage_response_past_the_entry_limit_is_refused() {
    let (_c, me, peer) = setup();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ep = client_endpoint(peer.addr).unwrap();
        let conn = client::connect(&ep, &me, "rs02", &peer, Duration::from_secs(10))
            .await
            .unwrap();
        let all = client::coverage_at_most(&conn, 0, i64::MAX, vec![], 30, client::DEFAULT_STALL)
            .await
            .unwrap();
        assert_eq!(all.len(), 30);
        let e = client::coverage_at_most(&conn, 0, i64::MAX, vec![], 29, client::DEFAULT_STALL)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("limit of 29 entries"), "{e}");
    });
}

#[test]
fn unread_fetches_hold_no_more_than_the_flow_control_windows() {
    use hafill_protocol::{Compression, Message};
    const MIB: u64 = 1 << 20;
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    // Five segments of about 30 MB each.
    sim_record(
        &c.server("rs01").store(),
        1,
        "4Mbit",
        "60s",
        t0,
        t0 + 300,
        1,
    );
    c.serve("rs01");
    let (me, peer) = c.speaker("rs02", "rs01");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ep = client_endpoint(peer.addr).unwrap();
        // Asks for `n` whole segments on a fresh connection, reads none of
        // it, and returns what arrived once the sender has stopped: at least
        // `floor` bytes in, then no more for two looks a second apart (a
        // slow or busy machine only makes it wait longer, never stop early).
        let held = |n: usize, floor: u64| {
            let (ep, me, peer) = (ep.clone(), &me, &peer);
            async move {
                let conn = client::connect(&ep, me, "rs02", peer, Duration::from_secs(10))
                    .await
                    .unwrap();
                let segs = client::coverage(&conn, 0, i64::MAX, vec![], client::DEFAULT_STALL)
                    .await
                    .unwrap();
                let base = conn.stats().udp_rx.bytes;
                let mut streams = Vec::new();
                for s in segs.iter().take(n) {
                    let (mut send, recv) = conn.open_bi().await.unwrap();
                    let req = Message::FetchRequest {
                        camera: s.camera.clone(),
                        start_us: s.start_us,
                        block_size: 1 << 20,
                        compression: Compression::Off,
                        ranges: vec![],
                    };
                    send.write_all(&req.to_frame()).await.unwrap();
                    send.finish().unwrap();
                    streams.push((send, recv));
                }
                let deadline = std::time::Instant::now() + Duration::from_secs(300);
                let (mut last, mut still) = (0, 0);
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let now = conn.stats().udp_rx.bytes - base;
                    still = if now == last { still + 1 } else { 0 };
                    if (now >= floor && still >= 2) || std::time::Instant::now() > deadline {
                        break now;
                    }
                    last = now;
                }
            }
        };
        // One stream: its own window, 16 MiB.
        let one = held(1, 16 * MIB).await;
        assert!(
            (16 * MIB..18 * MIB).contains(&one),
            "one stream held {one} bytes"
        );
        // Five streams of 30 MB: the connection's window, 64 MiB.
        let five = held(5, 64 * MIB).await;
        assert!(
            (64 * MIB..68 * MIB).contains(&five),
            "five streams held {five} bytes"
        );
    });
}

#[test]
fn a_peer_that_never_answers_the_handshake_is_given_up_at_the_connect_deadline() {
    let c = Cluster::new(&["rs01", "rs02"]);
    // rs01's address, held by a socket that swallows every packet.
    let (me, mut peer) = c.speaker("rs02", "rs01");
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.addr = hole.local_addr().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(async {
        let ep = client_endpoint(peer.addr).unwrap();
        client::connect(&ep, &me, "rs02", &peer, Duration::from_secs(1))
            .await
            .expect_err("nobody answered")
    });
    let text = e.to_string();
    assert!(text.contains("no answer within 1s"), "{text}");
    assert!(text.contains("rs01"), "the error names the peer: {text}");
    drop(hole);
}
