//! Tasks in SQLite: claims run inside `BEGIN IMMEDIATE`, which takes the single write lock up
//! front, so two claimers never pick the same rows.

use crate::{Backoff, Clock, TaskError};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub struct SqliteTasks {
    pool: SqlitePool,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
}

impl SqliteTasks {
    pub async fn connect(
        url: &str,
        clock: Arc<dyn Clock>,
        backoff: Backoff,
    ) -> Result<SqliteTasks, TaskError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        let mut migrator = sqlx::migrate!("migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        Ok(SqliteTasks {
            pool,
            clock,
            backoff,
        })
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, TaskError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

crate::backend::task_repository!(SqliteTasks, sqlx::Sqlite, skip_locked = "", cte = false);
