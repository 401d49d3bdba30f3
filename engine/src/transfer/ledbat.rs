//! A less-than-best-effort congestion controller for the backfill's QUIC
//! connections, in the spirit of LEDBAT++ (RFC 6817 and the LEDBAT++
//! draft): it measures queueing delay as the RTT over a base delay it keeps
//! for ten minutes, grows while the queue it sees is below a small target,
//! and backs off multiplicatively as soon as the queue rises past it. So
//! camera streams sharing the link keep their bandwidth and their latency;
//! the backfill takes what is left. Loss halves the window, as any TCP-like
//! sender does.
//!
//! [`Ledbat`] is the arithmetic, with time passed in (tested against a
//! simulated bottleneck queue, no sockets); [`LedbatConfig`] plugs it into
//! quinn.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory};

/// Queueing delay the controller aims for. LEDBAT++ suggests 60 ms for the
/// Internet; a recording site's LAN carries live video whose jitter buffers
/// are short, so the backfill keeps the queue it adds to about 3 ms. (It
/// only starts halving its window at twice the target; with 5 ms the
/// live stream's added delay reached a p99 of 11-19 ms on the benchmark's
/// 500 Mbit/s link, with 3 ms 6-7.5 ms at the same backfill rate.)
pub const DEFAULT_TARGET: Duration = Duration::from_millis(3);

/// How long the base delay is remembered (in one-minute buckets).
const BASE_HISTORY: usize = 10;
/// RTT samples whose minimum is the current delay (filters ack jitter).
const CURRENT_FILTER: usize = 4;
const MIN_WINDOW_PACKETS: f64 = 2.0;
const INITIAL_WINDOW_PACKETS: f64 = 10.0;
/// Multiplicative decreases are at least this far apart: on a LAN the RTT
/// is well under a millisecond, and jitter must not halve the window a
/// thousand times a second.
/// The window after a loss (CUBIC's beta): a loss on a LAN is often a
/// receiver's hiccup, and the delay signal does the yielding.
const LOSS_FACTOR: f64 = 0.7;
const MIN_DECREASE_INTERVAL: Duration = Duration::from_millis(10);

/// The controller's state; every method takes the time as an argument.
#[derive(Debug, Clone)]
pub struct Ledbat {
    mss: f64,
    window: f64,
    target: Duration,
    slow_start: bool,
    /// (minute, lowest delay seen in it), oldest first.
    base: VecDeque<(u64, Duration)>,
    current: VecDeque<Duration>,
    /// No further decrease before this time (one decrease per RTT).
    hold_until: Duration,
    /// Packets sent before this time belong to a loss already answered.
    recovery_start: Duration,
}

impl Ledbat {
    pub fn new(mss: u16, target: Duration) -> Self {
        let mss = f64::from(mss.max(1200));
        Ledbat {
            mss,
            window: INITIAL_WINDOW_PACKETS * mss,
            target: target.max(Duration::from_micros(500)),
            slow_start: true,
            base: VecDeque::new(),
            current: VecDeque::new(),
            hold_until: Duration::ZERO,
            recovery_start: Duration::ZERO,
        }
    }

    pub fn window(&self) -> u64 {
        self.window as u64
    }

    /// The lowest delay over the base history.
    pub fn base_delay(&self) -> Option<Duration> {
        self.base.iter().map(|(_, d)| *d).min()
    }

    /// The queueing delay as the controller sees it now.
    pub fn queueing_delay(&self) -> Option<Duration> {
        let current = self.current.iter().min()?;
        Some(current.saturating_sub(self.base_delay()?))
    }

    fn record(&mut self, now: Duration, rtt: Duration) {
        let minute = now.as_secs() / 60;
        match self.base.back_mut() {
            Some((m, d)) if *m == minute => *d = (*d).min(rtt),
            _ => {
                self.base.push_back((minute, rtt));
                if self.base.len() > BASE_HISTORY {
                    self.base.pop_front();
                }
            }
        }
        self.current.push_back(rtt);
        if self.current.len() > CURRENT_FILTER {
            self.current.pop_front();
        }
    }

