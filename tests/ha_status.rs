//! `hafill status` and `hafill locate` against three real servers on
//! loopback: HA modes, mismatched, disconnected and overflowing cameras.

mod common;

use common::cluster::Cluster;
use common::{hafill, p, rfc3339, run, sim_record};
use serde_json::Value;

const CAMERAS: &str = r#"
[[camera]]
id = "cam-0001"
servers = ["rs01", "rs02", "rs03"]
ha = "active-active"

[[camera]]
id = "cam-0002"
servers = ["rs01", "rs02"]
ha = "none"

[[camera]]
id = "cam-0003"
servers = ["rs01", "rs02"]
ha = "active-passive"

[[camera]]
id = "cam-0004"
servers = ["rs01"]

[[camera]]
id = "cam-0005"
servers = ["rs01", "rs02"]
ha = "active-passive"
"#;

fn now_minute() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now / 60 * 60
}

fn alerts_of<'a>(s: &'a Value, camera: &str) -> Vec<&'a Value> {
    s["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["camera"] == camera)
        .collect()
}

fn on_server<'a>(s: &'a Value, camera: &str, server: &str) -> &'a Value {
    let c = s["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["camera"] == camera)
        .unwrap_or_else(|| panic!("{camera} not in the status"));
    c["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["server"] == server)
        .unwrap_or_else(|| panic!("{server} not listed for {camera}"))
}

/// Three servers. Every one recorded all five cameras from -60 to -30
/// minutes. Since then, rs01 records cam-0001..0004 and rs02
/// cam-0001..0002 (up to ten minutes ahead, so "now" is always inside);
/// rs03 stopped. "Now" is read once, before the setup: the bit rate is low
/// so that the setup takes seconds, never the ten minutes that would move
/// the real "now" past the recorded span on a slow machine.
fn site() -> (Cluster, i64) {
    let mut c = Cluster::new(&["rs01", "rs02", "rs03"]);
    for s in &c.servers {
        c.write_config(s, CAMERAS);
    }
    let now = now_minute();
    for (name, recording_now) in [("rs01", 4), ("rs02", 2), ("rs03", 0)] {
        let store = c.server(name).store();
        sim_record(&store, 5, "16kbit", "60s", now - 3600, now - 1800, 1);
        if recording_now > 0 {
            sim_record(
                &store,
                recording_now,
                "16kbit",
                "60s",
                now - 1800,
                now + 600,
                1,
            );
        }
    }
    c.serve("rs02");
    c.serve("rs03");
    (c, now)
}

#[test]
fn status_reports_each_ha_mode_mismatch_and_disconnection() {
    let (c, now) = site();
    let out = run(&[
        "status",
        "--config",
        p(&c.server("rs01").config()),
        "--json",
    ]);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    // A camera no server records is critical: status 1.
    assert_eq!(out.status.code(), Some(1), "{s:#}");
    assert!(
        s["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["connected"] == true),
        "{s:#}"
    );

    // cam-0004: on rs01 only.
    assert_eq!(
        s["overview"]["mismatched"],
        serde_json::json!(["cam-0004"]),
        "{s:#}"
    );
    // cam-0005: nobody records it.
    assert_eq!(
        s["overview"]["disconnected"],
        serde_json::json!(["cam-0005"]),
        "{s:#}"
    );
    let a5 = alerts_of(&s, "cam-0005");
    assert!(
        a5.iter()
            .any(|a| a["kind"] == "stream-not-recording" && a["severity"] == "critical"),
        "{a5:#?}"
    );

    // cam-0003, active-passive, recorded on its first server only: fine.
    assert!(alerts_of(&s, "cam-0003").is_empty(), "{s:#}");
    assert_eq!(on_server(&s, "cam-0003", "rs01")["recording"], true);
    assert_eq!(on_server(&s, "cam-0003", "rs02")["recording"], false);

    // cam-0001, active-active, not recorded on rs03: "stream not recording".
    let a1 = alerts_of(&s, "cam-0001");
    let not_rec: Vec<_> = a1
        .iter()
        .filter(|a| a["kind"] == "stream-not-recording")
        .collect();
    assert_eq!(not_rec.len(), 1, "{a1:#?}");
    assert_eq!(not_rec[0]["server"], "rs03");
    assert!(not_rec[0]["message"]
        .as_str()
        .unwrap()
        .contains("stream not recording"));
    // rs03 recorded it until half an hour ago: it dropped while others record.
    assert!(
        a1.iter()
            .any(|a| a["kind"] == "overflow" && a["server"] == "rs03"),
        "{a1:#?}"
    );
    assert_eq!(
        s["overview"]["overflow"],
        serde_json::json!(["cam-0001@rs03"])
    );
    // It misses the 40 minutes the others recorded since.
    let gaps = &on_server(&s, "cam-0001", "rs03")["gaps_pending"];
    assert_eq!(gaps["segments"], 40, "{gaps}");
    assert_eq!(gaps["oldest"], rfc3339(now - 1800));
    assert_eq!(
        on_server(&s, "cam-0001", "rs01")["gaps_pending"]["segments"],
        0
    );

    // cam-0002, HA none, recorded on two servers: a warning.
    let a2 = alerts_of(&s, "cam-0002");
    assert_eq!(a2.len(), 1, "{a2:#?}");
    assert_eq!(a2[0]["kind"], "extra-stream");
    assert_eq!(a2[0]["severity"], "warning");

    // The table says the same to a person.
    let table = run(&["status", "--config", p(&c.server("rs01").config())]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("disconnected: cam-0005"), "{text}");
    assert!(text.contains("stream not recording on rs03"), "{text}");
}

#[test]
fn locate_prefers_the_primary_and_falls_back_to_a_holder() {
    let (mut c, now) = site();
    c.serve("rs01");
    let cfg = c.server("rs01").config();
    // cam-0003 now: rs01 (primary) holds it.
    let l: Value = serde_json::from_slice(
        &run(&[
            "locate",
            "cam-0003",
            "--at",
            "now",
            "--config",
            p(&cfg),
            "--json",
        ])
        .stdout,
    )
    .unwrap();
    assert_eq!(l["server"], "rs01");
    assert_eq!(l["primary"], true);
    // cam-0001 now, asked from rs03 whose own recording stopped: rs01.
    let out = run(&[
        "locate",
        "cam-0001",
        "--at",
        "-5m",
        "--config",
        p(&c.server("rs03").config()),
        "--json",
    ]);
    let l: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(l["server"], "rs01", "{l:#}");
    assert_eq!(l["holders"], serde_json::json!(["rs01", "rs02"]));
    // With every daemon down, rs02 still holds cam-0003 at -45m itself:
    // the alternative, with rs01 named as not asked.
    c.kill_servers();
    let out = run(&[
        "locate",
        "cam-0003",
        "--at",
        &rfc3339(now - 2700),
        "--config",
        p(&c.server("rs02").config()),
        "--json",
        "--timeout",
        "2s",
    ]);
    let l: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(l["server"], "rs02", "{l:#}");
    assert_eq!(l["primary"], false);
    assert_eq!(l["unreachable"], serde_json::json!(["rs01"]));
    // Before any recording: nobody holds it, status 1.
    let out = hafill()
        .args([
            "locate",
            "cam-0003",
            "--at",
            &rfc3339(now - 7200),
            "--config",
            p(&cfg),
            "--timeout",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no server holds cam-0003"));
    // A camera rs01 does not pair: a clear error.
    let out = run(&["locate", "cam-0009", "--at", "now", "--config", p(&cfg)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [[camera]] rule"));
}

/// With every peer down, nothing was compared against a peer: status 1,
/// and the peers that could not be asked are named.
#[test]
fn status_with_no_peer_reached_exits_1_and_names_them() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let cfg = c.server("rs02").config();
    let out = run(&["status", "--config", p(&cfg), "--timeout", "1s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no peer could be asked (rs01)"), "{err}");

    c.serve("rs01");
    let out = run(&["status", "--config", p(&cfg)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("no peer could be asked"), "{err}");
}
