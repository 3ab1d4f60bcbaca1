//! Configuration: environment variables (the contract names), `.env` read at start, flags
//! override. Every parser's error names the variable and says what a good value looks like,
//! so a bad value fails at start with a message that says what to fix.

use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;

/// Reads `.env` from the working directory when present. A missing file is fine; an
/// unreadable or malformed one is an error (silently ignoring it would run with defaults).
pub fn load_dotenv() -> anyhow::Result<()> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(err) if err.not_found() => Ok(()),
        Err(err) => Err(err).context(".env could not be read; fix or remove it"),
    }
}

/// Where campaigns and recipients are stored.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Database URL: sqlite://FILE (embedded default) or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://marketing.db", value_parser = database_url)]
    pub database_url: String,
}

/// The HTTP API's address and limits.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Address the API listens on.
    #[arg(long, env = "API_BIND", default_value = "127.0.0.1:8000", value_parser = api_bind)]
    pub api_bind: SocketAddr,

    #[command(flatten)]
    pub links: LinkArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub bounces: BounceArgs,

    /// Largest JSON request body in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024, value_parser = max_body_bytes)]
    pub max_body_bytes: usize,

    /// Largest recipient upload (CSV is streamed) in bytes.
    #[arg(long, env = "MAX_IMPORT_BYTES", default_value_t = 512 * 1024 * 1024, value_parser = max_import_bytes)]
    pub max_import_bytes: u64,

    /// The most recipients one request may add (inline in a campaign document, a JSON array
    /// or a CSV upload); beyond it the request is refused with 413 and nothing is imported.
    #[arg(long, env = "MAX_RECIPIENTS_PER_REQUEST", default_value_t = 1_000_000, value_parser = max_recipients_per_request)]
    pub max_recipients_per_request: u64,

    /// Requests per second each API key may send to /api/v1 (a token bucket; beyond it: 429
    /// with Retry-After); 0 turns the limit off.
    #[arg(long, env = "API_RATE_LIMIT", default_value_t = 50.0, value_parser = api_rate_limit)]
    pub api_rate_limit: f64,

    /// Requests an API key may send at once before API_RATE_LIMIT applies.
    #[arg(long, env = "API_RATE_BURST", default_value_t = 100, value_parser = api_rate_burst)]
    pub api_rate_burst: u32,

    /// Test messages (POST …/test) each API key may send per minute, counted across every API
    /// process sharing the database (beyond it: 429 with Retry-After, nothing sent).
    #[arg(long, env = "TEST_SEND_PER_MINUTE", default_value_t = 10, value_parser = test_send_per_minute)]
    pub test_send_per_minute: u32,

    /// Test messages each API key may send per 24 hours.
    #[arg(long, env = "TEST_SEND_PER_DAY", default_value_t = 100, value_parser = test_send_per_day)]
    pub test_send_per_day: u32,

    /// Where /metrics is served: on the API's port (METRICS_BIND unset), a listener of its own,
    /// or nowhere.
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

impl ApiArgs {
    /// The per-key rate limit, `None` when API_RATE_LIMIT is 0.
    pub fn rate_limit(&self) -> Option<api::RateLimit> {
        (self.api_rate_limit > 0.0).then_some(api::RateLimit {
            per_second: self.api_rate_limit,
            burst: self.api_rate_burst,
        })
    }
}

fn test_send_per_minute(value: &str) -> Result<u32, String> {
    whole_number("TEST_SEND_PER_MINUTE", value, 1..=10_000).map(|n| n as u32)
}

fn test_send_per_day(value: &str) -> Result<u32, String> {
    whole_number("TEST_SEND_PER_DAY", value, 1..=1_000_000).map(|n| n as u32)
}

fn api_rate_limit(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(
            "API_RATE_LIMIT must be requests per second, 0 or more (0: no limit), e.g. 50 or 0.5"
                .into(),
        ),
    }
}

fn api_rate_burst(value: &str) -> Result<u32, String> {
    whole_number("API_RATE_BURST", value, 1..=1_000_000).map(|n| n as u32)
}

