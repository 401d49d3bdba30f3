//! `sim record` killed with SIGKILL at random moments: no complete segment
//! ever has wrong bytes, and the index always matches a rebuild.

mod common;
use common::*;
use rand::Rng;
use std::time::Duration;

fn coverage(store: &str) -> serde_json::Value {
    let ls = json(&["store", "ls", "--store", store, "--json"]);
    let runs: Vec<_> = ls["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["camera"].clone(), c["runs"].clone()))
        .collect();
    serde_json::json!(runs)
}

#[test]
fn sigkill_during_sim_record_never_leaves_a_wrong_complete_segment() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let store = p(&store).to_string();
    let t0 = base_time();
    let (from, to) = (rfc3339(t0 - 3 * 3600), rfc3339(t0));
    let mut rng = rand::thread_rng();
    let mut kills = 0;
    let mut rounds_with_data = 0;
    let mut last_segments = 0;
    for round in 0..20 {
        let mut child = hafill()
            .args([
                "sim",
                "record",
                "--store",
                &store,
                "--cameras",
                "4",
                "--bitrate",
                "400kbit",
                "--segment",
                "10s",
            ])
            .args(["--from", &from, "--to", &to, "--seed", "9"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if round == 0 {
            // The first round ends only once a batch has committed, so
            // the later, random kills always land on a store with data,
            // however slow this machine's disk is today.
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
                let has_data = std::path::Path::new(&store).join("HAFILL-STORE").exists()
                    && run(&["store", "ls", "--store", &store, "--json"])
                        .status
                        .success()
                    && json(&["store", "ls", "--store", &store, "--json"])["segments"]
                        .as_u64()
                        .unwrap_or(0)
                        > 0;
                if has_data {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            std::thread::sleep(Duration::from_millis(rng.gen_range(50..1500)));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        if !std::path::Path::new(&store).join("HAFILL-STORE").exists() {
            continue; // killed before the store existed
        }
        // Opening recovers the interrupted batch; then every complete
        // segment must hash to its index entry.
        let before = coverage(&store);
        let segments = json(&["store", "ls", "--store", &store, "--json"])["segments"]
            .as_u64()
            .unwrap();
        assert!(
            segments >= last_segments,
            "round {round}: segments went from {last_segments} to {segments}"
        );
        last_segments = segments;
        if segments > 0 {
            rounds_with_data += 1;
        }
        let v = run(&["store", "verify", "--store", &store, "--json"]);
        assert!(
            v.status.success(),
            "round {round}: verify found mismatches: {}",
            String::from_utf8_lossy(&v.stdout)
        );
        run_ok(&["store", "rebuild", "--store", &store]);
        assert_eq!(
            coverage(&store),
            before,
            "round {round}: rebuild differs from the index"
        );
    }
    assert!(kills > 0, "no run was killed mid-way");
    assert!(
        rounds_with_data >= 10,
        "only {rounds_with_data} rounds had committed data when killed"
    );
    // Finishing the recording afterwards gives the same bytes as one clean run.
    run_ok(&[
        "sim",
        "record",
        "--store",
        &store,
        "--cameras",
        "4",
        "--bitrate",
        "400kbit",
        "--segment",
        "10s",
        "--from",
        &from,
        "--to",
        &to,
        "--seed",
        "9",
    ]);
    let clean = dir.path().join("clean");
    run_ok(&[
        "sim",
        "record",
        "--store",
        p(&clean),
        "--cameras",
        "4",
        "--bitrate",
        "400kbit",
        "--segment",
        "10s",
        "--from",
        &from,
        "--to",
        &to,
        "--seed",
        "9",
    ]);
    let a = json(&["store", "ls", "--store", &store, "--json"]);
    let b = json(&["store", "ls", "--store", p(&clean), "--json"]);
    assert_eq!(a, b);
    let left: Vec<_> = walk(std::path::Path::new(&store))
        .into_iter()
        .filter(|p| p.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}
