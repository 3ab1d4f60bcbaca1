//! The event sink producers call, the spooler that makes events durable, and one sender per
//! endpoint.

use crate::event::Event;
use crate::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use http_body_util::BodyExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use store::CampaignStore;
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Where and how events are sent.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// WEBHOOK_URLS.
    pub endpoints: Vec<String>,
    /// WEBHOOK_SECRET.
    pub secret: String,
    /// Events waiting in memory before producers spill to the outbox directly.
    pub channel_capacity: usize,
    /// Events per request at most.
    pub batch_size: u32,
    /// The first retry's delay; doubled per failed attempt up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Attempts per event before it is given up (logged as an error).
    pub max_attempts: u32,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// WEBHOOK_TLS_CA: a PEM file of CAs trusted besides the built-in web PKI roots, for
    /// `https://` endpoints with a private CA.
    pub tls_ca: Option<PathBuf>,
}

/// Why the dispatcher cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("WEBHOOK_TLS_CA {0}")]
    Trust(#[from] tls::TrustError),
}

/// The senders' HTTP client: pooled connections, `http://` or `https://`.
type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

impl WebhookConfig {
    pub fn new(endpoints: Vec<String>, secret: String) -> WebhookConfig {
        WebhookConfig {
            endpoints,
            secret,
            channel_capacity: 10_000,
            batch_size: 100,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
            // 1 s doubling to 10 min, then every 10 min: about a day.
            max_attempts: 150,
            request_timeout: Duration::from_secs(10),
            tls_ca: None,
        }
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.min(30));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// The producers' handle: cheap to clone, never blocks. A disabled sink (no WEBHOOK_URLS)
/// does nothing.
#[derive(Clone, Default)]
pub struct EventSink {
    inner: Option<Arc<SinkInner>>,
}

struct SinkInner {
    queue: mpsc::Sender<Event>,
    store: Arc<dyn CampaignStore>,
    endpoints: Vec<String>,
    spilled: AtomicU64,
    wake: Arc<Notify>,
}

impl EventSink {
    /// A sink that drops everything: webhooks are not configured.
    pub fn disabled() -> EventSink {
        EventSink { inner: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Hands an event on without waiting. When the in-memory queue is full the event is
    /// written to the outbox by a detached task, so it is delayed, never lost or blocking.
    pub fn emit(&self, event: Event) {
        let Some(inner) = &self.inner else { return };
        match inner.queue.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event))
            | Err(mpsc::error::TrySendError::Closed(event)) => {
                let spilled = inner.spilled.fetch_add(1, Ordering::Relaxed) + 1;
                if spilled.is_power_of_two() {
                    tracing::warn!(
                        spilled,
                        "webhook event queue full: events go to the outbox directly"
                    );
                }
                let inner = inner.clone();
                tokio::spawn(async move {
                    spool(inner.store.as_ref(), &inner.endpoints, vec![event]).await;
                    inner.wake.notify_waiters();
                });
            }
        }
    }

    /// The one call for events about a recipient (the tracking endpoints use it for opened,
    /// clicked and unsubscribed; the bounce intake for bounced and complained).
    pub fn recipient_event(
        &self,
        kind: crate::EventKind,
        campaign_id: Option<campaign::CampaignId>,
        recipient_id: Option<campaign::RecipientId>,
        email: Option<&str>,
        detail: serde_json::Value,
    ) {
        if self.is_enabled() {
            self.emit(Event::new(
                kind,
                campaign_id,
                recipient_id,
                email.map(str::to_string),
                detail,
            ));
        }
    }

    /// Events that bypassed the in-memory queue because it was full.
    pub fn spilled(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |inner| inner.spilled.load(Ordering::Relaxed))
    }
}

/// The running dispatcher: a spooler and one sender per endpoint.
pub struct Dispatcher {
    tasks: JoinSet<()>,
}