/// The per-recipient links in messages: where they point and the key that signs them.
#[derive(Debug, Clone, Args)]
pub struct LinkArgs {
    /// Base URL of the public endpoints (tracking, unsubscribe), as recipients reach them.
    #[arg(long, env = "PUBLIC_BASE_URL", default_value = "http://127.0.0.1:8000", value_parser = public_base_url)]
    pub public_base_url: String,

    #[command(flatten)]
    pub tracking: TrackingArgs,

    /// Domain of the VERP return path: when set, every message's envelope sender (MAIL FROM,
    /// Return-Path) is bounces+TOKEN@DOMAIN with a signed token naming campaign and recipient,
    /// so bounces delivered to that domain's `bounces` mailbox find their recipient.
    #[arg(long, env = "BOUNCE_VERP_DOMAIN", value_parser = verp_domain)]
    pub bounce_verp_domain: Option<String>,

    /// Where the events of those links (and of delivery) are pushed.
    #[command(flatten)]
    pub webhooks: WebhookArgs,
}

/// Outgoing event webhooks. Kept with the links because every role that signs or follows
/// them (api, worker, serve, send) also produces events.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Endpoints (comma-separated http(s) URLs) that receive sent, failed, bounced, complained,
    /// opened, clicked and unsubscribed events as signed JSON batches; unset: no webhooks.
    #[arg(long, env = "WEBHOOK_URLS", value_delimiter = ',', value_parser = webhook_url)]
    pub webhook_urls: Vec<String>,

    /// Key of the HMAC-SHA256 `Webhook-Signature` on every webhook request (required with
    /// WEBHOOK_URLS; at least 16 bytes).
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true, value_parser = Hidden(webhook_secret))]
    pub webhook_secret: Option<String>,

    /// PEM file of CA certificates trusted for https:// webhook endpoints besides the built-in
    /// web PKI roots (for a receiver with a private CA).
    #[arg(long, env = "WEBHOOK_TLS_CA")]
    pub webhook_tls_ca: Option<std::path::PathBuf>,
}

impl WebhookArgs {
    /// Starts the dispatcher when endpoints are configured; the sink is disabled otherwise.
    pub fn start(
        &self,
        store: std::sync::Arc<dyn store::CampaignStore>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<(webhooks::EventSink, Option<webhooks::Dispatcher>)> {
        if self.webhook_urls.is_empty() {
            return Ok((webhooks::EventSink::disabled(), None));
        }
        let secret = match &self.webhook_secret {
            Some(secret) => secret.clone(),
            None => anyhow::bail!(
                "WEBHOOK_SECRET must be set (at least {MIN_SHARED_SECRET_LEN} bytes, e.g. `openssl rand -hex 32`) when WEBHOOK_URLS is"
            ),
        };
        let mut config = webhooks::WebhookConfig::new(self.webhook_urls.clone(), secret);
        config.tls_ca = self.webhook_tls_ca.clone();
        let (sink, dispatcher) = webhooks::Dispatcher::start(store, config, shutdown)
            .context("cannot start the webhook dispatcher")?;
        tracing::info!(
            endpoints = self.webhook_urls.len(),
            "webhooks: events are sent to WEBHOOK_URLS"
        );
        Ok((sink, Some(dispatcher)))
    }
}

fn webhook_url(value: &str) -> Result<String, String> {
    let value = value.trim();
    if (value.starts_with("http://") || value.starts_with("https://"))
        && value.len() > "https://".len()
        && !value.contains(char::is_whitespace)
    {
        Ok(value.to_string())
    } else {
        Err(format!(
            "WEBHOOK_URLS must be comma-separated http(s) URLs such as https://hooks.example.com/marketing, got {value:?}"
        ))
    }
}

impl LinkArgs {
    /// The link builder, with the configured secret or the one kept in the database.
    pub async fn links(&self, store: &dyn store::CampaignStore) -> anyhow::Result<tracking::Links> {
        let keys = self.tracking.keys(store).await?;
        Ok(tracking::Links::new(&self.public_base_url, keys)
            .with_aggregate_only(self.tracking.tracking_aggregate_only)
            .with_verp_domain(self.bounce_verp_domain.clone()))
    }
}

fn verp_domain(value: &str) -> Result<String, String> {
    let probe = format!("bounces@{value}");
    match campaign::EmailAddress::parse(&probe) {
        Ok(_) if !value.contains('@') => Ok(value.to_ascii_lowercase()),
        _ => Err(format!(
            "BOUNCE_VERP_DOMAIN must be a mail domain such as bounces.example.com, got {value:?}"
        )),
    }
}

/// Bounce intake (POST /api/v1/bounces) and when soft bounces suppress an address.
#[derive(Debug, Clone, Args)]
pub struct BounceArgs {
    /// Secret the mail server's bounce hook (or an ESP relay) sends to POST /api/v1/bounces as
    /// `Authorization: Bearer SECRET` or `X-Bounce-Secret`; unset: the intake refuses everything.
    #[arg(long, env = "BOUNCE_WEBHOOK_SECRET", hide_env_values = true, value_parser = Hidden(bounce_webhook_secret))]
    pub bounce_webhook_secret: Option<String>,

