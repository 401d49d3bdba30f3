//! Mutual TLS with pinned IDs, and pairing: an unknown key is refused at
//! both ends; a camera not paired with the asker gets a typed error and no
//! bytes.

mod common;
use common::cluster::Cluster;
use common::*;
use hafill_engine::transfer::{
    client, client_endpoint, read_message, write_message, TransferError,
};
use hafill_protocol::{Compression, ErrorCode, Message};
use std::time::Duration;

fn record_small(store: &std::path::Path) -> i64 {
    let t0 = base_time();
    sim_record(store, 4, "64kbit", "60s", t0, t0 + 600, 3);
    t0
}

#[test]
fn a_peer_with_an_unknown_key_is_refused_with_clear_errors_at_both_ends() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    record_small(&c.server("rs01").store());
    c.serve("rs01");
    // rs02 gets a new key that rs01 does not know.
    let rs02 = c.server("rs02");
    std::fs::remove_file(rs02.dir.join("key.pem")).unwrap();
    std::fs::remove_file(rs02.dir.join("cert.pem")).unwrap();
    run_ok(&["keygen", "--out", p(&rs02.dir), "--name", "rs02"]);
    let out = run(&["backfill", "--config", p(&rs02.config()), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let peer = &report["peers"][0];
    assert_eq!(peer["connected"], false);
    // No peer could be asked: nothing was checked, and the exit status and
    // standard error say so.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no peer could be asked") && stderr.contains("rs01 ("),
        "{stderr}"
    );
    let err = peer["error"].as_str().unwrap();
    assert!(
        err.contains("rs01") && err.contains("TLS"),
        "client-side error: {err}\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["bytes"], 0);
    // The server says whom it refused and why.
    let log = c.serve_log("rs01");
    assert!(
        log.contains("is not a configured peer"),
        "server log: {log}"
    );
    assert!(json(&["store", "ls", "--store", p(&rs02.store()), "--json"])["segments"] == 0);
}

#[test]
fn a_server_whose_id_differs_from_the_pinned_one_is_refused_by_the_client() {
    let mut c = Cluster::new(&["rs01", "rs02", "rs03"]);
    record_small(&c.server("rs01").store());
    c.serve("rs01");
    // rs02's config pins another key's ID for rs01's address.
    let other = c.root.path().join("other");
    let other_id = run_ok(&["keygen", "--out", p(&other), "--name", "other"])
        .trim()
        .to_string();
    let cfg = c.server("rs02").config();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let wrong = text.replace(&c.server("rs01").id, &other_id);
    std::fs::write(&cfg, wrong).unwrap();
    let out = run(&["backfill", "--config", p(&cfg), "--json", "--from", "rs01"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = report["peers"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("presented ID") && err.contains("pins"),
        "{err}"
    );
    assert_eq!(report["bytes"], 0);
}

#[test]
fn a_camera_not_paired_with_the_asker_gets_not_paired_and_no_bytes() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    // rs01 pairs only cam-0001 with rs02; its other cameras are its own.
    let rs01 = c.server("rs01");
    c.write_config(rs01, "[[camera]]\nid = \"cam-0001\"\nservers = [\"rs01\", \"rs02\"]\n\n[[camera]]\nid = \"cam-*\"\nservers = [\"rs01\"]\n");
    let t0 = record_small(&rs01.store());
    c.serve("rs01");
    let (me, peer) = c.speaker("rs02", "rs01");
    let peer = &peer;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ep = client_endpoint(peer.addr).unwrap();
        let conn = client::connect(&ep, &me, "rs02", peer, Duration::from_secs(10))
            .await
            .unwrap();

        // Coverage of everything lists only the paired camera.
        let all = client::coverage(&conn, 0, i64::MAX, vec![], client::DEFAULT_STALL)
            .await
            .unwrap();
        assert!(!all.is_empty());
        assert!(all.iter().all(|e| e.camera == "cam-0001"));

        // Asking by name for an unpaired camera: a typed error.
        let err = client::coverage(
            &conn,
            0,
            i64::MAX,
            vec!["cam-0002".into()],
            client::DEFAULT_STALL,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                TransferError::Remote {
                    code: ErrorCode::NotPaired,
                    ..
                }
            ),
            "{err}"
        );

        // Fetching one of its segments: the error and nothing else.
        // A segment it holds (the same hour as recorded, whatever the
        // clock says now).
        let start = t0 * 1_000_000;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let req = Message::FetchRequest {
            camera: "cam-0002".into(),
            start_us: start,
            block_size: 1 << 20,
            compression: Compression::Off,
            ranges: vec![],
        };
        write_message(&mut send, &req).await.unwrap();
        send.finish().unwrap();
        let first = read_message(&mut recv, 1 << 20).await.unwrap();
        assert!(
            matches!(
                first,
                Some(Message::Error {
                    code: ErrorCode::NotPaired,
                    ..
                })
            ),
            "{first:?}"
        );
        assert_eq!(
            read_message(&mut recv, 1 << 20).await.unwrap(),
            None,
            "bytes after the error"
        );

        // A camera id that would leave the store is refused as a bad request.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let req = Message::FetchRequest {
            camera: "../../etc".into(),
            start_us: start,
            block_size: 1 << 20,
            compression: Compression::Off,
            ranges: vec![],
        };
        write_message(&mut send, &req).await.unwrap();
        send.finish().unwrap();
        let first = read_message(&mut recv, 1 << 20).await.unwrap();
        assert!(
            matches!(
                first,
                Some(Message::Error {
                    code: ErrorCode::BadRequest,
                    ..
                })
            ),
            "{first:?}"
        );
    });
}
