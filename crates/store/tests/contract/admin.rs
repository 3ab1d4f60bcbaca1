//! API keys, secrets, test sends, and the readiness check.

use campaign::EmailAddress;
use std::sync::Arc;
use store::CampaignStore;

/// Test sends are recorded per key, all or none, within the quota's windows (ending at the
/// given time), and read back by id.
pub(crate) async fn test_sends_are_recorded_within_their_quota(store: Arc<dyn CampaignStore>) {
    let key = store::ApiKeyRecord {
        id: "tester".into(),
        name: "qa".into(),
        secret_hash: "cd".repeat(32),
        created_at: store::db_types::DbTime::now().0,
        revoked_at: None,
    };
    store.insert_api_key(&key).await.unwrap();
    let campaign = campaign::CampaignId::now_v7();
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

pub(crate) async fn api_keys_are_stored_listed_and_revoked(store: Arc<dyn CampaignStore>) {
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

pub(crate) async fn a_secret_is_created_once(store: Arc<dyn CampaignStore>) {
    assert_eq!(store.secret("tracking", "first").await.unwrap(), "first");
    assert_eq!(
        store.secret("tracking", "second").await.unwrap(),
        "first",
        "the stored value wins"
    );
    assert_eq!(store.secret("other", "x").await.unwrap(), "x");
}

pub(crate) async fn ping_answers(store: Arc<dyn CampaignStore>) {
    store.ping().await.unwrap();
}