    /// Soft bounces (4.x.x, delayed, expired) of one address within SOFT_BOUNCE_WINDOW_HOURS
    /// that put it on the suppression list. Hard bounces and complaints suppress at once.
    #[arg(long, env = "SOFT_BOUNCE_LIMIT", default_value_t = 3, value_parser = soft_bounce_limit)]
    pub soft_bounce_limit: u32,

    /// The window, in hours, in which SOFT_BOUNCE_LIMIT soft bounces suppress an address.
    #[arg(long, env = "SOFT_BOUNCE_WINDOW_HOURS", default_value_t = 72, value_parser = soft_bounce_window_hours)]
    pub soft_bounce_window_hours: u32,
}

impl BounceArgs {
    pub fn settings(&self) -> api::bounces::BounceSettings {
        api::bounces::BounceSettings {
            webhook_secret: self.bounce_webhook_secret.clone(),
            soft_bounce_limit: self.soft_bounce_limit,
            soft_bounce_window: time::Duration::hours(i64::from(self.soft_bounce_window_hours)),
        }
    }
}

fn webhook_secret(value: &str) -> Result<String, String> {
    shared_secret("WEBHOOK_SECRET", value)
}

fn bounce_webhook_secret(value: &str) -> Result<String, String> {
    shared_secret("BOUNCE_WEBHOOK_SECRET", value)
}

fn soft_bounce_limit(value: &str) -> Result<u32, String> {
    whole_number("SOFT_BOUNCE_LIMIT", value, 1..=1000).map(|n| n as u32)
}

fn soft_bounce_window_hours(value: &str) -> Result<u32, String> {
    whole_number("SOFT_BOUNCE_WINDOW_HOURS", value, 1..=24 * 365).map(|n| n as u32)
}

/// The key that signs tracking and unsubscribe links.
#[derive(Debug, Clone, Args)]
pub struct TrackingArgs {
    /// Secret (at least 32 bytes) signing unsubscribe and tracking tokens. When unset, one is
    /// generated once and kept in the database, so every process sharing it agrees.
    #[arg(long, env = "TRACKING_SECRET", hide_env_values = true, value_parser = Hidden(tracking_secret))]
    pub tracking_secret: Option<String>,

    /// Earlier secrets, comma-separated: links signed with them keep working after a rotation.
    #[arg(long, env = "TRACKING_PREVIOUS_SECRETS", hide_env_values = true, value_delimiter = ',', value_parser = Hidden(tracking_previous_secret))]
    pub tracking_previous_secrets: Vec<String>,

    /// Privacy for every campaign: open and click links name no recipient and their events
    /// are stored without one (totals only). A campaign can ask for it alone with
    /// `tracking.aggregate_only`. true or false.
    #[arg(long, env = "TRACKING_AGGREGATE_ONLY", default_value_t = false, action = clap::ArgAction::Set, value_parser = tracking_aggregate_only)]
    pub tracking_aggregate_only: bool,
}

fn tracking_aggregate_only(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err("TRACKING_AGGREGATE_ONLY must be true or false".into()),
    }
}

