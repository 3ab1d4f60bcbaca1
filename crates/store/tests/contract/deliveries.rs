//! Per-recipient delivery: batches, who is due, outcomes, time-zone holds, finishing.

use crate::{document, recipient, rows};
use campaign::{CampaignStatus, DeliveryStatus, Recipient, RecipientId};
use std::sync::Arc;
use store::{CampaignStore, recipient_stream};

pub(crate) async fn batches_cover_every_due_recipient_once(store: Arc<dyn CampaignStore>) {
    let recipients: Vec<Recipient> = (0..250)
        .map(|i| recipient(&format!("b{i}@example.com"), "B"))
        .collect();
    let (record, _) = store
        .create_campaign(&document("Batches"), recipient_stream(rows(recipients)))
        .await
        .unwrap();
    // Another campaign's recipients interleave in id space; ranges must not pick them up.
    store
        .create_campaign(
            &document("Other"),
            recipient_stream(rows(vec![recipient("other@example.com", "O")])),
        )
        .await
        .unwrap();
    let ranges = store.batch_ranges(record.id, 100).await.unwrap();
    assert_eq!(ranges.len(), 3);
    let now = time::OffsetDateTime::now_utc();
    let mut seen = Vec::new();
    for range in &ranges {
        let due = store
            .due_recipients(record.id, *range, store::SendGroup::Campaign, now)
            .await
            .unwrap();
        assert!(due.iter().all(|r| r.campaign_id == record.id
            && r.status == DeliveryStatus::Pending
            && r.attempts == 0));
        seen.extend(due.into_iter().map(|r| r.recipient.email.to_string()));
    }
    assert_eq!(seen.len(), 250);
    let expected: Vec<String> = (0..250).map(|i| format!("b{i}@example.com")).collect();
    assert_eq!(seen, expected, "every recipient once, in order");
    assert_eq!(
        ranges
            .iter()
            .map(|r| r.first <= r.last)
            .filter(|ok| *ok)
            .count(),
        3
    );
}

