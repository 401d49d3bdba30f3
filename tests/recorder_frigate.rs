//! hafill beside Frigate NVR. Frigate runs only in Docker, so each server
//! here is what Frigate leaves on disk: a database with Frigate's
//! `recordings` table (the DDL its migrations make, written out below) and
//! real MP4 segments that Debian's `ffmpeg` encodes and remuxes with
//! `+faststart`, in Frigate's layout `YYYY-MM-DD/HH/<camera>/MM.SS.mp4`
//! (UTC), the rows naming them as Frigate's container sees them
//! (`/media/frigate/recordings/...`). rs01 recorded 4 minutes; rs02 cut its
//! segments 3 s off rs01's, with other bytes, recorded 10 s longer, and was
//! down for 2 minutes.

mod common;
#[path = "common/frigate.rs"]
mod frigate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::cluster::Cluster;
use common::*;
use frigate::*;
use rusqlite::Connection;

const CAMERA: &str = "cam-door";
/// Segments rs01 recorded (10 s each).
const SEGMENTS: usize = 24;
/// The segments rs02 lacks: [t0 + 77, t0 + 197), two minutes.
const DOWN: std::ops::Range<usize> = 8..20;
/// rs01's segments that cover rs02's gap (the first and last straddle it).
const COVERING: std::ops::RangeInclusive<usize> = 7..=19;
struct Site {
    c: Cluster,
    t0: i64,
    rs01: Frigate,
    rs02: Frigate,
}

const CAMERAS: &str = "[[camera]]\nid = \"cam-*\"\nservers = [\"rs01\", \"rs02\"]\n";

/// Points a server at its Frigate with its state in `state/`.
fn configure(c: &Cluster, server: &str, extra_recorder: &str, extra: &str) -> PathBuf {
    let cameras = if extra.contains("[[camera]]") {
        ""
    } else {
        CAMERAS
    };
    c.configure_recorder(
        server,
        "state",
        &format!(
            "[recorder]\nkind = \"frigate\"\npath = \"media/recordings\"\ndb = \"config/frigate.db\"\nretain_days = 30\nsettle = \"0s\"\n{extra_recorder}\n{extra}{cameras}"
        ),
    )
}

fn site(rs02_recorder: &str, rs02_extra: &str) -> Site {
    site_lacking(DOWN, rs02_recorder, rs02_extra)
}

/// The site, with rs02 lacking its segments `lacks`.
fn site_lacking(lacks: std::ops::Range<usize>, rs02_recorder: &str, rs02_extra: &str) -> Site {
    let c = Cluster::new(&["rs01", "rs02"]);
    let rs01 = Frigate::at(&c.server("rs01").dir);
    let rs02 = Frigate::at(&c.server("rs02").dir);
    configure(&c, "rs01", "", "");
    configure(&c, "rs02", rs02_recorder, rs02_extra);
    let t0 = base_time();
    let enc = c.root.path().join("encoded");
    let a = encode(&enc.join("a"), "testsrc", SEGMENTS);
    // rs02 recorded a segment more: it holds all but the outage.
    let b = encode(&enc.join("b"), "testsrc2", SEGMENTS + 1);
    for (k, f) in a.iter().enumerate() {
        rs01.record(CAMERA, t0 + 10 * k as i64, f, k as i64);
    }
    for (k, f) in b.iter().enumerate() {
        if !lacks.contains(&k) {
            rs02.record(CAMERA, t0 - 3 + 10 * k as i64, f, 100 + k as i64);
        }
    }
    Site { c, t0, rs01, rs02 }
}

fn backfill(c: &Cluster) -> std::process::Output {
    hafill()
        .args([
            "backfill",
            "--config",
            p(&c.server("rs02").config()),
            "--json",
        ])
        .output()
        .unwrap()
}

