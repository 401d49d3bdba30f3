//! Power cuts, not process kills: the store lives on an ext4 filesystem
//! whose disk keeps only what was flushed (`common/powerloss.rs`). Power
//! fails right after the Nth flush of a run, for N spread over the whole
//! run; the machine boots again on what the disk held; the next run must
//! find nothing wrong and end with every segment whole and identical to
//! the peer's. Covers recording (`sim record`), placing (the gate),
//! completing (the backfill's fill, verify and commit) and, for the
//! `segments` and `frigate` adapters, the install into the recorder's
//! folder (and Frigate's database).
//!
//! Needs root, FUSE and loop devices; skips with the reason otherwise.

mod common;
#[path = "common/frigate.rs"]
mod frigate;
#[path = "common/powerloss.rs"]
mod powerloss;

use std::path::Path;
use std::time::Duration;

use common::cluster::{differing_files, Cluster};
use common::media::{encode, Container};
use common::*;
use powerloss::PowerDisk;

/// Both servers record every camera.
const CAMERAS: &str = "[[camera]]\nid = \"cam-*\"\nservers = [\"rs01\", \"rs02\"]\n";

fn skip(test: &str) -> bool {
    match PowerDisk::why_not() {
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            true
        }
        None => false,
    }
}

/// N values spread over a run of `total` flushes: the first few, then
/// evenly up to the last. (Runs differ by a few flushes: parallel writes
/// share journal commits differently each time.)
fn cut_points(total: u64, n: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (1..=3.min(total)).collect();
    for k in 1..n {
        v.push(total * k / n);
    }
    v.push(total.saturating_sub(1).max(1));
    v.sort_unstable();
    v.dedup();
    v.retain(|&x| x >= 1);
    v
}

