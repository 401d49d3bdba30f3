//! The governor: every quarter second it sets the backfill's network and
//! disk rates from the caps in force (command line, the config's schedule
//! windows, reloaded on SIGHUP) and, on the disk side, from the AIMD
//! controller fed by the store device's busy time and our write latency.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::aimd::{Aimd, AimdConfig, DiskSample, SLOW_WRITE};
use super::disk::BusyMeter;
use super::schedule::Limits;
use super::RateLimiter;
use crate::config::Throttle;
use crate::units::Timestamp;

/// A throttle config a running daemon can swap (SIGHUP).
pub type SharedThrottle = Arc<RwLock<Throttle>>;

/// The limiters a transfer consults, and what the governor reads back.
#[derive(Debug)]
pub struct Rates {
    pub net: RateLimiter,
    pub disk: RateLimiter,
    /// Worst write latency since the governor last looked, in µs.
    pub worst_write_us: AtomicU64,
    /// Writes slower than [`SLOW_WRITE`] since the governor last looked.
    pub slow_writes: AtomicU32,
    /// Bytes written since the governor last looked.
    pub written: AtomicU64,
}

impl Rates {
    pub fn unlimited() -> Rates {
        Rates {
            net: RateLimiter::new(None),
            disk: RateLimiter::new(None),
            worst_write_us: AtomicU64::new(0),
            slow_writes: AtomicU32::new(0),
            written: AtomicU64::new(0),
        }
    }

    /// Records one write: its size and how long it took.
    pub fn note_write(&self, bytes: u64, took: Duration) {
        self.worst_write_us.fetch_max(
            took.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
        if took > SLOW_WRITE {
            self.slow_writes.fetch_add(1, Ordering::Relaxed);
        }
        self.written.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// The caps in force now (the config's schedule, capped by `cli`), and
/// whether adaptive disk control is on.
pub fn limits_now(throttle: &SharedThrottle, cli: Limits) -> (Limits, bool) {
    let at = |t: &Throttle| {
        (
            t.schedule.limits_at(Timestamp::now()).min(cli),
            t.adaptive_disk,
        )
    };
    match throttle.read() {
        Ok(t) => at(&t),
        Err(p) => at(&p.into_inner()),
    }
}

/// Sets `rates` to the caps in force now, before any transfer starts (the
/// governor then adjusts them every quarter second).
pub fn apply_caps(rates: &Rates, throttle: &SharedThrottle, cli: Limits) {
    let (limits, _) = limits_now(throttle, cli);
    rates.net.set_rate(limits.net);
    rates.disk.set_rate(limits.disk);
}

/// Runs until `stop`; `cli` caps apply on top of the config's.
pub async fn run(
    rates: Arc<Rates>,
    throttle: SharedThrottle,
    cli: Limits,
    store: std::path::PathBuf,
    stop: Arc<AtomicBool>,
) {
    let mut meter = BusyMeter::for_path(&store);
    match &meter {
        Some(m) => tracing::info!(device = m.device(), "adaptive disk control watches /dev/{}", m.device()),
        None => tracing::info!("store device not found in /proc/diskstats; adaptive disk control uses write latency only"),
    }
    let mut aimd = Aimd::new(AimdConfig::default(), 256 << 20);
    let t0 = Instant::now();
    let mut tick = t0;
    let mut last: Option<(Option<u64>, Option<u64>)> = None;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (limits, adaptive) = limits_now(&throttle, cli);
        let busy = meter.as_mut().and_then(BusyMeter::sample);
        let worst = rates.worst_write_us.swap(0, Ordering::Relaxed);
        let latency = (worst > 0).then(|| Duration::from_micros(worst));
        let slow_writes = rates.slow_writes.swap(0, Ordering::Relaxed);
        let now = Instant::now();
        let secs = now.duration_since(tick).as_secs_f64().max(0.001);
        tick = now;
        let written = (rates.written.swap(0, Ordering::Relaxed) as f64 / secs) as u64;
        let disk = if adaptive {
            let r = aimd.on_sample(DiskSample {
                at: t0.elapsed(),
                busy,
                slow_writes,
                written: Some(written),
            });
            Some(limits.disk.map_or(r, |cap| cap.min(r)))
        } else {
            limits.disk
        };
        rates.net.set_rate(limits.net);
        rates.disk.set_rate(disk);
        if last != Some((limits.net, disk)) {
            tracing::debug!(net = ?limits.net, disk = ?disk, busy = ?busy, latency = ?latency, slow_writes, written, "throttle");
            last = Some((limits.net, disk));
        }
    }
}