/// What rs02 holds after a whole backfill: rs01's covering segments, each
/// with its row (camera, times, duration, size, the peer's notes) and its
/// file byte for byte; its own untouched; Frigate's timeline whole.
fn assert_filled(s: &Site, before_rows: &[Row], before_files: &BTreeMap<String, String>) {
    s.rs02.check_consistent(true);
    let rows02 = rows(&s.rs02.db);
    let rows01 = rows(&s.rs01.db);
    let files02 = s.rs02.files();
    for row in before_rows {
        assert!(rows02.contains(row), "rs02's own row changed: {row:?}");
    }
    for (rel, h) in before_files {
        assert_eq!(files02.get(rel), Some(h), "rs02's own {rel} changed");
    }
    let new: Vec<&Row> = rows02.iter().filter(|r| !before_rows.contains(r)).collect();
    assert_eq!(new.len(), COVERING.count(), "{new:#?}");
    for k in COVERING {
        let start = s.t0 + 10 * k as i64;
        let theirs = rows01.iter().find(|r| r.start == start as f64).unwrap();
        let ours = new
            .iter()
            .find(|r| r.start == start as f64)
            .unwrap_or_else(|| panic!("no row for rs01's segment {k}: {new:#?}"));
        let rel = layout(CAMERA, start);
        assert_eq!(ours.camera, CAMERA);
        assert_eq!(ours.path, format!("{IN_DB}/{rel}"));
        assert!((ours.duration - theirs.duration).abs() < 1e-6, "{ours:?}");
        assert!((ours.end - theirs.end).abs() < 1e-6, "{ours:?}");
        assert_eq!(ours.segment_size, theirs.segment_size, "{ours:?}");
        assert_eq!(
            (ours.motion, ours.objects, ours.dbfs, ours.regions),
            (theirs.motion, theirs.objects, theirs.dbfs, theirs.regions),
            "the peer's notes"
        );
        let (stamp, tail) = ours.id.rsplit_once('-').unwrap();
        assert_eq!(stamp, format!("{start}.0"), "{}", ours.id);
        assert!(
            tail.len() == 6
                && tail
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{}",
            ours.id
        );
        assert_ne!(ours.id, theirs.id, "a fresh id");
        let file = s.rs02.rec.join(&rel);
        assert_eq!(
            s.rs01.files()[&rel],
            files02[&rel],
            "{rel} differs from rs01's file"
        );
        let d = ffprobe_duration(&file);
        assert!((d - 10.0).abs() < 0.5, "{rel}: ffprobe says {d} s");
    }
    // The query of Frigate's timeline (`/api/<camera>/recordings`): the
    // whole span, no hole longer than one segment.
    let conn = Connection::open(&s.rs02.db).unwrap();
    let (after, before) = (s.t0 as f64, (s.t0 + 10 * SEGMENTS as i64) as f64);
    let mut st = conn
        .prepare("SELECT start_time, end_time FROM recordings WHERE camera = ?1 AND end_time >= ?2 AND start_time <= ?3 ORDER BY start_time")
        .unwrap();
    let spans: Vec<(f64, f64)> = st
        .query_map(rusqlite::params![CAMERA, after, before], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut reach = spans[0].1;
    for (a, b) in &spans[1..] {
        assert!(a - reach <= 10.0, "a hole from {reach} to {a}: {spans:?}");
        reach = reach.max(*b);
    }
    assert!(spans[0].0 <= after && reach >= before - 10.0, "{spans:?}");
}

#[test]
fn backfill_installs_each_missing_segment_with_its_row_as_frigate_would() {
    if let Some(why) = no_ffmpeg() {
        eprintln!("SKIPPED backfill_installs_each_missing_segment: {why}");
        return;
    }
    let mut s = site("", "");
    let (before_rows, before_files) = (rows(&s.rs02.db), s.rs02.files());
    assert_eq!(before_rows.len(), SEGMENTS + 1 - DOWN.len());
    s.c.serve("rs01");
    let out = backfill(&s.c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "backfill failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["segments"], COVERING.count(), "{report}");
    assert_filled(&s, &before_rows, &before_files);

    // Nothing is missing now: a second run fetches nothing, changes nothing.
    let rows_after = rows(&s.rs02.db);
    let again = json(&[
        "backfill",
        "--config",
        p(&s.c.server("rs02").config()),
        "--json",
    ]);
    assert_eq!(again["segments"], 0, "{again}");
    assert_eq!(rows(&s.rs02.db), rows_after);
    // rs01 lost nothing and gained nothing.
    assert_eq!(rows(&s.rs01.db).len(), SEGMENTS);
}

/// Holds Frigate's write lock (as a busy Frigate would) until dropped.
struct WriteLock(Connection);

impl WriteLock {
    fn take(db: &Path) -> WriteLock {
        let conn = Connection::open(db).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteLock(conn)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("COMMIT");
    }
}

/// Waits until an install is waiting for the lock: its intent is written
/// before the lock is asked for.
fn wait_for_an_install(state: &Path, child: &mut std::process::Child) {
    let guard = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let waiting = std::fs::read_dir(state.join("installing"))
            .map(|d| d.count() > 0)
            .unwrap_or(false);
        if waiting {
            return;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("backfill ended ({st}) before an install began");
        }
        assert!(std::time::Instant::now() < guard, "no install began");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_busy_database_is_waited_for_and_nothing_is_lost_or_doubled() {
    if let Some(why) = no_ffmpeg() {
        eprintln!("SKIPPED a_busy_database: {why}");
        return;
    }
    let mut s = site("", "");
    let (before_rows, before_files) = (rows(&s.rs02.db), s.rs02.files());
    s.c.serve("rs01");
    let lock = WriteLock::take(&s.rs02.db);
    let mut child = hafill()
        .args([
            "backfill",
            "--config",
            p(&s.c.server("rs02").config()),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_an_install(&s.c.server("rs02").dir.join("state"), &mut child);
    // The install waits: nothing of it is in Frigate's folder or table.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s.rs02.files(), before_files);
    drop(lock);
    let out = wait_or_kill(child, Duration::from_secs(300), "backfill");
    assert!(
        out.status.success(),
        "backfill failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_filled(&s, &before_rows, &before_files);
}

#[test]
fn a_database_that_stays_locked_is_named_and_the_reservations_wait() {
    if let Some(why) = no_ffmpeg() {
        eprintln!("SKIPPED a_database_that_stays_locked: {why}");
        return;
    }
    let mut s = site("busy_timeout = \"1s\"\n", "");
    let (before_rows, before_files) = (rows(&s.rs02.db), s.rs02.files());
    s.c.serve("rs01");
    let lock = WriteLock::take(&s.rs02.db);
    let out = backfill(&s.c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let db = s.rs02.db.display().to_string();
    assert!(
        stderr.contains(&db) && stderr.contains("stayed locked"),
        "the error names the database: {stderr}"
    );
    drop(lock);
    assert_eq!(s.rs02.files(), before_files, "nothing installed");
    assert_eq!(rows(&s.rs02.db), before_rows, "no row");
    // The verified copies wait in hafill's state; the next run installs
    // them without fetching a byte again.
    let out = backfill(&s.c);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["wire_bytes"], 0, "{report}");
    assert_filled(&s, &before_rows, &before_files);
}

#[test]
fn a_crash_at_each_step_of_an_install_is_finished_by_the_next_run() {
    if let Some(why) = no_ffmpeg() {
        eprintln!("SKIPPED a_crash_at_each_step_of_an_install: {why}");
        return;
    }
    // Killed at one exact step of the first install: after its intent is
    // durable; after the file is renamed into Frigate's folder, before its
    // row is committed; after the commit, before hafill's attributes and
    // its intent are removed.
    for step in ["frigate-intended", "frigate-renamed", "frigate-committed"] {
        let mut s = site("", "");
        let (before_rows, before_files) = (rows(&s.rs02.db), s.rs02.files());
        s.c.serve("rs01");
        let out = hafill()
            .env("HAFILL_FAILPOINT", step)
            .args(["backfill", "--config", p(&s.c.server("rs02").config())])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("failpoint {step}")),
            "{step}: {stderr}"
        );
        let files = s.rs02.files();
        let extra: Vec<&String> = files
            .keys()
            .filter(|k| !before_files.contains_key(*k))
            .collect();
        let rows_now = rows(&s.rs02.db);
        match step {
            "frigate-intended" => assert!(extra.is_empty(), "{step}: {extra:?}"),
            // A file without its row: what a crash there may leave. Installs
            // take Frigate's lock one at a time, so only the one.
            "frigate-renamed" => assert_eq!(extra.len(), 1, "{step}: {extra:?}"),
            // Another install may have committed before the process ended:
            // each file has its row.
            _ => assert!(!extra.is_empty(), "{step}"),
        }
        // Rows added: none before the commit; after it, the one committed
        // and any other install's that got in before the process ended (a
        // second file may be renamed in, its row not yet committed).
        let added = rows_now.len() - before_rows.len();
        if step == "frigate-committed" {
            assert!(
                added >= 1 && added <= extra.len(),
                "{step}: {added} rows, {extra:?}"
            );
        } else {
            assert_eq!(added, 0, "{step}");
        }
        s.rs02.check_consistent(step == "frigate-intended");

        let out = backfill(&s.c);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{step}: {stderr}");
        if step == "frigate-renamed" {
            let file = s.rs02.rec.join(extra[0]);
            assert!(
                stderr.contains(&format!(
                    "{}: a crash left it without its row",
                    file.display()
                )),
                "{stderr}"
            );
        }
        assert_filled(&s, &before_rows, &before_files);
        let intents = s.c.server("rs02").dir.join("state/installing");
        assert_eq!(std::fs::read_dir(&intents).unwrap().count(), 0, "{step}");
    }
}

#[test]
fn sigkill_at_random_moments_leaves_no_row_without_its_file_and_nothing_twice() {
    if let Some(why) = no_ffmpeg() {
        eprintln!("SKIPPED sigkill_at_random_moments: {why}");
        return;
    }
    use rand::Rng;
    // Slowed to about a segment a second so that kills land throughout.
    let mut s = site("", "[throttle]\nmax_rate = \"400kbit\"\n\n");
    let (before_rows, before_files) = (rows(&s.rs02.db), s.rs02.files());
    s.c.serve("rs01");
    let seed: u64 = rand::thread_rng().gen();
    eprintln!("seed {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for _ in 0..6 {
        let mut child = hafill()
            .args(["backfill", "--config", p(&s.c.server("rs02").config())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..3000)));
        let _ = child.kill();
        let _ = child.wait();
        s.rs02.check_consistent(false);
    }
    let out = backfill(&s.c);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_filled(&s, &before_rows, &before_files);
}

/// rs02's files and rows, to show that nothing changed.
fn unchanged(s: &Site, rows_before: &[Row], files_before: &BTreeMap<String, String>) {
    assert_eq!(&s.rs02.files(), files_before, "a file changed");
    assert_eq!(rows(&s.rs02.db), rows_before, "a row changed");
}

#[test]
fn bad_input_gets_an_error_naming_the_file_and_changes_nothing() {
    if let Some(why) = no_ffmpeg() {
        eprintln!("SKIPPED bad_input_gets_an_error: {why}");
        return;
    }
    // A row whose path lies outside the recordings folder, in the time rs02
    // lacks: named, not offered, not touched, and its time not filled over
    // (Frigate would hold two rows there); the rest is backfilled.
    let mut s = site("", "");
    s.c.serve("rs01");
    let db = s.rs02.db.display().to_string();
    let conn = Connection::open(&s.rs02.db).unwrap();
    let outside = format!("{IN_DB}/../../../etc/hostname");
    conn.execute(
        "INSERT INTO recordings (id, camera, path, start_time, end_time, duration, segment_size) VALUES ('1.0-aaaaaa', ?1, ?2, ?3, ?4, 10.0, 0)",
        rusqlite::params![CAMERA, outside, (s.t0 + 100) as f64, (s.t0 + 110) as f64],
    )
    .unwrap();
    drop(conn);
    let (rows_before, files_before) = (rows(&s.rs02.db), s.rs02.files());
    let out = backfill(&s.c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&db)
            && stderr.contains(&outside)
            && stderr.contains("outside the recordings folder")
            && stderr.contains("that is unusable"),
        "{stderr}"
    );
    let rows_after = rows(&s.rs02.db);
    assert!(
        rows_after.iter().any(|r| r.path == outside),
        "the row stays"
    );
    // rs01's segment 10 ([t0 + 100, t0 + 110)) is not installed over it.
    assert_eq!(rows_after.len(), rows_before.len() + COVERING.count() - 1);
    let t10 = (s.t0 + 100) as f64;
    assert!(!rows_after
        .iter()
        .any(|r| r.start == t10 && r.path != outside));
    for (rel, h) in &files_before {
        assert_eq!(s.rs02.files().get(rel), Some(h), "{rel} changed");
    }

    // A camera that Frigate's database does not know (a wrong name for
    // this server): refused, named, exit 1.
    let mut s = site(
        "",
        "[[camera]]\nid = \"cam-door\"\nservers = [\"rs01\", \"rs02\"]\nnames = { rs02 = \"cam-porch\" }\n\n",
    );
    s.c.serve("rs01");
    let db = s.rs02.db.display().to_string();
    let (rows_before, files_before) = (rows(&s.rs02.db), s.rs02.files());
    let out = backfill(&s.c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&db) && stderr.contains("knows no camera \"cam-porch\""),
        "{stderr}"
    );
    unchanged(&s, &rows_before, &files_before);

    // A database without the table.
    let conn = Connection::open(&s.rs02.db).unwrap();
    conn.execute_batch("DROP TABLE recordings").unwrap();
    drop(conn);
    let out = backfill(&s.c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&db) && stderr.contains("no `recordings` table"),
        "{stderr}"
    );
    assert_eq!(s.rs02.files(), files_before);

    // No database at all (its volume not mounted): none is made.
    std::fs::rename(&s.rs02.db, s.rs02.db.with_extension("moved")).unwrap();
    for ext in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(s.rs02.db.with_extension(ext));
    }
    let out = backfill(&s.c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&db) && stderr.contains("cannot open Frigate's database"),
        "{stderr}"
    );
    assert!(!s.rs02.db.exists(), "no database is made");
    assert_eq!(s.rs02.files(), files_before);
}

