//! The campaign processor (`processor::Scheduler`) on a clock of the test's own: a due
//! campaign enqueued once, a lost task repaired, and a campaign due while the task
//! repository is down queued later.

use crate::support::*;
use campaign::{CampaignId, CampaignStatus};
use std::sync::Arc;
use std::time::Duration;
use tasks::TaskRepository;

/// A campaign of `recipients` recipients, scheduled for `at`.
async fn scheduled(
    harness: &Harness,
    name: &str,
    recipients_count: usize,
    at: time::OffsetDateTime,
) -> CampaignId {
    let (record, _) = harness
        .store
        .create_campaign(
            &document(name, 10),
            store::recipient_stream(recipients(recipients_count)),
        )
        .await
        .unwrap();
    assert!(
        harness
            .store
            .schedule_campaign(record.id, Some(at))
            .await
            .unwrap()
    );
    record.id
}

/// The task repository service down (nothing listens at its address) while a campaign is
/// due: the replica wins it, the check fails naming the repository, the campaign stays
/// `queued` without a task, and once the repository answers, the repair gives it its one task.
async fn a_campaign_due_while_the_task_repository_is_down_is_queued_later(harness: Harness) {
    use time::macros::datetime;
    let at = datetime!(2031-02-01 09:00 UTC);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let down: Arc<dyn TaskRepository> = Arc::new(
        tasks::HttpTaskRepository::new(&format!("http://{address}"), None).with_retry(
            tasks::AdapterRetry {
                attempts: 1,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(10),
            },
        ),
    );
    let config = processor::SchedulerConfig::new(Duration::from_secs(60));
    let failing = processor::Scheduler::new(config.clone(), harness.store.clone(), down);
    let id = scheduled(&harness, "Due while down", 2, at).await;
    let err = failing.check(at, true).await.unwrap_err();
    assert!(err.to_string().contains(&address.to_string()), "{err}");
    // Won by this replica, and without its task.
    assert_eq!(harness.status(id).await, CampaignStatus::Queued);
    assert!(send_tasks_of(harness.tasks.as_ref(), id).await.is_empty());

    let working = processor::Scheduler::new(config, harness.store.clone(), harness.tasks.clone());
    let later = at + time::Duration::seconds(11);
    assert_eq!(working.check(later, true).await.unwrap().repaired, 1);
    assert_eq!(send_tasks_of(harness.tasks.as_ref(), id).await.len(), 1);
}

/// The campaign processor on a clock of the test's own: nothing before the campaign's time,
/// exactly one task at it (reported with its lateness), and a campaign a crashed replica left
/// `queued` without a task gets one at the first full check after the repair delay.
async fn a_due_campaign_is_enqueued_once_and_a_lost_task_is_repaired(harness: Harness) {
    use time::macros::datetime;
    let at = datetime!(2031-01-01 09:00 UTC);
    let millis = time::Duration::milliseconds;
    let scheduler = processor::Scheduler::new(
        processor::SchedulerConfig::new(Duration::from_secs(60)),
        harness.store.clone(),
        harness.tasks.clone(),
    );
    let first = scheduled(&harness, "Timed", 3, at).await;

    let early = scheduler.check(at - millis(1), false).await.unwrap();
    assert!(early.enqueued.is_empty());
    assert_eq!(early.next_due, Some(at));
    let on_time = scheduler.check(at + millis(200), false).await.unwrap();
    assert_eq!(
        on_time.enqueued,
        vec![processor::EnqueuedCampaign {
            id: first,
            lateness: Duration::from_millis(200)
        }]
    );
    assert_eq!(on_time.next_due, None);
    let record = harness.store.get_campaign(first).await.unwrap().unwrap();
    assert_eq!(record.status, CampaignStatus::Queued);
    assert_eq!(record.start_delay(), Some(millis(200)));
    assert_eq!(send_tasks_of(harness.tasks.as_ref(), first).await.len(), 1);
    assert!(
        scheduler
            .check(at + millis(400), true)
            .await
            .unwrap()
            .enqueued
            .is_empty(),
        "a campaign is enqueued once"
    );

    // A replica wins the second campaign and dies before creating its task.
    let later = at + time::Duration::minutes(5);
    let second = scheduled(&harness, "Orphan", 3, later).await;
    let won = harness.store.queue_due_campaigns(later, 10).await.unwrap();
    assert_eq!(won.len(), 1);
    assert!(
        send_tasks_of(harness.tasks.as_ref(), second)
            .await
            .is_empty()
    );
    let soon = scheduler
        .check(later + time::Duration::seconds(5), true)
        .await
        .unwrap();
    assert!(soon.enqueued.is_empty());
    assert!(
        send_tasks_of(harness.tasks.as_ref(), second)
            .await
            .is_empty(),
        "not while the winner may still be creating it"
    );
    let repaired = scheduler
        .check(later + time::Duration::seconds(11), true)
        .await
        .unwrap();
    assert_eq!(repaired.repaired, 2, "both queued campaigns are looked at");
    assert_eq!(send_tasks_of(harness.tasks.as_ref(), second).await.len(), 1);
    assert_eq!(
        send_tasks_of(harness.tasks.as_ref(), first).await.len(),
        1,
        "a campaign that has its task keeps just that one"
    );
}

testkit::backend_suite! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)] with_harness => [
        a_due_campaign_is_enqueued_once_and_a_lost_task_is_repaired,
        a_campaign_due_while_the_task_repository_is_down_is_queued_later,
    ];
}
