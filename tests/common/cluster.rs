//! A cluster of real `hafill` servers on loopback: keys, configs, stores,
//! `serve` processes (killed when dropped).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use super::{hafill, p, run_ok};

pub struct Server {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    /// The daemon's HTTP side (`/metrics`, `/status`).
    pub status_port: u16,
    pub id: String,
}

impl Server {
    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("hafill.toml")
    }
}

pub struct Cluster {
    pub root: tempfile::TempDir,
    pub servers: Vec<Server>,
    children: Vec<Child>,
}

/// A free UDP port on loopback (bound and released: good enough for tests).
pub fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// A free TCP port on loopback.
pub fn free_tcp_port() -> u16 {
    let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

impl Cluster {
    /// `names` servers, each with an empty store (`hafill store init`),
    /// pairing every camera matching `cam-*` with all of the others.
    pub fn new(names: &[&str]) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let mut servers = Vec::new();
        for n in names {
            let dir = root.path().join(n);
            let id = run_ok(&["keygen", "--out", p(&dir), "--name", n])
                .trim()
                .to_string();
            // As at installation: hafill never makes a store on its own.
            run_ok(&["store", "init", "--store", p(&dir.join("store"))]);
            servers.push(Server {
                name: n.to_string(),
                dir,
                port: free_port(),
                status_port: free_tcp_port(),
                id,
            });
        }
        let c = Cluster {
            root,
            servers,
            children: Vec::new(),
        };
        let all: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        for s in &c.servers {
            c.write_config(
                s,
                &format!(
                    "[[camera]]\nid = \"cam-*\"\nservers = [{}]\n",
                    all.join(", ")
                ),
            );
        }
        c
    }

    /// Rewrites a server's config with `cameras` as its camera section.
    /// The reserve is small so that no test hangs on how full the
    /// machine's disk happens to be (the default, 10GiB, is for real
    /// recording servers; `gate_reserve` tests the reserve itself).
    pub fn write_config(&self, s: &Server, cameras: &str) {
        let mut text = format!(
            "[server]\nname = \"{}\"\nlisten = \"127.0.0.1:{}\"\nstore = \"store\"\nkey = \"key.pem\"\ncert = \"cert.pem\"\nretention = \"30d\"\nreserve = \"64MiB\"\nstatus = \"127.0.0.1:{}\"\n\n",
            s.name, s.port, s.status_port
        );
        for o in self.servers.iter().filter(|o| o.name != s.name) {
            text += &format!(
                "[[peer]]\nname = \"{}\"\naddr = \"127.0.0.1:{}\"\nid = \"{}\"\n\n",
                o.name, o.port, o.id
            );
        }
        text += cameras;
        std::fs::write(s.config(), text).unwrap();
    }

    /// Writes `name`'s config for a recorder that hafill works beside:
    /// `sections` (`[recorder]`, `[[camera]]`, any other) and hafill's
    /// state in `state` (relative to the config's folder, or absolute)
    /// instead of a store; then, as at installation, `hafill store init`.
    /// Returns the config's path.
    pub fn configure_recorder(&self, name: &str, state: &str, sections: &str) -> PathBuf {
        let s = self.server(name);
        self.write_config(s, sections);
        let cfg = s.config();
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("store = \"store\"\n", &format!("state = \"{state}\"\n"));
        std::fs::write(&cfg, text).unwrap();
        run_ok(&["store", "init", "--config", p(&cfg)]);
        cfg
    }

    pub fn server(&self, name: &str) -> &Server {
        self.servers.iter().find(|s| s.name == name).unwrap()
    }

    /// Starts `hafill serve --no-scrub` for `name` (serving only, so a
    /// test's own `hafill backfill` is the only writer), its log in
    /// `serve.log`.
    pub fn serve(&mut self, name: &str) {
        self.serve_with(name, &["--no-scrub"]);
    }

    /// Starts `hafill serve` for `name` with `extra` arguments.
    pub fn serve_with(&mut self, name: &str, extra: &[&str]) {
        let filter = std::env::var("HAFILL_TEST_SERVE_LOG").unwrap_or_else(|_| "info".into());
        self.serve_logging(name, extra, &filter);
    }

    /// Starts `hafill serve` for `name` with `extra` arguments, logging
    /// what `filter` (a `HAFILL_LOG` value) lets through.
    pub fn serve_logging(&mut self, name: &str, extra: &[&str], filter: &str) {
        let (dir, config) = (self.server(name).dir.clone(), self.server(name).config());
        let log = std::fs::File::create(dir.join("serve.log")).unwrap();
        let child = hafill()
            .env("HAFILL_LOG", filter)
            .args(["serve", "--config", p(&config)])
            // Tests run beside other tests' normal-priority work (recording,
            // compiling); a SCHED_IDLE source could then be starved past a
            // receiver's stall timeout and cut off. The policy itself is
            // tested in `throttle::cpu`.
            .args(["--cpu", "normal"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
        // The listening socket is bound before the first log line.
        let path = dir.join("serve.log");
        for _ in 0..200 {
            if std::fs::read_to_string(&path)
                .unwrap_or_default()
                .contains("serving")
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!(
            "{name} did not start: {}",
            std::fs::read_to_string(&path).unwrap_or_default()
        );
    }

    /// SIGKILLs every server this cluster started.
    pub fn kill_servers(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }

    /// Sends `signal` to the `i`-th server this cluster started.
    pub fn signal(&mut self, i: usize, signal: rustix::process::Signal) {
        let c = &mut self.children[i];
        // Not reaped yet (checked first), so the PID is still this child's.
        assert!(
            c.try_wait().unwrap().is_none(),
            "server {i} has already exited"
        );
        let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// The `i`-th server's peak resident memory so far (`VmHWM` in
    /// `/proc/PID/status`), in bytes.
    pub fn peak_resident(&mut self, i: usize) -> u64 {
        assert!(self.running(i), "server {i} has already exited");
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.children[i].id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in {status}"));
        kib * 1024
    }

    /// Whether the `i`-th server this cluster started is still running.
    pub fn running(&mut self, i: usize) -> bool {
        self.children[i].try_wait().unwrap().is_none()
    }

    /// SIGTERMs every server this cluster started and waits for each to
    /// exit (however long that takes); their exit statuses, in start order.
    pub fn terminate_servers(&mut self) -> Vec<std::process::ExitStatus> {
        let mut statuses = Vec::new();
        for c in &mut self.children {
            // Not reaped yet, so the PID is still this child's.
            if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            statuses.push(c.wait().unwrap());
        }
        self.children.clear();
        statuses
    }

    /// `name`'s identity and its `[[peer]]` entry for `peer` (address and
    /// pinned ID): what a test needs to speak the protocol to `peer` as
    /// `name`.
    pub fn speaker(
        &self,
        name: &str,
        peer: &str,
    ) -> (
        hafill_engine::identity::Identity,
        hafill_engine::config::Peer,
    ) {
        let cfg = hafill_engine::config::Config::load(&self.server(name).config()).unwrap();
        let me = hafill_engine::identity::load(&cfg.cert, &cfg.key).unwrap();
        (me, cfg.peer(peer).unwrap().clone())
    }

    pub fn serve_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.server(name).dir.join("serve.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every segment file under a store, relative path to bytes' BLAKE3.
pub fn file_hashes(store: &Path) -> std::collections::BTreeMap<String, String> {
    super::segment_files(&store.join("segments"))
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(store).unwrap().display().to_string();
            let hash = blake3::hash(&std::fs::read(&f).unwrap())
                .to_hex()
                .to_string();
            (rel, hash)
        })
        .collect()
}

/// rs01 recorded 2 cameras at `bitrate` in 60-second segments for 10
/// minutes from t0 and serves; rs02 stopped recording at t0 + 120 s and
/// has booted: its gate (`--then-exit`) made a placeholder for each of the
/// 16 segments it lacks. Returns the cluster and rs02's config.
pub fn gated_outage(bitrate: &str) -> (Cluster, PathBuf) {
    let mut c = Cluster::new(&["rs01", "rs02"]);
    let t0 = super::base_time();
    let (a, b) = (c.server("rs01").store(), c.server("rs02").store());
    super::sim_record(&a, 2, bitrate, "60s", t0, t0 + 600, 5);
    super::sim_record(&b, 2, bitrate, "60s", t0, t0 + 120, 5);
    c.serve("rs01");
    let cfg = c.server("rs02").config();
    run_ok(&["gate", "--config", p(&cfg), "--then-exit"]);
    (c, cfg)
}

/// The segment files (relative to the stores) that `ours` holds with other
/// bytes than `theirs`: after a gate, its placeholders.
pub fn differing_files(theirs: &Path, ours: &Path) -> Vec<String> {
    let theirs = file_hashes(theirs);
    file_hashes(ours)
        .into_iter()
        .filter(|(name, hash)| theirs.get(name) != Some(hash))
        .map(|(name, _)| name)
        .collect()
}
