//! The boot-time gate: before the recording service starts, ask the peers
//! what they recorded while we were down (each under a deadline), plan,
//! and create placeholders, so the service starts at once with a whole
//! timeline. The bytes follow in the background.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backfill::{BackfillError, BackfillOptions, BackfillReport, Placement, Session, Tick};
use crate::config::Config;
use crate::plan::PlanOptions;
use crate::store::traits::Recorder;
use crate::store::StoreError;
use crate::units::Timestamp;

/// Where the window of a boot starts: where local recording stopped (the
/// earliest last-segment end over the local cameras), but no further back
/// than `lookback`; `now - lookback` for an empty store. Reads only the last
/// day of each camera's index.
pub fn window_start(
    store: &dyn Recorder,
    now: Timestamp,
    lookback_us: u64,
) -> Result<Timestamp, StoreError> {
    let floor = now.add_micros(-(lookback_us.min(i64::MAX as u64) as i64));
    let mut earliest: Option<Timestamp> = None;
    for c in store.cameras()? {
        if let Some(end) = store.last_segment_end(&c)? {
            earliest = Some(earliest.map_or(end, |e| e.min(end)));
        }
    }
    Ok(earliest.map_or(floor, |e| e.max(floor)))
}

/// The gate's first phase: connected peers, the plan, placeholders in.
#[derive(Debug)]
pub struct Gated {
    pub session: Session,
    pub placement: Placement,
    pub window: PlanOptions,
    pub unreachable: Vec<String>,
    pub started: Instant,
}

/// Plans and places: everything the recording service waits for.
pub async fn prepare(
    config: &Config,
    opts: &BackfillOptions,
    lookback_us: u64,
) -> Result<Gated, BackfillError> {
    let started = Instant::now();
    let now = Timestamp::now();
    let from = {
        let recorder = crate::store::open_recorder(config, false)?;
        window_start(&*recorder, now, lookback_us)?
    };
    let window = PlanOptions {
        now,
        retention_us: config.retention_us,
        from: Some(opts.since.map_or(from, |s| s.max(from))),
        to: opts.until,
    };
    let mut session = Session::connect(config, opts).await?;
    let placement = session.place(&window, started).await?;
    // Not connected, or no whole coverage answer in time: asked again in
    // the background.
    let unreachable = session.unreachable();
    Ok(Gated {
        session,
        placement,
        window,
        unreachable,
        started,
    })
}

/// The gate's second phase, in the background: queue and fetch what was
/// placed, then retry the peers that did not answer at boot, every `retry`
/// until they have been heard or `stop` is set.
pub async fn backfill_in_background(
    config: Config,
    opts: BackfillOptions,
    gated: Gated,
    stop: Arc<AtomicBool>,
    retry: Duration,
    on_tick: impl Fn(Tick) + Send + Sync + Clone + 'static,
) -> Vec<BackfillReport> {
    let Gated {
        session,
        placement,
        window,
        unreachable,
        started,
    } = gated;
    let mut reports = Vec::new();
    match session.queue(placement) {
        Ok(prepared) => reports.push(
            session
                .run(prepared, stop.clone(), started, on_tick.clone())
                .await,
        ),
        Err(e) => {
            tracing::warn!("gate: reading the work left in the store failed: {e}; the daemon's scrub will fetch it");
            session.close().await;
        }
    }
    let mut waiting = unreachable;
    while !waiting.is_empty() && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(retry).await;
        let retry_opts = BackfillOptions {
            peers: waiting.clone(),
            ..opts.clone()
        };
        let t0 = Instant::now();
        let attempt = async {
            let mut s = Session::connect(&config, &retry_opts).await?;
            let prepared = s
                .prepare(
                    &PlanOptions {
                        now: Timestamp::now(),
                        ..window.clone()
                    },
                    t0,
                )
                .await?;
            // Heard: connected and answered its coverage.
            let heard: Vec<String> = waiting
                .iter()
                .filter(|p| !s.unreachable().contains(p))
                .cloned()
                .collect();
            Ok::<_, BackfillError>((
                heard,
                s.run(prepared, stop.clone(), t0, on_tick.clone()).await,
            ))
        };
        match attempt.await {
            Ok((heard, report)) => {
                if !heard.is_empty() {
                    tracing::info!(peers = ?heard, segments = report.segments, "late peers answered; their gaps were filled");
                }
                waiting.retain(|p| !heard.contains(p));
                reports.push(report);
            }
            Err(e) => tracing::warn!("retrying late peers failed: {e}"),
        }
    }
    reports
}
