//! The suppression list, and stored email keys following the current rule.

use crate::{document, recipient, rows};
use campaign::EmailAddress;
use std::sync::Arc;
use store::{CampaignStore, recipient_stream};

pub(crate) async fn suppressions_match_whatever_the_case(store: Arc<dyn CampaignStore>) {
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

/// Runs SQL on the test database directly, as an older version of the store would have.
pub(crate) async fn execute_raw(url: &str, statements: &[&'static str]) {
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

pub(crate) async fn stored_keys_follow_the_current_rule(
    store: Arc<dyn CampaignStore>,
    url: String,
) {
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
