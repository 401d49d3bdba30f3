//! The free-space reserve belongs to live recording: on a store too small
//! for every gap, placeholders never cross it, the newest gaps are filled,
//! and the rest are reported. Needs root (it mounts a small tmpfs); skips
//! with the reason otherwise.

mod common;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::cluster::Cluster;
use common::*;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_small_tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            p(dir),
        ])
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Mount(dir.to_path_buf()))
}

/// Points rs02's config at a new store on `small` (a mounted tmpfs) with
/// an 8 MiB reserve, and makes the store; returns the config.
fn store_on(c: &Cluster, small: &Path) -> std::path::PathBuf {
    let cfg = c.server("rs02").config();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "store = \"store\"",
            &format!("store = \"{}\"", p(&small.join("store"))),
        )
        .replace("reserve = \"64MiB\"", "reserve = \"8MiB\"");
    assert!(text.contains("reserve = \"8MiB\""), "{text}");
    std::fs::write(&cfg, text).unwrap();
    run_ok(&["store", "init", "--config", p(&cfg)]);
    cfg
}

fn available_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail", p(dir)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn starts(v: &serde_json::Value) -> BTreeSet<(String, i64)> {
    let mut out = BTreeSet::new();
    for c in v["cameras"].as_array().unwrap() {
        for s in c["segments"].as_array().unwrap() {
            out.insert((
                s["camera"].as_str().unwrap().to_string(),
                s["start_us"].as_i64().unwrap(),
            ));
        }
    }
    out
}

#[test]
fn placeholders_never_cross_the_reserve_and_the_newest_gaps_come_first() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let small = c.server("rs02").dir.join("small");
    let _mount = match mount_small_tmpfs(&small, "32m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!(
                "SKIPPED placeholders_never_cross_the_reserve: needs root to mount a tmpfs ({why})"
            );
            return;
        }
    };
    let reserve: u64 = 8 << 20;
    let cfg = store_on(&c, &small);

    // 4 cameras x 30 minutes of 2 MB segments: about 230 MB, where 24 MB
    // are free above the reserve.
    let t0 = base_time();
    let a = c.server("rs01").store();
    sim_record(&a, 4, "256kbit", "60s", t0, t0 + 1800, 2);
    c.serve("rs01");

    let out = hafill()
        .args(["backfill", "--config", p(&cfg), "--json"])
        .output()
        .unwrap();
    // Not everything was made whole: status 1, and the report says why.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");
    let left_out = report["no_room_segments"].as_u64().unwrap();
    assert!(
        left_out > 0 && report["segments"].as_u64().unwrap() > 0,
        "{report}"
    );

    assert!(
        available_bytes(&small) >= reserve,
        "the reserve was crossed: {} bytes free, {reserve} reserved",
        available_bytes(&small)
    );

    // What was filled is the newest: no filled segment starts before one
    // that was left out.
    let store = small.join("store");
    let filled = starts(&json(&["store", "ls", "--store", p(&store), "--json"]));
    let all = starts(&json(&["store", "ls", "--store", p(&a), "--json"]));
    let missing: Vec<_> = all.difference(&filled).collect();
    assert_eq!(missing.len() as u64, left_out);
    let oldest_filled = filled.iter().map(|(_, s)| *s).min().unwrap();
    let newest_missing = missing.iter().map(|(_, s)| *s).max().unwrap();
    assert!(
        oldest_filled >= newest_missing,
        "an older gap was filled before a newer one"
    );
    run_ok(&["store", "verify", "--store", p(&store)]);
}

/// Sparse placeholders hold no blocks, so free space does not go down when
/// they are made. The next plan over the whole retention (a backfill, the
/// daemon's scrub) used to budget the same free space again and reserve
/// older gaps on top: the room promised twice. Now what sparse
/// placeholders still lack is charged against the free space.
#[test]
fn sparse_placeholders_are_charged_so_the_next_plan_does_not_budget_their_space_again() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let small = c.server("rs02").dir.join("small");
    let _mount = match mount_small_tmpfs(&small, "32m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!(
                "SKIPPED sparse_placeholders_are_charged: needs root to mount a tmpfs ({why})"
            );
            return;
        }
    };
    let cfg = store_on(&c, &small);
    // About 230 MB of gaps; 24 MB free above the reserve.
    let t0 = base_time();
    sim_record(
        &c.server("rs01").store(),
        4,
        "256kbit",
        "60s",
        t0,
        t0 + 1800,
        2,
    );
    c.serve("rs01");
    let room = available_bytes(&small) - (8 << 20);

    let reserved = || -> u64 {
        let ls = json(&["store", "ls", "--store", p(&small.join("store")), "--json"]);
        ls["cameras"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["segments"].as_array().unwrap().iter())
            .map(|s| s["bytes"].as_u64().unwrap())
            .sum()
    };
    let out = hafill()
        .args(["gate", "--config", p(&cfg), "--sparse", "--then-exit"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = reserved();
    assert!(first > 0 && first <= room, "{first} reserved, {room} free");

    // A backfill over the retention plans the older gaps; it is stopped
    // once its placeholders are in (before it has fetched much).
    let mut bf = hafill()
        .env("HAFILL_LOG", "info")
        .args(["backfill", "--config", p(&cfg), "--max-rate", "8kbit"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(bf.stderr.take().unwrap()));
    let mut log = String::new();
    for line in lines {
        let line = line.unwrap();
        log += &line;
        log.push('\n');
        if line.contains("backfill planned") {
            break;
        }
    }
    let _ = bf.kill();
    let _ = bf.wait();
    assert!(log.contains("backfill planned"), "{log}");
    let second = reserved();
    assert!(
        second <= room,
        "{second} bytes reserved where {room} were free above the reserve:\n{log}"
    );
}
