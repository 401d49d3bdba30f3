//! `hafill gate`: plan and placeholders, then the recording service, then
//! the backfill in the background.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use hafill_engine::backfill::BackfillOptions;
use hafill_engine::config::Config;
use hafill_engine::gate;
use hafill_engine::units::format_bytes;

use crate::args;

#[derive(Debug, Args)]
pub struct GateArgs {
    /// The server's config file.
    #[arg(long, value_name = "FILE", value_parser = args::config_file)]
    config: PathBuf,
    /// How long each peer may take to answer; a slower peer is skipped and
    /// asked again later, in the background.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = args::duration_us)]
    deadline: u64,
    /// How far back to look when local recording stopped long ago (or never
    /// ran); older gaps are left to `hafill serve`'s scrub.
    #[arg(long, value_name = "DURATION", default_value = "1d", value_parser = args::duration_us)]
    lookback: u64,
    /// Placeholders as holes (no blocks allocated) instead of `fallocate`.
    #[arg(long)]
    sparse: bool,
    /// Plan and create placeholders, then exit 0 (for systemd's
    /// `ExecStartPre=`); the backfill is left to `hafill serve`.
    #[arg(long)]
    then_exit: bool,
    /// The recording service and its arguments, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub fn run(a: GateArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if a.command.is_empty() && !a.then_exit {
        eprintln!("error: give the recording service after `--` (hafill gate --config FILE -- COMMAND ...), or --then-exit");
        return Ok(ExitCode::from(2));
    }
    let rt = tokio::runtime::Runtime::new()?;
    // Planning may fail (a broken config, an unreadable store): that is
    // reported, and the recording service starts all the same.
    let planned = plan_and_place(&rt, &a);
    if let Err(e) = &planned {
        tracing::error!("gate: {e}; no placeholders were made");
        if a.then_exit {
            return Ok(ExitCode::from(1));
        }
        tracing::warn!("gate: starting the recording service anyway");
    }
    if a.then_exit {
        return Ok(ExitCode::SUCCESS);
    }

    // The recording service starts now, with our standard streams.
    let mut child = std::process::Command::new(&a.command[0])
        .args(&a.command[1..])
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", a.command[0]))?;
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    // The service runs normally; what the gate still does (the backfill)
    // yields the CPU to it.
    hafill_engine::throttle::cpu::yield_to_live();
    let stop = Arc::new(AtomicBool::new(false));
    let background = planned.ok().map(|(config, opts, gated)| {
        rt.spawn(gate::backfill_in_background(
            config,
            opts,
            gated,
            stop.clone(),
            Duration::from_secs(10),
            |_| {},
        ))
    });
    // systemd stops the gate: pass the signal on to the service.
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        loop {
            let sig = tokio::select! {
                _ = term.recv() => rustix::process::Signal::TERM,
                _ = int.recv() => rustix::process::Signal::INT,
            };
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
    });
    let status = child.wait()?;
    // A safe point: no new segment is started; those in flight finish and
    // checkpoint.
    stop.store(true, Ordering::Relaxed);
    if let Some(Ok(reports)) = background.map(|b| rt.block_on(b)) {
        let (segments, bytes): (u64, u64) = reports
            .iter()
            .fold((0, 0), |(s, b), r| (s + r.segments, b + r.bytes));
        let failed: usize = reports.iter().map(|r| r.failed.len()).sum();
        tracing::info!(
            segments,
            bytes,
            failed,
            "gate: backfill stopped with the service"
        );
    }
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// The part the recording service waits for: config, plan, placeholders.
fn plan_and_place(
    rt: &tokio::runtime::Runtime,
    a: &GateArgs,
) -> Result<(Config, BackfillOptions, gate::Gated), Box<dyn std::error::Error>> {
    let config = Config::load(&a.config)?;
    let opts = BackfillOptions {
        connect_timeout: Duration::from_micros(a.deadline),
        coverage_deadline: Duration::from_micros(a.deadline),
        sparse: a.sparse,
        ..BackfillOptions::default()
    };
    let gated = rt.block_on(gate::prepare(&config, &opts, a.lookback))?;
    let p = &gated.placement.summary;
    if !config.peers.is_empty() && gated.unreachable.len() == config.peers.len() {
        tracing::error!(
            "gate: no peer could be asked what it holds ({}): the timeline is not known to be whole; the background asks them again every 10 s",
            gated.unreachable.join(", ")
        );
    }
    tracing::info!(
        placeholders = p.placeholders_created,
        bytes = p.planned_bytes,
        seconds = format!("{:.2}", p.placeholders_seconds),
        unreachable = ?gated.unreachable,
        "gate: timeline whole with placeholders"
    );
    if p.no_room_segments > 0 {
        tracing::warn!(
            "gate: {} segments ({}) left without placeholder: the reserve for live recording would be crossed",
            p.no_room_segments,
            format_bytes(p.no_room_bytes)
        );
    }
    if p.refused_segments > 0 {
        tracing::error!(
            "gate: {} segments refused by the recorder (see above); they stay missing",
            p.refused_segments
        );
    }
    Ok((config, opts, gated))
}
