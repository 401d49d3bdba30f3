//! Time this process wanted a CPU and did not get one, and the floor of
//! CPU a backfill keeps on a machine that is busy for long.
//!
//! **The starvation clock.** The kernel counts, per thread, the time it sat
//! runnable on a run queue (`/proc/self/task/*/schedstat`, second field).
//! [`now`] is the process's sum of that, advancing at most as fast as the
//! wall clock. A timer that judges a peer (the stall timeout) subtracts it:
//! under `SCHED_IDLE` on a busy machine the receiver can wait seconds for a
//! core, and that wait is its own, not the peer's.
//!
//! **The floor.** Under `SCHED_IDLE` a backfill runs only on a core nobody
//! else wants. A machine busy on every core for hours would leave the
//! timeline holed for hours. So, when [`keep_floor`] was called, a sampler
//! thread watches the process once a second. After [`RAISE_AFTER`] in which
//! its threads waited for a CPU at least half the time and ran under 5% of
//! a core ([`Sample::starved`]), every thread moves to `SCHED_BATCH` at nice
//! 19: about 1.5% of a core against each busy nice-0 task (weight 15
//! against 1024), never preempting a waking task. After [`LOWER_AFTER`] of
//! calm (waiting under a tenth of the time) it goes back to `SCHED_IDLE`.
//! Where `schedstat` cannot be read, the clock stands still and no floor is
//! kept: timers then count wall time, as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a backfill must be starved before it takes the floor.
pub const RAISE_AFTER: Duration = Duration::from_secs(10);
/// How long it must be calm before it yields fully again.
pub const LOWER_AFTER: Duration = Duration::from_secs(10);
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A reading of the starvation clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark(u64);

/// The starvation clock now (as of the last sample, at most a second old:
/// a mark taken early only makes [`since`] count a little more).
pub fn now() -> Mark {
    let s = sampler();
    Mark(s.clock_ns.load(Ordering::Relaxed))
}

/// How long the process waited for a CPU since `mark` (sampled now).
pub fn since(mark: Mark) -> Duration {
    let s = sampler();
    s.sample();
    Duration::from_nanos(s.clock_ns.load(Ordering::Relaxed).saturating_sub(mark.0))
}

/// Keeps the floor described in the module doc for the rest of the
/// process's life. Call it once the process yields to live recording.
pub fn keep_floor() {
    sampler().floor.store(true, Ordering::Relaxed);
}

struct Sampler {
    clock_ns: AtomicU64,
    floor: std::sync::atomic::AtomicBool,
    last: Mutex<Last>,
}

struct Last {
    at: Instant,
    /// Per thread: (ns on a CPU, ns waiting for one).
    threads: HashMap<i32, (u64, u64)>,
    floor: Floor,
}

fn sampler() -> &'static Sampler {
    static SAMPLER: OnceLock<&'static Sampler> = OnceLock::new();
    SAMPLER.get_or_init(|| {
        let s: &'static Sampler = Box::leak(Box::new(Sampler {
            clock_ns: AtomicU64::new(0),
            floor: false.into(),
            last: Mutex::new(Last {
                at: Instant::now(),
                threads: read_threads().unwrap_or_default(),
                floor: Floor::default(),
            }),
        }));
        let started = std::thread::Builder::new()
            .name("hafill-starve".into())
            .spawn(move || loop {
                std::thread::sleep(SAMPLE_EVERY);
                s.sample();
            });
        if let Err(e) = started {
            tracing::warn!("no starvation sampler ({e}): stall timers count wall time");
        }
        s
    })
}

