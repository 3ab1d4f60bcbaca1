//! One contract suite, run against every backend: the same story must hold on SQLite and on
//! PostgreSQL. Each backend's tests live in a module named after it (`sqlite::…`,
//! `postgres::…`) so CI can count and filter them per backend.

use campaign::{
    CampaignDocument, CampaignStatus, DeliveryStatus, EmailAddress, Limits, Recipient, RowError,
};
use std::sync::Arc;
use store::{
    CampaignFilter, CampaignStore, EventCount, StoreError, TrackingEvent, TrackingEventKind,
    recipient_stream,
};

fn document(name: &str) -> CampaignDocument {
    let text = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/sample_campaign.json"
    ))
    .unwrap();
    let mut document = CampaignDocument::from_json(&text, &Limits::default()).unwrap();
    document.name = name.to_string();
    document
}

fn recipient(email: &str, first_name: &str) -> Recipient {
    let mut fields = serde_json::Map::new();
    fields.insert("first_name".into(), first_name.into());
    Recipient {
        email: EmailAddress::parse(email).unwrap(),
        fields,
    }
}

fn rows(recipients: Vec<Recipient>) -> Vec<Result<Recipient, RowError>> {
    recipients.into_iter().map(Ok).collect()
}

async fn campaign_round_trips_with_its_recipients(store: Arc<dyn CampaignStore>) {
    let mut doc = document("Round trip");
    doc.scheduled_at = Some(time::macros::datetime!(2030-01-02 03:04:05.123456 +02:00));
    let recipients = vec![
        recipient("ann@example.com", "Ann"),
        recipient("bob@example.org", "Bob"),
    ];
    let (record, report) = store
        .create_campaign(&doc, recipient_stream(rows(recipients)))
        .await
        .unwrap();
    assert_eq!(
        (report.received, report.imported, report.duplicates),
        (2, 2, 0)
    );
    assert_eq!(record.recipient_count, 2);
    assert_eq!(record.status, CampaignStatus::Scheduled);

    let fetched = store
        .get_campaign(record.id)
        .await
        .unwrap()
        .expect("stored campaign");
    assert_eq!(fetched.document, doc.without_recipients());
    assert_eq!(fetched.scheduled_at, doc.scheduled_at);
    assert_eq!(fetched.created_at, record.created_at);

    let counts = store.delivery_counts(record.id).await.unwrap();
    assert_eq!(counts.get(DeliveryStatus::Pending), 2);
    assert_eq!(counts.total(), fetched.recipient_count);
    for status in DeliveryStatus::ALL {
        assert!(
            counts.0.contains_key(status.as_str()),
            "every state is reported, {status} too"
        );
    }
}

async fn a_campaign_under_a_chosen_id_is_stored_once(store: Arc<dyn CampaignStore>) {
    let id = uuid::Uuid::now_v7();
    let doc = document("Submitted by a task");
    let first = vec![
        recipient("ann@example.com", "Ann"),
        recipient("bob@example.org", "Bob"),
    ];
    let (record, report) = store
        .create_campaign_once(id, &doc, recipient_stream(rows(first)))
        .await
        .unwrap();
    assert_eq!(record.id, id);
    assert_eq!(record.recipient_count, 2);
    assert_eq!(report.map(|r| r.imported), Some(2));
    // The same task run again (after a crash), even with other recipients: nothing new.
    let again = vec![
        recipient("ann@example.com", "Ann"),
        recipient("cid@example.net", "Cid"),
    ];
    let (existing, report) = store
        .create_campaign_once(id, &document("Renamed"), recipient_stream(rows(again)))
        .await
        .unwrap();
    assert_eq!(report, None, "no second import");
    assert_eq!(
        (existing.id, existing.name.as_str()),
        (id, "Submitted by a task")
    );
    assert_eq!(existing.recipient_count, 2);
    let counts = store.delivery_counts(id).await.unwrap();
    assert_eq!(counts.total(), 2);
    let listed = store
        .list_campaigns(&CampaignFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.items.iter().filter(|c| c.id == id).count(), 1);
}

