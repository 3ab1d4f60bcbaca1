//! Self-contained tasks end to end through the real binary, on both stores: another service
//! that holds only the task repository's URL and token POSTs a `submit_campaign` task (plain
//! JSON, as any HTTP client would) to `marketing task-repo`; a `marketing worker` stores,
//! queues and delivers it into aiosmtpd, whose Maildir is read back. `marketing submit
//! --task-repo` does the same from the sample files, without a database, and `--wait` follows
//! it to the end through the task repository alone. (For SQLite, task-repo and worker share
//! one database file.)

use campaign::CampaignStatus;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{BINARY, example, spawn, start_task_repo, wait_until};
use testkit::process::{Process, isolated_command};
use testkit::smtp::Aiosmtpd;

mod support;

const TOKEN: &str = "self-contained-test-token";
const FINISH_LIMIT: Duration = Duration::from_secs(60);

/// `task-repo` (token on) and one `worker` on one database, delivering to `sink`.
struct Cluster {
    dir: tempfile::TempDir,
    store: Arc<dyn store::CampaignStore>,
    repo_url: String,
    _task_repo: Process,
    _worker: Process,
}

impl Cluster {
    async fn start(database_url: &str, sink: &Aiosmtpd) -> Cluster {
        Cluster::start_with(database_url, sink, &[]).await
    }

