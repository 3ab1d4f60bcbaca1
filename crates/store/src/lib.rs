//! Storage of campaigns, their recipients with per-recipient delivery state, events and
//! suppressions, on SQLite and PostgreSQL.
//!
//! The store is split by aggregate, each a trait with its types in its own module:
//! [`campaigns`] (campaigns and recipients), [`deliveries`] (per-recipient delivery state),
//! [`suppressions`] (the suppression list and bounce/complaint feedback), [`tracking`]
//! (tracking events), [`webhooks`] (the webhook outbox) and [`admin`] (API keys, idempotency
//! keys, secrets, test sends). [`CampaignStore`] is all of them behind one object, which is
//! what callers hold.
//!
//! Both backends run the same SQL (the `sql` module, compiled once per backend); the column
//! types that differ (UUIDs, timestamps) are bridged by the [`db_types`] newtypes, so
//! behaviour cannot drift apart, and one contract suite (tests/contract) runs against both.
//! [`Database`] opens the connection pool that the store and the task repository share.

pub mod ab_tests;
pub mod admin;
pub mod campaigns;
pub mod database;
pub mod db_types;
pub mod deliveries;
mod import;
pub mod postgres;
pub mod sending_rates;
pub mod sqlite;
pub mod suppressions;
pub mod tracking;
pub mod webhooks;

pub use ab_tests::{AbPhase, AbState, AbTestRepository, VariantCounts};
pub use admin::{
    AdminRepository, ApiKeyRecord, IdempotencyReservation, QuotaWindow, TestSendRecord,
    TestSendReservation, quota_verdict,
};
pub use campaigns::{
    CampaignFilter, CampaignPage, CampaignRecord, CampaignRepository, DueCampaign,
    LATE_START_AFTER, StoredRecipient, initial_status,
};
pub use database::{Database, WAL_TRUNCATE_BYTES};
pub use deliveries::{
    DeliveryCounts, DeliveryOutcome, DeliveryRecord, DeliveryRepository, OutcomeKind, RateWait,
    RecipientRange, Requeued, SendGroup, ZoneRelease,
};
pub use import::{
    Duplicate, ImportReport, RecipientStream, UnrecognisedTimeZone, recipient_stream,
};
pub use suppressions::{
    FeedbackEvent, FeedbackKind, NewFeedbackEvent, Suppression, SuppressionRepository,
};
pub use tracking::{
    EngagementCounts, EventCount, RecordedTrackingEvent, TrackingEvent, TrackingEventKind,
    TrackingRepository,
};
pub use webhooks::{QueuedWebhookEvent, WebhookOutbox};

use async_trait::async_trait;
use campaign::{CampaignId, CampaignStatus, RowError};
use std::sync::Arc;

/// The store's traits, for code that calls their methods on a concrete store type
/// (`Arc<dyn CampaignStore>` and `S: CampaignStore` reach them without imports).
pub mod prelude {
    pub use crate::{
        AbTestRepository, AdminRepository, CampaignRepository, CampaignStore, DeliveryRepository,
        SuppressionRepository, TrackingRepository, WebhookOutbox,
    };
}

/// Rows with bad recipients listed in an error; the rest are only counted.
pub const MAX_REPORTED_ROW_ERRORS: usize = 100;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not one we can use.
    #[error("DATABASE_URL {url:?} is not usable: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The database could not be reached (down, wrong address, pool exhausted).
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// No campaign has that id.
    #[error("campaign {0} does not exist")]
    CampaignNotFound(CampaignId),
    /// The campaign is in a state that does not allow the operation.
    #[error("campaign {id} is {status}: {action} is only possible while it is draft or scheduled")]
    WrongState {
        id: CampaignId,
        status: CampaignStatus,
        action: &'static str,
    },
    /// Some recipient rows are invalid; nothing of the import was stored.
    #[error("{total} recipient row(s) are invalid, nothing was imported; first: {}", .rows.first().map(ToString::to_string).unwrap_or_default())]
    InvalidRecipients { rows: Vec<RowError>, total: u64 },
    /// The recipient source failed for another reason (for example an unreadable file).
    #[error("reading recipients failed: {0}")]
    Source(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored value could not be read back (corrupt or written by a newer version).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err),
            other => StoreError::Database(other),
        }
    }
}

/// The whole store: every aggregate's repository over one database. Object-safe, so the
/// binary picks the backend from DATABASE_URL at start.
#[async_trait]
pub trait CampaignStore:
    CampaignRepository
    + DeliveryRepository
    + SuppressionRepository
    + TrackingRepository
    + WebhookOutbox
    + AdminRepository
    + AbTestRepository
{
    /// "sqlite" or "postgres", for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Checks the database answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Opens the store named by a database URL (`sqlite://path` or `postgres://…`) and brings its
/// schema up to date.
pub async fn connect(url: &str) -> Result<Arc<dyn CampaignStore>, StoreError> {
    open(&Database::open(url).await?).await
}

/// The store on an open database (whose pool the task repository may share), its schema
/// brought up to date.
pub async fn open(database: &Database) -> Result<Arc<dyn CampaignStore>, StoreError> {
    database
        .migrate(
            sqlx::migrate!("migrations/sqlite"),
            sqlx::migrate!("migrations/postgres"),
        )
        .await?;
    Ok(match database {
        Database::Sqlite(pool) => Arc::new(sqlite::SqliteStore::on_migrated(pool.clone()).await?),
        Database::Postgres(pool) => {
            Arc::new(postgres::PostgresStore::on_migrated(pool.clone()).await?)
        }
    })
}
