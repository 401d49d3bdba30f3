//! The daemon (`hafill serve`): serves the peers, backfills by itself every
//! so often (the scrub) so the servers stay in equilibrium both ways, and
//! answers `/metrics` and `/status` over HTTP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backfill::{plan_options, BackfillError, BackfillOptions, Session};
use crate::config::Config;
use crate::identity::{self, Identity};
use crate::metrics::Metrics;
use crate::scrub::ScrubSettings;
use crate::store::StoreError;
use crate::throttle::governor::SharedThrottle;

/// The daemon's own backfill: at start and then every `every`, plan against
/// every peer and fetch what is missing, so a recorder started without the
/// gate still gets a whole timeline and servers stay in equilibrium both
/// ways. A round that finds the store locked (the gate or a manual
/// `hafill backfill` is at work) or a peer down is logged and retried next
/// round. Returns when `stop` is set.
pub async fn scrub_loop(
    config: Arc<Config>,
    (every, settings): (Duration, ScrubSettings),
    throttle: SharedThrottle,
    metrics: Option<Arc<Metrics>>,
    stop: Arc<AtomicBool>,
) {
    let opts = BackfillOptions {
        live_throttle: Some(throttle),
        metrics,
        ..BackfillOptions::default()
    };
    let mut memory = crate::scrub::ScrubMemory::default();
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let memory = &mut memory;
        let round = async {
            // Dialling a peer that is down takes its full timeout; a
            // shutdown does not wait for it (nothing is written yet).
            let mut session = tokio::select! {
                s = Session::connect(&config, &opts) => s?,
                _ = stopped(&stop) => return Ok(None),
            };
            let plan_opts = plan_options(&config, &opts);
            let (prepared, looks) =
                crate::scrub::prepare_round(&mut session, &plan_opts, t0, memory, &settings)
                    .await?;
            for (peer, l) in looks {
                tracing::info!(
                    peer = %peer,
                    full = l.full,
                    day_summaries = l.day_summaries,
                    changed_days = l.changed_days,
                    hour_summaries = l.hour_summaries,
                    changed_hours = l.changed_hours,
                    entries = l.entries,
                    wire_bytes = l.wire_bytes,
                    seconds = format!("{:.3}", t0.elapsed().as_secs_f64()),
                    "scrub: asked"
                );
            }
            if prepared.jobs() == 0 {
                session.close().await;
                return Ok(None);
            }
            Ok::<_, BackfillError>(Some(session.run(prepared, stop.clone(), t0, |_| {}).await))
        };
        match round.await {
            Ok(Some(r)) => tracing::info!(
                segments = r.segments,
                bytes = r.bytes,
                failed = r.failed.len(),
                seconds = format!("{:.1}", r.seconds),
                "scrub: backfilled"
            ),
            Ok(None) => tracing::debug!("scrub: nothing missing"),
            Err(BackfillError::Store(StoreError::Locked(_))) => {
                tracing::info!(
                    "scrub: the store is busy with another backfill; next round in {every:?}"
                )
            }
            Err(e) => tracing::warn!("scrub: {e}; next round in {every:?}"),
        }
        sleep_unless_stopped(every, &stop).await;
    }
}

/// Sleeps for `every`, or until `stop` is set (looked at five times a
/// second): the pause between the daemon's periodic rounds.
pub async fn sleep_unless_stopped(every: Duration, stop: &AtomicBool) {
    tokio::select! {
        _ = tokio::time::sleep(every) => {}
        _ = stopped(stop) => {}
    }
}

/// Resolves once `stop` is set (looked at five times a second).
pub async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How the daemon runs besides serving.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Backfill by itself this often ([`scrub_loop`]); None: only serve.
    pub scrub_every: Option<Duration>,
    /// How the scrub asks ([`crate::scrub`]).
    pub scrub: ScrubSettings,
    /// How often the HTTP side's status (and alert gauges) is taken.
    pub status_every: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            scrub_every: None,
            scrub: ScrubSettings::default(),
            status_every: Duration::from_secs(60),
        }
    }
}

/// Runs the server side until `shutdown` resolves; with `scrub_every`, the
/// daemon also backfills by itself ([`scrub_loop`]); with `[server]
/// status`, it answers `/metrics` and `/status` over HTTP.
pub async fn serve(
    config: Arc<Config>,
    opts: ServeOptions,
    throttle: SharedThrottle,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), BackfillError> {
    let me: Identity = identity::load(&config.cert, &config.key)?;
    let recorder = crate::store::open_recorder(&config, false)?;
    let (endpoint, peers) = crate::transfer::server_endpoint(&config, &me)?;
    tracing::info!(name = %config.name, listen = %config.listen, id = %me.id, congestion = %config.congestion, "serving");
    let state = Arc::new(crate::transfer::server::ServerState::new(
        config.clone(),
        recorder,
        peers,
    ));
    let ep = endpoint.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::new());
    let meter = tokio::spawn(metrics.clone().meter_rate());
    let caps = tokio::spawn(metrics.clone().meter_caps(throttle.clone()));
    let board = Arc::new(crate::http::Board::new(
        metrics.clone(),
        config.clone(),
        opts.status_every,
    ));
    // Metrics are for operators; a port already taken must not stop backfill.
    let listener = config
        .status
        .and_then(|addr| match crate::http::listen(addr, board.clone(), tokio::runtime::Handle::current()) {
            Ok(l) => {
                tracing::info!(addr = %l.addr, "the operator's page, metrics and status on http://{}/", l.addr);
                Some(l)
            }
            Err(e) => {
                tracing::error!("{e}; serving without /metrics and /status");
                None
            }
        });
    let status = listener.as_ref().map(|_| {
        tokio::spawn(crate::http::status_loop(
            config.clone(),
            board.clone(),
            opts.status_every,
            stop.clone(),
        ))
    });
    let scrub = opts.scrub_every.map(|every| {
        tokio::spawn(scrub_loop(
            config.clone(),
            (every, opts.scrub.clone()),
            throttle,
            Some(metrics.clone()),
            stop.clone(),
        ))
    });
    tokio::select! {
        _ = crate::transfer::server::run(endpoint, state) => {}
        _ = shutdown => {
            ep.close(0u32.into(), b"shutting down");
        }
    }
    // A safe point for the scrub: segments in flight finish and checkpoint.
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = scrub {
        let _ = s.await;
    }
    if let Some(s) = status {
        let _ = s.await;
    }
    meter.abort();
    caps.abort();
    drop(listener);
    ep.wait_idle().await;
    Ok(())
}
