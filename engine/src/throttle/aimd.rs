//! Adaptive disk control: an AIMD controller on the backfill's disk write
//! rate. Each sample says whether the store's device is congested (busy
//! above target, or writes slower than the target latency); congestion
//! halves the rate, calm adds a step. Live recording's writes then find the
//! device with room. Pure: samples carry their own time.

use std::time::Duration;

/// Targets and bounds of the controller.
#[derive(Debug, Clone, Copy)]
pub struct AimdConfig {
    /// Device busy fraction (0..1) above which the backfill backs off.
    pub target_busy: f64,
    /// Write (or fsync) latency above which the backfill backs off.
    pub target_latency: Duration,
    /// Bytes per second added per calm interval.
    pub increase: u64,
    /// Multiplier on congestion.
    pub decrease: f64,
    pub min_rate: u64,
    pub max_rate: u64,
    /// At most one decrease per this interval (the device needs time to
    /// show the effect).
    pub hold: Duration,
}

impl Default for AimdConfig {
    fn default() -> Self {
        AimdConfig {
            target_busy: 0.85,
            target_latency: Duration::from_millis(50),
            increase: 16 << 20,
            decrease: 0.5,
            min_rate: 4 << 20,
            max_rate: 4 << 30,
            hold: Duration::from_millis(500),
        }
    }
}

/// One observation of the device and of our own writes.
#[derive(Debug, Clone, Copy)]
pub struct DiskSample {
    pub at: Duration,
    /// Fraction of the interval the device had I/O in flight, if known.
    pub busy: Option<f64>,
    /// The worst latency of our writes and syncs in the interval.
    pub latency: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Aimd {
    cfg: AimdConfig,
    rate: u64,
    hold_until: Duration,
}

impl Aimd {
    pub fn new(cfg: AimdConfig, initial_rate: u64) -> Self {
        Aimd {
            rate: initial_rate.clamp(cfg.min_rate, cfg.max_rate),
            cfg,
            hold_until: Duration::ZERO,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn congested(&self, s: &DiskSample) -> bool {
        s.busy.is_some_and(|b| b > self.cfg.target_busy)
            || s.latency.is_some_and(|l| l > self.cfg.target_latency)
    }

    /// Feeds a sample; returns the new rate in bytes per second.
    pub fn on_sample(&mut self, s: DiskSample) -> u64 {
        if self.congested(&s) {
            if s.at >= self.hold_until {
                self.rate = ((self.rate as f64 * self.cfg.decrease) as u64).max(self.cfg.min_rate);
                self.hold_until = s.at + self.cfg.hold;
            }
        } else {
            self.rate = self
                .rate
                .saturating_add(self.cfg.increase)
                .min(self.cfg.max_rate);
        }
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sample(at: u64, busy: f64, latency_ms: u64) -> DiskSample {
        DiskSample {
            at: ms(at),
            busy: Some(busy),
            latency: Some(ms(latency_ms)),
        }
    }

    #[test]
    fn calm_adds_and_congestion_halves() {
        let cfg = AimdConfig {
            increase: 10,
            min_rate: 10,
            max_rate: 1000,
            ..AimdConfig::default()
        };
        let mut c = Aimd::new(cfg, 100);
        assert_eq!(c.on_sample(sample(0, 0.2, 1)), 110);
        assert_eq!(c.on_sample(sample(250, 0.2, 1)), 120);
        assert_eq!(c.on_sample(sample(500, 0.95, 1)), 60);
        // Held: the next congested sample within the hold does not cut again.
        assert_eq!(c.on_sample(sample(750, 0.95, 1)), 60);
        assert_eq!(c.on_sample(sample(1000, 0.5, 200)), 30);
    }

    #[test]
    fn the_rate_stays_within_its_bounds() {
        let cfg = AimdConfig {
            increase: 500,
            min_rate: 50,
            max_rate: 1000,
            ..AimdConfig::default()
        };
        let mut c = Aimd::new(cfg, 900);
        assert_eq!(c.on_sample(sample(0, 0.0, 0)), 1000);
        for k in 1..20 {
            c.on_sample(sample(k * 1000, 1.0, 0));
        }
        assert_eq!(c.rate(), 50);
    }

    /// A device of fixed capacity shared with a live writer: the
    /// controller settles where the device stays under its busy target.
    #[test]
    fn it_settles_below_the_devices_capacity_beside_a_live_writer() {
        let capacity = 500.0; // MB/s
        let live = 100.0;
        let cfg = AimdConfig {
            increase: 20,
            min_rate: 5,
            max_rate: 10_000,
            target_busy: 0.85,
            ..AimdConfig::default()
        };
        let mut c = Aimd::new(cfg, 50);
        let mut busy_sum = 0.0;
        let mut rate_sum = 0.0;
        for k in 0..2000u64 {
            let busy = ((live + c.rate() as f64) / capacity).min(1.0);
            if k >= 1000 {
                busy_sum += busy;
                rate_sum += c.rate() as f64;
            }
            c.on_sample(DiskSample {
                at: ms(k * 250),
                busy: Some(busy),
                latency: None,
            });
        }
        let (busy, rate) = (busy_sum / 1000.0, rate_sum / 1000.0);
        assert!(busy <= 0.85, "device busy {busy:.2} on average");
        assert!(
            rate >= 0.5 * (capacity * 0.85 - live),
            "backfill got {rate:.0} MB/s of the {} spare",
            capacity * 0.85 - live
        );
    }
}