/// With a local send time, each recipient's zone is resolved at import (the field, or the
/// fallback for a missing or unknown value, which the report lists, also for recipients added
/// later); a held zone is not due before its release, a hold is never moved, and the status
/// per zone shows what waits and when.
pub(crate) async fn local_send_time_zones_are_stored_held_and_released(
    store: Arc<dyn CampaignStore>,
) {
    use time::macros::datetime;
    let zoned = |email: &str, zone: Option<&str>| {
        let mut r = recipient(email, "Z");
        if let Some(zone) = zone {
            r.fields.insert("zone".into(), zone.into());
        }
        r
    };
    let mut doc = document("Local nine");
    doc.scheduled_at = None;
    doc.local_send_time = Some(campaign::LocalSendTime {
        time: "09:00".into(),
        timezone_field: "zone".into(),
        fallback_timezone: "Asia/Tokyo".into(),
    });
    let (record, report) = store
        .create_campaign(
            &doc,
            recipient_stream(rows(vec![
                zoned("a@example.com", Some("Europe/Berlin")),
                zoned("b@example.com", Some("Europe/Nowhere")),
                zoned("c@example.com", None),
            ])),
        )
        .await
        .unwrap();
    let id = record.id;
    assert_eq!(report.unrecognised_time_zones, 1);
    assert_eq!(report.unrecognised_time_zone_rows[0].row, 2);
    assert_eq!(
        report.unrecognised_time_zone_rows[0].value,
        "Europe/Nowhere"
    );
    let later = store
        .import_recipients(
            id,
            recipient_stream(rows(vec![
                zoned("d@example.com", Some("America/Chicago")),
                zoned("e@example.com", Some("")),
                zoned("B@example.com", Some("Europe/Typo")),
            ])),
        )
        .await
        .unwrap();
    assert_eq!((later.imported, later.duplicates), (2, 1));
    assert_eq!(
        later.unrecognised_time_zones, 0,
        "a duplicate's zone is not used, so not reported"
    );
    let zones = store.unreleased_time_zones(id).await.unwrap();
    assert_eq!(
        zones,
        vec![
            ("America/Chicago".to_string(), 1),
            ("Asia/Tokyo".to_string(), 3),
            ("Europe/Berlin".to_string(), 1),
        ]
    );

    let berlin = datetime!(2030-03-01 08:00 UTC);
    let tokyo = datetime!(2030-03-02 00:00 UTC);
    assert_eq!(
        store
            .hold_time_zone(id, "Europe/Berlin", berlin)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.hold_time_zone(id, "Asia/Tokyo", tokyo).await.unwrap(),
        3
    );
    assert_eq!(
        store
            .hold_time_zone(id, "Asia/Tokyo", berlin)
            .await
            .unwrap(),
        0,
        "a held recipient keeps its release time"
    );
    assert_eq!(
        store.unreleased_time_zones(id).await.unwrap(),
        vec![("America/Chicago".to_string(), 1)]
    );
    let releases = store.time_zone_releases(id).await.unwrap();
    let shown: Vec<(&str, i64, Option<time::OffsetDateTime>)> = releases
        .iter()
        .map(|z| (z.zone.as_str(), z.waiting, z.due_at))
        .collect();
    assert_eq!(
        shown,
        vec![
            ("America/Chicago", 1, None),
            ("Asia/Tokyo", 3, Some(tokyo)),
            ("Europe/Berlin", 1, Some(berlin)),
        ]
    );

    let range = store.batch_ranges(id, 10).await.unwrap()[0];
    let due_at = |now| {
        let store = store.clone();
        async move {
            let mut due: Vec<String> = store
                .due_recipients(id, range, store::SendGroup::Campaign, now)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.recipient.email.to_string())
                .collect();
            due.sort();
            due
        }
    };
    let second = time::Duration::SECOND;
    assert_eq!(due_at(berlin - second).await, ["d@example.com"]);
    assert_eq!(due_at(berlin).await, ["a@example.com", "d@example.com"]);
    assert_eq!(
        due_at(tokyo).await,
        [
            "a@example.com",
            "b@example.com",
            "c@example.com",
            "d@example.com",
            "e@example.com"
        ]
    );
    // Chicago has no hold: the range's next due time is "now" (the epoch stand-in).
    assert_eq!(
        store
            .next_due_in_range(id, range, store::SendGroup::Campaign)
            .await
            .unwrap(),
        Some(time::OffsetDateTime::UNIX_EPOCH)
    );
}

