//! What every route shares: health, API keys, the OpenAPI document listing every route, the
//! per-key rate limit, and paths that are not UTF-8.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn health_and_readiness(app: TestApp) {
    let (status, body) = app.get_json("/health").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = app.get_json("/ready").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
}

/// Every operation of the live OpenAPI document as (method, path template, needs an API key),
/// so a new route cannot be left out of the authentication tests.
async fn documented_routes(app: &TestApp) -> Vec<(String, String, bool)> {
    let document: Value = reqwest::get(app.url("/api/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut routes = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let protected = operation.get("security").is_some();
            routes.push((method.to_uppercase(), path.clone(), protected));
        }
    }
    routes
}

/// Every route the OpenAPI document says needs an API key, with a concrete path.
async fn protected_routes(app: &TestApp) -> Vec<(String, String)> {
    documented_routes(app)
        .await
        .into_iter()
        .filter(|(_, _, protected)| *protected)
        .map(|(method, path, _)| {
            let concrete = path
                .replace("{id}", "0190b2a0-0000-7000-8000-000000000000")
                .replace("{email}", "someone@example.com");
            (method, concrete)
        })
        .collect()
}

/// The routes served without an API key on purpose: those recipients' mail clients reach,
/// and the bounce intake (its own secret).
const PUBLIC_ROUTES: [&str; 5] = [
    "POST /api/v1/bounces",
    "GET /t/o/{token}",
    "GET /t/c/{token}",
    "GET /u/{token}",
    "POST /u/{token}",
];

/// Every route the OpenAPI document describes without the API key.
async fn public_routes(app: &TestApp) -> Vec<(String, String)> {
    documented_routes(app)
        .await
        .into_iter()
        .filter(|(_, _, protected)| !*protected)
        .map(|(method, path, _)| (method, path))
        .collect()
}

async fn the_openapi_document_describes_every_route(app: TestApp) {
    let response = reqwest::get(app.url("/api/v1/openapi.json")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let mut described: Vec<String> = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            described.push(format!("{} {path}", method.to_uppercase()));
            let responses = operation["responses"].as_object().unwrap();
            // The public engagement routes (no API key) have no 401 or 422 to describe.
            let problems: &[&str] = if operation.get("security").is_some() {
                &["401", "404", "422"]
            } else {
                assert!(
                    PUBLIC_ROUTES.contains(&format!("{} {path}", method.to_uppercase()).as_str()),
                    "{method} {path} is served without an API key"
                );
                &["404"]
            };
            for status in problems {
                let status = *status;
                let problem = &responses[status]["content"]["application/problem+json"];
                assert!(
                    problem.is_object(),
                    "{method} {path} describes {status} as problem+json"
                );
            }
        }
    }
    described.sort();
    let mut expected = [
        "DELETE /api/v1/campaigns/{id}/schedule",
        "GET /api/v1/campaigns",
        "GET /api/v1/campaigns/{id}",
        "GET /api/v1/campaigns/{id}/deliveries",
        "GET /api/v1/campaigns/{id}/analytics",
        "GET /api/v1/campaigns/{id}/status",
        "POST /api/v1/campaigns",
        "POST /api/v1/campaigns/{id}/cancel",
        "POST /api/v1/campaigns/{id}/pause",
        "POST /api/v1/campaigns/{id}/preview",
        "POST /api/v1/campaigns/{id}/recipients",
        "POST /api/v1/campaigns/{id}/resume",
        "POST /api/v1/campaigns/{id}/schedule",
        "POST /api/v1/campaigns/{id}/send",
        "POST /api/v1/campaigns/{id}/test",
        "POST /api/v1/campaigns/{id}/retry-failed",
        "POST /api/v1/campaigns/{id}/ab/winner",
        "POST /api/v1/bounces",
        "DELETE /api/v1/suppressions/{email}",
        "GET /api/v1/suppressions",
        "POST /api/v1/suppressions",
        "GET /t/o/{token}",
        "GET /t/c/{token}",
        "GET /u/{token}",
        "POST /u/{token}",
    ];
    expected.sort();
    assert_eq!(described, expected);
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for schema in [
        "CampaignDocument",
        "ProblemDetails",
        "StatusView",
        "ImportReport",
        "Recipient",
    ] {
        assert!(schemas.contains_key(schema), "{schema} is described");
    }
    let docs = reqwest::get(app.url("/docs")).await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("/api/v1/openapi.json"));
    let bundle = reqwest::get(app.url("/docs/swagger-ui-bundle.js"))
        .await
        .unwrap();
    assert_eq!(bundle.status(), StatusCode::OK);
    assert!(
        bundle.text().await.unwrap().len() > 100_000,
        "the vendored Swagger UI is served"
    );
}

