//! Engagement: opens, clicks and unsubscribes followed like a mail client would, the
//! signed links refusing forgeries, and the report of what recipients did.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Sends a campaign through a real task processor over SMTP into aiosmtpd, reads the messages
/// back from its Maildir and follows their pixel, click and List-Unsubscribe links over HTTP like
/// a mail client would;
/// the report must match what was done, and a later campaign skips the unsubscribed address.
async fn a_delivered_campaign_reports_exactly_what_recipients_did(app: TestApp) {
    // Delivered over SMTP to a server this project did not write; skipped (or failed
    // under CI/REQUIRE_SMTP) when aiosmtpd is not installed.
    let Some(sink) = testkit::smtp::Aiosmtpd::start() else {
        return;
    };
    let transport = delivery::transport_from_config(&delivery::TransportConfig {
        smtp_url: Some(sink.url()),
        ..delivery::TransportConfig::default()
    })
    .expect("SMTP transport");
    let worker = TestWorker::start(&app, transport);

    let response = app
        .post_json(
            "/api/v1/suppressions",
            &json!({"email": "cat@example.com", "reason": "manual"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let send = |recipients: Value| send_and_wait(&app, recipients);
    let id = send(json!([
        {"email": "ann@example.com", "first_name": "Ann"},
        {"email": "bob@example.com", "first_name": "Bob"},
        {"email": "cat@example.com", "first_name": "Cat"}
    ]))
    .await;

    // What each message links to, rebased onto this server.
    let local = |url: &str| {
        app.url(
            url.strip_prefix("https://mail.example.test")
                .unwrap_or_else(|| panic!("{url} is under PUBLIC_BASE_URL")),
        )
    };
    let received = sink.messages();
    assert_eq!(received.len(), 2, "one message per unsuppressed recipient");
    let mut messages = std::collections::BTreeMap::new();
    for bytes in &received {
        let parsed = mail_parser::MessageParser::default().parse(bytes).unwrap();
        let to = recipient_of(bytes);
        let html = parsed.body_html(0).unwrap().to_string();
        let attribute = |prefix: &str| -> Vec<String> {
            html.split(prefix)
                .skip(1)
                .map(|rest| rest[..rest.find('"').unwrap()].to_string())
                .collect()
        };
        let pixels = attribute("<img src=\"");
        let clicks = attribute("<a href=\"https://mail.example.test/t/c/");
        let unsubscribe = parsed
            .header_raw("List-Unsubscribe")
            .unwrap()
            .trim()
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(pixels.len(), 1, "{html}");
        assert_eq!(
            clicks.len(),
            4,
            "every staff pick and the events link: {html}"
        );
        assert!(
            html.contains(&format!("href=\"{unsubscribe}\"")),
            "unsubscribe link kept"
        );
        let clicks: Vec<String> = clicks
            .iter()
            .map(|token| format!("https://mail.example.test/t/c/{token}"))
            .collect();
        messages.insert(to, (local(&pixels[0]), clicks, local(&unsubscribe)));
    }
    assert_eq!(
        messages.keys().collect::<Vec<_>>(),
        ["ann@example.com", "bob@example.com"],
        "the suppressed address got nothing"
    );
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |url: String| {
        let client = no_redirects.clone();
        async move { client.get(url).send().await.unwrap() }
    };
    let (ann_pixel, ann_clicks, ann_unsubscribe) = &messages["ann@example.com"];
    let (bob_pixel, bob_clicks, _) = &messages["bob@example.com"];
    for pixel in [ann_pixel, ann_pixel, bob_pixel] {
        assert_eq!(get(pixel.clone()).await.status(), StatusCode::OK);
    }
    let targets = [
        (
            &ann_clicks[0],
            "https://riverside-books.example/books/the-winter-orchard",
        ),
        (&bob_clicks[3], "https://riverside-books.example/events"),
        (&bob_clicks[3], "https://riverside-books.example/events"),
    ];
    for (click, target) in targets {
        let response = get(local(click)).await;
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(response.headers()["location"], target);
    }
    let response = no_redirects
        .post(ann_unsubscribe.clone())
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.state.engagement.events().flush().await;

    let (status, report) = app
        .get_json(&format!("/api/v1/campaigns/{id}/analytics"))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let expected = json!({
        "recipients": 3, "pending": 0, "sent": 2, "deferred": 0, "failed": 0,
        "suppressed": 1, "cancelled": 0,
        "bounced": {"hard": 0, "soft": 0},
        "delivered": 2,
        "opens": {"total": 3, "unique": 2},
        "clicks": {"total": 3, "unique": 2, "links": [
            {"index": 0, "url": "https://riverside-books.example/books/the-winter-orchard", "total": 1, "unique": 1},
            {"index": 3, "url": "https://riverside-books.example/events", "total": 2, "unique": 1}
        ]},
        "unsubscribes": {"total": 1, "unique": 1},
        "complaints": {"total": 0, "unique": 0},
        "rates": {"open": 1.0, "click": 1.0, "unsubscribe": 0.5, "complaint": 0.0, "hard_bounce": 0.0},
    });
    for (key, value) in expected.as_object().unwrap() {
        assert_eq!(&report[key], value, "{key} in {report}");
    }
    let hourly = report["hourly"].as_array().unwrap();
    let sum = |key: &str| hourly.iter().map(|h| h[key].as_i64().unwrap()).sum::<i64>();
    assert_eq!(
        (sum("opens"), sum("clicks"), sum("unsubscribes")),
        (3, 3, 1)
    );

    // The next campaign to the same people skips the address that unsubscribed.
    let next = send(json!([
        {"email": "Ann@Example.com", "first_name": "Ann"},
        {"email": "bob@example.com", "first_name": "Bob"}
    ]))
    .await;
    let (_, status) = app
        .get_json(&format!("/api/v1/campaigns/{next}/status"))
        .await;
    assert_eq!(status["deliveries"]["sent"], 1);
    assert_eq!(status["deliveries"]["suppressed"], 1);
    let mut received: Vec<String> = sink.messages().iter().map(|m| recipient_of(m)).collect();
    received.sort();
    assert_eq!(
        received,
        ["ann@example.com", "bob@example.com", "bob@example.com"],
        "the second campaign reached only bob"
    );
    worker.stop().await;
}

/// Flips one character of a token, keeping it base64url.
fn altered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

async fn engagement_links_record_and_forgeries_are_refused(app: TestApp) {
    let mut campaign = sample_campaign();
    campaign["recipients"] = json!([
        {"email": "ann@example.com", "first_name": "Ann"},
        {"email": "bob@example.com", "first_name": "Bob"}
    ]);
    campaign["templates"]["html"] = json!(
        "<p><a href=\"https://shop.example/sale?a=1&amp;b=2\">sale</a> \
         <a href=\"https://shop.example/two\">two</a> \
         <a data-notrack href=\"https://shop.example/private\">private</a> \
         <a href=\"{{ unsubscribe_url }}\">unsubscribe</a></p>"
    );
    let response = app.post_json("/api/v1/campaigns", &campaign).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let campaign_id: campaign::CampaignId =
        created["campaign"]["id"].as_str().unwrap().parse().unwrap();
    let deliveries = app
        .store
        .list_deliveries(campaign_id, None, None, 10)
        .await
        .unwrap();
    let (ann, bob) = (deliveries[0].recipient_id, deliveries[1].recipient_id);
    let links = &app.state.links;
    let keys = links.keys();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let public = |path: String| app.url(&path);

    // The pixel: a GIF that must not be cached.
    let open_token = keys.sign(tracking::Purpose::Open, campaign_id, ann);
    let pixel = no_redirects
        .get(public(format!("/t/o/{open_token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(pixel.status(), StatusCode::OK);
    assert_eq!(pixel.headers()["content-type"], "image/gif");
    assert!(
        pixel.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-store")
    );
    assert!(pixel.bytes().await.unwrap().starts_with(b"GIF89a"));

    // Clicks go exactly to the template's URL at the token's index (entities decoded).
    for (index, target) in [
        (0u16, "https://shop.example/sale?a=1&b=2"),
        (1, "https://shop.example/two"),
    ] {
        let url = links.click(campaign_id, bob, index);
        let path = url.strip_prefix("https://mail.example.test").unwrap();
        let response = no_redirects
            .get(public(path.to_string()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(response.headers()["location"], target);
    }
    let click_token = keys.sign_click(campaign_id, bob, 1);

    // Refused, and recorded nowhere: a genuine token for a link the campaign does not have
    // (the opted-out and the unsubscribe link are not tracked, so index 2 does not exist), a
    // token for a campaign that does not exist, altered tokens, a token of another purpose.
    let unsubscribe_token = keys.sign(tracking::Purpose::Unsubscribe, campaign_id, ann);
    let refused = [
        (
            "GET",
            format!("/t/c/{}", keys.sign_click(campaign_id, bob, 2)),
        ),
        (
            "GET",
            format!(
                "/t/c/{}",
                keys.sign_click(campaign::CampaignId::now_v7(), bob, 0)
            ),
        ),
        ("GET", format!("/t/c/{}", altered(&click_token))),
        ("GET", format!("/t/c/{open_token}")),
        ("GET", "/t/c/not-a-token".to_string()),
        ("GET", format!("/t/o/{}", altered(&open_token))),
        ("GET", format!("/t/o/{unsubscribe_token}")),
        ("GET", format!("/u/{}", altered(&unsubscribe_token))),
        ("POST", format!("/u/{}", altered(&unsubscribe_token))),
        ("POST", format!("/u/{open_token}")),
        (
            "POST",
            format!(
                "/u/{}",
                keys.sign(
                    tracking::Purpose::Unsubscribe,
                    campaign_id,
                    campaign::RecipientId::new(999_999),
                )
            ),
        ),
    ];
    for (method, path) in &refused {
        let response = no_redirects
            .request(method.parse().unwrap(), public(path.clone()))
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::NOT_FOUND, "not valid", path).await;
    }

    // GET shows a page with a button and unsubscribes nobody (scanners follow GETs).
    let page = no_redirects
        .get(public(format!("/u/{unsubscribe_token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!(
        "<form method=\"post\" action=\"https://mail.example.test/u/{unsubscribe_token}\""
    )));
    let ann_key = vec!["ann@example.com".to_string()];
    assert!(
        app.store
            .suppressed_among(&ann_key)
            .await
            .unwrap()
            .is_empty()
    );

    // RFC 8058 one-click: 200, no redirect, no cookie, suppressed at once.
    let response = no_redirects
        .post(public(format!("/u/{unsubscribe_token}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("location").is_none());
    assert!(response.headers().get("set-cookie").is_none());
    assert_eq!(app.store.suppressed_among(&ann_key).await.unwrap().len(), 1);

    app.state.engagement.events().flush().await;
    let events = app
        .store
        .list_tracking_events(None, None, 100)
        .await
        .unwrap();
    let seen: Vec<(
        store::TrackingEventKind,
        Option<campaign::RecipientId>,
        Option<u16>,
    )> = events
        .iter()
        .map(|e| (e.event.kind, e.event.recipient_id, e.event.link_index))
        .collect();
    use store::TrackingEventKind::{Click, Open, Unsubscribe};
    assert_eq!(
        seen,
        [
            (Open, Some(ann), None),
            (Click, Some(bob), Some(0)),
            (Click, Some(bob), Some(1)),
            (Unsubscribe, Some(ann), None),
        ]
    );
    for event in &events {
        assert_eq!(event.event.campaign_id, campaign_id);
        let hash = event
            .event
            .ip_hash
            .as_deref()
            .expect("client address hashed");
        assert!(!hash.contains("127.0.0.1") && hash.len() == 32, "{hash}");
    }

    // Aggregate-only links name nobody, and their events store no recipient.
    let anonymous = links.open_pixel(campaign_id, links.tracked_recipient(true, ann, None));
    let path = anonymous.strip_prefix("https://mail.example.test").unwrap();
    let response = reqwest::get(public(path.to_string())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.state.engagement.events().flush().await;
    let last = app
        .store
        .list_tracking_events(Some(campaign_id), Some(events.last().unwrap().id), 10)
        .await
        .unwrap();
    assert_eq!(
        last.iter()
            .map(|e| (e.event.kind, e.event.recipient_id))
            .collect::<Vec<_>>(),
        [(Open, None)]
    );
}

testkit::backend_suite! {
    #[tokio::test] with_app => [
        a_delivered_campaign_reports_exactly_what_recipients_did,
        engagement_links_record_and_forgeries_are_refused,
    ];
}
