//! The operator's page in a real browser (Debian's `chromium`, headless)
//! against a pair of running daemons while an outage is backfilled; and
//! `/locate`, which answers as `hafill locate` does.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{base_time, http_get, p, rfc3339, run, sim_record};

/// rs01 recorded the hour; rs02 was down for its first 50 minutes, then
/// recorded 15 minutes (5 past the hour that rs01 lacks). Both serve, rs02
/// with `rs02_args`; rs02 backfills at most 16 Mbit/s when it does.
fn outage(rs02_args: &[&str]) -> (Cluster, i64) {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let cams = "[[camera]]\nid = \"cam-*\"\nservers = [\"rs01\", \"rs02\"]\nha = \"active-active\"\n\n[throttle]\nmax_rate = \"16Mbit\"\n";
    for s in &c.servers {
        c.write_config(s, cams);
    }
    let t0 = base_time();
    sim_record(
        &c.server("rs01").store(),
        2,
        "64kbit",
        "60s",
        t0,
        t0 + 3600,
        7,
    );
    sim_record(
        &c.server("rs02").store(),
        2,
        "64kbit",
        "60s",
        t0 + 3000,
        t0 + 3900,
        8,
    );
    c.serve("rs01");
    c.serve_with("rs02", rs02_args);
    (c, t0)
}

/// Per camera, the gap (microseconds, or "unknown") the page shows on
/// each server.
fn gaps(dom: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for row in browser::elements(dom, "row") {
        out.entry(row["data-camera"].clone())
            .or_default()
            .insert(row["data-server"].clone(), row["data-gap-us"].clone());
    }
    out
}

fn gap_of(g: &BTreeMap<String, BTreeMap<String, String>>, server: &str) -> u64 {
    g.values()
        .map(|per| per[server].parse::<u64>().unwrap())
        .sum()
}

