//! Test support for the workspace's own tests (a dev-dependency only): databases, SMTP
//! servers (`smtp`) and child processes (`process`).
//!
//! PostgreSQL tests get a database of their own so they can run in parallel without
//! seeing each other's rows. Where the server is missing, a test skips with a message,
//! except under CI (`CI=true`) or `REQUIRE_POSTGRES=1`, where it fails: a suite that
//! silently skips its backend would report green while testing nothing.

use sqlx::{Connection, Executor, PgConnection};
use std::path::PathBuf;

pub mod https;
pub mod postgres_tls;
pub mod process;
pub mod recording_smtp;
pub mod smtp;

/// The server tests use: `TEST_POSTGRES_URL`, else a `postgres://` `DATABASE_URL`, else the
/// local development server.
pub fn postgres_server_url() -> String {
    if let Ok(url) = std::env::var("TEST_POSTGRES_URL") {
        return url;
    }
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => url,
        // Plain TCP on loopback, as before TLS support: TLS to PostgreSQL is tested against a
        // private-CA server of its own (postgres_tls).
        _ => "postgres://postgres@127.0.0.1:5432/test?sslmode=disable".to_string(),
    }
}

/// True when a missing PostgreSQL must fail the run rather than skip.
pub fn postgres_required() -> bool {
    flag("CI") || flag("REQUIRE_POSTGRES")
}

/// True when a missing SMTP sink must fail the run rather than skip.
pub fn smtp_required() -> bool {
    flag("CI") || flag("REQUIRE_SMTP")
}

/// True when a missing Prometheus (`prometheus`, `promtool`) must fail the run rather than
/// skip.
pub fn prometheus_required() -> bool {
    flag("CI") || flag("REQUIRE_PROMETHEUS")
}

fn flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
        .unwrap_or(false)
}

/// A freshly created, empty PostgreSQL database; dropped when this value is dropped.
pub struct PostgresDatabase {
    pub url: String,
    name: String,
    server_url: String,
}

