//! Adaptive disk control: an AIMD controller on the backfill's disk write
//! rate. Each sample says whether the store's device is congested (busy
//! above target, or several of our writes slower than [`SLOW_WRITE`]);
//! congestion halves what was really written, calm adds a step. Live
//! recording's writes then find the device with room. Pure: samples carry
//! their own time.
//!
//! Until the first congestion the rate doubles each calm sample (a slow
//! start, as in TCP), so a backfill on a quiet device reaches the device's
//! pace within a second instead of climbing a step at a time. The rate only
//! grows while the backfill writes at least half of it: a rate far above
//! what the device takes would not hold anything back when congestion
//! comes.

use std::time::Duration;

/// A backfill write slower than this counts as slow: its 1 MiB went into the
/// page cache, so tens of milliseconds mean the kernel held the writer back
/// for dirty pages the device has not taken yet.
pub const SLOW_WRITE: Duration = Duration::from_millis(50);

/// Targets and bounds of the controller.
#[derive(Debug, Clone, Copy)]
pub struct AimdConfig {
    /// Device busy fraction (0..1) above which the backfill backs off...
    pub target_busy: f64,
    /// ...when it stays above for this many samples in a row: a single
    /// quarter second of a busy device is often the kernel's writeback
    /// flushing a burst, which live writes ride out.
    pub busy_samples: u32,
    /// Writes slower than [`SLOW_WRITE`] in one sample that mean
    /// congestion. One alone (a page fault, a thread kept off its core)
    /// does not.
    pub slow_writes: u32,
    /// ...and only when the device was busy at least this fraction of the
    /// sample (or its busy time is unknown). Slow writes to an idle device
    /// waited for a CPU, not for the disk: the hypervisor took the core,
    /// or the whole process stalled. Backing off then would not give live
    /// writes anything, and would leave the backfill crawling afterwards.
    pub slow_writes_busy: f64,
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
            busy_samples: 2,
            slow_writes: 2,
            slow_writes_busy: 0.25,
            increase: 16 << 20,
            decrease: 0.5,
            min_rate: 4 << 20,
            max_rate: 4 << 30,
            hold: Duration::from_millis(500),
        }
    }
}

/// One observation of the device and of our own writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskSample {
    pub at: Duration,
    /// Fraction of the interval the device had I/O in flight, if known.
    pub busy: Option<f64>,
    /// Our writes in the interval slower than [`SLOW_WRITE`].
    pub slow_writes: u32,
    /// Bytes per second we wrote in the interval, if known.
    pub written: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Aimd {
    cfg: AimdConfig,
    rate: u64,
    hold_until: Duration,
    slow_start: bool,
    /// Samples in a row with the device busy over target.
    busy_run: u32,
}