impl Dispatcher {
    /// Starts the dispatcher; it runs until `shutdown`, then spools what is still queued.
    /// Returns the sink producers emit into. Several processes may run one on the same
    /// database: senders claim rows with a lease.
    pub fn start(
        store: Arc<dyn CampaignStore>,
        config: WebhookConfig,
        shutdown: CancellationToken,
    ) -> Result<(EventSink, Dispatcher), StartError> {
        // https:// endpoints are verified like the SMTP relay: built-in roots plus WEBHOOK_TLS_CA.
        let extra = match &config.tls_ca {
            Some(path) => tls::ca_certificates(path)?,
            None => Vec::new(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls::client_config(&extra)?)
            .https_or_http()
            .enable_http1()
            .build();
        let client: HttpClient =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        let (queue, incoming) = mpsc::channel(config.channel_capacity.max(1));
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(SinkInner {
            queue,
            store: store.clone(),
            endpoints: config.endpoints.clone(),
            spilled: AtomicU64::new(0),
            wake: wake.clone(),
        });
        let config = Arc::new(config);
        let mut tasks = JoinSet::new();
        tasks.spawn(spooler(
            store.clone(),
            config.clone(),
            incoming,
            wake.clone(),
            shutdown.clone(),
        ));
        for endpoint in &config.endpoints {
            tasks.spawn(sender(
                store.clone(),
                config.clone(),
                client.clone(),
                endpoint.clone(),
                wake.clone(),
                shutdown.clone(),
            ));
        }
        Ok((EventSink { inner: Some(inner) }, Dispatcher { tasks }))
    }

    /// Waits for the dispatcher's tasks to end (after `shutdown`).
    pub async fn join(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Writes events to the outbox, retrying while the database is unreachable: an accepted
/// event is never dropped.
async fn spool(store: &dyn CampaignStore, endpoints: &[String], events: Vec<Event>) {
    let payloads: Vec<String> = events
        .iter()
        .filter_map(|event| serde_json::to_string(event).ok())
        .collect();
    let mut wait = Duration::from_millis(100);
    loop {
        match store.enqueue_webhook_events(endpoints, &payloads).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(error = %err, events = payloads.len(), retry_in = ?wait, "cannot queue webhook events; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn spooler(
    store: Arc<dyn CampaignStore>,
    config: Arc<WebhookConfig>,
    mut incoming: mpsc::Receiver<Event>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let limit = config.batch_size.max(1) as usize * 10;
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            received = incoming.recv_many(&mut batch, limit) => {
                if received == 0 {
                    return;
                }
            }
            () = shutdown.cancelled() => {
                // Whatever producers handed over before the end is made durable.
                incoming.close();
                while let Some(event) = incoming.recv().await {
                    batch.push(event);
                }
                if !batch.is_empty() {
                    spool(store.as_ref(), &config.endpoints, batch).await;
                }
                return;
            }
        }
        spool(store.as_ref(), &config.endpoints, batch).await;
        wake.notify_waiters();
    }
}

/// How often a sender looks at the outbox without being woken (events spooled by another
/// process sharing the database).
const IDLE_POLL: Duration = Duration::from_secs(1);

async fn sender(
    store: Arc<dyn CampaignStore>,
    config: Arc<WebhookConfig>,
    client: HttpClient,
    endpoint: String,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    // A claim outlives one request with its timeout, so a live sender never loses its rows.
    let lease = config.request_timeout * 3;
    while !shutdown.is_cancelled() {
        let woken = wake.notified();
        let now = OffsetDateTime::now_utc();
        let claimed = match store
            .claim_webhook_events(&endpoint, now, now + lease, config.batch_size)
            .await
        {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(error = %err, %endpoint, "cannot read the webhook outbox");
                Vec::new()
            }
        };
        if claimed.is_empty() {
            let next = store
                .next_webhook_attempt(&endpoint)
                .await
                .ok()
                .flatten()
                .map(|at| (at - OffsetDateTime::now_utc()).max(time::Duration::ZERO))
                .and_then(|wait| Duration::try_from(wait).ok())
                .map_or(IDLE_POLL, |wait| wait.min(IDLE_POLL));
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(next) => {}
                () = shutdown.cancelled() => {}
            }
            continue;
        }
        let ids: Vec<i64> = claimed.iter().map(|event| event.id).collect();
        let body = batch_body(claimed.iter().map(|event| event.payload.as_str()));
        match post(&client, &endpoint, &config, body).await {
            Ok(()) => {
                tracing::debug!(%endpoint, events = ids.len(), "webhook batch delivered");
                if let Err(err) = store.delete_webhook_events(&ids).await {
                    // They are sent again after the lease: at least once.
                    tracing::warn!(error = %err, %endpoint, "delivered webhook events not removed from the outbox");
                }
            }
            Err(reason) => {
                let attempts = claimed.iter().map(|e| e.attempts).max().unwrap_or(0) + 1;
                let (give_up, retry): (Vec<_>, Vec<_>) = claimed
                    .iter()
                    .partition(|event| event.attempts + 1 >= config.max_attempts);
                if !give_up.is_empty() {
                    tracing::error!(%endpoint, events = give_up.len(), %reason, "webhook events given up after {} attempts", config.max_attempts);
                    let ids: Vec<i64> = give_up.iter().map(|event| event.id).collect();
                    let _ = store.delete_webhook_events(&ids).await;
                }
                let delay = config.backoff(attempts - 1);
                tracing::warn!(%endpoint, events = retry.len(), attempts, %reason, retry_in = ?delay, "webhook delivery failed; retrying");
                let ids: Vec<i64> = retry.iter().map(|event| event.id).collect();
                let at = OffsetDateTime::now_utc()
                    + time::Duration::try_from(delay).unwrap_or(time::Duration::MINUTE);
                if let Err(err) = store.retry_webhook_events(&ids, at).await {
                    tracing::warn!(error = %err, %endpoint, "cannot reschedule webhook events; they return after their lease");
                }
            }
        }
    }
}

/// `{"events":[…]}` from the stored JSON texts, without re-encoding them.
fn batch_body<'a>(payloads: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut body = String::from("{\"events\":[");
    for (i, payload) in payloads.enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(payload);
    }
    body.push_str("]}");
    body.into_bytes()
}