impl PostgresDatabase {
    /// Creates a uniquely named database, or returns `None` (after saying why) when no server
    /// is reachable and the run does not require one. Panics when the server is required.
    pub async fn create() -> Option<PostgresDatabase> {
        let server_url = postgres_server_url();
        let mut admin = match PgConnection::connect(&server_url).await {
            Ok(conn) => conn,
            Err(err) => {
                if postgres_required() {
                    panic!(
                        "PostgreSQL is required (CI/REQUIRE_POSTGRES) but {server_url} is unreachable: {err}"
                    );
                }
                eprintln!("skipping: PostgreSQL at {server_url} is unreachable: {err}");
                return None;
            }
        };
        let name = format!("mb_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        let url = replace_database(&server_url, &name);
        Some(PostgresDatabase {
            url,
            name,
            server_url,
        })
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        // Dropping needs async I/O; do it on a thread of its own so it works from inside or
        // outside a runtime. Failure only leaves an empty database behind.
        let server_url = self.server_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    if let Ok(mut admin) = PgConnection::connect(&server_url).await {
                        let _ = admin
                            .execute(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            )))
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

fn replace_database(server_url: &str, database: &str) -> String {
    let (base, query) = match server_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server_url, None),
    };
    // postgres://user@host:port/db → keep everything up to the last '/' after the host.
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].rfind('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// A SQLite database file in a temporary directory that lives as long as this value.
pub struct SqliteDatabase {
    pub url: String,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SqliteDatabase {
    pub fn create() -> SqliteDatabase {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("marketing.db");
        SqliteDatabase {
            url: format!("sqlite://{}", path.display()),
            path,
            _dir: dir,
        }
    }
}

/// The two stores every store-touching test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh database of either backend, dropped (files removed, database dropped) with this
/// value.
pub enum TestDatabase {
    Sqlite(SqliteDatabase),
    Postgres(PostgresDatabase),
}

impl TestDatabase {
    /// A fresh database on `backend`, or `None` when PostgreSQL is unreachable and the run
    /// does not require it (see [`PostgresDatabase::create`]).
    pub async fn create(backend: Backend) -> Option<TestDatabase> {
        match backend {
            Backend::Sqlite => Some(TestDatabase::Sqlite(SqliteDatabase::create())),
            Backend::Postgres => PostgresDatabase::create().await.map(TestDatabase::Postgres),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            TestDatabase::Sqlite(_) => Backend::Sqlite,
            TestDatabase::Postgres(_) => Backend::Postgres,
        }
    }

    pub fn url(&self) -> &str {
        match self {
            TestDatabase::Sqlite(database) => &database.url,
            TestDatabase::Postgres(database) => &database.url,
        }
    }
}

/// Expands a suite of store-touching tests once per backend: a module `sqlite` and a module
/// `postgres`, each holding one test per case, so `cargo nextest run -E 'test(/sqlite::/)'`
/// selects a backend. Each test creates a fresh [`TestDatabase`] and hands it, with the case
/// function, to a runner of the suite's own that builds the fixture the cases take:
///
/// ```ignore
/// async fn with_store<Case, Run>(database: testkit::TestDatabase, case: Case)
/// where
///     Case: FnOnce(Store) -> Run,
///     Run: std::future::Future<Output = ()>,
/// { /* open the store on database.url(), keep `database` alive, */ case(store).await }
///
/// testkit::backend_suite! {
///     #[tokio::test] with_store => [a_case, another_case];
///     #[tokio::test(flavor = "multi_thread", worker_threads = 2)] with_store => [a_busy_case];
/// }
/// ```
///
/// The same cases can run through several runners (a repository used directly and through
/// its HTTP adapter): `runners { direct, http: over_http }` followed by the groups without a
/// runner (`#[tokio::test] [a_case, another_case];`) gives `sqlite::…`/`postgres::…` through
/// `direct` and `http::sqlite::…`/`http::postgres::…` through `over_http`.
///
/// Runners and cases are named from the invoking module. Without PostgreSQL the `postgres`
/// tests skip, except under CI or `REQUIRE_POSTGRES=1`, where they fail.
#[macro_export]
macro_rules! backend_suite {
    (@backend $module:ident, $backend:ident; $( #[$test:meta] $run:ident => [ $($case:ident),* ] );+) => {
        mod $module {
            $( $(
                #[$test]
                async fn $case() {
                    let Some(database) =
                        $crate::TestDatabase::create($crate::Backend::$backend).await
                    else {
                        return;
                    };
                    super::$run(database, super::$case).await;
                }
            )* )+
        }
    };
    (@runner $run:ident; $( #[$test:meta] [ $($case:ident),* $(,)? ] );+ $(;)?) => {
        $crate::backend_suite!($( #[$test] $run => [ $($case),* ] );+);
    };
    (@variants [$($groups:tt)*] $variant:ident: $run:ident $(, $($rest:tt)*)?) => {
        mod $variant {
            use super::*;
            $crate::backend_suite!(@runner $run; $($groups)*);
        }
        $crate::backend_suite!(@variants [$($groups)*] $($($rest)*)?);
    };
    (@variants [$($groups:tt)*]) => {};
    (runners { $run:ident $(, $($variants:tt)*)? } $($groups:tt)*) => {
        $crate::backend_suite!(@runner $run; $($groups)*);
        $crate::backend_suite!(@variants [$($groups)*] $($($variants)*)?);
    };
    ($( #[$test:meta] $run:ident => [ $($case:ident),* $(,)? ] );+ $(;)?) => {
        $crate::backend_suite!(@backend sqlite, Sqlite; $( #[$test] $run => [ $($case),* ] );+);
        $crate::backend_suite!(@backend postgres, Postgres; $( #[$test] $run => [ $($case),* ] );+);
    };
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn replaces_the_database_name_and_keeps_options() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            replace_database("postgres://u:p@h/test?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://h", "x"), "postgres://h/x");
    }
}