impl TrackingArgs {
    /// The signing keys: the configured secret, or the one stored in the database.
    pub async fn keys(
        &self,
        store: &dyn store::CampaignStore,
    ) -> anyhow::Result<tracking::TokenKeys> {
        let current = match &self.tracking_secret {
            Some(secret) => secret.clone(),
            None => {
                let mut random = [0u8; 32];
                getrandom::fill(&mut random)
                    .map_err(|err| anyhow::anyhow!("no randomness available: {err}"))?;
                store.secret("tracking", &hex::encode(random)).await?
            }
        };
        let previous: Vec<&[u8]> = self
            .tracking_previous_secrets
            .iter()
            .map(|s| s.as_bytes())
            .collect();
        tracking::TokenKeys::new(current.as_bytes(), previous).context("TRACKING_SECRET")
    }
}

fn tracking_secret(value: &str) -> Result<String, String> {
    long_secret("TRACKING_SECRET", value)
}

fn tracking_previous_secret(value: &str) -> Result<String, String> {
    long_secret("an entry of TRACKING_PREVIOUS_SECRETS", value)
}

fn long_secret(variable: &str, value: &str) -> Result<String, String> {
    secret_of_length(variable, value, tracking::token::MIN_SECRET_LEN)
}

/// The shortest token or shared secret accepted (TASK_REPO_TOKEN, WEBHOOK_SECRET,
/// BOUNCE_WEBHOOK_SECRET), in bytes. Signing keys (TRACKING_SECRET) need
/// `tracking::token::MIN_SECRET_LEN` (32). A short value is refused at start: it could be
/// guessed, and is more likely a placeholder than a secret.
pub const MIN_SHARED_SECRET_LEN: usize = 16;

fn shared_secret(variable: &str, value: &str) -> Result<String, String> {
    secret_of_length(variable, value, MIN_SHARED_SECRET_LEN)
}

/// A secret (see [`secret`]) of at least `minimum` bytes; the error never shows the value.
fn secret_of_length(variable: &str, value: &str, minimum: usize) -> Result<String, String> {
    let value = secret(variable, value)?;
    if value.len() >= minimum {
        Ok(value)
    } else {
        Err(format!(
            "{variable} must be at least {minimum} bytes (e.g. `openssl rand -hex 32`)"
        ))
    }
}

/// Every secret variable goes through this: a secret set to an empty (or blank) value is a
/// mistake, typically `NAME=` copied from an example file, and taking it as "no secret" would
/// silently turn authentication off. Leaving the variable unset is how to say "none".
pub fn secret(variable: &str, value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        Err(format!(
            "{variable} is set but empty: give it a value, or remove it to leave it unset"
        ))
    } else {
        Ok(value.to_string())
    }
}

/// TASK_REPO_TOKEN, for the service and every client of it.
pub fn task_repo_token(value: &str) -> Result<String, String> {
    shared_secret("TASK_REPO_TOKEN", value)
}

/// The value parser of a secret variable: `check`'s error alone, without clap's usual
/// "invalid value '…'", which would print the (wrong, but perhaps nearly right) secret.
#[derive(Clone, Copy)]
pub struct Hidden(pub fn(&str) -> Result<String, String>);

impl clap::builder::TypedValueParser for Hidden {
    type Value = String;

    fn parse_ref(
        &self,
        command: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let refuse = |message: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{message}\n"),
            )
            .with_cmd(command)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("a secret must be valid UTF-8".into()))?;
        (self.0)(text).map_err(refuse)
    }
}

/// How mail leaves: SMTP when SMTP_URL is set, else .eml files in OUTBOX_DIR.
#[derive(Debug, Clone, Args)]
pub struct TransportArgs {
    /// SMTP server: smtp://[user:password@]host[:port][?tls=required|opportunistic|none] or
    /// smtps://…; unset: messages are written as .eml files to OUTBOX_DIR.
    #[arg(long, env = "SMTP_URL", hide_env_values = true, value_parser = Hidden(smtp_url))]
    pub smtp_url: Option<String>,