    /// `bytes` were acknowledged at `now`; `rtt` is their sample.
    pub fn on_ack(&mut self, now: Duration, rtt: Duration, bytes: u64) {
        self.record(now, rtt);
        let Some(queueing) = self.queueing_delay() else {
            return;
        };
        let target = self.target.as_secs_f64();
        let q = queueing.as_secs_f64();
        let bytes = bytes as f64;
        if self.slow_start {
            // Leave slow start before the queue reaches the target.
            if q < target * 0.75 {
                self.window += bytes;
                return;
            }
            self.slow_start = false;
        }
        if q < target / 2.0 {
            // No queue worth the name: grow fast, up to doubling per RTT,
            // slowing as the queue nears half the target. Losses on a busy
            // LAN host are often not congestion at all (a receiver
            // descheduled for a moment), and Reno-style growth of a packet
            // per RTT never regains the window between them; the delay
            // signal, not the growth rate, is what protects live traffic.
            self.window += bytes * (1.0 - 2.0 * q / target);
        } else if q <= 2.0 * target {
            // Near the target, RFC 6817: grow or shrink in proportion to how
            // far the queue is from it, by at most a packet per RTT.
            let off_target = ((target - q) / target).max(-1.0);
            self.window += off_target * bytes * self.mss / self.window;
        } else if now >= self.hold_until {
            // Far over the target (live traffic arrived): LEDBAT++'s
            // multiplicative decrease, at most by half, and not again before
            // the queue had time to drain.
            let factor = (1.0 - 0.25 * (q / target - 2.0)).clamp(0.5, 0.9);
            self.window *= factor;
            self.hold_until = now + rtt.max(MIN_DECREASE_INTERVAL);
        }
        self.window = self.window.max(MIN_WINDOW_PACKETS * self.mss);
    }

    /// A packet sent at `sent` was lost (or the path is congested).
    pub fn on_loss(&mut self, now: Duration, sent: Duration, persistent: bool) {
        if sent < self.recovery_start {
            return;
        }
        self.recovery_start = now;
        self.slow_start = false;
        self.window = if persistent {
            MIN_WINDOW_PACKETS * self.mss
        } else {
            (self.window * LOSS_FACTOR).max(MIN_WINDOW_PACKETS * self.mss)
        };
    }

    pub fn on_mtu(&mut self, mtu: u16) {
        self.mss = f64::from(mtu.max(1200));
        self.window = self.window.max(MIN_WINDOW_PACKETS * self.mss);
    }
}

/// Builds [`LedbatController`]s for quinn.
#[derive(Debug, Clone)]
pub struct LedbatConfig {
    pub target: Duration,
}

impl Default for LedbatConfig {
    fn default() -> Self {
        LedbatConfig {
            target: DEFAULT_TARGET,
        }
    }
}

impl ControllerFactory for LedbatConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(LedbatController {
            core: Ledbat::new(current_mtu, self.target),
            epoch: now,
            acks: 0,
        })
    }
}

/// [`Ledbat`] on quinn's clock.
#[derive(Debug, Clone)]
pub struct LedbatController {
    core: Ledbat,
    epoch: Instant,
    acks: u64,
}

impl LedbatController {
    fn since(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.epoch)
    }
}

impl Controller for LedbatController {
    fn on_ack(
        &mut self,
        now: Instant,
        _sent: Instant,
        bytes: u64,
        _app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        // quinn's estimate, corrected for the peer's ack delay (a raw
        // `now - sent` would count the receiver's deliberate ack delay, up
        // to 25 ms, as queueing). It is smoothed by 1/8 per ack, so it
        // follows a growing queue within a few acks.
        let now = self.since(now);
        self.core.on_ack(now, rtt.get(), bytes);
        self.acks += 1;
        if self.acks.is_multiple_of(2000) {
            tracing::trace!(window = self.core.window(), rtt = ?rtt.get(), min = ?rtt.min(), base = ?self.core.base_delay(), q = ?self.core.queueing_delay(), "ledbat");
        }
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        _lost_bytes: u64,
    ) {
        let (now, sent) = (self.since(now), self.since(sent));
        tracing::trace!(
            window = self.core.window(),
            persistent = is_persistent_congestion,
            "ledbat loss"
        );
        self.core.on_loss(now, sent, is_persistent_congestion);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.core.on_mtu(new_mtu);
    }

