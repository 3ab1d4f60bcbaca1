//! Opening a database: one connection pool per database URL, shared by the campaign store and
//! the task repository, so a process that runs both (`serve`, `api`, `worker`) holds one pool
//! — on SQLite, one set of connections to the file, not two competing for its write lock.

use crate::StoreError;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;

/// Connections of a SQLite pool: what the store and the task repository each had when they
/// opened their own.
const SQLITE_CONNECTIONS: u32 = 16;
/// Connections of a PostgreSQL pool, likewise the sum of what each side had.
const POSTGRES_CONNECTIONS: u32 = 32;
/// The SQLite WAL size past which the file is checkpointed and truncated. SQLite's own
/// (passive) checkpoints copy pages back but restart the WAL only when no reader is using it
/// at that instant, which a busy pool (the API's reads, batch claims) rarely allows: a
/// 1,000,000-recipient send left a 321 MB WAL, and every read searches the WAL's index.
pub const WAL_TRUNCATE_BYTES: u64 = 64 << 20;
/// How often the WAL's size is looked at (one `stat` of the file).
const WAL_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// An open connection pool to the database at one URL.
#[derive(Debug, Clone)]
pub enum Database {
    /// One SQLite file in WAL mode.
    Sqlite(SqlitePool),
    /// A PostgreSQL database (TLS as the URL's `sslmode`/`sslrootcert` ask).
    Postgres(PgPool),
}

impl Database {
    /// Connects to `sqlite://path` (creating the file if missing) or `postgres://…`. Applies
    /// no migrations: each user of the pool applies its own (see [`Database::migrate`]).
    pub async fn open(url: &str) -> Result<Database, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|err| invalid(err.to_string()))?
                .create_if_missing(true)
                // WAL lets readers (the API) proceed while a writer (an import, a worker)
                // commits; synchronous=FULL makes every committed delivery outcome and task
                // survive power loss too.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(30));
            let pool = SqlitePoolOptions::new()
                .max_connections(SQLITE_CONNECTIONS)
                .connect_with(options)
                .await?;
            tokio::spawn(keep_wal_small(pool.clone()));
            Ok(Database::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // No bitmap scans: a table filled faster than autoanalyze runs (the task queue, a
            // fresh import) has no statistics, the planner then expects a handful of rows and
            // fetches them all by bitmap to sort them, reading the whole backlog on every
            // claim (16 ms against 0.9 ms at 50,000 pending tasks). An ordered index scan that
            // stops after the rows wanted is right whatever the statistics say.
            let options = PgConnectOptions::from_str(url)
                .map_err(|err| invalid(err.to_string()))?
                .options([("enable_bitmapscan", "off")]);
            let pool = PgPoolOptions::new()
                .max_connections(POSTGRES_CONNECTIONS)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            Ok(Database::Postgres(pool))
        } else {
            Err(invalid(
                "it must start with sqlite:// or postgres://".into(),
            ))
        }
    }

    /// On SQLite, when the WAL file is larger than `limit` bytes: checkpoints it with
    /// TRUNCATE (waiting, through the busy timeout, for readers of older snapshots to finish;
    /// writers wait meanwhile) and answers the size it had. Nothing on PostgreSQL or below
    /// the limit. The pool does this by itself past [`WAL_TRUNCATE_BYTES`].
    pub async fn truncate_wal_if_larger(&self, limit: u64) -> Result<Option<u64>, StoreError> {
        match self {
            Database::Sqlite(pool) => truncate_wal_if_larger(pool, limit).await,
            Database::Postgres(_) => Ok(None),
        }
    }

    /// "sqlite" or "postgres", for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }

    /// Applies one user's migrations (the one matching the backend). Migrations of the store
    /// and of the task repository share sqlx's table, numbered apart (store from 0001, tasks
    /// from 1000), so each ignores the versions it does not know. On PostgreSQL sqlx holds an
    /// advisory lock meanwhile, so several processes may start at once.
    pub async fn migrate(&self, sqlite: Migrator, postgres: Migrator) -> Result<(), MigrateError> {
        match self {
            Database::Sqlite(pool) => Self::run(sqlite, pool).await,
            Database::Postgres(pool) => Self::run(postgres, pool).await,
        }
    }

    async fn run<'a, A>(mut migrator: Migrator, pool: A) -> Result<(), MigrateError>
    where
        A: sqlx::Acquire<'a>,
        <A::Connection as std::ops::Deref>::Target: sqlx::migrate::Migrate,
    {
        migrator.set_ignore_missing(true);
        migrator.run(pool).await
    }
}

/// The WAL file of the pool's database, `<file>-wal`.
fn wal_path(pool: &SqlitePool) -> std::path::PathBuf {
    let mut path = pool.connect_options().get_filename().as_os_str().to_owned();
    path.push("-wal");
    path.into()
}

async fn truncate_wal_if_larger(pool: &SqlitePool, limit: u64) -> Result<Option<u64>, StoreError> {
    let size = match tokio::fs::metadata(wal_path(pool)).await {
        Ok(metadata) => metadata.len(),
        // No WAL yet (or an in-memory database): nothing to do.
        Err(_) => return Ok(None),
    };
    if size <= limit {
        return Ok(None);
    }
    // The answer's first column is 1 when the checkpoint could not finish (busy): the next
    // look tries again.
    let (busy,): (i64,) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(pool)
        .await?;
    if busy != 0 {
        tracing::debug!(wal_bytes = size, "WAL checkpoint busy; trying again later");
        return Ok(None);
    }
    tracing::debug!(wal_bytes = size, "WAL checkpointed and truncated");
    Ok(Some(size))
}

/// Looks at the WAL's size every [`WAL_CHECK_INTERVAL`] and truncates it past
/// [`WAL_TRUNCATE_BYTES`], until the pool is closed.
async fn keep_wal_small(pool: SqlitePool) {
    let mut every = tokio::time::interval(WAL_CHECK_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(err) = truncate_wal_if_larger(&pool, WAL_TRUNCATE_BYTES).await {
            tracing::warn!(error = %err, "WAL checkpoint failed");
        }
    }
}
