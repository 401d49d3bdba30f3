//! Helpers shared by the integration tests: run the real `hafill` binary.
#![allow(dead_code)]

pub mod cluster;
pub mod media;

use std::path::Path;
use std::process::{Command, Output};

pub fn hafill() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hafill"));
    c.env("HAFILL_LOG", "warn");
    c
}

/// Runs hafill with `args`, asserts success, returns stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = hafill().args(args).output().expect("hafill runs");
    assert!(
        out.status.success(),
        "hafill {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn run(args: &[&str]) -> Output {
    hafill().args(args).output().expect("hafill runs")
}

pub fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&run_ok(args)).expect("valid JSON")
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Every segment file (`*.seg`) under `dir`, at any depth.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    files_ending(dir, "seg")
}

/// Every file named `*.<ext>` under `dir`, at any depth.
pub fn files_ending(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == ext) {
                out.push(e.path());
            }
        }
    }
    out
}

/// The bytes of every segment file under `dir`: what a backfill of that
/// store moves.
pub fn segment_bytes(dir: &Path) -> f64 {
    segment_files(dir)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len() as f64)
        .sum()
}

/// A fixed hour boundary a little in the past, so relative windows stay
/// inside the default retention and runs align.
pub fn base_time() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    (now / 3600 - 3) * 3600
}

pub fn rfc3339(secs: i64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date runs");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// `hafill sim record` of `cameras` at `bitrate` in `segment` pieces over
/// `[from, to)` (Unix seconds) with `seed`.
pub fn sim_record(
    store: &Path,
    cameras: u32,
    bitrate: &str,
    segment: &str,
    from: i64,
    to: i64,
    seed: u64,
) {
    run_ok(&[
        "sim",
        "record",
        "--store",
        p(store),
        "--cameras",
        &cameras.to_string(),
        "--bitrate",
        bitrate,
        "--segment",
        segment,
        "--from",
        &rfc3339(from),
        "--to",
        &rfc3339(to),
        "--seed",
        &seed.to_string(),
    ]);
}

/// GET `path` from 127.0.0.1:`port`: status code and body (None if the
/// daemon does not answer).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// The value of the sample `name` (with its labels, if any) in a
/// Prometheus text exposition.
pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits for `child`, killing it (and failing the test) if it has not
/// ended within `limit`: a hang guard, never a speed target. Returns its
/// output (stdout and stderr if they were piped).
pub fn wait_or_kill(
    mut child: std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> Output {
    // Piped output is read as it comes: a child whose pipe filled (64 KiB)
    // would block on its next log line and never end.
    fn drain(
        pipe: Option<impl std::io::Read + Send + 'static>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut b);
            }
            b
        })
    }
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let guard = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > guard {
            let _ = child.kill();
            let _ = child.wait();
            let err = err.join().unwrap_or_default();
            let tail = String::from_utf8_lossy(&err[err.len().saturating_sub(4000)..]).into_owned();
            panic!("{what} did not end within {limit:?}; the end of its stderr:\n{tail}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// The state of every segment of a store (`store ls --json`).
pub fn segment_states(store: &Path) -> Vec<String> {
    let ls = json(&["store", "ls", "--store", p(store), "--json"]);
    ls["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["segments"].as_array().unwrap().iter())
        .map(|s| s["state"].as_str().unwrap().to_string())
        .collect()
}
