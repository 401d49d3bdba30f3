//! `hafill keygen`, `hafill serve`, `hafill backfill`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use hafill_engine::backfill::{self, BackfillOptions, BackfillReport};
use hafill_engine::config::Config;
use hafill_engine::io::IoChoice;
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
}

pub fn serve(a: ServeArgs) -> CmdResult {
    let config = Arc::new(Config::load(&a.config)?);
    let rt = tokio::runtime::Runtime::new()?;
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
        backfill::serve(config, shutdown).await
    })?;
    Ok(Outcome::Ok)
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
    /// Cap on the receive rate.
    #[arg(long, value_name = "RATE", value_parser = args::bitrate)]
    max_rate: Option<u64>,
    /// zstd per block: auto compresses a block only where that pays.
    #[arg(long, value_enum, default_value = "auto")]
    compress: CompressArg,
    /// Disk writes: io_uring, pwrite, or io_uring falling back to pwrite.
    #[arg(long, value_enum, default_value = "auto")]
    io: IoArg,
    /// Print one JSON summary.
    #[arg(long)]
    json: bool,
}

pub fn backfill(a: BackfillArgs) -> CmdResult {
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
    Ok(if report.failed.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Problems
    })
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
