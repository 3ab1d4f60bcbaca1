//! Claim + complete throughput (tasks/s), claiming in batches of 100, on SQLite and
//! PostgreSQL, directly and through the HTTP service and adapter.
//!
//! `cargo bench -p tasks --bench claim` (release). Each row seeds a fresh database with
//! `TASKS_BENCH_TASKS` tasks (default 50,000), then times workers that loop claim(100) →
//! complete until nothing is left, and checks that every task was completed. Workers:
//! `TASKS_BENCH_WORKERS` (default 8). PostgreSQL comes from testkit (TEST_POSTGRES_URL, else
//! the local server); without one its rows are skipped.

use std::sync::Arc;
use std::time::Instant;
use tasks::{NewTask, TaskRepository};

const BATCH: u32 = 100;

#[derive(Clone, Copy, PartialEq)]
enum Completion {
    /// One complete_many per claim: two commits per 100 tasks.
    Batch,
    /// One complete per task: 101 commits per 100 tasks.
    EachTask,
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn seed(repo: &Arc<dyn TaskRepository>, total: usize) {
    for start in (0..total).step_by(1000) {
        let batch = (start..(start + 1000).min(total))
            .map(|n| NewTask::new("send_batch", serde_json::json!({ "n": n })))
            .collect();
        repo.create_many(batch).await.expect("seed tasks");
    }
}

/// Seconds for `workers` to claim and complete everything.
async fn drain(repo: Arc<dyn TaskRepository>, workers: usize, mode: Completion) -> f64 {
    let started = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let repo = repo.clone();
            tokio::spawn(async move {
                let name = format!("bench-{w}");
                let kinds = ["send_batch".to_string()];
                let mut done = 0usize;
                loop {
                    let claimed = repo
                        .claim(&name, &kinds, BATCH, time::Duration::minutes(5))
                        .await
                        .expect("claim");
                    if claimed.is_empty() {
                        return done;
                    }
                    match mode {
                        Completion::Batch => {
                            let results: Vec<_> = claimed
                                .iter()
                                .map(|t| (t.lease(), serde_json::Value::Null))
                                .collect();
                            let refused =
                                repo.complete_many(&name, &results).await.expect("complete");
                            assert!(refused.is_empty(), "leases lost during the benchmark");
                        }
                        Completion::EachTask => {
                            for task in &claimed {
                                repo.complete(&name, task.lease(), serde_json::Value::Null)
                                    .await
                                    .expect("complete");
                            }
                        }
                    }
                    done += claimed.len();
                }
            })
        })
        .collect();
    let mut completed = 0;
    for handle in handles {
        completed += handle.await.expect("worker");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let counts = repo.counts().await.expect("counts");
    assert_eq!(
        counts["completed"] as usize, completed,
        "every task completed once"
    );
    elapsed
}

struct Server(tokio::task::JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn over_http(repo: Arc<dyn TaskRepository>) -> (Arc<dyn TaskRepository>, Server) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let app = tasks::http::router(repo, Some("bench-token".to_string()));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let adapter = tasks::HttpTaskRepository::new(
        &format!("http://{address}"),
        Some("bench-token".to_string()),
    );
    (Arc::new(adapter), Server(server))
}

async fn run(label: &str, url: &str, http: bool, workers: usize, mode: Completion, total: usize) {
    let direct = tasks::connect(url).await.expect("connect");
    seed(&direct, total).await;
    let (repo, _server) = if http {
        let (adapter, server) = over_http(direct).await;
        (adapter, Some(server))
    } else {
        (direct, None)
    };
    let seconds = drain(repo, workers, mode).await;
    let completion = match mode {
        Completion::Batch => "complete_many",
        Completion::EachTask => "complete each",
    };
    println!(
        "{label:<14} {completion:<14} workers {workers:>2}  {total:>7} tasks in {seconds:>6.2} s  {:>8.0} tasks/s",
        total as f64 / seconds
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; nothing else is read from the command line.
    let total = env_number("TASKS_BENCH_TASKS", 50_000);
    let workers = env_number("TASKS_BENCH_WORKERS", 8);
    println!("claim + complete, claims of {BATCH}, {total} tasks per row");
    let postgres = testkit::PostgresDatabase::create().await;
    if postgres.is_none() {
        println!("postgres rows skipped: no server");
    }
    for (http, mode) in [
        (false, Completion::Batch),
        (false, Completion::EachTask),
        (true, Completion::Batch),
    ] {
        let label = |backend: &str| {
            if http {
                format!("http+{backend}")
            } else {
                backend.to_string()
            }
        };
        if postgres.is_some() {
            let database = testkit::PostgresDatabase::create().await.expect("postgres");
            run(
                &label("postgres"),
                &database.url,
                http,
                workers,
                mode,
                total,
            )
            .await;
        }
        let database = testkit::SqliteDatabase::create();
        run(&label("sqlite"), &database.url, http, workers, mode, total).await;
    }
}