#[test]
fn the_gate_reserves_in_hafills_state_only_and_the_backfill_installs() {
    if let Some(why) = no_ffmpeg() {
        eprintln!("SKIPPED the_gate_reserves_in_hafills_state_only: {why}");
        return;
    }
    // rs02 went down at t0 + 77 and has booted: the gate plans from where
    // its recording stopped.
    let mut s = site_lacking(8..SEGMENTS + 1, "", "");
    let (before_rows, before_files) = (rows(&s.rs02.db), s.rs02.files());
    s.c.serve("rs01");
    let cfg = s.c.server("rs02").config();
    run_ok(&["gate", "--config", p(&cfg), "--then-exit"]);
    // rs01's segments that start after rs02 stopped (8 to 23) are
    // reserved in hafill's state: no file in Frigate's folder, no row.
    let staged = files_ending(&s.c.server("rs02").dir.join("state/staging"), "part");
    assert_eq!(staged.len(), SEGMENTS - 8, "{staged:?}");
    unchanged(&s, &before_rows, &before_files);

    let out = backfill(&s.c);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The backfill also takes segment 7, which straddles the stop.
    s.rs02.check_consistent(true);
    assert_eq!(rows(&s.rs02.db).len(), before_rows.len() + SEGMENTS - 7);
    let theirs = s.rs01.files();
    for k in 7..SEGMENTS {
        let rel = layout(CAMERA, s.t0 + 10 * k as i64);
        assert_eq!(s.rs02.files().get(&rel), theirs.get(&rel), "{rel}");
    }
    assert!(files_ending(&s.c.server("rs02").dir.join("state/staging"), "part").is_empty());
}
