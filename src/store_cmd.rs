//! `hafill store init | ls | verify | rebuild | gc`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use hafill_engine::segment::SegmentJson;
use hafill_engine::store::{self, Store};
use hafill_engine::units::{format_bytes, Timestamp, MAX_TIME, MIN_TIME};
use hafill_engine::CameraId;
use serde::Serialize;

use crate::{args, print_json, CmdResult, Outcome};

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Make the store (or, beside a recorder, hafill's state folder) that a
    /// config names. hafill never makes one on its own: a missing store
    /// most often means a volume that is not mounted.
    Init(InitArgs),
    /// List segments and coverage runs.
    Ls(LsArgs),
    /// Re-hash every complete segment (in parallel) and report mismatches;
    /// exit status 1 if any.
    Verify(VerifyArgs),
    /// Rebuild the index from the segment files alone.
    Rebuild(RebuildArgs),
    /// Release the placeholders that can no longer be filled (older than
    /// the retention, or whose source no peer holds any more), with a
    /// report; exit status 1 if a peer could not be asked.
    Gc(GcArgs),
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// The server's config file.
    #[arg(long, value_name = "FILE", value_parser = args::config_file)]
    config: PathBuf,
    /// Report what would be released; release nothing.
    #[arg(long)]
    dry_run: bool,
    /// How long each peer may take to connect and answer.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = args::duration_us)]
    timeout: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The server's config file: its `[server] store` (native), or its
    /// `[server] state` beside the `[recorder] path`.
    #[arg(long, value_name = "FILE", value_parser = args::config_file, required_unless_present = "store", conflicts_with = "store")]
    config: Option<PathBuf>,
    /// A native store folder (new, or empty; its parent must exist).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// The store directory.
    #[arg(long, value_name = "DIR", value_parser = args::existing_store)]
    store: PathBuf,
    /// Only this camera (repeatable).
    #[arg(long, value_name = "ID", value_parser = args::camera)]
    camera: Vec<CameraId>,
    /// From this time (RFC 3339, `now`, `-2h`).
    #[arg(long, value_name = "TIME", value_parser = args::time, allow_hyphen_values = true)]
    from: Option<Timestamp>,
    /// Up to this time.
    #[arg(long, value_name = "TIME", value_parser = args::time, allow_hyphen_values = true)]
    to: Option<Timestamp>,
    /// Print JSON: every segment and every coverage run.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[arg(long, value_name = "DIR", value_parser = args::existing_store)]
    store: PathBuf,
    /// Only this camera.
    #[arg(long, value_name = "ID", value_parser = args::camera)]
    camera: Option<CameraId>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    #[arg(long, value_name = "DIR", value_parser = args::existing_store)]
    store: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: StoreCommand) -> CmdResult {
    match cmd {
        StoreCommand::Init(a) => init(a),
        StoreCommand::Ls(a) => ls(a),
        StoreCommand::Verify(a) => verify(a),
        StoreCommand::Rebuild(a) => rebuild(a),
        StoreCommand::Gc(a) => gc(a),
    }
}

#[derive(Serialize)]
struct RunJson {
    from: String,
    to: String,
    from_us: i64,
    to_us: i64,
}

#[derive(Serialize)]
struct CameraJson<'a> {
    camera: &'a CameraId,
    segments: Vec<SegmentJson<'a>>,
    runs: Vec<RunJson>,
}

#[derive(Serialize)]
struct LsJson<'a> {
    segments: u64,
    bytes: u64,
    cameras: Vec<CameraJson<'a>>,
}

