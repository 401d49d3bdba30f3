//! The daemon's counters and gauges, in the Prometheus text format.
//!
//! Backfill updates them as it goes; the status task sets the peer and
//! alert gauges from its last look at the site.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use serde::Serialize;

use crate::camera::CameraId;
use crate::health::{AlertKind, Severity, SiteStatus};
use crate::segment::SegmentMeta;
use crate::throttle::governor::{limits_now, SharedThrottle};
use crate::throttle::schedule::Limits;
use crate::units::Timestamp;

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
    peer_bytes: Family<PeerLabel, Counter>,
    status_gaps: Gauge,
    oldest_gap: Gauge<f64, AtomicU64>,
    progress: Mutex<Flow>,
}

/// Seconds over which the page's backfill rate (and so its ETA) is
/// averaged.
const RATE_WINDOW: usize = 10;

/// What the backfill is doing now, for the operator's page.
#[derive(Debug, Default)]
struct Flow {
    in_flight: BTreeMap<(CameraId, i64), InFlight>,
    /// Bytes and segments done per peer, and the bytes a second ago.
    peers: BTreeMap<String, PeerFlow>,
    /// The byte counter at each of the last seconds, newest last.
    totals: VecDeque<u64>,
}

#[derive(Debug, Default, Clone)]
struct PeerFlow {
    bytes: u64,
    segments: u64,
    window: VecDeque<u64>,
}

/// A segment being fetched now.
#[derive(Debug, Clone, Serialize)]
pub struct InFlight {
    /// The camera as this server's recorder names it.
    pub camera: CameraId,
    pub start: i64,
    pub end: i64,
    pub peer: String,
}

/// A peer's share of the backfill since the daemon started.
#[derive(Debug, Clone, Serialize)]
pub struct PeerProgress {
    pub peer: String,
    /// Verified and durable.
    pub bytes: u64,
    pub segments: u64,
    /// Bytes per second over the last seconds.
    pub rate: f64,
    pub in_flight: usize,
}

/// The backfill's progress, as the operator's page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// What the current round still has to fetch.
    pub pending_segments: u64,
    pub pending_bytes: u64,
    /// Bytes per second over the last seconds, all peers.
    pub rate: f64,
    /// Seconds left at that rate; None when nothing is pending or nothing
    /// moves.
    pub eta_seconds: Option<f64>,
    pub peers: Vec<PeerProgress>,
    pub in_flight: Vec<InFlight>,
}

/// Mean bytes per second over a window of byte counts taken a second
/// apart.
fn mean_rate(window: &VecDeque<u64>) -> f64 {
    match (window.front(), window.back()) {
        (Some(a), Some(b)) if window.len() > 1 => {
            b.saturating_sub(*a) as f64 / (window.len() - 1) as f64
        }
        _ => 0.0,
    }
}

fn push_sample(window: &mut VecDeque<u64>, v: u64) {
    window.push_back(v);
    while window.len() > RATE_WINDOW + 1 {
        window.pop_front();
    }
}