/// Sent outcomes are recorded many to a statement: each recipient keeps its own reply and one
/// attempt, across statement chunks; a recipient whose campaign was cancelled meanwhile is
/// recorded as sent (the server has it), and a final state (failed) is never rewritten.
pub(crate) async fn many_sent_outcomes_are_recorded_each_with_its_own_reply(
    store: Arc<dyn CampaignStore>,
) {
    use store::{DeliveryOutcome, OutcomeKind};
    const COUNT: usize = 1_201;
    let recipients: Vec<Recipient> = (0..COUNT)
        .map(|i| recipient(&format!("s{i}@example.com"), "S"))
        .collect();
    let (record, _) = store
        .create_campaign(
            &document("Sent in bulk"),
            recipient_stream(rows(recipients)),
        )
        .await
        .unwrap();
    let id = record.id;
    for (from, to) in [
        (CampaignStatus::Draft, CampaignStatus::Queued),
        (CampaignStatus::Queued, CampaignStatus::Sending),
    ] {
        assert!(store.transition_campaign(id, &[from], to).await.unwrap());
    }
    let ids = due_ids(store.as_ref(), id).await;
    assert_eq!(ids.len(), COUNT);
    store
        .record_outcomes(&[DeliveryOutcome {
            recipient_id: ids[0],
            result: OutcomeKind::Failed {
                error: "550 no".into(),
                attempted: true,
            },
        }])
        .await
        .unwrap();
    assert!(
        store
            .cancel_campaign(id, &[CampaignStatus::Sending])
            .await
            .unwrap()
    );
    let outcomes: Vec<DeliveryOutcome> = ids
        .iter()
        .map(|&recipient_id| DeliveryOutcome {
            recipient_id,
            result: OutcomeKind::Sent {
                reply: format!("250 2.0.0 queued as Q{recipient_id}"),
            },
        })
        .collect();
    store.record_outcomes(&outcomes).await.unwrap();

    let counts = store.delivery_counts(id).await.unwrap();
    assert_eq!(counts.get(DeliveryStatus::Sent), COUNT as i64 - 1);
    assert_eq!(counts.get(DeliveryStatus::Failed), 1);
    assert_eq!(counts.get(DeliveryStatus::Cancelled), 0);
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_deliveries(id, None, after, 500).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.recipient_id);
        listed.extend(page);
    }
    assert_eq!(listed.len(), COUNT);
    for delivery in &listed[1..] {
        assert_eq!(delivery.status, DeliveryStatus::Sent);
        assert_eq!(
            delivery.smtp_reply.as_deref(),
            Some(format!("250 2.0.0 queued as Q{}", delivery.recipient_id).as_str())
        );
        assert_eq!(delivery.attempts, 1);
        assert!(delivery.sent_at.is_some());
    }
    assert_eq!(listed[0].status, DeliveryStatus::Failed);
    assert_eq!(listed[0].last_error.as_deref(), Some("550 no"));
}