    /// Directory of the outbox transport (used when SMTP_URL is unset).
    #[arg(long, env = "OUTBOX_DIR", default_value = "outbox")]
    pub outbox_dir: std::path::PathBuf,

    /// Long-lived SMTP connections per worker, each its own sender.
    #[arg(long, env = "SMTP_CONNECTIONS", default_value_t = 8, value_parser = smtp_connections)]
    pub smtp_connections: usize,

    /// Messages per second at most for the whole deployment, shared through the database by
    /// every process that sends (workers, and the API's test sends); unset: no limit.
    #[arg(long, env = "SMTP_RATE_LIMIT", value_parser = smtp_rate_limit)]
    pub smtp_rate_limit: Option<f64>,

    /// TOML file of sending rates per destination domain or domain group (and a default for
    /// the other domains), shared by every worker on the database; read and checked at start.
    #[arg(long, env = "RATE_LIMITS_FILE", value_parser = rate_limits_file)]
    pub rate_limits_file: Option<rates::RateLimits>,

    /// Seconds allowed for every SMTP step (connect, each command, the content); unset:
    /// per-step defaults.
    #[arg(long, env = "SMTP_TIMEOUT", value_parser = smtp_timeout)]
    pub smtp_timeout: Option<f64>,

    /// DKIM signing of what this transport sends.
    #[command(flatten)]
    pub dkim: crate::dkim::DkimArgs,
}

impl TransportArgs {
    /// Builds the transport (inside the runtime: SMTP spawns its sender tasks), keeping
    /// `SMTP_RATE_LIMIT`, `RATE_LIMITS_FILE` and each campaign's `max_rate` as schedules shared
    /// through `database` by every process that sends on it (a message limited by none of
    /// them takes no slot).
    pub fn transport(
        &self,
        database: &store::Database,
    ) -> anyhow::Result<std::sync::Arc<dyn delivery::Transport>> {
        let config = delivery::TransportConfig {
            smtp_url: self.smtp_url.clone(),
            outbox_dir: self.outbox_dir.clone(),
            connections: self.smtp_connections,
            timeout: self.smtp_timeout.map(std::time::Duration::from_secs_f64),
        };
        let settings = rates::RateSettings {
            global: self.smtp_rate_limit,
            destinations: self.rate_limits_file.clone().unwrap_or_default(),
        };
        Ok(std::sync::Arc::new(rates::RateLimitedTransport::new(
            delivery::transport_from_config(&config)?,
            &settings,
            store::sending_rates::open(database),
        )))
    }
}

fn rate_limits_file(value: &str) -> Result<rates::RateLimits, String> {
    rates::RateLimits::read(std::path::Path::new(value)).map_err(|err| err.to_string())
}

/// SMTP_URL may carry a password; an empty one (`smtp://user:@host`) is refused like an empty
/// secret variable, and so is an empty SMTP_URL (unset it to use the outbox).
fn smtp_url(value: &str) -> Result<String, String> {
    let value = secret("SMTP_URL", value)?;
    let authority = value
        .split_once("://")
        .map_or("", |(_, rest)| rest.split(['/', '?']).next().unwrap_or(""));
    if let Some((userinfo, _host)) = authority.rsplit_once('@')
        && let Some((_user, password)) = userinfo.split_once(':')
    {
        secret("the password in SMTP_URL", password)?;
    }
    Ok(value)
}

fn smtp_connections(value: &str) -> Result<usize, String> {
    whole_number("SMTP_CONNECTIONS", value, 1..=256).map(|n| n as usize)
}

fn positive_seconds(variable: &str, value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!(
            "{variable} must be a positive number (e.g. 10 or 0.5)"
        )),
    }
}

/// The range a campaign's `max_rate` has, for the same reason: the rate schedules keep a slot
/// interval in nanoseconds, which a rate beyond a million per second would round to nothing.
fn smtp_rate_limit(value: &str) -> Result<f64, String> {
    use campaign::{MAX_MAX_RATE, MIN_MAX_RATE};
    match value.parse::<f64>() {
        Ok(rate) if (MIN_MAX_RATE..=MAX_MAX_RATE).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "SMTP_RATE_LIMIT must be messages per second from {MIN_MAX_RATE} to {MAX_MAX_RATE} (e.g. 50 or 0.5)"
        )),
    }
}

