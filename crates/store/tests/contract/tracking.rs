//! Tracking events: appended, read back, counted.

use crate::{document, recipient, rows};
use std::sync::Arc;
use store::{CampaignStore, EventCount, TrackingEvent, TrackingEventKind, recipient_stream};

pub(crate) async fn tracking_events_are_appended_in_batches_and_read_back(
    store: Arc<dyn CampaignStore>,
) {
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
        variant: None,
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

pub(crate) async fn engagement_is_counted_per_kind_link_and_hour(store: Arc<dyn CampaignStore>) {
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
            recipient_id: recipient_id.map(campaign::RecipientId::new),
            kind,
            link_index,
            detail: None,
            ip_hash: None,
            variant: None,
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
    let nothing = store
        .engagement_counts(campaign::CampaignId::now_v7())
        .await
        .unwrap();
    assert_eq!(nothing, store::EngagementCounts::default());
}
