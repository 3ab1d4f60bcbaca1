//! Campaigns and recipients: creating, importing, listing, and the status changes.

use crate::{document, recipient, rows};
use campaign::{CampaignStatus, DeliveryStatus, Recipient, RowError};
use std::sync::Arc;
use store::{CampaignFilter, CampaignStore, StoreError, recipient_stream};

pub(crate) async fn campaign_round_trips_with_its_recipients(store: Arc<dyn CampaignStore>) {
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

/// The status alone (the sending batch's per-message check) follows every change the full
/// record shows, and a campaign that does not exist has none.
pub(crate) async fn the_status_alone_follows_the_campaigns_changes(store: Arc<dyn CampaignStore>) {
    let (record, _) = store
        .create_campaign(
            &document("Status only"),
            recipient_stream(rows(vec![recipient("ann@example.com", "Ann")])),
        )
        .await
        .unwrap();
    let both = |store: Arc<dyn CampaignStore>| async move {
        let alone = store.campaign_status(record.id).await.unwrap();
        let full = store
            .get_campaign(record.id)
            .await
            .unwrap()
            .map(|r| r.status);
        assert_eq!(alone, full);
        alone
    };
    assert_eq!(both(store.clone()).await, Some(CampaignStatus::Draft));
    for (from, to) in [
        (CampaignStatus::Draft, CampaignStatus::Queued),
        (CampaignStatus::Queued, CampaignStatus::Sending),
        (CampaignStatus::Sending, CampaignStatus::Paused),
        (CampaignStatus::Paused, CampaignStatus::Sending),
    ] {
        assert!(
            store
                .transition_campaign(record.id, &[from], to)
                .await
                .unwrap()
        );
        assert_eq!(both(store.clone()).await, Some(to));
    }
    assert!(
        store
            .cancel_campaign(record.id, &[CampaignStatus::Sending])
            .await
            .unwrap()
    );
    assert_eq!(both(store.clone()).await, Some(CampaignStatus::Cancelled));
    assert_eq!(
        store
            .campaign_status(campaign::CampaignId::now_v7())
            .await
            .unwrap(),
        None
    );
}

pub(crate) async fn a_campaign_under_a_chosen_id_is_stored_once(store: Arc<dyn CampaignStore>) {
    let id = campaign::CampaignId::now_v7();
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

pub(crate) async fn duplicates_are_skipped_and_reported(store: Arc<dyn CampaignStore>) {
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

pub(crate) async fn a_bad_row_stores_nothing(store: Arc<dyn CampaignStore>) {
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

pub(crate) async fn unknown_campaigns_are_reported(store: Arc<dyn CampaignStore>) {
    let id = campaign::CampaignId::now_v7();
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

pub(crate) async fn campaigns_page_newest_first(store: Arc<dyn CampaignStore>) {
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

pub(crate) async fn campaign_transitions_are_conditional(store: Arc<dyn CampaignStore>) {
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
                campaign::CampaignId::now_v7(),
                &[CampaignStatus::Draft],
                CampaignStatus::Queued
            )
            .await
            .unwrap()
    );
}

pub(crate) async fn schedule_and_cancel_follow_the_rules(store: Arc<dyn CampaignStore>) {
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
        .due_recipients(
            record.id,
            range,
            store::SendGroup::Campaign,
            time::OffsetDateTime::now_utc(),
        )
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
        store
            .next_due_in_range(record.id, range, store::SendGroup::Campaign)
            .await
            .unwrap(),
        None,
        "nothing is left to send"
    );
}

pub(crate) async fn due_campaigns_are_queued_exactly_once(store: Arc<dyn CampaignStore>) {
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

/// The typed ids are stored as the plain values were: a campaign id as hyphenated text on
/// SQLite and as a UUID on PostgreSQL, a recipient id as an integer. Read behind the store's
/// back, so a change of encoding (a UUID bound as a 16-byte blob, say) cannot pass
/// unnoticed by reading back what it wrote.
pub(crate) async fn ids_are_stored_as_plain_uuids_and_integers(
    store: Arc<dyn CampaignStore>,
    url: String,
) {
    let recipients = vec![
        recipient("ann@example.com", "Ann"),
        recipient("bob@example.org", "Bob"),
    ];
    let (record, _) = store
        .create_campaign(&document("Stored ids"), recipient_stream(rows(recipients)))
        .await
        .unwrap();
    let listed: Vec<(String, i64)> = store
        .list_deliveries(record.id, None, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|delivery| (record.id.to_string(), delivery.recipient_id.get()))
        .collect();
    const STORED: &str = "SELECT CAST(campaigns.id AS TEXT), recipients.id FROM campaigns \
                          JOIN recipients ON recipients.campaign_id = campaigns.id ORDER BY recipients.id";
    let stored: Vec<(String, i64)> = if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let stored = sqlx::query_as(STORED).fetch_all(&pool).await.unwrap();
        let types: (String, String, String) = sqlx::query_as(
            "SELECT pg_typeof(campaigns.id)::text, pg_typeof(recipients.campaign_id)::text, \
                 pg_typeof(recipients.id)::text FROM campaigns \
                 JOIN recipients ON recipients.campaign_id = campaigns.id LIMIT 1",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        assert_eq!(
            types,
            ("uuid".to_string(), "uuid".to_string(), "bigint".to_string())
        );
        stored
    } else {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let stored = sqlx::query_as(STORED).fetch_all(&pool).await.unwrap();
        // Per row: SQLite keeps whatever type each value was bound with.
        let types: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT DISTINCT typeof(campaigns.id), typeof(recipients.campaign_id), \
                 typeof(recipients.id) FROM campaigns \
                 JOIN recipients ON recipients.campaign_id = campaigns.id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        assert_eq!(
            types,
            [(
                "text".to_string(),
                "text".to_string(),
                "integer".to_string()
            )]
        );
        stored
    };
    // Hyphenated lower-case text, as the id prints.
    assert_eq!(stored, listed);
    assert_eq!(stored.len(), 2);
}
