//! CPU time the hypervisor stole: on a virtual machine the host may stop a
//! virtual CPU for hundreds of milliseconds, and a camera thread due then
//! wakes late whatever the backfill does. `sim live` samples the `steal`
//! column of `/proc/stat` while it records, so that a late frame can be
//! told apart from one that was late while the host held the CPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the stolen time is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(25);

/// A late frame counts as "late while stolen" when at least this much CPU
/// time was stolen (summed over the CPUs) between its due time and its
/// write: two ticks of the kernel's 100 Hz accounting, more than a quiet
/// host's background steal gives one frame's span.
pub const STEAL_EXPLAINS: Duration = Duration::from_millis(20);

/// The machine's cumulative stolen time, in clock ticks, from the text of
/// `/proc/stat` (the eighth number of the `cpu` line). None where the
/// kernel does not report it.
pub fn steal_ticks(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

/// Cumulative stolen time at points in time, oldest first.
#[derive(Debug, Clone, Default)]
pub struct StealLog {
    samples: Vec<(Instant, u64)>,
    tick: Duration,
}

impl StealLog {
    pub fn new(tick: Duration) -> StealLog {
        StealLog {
            samples: Vec::new(),
            tick,
        }
    }

    pub fn push(&mut self, at: Instant, ticks: u64) {
        self.samples.push((at, ticks));
    }

    /// Stolen time over the whole log.
    pub fn total(&self) -> Duration {
        match (self.samples.first(), self.samples.last()) {
            (Some(a), Some(b)) => self.tick * b.1.saturating_sub(a.1) as u32,
            _ => Duration::ZERO,
        }
    }

    /// Stolen time between the last sample at or before `from` and the
    /// first at or after `to`: the samples that bracket the span, so steal
    /// within it is never missed (at most one sample interval more is).
    pub fn stolen_between(&self, from: Instant, to: Instant) -> Duration {
        let s = &self.samples;
        if s.is_empty() {
            return Duration::ZERO;
        }
        let start = s.partition_point(|(t, _)| *t <= from).saturating_sub(1);
        let end = s.partition_point(|(t, _)| *t < to).min(s.len() - 1);
        self.tick * s[end].1.saturating_sub(s[start].1) as u32
    }
}

/// Samples `/proc/stat` every [`SAMPLE_EVERY`] until `stop`; an empty log
/// where the kernel reports no steal.
pub fn sample_until(stop: &AtomicBool) -> StealLog {
    let tick = Duration::from_secs(1) / rustix::param::clock_ticks_per_second().max(1) as u32;
    let mut log = StealLog::new(tick);
    let read = || {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(steal_ticks)
    };
    loop {
        match read() {
            Some(t) => log.push(Instant::now(), t),
            None => return StealLog::new(tick),
        }
        if stop.load(Ordering::Relaxed) {
            return log;
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_number_of_the_cpu_line() {
        let stat = "cpu  100 2 300 4000 5 6 7 88 0 0\ncpu0 50 1 150 2000 2 3 3 40 0 0\nintr 1\n";
        assert_eq!(steal_ticks(stat), Some(88));
        assert_eq!(steal_ticks("cpu  1 2 3\n"), None);
        assert_eq!(steal_ticks("intr 5\n"), None);
    }

    #[test]
    fn stolen_time_is_counted_between_the_bracketing_samples() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut log = StealLog::new(Duration::from_millis(10));
        for (at, ticks) in [(0, 100), (25, 100), (50, 130), (75, 131), (100, 131)] {
            log.push(ms(at), ticks);
        }
        assert_eq!(log.total(), Duration::from_millis(310));
        // A span inside 25..50 ms sees the 30 ticks stolen then.
        assert_eq!(
            log.stolen_between(ms(30), ms(40)),
            Duration::from_millis(300)
        );
        // Quiet stretches show none.
        assert_eq!(log.stolen_between(ms(0), ms(25)), Duration::ZERO);
        assert_eq!(log.stolen_between(ms(80), ms(100)), Duration::ZERO);
        // Spans past either end are clamped to the log.
        assert_eq!(
            log.stolen_between(ms(60), ms(500)),
            Duration::from_millis(10)
        );
        assert_eq!(
            StealLog::default().stolen_between(ms(0), ms(9)),
            Duration::ZERO
        );
    }
}
