//! Tasks in PostgreSQL: claims select with `FOR UPDATE SKIP LOCKED` in a short transaction,
//! so concurrent claimers take disjoint rows without waiting for each other.

use crate::{Backoff, Clock, TaskError};
use sqlx::postgres::PgPool;
use std::sync::Arc;

pub struct PostgresTasks {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
}

impl PostgresTasks {
    /// The repository on a pool (shared with the campaign store) whose migrations
    /// [`crate::open_with`] applied. The pool plans without bitmap scans (see
    /// `store::database`), which keeps a claim an ordered scan of `tasks_pending` however
    /// stale the table's statistics are.
    pub(crate) fn on_migrated(
        pool: PgPool,
        clock: Arc<dyn Clock>,
        backoff: Backoff,
    ) -> PostgresTasks {
        PostgresTasks {
            pool,
            clock,
            backoff,
        }
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, TaskError> {
        Ok(self.pool.begin().await?)
    }
}

crate::backend::task_repository!(
    PostgresTasks,
    sqlx::Postgres,
    skip_locked = " FOR UPDATE SKIP LOCKED",
    cte = true
);
