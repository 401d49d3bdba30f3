//! `hafill demo`: two recording servers in a temporary directory, synthetic
//! recordings on both, an outage on one that has just ended, and its boot:
//! the gate plans and places, starts a live recorder (`hafill sim live`)
//! that records while the backfill runs over real QUIC on loopback, and
//! everything is verified, with a summary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use hafill_engine::backfill::BackfillOptions;
use hafill_engine::config::Config;
use hafill_engine::sim::{self, RecordSpec};
use hafill_engine::store::Store;
use hafill_engine::units::{format_bytes, Timestamp};
use hafill_engine::{gate, identity, plan};

use crate::progress::Progress;
use crate::{args, CmdResult, Outcome};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Cameras on each server.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=1000))]
    cameras: u32,
    /// Minutes of recording on each server.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(3..=1440))]
    minutes: u32,
    /// Bit rate of each camera.
    #[arg(long, default_value = "2Mbit", value_parser = args::bitrate)]
    bitrate: u64,
    /// Keep the servers' folders here instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn write_config(
    dir: &Path,
    name: &str,
    port: u16,
    peer: &str,
    peer_port: u16,
    peer_id: &str,
) -> std::io::Result<PathBuf> {
    let text = format!(
        "[server]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nstore = \"store\"\nkey = \"key.pem\"\ncert = \"cert.pem\"\nstatus = \"off\"\nretention = \"30d\"\nreserve = \"1GiB\"\n\n\
         [[peer]]\nname = \"{peer}\"\naddr = \"127.0.0.1:{peer_port}\"\nid = \"{peer_id}\"\n\n\
         [[camera]]\nid = \"cam-*\"\nservers = [\"rs01\", \"rs02\"]\n"
    );
    let path = dir.join("hafill.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

pub fn run(a: DemoArgs) -> CmdResult {
    let tmp;
    let root = match &a.keep {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("hafill-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let (d1, d2) = (root.join("rs01"), root.join("rs02"));
    println!("hafill demo in {}", root.display());
    let id1 = identity::generate(&d1, "rs01")?;
    let id2 = identity::generate(&d2, "rs02")?;
    let (p1, p2) = (free_port()?, free_port()?);
    let c1 = write_config(&d1, "rs01", p1, "rs02", p2, &id2)?;
    let c2 = write_config(&d2, "rs02", p2, "rs01", p1, &id1)?;
    println!(
        "  rs01 id {}…  rs02 id {}…  (mutual TLS, pinned)",
        &id1[..16],
        &id2[..16]
    );

    // Recordings: both servers record the same cameras; rs02 has been down
    // for the last five sixths of the window on half of them, and boots now.
    let now = Timestamp::now();
    let seg = 60_000_000i64;
    let to = Timestamp(now.0 / seg * seg);
    let from = to.add_micros(-(a.minutes as i64) * seg);
    let third = (a.minutes as i64 / 3).max(1) * seg;
    let outage = (from.add_micros(third / 2), to);
    let spec = RecordSpec {
        cameras: a.cameras,
        first_camera: 1,
        bitrate_bps: a.bitrate,
        segment_us: seg as u64,
        from,
        to,
        outages: vec![],
        outage_cameras: None,
        seed: 2026,
    };
    for (dir, name, outages, k) in [
        (&d1, "rs01", vec![], None),
        (&d2, "rs02", vec![outage], Some(a.cameras.div_ceil(2))),
    ] {
        let store = Store::open_writer(dir.join("store"), true)?;
        let spec = RecordSpec {
            outages,
            outage_cameras: k,
            ..spec.clone()
        };
        let mut bar = Progress::new("recording", 0, false, false);
        let s = sim::record(&store, &spec, |d, t| bar.set(d, t))?;
        bar.finish();
        println!(
            "  {name} recorded {} segments ({}) of {} cameras at {}",
            s.segments,
            format_bytes(s.bytes),
            a.cameras,
            rate(a.bitrate)
        );
    }
    println!(
        "  rs02 was down {} .. {} on {} cameras",
        outage.0,
        outage.1,
        a.cameras.div_ceil(2)
    );

    // rs01 serves on loopback; rs02 backfills from it.
    let config1 = Arc::new(Config::load(&c1)?);
    let config2 = Config::load(&c2)?;
    let rt = tokio::runtime::Runtime::new()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(hafill_engine::daemon::serve(
        config1.clone(),
        hafill_engine::daemon::ServeOptions::default(),
        Arc::new(std::sync::RwLock::new(config1.throttle.clone())),
        async {
            let _ = stop_rx.await;
        },
    ));
    println!("== rs02 boots: the gate plans and places, starts its recorder, and backfills from rs01 over QUIC on 127.0.0.1:{p1}");
    let started = Instant::now();
    let opts = BackfillOptions::default();
    let gated = rt.block_on(gate::prepare(&config2, &opts, 86_400_000_000));
    let gated = match gated {
        Ok(g) => g,
        Err(e) => {
            let _ = stop_tx.send(());
            let _ = rt.block_on(server);
            return Err(e.into());
        }
    };
    let whole_at = started.elapsed().as_secs_f64();
    // The recording service: `hafill sim live` into rs02's own store, four
    // cameras live while the backfill fills the outage beside them.
    let live = std::process::Command::new(std::env::current_exe()?)
        .args(["sim", "live", "--store"])
        .arg(d2.join("store"))
        .args(["--cameras", "4", "--bitrate", "2Mbit", "--segment", "2s"])
        .args(["--for", "8s", "--json"])
        .env("HAFILL_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let recorder_at = started.elapsed().as_secs_f64();
    let bar = Arc::new(std::sync::Mutex::new(Progress::new(
        "backfill", 0, true, false,
    )));
    let b = bar.clone();
    let reports = rt.block_on(gate::backfill_in_background(
        config2.clone(),
        opts,
        gated,
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        std::time::Duration::from_secs(10),
        move |t| {
            if let Ok(mut p) = b.lock() {
                p.set(t.bytes_done, t.bytes_total);
            }
        },
    ));
    if let Ok(mut p) = bar.lock() {
        p.finish();
    }
    let whole = started.elapsed().as_secs_f64();
    let live = live.wait_with_output()?;
    let _ = stop_tx.send(());
    let _ = rt.block_on(server);
    let Some(report) = reports.into_iter().next() else {
        return Err("the backfill did not run".into());
    };
    let live_report: Option<serde_json::Value> = serde_json::from_slice(&live.stdout).ok();

    // Verify: every byte re-hashed, and nothing left to plan.
    let store2 = Store::open(d2.join("store"))?;
    let verify = store2.verify(None)?;
    let opts = plan::PlanOptions {
        now: Timestamp::now(),
        retention_us: config2.retention_us,
        from: None,
        to: None,
    };
    let left = plan::plan_stores(
        &store2,
        &[("rs01".into(), Store::open(d1.join("store"))?)],
        None,
        &opts,
    )?;

    println!();
    println!("== summary");
    println!(
        "  gaps planned           {} segments, {}",
        report.placement.planned_segments,
        format_bytes(report.placement.planned_bytes)
    );
    println!("  timeline whole (placeholders) after {whole_at:.2} s; recorder started after {recorder_at:.2} s");
    println!(
        "  backfilled             {} segments, {} ({} on the wire) at {:.1} MiB/s",
        report.segments,
        format_bytes(report.bytes),
        format_bytes(report.wire_bytes),
        report.rate_mib_s
    );
    println!(
        "  data complete after    {whole:.2} s (every block BLAKE3-verified, writes via {})",
        report.io
    );
    println!(
        "  verification           rs02 re-hashed {} segments ({}): {} mismatches; {} segments still missing",
        verify.segments,
        format_bytes(verify.bytes),
        verify.problems.len(),
        left.segments()
    );
    let live_ok = live.status.success() && live_report.is_some();
    match &live_report {
        Some(r) if live.status.success() => println!(
            "  live recording         rs02's recorder (sim live, 4 cameras x 2 Mbit/s), started before the backfill and recording through it: {} segments ({} frames), {} frames late",
            r["segments"], r["frames"], r["frame_deadline_misses"]
        ),
        _ => println!(
            "  live recording         FAILED: {}",
            String::from_utf8_lossy(&live.stderr).trim()
        ),
    }
    if let Some(d) = &a.keep {
        println!(
            "  kept in {} (configs: rs01/hafill.toml, rs02/hafill.toml)",
            d.display()
        );
    }
    let ok =
        report.failed.is_empty() && verify.problems.is_empty() && left.segments() == 0 && live_ok;
    println!(
        "  result                 {}",
        if ok {
            "OK: rs02's timeline is whole and identical to rs01's"
        } else {
            "FAILED"
        }
    );
    Ok(if ok { Outcome::Ok } else { Outcome::Problems })
}

fn rate(bps: u64) -> String {
    if bps >= 1_000_000 {
        format!("{} Mbit/s", bps as f64 / 1e6)
    } else {
        format!("{} kbit/s", bps as f64 / 1e3)
    }
}
