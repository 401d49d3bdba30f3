//! `hafill sim record`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use hafill_engine::sim::{self, RecordSpec};
use hafill_engine::store::Store;
use hafill_engine::units::{format_bytes, Timestamp};

use crate::progress::Progress;
use crate::{args, print_json, CmdResult, Outcome};

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Write synthetic recordings as fast as the disk allows, durable and
    /// indexed as a recording would be; deterministic per seed.
    Record(RecordArgs),
    /// Write like a recording server in real time (frames at their
    /// interval, each segment durable when it closes) and report write
    /// latency and deadline misses: the instrument of the live-protection
    /// benchmark.
    Live(LiveArgs),
    /// A constant-rate UDP stream standing for live cameras on a link
    /// (`--send`), or its receiver reporting loss and one-way delay
    /// (`--listen`): the network instrument of the live-protection benchmark.
    Stream(StreamArgs),
    /// A peer that speaks the protocol and lies about every segment it
    /// serves (its coverage is honest): for testing that receivers refuse
    /// its bytes and cut it off. Never run it on a production site.
    Hostile(HostileArgs),
}

#[derive(Debug, Args)]
pub struct HostileArgs {
    /// The hostile peer's config file (as for `hafill serve`).
    #[arg(long, value_name = "FILE", value_parser = args::config_file)]
    config: PathBuf,
    /// How it lies: wrong-hash, wrong-size, bad-block, oversized, extra,
    /// stall, drip, or drip-coverage (a coverage answer that never ends).
    #[arg(long, value_name = "LIE")]
    lie: hafill_engine::sim::hostile::Lie,
}

fn hostile(a: HostileArgs) -> CmdResult {
    let config = std::sync::Arc::new(hafill_engine::config::Config::load(&a.config)?);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(sim::hostile::serve(config, a.lie, async {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
    }))?;
    Ok(Outcome::Ok)
}

#[derive(Debug, Args)]
pub struct StreamArgs {
    /// Send to this address.
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with = "listen",
        required_unless_present = "listen"
    )]
    send: Option<std::net::SocketAddr>,
    /// Receive on this address and report.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// The stream's rate (sender).
    #[arg(long, value_name = "RATE", default_value = "200Mbit", value_parser = args::bitrate)]
    rate: u64,
    /// How long to send, or to listen at most.
    #[arg(long = "for", value_name = "DURATION", default_value = "20s", value_parser = args::duration_us)]
    duration: u64,
    /// Write the receiver's report (JSON) to this file as well.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LiveArgs {
    /// The store to record into (created if missing; cameras live-0001...).
    #[arg(long, value_name = "DIR", value_parser = args::new_or_existing_store)]
    store: PathBuf,
    /// Number of cameras, one writer thread each.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=2000))]
    cameras: u32,
    /// Bit rate of each camera.
    #[arg(long, value_name = "RATE", default_value = "8Mbit", value_parser = args::bitrate)]
    bitrate: u64,
    /// Segment length.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = args::duration_us)]
    segment: u64,
    /// How long to record.
    #[arg(long = "for", value_name = "DURATION", default_value = "60s", value_parser = args::duration_us)]
    duration: u64,
    /// Frames per second (one write each).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=240))]
    fps: u32,
    /// Seed of the frame bytes.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Write the report (JSON) to this file as well.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The store directory (created if missing).
    #[arg(long, value_name = "DIR", value_parser = args::new_or_existing_store)]
    store: PathBuf,
    /// Number of cameras: cam-0001, cam-0002, ...
    #[arg(long, value_name = "N", default_value_t = 4)]
    cameras: u32,
    /// Number of the first camera (`--first-camera 11 --cameras 2`:
    /// cam-0011 and cam-0012).
    #[arg(long, value_name = "K", default_value_t = 1)]
    first_camera: u32,
    /// Bit rate of each camera.
    #[arg(long, value_name = "RATE", default_value = "4Mbit", value_parser = args::bitrate)]
    bitrate: u64,
    /// Segment length.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = args::duration_us)]
    segment: u64,
    /// Start of the recording (RFC 3339, `now`, `-2h`).
    #[arg(long, value_name = "TIME", value_parser = args::time, allow_hyphen_values = true)]
    from: Timestamp,
    /// End of the recording.
    #[arg(long, value_name = "TIME", value_parser = args::time, default_value = "now", allow_hyphen_values = true)]
    to: Timestamp,
    /// A window with no recording, T1..T2 (repeatable).
    #[arg(long, value_name = "T1..T2", value_parser = args::range, allow_hyphen_values = true)]
    outage: Vec<(Timestamp, Timestamp)>,
    /// How many cameras (the first ones) the outages hit; default all.
    #[arg(long, value_name = "K")]
    outage_cameras: Option<u32>,
    /// Seed: the same seed, camera and start give byte-identical segments.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: SimCommand) -> CmdResult {
    match cmd {
        SimCommand::Record(a) => record(a),
        SimCommand::Live(a) => live(a),
        SimCommand::Stream(a) => stream(a),
        SimCommand::Hostile(a) => hostile(a),
    }
}

