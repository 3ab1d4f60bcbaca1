//! Tracking used as a library, with no HTTP in between (as a mailbox poller would use the
//! intake), on both stores. The HTTP tests in crates/api cover every route and fixture; these
//! show the same decisions are made here, where they live.

use campaign::{
    CampaignDocument, CampaignId, EmailAddress, Limits, Recipient, RecipientId, RowError,
};
use std::sync::Arc;
use store::{CampaignStore, TrackingEventKind, recipient_stream};
use tracking::feedback::{Action, FeedbackError};
use tracking::intake::BounceJson;
use tracking::{
    Engagement, EngagementError, FeedbackKind, Intake, IntakeError, Purpose, SoftBounceRule,
    TokenKeys, VERP_PREFIX,
};

fn keys() -> TokenKeys {
    TokenKeys::new(b"library-test-secret-at-least-32-bytes", []).unwrap()
}

/// The sample campaign (opens and clicks tracked, four tracked links) to ann and bob.
async fn campaign(store: &dyn CampaignStore) -> CampaignId {
    let text = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/sample_campaign.json"
    ))
    .unwrap();
    let document = CampaignDocument::from_json(&text, &Limits::default()).unwrap();
    let rows: Vec<Result<Recipient, RowError>> = ["ann@example.com", "bob@example.org"]
        .into_iter()
        .map(|email| {
            Ok(Recipient {
                email: EmailAddress::parse(email).unwrap(),
                fields: serde_json::Map::new(),
            })
        })
        .collect();
    let (record, _) = store
        .create_campaign(&document, recipient_stream(rows))
        .await
        .unwrap();
    record.id
}

async fn recipient_id(store: &dyn CampaignStore, campaign: CampaignId, email: &str) -> RecipientId {
    store
        .recipient_by_email(campaign, &EmailAddress::parse(email).unwrap())
        .await
        .unwrap()
        .expect("a recipient of the campaign")
        .id
}

/// A DSN as Postfix writes it, delivered to `to` (the VERP return path).
fn dsn(to: &str, recipient: &str, status: &str) -> Vec<u8> {
    format!(
        "From: MAILER-DAEMON@mx.example.net\r\n\
         To: {to}\r\n\
         X-Original-To: {to}\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\
         \r\n\
         --B\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         The mail could not be delivered.\r\n\
         \r\n\
         --B\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; mx.example.net\r\n\
         \r\n\
         Final-Recipient: rfc822; {recipient}\r\n\
         Action: failed\r\n\
         Status: {status}\r\n\
         Diagnostic-Code: smtp; 550 {status} user unknown\r\n\
         \r\n\
         --B--\r\n"
    )
    .into_bytes()
}