/// Runs hafill with `args` until it ends or the power is cut (then it is
/// killed: the machine is down).
fn run_until_cut(disk: &PowerDisk, args: &[&str]) {
    let mut child = hafill()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = std::time::Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if disk.is_cut() {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        if std::time::Instant::now() > guard {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hafill {args:?} hangs");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Makes everything on the disk durable (`sync -f`).
fn sync(path: &Path) {
    let ok = std::process::Command::new("sync")
        .arg("-f")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// `hafill store verify`: every complete segment's bytes match its record.
fn verify_store(store: &Path) {
    let out = run(&["store", "verify", "--store", p(store), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        out.status.success() && report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
}

/// Power cuts over rs02's `runs` (hafill argument lists, run in order)
/// with rs02's disk as it is now as the boot state: the runs once with
/// power (`whole` then records what a run without a cut leaves), then for
/// N spread over their flushes: boot from that state, rs01 afresh (the
/// connections of killed runs would count against its per-peer limit
/// until they time out), power fails right after the Nth flush, reboot,
/// `after_cut` checks what the cut left, the next backfill must exit 0,
/// and `after_next` checks what it made.
fn sweep<W>(
    disk: &mut PowerDisk,
    c: &mut Cluster,
    cfg: &Path,
    runs: &[&[&str]],
    whole: impl FnOnce() -> W,
    after_cut: impl Fn(u64, &W),
    after_next: impl Fn(u64, &W),
) {
    let base = c.root.path().join("base.img");
    sync(&disk.mnt);
    disk.reboot();
    disk.cut_and_unplug();
    disk.save_image(&base);
    disk.power_on();
    let booted = disk.flushes();
    for args in runs {
        run_ok(args);
    }
    let total = disk.flushes() - booted;
    assert!(total > 10, "{total} flushes");
    let w = whole();
    for n in cut_points(total * 3 / 4, 8) {
        disk.cut_and_unplug();
        disk.load_image(&base);
        c.kill_servers();
        c.serve("rs01");
        disk.power_on();
        disk.cut_after(n);
        for args in runs {
            if !disk.is_cut() {
                run_until_cut(disk, args);
            }
        }
        // Runs differ by a few flushes: one that ended first loses power
        // just after it.
        let ended_first = !disk.is_cut();
        assert!(
            n > 3 || !ended_first,
            "cut after flush {n}: the run ended first"
        );
        disk.reboot();
        after_cut(n, &w);
        let out = run(&["backfill", "--config", p(cfg)]);
        assert!(
            out.status.success(),
            "cut after flush {n} of {total}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        after_next(n, &w);
        eprintln!(
            "cut after flush {n} of {total}: whole{}",
            if ended_first {
                " (the run ended first)"
            } else {
                ""
            }
        );
    }
    disk.cut_and_unplug();
}

#[test]
fn a_power_cut_while_placing_or_filling_loses_nothing_and_the_next_run_completes() {
    if skip("a_power_cut_while_placing_or_filling") {
        return;
    }
    // rs01 recorded 2 cameras for 10 minutes; rs02, whose store is on the
    // disk that loses power, recorded the first 2 and has just booted.
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    sim_record(
        &c.server("rs01").store(),
        2,
        "200kbit",
        "60s",
        t0,
        t0 + 600,
        5,
    );
    let mut disk = PowerDisk::new(128);
    let store = disk.mnt.join("store");
    let rs02 = c.server("rs02").store();
    std::fs::remove_dir_all(&rs02).unwrap();
    std::os::unix::fs::symlink(&store, &rs02).unwrap();
    run_ok(&["store", "init", "--store", p(&store)]);
    sim_record(&store, 2, "200kbit", "60s", t0, t0 + 120, 5);
    c.serve("rs01");
    let cfg = c.server("rs02").config();
    // What the disk holds at boot: rs02's own recordings, all flushed.
    run_ok(&["store", "verify", "--store", p(&store)]);
    let rs01 = c.server("rs01").store();
    sweep(
        &mut disk,
        &mut c,
        &cfg,
        &[
            &["gate", "--config", p(&cfg), "--then-exit"],
            &["backfill", "--config", p(&cfg)],
        ],
        || assert!(differing_files(&rs01, &store).is_empty()),
        // Nothing complete is wrong after the cut ...
        |_, _| verify_store(&store),
        // ... and the next run finishes the work.
        |n, _| {
            let left = differing_files(&rs01, &store);
            assert!(left.is_empty(), "cut after flush {n}: {left:?}");
            assert!(
                segment_states(&store).iter().all(|s| s == "complete"),
                "cut after flush {n}"
            );
            verify_store(&store);
        },
    );
}

#[test]
fn a_power_cut_while_recording_leaves_no_wrong_complete_segment() {
    if skip("a_power_cut_while_recording") {
        return;
    }
    let mut disk = PowerDisk::new(128);
    let store = disk.mnt.join("store");
    run_ok(&["store", "init", "--store", p(&store)]);
    sync(&store);
    disk.reboot();
    let base = tempfile::tempdir().unwrap();
    let base = base.path().join("base.img");
    disk.cut_and_unplug();
    disk.save_image(&base);
    let t0 = base_time();
    let (from, to) = (rfc3339(t0), rfc3339(t0 + 300));
    let record = [
        "sim",
        "record",
        "--store",
        p(&store),
        "--cameras",
        "3",
        "--bitrate",
        "200kbit",
        "--segment",
        "10s",
        "--from",
        &from,
        "--to",
        &to,
        "--seed",
        "9",
    ];
    disk.power_on();
    let booted = disk.flushes();
    run_ok(&record);
    let total = disk.flushes() - booted;
    // Recording takes few flushes: every one of them.
    for n in 1..=total {
        disk.cut_and_unplug();
        disk.load_image(&base);
        disk.power_on();
        disk.cut_after(n);
        run_until_cut(&disk, &record);
        assert!(
            n > 3 || disk.is_cut(),
            "cut after flush {n}: the run ended first"
        );
        disk.reboot();
        verify_store(&store);
        // The index agrees with the files: a rebuild lists the same.
        let before = run_ok(&["store", "ls", "--store", p(&store), "--json"]);
        run_ok(&["store", "rebuild", "--store", p(&store)]);
        let after = run_ok(&["store", "ls", "--store", p(&store), "--json"]);
        assert_eq!(before, after, "cut after flush {n} of {total}");
        eprintln!("cut after flush {n} of {total}: consistent");
    }
    disk.cut_and_unplug();
}

/// `camera/YYYYmmdd-HHMMSS.ts` for a start in Unix seconds (UTC).
fn ts_name(camera: &str, secs: i64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y%m%d-%H%M%S"])
        .output()
        .unwrap();
    format!(
        "{camera}/{}.ts",
        String::from_utf8_lossy(&out.stdout).trim()
    )
}

/// Every file under `dir`: relative path to BLAKE3.
fn tree(dir: &Path) -> std::collections::BTreeMap<String, String> {
    files_ending(dir, "ts")
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(dir).unwrap().display().to_string();
            let h = blake3::hash(&std::fs::read(&f).unwrap())
                .to_hex()
                .to_string();
            (rel, h)
        })
        .collect()
}

#[test]
fn a_power_cut_while_installing_into_a_recorders_folder_loses_nothing() {
    if skip("a_power_cut_while_installing_into_a_recorders_folder") {
        return;
    }
    if std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED a_power_cut_while_installing: ffmpeg is not installed");
        return;
    }
    // rs01's recorder folder on an ordinary disk; rs02's folder and
    // hafill's state on the disk that loses power. rs02 lacks 8 of 12
    // segments of camera cam-a (cut 3 s off rs01's, other bytes).
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let mut disk = PowerDisk::new(128);
    let t0 = base_time();
    let enc = c.root.path().join("enc");
    let a = encode(&enc.join("a"), "testsrc", 12, Container::Ts);
    let b = encode(&enc.join("b"), "testsrc2", 13, Container::Ts);
    let rec1 = c.server("rs01").dir.join("rec");
    let rec2 = disk.mnt.join("rec");
    for (k, f) in a.iter().enumerate() {
        let to = rec1.join(ts_name("cam-a", t0 + 10 * k as i64));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(f, &to).unwrap();
    }
    for (k, f) in b.iter().enumerate().filter(|(k, _)| !(3..11).contains(k)) {
        let to = rec2.join(ts_name("cam-a", t0 - 3 + 10 * k as i64));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(f, &to).unwrap();
    }
    for (name, rec, state) in [
        ("rs01", rec1.clone(), c.server("rs01").dir.join("state")),
        ("rs02", rec2.clone(), disk.mnt.join("state")),
    ] {
        c.configure_recorder(
            name,
            p(&state),
            &format!(
                "[recorder]\nkind = \"segments\"\npath = \"{}\"\npattern = \"{{camera}}/%Y%m%d-%H%M%S.ts\"\nsettle = \"0s\"\n\n{CAMERAS}",
                rec.display()
            ),
        );
    }
    c.serve("rs01");
    let cfg = c.server("rs02").config();
    let own = tree(&rec2);
    let theirs = tree(&rec1);
    // Only rs02's own files and whole copies of rs01's (no torn or empty
    // file).
    let only_own_or_theirs = |n: u64| {
        for (rel, h) in tree(&rec2) {
            assert!(
                own.get(&rel) == Some(&h) || theirs.get(&rel) == Some(&h),
                "cut after flush {n}: {rel} is neither rs02's own nor rs01's"
            );
        }
    };
    sweep(
        &mut disk,
        &mut c,
        &cfg,
        &[&["backfill", "--config", p(&cfg)]],
        || {
            let whole = tree(&rec2);
            assert!(whole.len() > own.len(), "{whole:?}");
            only_own_or_theirs(0);
            whole
        },
        |n, _| only_own_or_theirs(n),
        |n, whole| assert_eq!(&tree(&rec2), whole, "cut after flush {n}"),
    );
}

#[test]
fn a_power_cut_while_installing_into_frigate_leaves_no_row_without_its_file() {
    if skip("a_power_cut_while_installing_into_frigate") {
        return;
    }
    if let Some(why) = frigate::no_ffmpeg() {
        eprintln!("SKIPPED a_power_cut_while_installing_into_frigate: {why}");
        return;
    }
    // rs01's Frigate on an ordinary disk; rs02's recordings, database and
    // hafill's state on the disk that loses power. rs02 lacks 8 of 12
    // segments (cut 3 s off rs01's, other bytes).
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let mut disk = PowerDisk::new(128);
    let t0 = base_time();
    let rs01 = frigate::Frigate::at(&c.server("rs01").dir);
    let rs02 = frigate::Frigate::at(&disk.mnt);
    let enc = c.root.path().join("enc");
    for (k, f) in frigate::encode(&enc.join("a"), "testsrc", 12)
        .iter()
        .enumerate()
    {
        rs01.record("cam-a", t0 + 10 * k as i64, f, k as i64);
    }
    for (k, f) in frigate::encode(&enc.join("b"), "testsrc2", 13)
        .iter()
        .enumerate()
    {
        if !(3..11).contains(&k) {
            rs02.record("cam-a", t0 - 3 + 10 * k as i64, f, 100 + k as i64);
        }
    }
    for (name, fr, state) in [
        ("rs01", &rs01, c.server("rs01").dir.join("state")),
        ("rs02", &rs02, disk.mnt.join("state")),
    ] {
        c.configure_recorder(
            name,
            p(&state),
            &format!(
                "[recorder]\nkind = \"frigate\"\npath = \"{}\"\ndb = \"{}\"\nretain_days = 30\nsettle = \"0s\"\n\n{CAMERAS}",
                fr.rec.display(),
                fr.db.display()
            ),
        );
    }
    c.serve("rs01");
    let cfg = c.server("rs02").config();
    let (own_rows, own_files) = (frigate::rows(&rs02.db), rs02.files());
    let theirs = rs01.files();
    sweep(
        &mut disk,
        &mut c,
        &cfg,
        &[&["backfill", "--config", p(&cfg)]],
        || {
            rs02.check_consistent(true);
            let whole = (frigate::rows(&rs02.db).len(), rs02.files());
            assert!(whole.0 > own_rows.len());
            whole
        },
        // After the cut: Frigate's own rows and files as they were; no row
        // without its file; every file its own or a whole copy of rs01's.
        |n, _| {
            rs02.check_consistent(false);
            let rows_now = frigate::rows(&rs02.db);
            for r in &own_rows {
                assert!(rows_now.contains(r), "cut after flush {n}: {r:?} changed");
            }
            for (rel, h) in rs02.files() {
                assert!(
                    own_files.get(&rel) == Some(&h) || theirs.get(&rel) == Some(&h),
                    "cut after flush {n}: {rel} is neither rs02's own nor rs01's"
                );
            }
        },
        |n, whole| {
            rs02.check_consistent(true);
            assert_eq!(rs02.files(), whole.1, "cut after flush {n}");
            assert_eq!(
                frigate::rows(&rs02.db).len(),
                whole.0,
                "cut after flush {n}"
            );
        },
    );
}
