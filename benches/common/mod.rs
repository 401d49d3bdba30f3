//! What the process benchmarks share: keys, configs, index-only stores,
//! and a server that is killed when the bench ends.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use hafill_engine::segment::{Origin, SegmentMeta, SegmentState};
use hafill_engine::store::Store;
use hafill_engine::{sim, Timestamp};

pub const BIN: &str = env!("CARGO_BIN_EXE_hafill");

pub fn keygen(dir: &Path, name: &str) -> String {
    let out = Command::new(BIN)
        .args(["keygen", "--out", dir.to_str().unwrap(), "--name", name])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `dir/hafill.toml` for `name`, with one peer and every `cam-*` paired.
pub fn config(
    dir: &Path,
    name: &str,
    port: u16,
    peer: &str,
    peer_port: u16,
    peer_id: &str,
) -> PathBuf {
    let path = dir.join("hafill.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nstore = \"store\"\nkey = \"key.pem\"\ncert = \"cert.pem\"\nstatus = \"off\"\nreserve = \"1GiB\"\n\n\
             [[peer]]\nname = \"{peer}\"\naddr = \"127.0.0.1:{peer_port}\"\nid = \"{peer_id}\"\n\n\
             [[camera]]\nid = \"cam-*\"\nservers = [\"rs01\", \"rs02\"]\n"
        ),
    )
    .unwrap();
    path
}

pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Index records (no segment files) for `cameras` cameras over `[from,
/// to)` in `segment_us` steps of `len` bytes each; a segment's BLAKE3
/// depends on its camera and start only, so two stores built alike hold
/// the same (and, as real video, no two segments share a hash).
pub fn index_only(
    store: &Path,
    cameras: u32,
    from: Timestamp,
    to: Timestamp,
    segment_us: i64,
    len: u64,
) {
    let store = Store::open_writer(store, true).unwrap();
    for c in 0..cameras {
        let camera = sim::camera_id(c);
        let metas: Vec<SegmentMeta> = (0..)
            .map(|k| from.add_micros(k * segment_us))
            .take_while(|t| *t < to)
            .map(|start| SegmentMeta {
                camera: camera.clone(),
                start,
                duration_us: segment_us as u64,
                len,
                blake3: blake3::Hasher::new()
                    .update(camera.as_str().as_bytes())
                    .update(&start.0.to_le_bytes())
                    .finalize(),
                state: SegmentState::Complete,
                origin: Origin::Local,
                notes: None,
            })
            .collect();
        store.append_index_by_syncfs(&metas).unwrap();
    }
}

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Peak resident memory of process `pid` (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Starts this process's peak resident memory (VmHWM) again from what it
/// holds now, so a later [`peak_rss_kib`] leaves out what came before.
/// Answers whether the kernel did it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
