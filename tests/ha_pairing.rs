//! `hafill pair` on real inventory files, and a five-server site paired by
//! it: four servers whose critical cameras are also recorded on one shared
//! alternate; after outages on two of them, every server's timeline is
//! whole for its paired cameras, with the source's bytes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::cluster::Cluster;
use common::*;

/// `hafill pair` with `SERVER=FILE` inventories; (status, stdout, stderr).
fn pair(args: &[String]) -> (i32, String, String) {
    let mut a = vec!["pair".to_string()];
    a.extend(args.iter().cloned());
    let out = hafill().args(&a).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn inventory(dir: &Path, server: &str, file: &str, text: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    format!("{server}={}", path.display())
}

/// A config of `name` with rs01..rs03 as peers (unused addresses and IDs)
/// and `cameras` appended.
fn config_with(dir: &Path, name: &str, cameras: &str) -> std::path::PathBuf {
    let mut text = format!(
        "[server]\nname = \"{name}\"\nlisten = \"127.0.0.1:1\"\nstore = \"store\"\nkey = \"key.pem\"\ncert = \"cert.pem\"\nstatus = \"off\"\n\n"
    );
    for (k, p) in ["rs01", "rs02", "rs03"]
        .iter()
        .enumerate()
        .filter(|(_, p)| **p != name)
    {
        // Each peer its own (unused) ID: a config refuses one key twice.
        let id = k.to_string().repeat(64);
        text += &format!("[[peer]]\nname = \"{p}\"\naddr = \"127.0.0.1:2\"\nid = \"{id}\"\n\n");
    }
    text += cameras;
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn pair_matches_by_ip_reports_conflicts_and_writes_a_loadable_camera_section() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inv = [
        inventory(
            d,
            "rs01",
            "rs01.csv",
            "id,name,ip,ha\n\
             cam-lobby,Lobby,10.0.0.1,active-active\n\
             cam-dock,Dock,10.0.0.2,active-passive\n\
             cam-roof,Roof,10.0.0.3,\n\
             cam-gate,Gate \"north\",10.0.0.4,\n\
             cam-dup-a,,10.0.0.9,\n\
             cam-dup-b,,10.0.0.9,\n",
        ),
        inventory(
            d,
            "rs02",
            "rs02.json",
            r#"[{"id":"cam-lobby","ip":"10.0.0.1","ha":"active-active"},
                {"id":"cam-dock","ip":"10.0.0.2"},
                {"id":"cam-gate-2","ip":"10.0.0.4"}]"#,
        ),
        inventory(
            d,
            "rs03",
            "rs03.csv",
            "ip,id\n10.0.0.1,cam-lobby\n10.0.0.7,cam-yard\n",
        ),
    ];
    let out = d.join("cameras.toml");
    let mut args: Vec<String> = inv
        .iter()
        .flat_map(|i| ["--inventory".to_string(), i.clone()])
        .collect();
    args.extend(["--out".into(), out.display().to_string(), "--json".into()]);
    let (code, stdout, stderr) = pair(&args);
    // Findings: status 1, each named on standard error.
    assert_eq!(code, 1, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let kinds: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    // 10.0.0.4 is cam-gate on rs01 and cam-gate-2 on rs02: one camera,
    // named per server.
    assert!(kinds.contains(&"named-per-server"), "{kinds:?}");
    assert!(kinds.contains(&"duplicate-ip"), "{kinds:?}"); // 10.0.0.9 twice on rs01
    assert_eq!(
        kinds.iter().filter(|k| **k == "mismatch").count(),
        2,
        "{kinds:?}"
    ); // roof, yard
    assert!(
        stderr.contains("named per server: 10.0.0.4 is cam-gate on rs01, cam-gate-2 on rs02"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mismatch: cam-yard (10.0.0.7) is on rs03 only"),
        "{stderr}"
    );

    let by_id: BTreeMap<String, serde_json::Value> = report["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap().to_string(), c.clone()))
        .collect();
    assert_eq!(
        by_id.keys().collect::<Vec<_>>(),
        ["cam-dock", "cam-gate", "cam-lobby", "cam-roof", "cam-yard"]
    );
    assert_eq!(
        by_id["cam-gate"]["servers"],
        serde_json::json!(["rs01", "rs02"])
    );
    assert_eq!(
        by_id["cam-gate"]["names"],
        serde_json::json!({"rs02": "cam-gate-2"})
    );
    assert_eq!(
        by_id["cam-lobby"]["servers"],
        serde_json::json!(["rs01", "rs02", "rs03"])
    );
    assert_eq!(by_id["cam-lobby"]["ha"], "active-active");
    assert_eq!(by_id["cam-dock"]["ha"], "active-passive");
    assert_eq!(by_id["cam-roof"]["ha"], "none");

    // The written section loads as config: `hafill status` on a config
    // holding it gets past loading (it then fails on the missing certificate).
    let cameras = std::fs::read_to_string(&out).unwrap();
    assert!(
        cameras.contains("# - named per server: 10.0.0.4"),
        "{cameras}"
    );
    let cfg = config_with(d, "rs01", &cameras);
    run_ok(&["store", "init", "--config", p(&cfg)]);
    let r = run(&["status", "--config", p(&cfg)]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains(".pem: No such file"),
        "the config should load: {err}"
    );

    // A bad row names its file and line, and nothing is written.
    std::fs::remove_file(&out).unwrap();
    let bad = inventory(
        d,
        "rs01",
        "bad.csv",
        "id,ip\ncam-1,10.0.0.1\n../../etc,10.0.0.2\n",
    );
    let (code, _, stderr) = pair(&[
        "--inventory".into(),
        bad,
        "--out".into(),
        out.display().to_string(),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("bad.csv") && stderr.contains("line 3"),
        "{stderr}"
    );
    assert!(!out.exists());
}

const SEG: i64 = 60;

/// Five servers: rs01..rs04 each record two critical cameras of their own
/// (cam-0011/12, cam-0021/22, ...), and rs05 records all eight. Inventories
/// go through `hafill pair`; its section is every server's camera config.
#[test]
fn five_servers_with_a_shared_alternate_reach_equilibrium_after_two_outages() {
    let names = ["rs01", "rs02", "rs03", "rs04", "rs05"];
    let mut c = Cluster::new(&names);
    let d = c.root.path().to_path_buf();
    let mut alternate = String::from("id,ip,ha\n");
    let mut args = Vec::new();
    for k in 1..=4 {
        let mut own = String::from("id,ip,ha\n");
        for j in 1..=2 {
            let line = format!("cam-00{k}{j},10.0.{k}.{j},active-active\n");
            own += &line;
            alternate += &line;
        }
        args.push("--inventory".to_string());
        args.push(inventory(
            &d,
            &format!("rs0{k}"),
            &format!("rs0{k}.csv"),
            &own,
        ));
    }
    args.push("--inventory".into());
    args.push(inventory(&d, "rs05", "rs05.csv", &alternate));
    let section = d.join("cameras.toml");
    args.extend(["--out".into(), section.display().to_string()]);
    let (code, _, stderr) = pair(&args);
    assert_eq!(code, 0, "no findings expected: {stderr}");
    let cameras = std::fs::read_to_string(&section).unwrap();
    assert_eq!(cameras.matches("[[camera]]").count(), 8, "{cameras}");
    for s in &c.servers {
        c.write_config(s, &cameras);
    }

    // One hour; rs02 was down 10..25 min, rs05 30..45 min.
    let t0 = base_time();
    let (from, to) = (t0, t0 + 3600);
    let rs02_down = format!("{}..{}", rfc3339(t0 + 600), rfc3339(t0 + 1500));
    let rs05_down = format!("{}..{}", rfc3339(t0 + 1800), rfc3339(t0 + 2700));
    let record = |store: &Path, first: u32, outage: Option<&str>| {
        let mut a = vec![
            "sim".to_string(),
            "record".into(),
            "--store".into(),
            store.display().to_string(),
            "--cameras".into(),
            "2".into(),
            "--first-camera".into(),
            first.to_string(),
            "--bitrate".into(),
            "32kbit".into(),
            "--segment".into(),
            format!("{SEG}s"),
            "--from".into(),
            rfc3339(from),
            "--to".into(),
            rfc3339(to),
        ];
        if let Some(o) = outage {
            a.extend(["--outage".into(), o.to_string()]);
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        run_ok(&a);
    };
    for k in 1..=4u32 {
        let own = c.server(&format!("rs0{k}")).store();
        record(&own, k * 10 + 1, (k == 2).then_some(rs02_down.as_str()));
        record(
            &c.server("rs05").store(),
            k * 10 + 1,
            Some(rs05_down.as_str()),
        );
    }
    for n in names {
        c.serve(n);
    }
    // Every server backfills from all its peers at once.
    for n in names {
        let r = json(&["backfill", "--config", p(&c.server(n).config()), "--json"]);
        assert!(r["failed"].as_array().unwrap().is_empty(), "{n}: {r:#}");
        let expected = match n {
            "rs02" => 2 * 15,
            "rs05" => 8 * 15,
            _ => 0,
        };
        assert_eq!(r["segments"], expected, "{n}: {r:#}");
    }

    // Equilibrium: every server holds the whole hour of each paired camera,
    // complete, with the same BLAKE3 as every other server holding it.
    let listing = |n: &str| -> BTreeMap<(String, i64), (String, String)> {
        let v = json(&["store", "ls", "--store", p(&c.server(n).store()), "--json"]);
        let mut out = BTreeMap::new();
        for cam in v["cameras"].as_array().unwrap() {
            for s in cam["segments"].as_array().unwrap() {
                out.insert(
                    (
                        s["camera"].as_str().unwrap().to_string(),
                        s["start_us"].as_i64().unwrap(),
                    ),
                    (
                        s["state"].as_str().unwrap().to_string(),
                        s["blake3"].as_str().unwrap().to_string(),
                    ),
                );
            }
        }
        out
    };
    let alt = listing("rs05");
    assert_eq!(alt.len(), 8 * 60);
    for k in 1..=4 {
        let own = listing(&format!("rs0{k}"));
        assert_eq!(own.len(), 2 * 60, "rs0{k}");
        for (key, (state, hash)) in &own {
            assert_eq!(state, "complete", "rs0{k} {key:?}");
            assert_eq!(
                alt.get(key),
                Some(&("complete".to_string(), hash.clone())),
                "{key:?}"
            );
        }
    }
    for n in names {
        let v = json(&[
            "store",
            "verify",
            "--store",
            p(&c.server(n).store()),
            "--json",
        ]);
        assert!(
            v["problems"].as_array().is_none_or(|a| a.is_empty()),
            "{n}: {v:#}"
        );
    }
}
