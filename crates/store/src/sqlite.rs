//! The embedded default store: one SQLite file in WAL mode.

use crate::StoreError;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;

/// Campaigns and recipients in a SQLite database file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    const BACKEND: &'static str = "sqlite";
    /// `occurred_at` truncated to the hour (integer microseconds).
    const HOUR_OF_OCCURRED_AT: &'static str = "(occurred_at / 3600000000) * 3600000000";

    /// Opens (creating if missing) the database and applies the migrations.
    pub async fn connect(url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|err| StoreError::InvalidUrl {
                url: url.to_string(),
                reason: err.to_string(),
            })?
            .create_if_missing(true)
            // WAL lets readers (the API) proceed while a writer (an import, a worker) commits;
            // synchronous=FULL makes every committed delivery outcome survive power loss too.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        let mut migrator = sqlx::migrate!("migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        let store = SqliteStore { pool };
        store.upgrade_email_keys().await?;
        Ok(store)
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Write transactions take SQLite's write lock up front (`BEGIN IMMEDIATE`): a deferred
    /// transaction that reads first and writes later fails with SQLITE_BUSY when another
    /// writer got in between, instead of waiting its turn.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

crate::backend::campaign_store!(SqliteStore, sqlx::Sqlite, lock_campaign = "");
