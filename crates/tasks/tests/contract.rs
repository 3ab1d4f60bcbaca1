//! One contract suite for the task repository, run against SQLite and PostgreSQL directly
//! (modules `sqlite::`, `postgres::`) and through the HTTP service and its adapter in front of
//! each (`http_sqlite::`, `http_postgres::`). Time moves through a manual clock: no sleeps.

use std::collections::HashSet;
use std::sync::Arc;
use tasks::{Backoff, ManualClock, NewTask, TaskError, TaskFilter, TaskRepository, TaskStatus};
use time::{Duration, macros::datetime};

const LEASE: Duration = Duration::seconds(30);

struct Fixture {
    repo: Arc<dyn TaskRepository>,
    clock: ManualClock,
    backend: testkit::Backend,
    _database: Box<dyn std::any::Any + Send>,
}

fn kinds(names: &[&str]) -> Vec<String> {
    names.iter().map(|k| k.to_string()).collect()
}

fn task(kind: &str, n: u64) -> NewTask {
    NewTask::new(kind, serde_json::json!({ "n": n }))
}

async fn create_get_and_idempotency(f: Fixture) {
    let created = f.repo.create(task("send_campaign", 1)).await.unwrap();
    assert_eq!(
        (created.status, created.attempts, created.max_attempts),
        (TaskStatus::Pending, 0, 5)
    );
    assert_eq!(f.repo.get(created.id).await.unwrap(), Some(created.clone()));
    assert_eq!(
        created.to_string(),
        format!(
            "{} send_campaign pending attempts 0/5 runs after 2026-11-28T09:00:00Z",
            created.id
        )
    );
    assert!(f.repo.get(uuid::Uuid::now_v7()).await.unwrap().is_none());

    let mut keyed = task("send_campaign", 2);
    keyed.idempotency_key = Some("campaign-42".into());
    let first = f.repo.create(keyed.clone()).await.unwrap();
    keyed.payload = serde_json::json!({"n": 3});
    let again = f.repo.create(keyed).await.unwrap();
    assert_eq!(again.id, first.id, "the same key returns the same task");
    assert_eq!(again.payload, serde_json::json!({"n": 2}));
    let many = f
        .repo
        .create_many(vec![task("send_batch", 4), task("send_batch", 5)])
        .await
        .unwrap();
    assert_eq!(many.len(), 2);
    assert_eq!(f.repo.counts().await.unwrap()["pending"], 4);
}

