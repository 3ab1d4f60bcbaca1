//! The suppression list routes.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::json;

async fn suppressions_are_listed_added_and_removed(app: TestApp) {
    for email in ["Zed@Example.com", "amy@example.com"] {
        let response = app
            .post_json(
                "/api/v1/suppressions",
                &json!({"email": email, "reason": "complaint"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    let response = app
        .post_json("/api/v1/suppressions", &json!({"email": "not an address"}))
        .await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid email address",
        "bad address",
    )
    .await;
    let (_, page) = app.get_json("/api/v1/suppressions?limit=1").await;
    assert_eq!(page["items"][0]["email"], "amy@example.com");
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, next) = app
        .get_json(&format!("/api/v1/suppressions?after={cursor}"))
        .await;
    assert_eq!(next["items"][0]["email"], "Zed@Example.com");
    assert_eq!(next["items"][0]["reason"], "complaint");
    let response = app
        .client
        .delete(app.url("/api/v1/suppressions/zed@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = app
        .client
        .delete(app.url("/api/v1/suppressions/zed@example.com"))
        .send()
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::NOT_FOUND,
        "not on the suppression list",
        "removed twice",
    )
    .await;
    let (_, all) = app.get_json("/api/v1/suppressions").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
}

testkit::backend_suite! {
    #[tokio::test] with_app => [
        suppressions_are_listed_added_and_removed,
    ];
}
