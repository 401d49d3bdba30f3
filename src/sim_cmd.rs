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
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The store directory (created if missing).
    #[arg(long, value_name = "DIR", value_parser = args::new_or_existing_store)]
    store: PathBuf,
    /// Number of cameras: cam-0001, cam-0002, ...
    #[arg(long, value_name = "N", default_value_t = 4)]
    cameras: u32,
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
    }
}

fn record(a: RecordArgs) -> CmdResult {
    let spec = RecordSpec {
        cameras: a.cameras,
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
