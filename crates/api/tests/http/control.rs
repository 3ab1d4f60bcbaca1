//! Controlling a campaign: scheduling, pause/resume/cancel, the late-start report,
//! retrying failed recipients, and times out of range.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn scheduling_is_validated_and_controls_are_idempotent(app: TestApp) {
    let created = app.create_sample().await;
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    let path = |action: &str| format!("/api/v1/campaigns/{id}/{action}");
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let whole_seconds = (time::OffsetDateTime::now_utc() + time::Duration::days(30))
        .replace_nanosecond(0)
        .unwrap();
    let future = whole_seconds.format(rfc3339).unwrap();

    for (case, body, needle) in [
        (
            "past",
            json!({"scheduled_at": "2020-01-01T00:00:00Z"}),
            "in the past",
        ),
        (
            "no offset",
            json!({"scheduled_at": "2030-01-01T09:00:00"}),
            "no UTC offset",
        ),
        (
            "malformed",
            json!({"scheduled_at": "tomorrow morning"}),
            "not an RFC 3339 time",
        ),
        (
            "wrong field",
            json!({"when": future}),
            "unknown field `when`",
        ),
    ] {
        let response = app.post_json(&path("schedule"), &body).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, needle, case).await;
    }

    let response = app
        .post_json(&path("schedule"), &json!({"scheduled_at": future}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "scheduled");
    let stored =
        time::OffsetDateTime::parse(body["scheduled_at"].as_str().unwrap(), rfc3339).unwrap();
    assert_eq!(
        stored,
        time::OffsetDateTime::parse(&future, rfc3339).unwrap()
    );

    let response = app
        .client
        .delete(app.url(&path("schedule")))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["status"].as_str(), body["scheduled_at"].as_str()),
        (Some("draft"), None)
    );

    // Pausing a draft is impossible; once sending, pause, resume and cancel are idempotent.
    assert_problem(
        app.post_json(&path("pause"), &json!({})).await,
        StatusCode::CONFLICT,
        "is draft",
        "pause a draft",
    )
    .await;
    let uuid: campaign::CampaignId = id.parse().unwrap();
    let moved = app
        .store
        .transition_campaign(
            uuid,
            &[campaign::CampaignStatus::Draft],
            campaign::CampaignStatus::Sending,
        )
        .await
        .unwrap();
    assert!(moved);
    let response = app
        .post_json(&path("schedule"), &json!({"scheduled_at": future}))
        .await;
    assert_problem(
        response,
        StatusCode::CONFLICT,
        "is sending",
        "schedule while sending",
    )
    .await;
    for (action, expected) in [
        ("pause", "paused"),
        ("pause", "paused"),
        ("resume", "sending"),
        ("resume", "sending"),
        ("cancel", "cancelled"),
        ("cancel", "cancelled"),
    ] {
        let body: Value = app
            .post_json(&path(action), &json!({}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], expected, "{action}");
    }
    let response = app
        .post_json(&path("schedule"), &json!({"scheduled_at": future}))
        .await;
    assert_problem(
        response,
        StatusCode::CONFLICT,
        "is cancelled",
        "schedule a cancelled campaign",
    )
    .await;
    assert_problem(
        app.post_json(&path("resume"), &json!({})).await,
        StatusCode::CONFLICT,
        "is cancelled",
        "resume cancelled",
    )
    .await;
    let missing = format!("/api/v1/campaigns/{}/cancel", uuid::Uuid::now_v7());
    assert_problem(
        app.post_json(&missing, &json!({})).await,
        StatusCode::NOT_FOUND,
        "does not exist",
        "cancel unknown",
    )
    .await;
}

/// A scheduled campaign queued late (its processor was down) says so in its status, and by
/// how much; one queued on time does not.
async fn the_status_shows_a_late_start_and_its_delay(app: TestApp) {
    let now = time::OffsetDateTime::now_utc();
    let mut ids = Vec::new();
    for scheduled in [now - time::Duration::seconds(75), now] {
        let created = app.create_sample().await;
        let id: campaign::CampaignId = created["campaign"]["id"].as_str().unwrap().parse().unwrap();
        assert!(
            app.store
                .schedule_campaign(id, Some(scheduled))
                .await
                .unwrap()
        );
        ids.push(id);
    }
    let (_, waiting) = app
        .get_json(&format!("/api/v1/campaigns/{}/status", ids[0]))
        .await;
    assert_eq!(waiting["started_late"], false);
    assert!(waiting["start_delay_seconds"].is_null());
    let queued = app.store.queue_due_campaigns(now, 10).await.unwrap();
    assert_eq!(queued.len(), 2);

    let (_, late) = app
        .get_json(&format!("/api/v1/campaigns/{}/status", ids[0]))
        .await;
    assert_eq!(late["status"], "queued");
    assert_eq!(late["started_late"], true);
    let delay = late["start_delay_seconds"].as_f64().unwrap();
    assert!((74.9..75.1).contains(&delay), "{delay}");
    assert!(late["queued_at"].is_string());
    let (_, on_time) = app
        .get_json(&format!("/api/v1/campaigns/{}/status", ids[1]))
        .await;
    assert_eq!(on_time["started_late"], false);
    assert!(on_time["start_delay_seconds"].as_f64().unwrap() < 0.001);
}

