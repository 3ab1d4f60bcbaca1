//! The cost of taking a slot on the send path when no wait is due: `TokenBucket` (governor's
//! direct limiter on tokio's clock) beside the bucket it replaced (GCRA under a mutex, kept
//! below as `previous` for this comparison) and governor on its default quanta clock, in one
//! process, back to back.
//!
//! cargo bench -p delivery --bench rate_limit
//! RATE_LIMIT_CALLS=N LIMITER=previous|governor target/release/deps/rate_limit-* (for callgrind:
//! run once with N=0 and once with N=1000000; the difference divided by N is instructions per slot)

use criterion::{Criterion, criterion_group};
use delivery::TokenBucket;
use governor::RateLimiter;
use governor::clock::QuantaClock;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate no benchmark loop reaches, so every call takes a slot without waiting.
const RATE: f64 = 1e9;

/// The hand-written bucket `TokenBucket` was before governor: the next slot under a mutex.
struct Previous {
    interval: Duration,
    tolerance: Duration,
    next: Mutex<Option<Instant>>,
}

impl Previous {
    fn per_second(rate: f64) -> Previous {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let burst = (rate / 10.0).clamp(1.0, u32::MAX as f64) as u32;
        Previous {
            interval,
            tolerance: interval * burst.saturating_sub(1),
            next: Mutex::new(None),
        }
    }

    /// The synchronous part of the old `acquire`: read tokio's clock, reserve the slot.
    fn reserve(&self) -> Duration {
        let now = tokio::time::Instant::now().into_std();
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let slot = match *next {
            Some(at) if at > now => at,
            _ => now,
        };
        *next = Some(slot + self.interval);
        slot.saturating_duration_since(now)
            .saturating_sub(self.tolerance)
    }
}

fn current() -> TokenBucket {
    TokenBucket::per_second(RATE).expect("rate")
}

fn slot(c: &mut Criterion) {
    let mut group = c.benchmark_group("send_path_slot");
    let previous = Previous::per_second(RATE);
    let governed = current();
    let quota = delivery::rate_limit::quota(RATE, (RATE / 10.0) as u32).expect("quota");
    let quanta = RateLimiter::direct_with_clock(quota, QuantaClock::default());
    group.bench_function("previous_mutex", |b| {
        b.iter(|| black_box(previous.reserve()))
    });
    group.bench_function("governor_tokio_clock", |b| {
        b.iter(|| black_box(governed.try_acquire()))
    });
    group.bench_function("governor_quanta_clock", |b| {
        b.iter(|| black_box(quanta.check().is_ok()))
    });
    group.finish();
}

criterion_group!(benches, slot);

fn main() {
    // A fixed number of calls of one limiter and nothing else, for instruction counts.
    if let Ok(calls) = std::env::var("RATE_LIMIT_CALLS") {
        let calls: u64 = calls.parse().expect("RATE_LIMIT_CALLS is a number");
        match std::env::var("LIMITER").as_deref() {
            Ok("previous") => {
                let previous = Previous::per_second(RATE);
                for _ in 0..calls {
                    black_box(previous.reserve());
                }
            }
            Ok("governor") => {
                let governed = current();
                for _ in 0..calls {
                    black_box(governed.try_acquire()).ok();
                }
            }
            other => panic!("LIMITER must be previous or governor, not {other:?}"),
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
