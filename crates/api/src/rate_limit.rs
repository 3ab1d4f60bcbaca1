//! Per-key request rate limit for `/api/v1`: a token bucket per API key id, refilled at
//! `per_second` up to `burst`. A request that finds the bucket empty gets 429 with
//! `Retry-After` (whole seconds until a token is back). It runs after authentication, so only
//! valid keys have buckets and their number is bounded by the keys that exist.

use crate::idempotency::CallerKey;
use crate::{ApiError, RateLimit};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{NotUntil, Quota};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// governor's clock reading tokio's, so paused test time (which only moves tokio's clock)
/// moves the buckets as well.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = Instant;

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// `per_second` requests a second, at most `burst` (≥ 1) back to back after a pause, as a
/// governor quota; `None` for a rate that is not a positive, finite number.
fn quota(per_second: f64, burst: u32) -> Option<Quota> {
    if !(per_second.is_finite() && per_second > 0.0) {
        return None;
    }
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(Duration::from_secs_f64(1.0 / per_second))
        .map(|quota| quota.allow_burst(burst))
}

/// How long until the refused request would be allowed, read on the buckets' clock.
fn wait_time(refused: &NotUntil<Instant>) -> Duration {
    refused.wait_time_from(TokioClock.now())
}

/// The buckets of every key, shared by all requests: `governor`'s keyed limiter (GCRA), on
/// tokio's clock.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: governor::RateLimiter<
        String,
        HashMapStateStore<String>,
        TokioClock,
        NoOpMiddleware<Instant>,
    >,
}

impl RateLimiter {
    /// # Panics
    /// If `limit.per_second` is not a positive number, which the configuration refuses
    /// (`API_RATE_LIMIT` 0 means no limiter at all).
    pub fn new(limit: RateLimit) -> RateLimiter {
        let quota = quota(limit.per_second, limit.burst)
            .expect("API_RATE_LIMIT is validated as a positive number");
        RateLimiter {
            limit,
            buckets: governor::RateLimiter::new(quota, HashMapStateStore::default(), TokioClock),
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is back.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.buckets
            .check_key(&key.to_string())
            .map_err(|refused| wait_time(&refused))
    }
}

/// Middleware for the admin routes (inside authentication, which names the caller).
pub(crate) async fn limit_per_key(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(caller) = request.extensions().get::<CallerKey>().cloned() else {
        return next.run(request).await;
    };
    match limiter.check(&caller.0) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            ApiError::TooManyRequests {
                detail: format!(
                    "API key {} is over its limit of {} requests per second (bursts of {}); retry in {seconds} s",
                    caller.0, limiter.limit.per_second, limiter.limit.burst
                ),
                retry_after_seconds: seconds,
            }
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_refill_rate_per_key() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 2.0,
            burst: 3,
        });
        for _ in 0..3 {
            assert_eq!(limiter.check("a"), Ok(()));
        }
        let wait = limiter.check("a").unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        // Another key has its own bucket.
        assert_eq!(limiter.check("b"), Ok(()));
        // Half a second brings one token back, and only one.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(limiter.check("a"), Ok(()));
        assert!(limiter.check("a").is_err());
        // A long pause refills to the burst, not beyond.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert_eq!(limiter.check("a"), Ok(()));
        }
        assert!(limiter.check("a").is_err());
    }
}
