//! The shared sending-rate schedules (`store::sending_rates`), the same story on SQLite and
//! on PostgreSQL.

use std::sync::Arc;
use store::sending_rates::{SendingRateStore, SlotLease, Slowdown};

const MS: i64 = 1_000_000;

/// Leases taken at once by many workers are consecutive stretches that never overlap.
async fn concurrent_leases_take_consecutive_stretches(rates: Arc<dyn SendingRateStore>) {
    let now = 1_000_000 * MS;
    let leases: Vec<Result<Result<SlotLease, _>, _>> = futures::future::join_all(
        (0..12)
            .map(|_| {
                let rates = rates.clone();
                tokio::spawn(async move { rates.lease_slots("global", now, 200 * MS).await })
            })
            .collect::<Vec<_>>(),
    )
    .await;
    let mut stretches: Vec<(i64, i64)> = leases
        .into_iter()
        .map(|lease| {
            let lease = lease.expect("task").expect("leased");
            (lease.start_ns, lease.end_ns)
        })
        .collect();
    stretches.sort();
    assert_eq!(stretches[0].0, now, "the first starts now");
    for pair in stretches.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "consecutive, never overlapping");
    }
    assert_eq!(stretches.last().unwrap().1, now + 12 * 200 * MS);
    // Another schedule is independent.
    let other = rates
        .lease_slots("group:google", now, 50 * MS)
        .await
        .unwrap();
    assert_eq!((other.start_ns, other.end_ns), (now, now + 50 * MS));
}

/// Time nobody used is not saved up: a lease after a pause starts at its own `now`.
async fn unused_time_is_not_saved_up(rates: Arc<dyn SendingRateStore>) {
    let first = rates
        .lease_slots("global", 1_000 * MS, 200 * MS)
        .await
        .unwrap();
    assert_eq!(first.end_ns, 1_200 * MS);
    let later = rates
        .lease_slots("global", 5_000 * MS, 200 * MS)
        .await
        .unwrap();
    assert_eq!((later.start_ns, later.end_ns), (5_000 * MS, 5_200 * MS));
}

/// The unused end of a lease goes back only while nobody leased after it.
async fn unused_slots_go_back_only_from_the_last_lease(rates: Arc<dyn SendingRateStore>) {
    let a = rates
        .lease_slots("global", 1_000 * MS, 200 * MS)
        .await
        .unwrap();
    assert!(
        rates
            .return_slots("global", a.end_ns, 1_050 * MS)
            .await
            .unwrap()
    );
    let b = rates
        .lease_slots("global", 1_000 * MS, 200 * MS)
        .await
        .unwrap();
    assert_eq!(
        b.start_ns,
        1_050 * MS,
        "the given-back time is leased again"
    );
    let c = rates
        .lease_slots("global", 1_000 * MS, 200 * MS)
        .await
        .unwrap();
    // b is no longer the last lease: its time stays used.
    assert!(
        !rates
            .return_slots("global", b.end_ns, 1_100 * MS)
            .await
            .unwrap()
    );
    let d = rates
        .lease_slots("global", 1_000 * MS, 200 * MS)
        .await
        .unwrap();
    assert_eq!(d.start_ns, c.end_ns);
}

/// A throttling reply's slow-down is kept on the row, seen by every later lease, and decided
/// under a lock from the slow-down it found.
async fn throttles_are_recorded_and_seen_by_every_lease(rates: Arc<dyn SendingRateStore>) {
    let lease = rates
        .lease_slots("group:google", 1_000 * MS, 200 * MS)
        .await
        .unwrap();
    assert_eq!(lease.slowdown, None);
    let halve = |current: Option<Slowdown>| Some(current.map_or(100.0, |s| s.rate) / 2.0);
    let first = rates
        .record_throttle("group:google", 2_000 * MS, &halve)
        .await
        .unwrap();
    assert_eq!(
        first,
        Some(Slowdown {
            rate: 50.0,
            throttled_ns: 2_000 * MS
        })
    );
    // Concurrent replies each halve from what the previous one left, never both from 50.
    let handles: Vec<_> = (0..2)
        .map(|n| {
            let rates = rates.clone();
            tokio::spawn(async move {
                let halve =
                    |current: Option<Slowdown>| Some(current.map_or(100.0, |s| s.rate) / 2.0);
                rates
                    .record_throttle("group:google", (3_000 + n) * MS, &halve)
                    .await
            })
        })
        .collect();
    for result in futures::future::join_all(handles).await {
        result.expect("task").expect("recorded");
    }
    let leased = rates
        .lease_slots("group:google", 4_000 * MS, MS)
        .await
        .unwrap();
    assert_eq!(leased.slowdown.map(|s| s.rate), Some(12.5));
    // Leaving it as it is writes nothing.
    let kept = rates
        .record_throttle("group:google", 5_000 * MS, &|_| None)
        .await
        .unwrap();
    assert_eq!(kept, leased.slowdown);
    let states = rates.schedules().await.unwrap();
    let names: Vec<&str> = states.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["group:google"]);
    // A throttle on a schedule nobody leased yet creates it.
    rates
        .record_throttle("domain:x.example", 1_000 * MS, &|_| Some(1.0))
        .await
        .unwrap();
    assert_eq!(rates.schedules().await.unwrap().len(), 2);
}

macro_rules! sending_rate_suite {
    ($backend:ident, $open:expr) => {
        mod $backend {
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        #[allow(clippy::redundant_closure_call)]
                        let Some((rates, _guard)) = ($open)().await else {
                            return;
                        };
                        super::$name(rates).await;
                    }
                };
            }
            case!(concurrent_leases_take_consecutive_stretches);
            case!(unused_time_is_not_saved_up);
            case!(unused_slots_go_back_only_from_the_last_lease);
            case!(throttles_are_recorded_and_seen_by_every_lease);
        }
    };
}

sending_rate_suite!(sqlite, || async {
    let database = testkit::SqliteDatabase::create();
    let rates = store::sending_rates::connect(&database.url).await.unwrap();
    Some((rates, Box::new(database) as Box<dyn std::any::Any + Send>))
});

sending_rate_suite!(postgres, || async {
    let database = testkit::PostgresDatabase::create().await?;
    let rates = store::sending_rates::connect(&database.url).await.unwrap();
    Some((rates, Box::new(database) as Box<dyn std::any::Any + Send>))
});