async fn admin_routes_need_a_valid_unrevoked_key(app: TestApp) {
    let anonymous = reqwest::Client::new();
    assert_eq!(protected_routes(&app).await.len(), 20);
    // The routes outside the API key, each with its own authentication.
    let mut public: Vec<String> = public_routes(&app)
        .await
        .into_iter()
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    public.sort();
    let mut expected_public = PUBLIC_ROUTES.map(str::to_string).to_vec();
    expected_public.sort();
    assert_eq!(public, expected_public);
    let created = api::auth::create_api_key(app.store.as_ref(), "to revoke")
        .await
        .unwrap();
    let (id, secret) = created
        .key
        .trim_start_matches("mbk_")
        .split_once('_')
        .unwrap();
    let forged = format!("mbk_{id}_{}", secret.chars().rev().collect::<String>());
    for (method, path) in protected_routes(&app).await {
        let method: reqwest::Method = method.parse().unwrap();
        let response = anonymous
            .request(method.clone(), app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer",
            "{method} {path}"
        );
        assert_problem(
            response,
            StatusCode::UNAUTHORIZED,
            "needs an API key",
            &path,
        )
        .await;
        for bad in [
            "Bearer nonsense",
            "Basic dXNlcjpwYXNz",
            &format!("Bearer {forged}"),
        ] {
            let response = anonymous
                .request(method.clone(), app.url(&path))
                .header("authorization", bad)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {bad}"
            );
        }
    }
    // The created key works until it is revoked, then gets 403.
    let with_key = |key: &str| {
        reqwest::Client::new()
            .get(app.url("/api/v1/campaigns"))
            .header("authorization", format!("Bearer {key}"))
    };
    assert_eq!(
        with_key(&created.key).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert!(app.store.revoke_api_key(id).await.unwrap());
    for (method, path) in protected_routes(&app).await {
        let response = anonymous
            .request(method.parse().unwrap(), app.url(&path))
            .header("authorization", format!("Bearer {}", created.key))
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::FORBIDDEN, "revoked", &path).await;
    }
    // Public routes need no key.
    for path in ["/health", "/ready", "/api/v1/openapi.json", "/docs"] {
        assert_eq!(
            anonymous.get(app.url(path)).send().await.unwrap().status(),
            StatusCode::OK,
            "{path}"
        );
    }
}

async fn over_its_rate_limit_a_key_gets_429_with_retry_after(app: TestApp) {
    let mut state = app.state.clone();
    state.settings.rate_limit = Some(api::RateLimit {
        per_second: 0.5,
        burst: 3,
    });
    let base = format!("http://{}", serve(state).await);
    let other = api::auth::create_api_key(app.store.as_ref(), "other")
        .await
        .unwrap()
        .key;
    let get = |key: &str| {
        reqwest::Client::new()
            .get(format!("{base}/api/v1/campaigns"))
            .header("authorization", format!("Bearer {key}"))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(get(&app.key).await.unwrap().status(), StatusCode::OK);
    }
    let limited = get(&app.key).await.unwrap();
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body = assert_problem(
        limited,
        StatusCode::TOO_MANY_REQUESTS,
        "over its limit",
        "fourth request",
    )
    .await;
    assert_eq!(body["type"], "/problems/rate-limited");
    // Each key has its own bucket; requests without a valid key are refused before counting.
    assert_eq!(get(&other).await.unwrap().status(), StatusCode::OK);
    let anonymous = reqwest::Client::new()
        .get(format!("{base}/api/v1/campaigns"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    // Public routes are not limited.
    for _ in 0..5 {
        let health = reqwest::get(format!("{base}/health")).await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }
    // The document says so, for every admin route.
    let document = api::openapi_document();
    let send = &document.paths.paths["/api/v1/campaigns/{id}/send"];
    let responses = &send.post.as_ref().unwrap().responses.responses;
    assert!(responses.contains_key("429"));
    // After Retry-After the key may send again.
    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    assert_eq!(get(&app.key).await.unwrap().status(), StatusCode::OK);
}

/// A path that is not UTF-8 once decoded is a 4xx problem like any other.
async fn a_path_that_is_not_utf8_answers_a_problem(app: TestApp) {
    for path in [
        "/api/v1/campaigns/%FF",
        "/api/v1/campaigns/%C3%28/status",
        "/api/v1/nowhere/%80",
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_problem(response, StatusCode::BAD_REQUEST, "not UTF-8", path).await;
    }
    let response = app
        .post_json(
            "/api/v1/campaigns/%FF/schedule",
            &json!({"scheduled_at": "x"}),
        )
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "not UTF-8", "POST").await;
    // A percent-encoded UTF-8 path is still an ordinary one.
    let response = app
        .client
        .get(app.url("/api/v1/campaigns/%C3%A9"))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::NOT_FOUND, "does not exist", "é").await;
}

testkit::backend_suite! {
    #[tokio::test] with_app => [
        health_and_readiness,
        the_openapi_document_describes_every_route,
        admin_routes_need_a_valid_unrevoked_key,
        over_its_rate_limit_a_key_gets_429_with_retry_after,
        a_path_that_is_not_utf8_answers_a_problem,
    ];
}
