//! The scale-out store: PostgreSQL, campaign documents kept whole as JSONB.

use crate::StoreError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use std::str::FromStr;
use std::time::Duration;

/// Campaigns and recipients in PostgreSQL.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    const BACKEND: &'static str = "postgres";
    /// `occurred_at` truncated to the hour in UTC, whatever the session's time zone.
    const HOUR_OF_OCCURRED_AT: &'static str =
        "(date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')";

    /// Connects and applies the migrations (serialised across processes by sqlx's advisory
    /// lock, so several roles may start at once).
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|err| StoreError::InvalidUrl {
            url: url.to_string(),
            reason: err.to_string(),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let mut migrator = sqlx::migrate!("migrations/postgres");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        let store = PostgresStore { pool };
        store.upgrade_email_keys().await?;
        Ok(store)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

crate::backend::campaign_store!(PostgresStore, sqlx::Postgres, lock_campaign = " FOR UPDATE");