pub(crate) async fn outcomes_decide_who_is_due_and_counts_add_up(store: Arc<dyn CampaignStore>) {
    use store::{DeliveryOutcome, OutcomeKind};
    let recipients: Vec<Recipient> = (0..5)
        .map(|i| recipient(&format!("o{i}@example.com"), "O"))
        .collect();
    let (record, _) = store
        .create_campaign(&document("Outcomes"), recipient_stream(rows(recipients)))
        .await
        .unwrap();
    let range = store.batch_ranges(record.id, 100).await.unwrap()[0];
    let now = time::OffsetDateTime::now_utc();
    let due = store
        .due_recipients(record.id, range, store::SendGroup::Campaign, now)
        .await
        .unwrap();
    let ids: Vec<RecipientId> = due.iter().map(|r| r.id).collect();
    let later = now + time::Duration::minutes(5);
    store
        .record_outcomes(&[
            DeliveryOutcome {
                recipient_id: ids[0],
                result: OutcomeKind::Sent {
                    reply: "250 2.0.0 Ok: queued as A1".into(),
                },
            },
            DeliveryOutcome {
                recipient_id: ids[1],
                result: OutcomeKind::Deferred {
                    error: "452 4.3.1 Insufficient system storage".into(),
                    retry_at: later,
                    rate_wait: None,
                },
            },
            DeliveryOutcome {
                recipient_id: ids[2],
                result: OutcomeKind::Failed {
                    error: "550 5.1.1 User unknown".into(),
                    attempted: true,
                },
            },
            DeliveryOutcome {
                recipient_id: ids[3],
                result: OutcomeKind::Suppressed,
            },
        ])
        .await
        .unwrap();
    let due_now: Vec<RecipientId> = store
        .due_recipients(record.id, range, store::SendGroup::Campaign, now)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        due_now,
        vec![ids[4]],
        "only the untouched recipient is due before the retry time"
    );
    let due_later = store
        .due_recipients(record.id, range, store::SendGroup::Campaign, later)
        .await
        .unwrap();
    assert_eq!(
        due_later.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[1], ids[4]]
    );
    assert_eq!(
        (due_later[0].status, due_later[0].attempts),
        (DeliveryStatus::Deferred, 1)
    );

    // Operators page through outcomes, optionally by state.
    let failed = store
        .list_deliveries(record.id, Some(DeliveryStatus::Failed), None, 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].recipient_id, failed[0].last_error.as_deref()),
        (ids[2], Some("550 5.1.1 User unknown"))
    );
    let first_page = store
        .list_deliveries(record.id, None, None, 2)
        .await
        .unwrap();
    let second_page = store
        .list_deliveries(record.id, None, Some(first_page[1].recipient_id), 10)
        .await
        .unwrap();
    assert_eq!(first_page.len() + second_page.len(), 5);
    assert_eq!(
        first_page[0].smtp_reply.as_deref(),
        Some("250 2.0.0 Ok: queued as A1")
    );
    assert!(first_page[0].sent_at.is_some());

    let one = store
        .get_recipient(record.id, ids[0])
        .await
        .unwrap()
        .expect("stored recipient");
    assert_eq!(
        (one.status, one.attempts, one.recipient.email.as_str()),
        (DeliveryStatus::Sent, 1, "o0@example.com")
    );
    assert!(
        store
            .get_recipient(record.id, RecipientId::new(ids[4].get() + 1000))
            .await
            .unwrap()
            .is_none()
    );

    // A sent recipient is never changed back by a late outcome.
    store
        .record_outcomes(&[DeliveryOutcome {
            recipient_id: ids[0],
            result: OutcomeKind::Failed {
                error: "late".into(),
                attempted: true,
            },
        }])
        .await
        .unwrap();
    let counts = store.delivery_counts(record.id).await.unwrap();
    for (status, expected) in [
        (DeliveryStatus::Sent, 1),
        (DeliveryStatus::Deferred, 1),
        (DeliveryStatus::Failed, 1),
        (DeliveryStatus::Suppressed, 1),
        (DeliveryStatus::Pending, 1),
    ] {
        assert_eq!(counts.get(status), expected, "{status}");
    }
    assert_eq!(counts.total(), 5);
    // Batches are stable: the split names every recipient whatever happened to them, so a
    // split run again after a crash creates the same batches.
    assert_eq!(
        store.batch_ranges(record.id, 100).await.unwrap(),
        vec![store::RecipientRange {
            first: ids[0],
            last: ids[4]
        }]
    );
    // The pending recipient makes the range due at once...
    assert_eq!(
        store
            .next_due_in_range(record.id, range, store::SendGroup::Campaign)
            .await
            .unwrap(),
        Some(time::OffsetDateTime::UNIX_EPOCH)
    );
    // ...and without it, the deferred one's retry time is when the range is next due.
    let deferred_only = store::RecipientRange {
        first: ids[0],
        last: ids[3],
    };
    let next = store
        .next_due_in_range(record.id, deferred_only, store::SendGroup::Campaign)
        .await
        .unwrap()
        .expect("the deferred recipient is still to send");
    assert!(
        (next - later).abs() < time::Duration::milliseconds(1),
        "{next} vs {later}"
    );
    let finished = store::RecipientRange {
        first: ids[2],
        last: ids[3],
    };
    assert_eq!(
        store
            .next_due_in_range(record.id, finished, store::SendGroup::Campaign)
            .await
            .unwrap(),
        None
    );
}