fn smtp_timeout(value: &str) -> Result<f64, String> {
    positive_seconds("SMTP_TIMEOUT", value)
}

/// The campaign processor's knobs.
#[derive(Debug, Clone, Args)]
pub struct SchedulerArgs {
    /// Seconds between full checks for due scheduled campaigns (and repairs of campaigns a
    /// crash left queued without a task). Independent of it, a timer on the nearest
    /// scheduled time, re-read every second, starts a campaign within about a second.
    #[arg(long, env = "CAMPAIGN_CHECK_INTERVAL", default_value_t = 60.0, value_parser = campaign_check_interval)]
    pub campaign_check_interval: f64,
}

impl SchedulerArgs {
    pub fn config(&self) -> processor::SchedulerConfig {
        processor::SchedulerConfig::new(std::time::Duration::from_secs_f64(
            self.campaign_check_interval,
        ))
    }
}

fn campaign_check_interval(value: &str) -> Result<f64, String> {
    positive_seconds("CAMPAIGN_CHECK_INTERVAL", value)
}

/// The task processor's knobs.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// This worker's name in task leases; unset: host name, process id and a random suffix,
    /// so replicas never share one.
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,

    /// Seconds between checks for new tasks when idle (work created in the same process
    /// wakes the worker at once).
    #[arg(long, env = "TASK_CHECK_INTERVAL", default_value_t = 5.0, value_parser = task_check_interval)]
    pub task_check_interval: f64,

    /// Seconds a claimed task stays leased without a heartbeat; after a crash, other workers
    /// take over its tasks once this has passed.
    #[arg(long, env = "TASK_LEASE_SECONDS", default_value_t = 60.0, value_parser = task_lease)]
    pub task_lease_seconds: f64,

    /// Batch tasks a worker runs at once.
    #[arg(long, env = "WORKER_TASKS", default_value_t = 4, value_parser = worker_tasks)]
    pub worker_tasks: usize,

    /// Seconds a shutdown (SIGTERM/SIGINT) waits for messages in flight before exiting.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value_t = 30.0, value_parser = shutdown_grace)]
    pub shutdown_grace: f64,

    /// Messages a worker may have handed to the transport whose outcome is not committed yet:
    /// the most duplicates a crash of it can cause, and the most messages that can still go
    /// out after a pause or cancel is acknowledged. More than SMTP_CONNECTIONS keeps every
    /// connection busy while outcomes are committed. Unset: 4 × SMTP_CONNECTIONS on SQLite,
    /// 8 × on PostgreSQL.
    #[arg(long, env = "MAX_IN_FLIGHT", value_parser = max_in_flight)]
    pub max_in_flight: Option<usize>,
}

/// Messages in flight per SMTP connection when MAX_IN_FLIGHT is unset: enough that a
/// connection has its next message while earlier ones wait for their status check and their
/// outcomes for their group commit. SQLite answers in-process; on PostgreSQL every message
/// holds its slot for several round trips to the server (the status read, the commit and its
/// WAL flush), so the slots, not the connections, set the rate there: twice as many gave
/// +15–23 % msg/s (docs/BENCHMARKS.md, "Where a PostgreSQL `send` waits"). On SQLite more
/// slots gave ~nothing and raised the peak memory of a 1,000,000-recipient send past 64 MB.
pub fn in_flight_per_connection(database: &store::Database) -> usize {
    match database {
        store::Database::Sqlite(_) => 4,
        store::Database::Postgres(_) => 8,
    }
}

fn max_in_flight(value: &str) -> Result<usize, String> {
    whole_number("MAX_IN_FLIGHT", value, 1..=4096).map(|n| n as usize)
}

