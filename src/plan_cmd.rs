//! `hafill plan`: the gap planner between stores on this machine.

use std::path::PathBuf;

use clap::Args;
use hafill_engine::plan::{self, PlanOptions};
use hafill_engine::store::Store;
use hafill_engine::units::{format_bytes, Timestamp};
use hafill_engine::CameraId;

use crate::{args, print_json, CmdResult, Outcome};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The local store, to be filled.
    #[arg(long, value_name = "DIR", value_parser = args::existing_store)]
    store: PathBuf,
    /// A peer's store, NAME=DIR (repeatable; order is preference).
    #[arg(long = "peer-store", value_name = "NAME=DIR", value_parser = args::peer_store, required = true)]
    peer_store: Vec<(String, PathBuf)>,
    /// Local retention: nothing older is planned.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = args::duration_us)]
    retention: u64,
    /// Only this camera (repeatable).
    #[arg(long, value_name = "ID", value_parser = args::camera)]
    camera: Vec<CameraId>,
    /// Plan from this time.
    #[arg(long, value_name = "TIME", value_parser = args::time, allow_hyphen_values = true)]
    from: Option<Timestamp>,
    /// Plan up to this time.
    #[arg(long, value_name = "TIME", value_parser = args::time, allow_hyphen_values = true)]
    to: Option<Timestamp>,
    /// Print the plan as JSON: totals `segments` and `bytes` beside `gaps`.
    #[arg(long)]
    json: bool,
}

pub fn run(a: PlanArgs) -> CmdResult {
    let opts = PlanOptions {
        now: Timestamp::now(),
        retention_us: a.retention,
        from: a.from,
        to: a.to,
    };
    let cams = (!a.camera.is_empty()).then_some(a.camera.as_slice());
    let local = Store::open(&a.store)?;
    let mut peers = Vec::new();
    for (name, dir) in &a.peer_store {
        peers.push((name.clone(), Store::open(dir)?));
    }
    let p = plan::plan_stores(&local, &peers, cams, &opts)?;
    if a.json {
        print_json(&p.to_json())?;
        return Ok(Outcome::Ok);
    }
    println!(
        "{:<16} {:<28} {:<28} {:>9} {:>11}  FROM",
        "CAMERA", "GAP FROM", "GAP TO", "SEGMENTS", "BYTES"
    );
    for g in &p.gaps {
        let mut peers: Vec<&str> = g.segments.iter().map(|s| s.peer.as_str()).collect();
        peers.sort();
        peers.dedup();
        println!(
            "{:<16} {:<28} {:<28} {:>9} {:>11}  {}",
            g.camera.as_str(),
            g.from.to_string(),
            g.to.to_string(),
            g.segments.len(),
            format_bytes(g.bytes()),
            peers.join(",")
        );
    }
    for c in &p.conflicts {
        println!(
            "CONFLICT {} {}: {} and {} hold different bytes; planned from {}",
            c.camera, c.start, c.chosen, c.other, c.chosen
        );
    }
    println!(
        "plan: {} gaps, {} segments, {}",
        p.gaps.len(),
        p.segments(),
        format_bytes(p.bytes())
    );
    Ok(Outcome::Ok)
}
