//! `hafill keygen`, `hafill serve`, `hafill backfill`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use hafill_engine::backfill::{self, BackfillOptions, BackfillReport};
use hafill_engine::config::Config;
use hafill_engine::io::IoChoice;
use hafill_engine::throttle::governor::SharedThrottle;
use hafill_engine::transfer::Congestion;
use hafill_engine::units::{format_bytes, Timestamp};
use hafill_engine::{identity, CameraId};
use hafill_protocol::Compression;

use crate::progress::Progress;
use crate::{args, print_json, CmdResult, Outcome};

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Folder for key.pem and cert.pem (created; existing files are kept).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Name written into the certificate.
    #[arg(long, default_value = "server", value_parser = args::peer_name)]
    name: String,
}

pub fn keygen(a: KeygenArgs) -> CmdResult {
    let id = identity::generate(&a.out, &a.name)?;
    eprintln!(
        "wrote {}/key.pem and {}/cert.pem",
        a.out.display(),
        a.out.display()
    );
    println!("{id}");
    Ok(Outcome::Ok)
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The server's config file.
    #[arg(long, value_name = "FILE", value_parser = args::config_file)]
    config: PathBuf,
    /// Backfill by itself at start and then this often: plan against every
    /// peer and fetch what is missing (equilibrium both ways).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = args::duration_us)]
    scrub_every: u64,
    /// Only serve; never backfill by itself.
    #[arg(long)]
    no_scrub: bool,
    /// How often a scrub round asks the peers for the whole window's
    /// segment lists; the rounds between ask for what changed only (from
    /// per camera-day and camera-hour summaries). A full round also finds
    /// segments this server lost.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = args::duration_us)]
    scrub_full_every: u64,
    /// About how many segments (all peers together) one part of a full
    /// scrub round asks for: whole cameras, planned a part at a time. The
    /// peers' lists a full round holds at once follow it (about 320 bytes
    /// a segment); the plan grows with what is missing.
    #[arg(long, value_name = "SEGMENTS", default_value_t = hafill_engine::scrub::PART_ENTRIES, value_parser = clap::value_parser!(u64).range(1..))]
    scrub_part: u64,
    /// How often the HTTP side (`[server] status`) takes the site status
    /// behind the operator's page, `/status`, `/timeline` and the alert
    /// gauges (it asks every peer).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = args::duration_us)]
    status_every: u64,
    /// Congestion controller for what this server sends (overrides
    /// `[server] congestion`): ledbat yields to live streams.
    #[arg(long, value_enum)]
    congestion: Option<CongestionArg>,
    /// CPU and I/O scheduling: `idle` (SCHED_IDLE, idle I/O class) runs
    /// serving and backfill only when live recording leaves a core free.
    #[arg(long, value_enum, default_value = "idle")]
    cpu: CpuArg,
}

/// Whose CPU comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CpuArg {
    /// `SCHED_IDLE` and the idle I/O class: run only when live recording
    /// (and everything else) leaves a core and the disk free.
    Idle,
    /// The normal scheduler, at whatever nice value the process has.
    Normal,
}