async fn claims_follow_kind_priority_time_and_limit(f: Fixture) {
    let mut later = task("send_batch", 1);
    later.run_after = Some(f.clock.now_plus(Duration::minutes(5)));
    f.repo.create(later).await.unwrap();
    f.repo.create(task("other", 2)).await.unwrap();
    f.repo.create(task("send_batch", 3)).await.unwrap();
    let mut urgent = task("send_batch", 4);
    urgent.priority = 10;
    f.repo.create(urgent).await.unwrap();

    let claimed = f
        .repo
        .claim("w1", &kinds(&["send_batch"]), 10, Duration::hours(1))
        .await
        .unwrap();
    let payloads: Vec<u64> = claimed
        .iter()
        .map(|t| t.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        payloads,
        vec![4, 3],
        "due tasks of the kind, highest priority first"
    );
    assert!(claimed.iter().all(|t| t.status == TaskStatus::Running
        && t.attempts == 1
        && t.lease_owner.as_deref() == Some("w1")));
    assert!(
        f.repo
            .claim("w2", &kinds(&["send_batch"]), 10, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "leased tasks are not claimed twice"
    );

    f.clock.advance(Duration::minutes(5));
    let limited = f
        .repo
        .claim("w2", &kinds(&["send_batch", "other"]), 1, LEASE)
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
    assert_eq!(
        f.repo
            .claim("w2", &kinds(&["send_batch", "other"]), 10, LEASE)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn complete_needs_the_lease(f: Fixture) {
    let created = f.repo.create(task("send_batch", 1)).await.unwrap();
    let claimed = f
        .repo
        .claim("w1", &kinds(&["send_batch"]), 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    let err = f
        .repo
        .complete("w2", claimed.lease(), serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, TaskError::LeaseLost { .. }), "{err}");
    f.repo
        .complete("w1", claimed.lease(), serde_json::json!({"sent": 100}))
        .await
        .unwrap();
    let done = f.repo.get(created.id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.result),
        (
            TaskStatus::Completed,
            Some(serde_json::json!({"sent": 100}))
        )
    );
    assert!(matches!(
        f.repo
            .complete("w1", claimed.lease(), serde_json::json!({}))
            .await,
        Err(TaskError::LeaseLost { .. })
    ));
    assert!(matches!(
        f.repo.requeue(created.id).await,
        Err(TaskError::NotDead { id, status }) if id == created.id && status == "completed"
    ));
    let missing = tasks::Lease {
        task_id: uuid::Uuid::now_v7(),
        attempt: 1,
    };
    assert!(matches!(
        f.repo.complete("w1", missing, serde_json::json!({})).await,
        Err(TaskError::NotFound(_))
    ));
}

async fn an_expired_lease_moves_to_another_worker_and_fences_the_first(f: Fixture) {
    let created = f.repo.create(task("send_batch", 1)).await.unwrap();
    let first = f
        .repo
        .claim("slow", &kinds(&["send_batch"]), 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    f.clock.advance(Duration::seconds(20));
    assert!(
        f.repo
            .heartbeat("slow", &[first.lease()], LEASE)
            .await
            .unwrap()
            .is_empty(),
        "a live lease is extended"
    );
    f.clock.advance(Duration::seconds(25));
    assert!(
        f.repo
            .claim("other", &kinds(&["send_batch"]), 1, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "the heartbeat kept it"
    );
    // The slow worker stops heart-beating (crashed or stuck): its lease runs out.
    f.clock.advance(Duration::seconds(31));
    let second = f
        .repo
        .claim("other", &kinds(&["send_batch"]), 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    assert_eq!((second.id, second.attempts), (created.id, 2));
    assert!(
        matches!(
            f.repo
                .complete("slow", first.lease(), serde_json::json!({}))
                .await,
            Err(TaskError::LeaseLost { .. })
        ),
        "the stale owner is refused"
    );
    assert!(matches!(
        f.repo.fail("slow", first.lease(), "late").await,
        Err(TaskError::LeaseLost { .. })
    ));
    assert_eq!(
        f.repo
            .heartbeat("slow", &[first.lease()], LEASE)
            .await
            .unwrap(),
        vec![first.lease()]
    );
    f.repo
        .complete("other", second.lease(), serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(
        f.repo.get(created.id).await.unwrap().unwrap().status,
        TaskStatus::Completed
    );
}

async fn completing_many_refuses_only_the_leases_lost(f: Fixture) {
    f.repo
        .create_many((0..3).map(|n| task("send_batch", n)).collect())
        .await
        .unwrap();
    let mut claimed = f
        .repo
        .claim("w1", &kinds(&["send_batch"]), 3, LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    // w1 keeps two of its leases alive; the third expires and w2 takes it over.
    f.clock.advance(Duration::seconds(20));
    let kept: Vec<_> = claimed[..2].iter().map(|t| t.lease()).collect();
    assert!(
        f.repo
            .heartbeat("w1", &kept, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    f.clock.advance(Duration::seconds(15));
    let taken = f
        .repo
        .claim("w2", &kinds(&["send_batch"]), 3, LEASE)
        .await
        .unwrap();
    assert_eq!(
        taken.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![claimed[2].id]
    );

    let done: Vec<_> = claimed
        .iter()
        .map(|t| (t.lease(), serde_json::json!({"n": t.payload["n"]})))
        .collect();
    let refused = f.repo.complete_many("w1", &done).await.unwrap();
    assert_eq!(refused, vec![claimed[2].lease()], "only the lost lease");
    for t in &claimed[..2] {
        let stored = f.repo.get(t.id).await.unwrap().unwrap();
        assert_eq!(
            (stored.status, stored.result),
            (
                TaskStatus::Completed,
                Some(serde_json::json!({"n": t.payload["n"]}))
            )
        );
    }
    let still = f.repo.get(claimed[2].id).await.unwrap().unwrap();
    assert_eq!(
        (still.status, still.lease_owner.as_deref()),
        (TaskStatus::Running, Some("w2"))
    );
    assert_eq!(
        f.repo.complete_many("w1", &done).await.unwrap().len(),
        3,
        "finished tasks are not completed twice"
    );
    let last = claimed.pop().unwrap();
    assert_eq!(
        f.repo
            .complete_many("w2", &[(taken[0].lease(), serde_json::json!(null))])
            .await
            .unwrap(),
        vec![]
    );
    assert_eq!(
        f.repo.get(last.id).await.unwrap().unwrap().status,
        TaskStatus::Completed
    );
}

async fn failures_back_off_then_die_and_can_be_requeued(f: Fixture) {
    let mut flaky = task("send_batch", 1);
    flaky.max_attempts = 3;
    let created = f.repo.create(flaky).await.unwrap();
    for attempt in 1..=3u32 {
        let claimed = f
            .repo
            .claim("w", &kinds(&["send_batch"]), 1, LEASE)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(claimed.attempts, attempt);
        let status = f
            .repo
            .fail("w", claimed.lease(), &format!("boom {attempt}"))
            .await
            .unwrap();
        let stored = f.repo.get(created.id).await.unwrap().unwrap();
        assert_eq!(
            stored.last_error.as_deref(),
            Some(format!("boom {attempt}").as_str())
        );
        if attempt < 3 {
            assert_eq!(status, TaskStatus::Pending);
            // initial 1 s × 2^(attempt−1), ±20 % jitter
            let expected = 2f64.powi(attempt as i32 - 1);
            let wait = (stored.run_after - f.clock.now_plus(Duration::ZERO)).as_seconds_f64();
            assert!(
                wait >= expected * 0.8 - 1e-6 && wait <= expected * 1.2 + 1e-6,
                "attempt {attempt}: waited {wait}s"
            );
            assert!(
                f.repo
                    .claim("w", &kinds(&["send_batch"]), 1, LEASE)
                    .await
                    .unwrap()
                    .is_empty(),
                "not before its retry time"
            );
            f.clock.advance(Duration::seconds_f64(wait));
        } else {
            assert_eq!(status, TaskStatus::Dead);
        }
    }
    f.clock.advance(Duration::hours(2));
    assert!(
        f.repo
            .claim("w", &kinds(&["send_batch"]), 1, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "dead tasks stay dead"
    );
    let dead = f
        .repo
        .list(&TaskFilter {
            status: Some(TaskStatus::Dead),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        dead.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![created.id]
    );
    let requeued = f.repo.requeue(created.id).await.unwrap();
    assert_eq!(
        (requeued.status, requeued.attempts),
        (TaskStatus::Pending, 0)
    );
    assert_eq!(
        f.repo
            .claim("w", &kinds(&["send_batch"]), 1, LEASE)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn a_permanent_failure_is_dead_at_once_and_needs_the_lease(f: Fixture) {
    let created = f.repo.create(task("submit_campaign", 1)).await.unwrap();
    assert_eq!(created.max_attempts, 5, "attempts left, yet no retry");
    let claimed = f
        .repo
        .claim("w", &kinds(&["submit_campaign"]), 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    let refused = f
        .repo
        .fail_permanently("other", claimed.lease(), "not mine")
        .await;
    assert!(
        matches!(refused, Err(TaskError::LeaseLost { .. })),
        "{refused:?}"
    );
    f.repo
        .fail_permanently(
            "w",
            claimed.lease(),
            "payload.campaign.name: must not be empty",
        )
        .await
        .unwrap();
    let dead = f.repo.get(created.id).await.unwrap().unwrap();
    assert_eq!((dead.status, dead.attempts), (TaskStatus::Dead, 1));
    assert_eq!(
        dead.last_error.as_deref(),
        Some("payload.campaign.name: must not be empty")
    );
    assert_eq!(dead.lease_owner, None);
    f.clock.advance(Duration::hours(2));
    assert!(
        f.repo
            .claim("w", &kinds(&["submit_campaign"]), 1, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "a permanent failure is never retried"
    );
    let again = f.repo.fail_permanently("w", claimed.lease(), "twice").await;
    assert!(
        matches!(again, Err(TaskError::LeaseLost { .. })),
        "{again:?}"
    );
    assert_eq!(f.repo.counts().await.unwrap()["dead"], 1);
}

async fn lists_filter_on_the_idempotency_key_prefix(f: Fixture) {
    let keyed = |kind: &str, key: &str| {
        let mut new = task(kind, 0);
        new.idempotency_key = Some(key.to_string());
        new
    };
    let created = f
        .repo
        .create_many(vec![
            keyed("send_batch", "send_batch:c1:1:0"),
            keyed("send_batch", "send_batch:c2:1:0"),
            keyed("send_batch", "send_batch:c1:101:0"),
            keyed("send_campaign", "send_campaign:c1:0"),
            task("send_batch", 9),
        ])
        .await
        .unwrap();
    let listed = |prefix: &str| {
        let filter = TaskFilter {
            key_prefix: Some(prefix.to_string()),
            limit: 100,
            ..Default::default()
        };
        let repo = f.repo.clone();
        async move {
            repo.list(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|t| t.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed("send_batch:c1:").await,
        vec![created[0].id, created[2].id]
    );
    assert_eq!(listed("send_campaign:c1:").await, vec![created[3].id]);
    // `_` and `%` are plain characters, not patterns.
    assert!(listed("send_batch:c_:").await.is_empty());
    assert!(listed("send%").await.is_empty());
}

async fn a_lease_lost_on_the_last_attempt_ends_the_task(f: Fixture) {
    let mut once = task("send_batch", 1);
    once.max_attempts = 1;
    let created = f.repo.create(once).await.unwrap();
    f.repo
        .claim("crashing", &kinds(&["send_batch"]), 1, LEASE)
        .await
        .unwrap();
    f.clock.advance(Duration::minutes(1));
    assert!(
        f.repo
            .claim("other", &kinds(&["send_batch"]), 1, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let dead = f.repo.get(created.id).await.unwrap().unwrap();
    assert_eq!(dead.status, TaskStatus::Dead);
    assert!(dead.last_error.unwrap().contains("lease expired"));
}

async fn lists_page_in_creation_order_and_counts_add_up(f: Fixture) {
    let created = f
        .repo
        .create_many(
            (0..5)
                .map(|n| task(if n % 2 == 0 { "a" } else { "b" }, n))
                .collect(),
        )
        .await
        .unwrap();
    let page = f
        .repo
        .list(&TaskFilter {
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let rest = f
        .repo
        .list(&TaskFilter {
            limit: 3,
            after: Some(page[2].id),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = page.iter().chain(rest.iter()).map(|t| t.id).collect();
    assert_eq!(ids, created.iter().map(|t| t.id).collect::<Vec<_>>());
    let only_b = f
        .repo
        .list(&TaskFilter {
            kind: Some("b".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(only_b.len(), 2);
    let claimed = f
        .repo
        .claim("w", &kinds(&["a"]), 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    f.repo
        .complete("w", claimed.lease(), serde_json::json!(null))
        .await
        .unwrap();
    f.repo.claim("w", &kinds(&["a"]), 1, LEASE).await.unwrap();
    let counts = f.repo.counts().await.unwrap();
    assert_eq!(
        (
            counts["pending"],
            counts["running"],
            counts["completed"],
            counts["dead"]
        ),
        (3, 1, 1, 0)
    );
}

async fn oldest_due_is_the_earliest_due_pending_task(f: Fixture) {
    assert_eq!(f.repo.oldest_due().await.unwrap(), None, "an empty queue");
    let first = f.repo.create(task("send_batch", 1)).await.unwrap();
    f.clock.advance(Duration::seconds(10));
    f.repo.create(task("send_batch", 2)).await.unwrap();
    let mut later = task("send_batch", 3);
    later.run_after = Some(f.clock.now_plus(Duration::minutes(5)));
    f.repo.create(later).await.unwrap();
    assert_eq!(
        f.repo.oldest_due().await.unwrap(),
        Some(first.run_after),
        "the first task has waited longest; the one not yet due does not count"
    );
    let claimed = f
        .repo
        .claim("w", &kinds(&["send_batch"]), 2, LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(
        f.repo.oldest_due().await.unwrap(),
        None,
        "claimed tasks no longer wait, and the remaining one is not due yet"
    );
}

fn metric_value(series: &str) -> f64 {
    metrics::render()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Lease expiries (crash recoveries) and dead tasks are counted where the repository runs:
/// in this process, also behind the HTTP service. Other tests share the counters, so only
/// growth is asserted.
async fn crash_recoveries_and_dead_tasks_are_counted(f: Fixture) {
    let expiries = metric_value("task_lease_expiries_total");
    let dead = metric_value(r#"tasks_dead_total{kind="counted_kind"}"#);
    let mut fragile = task("counted_kind", 1);
    fragile.max_attempts = 1;
    f.repo.create(fragile).await.unwrap();
    f.repo.create(task("counted_kind", 2)).await.unwrap();
    let claimed = f
        .repo
        .claim("crashing", &kinds(&["counted_kind"]), 2, LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    f.clock.advance(Duration::minutes(1));
    let recovered = f
        .repo
        .claim("other", &kinds(&["counted_kind"]), 2, LEASE)
        .await
        .unwrap();
    assert_eq!(
        recovered.len(),
        1,
        "the task with attempts left is reclaimed"
    );
    assert!(metric_value("task_lease_expiries_total") >= expiries + 2.0);
    assert!(metric_value(r#"tasks_dead_total{kind="counted_kind"}"#) >= dead + 1.0);
}

/// Claimers race over `total` tasks: each must be completed exactly once, and no task may be
/// handed to two claimers (leases are long enough never to expire here).
async fn concurrent_claimers_complete_every_task_once(f: Fixture) {
    // SQLite has one writer at a time; PostgreSQL takes more claimers at once.
    let claimers = match f.backend {
        testkit::Backend::Sqlite => 4,
        testkit::Backend::Postgres => 8,
    };
    let total: u64 = 10_000;
    for chunk in (0..total).collect::<Vec<_>>().chunks(1000) {
        f.repo
            .create_many(chunk.iter().map(|n| task("send_batch", *n)).collect())
            .await
            .unwrap();
    }
    let workers = (0..claimers).map(|w| {
        let repo = f.repo.clone();
        tokio::spawn(async move {
            let name = format!("worker-{w}");
            let mut seen = Vec::new();
            loop {
                let claimed = repo
                    .claim(&name, &kinds(&["send_batch"]), 100, Duration::minutes(10))
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    return seen;
                }
                // Half the claimers complete task by task, half a whole claim at once.
                if w % 2 == 0 {
                    for task in &claimed {
                        repo.complete(&name, task.lease(), serde_json::json!({}))
                            .await
                            .unwrap();
                    }
                } else {
                    let done: Vec<_> = claimed
                        .iter()
                        .map(|task| (task.lease(), serde_json::json!({})))
                        .collect();
                    let refused = repo.complete_many(&name, &done).await.unwrap();
                    assert!(refused.is_empty(), "{name} lost {refused:?}");
                }
                seen.extend(
                    claimed
                        .iter()
                        .map(|task| task.payload["n"].as_u64().unwrap()),
                );
            }
        })
    });
    let mut all = Vec::new();
    for seen in futures::future::join_all(workers).await {
        all.extend(seen.unwrap());
    }
    let distinct: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(
        all.len() as u64,
        total,
        "every task claimed and completed once: no duplicates"
    );
    assert_eq!(distinct.len() as u64, total);
    assert_eq!(f.repo.counts().await.unwrap()["completed"], total as i64);
}

trait ClockExt {
    fn now_plus(&self, by: Duration) -> time::OffsetDateTime;
}

impl ClockExt for ManualClock {
    fn now_plus(&self, by: Duration) -> time::OffsetDateTime {
        tasks::Clock::now(self) + by
    }
}

/// Numbers and times beyond the documented bounds are refused before any arithmetic, and
/// nothing is stored.
async fn out_of_range_numbers_and_times_are_refused(f: Fixture) {
    let invalid = |result: Result<_, TaskError>, case: &str| match result {
        Err(TaskError::Invalid(message)) => message,
        other => panic!("{case}: expected Invalid, got {other:?}"),
    };
    let with = |change: &dyn Fn(&mut NewTask)| {
        let mut new = task("send_batch", 1);
        change(&mut new);
        new
    };
    let now = tasks::Clock::now(&f.clock);
    let cases: Vec<(&str, NewTask, &str)> = vec![
        ("priority", with(&|t| t.priority = 1001), "priority"),
        ("priority", with(&|t| t.priority = i32::MIN), "priority"),
        ("no attempts", with(&|t| t.max_attempts = 0), "max_attempts"),
        (
            "attempts",
            with(&|t| t.max_attempts = u32::MAX),
            "max_attempts",
        ),
        (
            "beyond the horizon",
            with(&|t| t.run_after = Some(now + Duration::days(1827))),
            "5 years",
        ),
        (
            "year 10000 in UTC",
            with(&|t| t.run_after = Some(datetime!(9999-12-31 23:59:59 -23:59))),
            "after 9999",
        ),
        (
            "year -1 in UTC",
            with(&|t| t.run_after = Some(datetime!(0000-01-01 00:00:00 +23:59))),
            "before 1970",
        ),
    ];
    for (case, new, needle) in cases {
        let message = invalid(f.repo.create(new.clone()).await.map(|_| ()), case);
        assert!(message.contains(needle), "{case}: {message}");
        let message = invalid(
            f.repo
                .create_many(vec![task("send_batch", 0), new])
                .await
                .map(|_| ()),
            case,
        );
        assert!(message.contains(needle), "{case} in a batch: {message}");
    }
    let counts = f.repo.counts().await.unwrap();
    assert!(
        counts.values().all(|n| *n == 0),
        "nothing was stored: {counts:?}"
    );

    let accepted = f
        .repo
        .create(with(&|t| {
            t.priority = 1000;
            t.max_attempts = 1000;
            t.run_after = Some(now - Duration::days(365));
        }))
        .await
        .unwrap();
    let kinds = kinds(&["send_batch"]);
    for lease in [
        Duration::ZERO,
        Duration::milliseconds(86_400_001),
        Duration::days(317 * 365),
        Duration::MAX,
    ] {
        let message = invalid(
            f.repo.claim("w", &kinds, 1, lease).await.map(|_| ()),
            "claim",
        );
        assert!(message.contains("lease_ms"), "{lease}: {message}");
        let message = invalid(
            f.repo
                .heartbeat("w", &[accepted.lease()], lease)
                .await
                .map(|_| ()),
            "heartbeat",
        );
        assert!(message.contains("lease_ms"), "{lease}: {message}");
    }
    let message = invalid(
        f.repo.claim("w", &kinds, 1001, LEASE).await.map(|_| ()),
        "claim limit",
    );
    assert!(message.contains("limit"), "{message}");
    assert_eq!(
        f.repo.counts().await.unwrap()["pending"],
        1,
        "a refused claim takes nothing"
    );
    let claimed = f
        .repo
        .claim("w", &kinds, 1000, tasks::MAX_LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the bounds themselves are accepted");
    assert_eq!(
        claimed[0].lease_expires_at,
        Some(now + tasks::MAX_LEASE),
        "leased for exactly a day"
    );
}

async fn open(database: testkit::TestDatabase) -> Fixture {
    let clock = ManualClock::new(datetime!(2026-11-28 09:00 UTC));
    let repo = tasks::connect_with(database.url(), Arc::new(clock.clone()), Backoff::default())
        .await
        .unwrap();
    Fixture {
        repo,
        clock,
        backend: database.backend(),
        _database: Box::new(database),
    }
}

/// Runs one case on the repository opened directly on `database`.
async fn direct<Case, Run>(database: testkit::TestDatabase, case: Case)
where
    Case: FnOnce(Fixture) -> Run,
    Run: std::future::Future<Output = ()>,
{
    case(open(database).await).await;
}

/// Runs one case through the HTTP adapter, against the service serving a repository on
/// `database`.
async fn over_http<Case, Run>(database: testkit::TestDatabase, case: Case)
where
    Case: FnOnce(Fixture) -> Run,
    Run: std::future::Future<Output = ()>,
{
    case(open_over_http(database).await).await;
}

/// Keeps the in-test service running as long as the fixture, and stops it after.
struct Service {
    server: tokio::task::JoinHandle<()>,
    _database: Box<dyn std::any::Any + Send>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The store-backed fixture served by the real router on 127.0.0.1:0, reached through the
/// adapter with a bearer token: the suite then tests service and adapter together.
async fn open_over_http(database: testkit::TestDatabase) -> Fixture {
    const TOKEN: &str = "contract-suite-token";
    let direct = open(database).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = tasks::http::router(direct.repo, Some(TOKEN.to_string()));
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let adapter =
        tasks::HttpTaskRepository::new(&format!("http://{address}"), Some(TOKEN.to_string()));
    Fixture {
        repo: Arc::new(adapter),
        clock: direct.clock,
        backend: direct.backend,
        _database: Box::new(Service {
            server,
            _database: direct._database,
        }),
    }
}

testkit::backend_suite! {
    runners { direct, http: over_http }
    #[tokio::test] [
        create_get_and_idempotency,
        claims_follow_kind_priority_time_and_limit,
        complete_needs_the_lease,
        an_expired_lease_moves_to_another_worker_and_fences_the_first,
        completing_many_refuses_only_the_leases_lost,
        failures_back_off_then_die_and_can_be_requeued,
        a_permanent_failure_is_dead_at_once_and_needs_the_lease,
        a_lease_lost_on_the_last_attempt_ends_the_task,
        lists_filter_on_the_idempotency_key_prefix,
        lists_page_in_creation_order_and_counts_add_up,
        oldest_due_is_the_earliest_due_pending_task,
        crash_recoveries_and_dead_tasks_are_counted,
        out_of_range_numbers_and_times_are_refused,
    ];
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] [concurrent_claimers_complete_every_task_once];
}
