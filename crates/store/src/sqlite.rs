//! The embedded default store: one SQLite file in WAL mode.

use crate::{CampaignStore, StoreError};
use async_trait::async_trait;
use sqlx::sqlite::{Sqlite, SqlitePool};

/// Campaigns and recipients in a SQLite database file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// What the shared SQL (`sql/`) takes from this backend.
type Db = Sqlite;
type Store = SqliteStore;
/// `occurred_at` truncated to the hour (integer microseconds).
const HOUR_OF_OCCURRED_AT: &str = "(occurred_at / 3600000000) * 3600000000";

/// A select whose rows a write transaction will change. SQLite needs no row lock: its write
/// transaction (`begin_write`) already excludes every other writer.
macro_rules! locked {
    ($select:literal) => {
        $select
    };
}

#[path = "sql/mod.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "the shared SQL is compiled once per backend, each time for its own Db"
)]
mod sql;

impl SqliteStore {
    /// The store on a pool whose migrations [`crate::open`] applied: brings stored keys up to
    /// date.
    pub(crate) async fn on_migrated(pool: SqlitePool) -> Result<SqliteStore, StoreError> {
        let store = SqliteStore { pool };
        store.upgrade_email_keys().await?;
        Ok(store)
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A single write statement still goes through `begin_write` here: run on its own, it
    /// would start as a reader and fail with SQLITE_BUSY (no busy wait) when another writer
    /// committed before it took the write lock.
    const ONE_STATEMENT_COMMITS: bool = false;

    /// Write transactions take SQLite's write lock up front (`BEGIN IMMEDIATE`): a deferred
    /// transaction that reads first and writes later fails with SQLITE_BUSY when another
    /// writer got in between, instead of waiting its turn.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

#[async_trait]
impl CampaignStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
