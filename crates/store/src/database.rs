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