    /// As `start`, with more variables for the worker.
    async fn start_with(
        database_url: &str,
        sink: &Aiosmtpd,
        worker_env: &[(&'static str, String)],
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let store = store::connect(database_url).await.expect("store opens");
        let (task_repo, repo_url) = start_task_repo(dir.path(), database_url, TOKEN).await;
        let mut env = vec![
            ("DATABASE_URL", database_url.to_string()),
            ("TASK_REPO_URL", repo_url.clone()),
            ("TASK_REPO_TOKEN", TOKEN.into()),
            ("SMTP_URL", sink.url()),
            ("TASK_CHECK_INTERVAL", "0.2".into()),
        ];
        env.extend(worker_env.iter().cloned());
        let worker = spawn("worker", dir.path(), &["worker"], &env);
        Cluster {
            dir,
            store,
            repo_url,
            _task_repo: task_repo,
            _worker: worker,
        }
    }

    /// GET /api/v1/tasks/{id} as plain JSON.
    async fn task(&self, id: &str) -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("{}/api/v1/tasks/{id}", self.repo_url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn wait_task(&self, id: &str, status: &str) -> serde_json::Value {
        let deadline = Instant::now() + FINISH_LIMIT;
        loop {
            let task = self.task(id).await;
            if task["status"] == status {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task never {status}: {task}\nworker log:\n{}",
                std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `marketing submit --task-repo … --wait` of the first `count` sample recipients, with
    /// only the task repository's URL and token in its environment: its output.
    fn submit_and_wait(&self, count: usize) -> std::process::Output {
        isolated_command(
            BINARY,
            self.dir.path(),
            &[
                "submit",
                "--template",
                &example("sample_campaign.json"),
                "--recipients",
                &example("sample_recipients.json"),
                "--count",
                &count.to_string(),
                "--wait",
            ],
            &[
                ("TASK_REPO_URL", self.repo_url.clone()),
                ("TASK_REPO_TOKEN", TOKEN.into()),
            ],
        )
        .output()
        .unwrap()
    }

    async fn wait_completed(&self, id: campaign::CampaignId) {
        let store = self.store.clone();
        wait_until(FINISH_LIMIT, "the campaign to complete", || {
            let store = store.clone();
            async move {
                store
                    .get_campaign(id)
                    .await
                    .unwrap()
                    .is_some_and(|c| c.status == CampaignStatus::Completed)
            }
        })
        .await;
    }
}

/// RCPT TO → copies received.
fn received(sink: &Aiosmtpd) -> HashMap<String, usize> {
    let mut copies = HashMap::new();
    for raw in sink.messages() {
        let text = String::from_utf8_lossy(&raw).to_string();
        let rcpt = text
            .lines()
            .take_while(|line| !line.is_empty())
            .find_map(|line| line.strip_prefix("X-RcptTo:"))
            .expect("aiosmtpd records the recipient")
            .trim()
            .to_string();
        *copies.entry(rcpt).or_default() += 1;
    }
    copies
}

fn payload(name: &str, count: usize) -> serde_json::Value {
    let recipients: Vec<serde_json::Value> = (0..count)
        .map(|n| serde_json::json!({"email": format!("svc{n}@mail.example"), "first_name": format!("Svc{n}")}))
        .collect();
    serde_json::json!({
        "kind": "submit_campaign",
        "payload": {
            "version": 1,
            "campaign": {
                "name": name,
                "from": {"email": "news@shop.example", "name": "Shop"},
                "templates": {
                    "subject": "Hello {{ first_name }}",
                    "text": "Hi {{ first_name }}.\nUnsubscribe: {{ unsubscribe_url }}\n"
                },
                "batch_size": 10,
                "recipients": recipients
            }
        }
    })
}

/// A foreign service POSTs a task with plain JSON; the worker delivers it, the campaign is
/// stored under the task's id, and each recipient gets one message. A second, invalid task
/// is dead after one attempt with the reason, and stores nothing.
async fn a_task_posted_by_another_service_is_delivered(database_url: &str) {
    const COUNT: usize = 25;
    let Some(sink) = Aiosmtpd::start() else {
        return;
    };
    let cluster = Cluster::start(database_url, &sink).await;
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        http.post(format!("{}/api/v1/tasks", cluster.repo_url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let created = post(payload("From a service", COUNT)).await.unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let task: serde_json::Value = created.json().await.unwrap();
    let task_id = task["id"].as_str().unwrap().to_string();

    let mut invalid = payload("Typo", 2);
    invalid["payload"]["campaign"]["templates"]["subject"] = "Hi {{ frist_name }}".into();
    let refused: serde_json::Value = post(invalid).await.unwrap().json().await.unwrap();
    let refused_id = refused["id"].as_str().unwrap().to_string();

    let done = cluster.wait_task(&task_id, "completed").await;
    assert_eq!(done["result"]["campaign_id"], task_id.as_str());
    let campaign: campaign::CampaignId = task_id.parse().unwrap();
    cluster.wait_completed(campaign).await;
    let copies = received(&sink);
    assert_eq!(copies.len(), COUNT, "{copies:?}");
    assert!(copies.values().all(|n| *n == 1), "{copies:?}");
    assert!(copies.contains_key("svc0@mail.example"));

    let dead = cluster.wait_task(&refused_id, "dead").await;
    assert_eq!(dead["attempts"], 1);
    let error = dead["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("campaign.templates.subject") && error.contains("frist_name"),
        "{error}"
    );
    assert!(
        cluster
            .store
            .get_campaign(refused_id.parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    // `marketing tasks show` tells the operator why.
    let shown = isolated_command(
        BINARY,
        cluster.dir.path(),
        &["tasks", "show", &refused_id],
        &[
            ("TASK_REPO_URL", cluster.repo_url.clone()),
            ("TASK_REPO_TOKEN", TOKEN.into()),
        ],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{text}");
    assert!(
        text.contains("dead") && text.contains("frist_name"),
        "{text}"
    );
}

/// `marketing submit --task-repo` with the sample files and no database in its environment:
/// it submits one task, and `--wait` follows it until every recipient is delivered.
async fn submit_with_only_the_task_repository_waits_to_the_end(database_url: &str) {
    let Some(sink) = Aiosmtpd::start() else {
        return;
    };
    let cluster = Cluster::start(database_url, &sink).await;
    // The first 12 rows: row 12 has a non-ASCII local part, which aiosmtpd (no SMTPUTF8)
    // refuses.
    let submitted = cluster.submit_and_wait(12);
    let stdout = String::from_utf8_lossy(&submitted.stdout);
    let stderr = String::from_utf8_lossy(&submitted.stderr);
    assert!(submitted.status.success(), "{stdout}\n{stderr}");
    let campaign: campaign::CampaignId = stdout
        .lines()
        .find_map(|line| line.strip_prefix("campaign "))
        .expect("the campaign id is printed")
        .parse()
        .unwrap();
    assert!(stdout.contains("task "), "{stdout}");
    assert!(stdout.contains("status completed"), "{stdout}");
    let record = cluster.store.get_campaign(campaign).await.unwrap().unwrap();
    assert_eq!(record.status, CampaignStatus::Completed);
    assert_eq!(record.recipient_count, 12);
    let counts = cluster.store.delivery_counts(campaign).await.unwrap();
    assert_eq!(
        counts.get(campaign::DeliveryStatus::Sent),
        12,
        "{counts:?}\n{stdout}"
    );
    let copies = received(&sink);
    assert_eq!(copies.len(), 12, "{copies:?}");
    assert!(copies.values().all(|n| *n == 1));
    assert!(
        !cluster.dir.path().join("marketing.db").exists(),
        "submit opened no database"
    );
}

/// The worker refuses what `submit` accepted (its MAX_BATCH_SIZE is below the sample's
/// batch_size): `--wait` prints the task's error and exits 1, and no campaign is stored.
async fn submit_wait_exits_1_when_the_worker_refuses_the_task(database_url: &str) {
    let Some(sink) = Aiosmtpd::start() else {
        return;
    };
    let cluster =
        Cluster::start_with(database_url, &sink, &[("MAX_BATCH_SIZE", "10".into())]).await;
    let submitted = cluster.submit_and_wait(3);
    let stdout = String::from_utf8_lossy(&submitted.stdout);
    let stderr = String::from_utf8_lossy(&submitted.stderr);
    assert_eq!(submitted.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("is dead") && stderr.contains("campaign.batch_size"),
        "{stderr}"
    );
    let task_id = stdout
        .lines()
        .find_map(|line| line.strip_prefix("task "))
        .expect("the task id is printed");
    let campaign: campaign::CampaignId = task_id.parse().unwrap();
    assert!(
        cluster
            .store
            .get_campaign(campaign)
            .await
            .unwrap()
            .is_none()
    );
    assert!(received(&sink).is_empty());
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_posted_by_another_service_is_delivered() {
        let database = testkit::SqliteDatabase::create();
        super::a_task_posted_by_another_service_is_delivered(&database.url).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submit_with_only_the_task_repository_waits_to_the_end() {
        let database = testkit::SqliteDatabase::create();
        super::submit_with_only_the_task_repository_waits_to_the_end(&database.url).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submit_wait_exits_1_when_the_worker_refuses_the_task() {
        let database = testkit::SqliteDatabase::create();
        super::submit_wait_exits_1_when_the_worker_refuses_the_task(&database.url).await;
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_posted_by_another_service_is_delivered() {
        let Some(database) = testkit::PostgresDatabase::create().await else {
            return;
        };
        super::a_task_posted_by_another_service_is_delivered(&database.url).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submit_with_only_the_task_repository_waits_to_the_end() {
        let Some(database) = testkit::PostgresDatabase::create().await else {
            return;
        };
        super::submit_with_only_the_task_repository_waits_to_the_end(&database.url).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submit_wait_exits_1_when_the_worker_refuses_the_task() {
        let Some(database) = testkit::PostgresDatabase::create().await else {
            return;
        };
        super::submit_wait_exits_1_when_the_worker_refuses_the_task(&database.url).await;
    }
}
