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
/// recorded 15 minutes (5 past the hour that rs01 lacks). rs02's daemon
/// backfills at most 16 Mbit/s: the 50 minutes of two cameras (about 48
/// MB) take half a minute or more, however fast the machine.
fn outage() -> (Cluster, i64) {
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
    c.serve_with("rs02", &["--scrub-every", "1h", "--status-every", "1s"]);
    (c, t0)
}

/// Per camera, the gap (microseconds) the page shows on each server.
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
        .map(|per| {
            per.get(server)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
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
    let (c, _) = outage();
    let port = c.server("rs02").status_port;
    let url = format!("http://127.0.0.1:{port}/");
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

    let deadline = Instant::now() + Duration::from_secs(240);
    let mut loads = Vec::new();
    let first = loop {
        assert!(
            Instant::now() < deadline,
            "the page never showed rs02's gap: {:?}\n{}",
            loads,
            c.serve_log("rs02")
        );
        // The daemon answers 503 until its first look at the site.
        if !matches!(http_get(port, "/status"), Some((200, _))) {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let l = browser::load(&chromium, profile.path(), &url);
        let g = gaps(&l.dom);
        loads.push(g.clone());
        if gap_of(&g, "rs02") > 0 {
            break l;
        }
    };
    let g1 = gaps(&first.dom);
    let shown: Vec<&String> = g1.keys().collect();
    assert_eq!(
        shown,
        cameras.iter().collect::<Vec<_>>(),
        "every camera on the page"
    );
    for (cam, per) in &g1 {
        assert_eq!(
            per.len(),
            2,
            "{cam}: a bar for each of its servers: {per:?}"
        );
    }
    let gap1 = gap_of(&g1, "rs02");
    assert!(
        gap1 <= 2 * 3000 * 1_000_000,
        "at most rs02's 50 minutes a camera: {g1:?}"
    );
    assert!(
        gap_of(&g1, "rs01") >= 2 * 300 * 1_000_000 - 2 * 1_000_000,
        "rs01 lacks the 5 minutes only rs02 recorded: {g1:?}"
    );

    // A later load shows less of rs02's gap.
    let second = loop {
        assert!(
            Instant::now() < deadline,
            "rs02's gap never shrank from {gap1} us: {:?}",
            loads
        );
        let l = browser::load(&chromium, profile.path(), &url);
        let g = gaps(&l.dom);
        loads.push(g.clone());
        if gap_of(&g, "rs02") < gap1 {
            break l;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        gaps(&second.dom).keys().collect::<Vec<_>>(),
        cameras.iter().collect::<Vec<_>>()
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
        assert!(
            l.dom.contains("id=\"backfill-summary\""),
            "backfill progress shown"
        );
    }

    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator_page");
    std::fs::create_dir_all(&out).unwrap();
    let png = out.join("page.png");
    browser::screenshot(&chromium, profile.path(), &url, &png);
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    println!("screenshot: {}", png.display());
}

#[test]
fn locate_over_http_answers_as_hafill_locate_does() {
    let (c, t0) = outage();
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
    let raw = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, deflate\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut b = Vec::new();
        s.read_to_end(&mut b).unwrap();
        b
    };
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(raw[split + 4..].starts_with(&[0x1f, 0x8b]), "a gzip stream");
    let (code, body) = http_get(port, "/locate?camera=../etc&at=now").unwrap();
    assert_eq!(code, 400, "{body}");
    let (code, body) = http_get(port, "/locate?camera=cam-0001&at=yesterday").unwrap();
    assert_eq!(code, 400, "{body}");
}

/// A network namespace joined to this one by a veth pair: a second
/// machine, as far as addresses go. Removed when dropped.
struct OtherMachine {
    ns: String,
    host_ip: String,
}

impl OtherMachine {
    fn new() -> Result<OtherMachine, String> {
        if rustix::process::geteuid().as_raw() != 0 {
            return Err("needs root (a network namespace and a veth pair)".into());
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
        sh(&format!("ip netns add {ns}"))?;
        let m = OtherMachine {
            ns: ns.clone(),
            host_ip: host_ip.clone(),
        };
        sh(&format!("ip link add {a} type veth peer name {b}"))?;
        sh(&format!("ip link set {b} netns {ns}"))?;
        sh(&format!(
            "ip addr add {host_ip}/30 dev {a} && ip link set {a} up"
        ))?;
        sh(&format!(
            "ip netns exec {ns} ip addr add 10.213.{id}.2/30 dev {b} && ip netns exec {ns} ip link set {b} up && ip netns exec {ns} ip link set lo up"
        ))?;
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
    // This machine needs no token.
    assert_eq!(http_get(port, "/metrics").unwrap().0, 200);
    // Another does.
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
            &format!("Cookie: hafill_token={token}\\r\\n")
        ),
        "200"
    );
    assert_eq!(
        other.get(port, &format!("/metrics?token={token}"), ""),
        "200"
    );
}