async fn the_intake_attributes_records_and_applies_the_suppression_rule(
    store: Arc<dyn CampaignStore>,
) {
    let campaign = campaign(store.as_ref()).await;
    let bob = recipient_id(store.as_ref(), campaign, "bob@example.org").await;
    let keys = keys();
    let webhooks = webhooks::EventSink::disabled();
    let intake = Intake {
        store: store.as_ref(),
        keys: &keys,
        soft_bounces: SoftBounceRule {
            limit: 2,
            window: time::Duration::hours(1),
        },
        webhooks: &webhooks,
    };

    // A hard bounce that came back to bob's VERP address: attributed by its token although
    // the report names a rewritten address, and suppressed at once.
    let token = keys.sign(Purpose::Bounce, campaign, bob);
    let verp = tracking::feedback::verp_address(VERP_PREFIX, &token, "bounces.example");
    let results = intake
        .raw(&dsn(&verp, "bob@forwarded.example", "5.1.1"))
        .await
        .unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].email, "bob@example.org");
    assert_eq!(results[0].kind, Some(FeedbackKind::HardBounce));
    assert_eq!(results[0].attributed_by, Some("verp"));
    assert_eq!(
        (results[0].campaign_id, results[0].recipient_id),
        (Some(campaign), Some(bob))
    );
    assert!(results[0].suppressed);

    // Soft bounces of ann (the JSON form, by campaign and address): the second within the
    // window suppresses.
    let soft = || BounceJson {
        email: EmailAddress::parse("ann@example.com").unwrap(),
        status: "4.2.2".parse().unwrap(),
        action: Action::Delayed,
        diagnostic: Some("smtp; 452 4.2.2 mailbox full".into()),
        message_id: None,
        campaign_id: Some(campaign),
    };
    let first = intake.json(soft()).await.unwrap();
    assert_eq!(first[0].kind, Some(FeedbackKind::SoftBounce));
    assert_eq!(first[0].attributed_by, Some("campaign_and_email"));
    assert!(!first[0].suppressed);
    let second = intake.json(soft()).await.unwrap();
    assert!(second[0].suppressed);

    let suppressed = store
        .suppressed_among(&["ann@example.com".into(), "bob@example.org".into()])
        .await
        .unwrap();
    assert_eq!(suppressed.len(), 2, "{suppressed:?}");
    let kinds: Vec<FeedbackKind> = store
        .campaign_feedback(campaign)
        .await
        .unwrap()
        .iter()
        .map(|event| event.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            FeedbackKind::HardBounce,
            FeedbackKind::SoftBounce,
            FeedbackKind::SoftBounce
        ]
    );

    // Mail that is not a report is refused, and nothing is recorded.
    let refused = intake.raw(b"Subject: hello\r\n\r\nhi\r\n").await;
    assert!(
        matches!(
            refused,
            Err(IntakeError::Report(FeedbackError::NotAReport { .. }))
        ),
        "{refused:?}"
    );
    assert_eq!(store.campaign_feedback(campaign).await.unwrap().len(), 3);
}

async fn engagement_records_verified_opens_and_clicks_and_refuses_forgeries(
    store: Arc<dyn CampaignStore>,
) {
    let campaign = campaign(store.as_ref()).await;
    let ann = recipient_id(store.as_ref(), campaign, "ann@example.com").await;
    let keys = keys();
    let engagement =
        Engagement::start(store.clone(), keys.clone(), webhooks::EventSink::disabled());
    let client = Some(std::net::IpAddr::from([192, 0, 2, 7]));

    engagement
        .open(&keys.sign(Purpose::Open, campaign, ann), client)
        .await
        .unwrap();
    let target = engagement
        .click(&keys.sign_click(campaign, ann, 1), client)
        .await
        .unwrap();
    assert_eq!(
        target,
        "https://riverside-books.example/books/maps-of-the-north-sea"
    );

    // Another key's token, a token of another purpose, a link the template does not have.
    let forged = TokenKeys::new(b"another-secret-that-is-at-least-32-bytes", []).unwrap();
    let refused = [
        engagement
            .open(&forged.sign(Purpose::Open, campaign, ann), client)
            .await,
        engagement
            .open(&keys.sign(Purpose::Unsubscribe, campaign, ann), client)
            .await,
        engagement
            .click(&keys.sign_click(campaign, ann, 99), client)
            .await
            .map(|_| ()),
    ];
    for result in refused {
        assert!(
            matches!(result, Err(EngagementError::UnknownLink)),
            "{result:?}"
        );
    }

    engagement.events().flush().await;
    let counts = store.engagement_counts(campaign).await.unwrap();
    assert_eq!(counts.of(TrackingEventKind::Open).total, 1);
    assert_eq!(counts.of(TrackingEventKind::Click).total, 1);
    assert_eq!(counts.by_link.keys().copied().collect::<Vec<_>>(), [1]);
}

/// Opens the store on the test database and runs one case on it.
async fn with_store<Case, Run>(database: testkit::TestDatabase, case: Case)
where
    Case: FnOnce(std::sync::Arc<dyn store::CampaignStore>) -> Run,
    Run: std::future::Future<Output = ()>,
{
    let store = store::connect(database.url()).await.unwrap();
    case(store).await;
    drop(database);
}

testkit::backend_suite! {
    #[tokio::test] with_store => [
        the_intake_attributes_records_and_applies_the_suppression_rule,
        engagement_records_verified_opens_and_clicks_and_refuses_forgeries,
    ];
}
