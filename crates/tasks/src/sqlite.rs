//! Tasks in SQLite: claims run inside `BEGIN IMMEDIATE`, which takes the single write lock up
//! front, so two claimers never pick the same rows.

use crate::{Backoff, Clock, TaskError};
use sqlx::sqlite::SqlitePool;
use std::sync::Arc;

pub struct SqliteTasks {
    pool: SqlitePool,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
}

impl SqliteTasks {
    /// The repository on a pool (shared with the campaign store) whose migrations
    /// [`crate::open_with`] applied.
    pub(crate) fn on_migrated(
        pool: SqlitePool,
        clock: Arc<dyn Clock>,
        backoff: Backoff,
    ) -> SqliteTasks {
        SqliteTasks {
            pool,
            clock,
            backoff,
        }
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, TaskError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

crate::backend::task_repository!(SqliteTasks, sqlx::Sqlite, skip_locked = "", cte = false);