    fn window(&self) -> u64 {
        self.core.window()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        (INITIAL_WINDOW_PACKETS * 1200.0) as u64
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bottleneck link on a virtual clock: `rate` bytes per ms, a FIFO
    /// queue, `base` one-way-and-back propagation delay, optional cross
    /// traffic that shares the queue. Packets of `mss` bytes.
    struct Bottleneck {
        rate: f64,
        base: Duration,
        queue_bytes: f64,
        /// (ack time, send time, bytes) of packets in flight, in order.
        in_flight: VecDeque<(Duration, Duration, u64)>,
        cross_per_ms: f64,
        delivered: u64,
    }

    impl Bottleneck {
        fn new(mbit: f64, base: Duration) -> Self {
            Bottleneck {
                rate: mbit * 1e6 / 8.0 / 1000.0,
                base,
                queue_bytes: 0.0,
                in_flight: VecDeque::new(),
                cross_per_ms: 0.0,
                delivered: 0,
            }
        }

        fn queue_delay(&self) -> Duration {
            Duration::from_secs_f64(self.queue_bytes / self.rate / 1000.0)
        }

        /// Runs `ms` milliseconds; returns the mean queueing delay seen.
        fn run(&mut self, cc: &mut Ledbat, start: Duration, ms: u64) -> Duration {
            let mss = 1200u64;
            let mut sum = Duration::ZERO;
            for k in 0..ms {
                let now = start + Duration::from_millis(k);
                // Acks due by now.
                while self.in_flight.front().is_some_and(|(t, _, _)| *t <= now) {
                    let (t, sent, n) = self.in_flight.pop_front().unwrap();
                    self.delivered += n;
                    cc.on_ack(t, t - sent, n);
                }
                // Send what the window allows, 1 ms worth of sending at most.
                let mut inflight: u64 = self.in_flight.iter().map(|p| p.2).sum();
                let mut burst = 0.0;
                while inflight + mss <= cc.window() && burst < self.rate * 4.0 {
                    let ack = now + self.base + self.queue_delay();
                    self.queue_bytes += mss as f64;
                    self.in_flight.push_back((ack, now, mss));
                    inflight += mss;
                    burst += mss as f64;
                }
                self.queue_bytes += self.cross_per_ms;
                self.queue_bytes = (self.queue_bytes - self.rate).max(0.0);
                sum += self.queue_delay();
            }
            sum / ms as u32
        }
    }

    #[test]
    fn alone_it_fills_the_link_and_keeps_the_queue_near_the_target() {
        let mut cc = Ledbat::new(1200, Duration::from_millis(4));
        let mut link = Bottleneck::new(100.0, Duration::from_millis(2));
        link.run(&mut cc, Duration::ZERO, 5_000);
        let before = link.delivered;
        let q = link.run(&mut cc, Duration::from_secs(5), 5_000);
        let rate_mbit = (link.delivered - before) as f64 * 8.0 / 5.0 / 1e6;
        assert!(rate_mbit > 80.0, "used {rate_mbit:.1} of 100 Mbit/s");
        assert!(
            q < Duration::from_millis(8),
            "queue held at {q:?}, target 4 ms"
        );
    }

    #[test]
    fn delay_rises_it_backs_off_delay_falls_it_grows() {
        let mut cc = Ledbat::new(1200, Duration::from_millis(4));
        let mut link = Bottleneck::new(100.0, Duration::from_millis(2));
        link.run(&mut cc, Duration::ZERO, 5_000);
        let steady = cc.window();
        // Cross traffic at 90% of the link shares the queue: delay rises.
        link.cross_per_ms = link.rate * 0.9;
        let before = link.delivered;
        link.run(&mut cc, Duration::from_secs(5), 5_000);
        let backed_off = cc.window();
        let rate_mbit = (link.delivered - before) as f64 * 8.0 / 5.0 / 1e6;
        assert!(
            backed_off * 3 < steady,
            "window {steady} -> {backed_off}: no back-off"
        );
        assert!(
            rate_mbit < 20.0,
            "took {rate_mbit:.1} Mbit/s beside 90 Mbit/s of cross traffic"
        );
        // The cross traffic stops: delay falls, the window grows again.
        link.cross_per_ms = 0.0;
        link.run(&mut cc, Duration::from_secs(10), 5_000);
        assert!(
            cc.window() > backed_off * 3,
            "window {backed_off} -> {}: no recovery",
            cc.window()
        );
    }

    #[test]
    fn loss_cuts_the_window_once_per_event() {
        let mut cc = Ledbat::new(1200, Duration::from_millis(4));
        let mut link = Bottleneck::new(100.0, Duration::from_millis(2));
        link.run(&mut cc, Duration::ZERO, 2_000);
        let w = cc.window();
        let now = Duration::from_secs(2);
        cc.on_loss(now, now - Duration::from_millis(3), false);
        assert_eq!(cc.window(), (w as f64 * LOSS_FACTOR) as u64);
        // A second loss from the same flight is the same event.
        cc.on_loss(
            now + Duration::from_millis(1),
            now - Duration::from_millis(2),
            false,
        );
        assert_eq!(cc.window(), (w as f64 * LOSS_FACTOR) as u64);
        cc.on_loss(now, now, true);
        assert_eq!(cc.window(), 2 * 1200);
    }

    #[test]
    fn the_base_delay_is_forgotten_after_ten_minutes() {
        let mut cc = Ledbat::new(1200, Duration::from_millis(4));
        cc.on_ack(Duration::ZERO, Duration::from_millis(1), 1200);
        for minute in 1..=11u64 {
            cc.on_ack(
                Duration::from_secs(minute * 60),
                Duration::from_millis(5),
                1200,
            );
        }
        assert_eq!(cc.base_delay(), Some(Duration::from_millis(5)));
    }
}