/// Puts a campaign through a send by hand: every recipient gets `outcome(email)`.
async fn finish_by_hand(
    app: &TestApp,
    campaign: &str,
    ids: &std::collections::HashMap<String, campaign::RecipientId>,
    failed: &[&str],
) {
    let id: campaign::CampaignId = campaign.parse().unwrap();
    use campaign::CampaignStatus::*;
    assert!(
        app.store
            .transition_campaign(id, &[Draft], Sending)
            .await
            .unwrap()
    );
    let outcomes: Vec<store::DeliveryOutcome> = ids
        .iter()
        .map(|(email, &recipient_id)| store::DeliveryOutcome {
            recipient_id,
            result: if failed.contains(&email.as_str()) {
                store::OutcomeKind::Failed {
                    error: "550 5.7.1 rejected".into(),
                    attempted: true,
                }
            } else {
                store::OutcomeKind::Sent {
                    reply: "250 2.0.0 Ok".into(),
                }
            },
        })
        .collect();
    app.store.record_outcomes(&outcomes).await.unwrap();
    assert!(app.store.finish_if_done(id).await.unwrap().is_some());
}

async fn retry_failed_requeues_failed_recipients_once(app: TestApp) {
    let (campaign, ids) = app
        .campaign_with(&["ok@example.com", "flaky@example.com", "gone@example.com"])
        .await;
    let path = format!("/api/v1/campaigns/{campaign}/retry-failed");
    // Not finished yet: nothing to retry.
    let response = app.post_json(&path, &json!({})).await;
    assert_problem(response, StatusCode::CONFLICT, "draft", "draft").await;

    finish_by_hand(
        &app,
        &campaign,
        &ids,
        &["flaky@example.com", "gone@example.com"],
    )
    .await;
    app.store
        .suppress(
            &campaign::EmailAddress::parse("gone@example.com").unwrap(),
            "hard_bounce",
        )
        .await
        .unwrap();

    let send_tasks = || async {
        app.state
            .tasks
            .list(&tasks::TaskFilter {
                kind: Some("send_campaign".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
    };
    for round in 0..2 {
        let response = app.post_json(&path, &json!({})).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "call {round}");
        let status: Value = response.json().await.unwrap();
        assert_eq!(status["status"], "queued", "call {round}");
        assert_eq!(
            status["deliveries"]["pending"], 1,
            "only the unsuppressed failure"
        );
        assert_eq!(
            status["deliveries"]["failed"], 1,
            "the suppressed address stays failed"
        );
        assert_eq!(status["deliveries"]["sent"], 1);
        assert_eq!(
            send_tasks().await.len(),
            1,
            "one task however often it is asked"
        );
    }
    let (_, deliveries) = app
        .get_json(&format!(
            "/api/v1/campaigns/{campaign}/deliveries?status=pending"
        ))
        .await;
    assert_eq!(deliveries["items"][0]["email"], "flaky@example.com");
    assert_eq!(deliveries["items"][0]["attempts"], 0);

    // A finished campaign whose only failures are suppressed has nothing to retry.
    let (other, other_ids) = app
        .campaign_with(&["gone@example.com", "fine@example.com"])
        .await;
    finish_by_hand(&app, &other, &other_ids, &["gone@example.com"]).await;
    let response = app
        .post_json(
            &format!("/api/v1/campaigns/{other}/retry-failed"),
            &json!({}),
        )
        .await;
    assert_problem(
        response,
        StatusCode::CONFLICT,
        "no failed recipient",
        "only suppressed",
    )
    .await;
    let response = app
        .post_json(
            "/api/v1/campaigns/0190b2a0-0000-7000-8000-000000000000/retry-failed",
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// Times no store or RFC 3339 can hold, or outside the scheduling range: each is refused at
/// `scheduled_at` (in a document and on `POST …/schedule`), nothing is stored or queued, and
/// every read still answers.
async fn out_of_range_times_are_refused_and_nothing_is_stored_or_sent(app: TestApp) {
    let existing = app.create_sample().await;
    let id = existing["campaign"]["id"].as_str().unwrap().to_string();
    let before = app.campaign_count().await;
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let in_a_month = (time::OffsetDateTime::now_utc() + time::Duration::days(30))
        .replace_nanosecond(0)
        .unwrap();
    let month = in_a_month.format(rfc3339).unwrap();
    let month_seconds = &month[..19];
    let in_six_years = (time::OffsetDateTime::now_utc() + time::Duration::days(6 * 365))
        .replace_nanosecond(0)
        .unwrap()
        .format(rfc3339)
        .unwrap();
    let cases: Vec<(String, &str)> = vec![
        // Year 0 at +23:59 is year -1 in UTC: the reproduction.
        ("0000-01-01T00:00:00+23:59".into(), "before 1970"),
        ("0000-01-01T00:00:00Z".into(), "before 1970"),
        ("0000-01-01T00:00:00-23:59".into(), "before 1970"),
        // Year 9999 at -23:59 is year 10000 in UTC (this one panicked in the store).
        ("9999-12-31T23:59:59-23:59".into(), "after 9999"),
        ("9999-12-31T23:59:59.999999Z".into(), "5 years"),
        (in_six_years, "5 years"),
        ("1969-12-31T23:59:59Z".into(), "before 1970"),
        ("2020-01-01T00:00:00Z".into(), "in the past"),
        (format!("{month_seconds}+24:00"), "not an RFC 3339 time"),
        (format!("{month_seconds}+99:99"), "not an RFC 3339 time"),
        (format!("{month_seconds}.123456789Z"), "fractional digits"),
        (
            format!("{month_seconds}.1234567+01:00"),
            "fractional digits",
        ),
        ("2030-06-30T23:59:60Z".into(), "leap second"),
        ("2030-12-31T23:59:60Z".into(), "leap second"),
        ("+10000-01-01T00:00:00Z".into(), "not an RFC 3339 time"),
        ("-0001-01-01T00:00:00Z".into(), "not an RFC 3339 time"),
    ];
    for (raw, needle) in &cases {
        let mut campaign = sample_campaign();
        campaign["scheduled_at"] = json!(raw);
        let response = app.post_json("/api/v1/campaigns", &campaign).await;
        let body = assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            needle,
            &format!("create with scheduled_at {raw}"),
        )
        .await;
        assert_eq!(body["errors"][0]["field"], "scheduled_at", "{raw}: {body}");

        let response = app
            .post_json(
                &format!("/api/v1/campaigns/{id}/schedule"),
                &json!({ "scheduled_at": raw }),
            )
            .await;
        let body = assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            needle,
            &format!("schedule at {raw}"),
        )
        .await;
        assert_eq!(body["errors"][0]["field"], "scheduled_at", "{raw}: {body}");
    }

    assert_eq!(app.campaign_count().await, before, "nothing was stored");
    let queued = app
        .state
        .tasks
        .list(&tasks::TaskFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(queued.is_empty(), "nothing was queued to send: {queued:?}");
    for path in [
        "/api/v1/campaigns".to_string(),
        format!("/api/v1/campaigns/{id}"),
        format!("/api/v1/campaigns/{id}/status"),
    ] {
        let (status, body) = app.get_json(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let (_, read) = app.get_json(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(
        read["status"], "draft",
        "the refused schedules left it alone"
    );
    assert!(read["scheduled_at"].is_null(), "{read}");

    // The edges of the range are accepted, and answered as JSON.
    for raw in [month.clone(), format!("{month_seconds}.123456+23:59")] {
        let mut campaign = sample_campaign();
        campaign["scheduled_at"] = json!(raw);
        let response = app.post_json("/api/v1/campaigns", &campaign).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{raw}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let created: Value = response.json().await.unwrap();
        let stored = time::OffsetDateTime::parse(
            created["campaign"]["scheduled_at"].as_str().unwrap(),
            rfc3339,
        )
        .unwrap();
        assert_eq!(stored, time::OffsetDateTime::parse(&raw, rfc3339).unwrap());
    }
    let (status, _) = app.get_json("/api/v1/campaigns").await;
    assert_eq!(status, StatusCode::OK);
}

testkit::backend_suite! {
    #[tokio::test] with_app => [
        scheduling_is_validated_and_controls_are_idempotent,
        the_status_shows_a_late_start_and_its_delay,
        retry_failed_requeues_failed_recipients_once,
        out_of_range_times_are_refused_and_nothing_is_stored_or_sent,
    ];
}