async fn post(
    client: &HttpClient,
    endpoint: &str,
    config: &WebhookConfig,
    body: Vec<u8>,
) -> Result<(), String> {
    let timestamp = OffsetDateTime::now_utc().unix_timestamp();
    let signature = sign(config.secret.as_bytes(), timestamp, &body);
    let request = http::Request::post(endpoint)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|err| format!("invalid request: {err}"))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|err| format!("request failed: {}", tls::error_chain(&err)))?;
        let status = response.status();
        // Read the answer to its end so the connection goes back to the pool.
        response
            .into_body()
            .collect()
            .await
            .map_err(|err| format!("reading the answer failed: {err}"))?;
        Ok::<_, String>(status)
    };
    let status = tokio::time::timeout(config.request_timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {:?}", config.request_timeout))??;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the endpoint answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let config = WebhookConfig::new(vec![], "s".into());
        assert_eq!(config.backoff(0), Duration::from_secs(1));
        assert_eq!(config.backoff(3), Duration::from_secs(8));
        assert_eq!(config.backoff(20), Duration::from_secs(600));
        assert_eq!(config.backoff(u32::MAX), Duration::from_secs(600));
    }

    #[test]
    fn batch_body_is_one_json_document() {
        let body = batch_body([r#"{"a":1}"#, r#"{"b":2}"#].into_iter());
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["events"].as_array().unwrap().len(), 2);
        let empty: serde_json::Value =
            serde_json::from_slice(&batch_body(std::iter::empty())).unwrap();
        assert_eq!(empty["events"].as_array().unwrap().len(), 0);
    }
}