pub(crate) async fn a_campaign_finishes_when_every_recipient_is_final(
    store: Arc<dyn CampaignStore>,
) {
    use store::{DeliveryOutcome, OutcomeKind};
    let sent = |id| DeliveryOutcome {
        recipient_id: id,
        result: OutcomeKind::Sent {
            reply: "250 ok".into(),
        },
    };
    let failed = |id| DeliveryOutcome {
        recipient_id: id,
        result: OutcomeKind::Failed {
            error: "550 no".into(),
            attempted: true,
        },
    };
    for (name, make) in [("mixed", 0), ("all failed", 1)] {
        let recipients: Vec<Recipient> = (0..2)
            .map(|i| recipient(&format!("f{i}@example.com"), "F"))
            .collect();
        let (record, _) = store
            .create_campaign(&document(name), recipient_stream(rows(recipients)))
            .await
            .unwrap();
        assert!(
            store
                .transition_campaign(record.id, &[CampaignStatus::Draft], CampaignStatus::Sending)
                .await
                .unwrap()
        );
        let range = store.batch_ranges(record.id, 10).await.unwrap()[0];
        let ids: Vec<RecipientId> = store
            .due_recipients(
                record.id,
                range,
                store::SendGroup::Campaign,
                time::OffsetDateTime::now_utc(),
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        store.record_outcomes(&[failed(ids[0])]).await.unwrap();
        assert_eq!(
            store.finish_if_done(record.id).await.unwrap(),
            None,
            "one recipient is still pending"
        );
        store
            .record_outcomes(&[if make == 0 {
                sent(ids[1])
            } else {
                failed(ids[1])
            }])
            .await
            .unwrap();
        let expected = if make == 0 {
            CampaignStatus::Completed
        } else {
            CampaignStatus::Failed
        };
        assert_eq!(
            store.finish_if_done(record.id).await.unwrap(),
            Some(expected),
            "{name}"
        );
        assert_eq!(
            store.finish_if_done(record.id).await.unwrap(),
            None,
            "finishing happens once"
        );
        assert!(
            store
                .get_campaign(record.id)
                .await
                .unwrap()
                .unwrap()
                .completed_at
                .is_some()
        );
    }
}

/// Sent outcomes whose rows a cancel has locked (it runs between the message leaving and its
/// outcome committing) are all recorded once the cancel commits: the server has the messages.
/// On PostgreSQL the outcome statement waits for the cancel's row locks and then re-checks each
/// row; on SQLite the writers take turns.
pub(crate) async fn sent_outcomes_that_wait_for_a_cancel_are_all_recorded(
    store: Arc<dyn CampaignStore>,
    url: String,
) {
    use store::{DeliveryOutcome, OutcomeKind};
    const COUNT: usize = 3_000;
    let recipients: Vec<Recipient> = (0..COUNT)
        .map(|i| recipient(&format!("race{i}@example.com"), "R"))
        .collect();
    let (record, _) = store
        .create_campaign(
            &document("Racing a cancel"),
            recipient_stream(rows(recipients)),
        )
        .await
        .unwrap();
    let id = record.id;
    let ids = due_ids(store.as_ref(), id).await;
    assert_eq!(ids.len(), COUNT);
    // A group commit's worth of outcomes from the middle of a large campaign (the plan
    // PostgreSQL picks, and with it the lost rows, depended on the table's size).
    let sent_ids = &ids[1_000..1_020];
    let outcomes: Vec<DeliveryOutcome> = sent_ids
        .iter()
        .map(|&recipient_id| DeliveryOutcome {
            recipient_id,
            result: OutcomeKind::Sent {
                reply: format!("250 queued as Q{recipient_id}"),
            },
        })
        .collect();
    let record_in_background = |outcomes: Vec<DeliveryOutcome>| {
        let store = store.clone();
        tokio::spawn(async move { store.record_outcomes(&outcomes).await })
    };
    // The cancel's recipient update, held open (the database has only this campaign).
    const CANCEL: &str = "UPDATE recipients SET status = 'cancelled', next_attempt_at = NULL \
                          WHERE status IN ('pending', 'deferred')";
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let mut cancel = pool.begin().await.unwrap();
        sqlx::query(CANCEL).execute(&mut *cancel).await.unwrap();
        let recording = record_in_background(outcomes);
        // Commit only once the outcome statement is waiting for the cancel's row locks.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the outcome statement never waited for the cancel"
            );
            tokio::task::yield_now().await;
        }
        cancel.commit().await.unwrap();
        recording.await.unwrap().unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let mut cancel = pool.begin().await.unwrap();
        sqlx::query(CANCEL).execute(&mut *cancel).await.unwrap();
        let recording = record_in_background(outcomes);
        cancel.commit().await.unwrap();
        recording.await.unwrap().unwrap();
        pool.close().await;
    }
    let counts = store.delivery_counts(id).await.unwrap();
    assert_eq!(
        counts.get(DeliveryStatus::Sent),
        sent_ids.len() as i64,
        "every sent outcome is recorded, cancel or not"
    );
    assert_eq!(
        counts.get(DeliveryStatus::Cancelled),
        (COUNT - sent_ids.len()) as i64
    );
}