/// Ends a segment's in-flight entry when dropped (done, failed or
/// cancelled alike).
#[derive(Debug)]
pub struct Fetching<'a> {
    metrics: &'a Metrics,
    key: (CameraId, i64),
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        self.metrics.flow().in_flight.remove(&self.key);
    }
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
            peer_bytes: Family::default(),
            status_gaps: Gauge::default(),
            oldest_gap: Gauge::default(),
            progress: Mutex::default(),
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
            "peer_backfilled_bytes",
            "Bytes backfilled from each peer, verified and durable",
            m.peer_bytes.clone(),
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
            "status_gap_segments",
            "Segments another of their camera's servers holds and this server lacks, at the last status",
            m.status_gaps.clone(),
        );
        m.registry.register(
            "status_oldest_gap_seconds",
            "Age of the oldest segment this server lacks and another holds, at the last status (0: none)",
            m.oldest_gap.clone(),
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

    fn flow(&self) -> std::sync::MutexGuard<'_, Flow> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A segment's fetch from `peer` begins; it ends when the returned
    /// guard is dropped.
    pub fn fetching(&self, meta: &SegmentMeta, peer: &str) -> Fetching<'_> {
        let key = (meta.camera.clone(), meta.start.0);
        self.flow().in_flight.insert(
            key.clone(),
            InFlight {
                camera: meta.camera.clone(),
                start: meta.start.0,
                end: meta.end().0,
                peer: peer.to_string(),
            },
        );
        Fetching { metrics: self, key }
    }

    /// One segment made whole, from `peer`.
    pub fn segment_done(&self, peer: &str, bytes: u64) {
        {
            let mut f = self.flow();
            let p = f.peers.entry(peer.to_string()).or_default();
            p.bytes += bytes;
            p.segments += 1;
        }
        self.peer_bytes
            .get_or_create(&PeerLabel { peer: peer.into() })
            .inc_by(bytes);
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
        let mine = || {
            s.cameras
                .iter()
                .flat_map(|c| &c.servers)
                .filter(|v| v.server == s.server)
        };
        let gaps: u64 = mine().map(|v| v.gaps_pending.segments).sum();
        self.status_gaps.set(gaps.min(i64::MAX as u64) as i64);
        let parse = |t: &str| Timestamp::parse(t, Timestamp(0)).ok();
        let oldest = mine()
            .filter_map(|v| v.gaps_pending.oldest.as_deref().and_then(parse))
            .min();
        let age = match (oldest, parse(&s.at)) {
            (Some(o), Some(at)) => (at.0 - o.0).max(0) as f64 / 1e6,
            _ => 0.0,
        };
        self.oldest_gap.set(age);
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

    /// The backfill's progress now: per peer, in flight, and the ETA.
    pub fn progress(&self) -> Progress {
        let f = self.flow();
        let rate = mean_rate(&f.totals);
        let pending_bytes = self.pending_bytes.get().max(0) as u64;
        // Every peer that delivered, or has a fetch under way.
        let names: std::collections::BTreeSet<&String> = f
            .peers
            .keys()
            .chain(f.in_flight.values().map(|i| &i.peer))
            .collect();
        let peers = names
            .into_iter()
            .map(|peer| {
                let p = f.peers.get(peer).cloned().unwrap_or_default();
                PeerProgress {
                    peer: peer.clone(),
                    bytes: p.bytes,
                    segments: p.segments,
                    rate: mean_rate(&p.window),
                    in_flight: f.in_flight.values().filter(|i| &i.peer == peer).count(),
                }
            })
            .collect();
        Progress {
            pending_segments: self.pending_segments.get().max(0) as u64,
            pending_bytes,
            rate,
            eta_seconds: (pending_bytes > 0 && rate > 0.0).then(|| pending_bytes as f64 / rate),
            peers,
            in_flight: f.in_flight.values().cloned().collect(),
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
            let mut f = self.flow();
            push_sample(&mut f.totals, now);
            for p in f.peers.values_mut() {
                let b = p.bytes;
                push_sample(&mut p.window, b);
            }
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
        m.segment_done("rs01", 100);
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
            "hafill_peer_backfilled_bytes_total{peer=\"rs01\"} 100",
            "hafill_throttle_net_cap_bytes_per_second 25000000",
            "hafill_throttle_disk_cap_bytes_per_second 0",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} not in\n{t}");
        }
    }

    #[test]
    fn progress_shows_what_is_in_flight_per_peer_and_the_eta() {
        let m = Metrics::new();
        m.planned(2, 3000);
        let meta = SegmentMeta {
            camera: CameraId::new("cam-1").unwrap(),
            start: crate::units::Timestamp(60_000_000),
            duration_us: 60_000_000,
            len: 1000,
            blake3: blake3::hash(b""),
            state: crate::segment::SegmentState::Placeholder,
            origin: crate::segment::Origin::Peer("rs01".into()),
            notes: None,
        };
        {
            let _f = m.fetching(&meta, "rs01");
            let p = m.progress();
            assert_eq!(p.in_flight.len(), 1);
            assert_eq!(p.in_flight[0].peer, "rs01");
            assert_eq!(p.peers.len(), 1, "a peer shows from its first fetch");
            assert_eq!(p.peers[0].in_flight, 1);
            assert_eq!(p.eta_seconds, None, "nothing moved yet");
        }
        assert!(m.progress().in_flight.is_empty(), "the guard ends it");
        // Two samples a second apart, 1000 bytes between them.
        {
            let mut f = m.flow();
            push_sample(&mut f.totals, 0);
        }
        m.segment_done("rs01", 1000);
        {
            let mut f = m.flow();
            push_sample(&mut f.totals, 1000);
            let p = f.peers.get_mut("rs01").unwrap();
            push_sample(&mut p.window, 0);
            push_sample(&mut p.window, 1000);
        }
        let p = m.progress();
        assert_eq!(p.pending_bytes, 2000);
        assert_eq!(p.rate, 1000.0);
        assert_eq!(p.eta_seconds, Some(2.0));
        assert_eq!(p.peers[0].bytes, 1000);
        assert_eq!(p.peers[0].rate, 1000.0);
    }

    /// Every `hafill_*` name the dashboard and the alerting rules in
    /// `dist/` use is one the daemon exports.
    #[test]
    fn the_dashboard_and_the_alert_rules_use_only_exported_metrics() {
        // Families show once they have a member.
        let m = Metrics::new();
        m.segment_done("rs01", 1);
        m.set_status(&SiteStatus {
            server: "rs02".into(),
            at: String::new(),
            from: String::new(),
            to: String::new(),
            peers: vec![crate::health::PeerState {
                peer: "rs01".into(),
                connected: true,
                error: None,
            }],
            cameras: Vec::new(),
            overview: Default::default(),
            alerts: Vec::new(),
        });
        let text = m.encode();
        let exported: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let known = |name: &str| {
            exported.contains(&name)
                || name
                    .strip_suffix("_total")
                    .is_some_and(|n| exported.contains(&n))
        };
        let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist");
        for file in ["grafana/hafill.json", "prometheus/hafill-alerts.yml"] {
            let body = std::fs::read_to_string(dist.join(file)).unwrap();
            let mut names: Vec<&str> = body
                .match_indices("hafill_")
                .map(|(i, _)| {
                    let rest = &body[i..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    &rest[..end]
                })
                .collect();
            names.sort_unstable();
            names.dedup();
            assert!(names.len() >= 4, "{file}: {names:?}");
            for n in names {
                assert!(
                    known(n),
                    "dist/{file} uses {n}, which the daemon does not export:\n{text}"
                );
            }
        }
        let dash: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dist.join("grafana/hafill.json")).unwrap(),
        )
        .unwrap();
        assert!(dash["panels"].as_array().is_some_and(|p| p.len() >= 6));
    }

    #[test]
    fn the_rate_window_keeps_its_last_seconds() {
        let mut w = VecDeque::new();
        for i in 0..100u64 {
            push_sample(&mut w, i * 10);
        }
        assert_eq!(w.len(), RATE_WINDOW + 1);
        assert_eq!(mean_rate(&w), 10.0);
        assert_eq!(mean_rate(&VecDeque::from([5])), 0.0);
    }
}
