//! Rate caps: a token bucket. The arithmetic takes time as an argument, so
//! it is tested on a virtual clock; [`RateLimiter`] puts it on tokio's.

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

/// A token bucket shared by the tasks of one transfer, on tokio's clock.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: std::sync::Mutex<TokenBucket>,
    epoch: tokio::time::Instant,
}

impl RateLimiter {
    /// `bytes_per_sec` with a burst of a quarter second.
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimiter {
            bucket: std::sync::Mutex::new(TokenBucket::new(
                bytes_per_sec,
                bytes_per_sec / 4,
                Duration::ZERO,
            )),
            epoch: tokio::time::Instant::now(),
        }
    }

    pub async fn acquire(&self, bytes: u64) {
        let wait = {
            let now = self.epoch.elapsed();
            match self.bucket.lock() {
                Ok(mut b) => b.take(bytes, now),
                Err(p) => p.into_inner().take(bytes, now),
            }
        };
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
    fn idle_time_never_banks_more_than_the_burst() {
        let mut b = TokenBucket::new(1000, 100, S(0.0));
        assert_eq!(b.take(100, S(100.0)), Duration::ZERO);
        assert!(b.take(1, S(100.0)) > Duration::ZERO);
    }
}