impl WorkerArgs {
    /// The worker's configuration; `smtp_connections` and the database set the default of
    /// MAX_IN_FLIGHT.
    pub fn config(
        &self,
        smtp_connections: usize,
        database: &store::Database,
    ) -> processor::WorkerConfig {
        let mut config = processor::WorkerConfig::new(
            self.worker_id
                .clone()
                .unwrap_or_else(processor::default_worker_id),
        );
        config.check_interval = std::time::Duration::from_secs_f64(self.task_check_interval);
        config.lease = std::time::Duration::from_secs_f64(self.task_lease_seconds);
        config.max_tasks = self.worker_tasks;
        config.in_flight = self
            .max_in_flight
            .unwrap_or(in_flight_per_connection(database) * smtp_connections);
        config.shutdown_grace = std::time::Duration::from_secs_f64(self.shutdown_grace);
        config
    }
}

fn task_check_interval(value: &str) -> Result<f64, String> {
    positive_seconds("TASK_CHECK_INTERVAL", value)
}

fn task_lease(value: &str) -> Result<f64, String> {
    // The task repository refuses leases longer than a day (tasks::MAX_LEASE).
    let max = tasks::MAX_LEASE.as_seconds_f64();
    match positive_seconds("TASK_LEASE_SECONDS", value)? {
        n if (1.0..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "TASK_LEASE_SECONDS must be between 1 (heartbeats renew it every third) and {max} (a day)"
        )),
    }
}

fn worker_tasks(value: &str) -> Result<usize, String> {
    whole_number("WORKER_TASKS", value, 1..=256).map(|n| n as usize)
}

fn shutdown_grace(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err("SHUTDOWN_GRACE must be a number of seconds, 0 or more".into()),
    }
}

/// Where a role serves `/metrics`.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Address of this process's metrics listener (/metrics, /health, /ready), or `off` for
    /// none. Unset: a worker listens on 127.0.0.1:9101 and a scheduler on 127.0.0.1:9102 (so
    /// one of each can share a host), and the api and serve roles serve /metrics on the API's
    /// own port. Port 0 picks a free port (logged at start): use it when several workers
    /// share a host.
    #[arg(long, env = "METRICS_BIND", value_parser = metrics_bind)]
    pub metrics_bind: Option<MetricsBind>,
}

/// A METRICS_BIND value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsBind {
    /// A listener of its own at this address.
    At(SocketAddr),
    /// No /metrics at all.
    Off,
}

impl MetricsArgs {
    /// The address of the role's own metrics listener: METRICS_BIND, or the role's default
    /// port; `None` when METRICS_BIND is `off`.
    pub fn listener_or(&self, role_default: SocketAddr) -> Option<SocketAddr> {
        match self.metrics_bind {
            None => Some(role_default),
            Some(MetricsBind::At(address)) => Some(address),
            Some(MetricsBind::Off) => None,
        }
    }
}

/// A worker's metrics listener when METRICS_BIND is unset.
pub const WORKER_METRICS_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9101);
/// A scheduler's metrics listener when METRICS_BIND is unset.
pub const SCHEDULER_METRICS_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9102);

fn metrics_bind(value: &str) -> Result<MetricsBind, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(MetricsBind::Off);
    }
    socket_addr(
        "METRICS_BIND",
        "127.0.0.1:9101 (or 0.0.0.0:9100 in a container), or off",
        value,
    )
    .map(MetricsBind::At)
}

/// Limits on campaign documents.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Largest batch_size a campaign may ask for (recipients per batch task).
    #[arg(long, env = "MAX_BATCH_SIZE", default_value_t = 1000, value_parser = max_batch_size)]
    pub max_batch_size: u32,
}

impl LimitArgs {
    pub fn limits(&self) -> campaign::Limits {
        campaign::Limits {
            max_batch_size: self.max_batch_size,
            ..campaign::Limits::default()
        }
    }
}

fn database_url(value: &str) -> Result<String, String> {
    let ok = value.starts_with("sqlite:")
        || value.starts_with("postgres://")
        || value.starts_with("postgresql://");
    if ok {
        Ok(value.to_string())
    } else {
        Err("DATABASE_URL must start with sqlite:// (e.g. sqlite://marketing.db) or postgres:// (e.g. postgres://postgres@127.0.0.1:5432/marketing)".into())
    }
}

fn socket_addr(variable: &str, example: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{variable} must be an IP address and port such as {example}"))
}

