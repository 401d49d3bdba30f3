//! Backfill yields to live recording: rate caps (a token bucket), schedule
//! windows, and adaptive disk control (AIMD on the store device's busy time
//! and our write latency). The arithmetic takes time as an argument, so it
//! is tested on a virtual clock; [`RateLimiter`] puts the bucket on tokio's.

pub mod aimd;
pub mod cpu;
pub mod disk;
pub mod governor;
pub mod schedule;
pub mod starve;

use std::time::Duration;

/// A token bucket of `rate` units per second holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    pub fn new(rate_per_sec: u64, burst: u64, now: Duration) -> Self {
        TokenBucket {
            rate: rate_per_sec.max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Takes `n` units at `now`; returns how long to wait before they may
    /// be used (zero when the bucket had them). Debt is allowed, so a take
    /// larger than the burst still goes through, just later.
    pub fn take(&mut self, n: u64, now: Duration) -> Duration {
        self.refill(now);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

impl TokenBucket {
    /// Changes the rate from `now` on (a quarter second of burst); what
    /// was earned at the old rate is kept up to the new burst.
    pub fn set_rate(&mut self, rate_per_sec: u64, now: Duration) {
        self.refill(now);
        self.rate = rate_per_sec.max(1) as f64;
        self.burst = (rate_per_sec / 4).max(1) as f64;
        self.tokens = self.tokens.min(self.burst);
    }
}

/// A token bucket shared by the tasks of one transfer, on tokio's clock;
/// its rate can change while they run (schedule windows, the adaptive
/// controller, a reloaded config), and `None` is no cap.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: std::sync::Mutex<Option<TokenBucket>>,
    epoch: tokio::time::Instant,
}

impl RateLimiter {
    /// `bytes_per_sec` (None: no cap) with a burst of a quarter second.
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        RateLimiter {
            bucket: std::sync::Mutex::new(
                bytes_per_sec.map(|r| TokenBucket::new(r, r / 4, Duration::ZERO)),
            ),
            epoch: tokio::time::Instant::now(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Option<TokenBucket>) -> T) -> T {
        match self.bucket.lock() {
            Ok(mut b) => f(&mut b),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    pub fn set_rate(&self, bytes_per_sec: Option<u64>) {
        let now = self.epoch.elapsed();
        self.with(|b| match (b.as_mut(), bytes_per_sec) {
            (Some(bucket), Some(r)) => bucket.set_rate(r, now),
            (None, Some(r)) => *b = Some(TokenBucket::new(r, r / 4, now)),
            (_, None) => *b = None,
        });
    }

    pub fn rate(&self) -> Option<u64> {
        self.with(|b| b.as_ref().map(|b| b.rate as u64))
    }

    pub async fn acquire(&self, bytes: u64) {
        let now = self.epoch.elapsed();
        let wait = self.with(|b| b.as_mut().map_or(Duration::ZERO, |b| b.take(bytes, now)));
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(f64) -> Duration = Duration::from_secs_f64;

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_paces() {
        let mut b = TokenBucket::new(1000, 500, S(0.0));
        assert_eq!(b.take(500, S(0.0)), Duration::ZERO);
        // Empty now: 250 more wait a quarter second.
        assert_eq!(b.take(250, S(0.0)), S(0.25));
        // Half a second later the debt is paid and 250 are back.
        assert_eq!(b.take(250, S(0.5)), Duration::ZERO);
    }

    #[test]
    fn the_long_run_rate_is_the_rate() {
        let mut b = TokenBucket::new(1_000_000, 250_000, S(0.0));
        let mut t = S(0.0);
        let mut sent = 0u64;
        while t < S(10.0) {
            t += b.take(65536, t);
            sent += 65536;
        }
        let rate = sent as f64 / t.as_secs_f64();
        assert!((rate - 1_000_000.0).abs() / 1_000_000.0 < 0.05, "{rate}");
    }

    #[test]
    fn a_new_rate_applies_from_now_on() {
        let mut b = TokenBucket::new(1000, 250, S(0.0));
        assert_eq!(b.take(250, S(0.0)), Duration::ZERO);
        b.set_rate(100, S(0.0));
        // Empty bucket at 100/s: 50 units wait half a second.
        assert_eq!(b.take(50, S(0.0)), S(0.5));
        b.set_rate(10_000, S(0.5));
        assert_eq!(b.take(1000, S(0.6)), Duration::ZERO);
    }

    #[test]
    fn idle_time_never_banks_more_than_the_burst() {
        let mut b = TokenBucket::new(1000, 100, S(0.0));
        assert_eq!(b.take(100, S(100.0)), Duration::ZERO);
        assert!(b.take(1, S(100.0)) > Duration::ZERO);
    }
}
