//! hafill beside a real recorder: Debian's `ffmpeg` writes H.264 segments
//! (MPEG-TS) for two cameras into two servers' folders in the `segments`
//! layout. The second server lacks a minute of one camera, cuts its
//! segments at other moments than the first, and calls that camera by
//! another name. `hafill backfill` fills exactly the missing minute, and
//! `hafill gate` starts a live ffmpeg that records into the same folder
//! while the backfill runs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use common::cluster::Cluster;
use common::media::{encode, ffprobe_duration, no_ffmpeg, Container};
use common::*;

const PATTERN: &str = "{camera}/%Y%m%d-%H%M%S.ts";

/// The name `PATTERN` gives `camera`'s segment starting at `secs`.
fn name(camera: &str, secs: i64) -> String {
    let stamp = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y%m%d-%H%M%S"])
        .output()
        .unwrap();
    format!(
        "{camera}/{}.ts",
        String::from_utf8_lossy(&stamp.stdout).trim()
    )
}

/// Copies the encoded `files` into `folder` as `camera`'s segments, the
/// k-th starting at `first + 10 k`, leaving out those whose k is in `skip`.
fn lay_out(folder: &Path, camera: &str, files: &[PathBuf], first: i64, skip: &[usize]) {
    for (k, f) in files.iter().enumerate() {
        if skip.contains(&k) {
            continue;
        }
        let to = folder.join(name(camera, first + 10 * k as i64));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(f, &to).unwrap();
    }
}

/// Every file under `dir`: relative path to (BLAKE3, length, mtime).
fn snapshot(dir: &Path) -> BTreeMap<String, (String, u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
                continue;
            }
            let m = e.metadata().unwrap();
            let hash = blake3::hash(&std::fs::read(e.path()).unwrap())
                .to_hex()
                .to_string();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            out.insert(rel, (hash, m.len(), m.modified().unwrap()));
        }
    }
    out
}

/// The camera section both servers share, as `hafill pair` writes it from
/// their inventories: the camera at 10.0.0.1 is `c-lobby` on rs01 and
/// `lobby-2` on rs02.
fn cameras(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let inv = |server: &str, text: &str| {
        let f = dir.join(format!("{server}.csv"));
        std::fs::write(&f, text).unwrap();
        format!("{server}={}", f.display())
    };
    let (a, b) = (
        inv("rs01", "id,ip\nc-lobby,10.0.0.1\nc-dock,10.0.0.2\n"),
        inv("rs02", "id,ip\nlobby-2,10.0.0.1\nc-dock,10.0.0.2\n"),
    );
    let out = dir.join("cameras.toml");
    // Exit status 1: "named per server" is reported as a finding.
    run(&[
        "pair",
        "--inventory",
        &a,
        "--inventory",
        &b,
        "--out",
        p(&out),
    ]);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("lobby-2"), "{text}");
    text
}

/// Points each server's config at its recorder folder `rec/` (the
/// `segments` layout) with its state in `state/`, plus `extra` sections.
fn configure(c: &Cluster, server: &str, extra: &str) -> PathBuf {
    let cams = cameras(&c.root.path().join("pairing"));
    std::fs::create_dir_all(c.server(server).dir.join("rec")).unwrap();
    c.configure_recorder(
        server,
        "state",
        &format!(
            "[recorder]\nkind = \"segments\"\npath = \"rec\"\npattern = \"{PATTERN}\"\nsettle = \"0s\"\n\n{extra}{cams}"
        ),
    )
}

/// rs01 recorded both cameras for 180 s from t0, cut at t0 + 10 k. rs02
/// recorded them for 190 s from t0 - 7 (cut 7 s off rs01's cuts, other
/// bytes), but lacks lobby-2's segments `lacks` (k = 7..12 is
/// [t0 + 63, t0 + 123)).
struct Site {
    c: Cluster,
    t0: i64,
    rs01_lobby: Vec<PathBuf>,
}