fn api_bind(value: &str) -> Result<SocketAddr, String> {
    socket_addr("API_BIND", "127.0.0.1:8000", value)
}

fn public_base_url(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    match rest {
        // Quotes and angle brackets are refused too: the URL is written into HTML attributes.
        Some(host) if !host.is_empty() && !value.contains(['?', '#', ' ', '"', '\'', '<', '>']) => {
            Ok(value.trim_end_matches('/').to_string())
        }
        _ => Err("PUBLIC_BASE_URL must be an http(s) URL without query, such as https://mail.example.com".into()),
    }
}

pub fn runtime_threads(value: &str) -> Result<usize, String> {
    whole_number("RUNTIME_THREADS", value, 1..=1024).map(|n| n as usize)
}

fn whole_number(
    variable: &str,
    value: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "{variable} must be a whole number from {} to {}",
            range.start(),
            range.end()
        )),
    }
}

fn max_batch_size(value: &str) -> Result<u32, String> {
    whole_number("MAX_BATCH_SIZE", value, 1..=100_000).map(|n| n as u32)
}

fn max_body_bytes(value: &str) -> Result<usize, String> {
    whole_number("MAX_BODY_BYTES", value, 1024..=1024 * 1024 * 1024).map(|n| n as usize)
}

fn max_recipients_per_request(value: &str) -> Result<u64, String> {
    whole_number("MAX_RECIPIENTS_PER_REQUEST", value, 1..=100_000_000)
}

fn max_import_bytes(value: &str) -> Result<u64, String> {
    whole_number("MAX_IMPORT_BYTES", value, 1024..=64 * 1024 * 1024 * 1024)
}

/// The database URL as it may be logged: any password replaced.
pub fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    match (rest.find('@'), rest.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!(
                "{}{}:***{}",
                &url[..scheme_end + 3],
                &rest[..colon],
                &rest[at..]
            )
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redacted("postgres://app:s3cret@db:5432/m"),
            "postgres://app:***@db:5432/m"
        );
        assert_eq!(redacted("postgres://app@db/m"), "postgres://app@db/m");
        assert_eq!(redacted("sqlite://marketing.db"), "sqlite://marketing.db");
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert!(api_bind("localhost").unwrap_err().starts_with("API_BIND"));
        assert!(
            metrics_bind("9101")
                .unwrap_err()
                .starts_with("METRICS_BIND")
        );
        assert_eq!(metrics_bind("off"), Ok(MetricsBind::Off));
        assert!(
            api_rate_limit("-1")
                .unwrap_err()
                .starts_with("API_RATE_LIMIT")
        );
        assert_eq!(api_rate_limit("0"), Ok(0.0));
        assert_eq!(smtp_rate_limit("0.5"), Ok(0.5));
        assert_eq!(smtp_rate_limit("1000000"), Ok(1_000_000.0));
        for bad in ["0", "-3", "1e7", "inf", "NaN", "fast"] {
            assert!(
                smtp_rate_limit(bad)
                    .unwrap_err()
                    .starts_with("SMTP_RATE_LIMIT"),
                "{bad}"
            );
        }
        assert!(
            api_rate_burst("0")
                .unwrap_err()
                .starts_with("API_RATE_BURST")
        );
        assert!(
            max_batch_size("0")
                .unwrap_err()
                .starts_with("MAX_BATCH_SIZE")
        );
        assert!(
            database_url("mysql://x")
                .unwrap_err()
                .starts_with("DATABASE_URL")
        );
        assert!(
            public_base_url("mail.example.com")
                .unwrap_err()
                .starts_with("PUBLIC_BASE_URL")
        );
        assert_eq!(
            public_base_url("https://m.example.com/").unwrap(),
            "https://m.example.com"
        );
        assert!(
            public_base_url("https://m.example.com/\"><script>")
                .unwrap_err()
                .starts_with("PUBLIC_BASE_URL"),
            "the base URL is written into HTML attributes"
        );
        assert_eq!(
            public_base_url("https://proxy.example.com/marketing/").unwrap(),
            "https://proxy.example.com/marketing"
        );
    }
}
