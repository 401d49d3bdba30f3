//! `hafill status` and `hafill locate`: per-camera HA health and where to
//! view a moment from.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use hafill_engine::config::Config;
use hafill_engine::health::{self, SiteStatus};
use hafill_engine::units::{format_bytes, Timestamp};
use hafill_engine::CameraId;

use crate::{args, print_json, CmdResult, Outcome};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The server's config file.
    #[arg(long, value_name = "FILE", value_parser = args::config_file)]
    config: PathBuf,
    /// Look at segments from this time (default: a day ago; `-30d` for the
    /// whole retention).
    #[arg(long, value_name = "TIME", value_parser = args::time, allow_hyphen_values = true)]
    since: Option<Timestamp>,
    /// How long each peer may take to answer.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = args::duration_us)]
    timeout: u64,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the operator's page, with this status and the timelines
    /// inside, as one self-contained HTML file (for a ticket or an email).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

pub fn status(a: StatusArgs) -> CmdResult {
    let config = Config::load(&a.config)?;
    let rt = tokio::runtime::Runtime::new()?;
    let (s, timeline) = rt.block_on(health::site(
        &config,
        a.since,
        Duration::from_micros(a.timeout),
    ))?;
    if let Some(file) = &a.html {
        let page = hafill_engine::page::render(&s, &timeline, config.retention_us, false)?;
        crate::write_atomically(file, page.as_bytes())
            .map_err(|e| format!("--html {}: {e}", file.display()))?;
        eprintln!(
            "wrote {} ({}, {} cameras)",
            file.display(),
            format_bytes(page.len() as u64),
            timeline.cameras.len()
        );
    }
    if a.json {
        print_json(&s)?;
    } else {
        print_table(&s);
    }
    let critical = s
        .alerts
        .iter()
        .any(|a| a.severity == health::Severity::Critical);
    // Nothing compared against a peer: nobody knows whether the timeline
    // is whole.
    let unasked: Vec<&str> = s
        .peers
        .iter()
        .filter(|p| !p.connected)
        .map(|p| p.peer.as_str())
        .collect();
    let none_asked = !s.peers.is_empty() && unasked.len() == s.peers.len();
    if none_asked {
        eprintln!(
            "error: no peer could be asked ({}): nothing was checked against a peer",
            unasked.join(", ")
        );
    }
    Ok(if critical || none_asked {
        Outcome::Problems
    } else {
        Outcome::Ok
    })
}

fn print_table(s: &SiteStatus) {
    let peers: Vec<String> = s
        .peers
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p.peer,
                if p.connected { "ok" } else { "UNREACHABLE" }
            )
        })
        .collect();
    println!(
        "{} at {}: {} cameras, {} recording; peers: {}",
        s.server,
        s.at,
        s.overview.cameras,
        s.overview.recording,
        if peers.is_empty() {
            "none".into()
        } else {
            peers.join(", ")
        }
    );
    println!();
    println!(
        "{:<20} {:<14} {:<22} {:<4} {:<27} {:>8} {:>10} {:<27} {:>6} {:>8}",
        "CAMERA",
        "HA",
        "SERVER",
        "REC",
        "LAST SEGMENT END",
        "GAPS",
        "GAP BYTES",
        "OLDEST GAP",
        "PLACE",
        "BACKFILL"
    );
    for c in &s.cameras {
        for (i, v) in c.servers.iter().enumerate() {
            let (cam, ha) = if i == 0 {
                (c.camera.to_string(), c.ha.to_string())
            } else {
                (String::new(), String::new())
            };
            let rec = match v.recording {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            };
            // A camera the server names otherwise: "rs02 (lobby-2)".
            let server = match &v.name_there {
                Some(n) => format!("{} ({n})", v.server),
                None => v.server.clone(),
            };
            println!(
                "{:<20} {:<14} {:<22} {:<4} {:<27} {:>8} {:>10} {:<27} {:>6} {:>8}",
                cam,
                ha,
                server,
                rec,
                v.last_segment_end.as_deref().unwrap_or("-"),
                v.gaps_pending.segments,
                format_bytes(v.gaps_pending.bytes),
                v.gaps_pending.oldest.as_deref().unwrap_or("-"),
                v.placeholders
                    .map_or("-".into(), |p| p.segments.to_string()),
                v.backfill_progress
                    .map_or("-".into(), |p| format!("{:.0}%", p * 100.0)),
            );
        }
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    };
    let ids = |v: &[CameraId]| list(&v.iter().map(|c| c.to_string()).collect::<Vec<_>>());
    println!();
    println!("mismatched:   {}", ids(&s.overview.mismatched));
    println!("disconnected: {}", ids(&s.overview.disconnected));
    println!("overflow:     {}", list(&s.overview.overflow));
    if s.alerts.is_empty() {
        println!("alerts:       none");
    } else {
        println!("alerts:");
        for a in &s.alerts {
            let sev = a.severity.as_str().to_uppercase();
            println!("  {sev:<8} {:<21} {}", a.kind.as_str(), a.message);
        }
    }
}

#[derive(Debug, Args)]
pub struct LocateArgs {
    /// The camera.
    #[arg(value_parser = args::camera)]
    camera: CameraId,
    /// The moment to view (RFC 3339, `now`, `-2h`).
    #[arg(long, value_name = "TIME", value_parser = args::time, allow_hyphen_values = true)]
    at: Timestamp,
    /// The config file of one of the camera's servers.
    #[arg(long, value_name = "FILE", value_parser = args::config_file, default_value = "/etc/hafill/hafill.toml")]
    config: PathBuf,
    /// How long each peer may take to answer.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = args::duration_us)]
    timeout: u64,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

pub fn locate(a: LocateArgs) -> CmdResult {
    let config = Config::load(&a.config)?;
    let rt = tokio::runtime::Runtime::new()?;
    let (found, unreachable) = rt.block_on(health::locate(
        &config,
        &a.camera,
        a.at,
        Duration::from_micros(a.timeout),
    ))?;
    let Some(l) = found else {
        let also = if unreachable.is_empty() {
            String::new()
        } else {
            format!(" ({} could not be asked)", unreachable.join(", "))
        };
        eprintln!("no server holds {} at {}{also}", a.camera, a.at);
        return Ok(Outcome::Problems);
    };
    if a.json {
        print_json(&l)?;
    } else {
        let there = match &l.name_there {
            Some(n) => format!(", as {n}"),
            None => String::new(),
        };
        println!(
            "{} {} ({}{there}; segment from {}; held by {})",
            l.server,
            l.addr,
            if l.primary { "primary" } else { "alternative" },
            l.segment_start,
            l.holders.join(", ")
        );
    }
    Ok(Outcome::Ok)
}