async fn duplicates_are_skipped_and_reported(store: Arc<dyn CampaignStore>) {
    // 2,500 rows cross the 1,000-row chunk boundary; duplicates sit inside one chunk, across
    // chunks, and differ only by case.
    let mut recipients: Vec<Recipient> = (0..2500)
        .map(|i| recipient(&format!("user{i}@example.com"), "U"))
        .collect();
    recipients.push(recipient("USER7@Example.com", "Shouty"));
    recipients.insert(10, recipient("user2400@example.com", "Early"));
    let (record, report) = store
        .create_campaign(&document("Dups"), recipient_stream(rows(recipients)))
        .await
        .unwrap();
    assert_eq!(report.received, 2502);
    assert_eq!(report.imported, 2500);
    assert_eq!(report.duplicates, 2);
    let duplicate_emails: Vec<&str> = report
        .duplicate_rows
        .iter()
        .map(|d| d.email.as_str())
        .collect();
    assert!(
        duplicate_emails.contains(&"USER7@Example.com"),
        "{duplicate_emails:?}"
    );
    assert!(
        duplicate_emails.contains(&"user2400@example.com"),
        "{duplicate_emails:?}"
    );
    assert_eq!(
        report
            .duplicate_rows
            .iter()
            .find(|d| d.email == "USER7@Example.com")
            .unwrap()
            .row,
        2502
    );

    // A second import overlapping the stored rows adds only the new addresses.
    let more = vec![
        recipient("user1@example.com", "Again"),
        recipient("new@example.com", "New"),
    ];
    let report = store
        .import_recipients(record.id, recipient_stream(rows(more)))
        .await
        .unwrap();
    assert_eq!((report.imported, report.duplicates), (1, 1));
    assert_eq!(report.duplicate_rows[0].row, 1);
    let stored = store.get_campaign(record.id).await.unwrap().unwrap();
    assert_eq!(stored.recipient_count, 2501);
    assert_eq!(
        store.delivery_counts(record.id).await.unwrap().total(),
        2501
    );
}