impl Aimd {
    pub fn new(cfg: AimdConfig, initial_rate: u64) -> Self {
        Aimd {
            rate: initial_rate.clamp(cfg.min_rate, cfg.max_rate),
            cfg,
            hold_until: Duration::ZERO,
            slow_start: true,
            busy_run: 0,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Feeds a sample; returns the new rate in bytes per second.
    pub fn on_sample(&mut self, s: DiskSample) -> u64 {
        if s.busy.is_some_and(|b| b > self.cfg.target_busy) {
            self.busy_run += 1;
        } else {
            self.busy_run = 0;
        }
        let congested = self.busy_run >= self.cfg.busy_samples.max(1)
            || (s.slow_writes >= self.cfg.slow_writes.max(1)
                && s.busy.is_none_or(|b| b >= self.cfg.slow_writes_busy));
        if congested {
            self.slow_start = false;
            if s.at >= self.hold_until {
                // Halve what was written, not an allowance the backfill
                // never used; but from no less than half the allowance, so
                // a quarter second in which little got written (a stall)
                // cannot drop the rate to the floor.
                let from = s
                    .written
                    .map_or(self.rate, |w| w.clamp(self.rate / 2, self.rate));
                self.rate = ((from as f64 * self.cfg.decrease) as u64).max(self.cfg.min_rate);
                self.hold_until = s.at + self.cfg.hold;
            }
        } else if s.written.is_none_or(|w| w >= self.rate / 2) {
            self.rate = if self.slow_start {
                self.rate.saturating_mul(2)
            } else {
                self.rate.saturating_add(self.cfg.increase)
            }
            .min(self.cfg.max_rate);
        }
        self.rate = self.rate.max(self.cfg.min_rate);
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sample(at: u64, busy: f64, slow_writes: u32) -> DiskSample {
        DiskSample {
            at: ms(at),
            busy: Some(busy),
            slow_writes,
            written: None,
        }
    }

    fn small() -> AimdConfig {
        AimdConfig {
            increase: 10,
            min_rate: 10,
            max_rate: 1000,
            ..AimdConfig::default()
        }
    }

    #[test]
    fn slow_start_doubles_then_calm_adds_and_congestion_halves() {
        let mut c = Aimd::new(small(), 100);
        // Slow start: doubles until the first congestion.
        assert_eq!(c.on_sample(sample(0, 0.2, 0)), 200);
        assert_eq!(c.on_sample(sample(250, 0.2, 0)), 400);
        assert_eq!(c.on_sample(sample(500, 0.5, 3)), 200);
        // Held: the next congested sample within the hold does not cut again.
        assert_eq!(c.on_sample(sample(750, 0.5, 3)), 200);
        // After the first congestion, calm adds a step.
        assert_eq!(c.on_sample(sample(1000, 0.5, 0)), 210);
        assert_eq!(c.on_sample(sample(1250, 0.5, 0)), 220);
        assert_eq!(c.on_sample(sample(1500, 0.5, 5)), 110);
    }

    #[test]
    fn a_busy_device_is_congestion_from_its_second_sample_in_a_row() {
        let mut c = Aimd::new(small(), 100);
        assert_eq!(c.on_sample(sample(0, 0.95, 0)), 200);
        assert_eq!(c.on_sample(sample(250, 0.5, 0)), 400);
        assert_eq!(c.on_sample(sample(500, 0.95, 0)), 800);
        assert_eq!(c.on_sample(sample(750, 0.95, 0)), 400);
    }

    #[test]
    fn one_slow_write_is_not_congestion_two_are() {
        let mut c = Aimd::new(small(), 800);
        assert_eq!(c.on_sample(sample(0, 0.3, 1)), 1000);
        assert_eq!(c.on_sample(sample(250, 0.3, 2)), 500);
    }

    #[test]
    fn slow_writes_to_an_idle_device_are_not_congestion() {
        let mut c = Aimd::new(small(), 250);
        assert_eq!(c.on_sample(sample(0, 0.05, 17)), 500);
        // Busy time unknown: slow writes are all there is to go on.
        let s = DiskSample {
            busy: None,
            ..sample(250, 0.0, 17)
        };
        assert_eq!(c.on_sample(s), 250);
    }

    #[test]
    fn congestion_halves_what_was_written_not_the_allowance() {
        let mut c = Aimd::new(small(), 1000);
        let s = |at, written| DiskSample {
            written: Some(written),
            ..sample(at, 0.5, 2)
        };
        assert_eq!(c.on_sample(s(0, 600)), 300);
        // A stall (little written) cuts from half the allowance, no lower.
        assert_eq!(c.on_sample(s(500, 20)), 75);
    }

    #[test]
    fn an_allowance_the_backfill_does_not_use_does_not_grow() {
        let mut c = Aimd::new(small(), 400);
        let calm = |at, written| DiskSample {
            written: Some(written),
            ..sample(at, 0.1, 0)
        };
        assert_eq!(c.on_sample(calm(0, 390)), 800);
        // 390 of 800 written: under half, so the rate stays.
        assert_eq!(c.on_sample(calm(250, 390)), 800);
        assert_eq!(c.on_sample(calm(500, 420)), 1000);
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
            // The backfill writes its allowance, or what the device has left.
            let written = (c.rate() as f64).min(capacity - live);
            let busy = ((live + written) / capacity).min(1.0);
            if k >= 1000 {
                busy_sum += busy;
                rate_sum += written;
            }
            c.on_sample(DiskSample {
                at: ms(k * 250),
                busy: Some(busy),
                slow_writes: 0,
                written: Some(written as u64),
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
