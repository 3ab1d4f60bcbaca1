//! Token-bucket rate limits (messages per second), reusable per transport and per worker.

use crate::OutgoingMessage;
use crate::outcome::{Accepted, SendError};
use crate::transport::Transport;
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A rate that is not a positive, finite number of messages per second.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("a rate limit must be a positive number of messages per second, not {0}")]
pub struct InvalidRate(pub f64);

/// A token bucket in its GCRA form: one instant, the "theoretical arrival time" of the next
/// message, instead of a token count refilled by a timer. Each caller reserves its slot under
/// a short lock and then sleeps outside it, so concurrent senders are served in order and the
/// long-run rate is exact even when a slot is shorter than the timer's resolution.
#[derive(Debug)]
pub struct TokenBucket {
    interval: Duration,
    /// How far ahead of now the schedule may run before callers wait: `(burst - 1)` slots.
    tolerance: Duration,
    next: Mutex<Option<Instant>>,
}

impl TokenBucket {
    /// `rate` messages per second, at most `burst` (≥ 1) of them back to back after a pause.
    pub fn new(rate: f64, burst: u32) -> Result<TokenBucket, InvalidRate> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(InvalidRate(rate));
        }
        let interval = Duration::from_secs_f64(1.0 / rate);
        Ok(TokenBucket {
            interval,
            tolerance: interval * burst.max(1).saturating_sub(1),
            next: Mutex::new(None),
        })
    }

    /// `rate` messages per second with a burst of a tenth of a second's worth (at least one):
    /// smooth enough for a provider's per-second limit, loose enough not to idle senders.
    pub fn per_second(rate: f64) -> Result<TokenBucket, InvalidRate> {
        let burst = if rate.is_finite() {
            (rate / 10.0).clamp(1.0, u32::MAX as f64) as u32
        } else {
            1
        };
        TokenBucket::new(rate, burst)
    }

    /// Takes the next slot as seen at `now` and returns how long the caller must wait before
    /// sending. The clock is a parameter so the schedule can be tested without sleeping.
    pub fn reserve_at(&self, now: Instant) -> Duration {
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let slot = match *next {
            Some(at) if at > now => at,
            _ => now,
        };
        *next = Some(slot + self.interval);
        slot.saturating_duration_since(now)
            .saturating_sub(self.tolerance)
    }

    /// Waits for a slot.
    pub async fn acquire(&self) {
        // tokio's clock, so paused test time applies here as well.
        let wait = self.reserve_at(tokio::time::Instant::now().into_std());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Messages per second.
    pub fn rate(&self) -> f64 {
        1.0 / self.interval.as_secs_f64()
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

    #[test]
    fn rate_limit_lets_a_burst_through_then_spaces_messages_by_the_interval() {
        let bucket = TokenBucket::new(10.0, 3).expect("valid rate");
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..6).map(|_| bucket.reserve_at(t0)).collect();
        assert_eq!(waits, [ms(0), ms(0), ms(0), ms(100), ms(200), ms(300)]);
    }

    #[test]
    fn rate_limit_refills_with_time_but_never_beyond_the_burst() {
        let bucket = TokenBucket::new(10.0, 2).expect("valid rate");
        let t0 = Instant::now();
        assert_eq!(bucket.reserve_at(t0), ms(0));
        assert_eq!(bucket.reserve_at(t0), ms(0));
        assert_eq!(bucket.reserve_at(t0), ms(100));
        // A long pause earns at most `burst` immediate sends.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(bucket.reserve_at(later), ms(0));
        assert_eq!(bucket.reserve_at(later), ms(0));
        assert_eq!(bucket.reserve_at(later), ms(100));
    }

    #[test]
    fn rate_limit_long_run_rate_is_exact_for_sub_millisecond_slots() {
        // 5,000/s is a 200 µs slot, below tokio's 1 ms timer: the reserved schedule must still
        // add up to one second for 5,000 messages after the burst.
        let bucket = TokenBucket::new(5000.0, 1).expect("valid rate");
        let t0 = Instant::now();
        let last = (0..5001).map(|_| bucket.reserve_at(t0)).last();
        assert_eq!(last, Some(Duration::from_secs(1)));
    }

    #[test]
    fn rate_limit_rejects_rates_that_are_not_positive_numbers() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(TokenBucket::new(rate, 1).is_err(), "{rate}");
            assert!(TokenBucket::per_second(rate).is_err(), "{rate}");
        }
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
