//! The dispatcher against a real HTTP receiver (axum on a free port, also behind TLS with a
//! private CA), on both stores.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use webhooks::{Dispatcher, Event, EventKind, WebhookConfig};

const SECRET: &str = "webhook-secret-for-tests";

/// What the receiver saw: per request, its answer, whether the signature verified, and the
/// event ids it carried.
#[derive(Default)]
struct Received {
    requests: Vec<(u16, bool, Vec<String>)>,
    /// Answer 500 to everything while set.
    refusing: bool,
}

/// A receiver that answers 500 to the first `failures` requests, then 200.
async fn receiver(failures: usize) -> (String, Arc<Mutex<Received>>) {
    let (app, received) = receiving_app(failures);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/hook"), received)
}

/// The receiver over HTTPS with the test CA's certificate for 127.0.0.1 (testkit's server,
/// which also keeps the handshakes that failed: a client refusing the certificate).
async fn https_receiver(
    certificate: &testkit::smtp::TestCertificate,
) -> (String, Arc<Mutex<Received>>, testkit::https::HttpsServer) {
    let (app, received) = receiving_app(0);
    let server = testkit::https::HttpsServer::start(app, certificate).await;
    (format!("{}/hook", server.base), received, server)
}

/// The receiving route: verifies each request's signature and records it.
fn receiving_app(failures: usize) -> (axum::Router, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let state = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let verified = webhooks::verify(
                    SECRET.as_bytes(),
                    &header(webhooks::TIMESTAMP_HEADER),
                    &header(webhooks::SIGNATURE_HEADER),
                    &body,
                    now,
                    300,
                )
                .is_ok();
                let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let ids = parsed["events"]
                    .as_array()
                    .map(|events| {
                        events
                            .iter()
                            .map(|e| e["id"].as_str().unwrap_or_default().to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                let mut state = state.lock().unwrap();
                let status = if state.refusing || state.requests.len() < failures {
                    500
                } else {
                    200
                };
                state.requests.push((status, verified, ids));
                StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    (app, received)
}

fn config(endpoint: String) -> WebhookConfig {
    let mut config = WebhookConfig::new(vec![endpoint], SECRET.into());
    config.initial_backoff = Duration::from_millis(200);
    config
}

fn event(n: i64) -> Event {
    Event::new(
        EventKind::Sent,
        Some(campaign::CampaignId::now_v7()),
        Some(campaign::RecipientId::new(n)),
        Some(format!("r{n}@example.com")),
        json!({"reply": "250 2.0.0 Ok"}),
    )
}

/// Polls until every id was delivered with a 200, or fails after a generous deadline.
async fn delivered(received: &Arc<Mutex<Received>>, ids: &BTreeSet<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got: BTreeSet<String> = received
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(status, _, _)| *status == 200)
            .flat_map(|(_, _, ids)| ids.iter().cloned())
            .collect();
        if ids.is_subset(&got) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered {} of {} events",
            got.intersection(ids).count(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn signed_batches_are_retried_after_a_500(store: Arc<dyn store::CampaignStore>) {
    let (endpoint, received) = receiver(1).await;
    let shutdown = CancellationToken::new();
    let (sink, dispatcher) =
        Dispatcher::start(store.clone(), config(endpoint.clone()), shutdown.clone()).unwrap();
    let events: Vec<Event> = (1..=5).map(event).collect();
    let ids: BTreeSet<String> = events.iter().map(|e| e.id.to_string()).collect();
    for event in events {
        sink.emit(event);
    }
    delivered(&received, &ids).await;
    {
        let received = received.lock().unwrap();
        let (first_status, _, first_ids) = &received.requests[0];
        assert_eq!(*first_status, 500, "the first attempt failed");
        assert!(
            first_ids.len() > 1,
            "events travel in batches: {first_ids:?}"
        );
        assert!(
            received.requests.iter().all(|(_, verified, _)| *verified),
            "every request carries a valid signature"
        );
        assert!(received.requests.len() >= 2, "retried after the 500");
    }
    // Delivered events leave the outbox.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store
        .next_webhook_attempt(&endpoint)
        .await
        .unwrap()
        .is_some()
    {
        assert!(tokio::time::Instant::now() < deadline, "outbox not emptied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    dispatcher.join().await;
}

/// A full queue spills to the outbox instead of blocking or dropping, and events queued while
/// the endpoint was failing are delivered by the next process after a restart.
async fn nothing_is_lost_when_the_queue_is_full_or_the_process_restarts(
    store: Arc<dyn store::CampaignStore>,
) {
    let (endpoint, received) = receiver(0).await;
    received.lock().unwrap().refusing = true;
    let shutdown = CancellationToken::new();
    let mut small = config(endpoint.clone());
    small.channel_capacity = 1;
    let (sink, dispatcher) = Dispatcher::start(store.clone(), small, shutdown.clone()).unwrap();
    let events: Vec<Event> = (1..=40).map(event).collect();
    let ids: BTreeSet<String> = events.iter().map(|e| e.id.to_string()).collect();
    for event in events {
        sink.emit(event);
    }
    assert!(sink.spilled() > 0, "a 1-slot queue overflows");
    // Wait until the failing endpoint has been tried, then stop this process.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().requests.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    dispatcher.join().await;
    // Spilled writes are detached tasks; wait until all 40 are in the outbox.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let queued = make_due_and_count(&store, &endpoint).await;
        if queued == ids.len() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{queued} queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // "Restart": a new dispatcher on the same outbox, and the endpoint accepts again.
    received.lock().unwrap().refusing = false;
    let shutdown = CancellationToken::new();
    let (_sink, dispatcher) =
        Dispatcher::start(store.clone(), config(endpoint), shutdown.clone()).unwrap();
    delivered(&received, &ids).await;
    shutdown.cancel();
    dispatcher.join().await;
}

/// An https:// endpoint with a private CA: trusted through WEBHOOK_TLS_CA, every event arrives
/// signed; without it the handshake is refused (the certificate is not trusted), nothing is
/// posted, and the events wait in the outbox for a retry.
async fn https_endpoints_are_verified_against_the_configured_ca(
    store: Arc<dyn store::CampaignStore>,
) {
    let Some(certificate) = testkit::smtp::TestCertificate::create() else {
        return;
    };
    let (endpoint, received, server) = https_receiver(&certificate).await;
    let failed_handshakes = server.failed_handshakes.clone();

    let shutdown = CancellationToken::new();
    let (sink, dispatcher) =
        Dispatcher::start(store.clone(), config(endpoint.clone()), shutdown.clone()).unwrap();
    let untrusted: Vec<Event> = (1..=3).map(event).collect();
    for event in untrusted.clone() {
        sink.emit(event);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while failed_handshakes.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no TLS handshake was tried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    dispatcher.join().await;
    assert!(
        received.lock().unwrap().requests.is_empty(),
        "nothing is posted to a server whose certificate is not trusted"
    );
    assert_eq!(
        make_due_and_count(&store, &endpoint).await,
        3,
        "the events wait"
    );

    let mut trusted = config(endpoint.clone());
    trusted.tls_ca = Some(certificate.ca.clone());
    let shutdown = CancellationToken::new();
    let (sink, dispatcher) = Dispatcher::start(store.clone(), trusted, shutdown.clone()).unwrap();
    let more: Vec<Event> = (4..=6).map(event).collect();
    for event in more.clone() {
        sink.emit(event);
    }
    let ids: BTreeSet<String> = untrusted
        .iter()
        .chain(&more)
        .map(|e| e.id.to_string())
        .collect();
    delivered(&received, &ids).await;
    shutdown.cancel();
    dispatcher.join().await;
    assert!(
        received
            .lock()
            .unwrap()
            .requests
            .iter()
            .all(|(_, verified, _)| *verified),
        "every request over TLS carries a valid signature"
    );
}

/// Counts an endpoint's queued events, and makes them due now (as when their backoff ends):
/// a claim whose lease ends before its `now` changes nothing else.
async fn make_due_and_count(store: &Arc<dyn store::CampaignStore>, endpoint: &str) -> usize {
    // Claiming with a lease that ends before `now` leaves the rows as they were.
    let now = time::OffsetDateTime::now_utc();
    store
        .claim_webhook_events(endpoint, now + time::Duration::hours(2), now, 10_000)
        .await
        .unwrap()
        .len()
}

/// Runs one case on a store opened on `database`.
async fn with_store<Case, Run>(database: testkit::TestDatabase, case: Case)
where
    Case: FnOnce(Arc<dyn store::CampaignStore>) -> Run,
    Run: std::future::Future<Output = ()>,
{
    let store = store::connect(database.url()).await.unwrap();
    case(store).await;
    drop(database);
}

testkit::backend_suite! {
    #[tokio::test] with_store => [
        signed_batches_are_retried_after_a_500,
        nothing_is_lost_when_the_queue_is_full_or_the_process_restarts,
        https_endpoints_are_verified_against_the_configured_ca,
    ];
}