async fn a_bad_row_stores_nothing(store: Arc<dyn CampaignStore>) {
    let bad = |row: u64| RowError {
        row,
        line: row + 1,
        column: None,
        message: "invalid email address".into(),
    };
    // Good rows first, so a chunk would already have been inserted when the bad one comes.
    let mut input: Vec<Result<Recipient, RowError>> = (0..1500)
        .map(|i| Ok(recipient(&format!("r{i}@example.com"), "R")))
        .collect();
    input.push(Err(bad(1501)));
    input.push(Ok(recipient("late@example.com", "L")));
    input.push(Err(bad(1503)));
    let before = store
        .list_campaigns(&CampaignFilter {
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .items
        .len();
    let err = store
        .create_campaign(&document("Bad rows"), recipient_stream(input))
        .await
        .unwrap_err();
    match err {
        StoreError::InvalidRecipients { rows, total } => {
            assert_eq!(total, 2);
            assert_eq!(rows.iter().map(|r| r.row).collect::<Vec<_>>(), [1501, 1503]);
        }
        other => panic!("expected InvalidRecipients, got {other:?}"),
    }
    let after = store
        .list_campaigns(&CampaignFilter {
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(before, after, "the campaign must not be stored");

    let (record, _) = store
        .create_campaign(
            &document("Keeps its rows"),
            recipient_stream(rows(vec![recipient("a@example.com", "A")])),
        )
        .await
        .unwrap();
    let input = vec![Ok(recipient("b@example.com", "B")), Err(bad(2))];
    assert!(matches!(
        store
            .import_recipients(record.id, recipient_stream(input))
            .await,
        Err(StoreError::InvalidRecipients { total: 1, .. })
    ));
    assert_eq!(store.delivery_counts(record.id).await.unwrap().total(), 1);
    assert_eq!(
        store
            .get_campaign(record.id)
            .await
            .unwrap()
            .unwrap()
            .recipient_count,
        1
    );
}

async fn unknown_campaigns_are_reported(store: Arc<dyn CampaignStore>) {
    let id = uuid::Uuid::now_v7();
    assert!(store.get_campaign(id).await.unwrap().is_none());
    let err = store
        .import_recipients(id, recipient_stream(Vec::new()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::CampaignNotFound(missing) if missing == id),
        "{err:?}"
    );
    assert_eq!(store.delivery_counts(id).await.unwrap().total(), 0);
}

async fn campaigns_page_newest_first(store: Arc<dyn CampaignStore>) {
    let mut created = Vec::new();
    for i in 0..5 {
        let mut doc = document(&format!("Page {i}"));
        if i % 2 == 0 {
            doc.scheduled_at = Some(time::OffsetDateTime::now_utc() + time::Duration::days(1));
        }
        created.push(
            store
                .create_campaign(&doc, recipient_stream(Vec::new()))
                .await
                .unwrap()
                .0
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut filter = CampaignFilter {
        limit: 2,
        ..Default::default()
    };
    loop {
        let page = store.list_campaigns(&filter).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|c| c.id));
        match page.next_cursor {
            Some(cursor) => filter.before = Some(cursor),
            None => break,
        }
    }
    created.reverse();
    assert_eq!(seen, created, "every campaign once, newest first");

    let scheduled = store
        .list_campaigns(&CampaignFilter {
            status: Some(CampaignStatus::Scheduled),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(scheduled.items.len(), 3);
    assert!(
        scheduled
            .items
            .iter()
            .all(|c| c.status == CampaignStatus::Scheduled)
    );
}

async fn campaign_transitions_are_conditional(store: Arc<dyn CampaignStore>) {
    let (record, _) = store
        .create_campaign(&document("Transitions"), recipient_stream(Vec::new()))
        .await
        .unwrap();
    let id = record.id;
    assert!(
        store
            .transition_campaign(id, &[CampaignStatus::Draft], CampaignStatus::Queued)
            .await
            .unwrap()
    );
    assert!(
        !store
            .transition_campaign(id, &[CampaignStatus::Draft], CampaignStatus::Queued)
            .await
            .unwrap(),
        "only one of two racers wins"
    );
    assert!(
        store
            .transition_campaign(
                id,
                &[CampaignStatus::Queued, CampaignStatus::Paused],
                CampaignStatus::Sending
            )
            .await
            .unwrap()
    );
    let sending = store.get_campaign(id).await.unwrap().unwrap();
    assert_eq!(sending.status, CampaignStatus::Sending);
    let started = sending
        .started_at
        .expect("entering sending stamps started_at");
    assert!(sending.completed_at.is_none());
    assert!(
        store
            .transition_campaign(id, &[CampaignStatus::Sending], CampaignStatus::Completed)
            .await
            .unwrap()
    );
    let done = store.get_campaign(id).await.unwrap().unwrap();
    assert_eq!(done.started_at, Some(started));
    assert!(done.completed_at.unwrap() >= started);
    assert!(
        !store
            .transition_campaign(
                uuid::Uuid::now_v7(),
                &[CampaignStatus::Draft],
                CampaignStatus::Queued
            )
            .await
            .unwrap()
    );
}

async fn batches_cover_every_due_recipient_once(store: Arc<dyn CampaignStore>) {
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
        let due = store.due_recipients(record.id, *range, now).await.unwrap();
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
async fn local_send_time_zones_are_stored_held_and_released(store: Arc<dyn CampaignStore>) {
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
                .due_recipients(id, range, now)
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
        store.next_due_in_range(id, range).await.unwrap(),
        Some(time::OffsetDateTime::UNIX_EPOCH)
    );
}

/// Sent outcomes are recorded many to a statement: each recipient keeps its own reply and one
/// attempt, across statement chunks; a recipient whose campaign was cancelled meanwhile is
/// recorded as sent (the server has it), and a final state (failed) is never rewritten.
async fn many_sent_outcomes_are_recorded_each_with_its_own_reply(store: Arc<dyn CampaignStore>) {
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
    let mut ids = Vec::new();
    for range in store.batch_ranges(id, 1000).await.unwrap() {
        let due = store
            .due_recipients(id, range, time::OffsetDateTime::now_utc())
            .await
            .unwrap();
        ids.extend(due.iter().map(|r| r.id));
    }
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

async fn outcomes_decide_who_is_due_and_counts_add_up(store: Arc<dyn CampaignStore>) {
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
    let due = store.due_recipients(record.id, range, now).await.unwrap();
    let ids: Vec<i64> = due.iter().map(|r| r.id).collect();
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
    let due_now: Vec<i64> = store
        .due_recipients(record.id, range, now)
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
    let due_later = store.due_recipients(record.id, range, later).await.unwrap();
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
            .get_recipient(record.id, ids[4] + 1000)
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
        store.next_due_in_range(record.id, range).await.unwrap(),
        Some(time::OffsetDateTime::UNIX_EPOCH)
    );
    // ...and without it, the deferred one's retry time is when the range is next due.
    let deferred_only = store::RecipientRange {
        first: ids[0],
        last: ids[3],
    };
    let next = store
        .next_due_in_range(record.id, deferred_only)
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
        store.next_due_in_range(record.id, finished).await.unwrap(),
        None
    );
}

async fn suppressions_match_whatever_the_case(store: Arc<dyn CampaignStore>) {
    let address = EmailAddress::parse("Unsubscribed@Example.com").unwrap();
    store.suppress(&address, "unsubscribed").await.unwrap();
    store.suppress(&address, "again").await.unwrap();
    let keys = vec![
        "unsubscribed@example.com".to_string(),
        "still-here@example.com".to_string(),
    ];
    let found = store.suppressed_among(&keys).await.unwrap();
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        vec!["unsubscribed@example.com".to_string()]
    );
    assert!(store.suppressed_among(&[]).await.unwrap().is_empty());

    store
        .suppress(
            &EmailAddress::parse("another@example.com").unwrap(),
            "manual",
        )
        .await
        .unwrap();
    let listed = store.list_suppressions(None, 10).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|s| (s.email.as_str(), s.reason.as_str()))
            .collect::<Vec<_>>(),
        [
            ("another@example.com", "manual"),
            ("Unsubscribed@Example.com", "unsubscribed")
        ]
    );
    let next = store
        .list_suppressions(Some("another@example.com"), 10)
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert!(
        store
            .remove_suppression(&EmailAddress::parse("UNSUBSCRIBED@example.com").unwrap())
            .await
            .unwrap()
    );
    assert!(!store.remove_suppression(&address).await.unwrap());
    assert!(store.suppressed_among(&keys).await.unwrap().is_empty());
}

async fn tracking_events_are_appended_in_batches_and_read_back(store: Arc<dyn CampaignStore>) {
    let (first, _) = store
        .create_campaign(
            &document("tracked"),
            recipient_stream(rows(vec![recipient("a@example.com", "A")])),
        )
        .await
        .unwrap();
    let (second, _) = store
        .create_campaign(&document("other"), recipient_stream(rows(vec![])))
        .await
        .unwrap();
    let recipient_id = store
        .list_deliveries(first.id, None, None, 10)
        .await
        .unwrap()[0]
        .recipient_id;
    let at = time::macros::datetime!(2030-05-06 07:08:09.123456 UTC);
    let event = |campaign_id, kind, recipient_id, link_index| TrackingEvent {
        campaign_id,
        recipient_id,
        kind,
        link_index,
        detail: None,
        ip_hash: None,
        occurred_at: at,
    };
    // More than one insert chunk (500 rows) in one call, every kind, both campaigns.
    let mut events: Vec<TrackingEvent> = (0..1_203)
        .map(|i| {
            event(
                first.id,
                TrackingEventKind::ALL[i % TrackingEventKind::ALL.len()],
                (i % 2 == 0).then_some(recipient_id),
                (i % 3 == 0).then_some((i % 7) as u16),
            )
        })
        .collect();
    events[5].detail = Some("5.1.1 user unknown".into());
    events[5].ip_hash = Some("k1:abcdef".into());
    events.push(event(second.id, TrackingEventKind::Open, None, None));
    store.record_tracking_events(&events).await.unwrap();
    store.record_tracking_events(&[]).await.unwrap();

    let mut read = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_tracking_events(Some(first.id), after, 400)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        read.extend(page);
    }
    assert_eq!(read.len(), 1_203);
    assert!(read.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(
        read.iter().map(|r| r.event.clone()).collect::<Vec<_>>(),
        events[..1_203]
    );
    let everything = store.list_tracking_events(None, None, 5_000).await.unwrap();
    assert_eq!(everything.len(), 1_204);
    assert_eq!(everything.last().unwrap().event, events[1_203]);
}

async fn engagement_is_counted_per_kind_link_and_hour(store: Arc<dyn CampaignStore>) {
    let (record, _) = store
        .create_campaign(&document("counted"), recipient_stream(rows(vec![])))
        .await
        .unwrap();
    let (other, _) = store
        .create_campaign(&document("not counted"), recipient_stream(rows(vec![])))
        .await
        .unwrap();
    let nine = time::macros::datetime!(2030-05-06 09:59:59.999999 UTC);
    let ten = time::macros::datetime!(2030-05-06 10:00:00 UTC);
    let event =
        |campaign_id, kind, recipient_id: Option<i64>, link_index, occurred_at| TrackingEvent {
            campaign_id,
            recipient_id,
            kind,
            link_index,
            detail: None,
            ip_hash: None,
            occurred_at,
        };
    use TrackingEventKind::{BounceHard, Click, Open};
    store
        .record_tracking_events(&[
            event(record.id, Open, Some(1), None, nine),
            event(record.id, Open, Some(1), None, ten),
            event(record.id, Open, Some(2), None, ten),
            // Aggregate-only: counted in the total, names nobody.
            event(record.id, Open, None, None, ten),
            event(record.id, Click, Some(1), Some(0), ten),
            event(record.id, Click, Some(1), Some(0), ten),
            event(record.id, Click, Some(2), Some(3), nine),
            event(record.id, BounceHard, Some(3), None, ten),
            event(other.id, Open, Some(9), None, ten),
        ])
        .await
        .unwrap();
    let counts = store.engagement_counts(record.id).await.unwrap();
    let count = |total, unique| EventCount { total, unique };
    assert_eq!(counts.of(Open), count(4, 2));
    assert_eq!(counts.of(Click), count(3, 2));
    assert_eq!(counts.of(BounceHard), count(1, 1));
    assert_eq!(counts.of(TrackingEventKind::Complaint), count(0, 0));
    assert_eq!(
        counts.by_link.into_iter().collect::<Vec<_>>(),
        [(0, count(2, 1)), (3, count(1, 1))]
    );
    let nine_o_clock = time::macros::datetime!(2030-05-06 09:00 UTC);
    assert_eq!(
        counts
            .hourly
            .iter()
            .map(|(hour, kinds)| (*hour, kinds.clone().into_iter().collect::<Vec<_>>()))
            .collect::<Vec<_>>(),
        [
            (nine_o_clock, vec![(Open, 1), (Click, 1)]),
            (ten, vec![(Open, 3), (Click, 2), (BounceHard, 1)]),
        ]
    );
    let nothing = store.engagement_counts(uuid::Uuid::now_v7()).await.unwrap();
    assert_eq!(nothing, store::EngagementCounts::default());
}

/// Test sends are recorded per key, all or none, within the quota's windows (ending at the
/// given time), and read back by id.
async fn test_sends_are_recorded_within_their_quota(store: Arc<dyn CampaignStore>) {
    let key = store::ApiKeyRecord {
        id: "tester".into(),
        name: "qa".into(),
        secret_hash: "cd".repeat(32),
        created_at: store::db_types::DbTime::now().0,
        revoked_at: None,
    };
    store.insert_api_key(&key).await.unwrap();
    let campaign = uuid::Uuid::now_v7();
    let quota = [
        store::QuotaWindow {
            window: time::Duration::minutes(1),
            limit: 3,
        },
        store::QuotaWindow {
            window: time::Duration::days(1),
            limit: 4,
        },
    ];
    let address = |n: usize| EmailAddress::parse(&format!("qa{n}@example.com")).unwrap();
    let start = store::db_types::DbTime::now().0;
    let reserve = |addresses: Vec<EmailAddress>, at: time::OffsetDateTime| {
        let store = store.clone();
        async move {
            store
                .reserve_test_sends("tester", campaign, &addresses, at, &quota)
                .await
                .unwrap()
        }
    };
    let store::TestSendReservation::Reserved(ids) =
        reserve(vec![address(0), address(1)], start).await
    else {
        panic!("two fit");
    };
    assert_eq!(ids.len(), 2);
    let first = store.test_send(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (first.campaign_id, first.email.as_str()),
        (campaign, "qa0@example.com")
    );
    assert_eq!(first.sent_at, start);
    assert!(store.test_send(ids[1] + 1000).await.unwrap().is_none());

    // Two more pass the minute's 3: refused whole, until the first two are a minute old.
    let later = start + time::Duration::seconds(10);
    assert_eq!(
        reserve(vec![address(2), address(3)], later).await,
        store::TestSendReservation::OverQuota {
            window: quota[0],
            retry_at: Some(start + time::Duration::minutes(1)),
        }
    );
    assert!(matches!(
        reserve(vec![address(2)], later).await,
        store::TestSendReservation::Reserved(_)
    ));
    // A minute on, the minute has room but the day (4) has one place left.
    let next_minute = start + time::Duration::seconds(70);
    assert_eq!(
        reserve(vec![address(4), address(5)], next_minute).await,
        store::TestSendReservation::OverQuota {
            window: quota[1],
            retry_at: Some(start + time::Duration::days(1)),
        }
    );
    // More addresses than a window's limit never fit.
    assert_eq!(
        reserve((0..4).map(address).collect(), next_minute).await,
        store::TestSendReservation::OverQuota {
            window: quota[0],
            retry_at: None,
        }
    );
}

async fn api_keys_are_stored_listed_and_revoked(store: Arc<dyn CampaignStore>) {
    let key = store::ApiKeyRecord {
        id: "k1".into(),
        name: "deploy bot".into(),
        secret_hash: "ab".repeat(32),
        created_at: store::db_types::DbTime::now().0,
        revoked_at: None,
    };
    store.insert_api_key(&key).await.unwrap();
    assert_eq!(store.api_key("k1").await.unwrap(), Some(key.clone()));
    assert!(store.api_key("k2").await.unwrap().is_none());
    assert_eq!(store.list_api_keys().await.unwrap(), vec![key]);
    assert!(store.revoke_api_key("k1").await.unwrap());
    let revoked = store
        .api_key("k1")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .expect("revoked");
    assert!(store.revoke_api_key("k1").await.unwrap());
    assert_eq!(
        store.api_key("k1").await.unwrap().unwrap().revoked_at,
        Some(revoked),
        "the first revocation time stays"
    );
    assert!(!store.revoke_api_key("nope").await.unwrap());
}

async fn schedule_and_cancel_follow_the_rules(store: Arc<dyn CampaignStore>) {
    use store::{DeliveryOutcome, OutcomeKind};
    let recipients: Vec<Recipient> = (0..3)
        .map(|i| recipient(&format!("s{i}@example.com"), "S"))
        .collect();
    let (record, _) = store
        .create_campaign(&document("Schedule"), recipient_stream(rows(recipients)))
        .await
        .unwrap();
    let at = time::macros::datetime!(2031-06-01 08:00 UTC);
    assert!(store.schedule_campaign(record.id, Some(at)).await.unwrap());
    let scheduled = store.get_campaign(record.id).await.unwrap().unwrap();
    assert_eq!(
        (scheduled.status, scheduled.scheduled_at),
        (CampaignStatus::Scheduled, Some(at))
    );
    assert!(store.schedule_campaign(record.id, None).await.unwrap());
    let draft = store.get_campaign(record.id).await.unwrap().unwrap();
    assert_eq!(
        (draft.status, draft.scheduled_at),
        (CampaignStatus::Draft, None)
    );

    assert!(
        store
            .transition_campaign(record.id, &[CampaignStatus::Draft], CampaignStatus::Sending)
            .await
            .unwrap()
    );
    assert!(
        !store.schedule_campaign(record.id, Some(at)).await.unwrap(),
        "a sending campaign cannot be scheduled"
    );

    let range = store.batch_ranges(record.id, 10).await.unwrap()[0];
    let first = store
        .due_recipients(record.id, range, time::OffsetDateTime::now_utc())
        .await
        .unwrap()[0]
        .id;
    store
        .record_outcomes(&[DeliveryOutcome {
            recipient_id: first,
            result: OutcomeKind::Sent {
                reply: "250 ok".into(),
            },
        }])
        .await
        .unwrap();
    assert!(
        store
            .cancel_campaign(
                record.id,
                &[CampaignStatus::Sending, CampaignStatus::Paused]
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .cancel_campaign(record.id, &[CampaignStatus::Sending])
            .await
            .unwrap()
    );
    let counts = store.delivery_counts(record.id).await.unwrap();
    assert_eq!(
        (
            counts.get(DeliveryStatus::Sent),
            counts.get(DeliveryStatus::Cancelled)
        ),
        (1, 2)
    );
    let cancelled = store.get_campaign(record.id).await.unwrap().unwrap();
    assert_eq!(cancelled.status, CampaignStatus::Cancelled);
    assert!(cancelled.completed_at.is_some());
    assert_eq!(
        store.next_due_in_range(record.id, range).await.unwrap(),
        None,
        "nothing is left to send"
    );
}

async fn a_campaign_finishes_when_every_recipient_is_final(store: Arc<dyn CampaignStore>) {
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
        let ids: Vec<i64> = store
            .due_recipients(record.id, range, time::OffsetDateTime::now_utc())
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

async fn a_secret_is_created_once(store: Arc<dyn CampaignStore>) {
    assert_eq!(store.secret("tracking", "first").await.unwrap(), "first");
    assert_eq!(
        store.secret("tracking", "second").await.unwrap(),
        "first",
        "the stored value wins"
    );
    assert_eq!(store.secret("other", "x").await.unwrap(), "x");
}

async fn due_campaigns_are_queued_exactly_once(store: Arc<dyn CampaignStore>) {
    use time::macros::datetime;
    let now = datetime!(2030-03-01 12:00:00 UTC);
    let second = time::Duration::SECOND;
    let mut ids = Vec::new();
    // Two overdue, one in the future, one draft.
    for (name, at) in [
        ("Overdue", Some(now - 10 * second)),
        ("Due", Some(now - 5 * second)),
        ("Later", Some(now + 3600 * second)),
        ("Draft", None),
    ] {
        let (record, _) = store
            .create_campaign(&document(name), recipient_stream(Vec::new()))
            .await
            .unwrap();
        if at.is_some() {
            assert!(store.schedule_campaign(record.id, at).await.unwrap());
        }
        ids.push(record.id);
    }
    assert_eq!(
        store.next_scheduled_at().await.unwrap(),
        Some(now - 10 * second)
    );

    // Eight replicas race for the same moment: each due campaign is won by exactly one.
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.queue_due_campaigns(now, 100).await.unwrap() })
        })
        .collect();
    let mut won = Vec::new();
    for racer in racers {
        won.extend(racer.await.unwrap());
    }
    let mut won_ids: Vec<_> = won.iter().map(|due| due.id).collect();
    won_ids.sort();
    let mut expected = vec![ids[0], ids[1]];
    expected.sort();
    assert_eq!(
        won_ids, expected,
        "each due campaign queued once, nothing else"
    );

    let overdue = store.get_campaign(ids[0]).await.unwrap().unwrap();
    assert_eq!(overdue.status, CampaignStatus::Queued);
    assert_eq!(overdue.queued_at, Some(now));
    assert_eq!(overdue.start_delay(), Some(10 * second));
    let later = store.get_campaign(ids[2]).await.unwrap().unwrap();
    assert_eq!(
        (later.status, later.queued_at),
        (CampaignStatus::Scheduled, None)
    );
    assert_eq!(later.start_delay(), None);
    assert_eq!(
        store.next_scheduled_at().await.unwrap(),
        Some(now + 3600 * second),
        "only the campaign still waiting counts"
    );
    assert!(
        store
            .queue_due_campaigns(now, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // The ones a crash could leave without a task: queued, and queued before the cut-off.
    let mut stuck = store.queued_before(now + second, 100).await.unwrap();
    stuck.sort();
    assert_eq!(stuck, expected);
    assert!(store.queued_before(now, 100).await.unwrap().is_empty());

    // Queuing by hand stamps queued_at too; a campaign never scheduled has no start delay.
    assert!(
        store
            .transition_campaign(ids[3], &[CampaignStatus::Draft], CampaignStatus::Queued)
            .await
            .unwrap()
    );
    let sent_now = store.get_campaign(ids[3]).await.unwrap().unwrap();
    assert!(sent_now.queued_at.is_some());
    assert_eq!(sent_now.start_delay(), None);

    // The limit takes the earliest first.
    let mut later_ids = Vec::new();
    for offset in [20, 30] {
        let (record, _) = store
            .create_campaign(&document("Batch"), recipient_stream(Vec::new()))
            .await
            .unwrap();
        let at = now + 60 * second - offset * second;
        store.schedule_campaign(record.id, Some(at)).await.unwrap();
        later_ids.push((at, record.id));
    }
    let first = store
        .queue_due_campaigns(now + 60 * second, 1)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id, later_ids[1].1, "the earliest due goes first");
    assert_eq!(first[0].scheduled_at, later_ids[1].0);
}

async fn ping_answers(store: Arc<dyn CampaignStore>) {
    store.ping().await.unwrap();
}

/// Runs SQL on the test database directly, as an older version of the store would have.
/// A reader that hands out its input one piece per `read`, lazily, and holds back the end of
/// it (a JSON array's `]`, the last JSON line) until told that rows were stored: if the import
/// waited for the whole input before inserting anything, it would never be told, and the
/// reader fails the import at the deadline.
struct HeldBackEnd {
    pieces: std::collections::VecDeque<Vec<u8>>,
    end: Option<Vec<u8>>,
    stored: std::sync::mpsc::Receiver<u64>,
    /// What the import had stored when the end was handed out.
    stored_before_end: Arc<std::sync::Mutex<Option<u64>>>,
}

impl std::io::Read for HeldBackEnd {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.pieces.is_empty()
            && let Some(end) = self.end.take()
        {
            // A deadline for a hang, not a measurement: the signal comes as soon as the
            // first chunk is inserted.
            let stored = self
                .stored
                .recv_timeout(std::time::Duration::from_secs(60))
                .map_err(|_| {
                    std::io::Error::other("no rows were stored before the end of the input")
                })?;
            *self.stored_before_end.lock().unwrap() = Some(stored);
            self.pieces.push_back(end);
        }
        let Some(piece) = self.pieces.front_mut() else {
            return Ok(0);
        };
        let length = piece.len().min(buffer.len());
        buffer[..length].copy_from_slice(&piece[..length]);
        piece.drain(..length);
        if piece.is_empty() {
            self.pieces.pop_front();
        }
        Ok(length)
    }
}