fn site(extra_rs02: &str, lacks: &[usize]) -> Site {
    let c = Cluster::new(&["rs01", "rs02"]);
    configure(&c, "rs01", "");
    configure(&c, "rs02", extra_rs02);
    let t0 = base_time();
    let enc = c.root.path().join("encoded");
    let a = encode(&enc.join("a"), "testsrc", 18, Container::Ts);
    let b = encode(&enc.join("b"), "testsrc2", 19, Container::Ts);
    assert_eq!((a.len(), b.len()), (18, 19));
    let rec1 = c.server("rs01").dir.join("rec");
    let rec2 = c.server("rs02").dir.join("rec");
    lay_out(&rec1, "c-lobby", &a, t0, &[]);
    lay_out(&rec1, "c-dock", &a, t0, &[]);
    lay_out(&rec2, "lobby-2", &b, t0 - 7, lacks);
    lay_out(&rec2, "c-dock", &b, t0 - 7, &[]);
    let rs01_lobby = (0..18)
        .map(|k| rec1.join(name("c-lobby", t0 + 10 * k)))
        .collect();
    Site { c, t0, rs01_lobby }
}

#[test]
fn backfill_fills_exactly_the_missing_minute_of_a_camera_named_per_server() {
    if let Some(why) = no_ffmpeg() {
        eprintln!("SKIPPED backfill_fills_exactly_the_missing_minute: {why}");
        return;
    }
    let Site {
        mut c,
        t0,
        rs01_lobby,
    } = site("", &[7, 8, 9, 10, 11, 12]);
    let rec2 = c.server("rs02").dir.join("rec");
    let before = snapshot(&rec2);
    c.serve("rs01");

    let out = hafill()
        .args([
            "backfill",
            "--config",
            p(&c.server("rs02").config()),
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "backfill failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");

    // The gap [t0 + 63, t0 + 123) is covered by rs01's segments starting
    // at t0 + 60 ... t0 + 120 (the first and last straddle its edges),
    // installed under rs02's name for the camera.
    let expected: BTreeMap<String, PathBuf> = (6..=12)
        .map(|k| (name("lobby-2", t0 + 10 * k), rs01_lobby[k as usize].clone()))
        .collect();
    assert_eq!(report["segments"], expected.len(), "{report}");
    let after = snapshot(&rec2);
    let new: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert_eq!(
        new,
        expected.keys().collect::<Vec<_>>(),
        "exactly the missing minute, nothing else"
    );
    for (rel, source) in &expected {
        let want = blake3::hash(&std::fs::read(source).unwrap())
            .to_hex()
            .to_string();
        assert_eq!(after[rel].0, want, "{rel} differs from rs01's file");
        let d = ffprobe_duration(&rec2.join(rel));
        assert!((d - 10.0).abs() < 0.5, "{rel}: ffprobe says {d} s");
    }
    // rs02's own recordings: not one byte, length or mtime changed.
    for (rel, v) in &before {
        assert_eq!(after.get(rel), Some(v), "{rel} was touched");
    }

    // Status speaks of the camera by its id and says what rs02 calls it.
    // (Exit status 1: the recordings are hours old, so nothing records now.)
    let status: serde_json::Value = serde_json::from_slice(
        &run(&[
            "status",
            "--config",
            p(&c.server("rs02").config()),
            "--json",
        ])
        .stdout,
    )
    .unwrap();
    let lobby = status["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["camera"] == "c-lobby")
        .unwrap_or_else(|| panic!("c-lobby not in {status}"));
    let on = |server: &str| {
        lobby["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["server"] == server)
            .unwrap()
            .clone()
    };
    assert_eq!(on("rs02")["name_there"], "lobby-2", "{lobby}");
    // Cut at other moments than rs01's, rs02 lacks nothing now.
    assert_eq!(on("rs02")["gaps_pending"]["segments"], 0, "{lobby}");
    assert!(on("rs01").get("name_there").is_none(), "{lobby}");

    // Nothing is missing any more: a second run fetches nothing.
    let again = json(&[
        "backfill",
        "--config",
        p(&c.server("rs02").config()),
        "--json",
    ]);
    assert_eq!(again["segments"], 0, "{again}");
    assert_eq!(snapshot(&rec2), after);
}

#[test]
fn the_gate_starts_a_live_ffmpeg_that_records_while_the_backfill_fills() {
    if let Some(why) = no_ffmpeg() {
        eprintln!("SKIPPED the_gate_starts_a_live_ffmpeg: {why}");
        return;
    }
    // rs02 went down at t0 + 63 (lobby-2 stops there; the gate plans from
    // where local recording stopped). The backfill is capped (about 1.9 MB
    // at 256 kbit/s: about a minute) so that it is still filling while
    // ffmpeg records its 15 s.
    let Site {
        mut c,
        t0,
        rs01_lobby,
    } = site(
        "[throttle]\nmax_rate = \"256kbit\"\n\n",
        &(7..19).collect::<Vec<_>>(),
    );
    let rec2 = c.server("rs02").dir.join("rec");
    let before = snapshot(&rec2);
    c.serve("rs01");

    let live = rec2.join("c-yard");
    std::fs::create_dir_all(&live).unwrap();
    let out = hafill()
        .env("HAFILL_LOG", "info")
        .args(["gate", "--config", p(&c.server("rs02").config()), "--"])
        .args(["ffmpeg", "-hide_banner", "-loglevel", "error", "-re"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=10",
            "-t",
            "15",
        ])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "10"])
        .args(["-pix_fmt", "yuv420p", "-f", "segment", "-segment_time", "2"])
        .args(["-reset_timestamps", "1", "-strftime", "1"])
        .arg(live.join("%Y%m%d-%H%M%S.ts"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The gate exits with the recorder's status: ffmpeg recorded all 15 s.
    assert!(out.status.success(), "gate or ffmpeg failed: {stderr}");
    let recorded: Vec<PathBuf> = std::fs::read_dir(&live)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        recorded.len() >= 7,
        "ffmpeg wrote {} segments",
        recorded.len()
    );
    let total: f64 = recorded.iter().map(|f| ffprobe_duration(f)).sum();
    assert!(total > 14.0, "ffmpeg's segments hold {total} s of 15");

    // What the gate did not finish (it stops with its recorder), the next
    // backfill does; then every backfilled file is whole and identical.
    let rest = hafill()
        .args([
            "backfill",
            "--config",
            p(&c.server("rs02").config()),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        rest.status.success(),
        "{}",
        String::from_utf8_lossy(&rest.stderr)
    );
    let after = snapshot(&rec2);
    for k in 6..18 {
        let rel = name("lobby-2", t0 + 10 * k);
        let want = blake3::hash(&std::fs::read(&rs01_lobby[k as usize]).unwrap())
            .to_hex()
            .to_string();
        assert_eq!(
            after.get(&rel).map(|v| &v.0),
            Some(&want),
            "{rel}: {stderr}"
        );
    }
    for (rel, v) in &before {
        assert_eq!(after.get(rel), Some(v), "{rel} was touched");
    }
    let during = stderr.matches("installed").count();
    eprintln!("segments installed while ffmpeg recorded: {during} of 12 (informative)");
}

#[test]
fn bad_recorder_settings_and_files_get_clear_errors_and_change_nothing() {
    let c = Cluster::new(&["rs01", "rs02"]);
    let cfg = configure(&c, "rs02", "");
    let rec = c.server("rs02").dir.join("rec");
    // A file the pattern names that is not a segment.
    let junk = rec.join(name("lobby-2", base_time()));
    std::fs::create_dir_all(junk.parent().unwrap()).unwrap();
    std::fs::write(&junk, b"these are not the frames you are looking for").unwrap();
    let before = snapshot(&rec);
    let good = std::fs::read_to_string(&cfg).unwrap();

    for (what, from, to, needles) in [
        (
            "a pattern without {camera}",
            PATTERN,
            "%Y%m%d-%H%M%S.ts",
            vec!["[recorder] pattern", "no {camera}"],
        ),
        (
            "a pattern without the start's fields",
            PATTERN,
            "{camera}/%Y%m%d.ts",
            vec!["[recorder] pattern", "%H, %M, %S"],
        ),
        (
            "a path that does not exist",
            "path = \"rec\"",
            "path = \"no-such-volume\"",
            vec!["no-such-volume", "[recorder] path", "mounted"],
        ),
    ] {
        std::fs::write(&cfg, good.replace(from, to)).unwrap();
        let out = run(&["backfill", "--config", p(&cfg)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: backfill succeeded");
        for n in needles {
            assert!(err.contains(n), "{what}: {n:?} not in: {err}");
        }
        assert!(
            err.contains("hafill.toml") || err.contains("no-such-volume"),
            "{what}: {err}"
        );
    }

    // The junk file is named, not offered and not touched.
    std::fs::write(&cfg, &good).unwrap();
    let out = run(&["status", "--config", p(&cfg), "--timeout", "1s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(junk.to_str().unwrap()) && err.contains("not offered, not touched"),
        "{err}"
    );
    assert_eq!(snapshot(&rec), before, "the recorder's folder changed");
}
