//! Token-bucket rate limits (messages per second), reusable per transport and per worker.

use crate::OutgoingMessage;
use crate::outcome::{Accepted, SendError};
use crate::transport::Transport;
use async_trait::async_trait;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A rate that is not a positive, finite number of messages per second.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("a rate limit must be a positive number of messages per second, not {0}")]
pub struct InvalidRate(pub f64);

/// `rate` cells per second, at most `burst` (≥ 1) of them back to back after a pause, as a
/// `governor` quota. Fractional rates (0.5/s) become a period of one cell per `1 / rate`.
pub fn quota(rate: f64, burst: u32) -> Result<Quota, InvalidRate> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(InvalidRate(rate));
    }
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(Duration::from_secs_f64(1.0 / rate))
        .map(|quota| quota.allow_burst(burst))
        .ok_or(InvalidRate(rate))
}

/// governor's clock reading tokio's, so paused test time (which only moves tokio's clock)
/// moves the limiters as well.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = Instant;

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// How long until the refused cell would be allowed, read on the limiter's clock.
pub fn wait_time(refused: &NotUntil<Instant>) -> Duration {
    refused.wait_time_from(TokioClock.now())
}

/// A token bucket in its GCRA form (`governor`'s direct limiter): one instant, the
/// "theoretical arrival time" of the next message, updated by compare-and-swap, instead of a
/// token count refilled by a timer.
#[derive(Debug)]
pub struct TokenBucket {
    limiter: governor::RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Instant>>,
    rate: f64,
}

impl TokenBucket {
    /// `rate` messages per second, at most `burst` (≥ 1) of them back to back after a pause.
    pub fn new(rate: f64, burst: u32) -> Result<TokenBucket, InvalidRate> {
        Ok(TokenBucket {
            limiter: governor::RateLimiter::direct_with_clock(quota(rate, burst)?, TokioClock),
            rate,
        })
    }

    /// `rate` messages per second with a burst of a tenth of a second's worth (at least one):
    /// smooth enough for a provider's per-second limit, loose enough not to idle senders, and
    /// wide enough (≥ 100 slots above 1,000/s) that the 1 ms timer does not cap the rate.
    pub fn per_second(rate: f64) -> Result<TokenBucket, InvalidRate> {
        let burst = if rate.is_finite() {
            (rate / 10.0).clamp(1.0, u32::MAX as f64) as u32
        } else {
            1
        };
        TokenBucket::new(rate, burst)
    }

    /// Takes a slot if one is free now, or says how long until one is.
    #[inline]
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.limiter.check().map_err(|refused| wait_time(&refused))
    }

    /// Waits for a slot.
    pub async fn acquire(&self) {
        // Sleeping on tokio's clock, which the limiter reads too, so paused test time applies.
        while let Err(wait) = self.try_acquire() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

/// A transport whose sends go through a token bucket first.
pub struct RateLimited {
    inner: Arc<dyn Transport>,
    bucket: TokenBucket,
}

impl RateLimited {
    pub fn new(inner: Arc<dyn Transport>, bucket: TokenBucket) -> RateLimited {
        RateLimited { inner, bucket }
    }
}

#[async_trait]
impl Transport for RateLimited {
    async fn send(&self, message: OutgoingMessage) -> Result<Accepted, SendError> {
        self.bucket.acquire().await;
        self.inner.send(message).await
    }

    fn describe(&self) -> String {
        format!(
            "{}, at most {} messages/s",
            self.inner.describe(),
            self.bucket.rate()
        )
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_lets_a_burst_through_then_spaces_messages_by_the_interval() {
        let bucket = TokenBucket::new(10.0, 3).expect("valid rate");
        for _ in 0..3 {
            assert_eq!(bucket.try_acquire(), Ok(()));
        }
        assert_eq!(bucket.try_acquire(), Err(ms(100)));
        tokio::time::advance(ms(40)).await;
        assert_eq!(bucket.try_acquire(), Err(ms(60)));
        tokio::time::advance(ms(60)).await;
        assert_eq!(bucket.try_acquire(), Ok(()));
        assert_eq!(bucket.try_acquire(), Err(ms(100)));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_refills_with_time_but_never_beyond_the_burst() {
        let bucket = TokenBucket::new(10.0, 2).expect("valid rate");
        assert_eq!(bucket.try_acquire(), Ok(()));
        assert_eq!(bucket.try_acquire(), Ok(()));
        assert_eq!(bucket.try_acquire(), Err(ms(100)));
        // A long pause earns at most `burst` immediate sends.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(bucket.try_acquire(), Ok(()));
        assert_eq!(bucket.try_acquire(), Ok(()));
        assert_eq!(bucket.try_acquire(), Err(ms(100)));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_long_run_rate_holds_for_sub_millisecond_slots() {
        // 5,000/s is a 200 µs slot, below tokio's 1 ms timer: concurrent senders must still get
        // 5,000 messages per second after the burst (500), not one per timer tick.
        let bucket = Arc::new(TokenBucket::per_second(5000.0).expect("valid rate"));
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let bucket = bucket.clone();
                tokio::spawn(async move {
                    for _ in 0..110 {
                        bucket.acquire().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        // 5,500 messages: 500 at once, 5,000 more at 5,000/s.
        let elapsed = start.elapsed();
        assert!(elapsed >= ms(999), "{elapsed:?}");
        assert!(elapsed < ms(1050), "{elapsed:?}");
    }

    #[test]
    fn rate_limit_rejects_rates_that_are_not_positive_numbers() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(TokenBucket::new(rate, 1).is_err(), "{rate}");
            assert!(TokenBucket::per_second(rate).is_err(), "{rate}");
        }
    }

    #[test]
    fn rate_limit_takes_fractional_rates() {
        let bucket = TokenBucket::new(0.5, 1).expect("valid rate");
        assert_eq!(bucket.rate(), 0.5);
        assert_eq!(quota(0.5, 1).expect("quota").replenish_interval(), ms(2000));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_acquire_paces_concurrent_callers() {
        // Paused tokio time advances only when every task sleeps, so this counts slots rather
        // than measuring wall time.
        let bucket = Arc::new(TokenBucket::new(100.0, 1).expect("valid rate"));
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let bucket = bucket.clone();
                tokio::spawn(async move { bucket.acquire().await })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        // 50 messages at 100/s: the last one may go at 490 ms, not earlier.
        assert!(start.elapsed() >= ms(490), "{:?}", start.elapsed());
        assert!(start.elapsed() < ms(600), "{:?}", start.elapsed());
    }
}