/// Imports 1,500 recipients (more than one 1,000-row chunk) plus one in the held-back end.
async fn rows_are_stored_before_the_input_ends(
    store: Arc<dyn CampaignStore>,
    format: campaign::RecipientFormat,
) {
    const BEFORE_END: usize = 1500;
    let line = |i: usize| format!(r#"{{"email": "lazy{i}@example.com", "first_name": "N{i}"}}"#);
    let (pieces, end): (Vec<Vec<u8>>, Vec<u8>) = match format {
        campaign::RecipientFormat::JsonArray => (
            std::iter::once("[".to_string())
                .chain((0..BEFORE_END).map(|i| format!("{},\n", line(i))))
                .map(String::into_bytes)
                .collect(),
            format!("{}\n]\n", line(BEFORE_END)).into_bytes(),
        ),
        campaign::RecipientFormat::JsonLines => (
            (0..BEFORE_END)
                .map(|i| format!("{}\n", line(i)).into_bytes())
                .collect(),
            line(BEFORE_END).into_bytes(),
        ),
        campaign::RecipientFormat::Csv => unreachable!("JSON formats only"),
    };
    let (stored_sender, stored) = std::sync::mpsc::channel();
    let stored_before_end = Arc::new(std::sync::Mutex::new(None));
    let reader = HeldBackEnd {
        pieces: pieces.into(),
        end: Some(end),
        stored,
        stored_before_end: stored_before_end.clone(),
    };
    let rows = format.read(reader).unwrap();
    let recipients = recipient_stream(rows).on_chunk_stored(move |report| {
        let _ = stored_sender.send(report.imported);
    });
    let (record, report) = store
        .create_campaign(&document("Streamed"), recipients)
        .await
        .unwrap();
    assert_eq!(
        *stored_before_end.lock().unwrap(),
        Some(1000),
        "the first chunk was inserted before the end of the input was read"
    );
    let total = BEFORE_END as u64 + 1;
    assert_eq!((report.received, report.imported), (total, total));
    assert_eq!(record.recipient_count, total as i64);
    let counts = store.delivery_counts(record.id).await.unwrap();
    assert_eq!(counts.0["pending"], total as i64);
}

async fn a_json_array_is_stored_while_it_is_read(store: Arc<dyn CampaignStore>) {
    rows_are_stored_before_the_input_ends(store, campaign::RecipientFormat::JsonArray).await;
}

async fn json_lines_are_stored_while_they_are_read(store: Arc<dyn CampaignStore>) {
    rows_are_stored_before_the_input_ends(store, campaign::RecipientFormat::JsonLines).await;
}

async fn execute_raw(url: &str, statements: &[&'static str]) {
    if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        for sql in statements {
            sqlx::query(*sql).execute(&pool).await.unwrap();
        }
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        for sql in statements {
            sqlx::query(*sql).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }
}

async fn stored_keys_follow_the_current_rule(store: Arc<dyn CampaignStore>, url: String) {
    let (record, _) = store
        .create_campaign(
            &document("Old keys"),
            recipient_stream(rows(vec![recipient("José@Bücher.example", "José")])),
        )
        .await
        .unwrap();
    store
        .suppress(
            &EmailAddress::parse("idn@bücher.example").unwrap(),
            "manual",
        )
        .await
        .unwrap();
    store
        .suppress(
            &EmailAddress::parse("zoë@xn--bcher-kva.example").unwrap(),
            "manual",
        )
        .await
        .unwrap();
    drop(store);
    // What rule 1 (the address lower-cased) wrote, including a second spelling of a
    // suppressed mailbox that the new rule makes one.
    execute_raw(
        &url,
        &[
            "UPDATE recipients SET email_key = 'josé@bücher.example'",
            "UPDATE suppressions SET email_key = 'idn@bücher.example' WHERE email = 'idn@bücher.example'",
            "INSERT INTO suppressions (email_key, email, reason, created_at) \
             SELECT 'zoë@bücher.example', 'zoë@bücher.example', 'manual', created_at FROM suppressions WHERE email = 'idn@bücher.example'",
            "UPDATE email_key_rule SET version = 1",
        ],
    )
    .await;

    let store = store::connect(&url).await.unwrap();
    let keys = ["idn@xn--bcher-kva.example", "zoë@xn--bcher-kva.example"].map(String::from);
    assert_eq!(store.suppressed_among(&keys).await.unwrap().len(), 2);
    let listed = store.list_suppressions(None, 10).await.unwrap();
    assert_eq!(
        listed.len(),
        2,
        "two spellings of one mailbox are one suppression: {listed:?}"
    );
    let found = store
        .recipient_by_email(
            record.id,
            &EmailAddress::parse("josé@xn--bcher-kva.example").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        found.map(|r| r.recipient.email.to_string()).as_deref(),
        Some("José@Bücher.example")
    );
}

macro_rules! contract_suite {
    ($backend:ident, $open:expr) => {
        mod $backend {

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test]
                    async fn $name() {
                        #[allow(clippy::redundant_closure_call)]
                        let Some((store, _guard)) = ($open)().await else {
                            return;
                        };
                        super::$name(store).await;
                    }
                };
            }

            #[tokio::test]
            async fn stored_keys_follow_the_current_rule() {
                #[allow(clippy::redundant_closure_call)]
                let Some((store, guard)) = ($open)().await else {
                    return;
                };
                let url = guard
                    .downcast_ref::<testkit::SqliteDatabase>()
                    .map(|database| database.url.clone())
                    .or_else(|| {
                        guard
                            .downcast_ref::<testkit::PostgresDatabase>()
                            .map(|database| database.url.clone())
                    })
                    .expect("a test database");
                super::stored_keys_follow_the_current_rule(store, url).await;
            }

            case!(campaign_round_trips_with_its_recipients);
            case!(duplicates_are_skipped_and_reported);
            case!(a_campaign_under_a_chosen_id_is_stored_once);
            case!(a_bad_row_stores_nothing);
            case!(unknown_campaigns_are_reported);
            case!(campaigns_page_newest_first);
            case!(ping_answers);
            case!(a_secret_is_created_once);
            case!(a_campaign_finishes_when_every_recipient_is_final);
            case!(schedule_and_cancel_follow_the_rules);
            case!(api_keys_are_stored_listed_and_revoked);
            case!(test_sends_are_recorded_within_their_quota);
            case!(campaign_transitions_are_conditional);
            case!(batches_cover_every_due_recipient_once);
            case!(outcomes_decide_who_is_due_and_counts_add_up);
            case!(many_sent_outcomes_are_recorded_each_with_its_own_reply);
            case!(local_send_time_zones_are_stored_held_and_released);
            case!(suppressions_match_whatever_the_case);
            case!(due_campaigns_are_queued_exactly_once);
            case!(tracking_events_are_appended_in_batches_and_read_back);
            case!(engagement_is_counted_per_kind_link_and_hour);
            case!(a_json_array_is_stored_while_it_is_read);
            case!(json_lines_are_stored_while_they_are_read);
        }
    };
}

contract_suite!(sqlite, || async {
    let database = testkit::SqliteDatabase::create();
    let store = store::connect(&database.url).await.unwrap();
    Some((store, Box::new(database) as Box<dyn std::any::Any + Send>))
});

contract_suite!(postgres, || async {
    let database = testkit::PostgresDatabase::create().await?;
    let store = store::connect(&database.url).await.unwrap();
    Some((store, Box::new(database) as Box<dyn std::any::Any + Send>))
});
