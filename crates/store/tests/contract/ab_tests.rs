//! A/B tests: the slice starts once, held recipients are nobody's to send and keep the
//! campaign from finishing, the decision happens once and releases the rest to the winner's
//! group only, and the counts per variant add up.

use crate::{document, recipient, rows};
use campaign::{CampaignStatus, DeliveryStatus, Recipient, RecipientId};
use std::sync::Arc;
use store::{
    AbPhase, CampaignStore, DeliveryOutcome, OutcomeKind, RecipientRange, SendGroup, TrackingEvent,
    TrackingEventKind, recipient_stream,
};

pub(crate) async fn an_ab_test_holds_the_rest_and_is_decided_once(store: Arc<dyn CampaignStore>) {
    let recipients: Vec<Recipient> = (0..10)
        .map(|i| recipient(&format!("ab{i}@example.com"), "A"))
        .collect();
    let (record, _) = store
        .create_campaign(&document("A/B"), recipient_stream(rows(recipients)))
        .await
        .unwrap();
    let id = record.id;
    assert!(
        store
            .transition_campaign(id, &[CampaignStatus::Draft], CampaignStatus::Sending)
            .await
            .unwrap()
    );
    let ids = store.recipient_ids(id).await.unwrap();
    assert_eq!(ids.len(), 10);
    let slice: Vec<(RecipientId, u8)> = vec![(ids[1], 0), (ids[4], 1), (ids[7], 0), (ids[8], 1)];
    let now = time::OffsetDateTime::now_utc();
    let decide_at = now + time::Duration::hours(4);
    assert!(store.start_ab_test(id, &slice, decide_at).await.unwrap());
    // A split run again changes nothing.
    assert!(
        !store
            .start_ab_test(id, &[(ids[0], 0)], decide_at)
            .await
            .unwrap()
    );
    let ab = store.get_campaign(id).await.unwrap().unwrap().ab.unwrap();
    assert_eq!(ab.phase, AbPhase::Testing);
    assert_eq!(
        ab.decide_at,
        Some(
            decide_at
                .replace_nanosecond(decide_at.microsecond() * 1000)
                .unwrap()
        )
    );

    let whole = RecipientRange {
        first: ids[0],
        last: ids[9],
    };
    let due = store
        .due_recipients(id, whole, SendGroup::Campaign, now)
        .await
        .unwrap();
    let due_ids: Vec<(RecipientId, Option<u8>)> = due.iter().map(|r| (r.id, r.variant)).collect();
    assert_eq!(
        due_ids,
        slice
            .iter()
            .map(|&(id, v)| (id, Some(v)))
            .collect::<Vec<_>>(),
        "only the slice is due, each with its variant"
    );
    assert!(
        store
            .due_recipients(id, whole, SendGroup::AbRest, now)
            .await
            .unwrap()
            .is_empty(),
        "the held rest is nobody's"
    );
    // The slice delivered: the range has nothing due, and the campaign does not finish.
    let sent: Vec<DeliveryOutcome> = slice
        .iter()
        .map(|&(recipient_id, _)| DeliveryOutcome {
            recipient_id,
            result: OutcomeKind::Sent {
                reply: "250 ok".into(),
            },
        })
        .collect();
    store.record_outcomes(&sent).await.unwrap();
    assert_eq!(
        store
            .next_due_in_range(id, whole, SendGroup::Campaign)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.finish_if_done(id).await.unwrap(),
        None,
        "the rest waits"
    );

    // An open of variant 1 (named recipient) and one recorded aggregate-only for variant 0.
    let event = |recipient_id, variant| TrackingEvent {
        campaign_id: id,
        recipient_id,
        kind: TrackingEventKind::Open,
        link_index: None,
        detail: None,
        ip_hash: None,
        variant,
        occurred_at: now,
    };
    store
        .record_tracking_events(&[
            event(Some(ids[4]), None),
            event(Some(ids[4]), None),
            event(None, Some(0)),
        ])
        .await
        .unwrap();
    let counts = store.variant_counts(id, true).await.unwrap();
    let summary: Vec<(u8, i64, i64, i64, i64)> = counts
        .iter()
        .map(|c| {
            (
                c.variant,
                c.recipients,
                c.sent,
                c.opens.total,
                c.opens.unique,
            )
        })
        .collect();
    assert_eq!(summary, [(0, 2, 2, 1, 0), (1, 2, 2, 2, 1)]);

    assert!(
        store
            .due_ab_decisions(now, &[CampaignStatus::Sending], 10)
            .await
            .unwrap()
            .is_empty(),
        "not due before decide_at"
    );
    assert_eq!(
        store
            .due_ab_decisions(decide_at, &[CampaignStatus::Sending], 10)
            .await
            .unwrap(),
        [id]
    );
    let decision = serde_json::json!({"rule": "best_rate"});
    // Two deciders at once: exactly one wins.
    let (first, second) = tokio::join!(
        store.decide_ab_test(id, 1, &decision, decide_at, &[CampaignStatus::Sending]),
        store.decide_ab_test(id, 0, &decision, decide_at, &[CampaignStatus::Sending]),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert!(first ^ second, "one decision: {first} {second}");
    let winner = if first { 1 } else { 0 };
    let ab = store.get_campaign(id).await.unwrap().unwrap().ab.unwrap();
    assert_eq!((ab.phase, ab.winner), (AbPhase::Decided, Some(winner)));
    assert_eq!(ab.decision, Some(decision));
    assert!(
        store
            .due_ab_decisions(decide_at, &[CampaignStatus::Sending], 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The rest belongs to the winner's group only, with the winner as its variant.
    assert!(
        store
            .due_recipients(id, whole, SendGroup::Campaign, now)
            .await
            .unwrap()
            .is_empty()
    );
    let rest = store
        .due_recipients(id, whole, SendGroup::AbRest, now)
        .await
        .unwrap();
    assert_eq!(rest.len(), 6);
    assert!(rest.iter().all(|r| r.variant == Some(winner)));
    assert_eq!(
        store
            .ab_decided_before(decide_at + time::Duration::seconds(1), 10)
            .await
            .unwrap(),
        [id],
        "until its batches exist, the repair sees it"
    );
    store.ab_rest_split(id).await.unwrap();
    assert!(
        store
            .ab_decided_before(decide_at + time::Duration::seconds(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let rest_sent: Vec<DeliveryOutcome> = rest
        .iter()
        .map(|r| DeliveryOutcome {
            recipient_id: r.id,
            result: OutcomeKind::Sent {
                reply: "250 ok".into(),
            },
        })
        .collect();
    store.record_outcomes(&rest_sent).await.unwrap();
    assert_eq!(
        store.finish_if_done(id).await.unwrap(),
        Some(CampaignStatus::Completed)
    );
    let all = store.variant_counts(id, false).await.unwrap();
    assert_eq!(all.iter().map(|c| c.recipients).sum::<i64>(), 10);
    assert_eq!(
        all.iter().find(|c| c.variant == winner).unwrap().recipients,
        8
    );
    let deliveries = store
        .list_deliveries(id, Some(DeliveryStatus::Sent), None, 100)
        .await
        .unwrap();
    assert!(!deliveries.is_empty());
    assert!(deliveries.iter().all(|d| d.variant.is_some()));
}

/// A decision asked for while the campaign is in no allowed state changes nothing.
pub(crate) async fn a_paused_ab_test_is_not_decided_by_results(store: Arc<dyn CampaignStore>) {
    let (record, _) = store
        .create_campaign(
            &document("A/B paused"),
            recipient_stream(rows(vec![
                recipient("p1@example.com", "P"),
                recipient("p2@example.com", "P"),
            ])),
        )
        .await
        .unwrap();
    let id = record.id;
    assert!(
        store
            .transition_campaign(id, &[CampaignStatus::Draft], CampaignStatus::Paused)
            .await
            .unwrap()
    );
    let ids = store.recipient_ids(id).await.unwrap();
    let now = time::OffsetDateTime::now_utc();
    assert!(store.start_ab_test(id, &[(ids[0], 0)], now).await.unwrap());
    assert!(
        store
            .due_ab_decisions(now, &[CampaignStatus::Sending], 10)
            .await
            .unwrap()
            .is_empty()
    );
    let decision = serde_json::json!({});
    assert!(
        !store
            .decide_ab_test(id, 0, &decision, now, &[CampaignStatus::Sending])
            .await
            .unwrap()
    );
    let ab = store.get_campaign(id).await.unwrap().unwrap().ab.unwrap();
    assert_eq!(ab.phase, AbPhase::Testing);
    // By hand, a paused campaign may be decided.
    assert!(
        store
            .decide_ab_test(
                id,
                0,
                &decision,
                now,
                &[CampaignStatus::Sending, CampaignStatus::Paused]
            )
            .await
            .unwrap()
    );
}
