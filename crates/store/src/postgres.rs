//! The scale-out store: PostgreSQL, campaign documents kept whole as JSONB.

use crate::{CampaignStore, StoreError};
use async_trait::async_trait;
use sqlx::postgres::{PgPool, Postgres};

/// Campaigns and recipients in PostgreSQL.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

/// What the shared SQL (`sql/`) takes from this backend.
type Db = Postgres;
type Store = PostgresStore;
/// `occurred_at` truncated to the hour in UTC, whatever the session's time zone.
const HOUR_OF_OCCURRED_AT: &str =
    "(date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')";

/// A select whose rows a write transaction will change: locked until it commits, so a
/// concurrent writer waits instead of acting on what it read before.
macro_rules! locked {
    ($select:literal) => {
        concat!($select, " FOR UPDATE")
    };
}

#[path = "sql/mod.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "the shared SQL is compiled once per backend, each time for its own Db"
)]
mod sql;

impl PostgresStore {
    /// The store on a pool whose migrations [`crate::open`] applied: brings stored keys up to
    /// date.
    pub(crate) async fn on_migrated(pool: PgPool) -> Result<PostgresStore, StoreError> {
        let store = PostgresStore { pool };
        store.upgrade_email_keys().await?;
        Ok(store)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A single write statement commits on its own (autocommit) as atomically as inside
    /// `BEGIN … COMMIT`, in one round trip instead of three.
    const ONE_STATEMENT_COMMITS: bool = true;

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

#[async_trait]
impl CampaignStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