fn stream(a: StreamArgs) -> CmdResult {
    let duration = std::time::Duration::from_micros(a.duration);
    if let Some(to) = a.send {
        let n =
            sim::stream::send(to, a.rate, duration).map_err(|e| format!("sending to {to}: {e}"))?;
        println!("sent {n} packets of {} bytes to {to}", sim::stream::PACKET);
        return Ok(Outcome::Ok);
    }
    let Some(listen) = a.listen else {
        return Err("give --send ADDR or --listen ADDR".into());
    };
    let r = sim::stream::receive(listen, duration)
        .map_err(|e| format!("listening on {listen}: {e}"))?;
    if let Some(path) = &a.report {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)
            .map_err(|e| format!("cannot write the report to {}: {e}", path.display()))?;
    }
    print_json(&r)?;
    Ok(Outcome::Ok)
}

fn live(a: LiveArgs) -> CmdResult {
    let spec = sim::live::LiveSpec {
        cameras: a.cameras,
        bitrate_bps: a.bitrate,
        segment: std::time::Duration::from_micros(a.segment),
        duration: std::time::Duration::from_micros(a.duration),
        fps: a.fps,
        seed: a.seed,
    };
    let store = Store::open_writer(&a.store, true)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let r = sim::live::live(&store, &spec, &stop)?;
    if let Some(path) = &a.report {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)
            .map_err(|e| format!("cannot write the report to {}: {e}", path.display()))?;
    }
    if a.json {
        print_json(&r)?;
    } else {
        println!(
            "live: {} cameras, {} frames, {} in {:.1}s; write latency p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; {} frames late ({} while the hypervisor stole CPU time, {:.0} ms stolen); {} segments, durable p99 {:.0} ms, {} late",
            r.cameras,
            r.frames,
            format_bytes(r.bytes),
            r.seconds,
            r.write_latency_ms.p50,
            r.write_latency_ms.p99,
            r.write_latency_ms.max,
            r.frame_deadline_misses,
            r.late_while_stolen,
            r.steal_ms,
            r.segments,
            r.segment_durable_ms.p99,
            r.segment_deadline_misses
        );
    }
    Ok(Outcome::Ok)
}

fn record(a: RecordArgs) -> CmdResult {
    let spec = RecordSpec {
        cameras: a.cameras,
        first_camera: a.first_camera,
        bitrate_bps: a.bitrate,
        segment_us: a.segment,
        from: a.from,
        to: a.to,
        outages: a.outage,
        outage_cameras: a.outage_cameras,
        seed: a.seed,
    };
    let store = Store::open_writer(&a.store, true)?;
    let mut progress = Progress::new("recording", 0, false, a.json);
    let summary = sim::record(&store, &spec, |done, total| progress.set(done, total))?;
    progress.finish();
    if a.json {
        print_json(&summary)?;
    } else {
        println!(
            "recorded {} segments ({}) in {:.1}s; {} already present, {} left out by outages",
            summary.segments,
            format_bytes(summary.bytes),
            summary.seconds,
            summary.skipped_existing,
            summary.left_out_by_outage
        );
    }
    Ok(Outcome::Ok)
}