/// Loads the page until it shows a bar with a known gap for every server
/// of each of `cameras`, and `until` holds of it.
fn load_until(
    chromium: &std::path::Path,
    profile: &std::path::Path,
    port: u16,
    cameras: &[String],
    what: &str,
    until: impl Fn(&BTreeMap<String, BTreeMap<String, String>>) -> bool,
) -> browser::Load {
    let url = format!("http://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the page never showed {what}: {seen:?}"
        );
        // The daemon answers 503 until its first look at the site.
        if matches!(http_get(port, "/status"), Some((200, _))) {
            let l = browser::load(chromium, profile, &url);
            let g = gaps(&l.dom);
            let whole = g.keys().eq(cameras.iter())
                && g.values()
                    .all(|per| per.len() == 2 && per.values().all(|v| v != "unknown"));
            if whole && until(&g) {
                return l;
            }
            seen.push(g);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_page_shows_every_camera_and_the_outage_shrinking_during_the_backfill() {
    let chromium = match browser::chromium() {
        Ok(b) => b,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    // First rs02 only serves: its outage stands whole.
    let (mut c, _) = outage(&["--no-scrub", "--status-every", "1s"]);
    let port = c.server("rs02").status_port;
    let profile = tempfile::tempdir().unwrap();
    // The cameras `hafill status` names, for the page to show.
    // (It exits 1 while rs02 has recent holes: that is what it reports.)
    let out = run(&[
        "status",
        "--config",
        p(&c.server("rs02").config()),
        "--json",
    ]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let cameras: Vec<String> = status["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["camera"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(cameras.len(), 2, "{status:#}");

    let first = load_until(
        &chromium,
        profile.path(),
        port,
        &cameras,
        "the outage",
        |_| true,
    );
    let g1 = gaps(&first.dom);
    let minutes = |m: u64| m * 60 * 1_000_000;
    assert_eq!(
        gap_of(&g1, "rs02"),
        2 * minutes(50),
        "rs02's 50 minutes a camera: {g1:?}"
    );
    assert_eq!(
        gap_of(&g1, "rs01"),
        2 * minutes(5),
        "rs01 lacks the 5 minutes only rs02 recorded: {g1:?}"
    );

    // `hafill status --html` writes the same page, self-contained: opened
    // from a file, with no daemon behind it, it shows the same bars.
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator_page");
    std::fs::create_dir_all(&out_dir).unwrap();
    let html = out_dir.join("status.html");
    let _ = std::fs::remove_file(&html);
    let out = run(&[
        "status",
        "--config",
        p(&c.server("rs02").config()),
        "--html",
        p(&html),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrote"),
        "{out:?}"
    );
    let snapshot = browser::load(
        &chromium,
        profile.path(),
        &format!("file://{}", html.display()),
    );
    let gs = gaps(&snapshot.dom);
    assert_eq!(gs, g1, "the snapshot shows what the daemon's page showed");
    assert!(snapshot.console().is_empty(), "{:?}", snapshot.console());
    assert!(snapshot.dom.contains("(snapshot)"));

    // rs02 restarts and backfills: a later load shows less of its gap, and
    // rs01 in the backfill's table.
    c.signal(1, rustix::process::Signal::TERM);
    while c.running(1) {
        std::thread::sleep(Duration::from_millis(50));
    }
    c.serve_with("rs02", &["--scrub-every", "1h", "--status-every", "1s"]);
    let second = load_until(
        &chromium,
        profile.path(),
        port,
        &cameras,
        "rs02's gap shrinking",
        |g| gap_of(g, "rs02") < 2 * minutes(50),
    );
    assert!(
        second.dom.contains("data-peer=\"rs01\""),
        "the backfill's table names the peer it came from"
    );
    for l in [&first, &second] {
        assert!(
            l.console().is_empty(),
            "the page logged to its console: {:?}",
            l.console()
        );
        assert!(
            !l.dom.contains("data-errors"),
            "the page caught an error of its own"
        );
    }

    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator_page");
    std::fs::create_dir_all(&out).unwrap();
    let png = out.join("page.png");
    browser::screenshot(
        &chromium,
        profile.path(),
        &format!("http://127.0.0.1:{port}/"),
        &png,
    );
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    println!("screenshot: {}", png.display());
}

#[test]
fn locate_over_http_answers_as_hafill_locate_does() {
    let (c, t0) = outage(&["--no-scrub", "--status-every", "1s"]);
    let port = c.server("rs02").status_port;
    let config = c.server("rs02").config();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(http_get(port, "/status"), Some((200, _))) {
        assert!(Instant::now() < deadline, "{}", c.serve_log("rs02"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let cases = [
        (t0 + 1800, Some(("rs01", true))),  // the primary holds it
        (t0 + 3700, Some(("rs02", false))), // only the second server does
        (t0 - 600, None),                   // nobody does
    ];
    for (at, want) in cases {
        let at = rfc3339(at);
        let cli = run(&[
            "locate",
            "cam-0001",
            "--at",
            &at,
            "--config",
            p(&config),
            "--json",
        ]);
        let (code, body) = http_get(port, &format!("/locate?camera=cam-0001&at={at}")).unwrap();
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        match want {
            Some((server, primary)) => {
                assert!(cli.status.success(), "{cli:?}");
                let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
                assert_eq!(code, 200, "{body}");
                assert_eq!(answer["server"], server, "{answer:#}");
                assert_eq!(answer["primary"], primary, "{answer:#}");
                for k in [
                    "camera",
                    "at",
                    "server",
                    "addr",
                    "primary",
                    "segment_start",
                    "holders",
                ] {
                    assert_eq!(answer[k], cli[k], "{k}: http {answer:#} cli {cli:#}");
                }
            }
            None => {
                assert!(!cli.status.success(), "{cli:?}");
                assert!(String::from_utf8_lossy(&cli.stderr).contains("no server holds"));
                assert_eq!(code, 404, "{body}");
                assert!(
                    answer["error"]
                        .as_str()
                        .unwrap()
                        .contains("no server holds"),
                    "{answer:#}"
                );
            }
        }
    }
    // A browser that takes gzip gets the page gzipped.
    let (head, body) = raw_get(
        port,
        "/",
        "Host: localhost\r\nAccept-Encoding: gzip, deflate",
    );
    assert!(
        head.to_lowercase().contains("content-encoding: gzip"),
        "{head}"
    );
    assert!(body.starts_with(&[0x1f, 0x8b]), "a gzip stream");
    // Without a token, a request naming this machine by a stranger's name
    // (a page that rebound its name to 127.0.0.1) gets nothing.
    let answer = |host: &str| {
        let (head, _) = raw_get(port, "/status", &format!("Host: {host}"));
        head.split_whitespace().nth(1).unwrap_or("").to_string()
    };
    // The page's poll: the status without its per-camera table.
    let (code, body) = http_get(port, "/status?brief=1").unwrap();
    let brief: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200);
    assert!(
        brief.get("cameras").is_none() && brief["overview"]["cameras"] == 2,
        "{brief:#}"
    );
    assert_eq!(answer("evil.example:80"), "401");
    // Nor does a request another web site's page makes the browser send.
    let (head, _) = raw_get(
        port,
        "/status",
        "Host: localhost\r\nSec-Fetch-Site: cross-site",
    );
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(answer(&format!("localhost:{port}")), "200");
    assert_eq!(answer(&format!("[::1]:{port}")), "200");
    let (code, body) = http_get(port, "/locate?camera=../etc&at=now").unwrap();
    assert_eq!(code, 400, "{body}");
    let (code, body) = http_get(port, "/locate?camera=cam-0001&at=yesterday").unwrap();
    assert_eq!(code, 400, "{body}");
}

/// GET `path` from 127.0.0.1:`port` with exactly `headers` (CRLF between
/// them): the response's head and its body as sent.
fn raw_get(port: u16, path: &str, headers: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\n{headers}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut b = Vec::new();
    s.read_to_end(&mut b).unwrap();
    let split = b
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(b.len());
    let head = String::from_utf8_lossy(&b[..split]).into_owned();
    (head, b[(split + 4).min(b.len())..].to_vec())
}

/// A network namespace joined to this one by a veth pair: a second
/// machine, as far as addresses go. Removed when dropped.
struct OtherMachine {
    ns: String,
    host_ip: String,
}

impl OtherMachine {
    /// Err: why this machine cannot make one (not root, no `ip`). As root
    /// with `ip`, a failure to make one fails the test.
    fn new() -> Result<OtherMachine, String> {
        if rustix::process::geteuid().as_raw() != 0 {
            return Err("needs root (a network namespace and a veth pair)".into());
        }
        if !std::process::Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Err("no `ip` here (apt-get install iproute2)".into());
        }
        let id = std::process::id() % 250 + 1;
        let ns = format!("hfpage{id}");
        let (a, b) = (format!("hfpa{id}"), format!("hfpb{id}"));
        let host_ip = format!("10.213.{id}.1");
        let sh = |cmd: &str| {
            let out = std::process::Command::new("sh").arg("-c").arg(cmd).output();
            match out {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(format!("{cmd}: {}", String::from_utf8_lossy(&o.stderr))),
                Err(e) => Err(format!("{cmd}: {e}")),
            }
        };
        let _ = sh(&format!("ip netns del {ns}"));
        sh(&format!("ip netns add {ns}")).unwrap();
        let m = OtherMachine {
            ns: ns.clone(),
            host_ip: host_ip.clone(),
        };
        sh(&format!("ip link add {a} type veth peer name {b}")).unwrap();
        sh(&format!("ip link set {b} netns {ns}")).unwrap();
        sh(&format!(
            "ip addr add {host_ip}/30 dev {a} && ip link set {a} up"
        ))
        .unwrap();
        sh(&format!(
            "ip netns exec {ns} ip addr add 10.213.{id}.2/30 dev {b} && ip netns exec {ns} ip link set {b} up && ip netns exec {ns} ip link set lo up"
        )).unwrap();
        Ok(m)
    }

    /// GET `path` from the other machine, with `headers`: the status code.
    fn get(&self, port: u16, path: &str, headers: &str) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/{}/{port} && printf 'GET {path} HTTP/1.0\\r\\n{headers}\\r\\n' >&3 && head -c 12 <&3",
            self.host_ip
        );
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "bash", "-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap_or("no answer")
            .to_string()
    }
}

impl Drop for OtherMachine {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

#[test]
fn the_http_side_refuses_another_address_without_the_token() {
    let other = match OtherMachine::new() {
        Ok(m) => m,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let s = c.server("rs01");
    let token = "k3Jq9w0Zr8TtY5pXv2LmN4bC";
    std::fs::write(
        s.config().with_file_name("status.token"),
        format!("{token}\n"),
    )
    .unwrap();
    let port = s.status_port;
    let text = std::fs::read_to_string(s.config()).unwrap().replace(
        &format!("status = \"127.0.0.1:{port}\"\n"),
        &format!("status = \"0.0.0.0:{port}\"\nstatus_token_file = \"status.token\"\n"),
    );
    std::fs::write(s.config(), text).unwrap();
    c.serve("rs01");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(port, "/metrics").is_none() {
        assert!(Instant::now() < deadline, "{}", c.serve_log("rs01"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // With a token set, even this machine must give it (a proxy here
    // would forward others' requests from loopback).
    assert_eq!(http_get(port, "/metrics").unwrap().0, 401);
    assert_eq!(
        http_get(port, &format!("/metrics?token={token}"))
            .unwrap()
            .0,
        200
    );
    // Another machine gets nothing without it.
    assert_eq!(other.get(port, "/metrics", ""), "401");
    assert_eq!(other.get(port, "/", ""), "401");
    assert_eq!(
        other.get(
            port,
            "/metrics",
            "Authorization: Bearer not-the-token-at-all\\r\\n"
        ),
        "401"
    );
    assert_eq!(
        other.get(
            port,
            "/metrics",
            &format!("Authorization: Bearer {token}\\r\\n")
        ),
        "200"
    );
    assert_eq!(
        other.get(
            port,
            "/metrics",
            &format!("Cookie: hafill_token_rs01={token}\\r\\n")
        ),
        "200"
    );
    assert_eq!(
        other.get(port, &format!("/metrics?token={token}"), ""),
        "200"
    );
    assert_eq!(
        other.get(
            port,
            "/metrics",
            &format!("authorization: bearer {token}\\r\\n")
        ),
        "200",
        "the scheme's case does not matter"
    );
    assert_eq!(
        other.get(
            port,
            "/metrics",
            "Cookie: hafill_token_rs01=not-the-token-at-all\\r\\n"
        ),
        "401"
    );
    assert_eq!(
        other.get(port, "/metrics?token=not-the-token-at-all", ""),
        "401"
    );
    // A proxy's own bearer does not hide a good cookie.
    assert_eq!(
        other.get(
            port,
            "/metrics",
            &format!("Authorization: Bearer a-proxy-of-its-own\\r\\nCookie: hafill_token_rs01={token}\\r\\n")
        ),
        "200"
    );
    // A browser opening the page with the token keeps it in a cookie and
    // is sent on to `/`, the token out of its address bar.
    assert_eq!(other.get(port, &format!("/?token={token}"), ""), "303");
}