/// Applies `--cpu` to every thread of this process.
pub fn apply_cpu(cpu: CpuArg) {
    if cpu == CpuArg::Idle {
        let n = hafill_engine::throttle::cpu::yield_to_live();
        tracing::debug!(threads = n, "CPU: SCHED_IDLE, I/O: idle class");
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CongestionArg {
    Ledbat,
    Cubic,
    Bbr,
}

pub fn serve(a: ServeArgs) -> CmdResult {
    apply_cpu(a.cpu);
    let scrub_every =
        (!a.no_scrub).then(|| std::time::Duration::from_micros(a.scrub_every.max(1_000_000)));
    let mut config = Config::load(&a.config)?;
    if let Some(c) = a.congestion {
        config.congestion = match c {
            CongestionArg::Ledbat => Congestion::Ledbat,
            CongestionArg::Cubic => Congestion::Cubic,
            CongestionArg::Bbr => Congestion::Bbr,
        };
    }
    let config = Arc::new(config);
    let throttle = Arc::new(std::sync::RwLock::new(config.throttle.clone()));
    let rt = tokio::runtime::Runtime::new()?;
    rt.spawn(reload_on_sighup(a.config.clone(), throttle.clone()));
    rt.block_on(async move {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down");
        };
        let opts = hafill_engine::daemon::ServeOptions {
            scrub_every,
            scrub: hafill_engine::scrub::ScrubSettings {
                full_every: std::time::Duration::from_micros(a.scrub_full_every),
                part_entries: a.scrub_part,
            },
            status_every: std::time::Duration::from_micros(a.status_every.max(1_000_000)),
        };
        hafill_engine::daemon::serve(config, opts, throttle, shutdown).await
    })?;
    Ok(Outcome::Ok)
}

/// On SIGHUP, re-reads the config and applies its `[throttle]` section to
/// the running daemon (transfers in flight keep going at the new rates); a
/// config that does not load is reported and the old one kept.
async fn reload_on_sighup(path: PathBuf, throttle: SharedThrottle) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match Config::load(&path) {
            Ok(c) => {
                match throttle.write() {
                    Ok(mut t) => *t = c.throttle,
                    Err(p) => *p.into_inner() = c.throttle,
                }
                tracing::info!(
                    "SIGHUP: reloaded [throttle] from {} (other sections apply at restart)",
                    path.display()
                );
            }
            Err(e) => tracing::error!("SIGHUP: {e}; keeping the running config"),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompressArg {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum IoArg {
    Auto,
    Uring,
    Pwrite,
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The server's config file.
    #[arg(long, value_name = "FILE", value_parser = args::config_file)]
    config: PathBuf,
    /// Only from this peer (repeatable; default all).
    #[arg(long = "from", value_name = "PEER", value_parser = args::peer_name)]
    from: Vec<String>,
    /// Only this camera (repeatable; default all paired).
    #[arg(long, value_name = "ID", value_parser = args::camera)]
    camera: Vec<CameraId>,
    /// Only segments from this time (default: now minus retention).
    #[arg(long, value_name = "TIME", value_parser = args::time, allow_hyphen_values = true)]
    since: Option<Timestamp>,
    /// Only segments before this time.
    #[arg(long, value_name = "TIME", value_parser = args::time, allow_hyphen_values = true)]
    until: Option<Timestamp>,
    /// Segments in flight per connection (one QUIC stream each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    streams: u16,
    /// QUIC connections per peer, each on its own socket.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    connections: u16,
    /// Block size: a power of two from 1KiB to 16MiB.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = args::block_size)]
    block_size: u32,
    /// Verified bytes per segment written before they are made durable
    /// (what a crash may fetch again).
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = args::size)]
    window: u64,
    /// Cap on the receive rate (on top of the config's `[throttle]`).
    #[arg(long, value_name = "RATE", value_parser = args::bitrate)]
    max_rate: Option<u64>,
    /// Cap on the disk write rate, bytes per second (`80MiB`).
    #[arg(long, value_name = "SIZE", value_parser = args::size)]
    max_disk_rate: Option<u64>,
    /// No adaptive disk control: write as fast as the caps allow, even
    /// when the store device is busy with live recording.
    #[arg(long)]
    no_adaptive: bool,
    /// Longest wait for one whole frame from a peer; a peer that stalls or
    /// drips bytes longer is cut off for the run.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = args::duration_us)]
    stall_timeout: u64,
    /// Read each finished segment back from the disk (O_DIRECT, past the
    /// page cache) and hash it before it is installed. Without it, each
    /// block verified as it arrived is the proof; with it, the disk is
    /// checked too, at the cost of reading every byte again.
    #[arg(long)]
    verify_readback: bool,
    /// zstd per block: auto compresses a block only where that pays.
    #[arg(long, value_enum, default_value = "auto")]
    compress: CompressArg,
    /// Disk writes: io_uring, pwrite, or io_uring falling back to pwrite.
    #[arg(long, value_enum, default_value = "auto")]
    io: IoArg,
    /// CPU and I/O scheduling: `idle` (SCHED_IDLE, idle I/O class) runs the
    /// backfill only when live recording leaves a core free.
    #[arg(long, value_enum, default_value = "idle")]
    cpu: CpuArg,
    /// Print one JSON summary.
    #[arg(long)]
    json: bool,
}

pub fn backfill(a: BackfillArgs) -> CmdResult {
    apply_cpu(a.cpu);
    let config = Config::load(&a.config)?;
    let opts = BackfillOptions {
        peers: a.from,
        cameras: a.camera,
        since: a.since,
        until: a.until,
        streams: a.streams as usize,
        connections: a.connections as usize,
        block_size: a.block_size,
        window: a.window,
        max_rate: a.max_rate.map(|bits| bits / 8),
        max_disk_rate: a.max_disk_rate,
        adaptive_disk: a.no_adaptive.then_some(false),
        stall: std::time::Duration::from_micros(a.stall_timeout.max(1_000)),
        verify_readback: a.verify_readback,
        compression: match a.compress {
            CompressArg::Auto => Compression::Auto,
            CompressArg::On => Compression::On,
            CompressArg::Off => Compression::Off,
        },
        io: match a.io {
            IoArg::Auto => IoChoice::Auto,
            IoArg::Uring => IoChoice::Uring,
            IoArg::Pwrite => IoChoice::Pwrite,
        },
        ..BackfillOptions::default()
    };
    let report = run_backfill(&config, &opts, a.json)?;
    if a.json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    if report.nothing_checked() {
        eprintln!(
            "error: no peer could be asked what it holds, so the timeline was not checked: {}",
            if report.unasked().is_empty() {
                "no [[peer]] in the config (or none selected)".to_string()
            } else {
                report
                    .unasked()
                    .iter()
                    .map(|(p, why)| format!("{p} ({why})"))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        );
    }
    Ok(
        if report.failed.is_empty()
            && report.placement.no_room_segments == 0
            && report.placement.refused_segments == 0
            && !report.nothing_checked()
        {
            Outcome::Ok
        } else {
            Outcome::Problems
        },
    )
}

/// Runs a backfill with a progress bar (or log lines) on its own runtime.
pub fn run_backfill(
    config: &Config,
    opts: &BackfillOptions,
    quiet: bool,
) -> Result<BackfillReport, Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Runtime::new()?;
    let progress = Arc::new(std::sync::Mutex::new(Progress::new(
        "backfill", 0, true, quiet,
    )));
    let p = progress.clone();
    let report = rt.block_on(backfill::backfill(config, opts, move |t| {
        if let Ok(mut p) = p.lock() {
            p.set(t.bytes_done, t.bytes_total);
        }
    }))?;
    // The ticker may still hold its clone; finish through the lock.
    if let Ok(mut p) = progress.lock() {
        p.finish();
    }
    Ok(report)
}

pub fn print_report(r: &BackfillReport) {
    for p in &r.peers {
        if let Some(e) = &p.error {
            println!("peer {}: not used: {e}", p.peer);
        }
    }
    for f in &r.failed {
        println!(
            "FAILED {} {} (from {}): {}",
            f.camera,
            f.start,
            f.peers.join(","),
            f.reason
        );
    }
    if r.placement.no_room_segments > 0 {
        println!(
            "NO ROOM for {} segments ({}): the free-space reserve for live recording would be crossed; the oldest gaps wait until space frees up",
            r.placement.no_room_segments,
            format_bytes(r.placement.no_room_bytes)
        );
    }
    if r.placement.refused_segments > 0 {
        println!(
            "REFUSED {} segments: the recorder would not take them (the log says why)",
            r.placement.refused_segments
        );
    }
    println!(
        "backfilled {} segments, {} verified ({} on the wire) in {:.1}s: {:.1} MiB/s; {} refetched; {} failed; writes via {}",
        r.segments,
        format_bytes(r.bytes),
        format_bytes(r.wire_bytes),
        r.seconds,
        r.rate_mib_s,
        format_bytes(r.refetched_bytes),
        r.failed.len(),
        r.io
    );
}
