//! The daemon's counters and gauges, in the Prometheus text format.
//!
//! Backfill updates them as it goes; the status task sets the peer and
//! alert gauges from its last look at the site.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::health::{AlertKind, Severity, SiteStatus};
use crate::throttle::governor::{limits_now, SharedThrottle};
use crate::throttle::schedule::Limits;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    kind: String,
    severity: String,
}

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    bytes: Counter,
    segments: Counter,
    rate: Gauge<f64, AtomicU64>,
    pending_segments: Gauge,
    pending_bytes: Gauge,
    placeholders: Gauge,
    verify_failures: Counter,
    failed_segments: Counter,
    rounds: Counter,
    peer_up: Family<PeerLabel, Gauge>,
    alerts: Family<AlertLabels, Gauge>,
    status_age: Gauge<f64, AtomicU64>,
    net_cap: Gauge,
    disk_cap: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            bytes: Counter::default(),
            segments: Counter::default(),
            rate: Gauge::default(),
            pending_segments: Gauge::default(),
            pending_bytes: Gauge::default(),
            placeholders: Gauge::default(),
            verify_failures: Counter::default(),
            failed_segments: Counter::default(),
            rounds: Counter::default(),
            peer_up: Family::default(),
            alerts: Family::default(),
            status_age: Gauge::default(),
            net_cap: Gauge::default(),
            disk_cap: Gauge::default(),
            registry: Registry::with_prefix("hafill"),
        };
        m.registry.register(
            "backfilled_bytes",
            "Bytes backfilled from peers, verified and durable",
            m.bytes.clone(),
        );
        m.registry.register(
            "backfilled_segments",
            "Segments backfilled from peers",
            m.segments.clone(),
        );
        m.registry.register(
            "backfill_rate_bytes_per_second",
            "Backfill rate over the last second",
            m.rate.clone(),
        );
        m.registry.register(
            "gaps_pending_segments",
            "Segments the current backfill still has to fetch",
            m.pending_segments.clone(),
        );
        m.registry.register(
            "gaps_pending_bytes",
            "Bytes the current backfill still has to fetch",
            m.pending_bytes.clone(),
        );
        m.registry.register(
            "placeholders_outstanding",
            "Placeholders in the store not yet filled",
            m.placeholders.clone(),
        );
        m.registry.register(
            "verify_failures",
            "Segment fetches refused because the bytes did not match their BLAKE3",
            m.verify_failures.clone(),
        );
        m.registry.register(
            "failed_segments",
            "Segments no peer could deliver in a round",
            m.failed_segments.clone(),
        );
        m.registry.register(
            "backfill_rounds",
            "Backfill rounds run by the daemon",
            m.rounds.clone(),
        );
        m.registry.register(
            "peer_up",
            "1 if the peer answered at the last contact, else 0",
            m.peer_up.clone(),
        );
        m.registry.register(
            "alerts",
            "HA alerts standing at the last status, by kind and severity",
            m.alerts.clone(),
        );
        m.registry.register(
            "status_age_seconds",
            "Seconds since the status behind the alert gauges was taken",
            m.status_age.clone(),
        );
        m.registry.register(
            "throttle_net_cap_bytes_per_second",
            "Network cap in force now, from [throttle] and its windows as last loaded (0: none)",
            m.net_cap.clone(),
        );
        m.registry.register(
            "throttle_disk_cap_bytes_per_second",
            "Disk write cap in force now, before adaptive control, from [throttle] and its windows as last loaded (0: none)",
            m.disk_cap.clone(),
        );
        m
    }

    /// A round planned `segments` of `bytes` to fetch.
    pub fn planned(&self, segments: u64, bytes: u64) {
        self.rounds.inc();
        self.pending_segments.set(segments as i64);
        self.pending_bytes.set(bytes as i64);
        self.placeholders.set(segments as i64);
    }

    /// One segment made whole.
    pub fn segment_done(&self, bytes: u64) {
        self.bytes.inc_by(bytes);
        self.segments.inc();
        self.pending_segments.dec();
        self.pending_bytes.dec_by(bytes as i64);
        self.placeholders.dec();
    }

    /// One segment no peer delivered this round (it stays a placeholder).
    pub fn segment_failed(&self, bytes: u64) {
        self.failed_segments.inc();
        self.pending_segments.dec();
        self.pending_bytes.dec_by(bytes as i64);
    }

    pub fn verify_failed(&self) {
        self.verify_failures.inc();
    }

    pub fn peer(&self, peer: &str, up: bool) {
        self.peer_up
            .get_or_create(&PeerLabel { peer: peer.into() })
            .set(i64::from(up));
    }

    pub fn backfilled_bytes(&self) -> u64 {
        self.bytes.get()
    }

    /// Sets the alert gauges (every kind and severity, zeros included) and
    /// the peers' state from a status.
    pub fn set_status(&self, s: &SiteStatus) {
        for kind in AlertKind::ALL {
            for sev in Severity::ALL {
                let n = s
                    .alerts
                    .iter()
                    .filter(|a| a.kind == kind && a.severity == sev)
                    .count();
                self.alerts
                    .get_or_create(&AlertLabels {
                        kind: kind.as_str().into(),
                        severity: sev.as_str().into(),
                    })
                    .set(n as i64);
            }
        }
        for p in &s.peers {
            self.peer(&p.peer, p.connected);
        }
    }

    pub fn set_status_age(&self, age: Duration) {
        self.status_age.set(age.as_secs_f64());
    }

    /// Sets the cap gauges; `None` (no cap) shows as 0.
    pub fn set_caps(&self, caps: Limits) {
        let gauge = |cap: Option<u64>| cap.map_or(0, |c| c.min(i64::MAX as u64) as i64);
        self.net_cap.set(gauge(caps.net));
        self.disk_cap.set(gauge(caps.disk));
    }

    /// Sets the cap gauges once a second from the throttle config in force
    /// (its schedule windows move with the clock; SIGHUP swaps it), until
    /// the returned task is dropped or aborted.
    pub async fn meter_caps(self: Arc<Self>, throttle: SharedThrottle) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let (caps, _) = limits_now(&throttle, Limits::default());
            self.set_caps(caps);
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Sets the rate gauge once a second from the byte counter, until the
    /// returned task is dropped or aborted.
    pub async fn meter_rate(self: Arc<Self>) {
        let last = AtomicU64::new(self.bytes.get());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = self.bytes.get();
            let before = last.swap(now, Ordering::Relaxed);
            self.rate.set(now.saturating_sub(before) as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backfill_progress_shows_in_the_text() {
        let m = Metrics::new();
        m.planned(3, 300);
        m.segment_done(100);
        m.segment_failed(100);
        m.verify_failed();
        m.peer("rs01", true);
        m.set_caps(Limits {
            net: Some(25_000_000),
            disk: None,
        });
        let t = m.encode();
        for line in [
            "hafill_backfilled_bytes_total 100",
            "hafill_gaps_pending_segments 1",
            "hafill_gaps_pending_bytes 100",
            "hafill_verify_failures_total 1",
            "hafill_peer_up{peer=\"rs01\"} 1",
            "hafill_throttle_net_cap_bytes_per_second 25000000",
            "hafill_throttle_disk_cap_bytes_per_second 0",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} not in\n{t}");
        }
    }
}
