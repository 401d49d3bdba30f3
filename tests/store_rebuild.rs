//! The index can be rebuilt from the segment files alone.

mod common;
use common::*;

#[test]
fn deleting_the_index_and_rebuilding_gives_the_same_listing() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("s");
    let t0 = base_time();
    run_ok(&[
        "sim",
        "record",
        "--store",
        p(&s),
        "--cameras",
        "5",
        "--bitrate",
        "16kbit",
        "--segment",
        "10s",
        "--from",
        &rfc3339(t0 - 7200),
        "--to",
        &rfc3339(t0),
        "--outage",
        &format!("{}..{}", rfc3339(t0 - 3000), rfc3339(t0 - 2000)),
        "--outage-cameras",
        "2",
    ]);
    let before = json(&["store", "ls", "--store", p(&s), "--json"]);
    assert_eq!(before["segments"], 5 * 720 - 2 * 100);
    std::fs::remove_dir_all(s.join("index")).unwrap();
    run_ok(&["store", "rebuild", "--store", p(&s)]);
    let after = json(&["store", "ls", "--store", p(&s), "--json"]);
    assert!(before == after, "rebuilt listing differs");

    // A lost index is never read as an empty store. While the recorder
    // holds the store, that is an error naming the fix...
    std::fs::remove_dir_all(s.join("index")).unwrap();
    let recorder = std::fs::File::open(s.join("lock")).unwrap();
    recorder.lock().unwrap();
    let lost = run(&["store", "ls", "--store", p(&s), "--json"]);
    assert_eq!(lost.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&lost.stderr).contains("hafill store rebuild"));
    // ...and once it is free, the index is rebuilt as the store is opened.
    drop(recorder);
    let healed = json(&["store", "ls", "--store", p(&s), "--json"]);
    assert!(before == healed, "healed listing differs");
    assert_eq!(after["cameras"][0]["segments"][0]["state"], "complete");
}

#[test]
fn verify_reports_a_damaged_segment_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("s");
    let t0 = base_time();
    run_ok(&[
        "sim",
        "record",
        "--store",
        p(&s),
        "--cameras",
        "2",
        "--bitrate",
        "16kbit",
        "--segment",
        "60s",
        "--from",
        &rfc3339(t0 - 600),
        "--to",
        &rfc3339(t0),
    ]);
    let ls = json(&["store", "ls", "--store", p(&s), "--json"]);
    let seg = &ls["cameras"][1]["segments"][3];
    let start = seg["start_us"].as_i64().unwrap() / 1_000_000;
    let name = rfc3339(start)
        .replace(['-', ':'], "")
        .replace('Z', ".000000Z.seg");
    let hour = &rfc3339(start)[11..13];
    let day = &rfc3339(start)[..10];
    let path = s.join("segments/cam-0002").join(day).join(hour).join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let out = run(&["store", "verify", "--store", p(&s), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0]["camera"], "cam-0002");
    assert_eq!(problems[0]["start"], seg["start"]);
    assert!(problems[0]["problem"].as_str().unwrap().contains("BLAKE3"));
}

/// `store rebuild` is the fix that a failed journal recovery names, so it
/// must run when that recovery fails: here the batch in the journal names
/// a segment whose day log is damaged.
#[test]
fn rebuild_runs_when_journal_recovery_fails() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("s");
    let t0 = base_time();
    sim_record(&s, 1, "16kbit", "10s", t0 - 3600, t0, 3);
    let before = json(&["store", "ls", "--store", p(&s), "--json"]);
    let seg = &before["cameras"][0]["segments"][100];
    let (camera, start_us) = (
        seg["camera"].as_str().unwrap(),
        seg["start_us"].as_i64().unwrap(),
    );

    // The journal of a batch a writer crashed in...
    let mut journal = (camera.len() as u32).to_le_bytes().to_vec();
    journal.extend_from_slice(camera.as_bytes());
    journal.extend_from_slice(&start_us.to_le_bytes());
    std::fs::write(s.join("journal"), journal).unwrap();
    // ...and that segment's day log damaged at its head.
    let day = seg["start"].as_str().unwrap()[..10].to_string();
    let log = s.join("index").join(camera).join(format!("{day}.log"));
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[..16].copy_from_slice(&[0xa5; 16]);
    std::fs::write(&log, bytes).unwrap();

    let damaged = run(&["store", "ls", "--store", p(&s)]);
    assert_eq!(damaged.status.code(), Some(1));
    let err = String::from_utf8_lossy(&damaged.stderr);
    assert!(err.contains("hafill store rebuild"), "{err}");

    run_ok(&["store", "rebuild", "--store", p(&s)]);
    assert_eq!(std::fs::metadata(s.join("journal")).unwrap().len(), 0);
    let after = json(&["store", "ls", "--store", p(&s), "--json"]);
    assert!(before == after, "rebuilt listing differs");
}
