//! `Idempotency-Key`: a campaign is created once and sent once, however often it is asked.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn an_idempotency_key_creates_once_under_concurrency(app: TestApp) {
    let body = serde_json::to_vec(&sample_campaign()).unwrap();
    let post = |key: &'static str, body: Vec<u8>| {
        app.client
            .post(app.url("/api/v1/campaigns"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body)
            .send()
    };
    let responses =
        futures::future::join_all((0..20).map(|_| post("order-42", body.clone()))).await;
    let mut ids = std::collections::HashSet::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let created: Value = response.json().await.unwrap();
        ids.insert(created["campaign"]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        ids.len(),
        1,
        "20 concurrent requests with one key answer with one campaign"
    );
    assert_eq!(app.campaign_count().await, 1, "and create exactly one");

    let replay = post("order-42", body.clone()).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let mut other = sample_campaign();
    other["name"] = json!("Another campaign");
    let response = post("order-42", serde_json::to_vec(&other).unwrap())
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "different request",
        "same key, other body",
    )
    .await;
    // A refused request is remembered too: the same bad body gets the same 422 again.
    let bad = br#"{"name": ""}"#.to_vec();
    for _ in 0..2 {
        let response = post("bad-1", bad.clone()).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let response = post("fresh", body).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(app.campaign_count().await, 2);
}

async fn an_idempotency_key_sends_once(app: TestApp) {
    let first = app.create_sample().await;
    let second = app.create_sample().await;
    let (a, b) = (
        first["campaign"]["id"].as_str().unwrap().to_string(),
        second["campaign"]["id"].as_str().unwrap().to_string(),
    );
    let send = |id: &str, key: Option<&'static str>| {
        let mut request = app
            .client
            .post(app.url(&format!("/api/v1/campaigns/{id}/send")));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };
    let responses = futures::future::join_all((0..20).map(|_| send(&a, Some("send-a")))).await;
    let mut bodies = std::collections::HashSet::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        bodies.insert(response.text().await.unwrap());
    }
    assert_eq!(bodies.len(), 1, "one answer for one key: {bodies:?}");
    let queued: Value = serde_json::from_str(bodies.iter().next().unwrap()).unwrap();
    assert_eq!(queued["status"], "queued");
    let upper = send(&a.to_uppercase(), Some("send-a")).await.unwrap();
    assert_eq!(
        upper.headers()["idempotent-replayed"],
        "true",
        "the same campaign"
    );

    // Paused, the campaign cannot be sent again; the key still replays the first answer.
    let paused = app
        .post_json(&format!("/api/v1/campaigns/{a}/pause"), &json!({}))
        .await;
    assert_eq!(paused.status(), StatusCode::OK);
    let replay = send(&a, Some("send-a")).await.unwrap();
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), queued);
    let (_, status) = app.get_json(&format!("/api/v1/campaigns/{a}/status")).await;
    assert_eq!(status["status"], "paused", "the replay did nothing");
    let fresh = send(&a, None).await.unwrap();
    assert_problem(
        fresh,
        StatusCode::CONFLICT,
        "paused",
        "send without the key",
    )
    .await;

    let tasks = app
        .state
        .tasks
        .list(&tasks::TaskFilter {
            status: None,
            kind: Some(processor::SEND_CAMPAIGN.to_string()),
            key_prefix: None,
            after: None,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1, "one send_campaign task: {tasks:?}");

    // The same key for another campaign is a client bug.
    let other = send(&b, Some("send-a")).await.unwrap();
    assert_problem(
        other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "different request",
        "same key, other campaign",
    )
    .await;
    let (_, status) = app.get_json(&format!("/api/v1/campaigns/{b}/status")).await;
    assert_eq!(status["status"], "draft");
}

testkit::backend_suite! {
    #[tokio::test] with_app => [
        an_idempotency_key_creates_once_under_concurrency,
        an_idempotency_key_sends_once,
    ];
}