/// The ids of every recipient of campaign `id` that is due now, over all its batch ranges.
async fn due_ids(store: &dyn CampaignStore, id: campaign::CampaignId) -> Vec<RecipientId> {
    let mut ids = Vec::new();
    for range in store.batch_ranges(id, 1000).await.unwrap() {
        let due = store
            .due_recipients(
                id,
                range,
                store::SendGroup::Campaign,
                time::OffsetDateTime::now_utc(),
            )
            .await
            .unwrap();
        ids.extend(due.iter().map(|r| r.id));
    }
    ids
}

/// A deferral for a sending rate uses none of the recipient's delivery attempts (a server's
/// temporary failure does), and the campaign's status groups the recipients waiting for a
/// rate by what they wait for, with when the first and the last are due; recipients deferred
/// by the server, or delivered since, are not counted.
pub(crate) async fn rate_deferrals_are_no_attempts_and_show_what_they_wait_for(
    store: Arc<dyn CampaignStore>,
) {
    use store::{DeliveryOutcome, OutcomeKind, RateWait};
    use time::macros::datetime;
    let recipients: Vec<Recipient> = (0..5)
        .map(|i| recipient(&format!("w{i}@example.com"), "W"))
        .collect();
    let (record, _) = store
        .create_campaign(&document("Rate waits"), recipient_stream(rows(recipients)))
        .await
        .unwrap();
    let id = record.id;
    let range = store.batch_ranges(id, 100).await.unwrap()[0];
    let ids: Vec<campaign::RecipientId> = store
        .due_recipients(
            id,
            range,
            store::SendGroup::Campaign,
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    let (first, second, third) = (
        datetime!(2030-01-01 10:00:01 UTC),
        datetime!(2030-01-01 10:00:02 UTC),
        datetime!(2030-01-01 10:00:03 UTC),
    );
    let waiting = |recipient_id, destination: &str, retry_at| DeliveryOutcome {
        recipient_id,
        result: OutcomeKind::Deferred {
            error: format!("waiting for the sending rate of {destination}"),
            retry_at,
            rate_wait: Some(destination.into()),
        },
    };
    // Deferred for a rate three times over: still no attempt used.
    for _ in 0..3 {
        store
            .record_outcomes(&[
                waiting(ids[0], "group google", first),
                waiting(ids[1], "group google", third),
                waiting(ids[2], "the global limit", second),
                waiting(ids[3], "group google", second),
            ])
            .await
            .unwrap();
    }
    store
        .record_outcomes(&[
            // The server's temporary failure is an attempt, and no rate wait.
            DeliveryOutcome {
                recipient_id: ids[3],
                result: OutcomeKind::Deferred {
                    error: "452 4.3.1 Insufficient system storage".into(),
                    retry_at: second,
                    rate_wait: None,
                },
            },
            DeliveryOutcome {
                recipient_id: ids[2],
                result: OutcomeKind::Sent {
                    reply: "250 ok".into(),
                },
            },
        ])
        .await
        .unwrap();
    let attempts = |n: usize| {
        let store = store.clone();
        let recipient_id = ids[n];
        async move {
            store
                .get_recipient(id, recipient_id)
                .await
                .unwrap()
                .expect("recipient")
                .attempts
        }
    };
    assert_eq!(attempts(0).await, 0, "rate deferrals are no attempts");
    assert_eq!(attempts(1).await, 0);
    assert_eq!(attempts(3).await, 1, "the server's 452 is one");
    assert_eq!(attempts(2).await, 1, "sent after waiting: one attempt");
    assert_eq!(
        store.rate_waits(id).await.unwrap(),
        vec![RateWait {
            destination: "group google".into(),
            waiting: 2,
            next_at: first,
            until: third,
        }]
    );
}
