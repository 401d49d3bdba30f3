//! hafill: the command line. Parse, call the engine, print.

// Nothing from outside the process may panic us: errors are typed instead.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod args;
mod demo;
mod gate_cmd;
mod net_cmd;
mod pair_cmd;
mod plan_cmd;
mod progress;
mod sim_cmd;
mod status_cmd;
mod store_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Backfill data mover for high-availability video-surveillance recording
/// clusters: finds the holes in a recording timeline and fills them from
/// peers that recorded the same cameras.
#[derive(Debug, Parser)]
#[command(name = "hafill", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect, verify and repair a recording store.
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Synthetic recordings for tests, benchmarks and the demo.
    #[command(subcommand)]
    Sim(sim_cmd::SimCommand),
    /// Plan a backfill between stores on this machine: what the peers hold
    /// that the local store does not.
    Plan(plan_cmd::PlanArgs),
    /// Create this server's key pair and self-signed certificate; prints
    /// the ID its peers pin.
    Keygen(net_cmd::KeygenArgs),
    /// Serve coverage and segments to the configured peers, for the cameras
    /// paired with each.
    Serve(net_cmd::ServeArgs),
    /// Fetch every gap from the peers into the local store, verified.
    Backfill(net_cmd::BackfillArgs),
    /// Boot-time gate: plan and create placeholders (each peer under a
    /// deadline), start the recording service, backfill in the background.
    Gate(gate_cmd::GateArgs),
    /// Match the servers' camera inventories by IP address into the
    /// config's `[[camera]]` section; reports mismatches and conflicts.
    Pair(pair_cmd::PairArgs),
    /// Per-camera HA health: which servers record each camera, gaps
    /// pending, backfill progress; mismatched, disconnected and overflowing
    /// cameras and HA alerts.
    Status(status_cmd::StatusArgs),
    /// The server to view a camera's moment from: its primary when that
    /// holds it, else another that does.
    Locate(status_cmd::LocateArgs),
    /// Two servers on loopback, an outage, and the backfill that closes it,
    /// in a temporary directory; no configuration.
    Demo(demo::DemoArgs),
}

/// How a command ended, for the exit status.
#[derive(Debug)]
pub enum Outcome {
    /// Everything as asked: status 0.
    Ok,
    /// The command ran and found problems it reported (a mismatch, a failed
    /// segment): status 1.
    Problems,
}

/// A failure the user has to act on; printed as `error: ...`, status 1.
pub type CmdResult = Result<Outcome, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    restore_sigpipe();
    fewer_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::from(if e.kind() == DisplayHelpOnMissingArgumentOrSubcommand {
                    2
                } else {
                    0
                });
            }
            // One line: what was wrong, with which argument, in which form.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("error: invalid arguments");
            eprintln!("{first}");
            return ExitCode::from(2);
        }
    };
    // The demo speaks through its summary; other commands log their progress.
    init_logging(if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    });
    if let Command::Gate(a) = cli.command {
        return match gate_cmd::run(a) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    let result = match cli.command {
        Command::Store(c) => store_cmd::run(c),
        Command::Sim(c) => sim_cmd::run(c),
        Command::Plan(a) => plan_cmd::run(a),
        Command::Keygen(a) => net_cmd::keygen(a),
        Command::Serve(a) => net_cmd::serve(a),
        Command::Backfill(a) => net_cmd::backfill(a),
        Command::Pair(a) => pair_cmd::run(a),
        Command::Status(a) => status_cmd::status(a),
        Command::Locate(a) => status_cmd::locate(a),
        Command::Demo(a) => demo::run(a),
        Command::Gate(_) => unreachable!("handled above"),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Problems) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Rust ignores SIGPIPE; a command-line tool piped into `head` should end
/// quietly as other Unix tools do, not panic on the closed pipe.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_DFL before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Two malloc arenas instead of glibc's eight per core. Blocks of a
/// megabyte are allocated and freed on many threads (runtime workers, the
/// blocking pool, rayon); each thread's arena kept what it freed, and a
/// `hafill serve` bounded at 192 MiB of fetch buffers peaked at 211-236
/// MiB resident, 145-152 MiB with two arenas (`tests/serve_memory.rs`,
/// `docs/transfer.md`). `MALLOC_ARENA_MAX` in the environment still wins.
#[allow(unsafe_code)]
fn fewer_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: a malloc tunable, set before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HAFILL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Prints a value as pretty JSON on standard output.
/// Writes `bytes` to a temporary file beside `path`, syncs, and renames it
/// into place: a crash leaves the old file or the new one, never half.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

pub fn print_json(v: &impl serde::Serialize) -> Result<(), Box<dyn std::error::Error>> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