impl Sampler {
    fn sample(&self) {
        let Some(threads) = read_threads() else {
            return;
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let wall = last.at.elapsed();
        let (mut ran, mut waited) = (0u64, 0u64);
        for (tid, (r, w)) in &threads {
            let (r0, w0) = last.threads.get(tid).copied().unwrap_or((0, 0));
            ran += r.saturating_sub(r0);
            waited += w.saturating_sub(w0);
        }
        let wall_ns = wall.as_nanos() as u64;
        self.clock_ns
            .fetch_add(waited.min(wall_ns), Ordering::Relaxed);
        last.at = Instant::now();
        last.threads = threads;
        if !self.floor.load(Ordering::Relaxed) || wall < SAMPLE_EVERY / 2 {
            return;
        }
        let sample = Sample {
            wall,
            ran: Duration::from_nanos(ran),
            waited: Duration::from_nanos(waited),
        };
        if let Some(raise) = last.floor.observe(sample) {
            let n = super::cpu::set_policy(if raise {
                super::cpu::Policy::Floor
            } else {
                super::cpu::Policy::Idle
            });
            if n == 0 {
                // Without CAP_SYS_NICE or RLIMIT_NICE (systemd's `LimitNICE=`)
                // the kernel refuses to leave SCHED_IDLE.
                tracing::warn!("the CPU floor could not be set (no thread took the policy): backfill stays under SCHED_IDLE");
                last.floor = Floor::default();
                return;
            }
            if raise {
                tracing::info!(
                    threads = n,
                    "starved of CPU for {RAISE_AFTER:?}: backfill takes its floor (SCHED_BATCH, nice 19)"
                );
            } else {
                tracing::info!(
                    threads = n,
                    "CPU calm for {LOWER_AFTER:?}: backfill yields fully again (SCHED_IDLE)"
                );
            }
        }
    }
}

/// Every thread's (ns on a CPU, ns waiting on a run queue).
fn read_threads() -> Option<HashMap<i32, (u64, u64)>> {
    let mut out = HashMap::new();
    for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
        if let (Some(Some(ran)), Some(Some(waited))) = (f.next(), f.next()) {
            out.insert(tid, (ran, waited));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// What the process did over one sampling period.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub wall: Duration,
    /// CPU time of all its threads.
    pub ran: Duration,
    /// Run-queue wait of all its threads.
    pub waited: Duration,
}

impl Sample {
    /// Waited for a CPU at least half the period, and ran under 5% of one.
    pub fn starved(&self) -> bool {
        self.waited >= self.wall / 2 && self.ran < self.wall / 20
    }

    /// Waited for a CPU under a tenth of the period.
    pub fn calm(&self) -> bool {
        self.waited < self.wall / 10
    }
}

/// When to raise and lower the floor, from samples alone.
#[derive(Debug, Default)]
pub struct Floor {
    raised: bool,
    starved_for: Duration,
    calm_for: Duration,
}

impl Floor {
    /// Takes one sample; returns `Some(true)` to raise the floor,
    /// `Some(false)` to lower it, `None` to leave it as it is.
    pub fn observe(&mut self, s: Sample) -> Option<bool> {
        if s.starved() {
            self.starved_for += s.wall;
        } else {
            self.starved_for = Duration::ZERO;
        }
        if s.calm() {
            self.calm_for += s.wall;
        } else {
            self.calm_for = Duration::ZERO;
        }
        if !self.raised && self.starved_for >= RAISE_AFTER {
            self.raised = true;
            self.calm_for = Duration::ZERO;
            return Some(true);
        }
        if self.raised && self.calm_for >= LOWER_AFTER {
            self.raised = false;
            self.starved_for = Duration::ZERO;
            return Some(false);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn sample(ran_ms: u64, waited_ms: u64) -> Sample {
        Sample {
            wall: SEC,
            ran: Duration::from_millis(ran_ms),
            waited: Duration::from_millis(waited_ms),
        }
    }

    #[test]
    fn the_floor_rises_after_ten_starved_seconds_and_falls_after_ten_calm_ones() {
        let mut f = Floor::default();
        for _ in 0..9 {
            assert_eq!(f.observe(sample(3, 1900)), None);
        }
        assert_eq!(f.observe(sample(3, 1900)), Some(true));
        // Raised, it runs a little more yet still waits: it stays raised.
        for _ in 0..30 {
            assert_eq!(f.observe(sample(30, 1900)), None);
        }
        for _ in 0..9 {
            assert_eq!(f.observe(sample(400, 20)), None);
        }
        assert_eq!(f.observe(sample(400, 20)), Some(false));
    }

    #[test]
    fn a_process_that_runs_or_sleeps_is_not_starved() {
        let mut f = Floor::default();
        for i in 0..100 {
            // Busy but served (runs half a core), or idle (waits for the
            // network, not for a CPU), or one starved second now and then.
            let s = match i % 3 {
                0 => sample(500, 600),
                1 => sample(0, 0),
                _ => sample(3, 1900),
            };
            assert_eq!(f.observe(s), None, "sample {i}");
        }
    }

    #[test]
    fn the_clock_counts_this_threads_wait_for_a_cpu() {
        // Another thread's spin cannot be relied on to make us wait (two
        // cores), so only what the clock promises is checked: it never
        // runs backwards and never faster than the wall clock.
        let t = Instant::now();
        let m = now();
        std::thread::sleep(Duration::from_millis(50));
        let d = since(m);
        assert!(
            d <= t.elapsed() + SAMPLE_EVERY,
            "{d:?} in {:?}",
            t.elapsed()
        );
        assert!(now() >= m);
    }
}
