//! hafill never makes a store on its own: a missing store most often means
//! a recording volume that is not mounted, and filling the root filesystem
//! with placeholders in its place helps nobody. `hafill store init` makes
//! one, only where it is told to.

mod common;
use common::cluster::{file_hashes, Cluster};
use common::*;

#[test]
fn a_missing_store_is_refused_until_store_init_makes_it() {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = base_time();
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    sim_record(&a, 2, "64kbit", "60s", t0, t0 + 600, 3);
    c.serve("rs01");
    let cfg = c.server("rs02").config();

    // rs02's store does not exist (its volume, say, is not mounted).
    std::fs::remove_dir_all(&b).unwrap();
    let gate = run(&["gate", "--config", p(&cfg), "--then-exit"]);
    let backfill = run(&["backfill", "--config", p(&cfg)]);
    let status = run(&["status", "--config", p(&cfg)]);
    assert!(!b.exists(), "a store was made at {}", b.display());
    for (what, out) in [("gate", &gate), ("backfill", &backfill)] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("hafill store init"), "{what}: {err}");
    }
    assert_eq!(backfill.status.code(), Some(1));
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(
        !status.status.success() && err.contains("hafill store init"),
        "status: {err}"
    );

    // `store init` makes it (once), and then the backfill fills it.
    let made = run_ok(&["store", "init", "--config", p(&cfg)]);
    assert!(made.starts_with("made "), "{made}");
    let again = run_ok(&["store", "init", "--config", p(&cfg)]);
    assert!(again.contains("nothing changed"), "{again}");
    run_ok(&["backfill", "--config", p(&cfg)]);
    assert_eq!(file_hashes(&a), file_hashes(&b));
}

#[test]
fn store_init_makes_no_parents_and_takes_no_full_folder() {
    let dir = tempfile::tempdir().unwrap();
    let unmounted = dir.path().join("mnt/recordings/store");
    let out = run(&["store", "init", "--store", p(&unmounted)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("parent folder does not exist"), "{err}");
    assert!(!dir.path().join("mnt").exists());

    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("someone-else.txt"), "mine").unwrap();
    let out = run(&["store", "init", "--store", p(&full)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds someone-else.txt"), "{err}");
    assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1);

    // An init a crash cut short (its folders made, no marker yet) is
    // finished, not refused.
    let cut = dir.path().join("cut");
    std::fs::create_dir_all(cut.join("index")).unwrap();
    std::fs::create_dir_all(cut.join("segments")).unwrap();
    run_ok(&["store", "init", "--store", p(&cut)]);
    assert!(cut.join("HAFILL-STORE").is_file());

    // A store that lost its marker and its index/: init adopts it, and the
    // first open rebuilds the index from the files.
    let lost = dir.path().join("lost");
    let t0 = base_time();
    sim_record(&lost, 1, "16kbit", "60s", t0, t0 + 600, 1);
    std::fs::remove_file(lost.join("HAFILL-STORE")).unwrap();
    std::fs::remove_dir_all(lost.join("index")).unwrap();
    run_ok(&["store", "init", "--store", p(&lost)]);
    let ls = json(&["store", "ls", "--store", p(&lost), "--json"]);
    assert_eq!(ls["segments"], 10, "{ls:#}");

    let fresh = dir.path().join("fresh");
    run_ok(&["store", "init", "--store", p(&fresh)]);
    let ls = json(&["store", "ls", "--store", p(&fresh), "--json"]);
    assert_eq!(ls["segments"], 0);
}