fn ls(a: LsArgs) -> CmdResult {
    let store = Store::open(&a.store)?;
    let cameras = if a.camera.is_empty() {
        store.cameras()?
    } else {
        a.camera.clone()
    };
    let (from, to) = (a.from.unwrap_or(MIN_TIME), a.to.unwrap_or(MAX_TIME));
    let mut listing = Vec::new();
    for c in &cameras {
        let segs = if a.from.is_none() && a.to.is_none() {
            store.all_segments(c)?
        } else {
            store.segments(c, from, to)?
        };
        listing.push((c, segs));
    }
    let total_segments: u64 = listing.iter().map(|(_, s)| s.len() as u64).sum();
    let total_bytes: u64 = listing
        .iter()
        .flat_map(|(_, s)| s.iter().map(|m| m.len))
        .sum();
    if a.json {
        let j = LsJson {
            segments: total_segments,
            bytes: total_bytes,
            cameras: listing
                .iter()
                .map(|(c, segs)| CameraJson {
                    camera: c,
                    segments: segs.iter().map(SegmentJson::from).collect(),
                    runs: store::runs_of(segs)
                        .runs()
                        .map(|r| RunJson {
                            from: Timestamp(r.start).to_string(),
                            to: Timestamp(r.end).to_string(),
                            from_us: r.start,
                            to_us: r.end,
                        })
                        .collect(),
                })
                .collect(),
        };
        print_json(&j)?;
        return Ok(Outcome::Ok);
    }
    println!(
        "{:<16} {:<28} {:<28} {:>9} {:>11}  STATES",
        "CAMERA", "FROM", "TO", "SEGMENTS", "BYTES"
    );
    for (c, segs) in &listing {
        for run in store::runs_of(segs).runs() {
            let in_run: Vec<_> = segs
                .iter()
                .filter(|s| s.start.0 >= run.start && s.end().0 <= run.end)
                .cloned()
                .collect();
            let mut states: Vec<_> = store::count_states(&in_run).into_iter().collect();
            states.sort();
            let states: Vec<String> = states.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "{:<16} {:<28} {:<28} {:>9} {:>11}  {}",
                c.as_str(),
                Timestamp(run.start).to_string(),
                Timestamp(run.end).to_string(),
                in_run.len(),
                format_bytes(in_run.iter().map(|s| s.len).sum()),
                states.join(" ")
            );
        }
    }
    println!(
        "{} cameras, {total_segments} segments, {}",
        listing.len(),
        format_bytes(total_bytes)
    );
    Ok(Outcome::Ok)
}

fn verify(a: VerifyArgs) -> CmdResult {
    let store = Store::open(&a.store)?;
    let report = store.verify(a.camera.as_ref())?;
    if a.json {
        print_json(&report)?;
    } else {
        for p in &report.problems {
            println!(
                "MISMATCH {} {} {}: {}",
                p.camera, p.start, p.path, p.problem
            );
        }
        println!(
            "verified {} complete segments ({}): {} mismatches",
            report.segments,
            format_bytes(report.bytes),
            report.problems.len()
        );
    }
    Ok(if report.problems.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Problems
    })
}

fn init(a: InitArgs) -> CmdResult {
    let made = match (&a.config, a.store) {
        (Some(file), _) => store::init(&hafill_engine::config::Config::load(file)?)?,
        (None, Some(dir)) => store::init_native(&dir)?,
        (None, None) => unreachable!("clap requires --config or --store"),
    };
    match made {
        store::Init::Made(p) => println!("made {}", p.display()),
        store::Init::Present(p) => println!("{} is ready already; nothing changed", p.display()),
    }
    Ok(Outcome::Ok)
}

fn rebuild(a: RebuildArgs) -> CmdResult {
    let store = Store::open_to_rebuild(&a.store)?;
    let report = store.rebuild()?;
    if a.json {
        print_json(&report)?;
    } else {
        for s in &report.skipped {
            println!("skipped {s}");
        }
        println!(
            "rebuilt the index: {} cameras, {} segments, {} files skipped",
            report.cameras,
            report.segments,
            report.skipped.len()
        );
    }
    Ok(Outcome::Ok)
}

fn gc(a: GcArgs) -> CmdResult {
    let config = hafill_engine::config::Config::load(&a.config)?;
    let timeout = std::time::Duration::from_micros(a.timeout);
    let opts = hafill_engine::backfill::BackfillOptions {
        connect_timeout: timeout,
        coverage_deadline: timeout,
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(hafill_engine::gc::gc(&config, &opts, a.dry_run))?;
    if a.json {
        print_json(&report)?;
    } else {
        let verb = if a.dry_run {
            "would release"
        } else {
            "released"
        };
        for r in &report.released {
            println!(
                "{verb} {} {} ({}): {}",
                r.camera,
                r.start,
                format_bytes(r.bytes),
                r.why
            );
        }
        println!(
            "{} unfinished reservations: {verb} {} ({}), kept {}",
            report.outstanding,
            report.released.len(),
            format_bytes(report.released_bytes),
            report.kept
        );
    }
    if !report.not_asked.is_empty() {
        eprintln!(
            "error: could not ask {}: only reservations older than the retention were considered",
            report.not_asked.join(", ")
        );
        return Ok(Outcome::Problems);
    }
    Ok(Outcome::Ok)
}
