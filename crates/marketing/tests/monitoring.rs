//! Monitoring end to end: the scaled-out roles (`task-repo`, `api`, `worker`, `scheduler`) and
//! `serve` run
//! as real processes and deliver a campaign to postfix's smtp-sink, while
//! - `promtool check metrics` lints every role's `/metrics`, and `promtool check rules` the
//!   alert rules;
//! - a real Prometheus scrapes the roles (1 s interval) with the deployment's job names and
//!   the deployment's rule file, and every PromQL expression of every Grafana dashboard panel
//!   and every alert rule is evaluated through its HTTP API: each must return data, except
//!   the alerts listed in [`QUIET_ALERTS`] (which must not fire in a healthy run). Every
//!   metric name an expression uses
//!   must be one the service exports, so a dashboard querying a metric nobody exports fails.
//!
//! Prometheus is the Debian package `prometheus` (scripts/test.sh installs it); without it
//! these tests skip with a message, except under CI/REQUIRE_PROMETHEUS where they fail.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{BINARY, TRACKING_SECRET, wait_for};
use testkit::process::{Process, isolated_command};
use testkit::smtp::{SmtpSink, free_port};

mod support;

const TOKEN: &str = "monitoring-test-token";
const RECIPIENTS: usize = 40;

/// Alert rules that must stay quiet (return no series) while everything is healthy: each
/// compares against a threshold a healthy run does not reach.
const QUIET_ALERTS: &[&str] = &[
    "MarketingTargetDown",
    "NoTaskProcessor",
    "DeliveryFailureRatioHigh",
    "DeliveryDeferralRatioHigh",
    "SmtpLatencyHigh",
    "MessageRenderErrors",
    "TaskQueueAgeGrowing",
    "TasksDead",
    "TaskLeasesExpiring",
    "ApiServerErrors",
    "CampaignProcessorUnhealthy",
];

/// Where the deployment files are, from this crate's directory.
fn deploy_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(relative)
}

/// `prometheus` and `promtool`, or a skip (a failure under CI/REQUIRE_PROMETHEUS).
fn prometheus_tools() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
    };
    match (find("prometheus"), find("promtool")) {
        (Some(prometheus), Some(promtool)) => Some((prometheus, promtool)),
        _ if testkit::prometheus_required() => {
            panic!(
                "prometheus and promtool are required (CI/REQUIRE_PROMETHEUS) but not on PATH (Debian package prometheus)"
            )
        }
        _ => {
            eprintln!("skipping: prometheus/promtool not found (Debian package prometheus)");
            None
        }
    }
}

/// Starts `marketing ARGS` (its output in `dir/NAME.log`) and waits for its log line
/// containing `marker`; returns the process and the first word after the marker (the address
/// it listens on). The start-up line is the synchronisation point.
fn start_role(
    name: &str,
    dir: &Path,
    args: &[&str],
    env: &[(&str, String)],
    marker: &str,
) -> (Process, String) {
    let mut command = isolated_command(BINARY, dir, args, env);
    command.env("TRACKING_SECRET", TRACKING_SECRET);
    let mut process = Process::spawn(name, dir, command);
    let address = process.wait_for_line(marker, Duration::from_secs(30));
    (process, address)
}

/// Which store the cluster's roles share.
#[derive(Clone, Copy)]
enum Store {
    Sqlite,
    Postgres,
}

/// task-repo + api + worker + scheduler on one database, delivering into smtp-sink.
struct Cluster {
    dir: tempfile::TempDir,
    task_repo: (Process, String),
    api: (Process, String),
    worker: (Process, String),
    scheduler: (Process, String),
    key: String,
    _sink: SmtpSink,
    _postgres: Option<testkit::PostgresDatabase>,
}

impl Cluster {
    /// On SQLite; `None` when a server the run does not require is missing.
    async fn start() -> Option<Cluster> {
        Cluster::start_on(Store::Sqlite).await
    }

    async fn start_on(store: Store) -> Option<Cluster> {
        let sink = SmtpSink::start()?;
        let dir = tempfile::tempdir().unwrap();
        let (database_url, postgres) = match store {
            Store::Sqlite => (
                format!("sqlite://{}", dir.path().join("marketing.db").display()),
                None,
            ),
            Store::Postgres => {
                let database = testkit::PostgresDatabase::create().await?;
                (database.url.clone(), Some(database))
            }
        };
        // One migration up front: three processes would otherwise race to migrate.
        let migrated = Command::new(BINARY)
            .args(["migrate", "--database-url", &database_url])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(migrated.status.success(), "{migrated:?}");
        let created = Command::new(BINARY)
            .args([
                "api-key",
                "create",
                "--name",
                "monitoring",
                "--database-url",
                &database_url,
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(created.status.success(), "{created:?}");
        let key = String::from_utf8(created.stdout)
            .unwrap()
            .trim()
            .to_string();

        let task_repo = start_role(
            "task-repo",
            dir.path(),
            &["task-repo"],
            &[
                ("DATABASE_URL", database_url.clone()),
                ("TASK_REPO_BIND", "127.0.0.1:0".into()),
                ("TASK_REPO_TOKEN", TOKEN.into()),
            ],
            "task repository listening on ",
        );
        let common = |extra: &[(&'static str, String)]| {
            let mut env = vec![
                ("DATABASE_URL", database_url.clone()),
                ("TASK_REPO_URL", task_repo.1.clone()),
                ("TASK_REPO_TOKEN", TOKEN.to_string()),
            ];
            env.extend(extra.iter().cloned());
            env
        };
        let api = start_role(
            "api",
            dir.path(),
            &["api"],
            &common(&[("API_BIND", "127.0.0.1:0".into())]),
            "API listening on ",
        );
        let worker = start_role(
            "worker",
            dir.path(),
            &["worker"],
            &common(&[
                ("SMTP_URL", sink.url()),
                ("TASK_CHECK_INTERVAL", "0.2".into()),
                ("METRICS_BIND", "127.0.0.1:0".into()),
                // A deployment-wide sending rate, so the dashboard's rate panels have series.
                ("SMTP_RATE_LIMIT", "1000".into()),
            ]),
            "metrics listening on ",
        );
        let worker_address = worker.1.trim_end_matches("/metrics").to_string();
        let scheduler = start_role(
            "scheduler",
            dir.path(),
            &["scheduler"],
            &common(&[("METRICS_BIND", "127.0.0.1:0".into())]),
            "metrics listening on ",
        );
        let scheduler_address = scheduler.1.trim_end_matches("/metrics").to_string();
        Some(Cluster {
            dir,
            task_repo,
            api,
            worker: (worker.0, worker_address),
            scheduler: (scheduler.0, scheduler_address),
            key,
            _sink: sink,
            _postgres: postgres,
        })
    }

    fn logs(&self) -> String {
        [
            &self.task_repo.0,
            &self.api.0,
            &self.worker.0,
            &self.scheduler.0,
        ]
        .iter()
        .map(|role| format!("--- {} ---\n{}", role.name(), role.log()))
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// The scrape targets as `host:port`, by the deployment's job names.
    fn targets(&self) -> Vec<(&'static str, String)> {
        let host = |url: &str| url.trim_start_matches("http://").to_string();
        vec![
            ("api", host(&self.api.1)),
            ("task-repo-service", host(&self.task_repo.1)),
            ("task-processor", host(&self.worker.1)),
            ("campaign-processor", host(&self.scheduler.1)),
        ]
    }

    /// Creates a campaign of RECIPIENTS through the API; returns its id.
    async fn create_campaign(&self, name: &str) -> String {
        let recipients: Vec<Value> = (0..RECIPIENTS)
            .map(|n| json!({"email": format!("{name}{n}@mail.example"), "first_name": format!("R{n}")}))
            .collect();
        let document = json!({
            "name": name,
            "from": {"email": "news@shop.example"},
            "templates": {"subject": "Hello {{ first_name }}", "text": "Hi {{ first_name }}\n{{ unsubscribe_url }}\n"},
            "batch_size": 10,
            "recipients": recipients,
        });
        let created: Value = self
            .post("/api/v1/campaigns", &document)
            .await
            .json()
            .await
            .unwrap();
        created["campaign"]["id"].as_str().unwrap().to_string()
    }

    /// POSTs to the API with the key; a non-2xx answer fails the test.
    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", self.api.1))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
    }

    /// Schedules campaign `id` `ahead` from now.
    async fn schedule(&self, id: &str, ahead: Duration) {
        // Whole seconds: a schedule is kept to the microsecond and finer is refused.
        let start_at = (time::OffsetDateTime::now_utc() + ahead)
            .replace_nanosecond(0)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        self.post(
            &format!("/api/v1/campaigns/{id}/schedule"),
            &json!({ "scheduled_at": start_at }),
        )
        .await;
    }

    async fn wait_for_status(&self, id: &str, wanted: &'static str) {
        let client = reqwest::Client::new();
        let status_url = format!("{}/api/v1/campaigns/{id}/status", self.api.1);
        wait_for(Duration::from_secs(20), wanted, || {
            let request = client.get(&status_url).bearer_auth(&self.key).send();
            async move {
                let status: Value = request.await.ok()?.json().await.ok()?;
                (status["status"] == wanted).then_some(())
            }
        })
        .await;
    }

    /// Creates a campaign through the API, schedules it a moment ahead (so the campaign
    /// processor starts it) and waits until it is completed.
    async fn deliver_campaign(&self) {
        let id = self.create_campaign("scheduled").await;
        self.schedule(&id, Duration::from_secs(2)).await;
        self.wait_for_status(&id, "completed").await;
    }

    /// Sends a campaign at once (no schedule) and waits until it is completed.
    async fn deliver_campaign_now(&self) {
        let id = self.create_campaign("immediate").await;
        self.post(&format!("/api/v1/campaigns/{id}/send"), &json!({}))
            .await;
        self.wait_for_status(&id, "completed").await;
    }

    /// Schedules a campaign an hour ahead, then cancels it.
    async fn cancel_scheduled_campaign(&self) {
        let id = self.create_campaign("cancelled").await;
        self.schedule(&id, Duration::from_secs(3600)).await;
        self.post(&format!("/api/v1/campaigns/{id}/cancel"), &json!({}))
            .await;
        self.wait_for_status(&id, "cancelled").await;
    }
}

async fn get_text(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

/// `promtool check metrics` on a scrape: exit 0 and no lint problems.
fn promtool_check_metrics(promtool: &Path, role: &str, text: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics rejects {role}'s /metrics: {said}\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_serves_lint_clean_metrics_and_readiness() {
    let Some((_, promtool)) = prometheus_tools() else {
        return;
    };
    let rules = Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(deploy_path("prometheus/rules/marketing.yml"))
        .output()
        .unwrap();
    assert!(rules.status.success(), "promtool check rules: {rules:?}");

    let Some(cluster) = Cluster::start().await else {
        return;
    };
    cluster.deliver_campaign().await;
    for (role, base) in [
        ("api", &cluster.api.1),
        ("task-repo", &cluster.task_repo.1),
        ("worker", &cluster.worker.1),
        ("scheduler", &cluster.scheduler.1),
    ] {
        let (status, text) = get_text(&format!("{base}/metrics")).await;
        assert_eq!(status, 200, "{role} /metrics\n{}", cluster.logs());
        assert!(
            text.contains(&format!("marketing_build_info{{role=\"{role}\"")),
            "{role} says which role it is:\n{text}"
        );
        promtool_check_metrics(&promtool, role, &text);
        let (status, body) = get_text(&format!("{base}/ready")).await;
        assert_eq!(status, 200, "{role} /ready: {body}");
        assert!(body.contains("ready"), "{role} /ready: {body}");
    }
    // What each role is there to count.
    let (_, scheduler) = get_text(&format!("{}/metrics", cluster.scheduler.1)).await;
    assert!(
        scheduler.contains("campaign_processor_healthy 1"),
        "the campaign processor says it is healthy:\n{scheduler}"
    );
    let (_, worker) = get_text(&format!("{}/metrics", cluster.worker.1)).await;
    assert!(
        worker.contains("campaigns_processed_total{status=\"completed\"} 1")
            && worker.contains("campaign_processing_seconds_count 1"),
        "the task processor that recorded the last outcome counts the campaign it ended:\n{worker}"
    );
    assert!(
        worker.contains(&format!(
            "messages_total{{outcome=\"sent\",transport=\"smtp\"}} {RECIPIENTS}"
        )),
        "the worker counts every message it sent:\n{worker}"
    );
    let (_, body) = get_text(&format!("{}/ready", cluster.worker.1)).await;
    assert!(
        body.contains("task_repository"),
        "a worker's readiness includes its task repository: {body}"
    );
    let (_, repo) = get_text(&format!("{}/metrics", cluster.task_repo.1)).await;
    assert!(
        repo.contains("task_queue_depth{status=\"completed\"}")
            && repo.contains("task_queue_oldest_wait_seconds 0"),
        "the task repository exports the queue it holds:\n{repo}"
    );
    let (_, api) = get_text(&format!("{}/metrics", cluster.api.1)).await;
    assert!(
        api.contains(
            "http_requests_total{route=\"/api/v1/campaigns/{id}/schedule\",status=\"200\"} 1"
        ),
        "API requests are counted by route template, never by id:\n{api}"
    );

    // `serve` too: one process, API port.
    let serve_dir = tempfile::tempdir().unwrap();
    let (_serve, base) = start_role(
        "serve",
        serve_dir.path(),
        &["serve"],
        &[
            (
                "DATABASE_URL",
                format!("sqlite://{}", serve_dir.path().join("serve.db").display()),
            ),
            ("API_BIND", "127.0.0.1:0".into()),
        ],
        "API listening on ",
    );
    let (status, text) = get_text(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("task_queue_depth{status=\"pending\"} 0"),
        "{text}"
    );
    promtool_check_metrics(&promtool, "serve", &text);
}

/// A real Prometheus scraping the roles on each store; every dashboard and alert expression
/// evaluated, and the original design's campaign metrics checked series by series.
mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_dashboard_panel_and_alert_rule_has_data_in_prometheus() {
        super::dashboards_and_alerts_have_data(super::Store::Sqlite).await;
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_dashboard_panel_and_alert_rule_has_data_in_prometheus() {
        super::dashboards_and_alerts_have_data(super::Store::Postgres).await;
    }
}

async fn dashboards_and_alerts_have_data(store: Store) {
    let Some((prometheus_binary, _)) = prometheus_tools() else {
        return;
    };
    let Some(cluster) = Cluster::start_on(store).await else {
        return;
    };
    let prometheus =
        Prometheus::start(&prometheus_binary, cluster.dir.path(), &cluster.targets()).await;
    // The original design's campaign metrics after one scheduled and one immediate campaign
    // delivered, and one scheduled campaign cancelled.
    cluster.deliver_campaign().await;
    cluster.deliver_campaign_now().await;
    cluster.cancel_scheduled_campaign().await;
    const DELIVERED: usize = 2 * RECIPIENTS;

    // Wait until Prometheus has scraped the finished campaigns, and every target is up.
    let sent = format!("sum(messages_total{{outcome=\"sent\"}}) == {DELIVERED}");
    wait_for(
        Duration::from_secs(15),
        "Prometheus to scrape the delivery",
        || {
            let query = prometheus.query(&sent);
            async move { query.await.filter(|result| !result.is_empty()) }
        },
    )
    .await;
    // rate() needs two samples in its window: wait until every target has been scraped a
    // few times since the delivery (the query above saw the first scrape after it).
    wait_for(
        Duration::from_secs(10),
        "three scrapes of every target",
        || {
            let query = prometheus.query("count(count_over_time(up[1m]) >= 3) == 4");
            async move { query.await.filter(|result| !result.is_empty()) }
        },
    )
    .await;
    let scraped_twice = format!(
        "count_over_time((sum(messages_total{{outcome=\"sent\"}}) == {DELIVERED})[1m:1s]) >= 2"
    );
    wait_for(
        Duration::from_secs(10),
        "two scrapes after the delivery",
        || {
            let query = prometheus.query(&scraped_twice);
            async move { query.await.filter(|result| !result.is_empty()) }
        },
    )
    .await;

    // campaigns_processed_total is summed over the processes that ended the campaigns (the
    // worker completed two, the API cancelled one); only the two that sent have a sending
    // time; the campaign processor's gauge is per process.
    for (expression, meaning) in [
        (
            r#"sum(campaigns_processed_total{status="completed"}) == 2"#,
            "the scheduled and the immediate campaign completed",
        ),
        (
            r#"sum(campaigns_processed_total{status="cancelled"}) == 1"#,
            "the cancelled campaign",
        ),
        (
            r#"sum(campaigns_processed_total{status="failed"}) == 0"#,
            "no campaign failed",
        ),
        (
            "sum(campaign_processing_seconds_count) == 2",
            "a sending time for each campaign that sent",
        ),
        (
            r#"campaign_processor_healthy{job="campaign-processor"} == 1"#,
            "the campaign processor is healthy",
        ),
    ] {
        let result = prometheus.query(expression).await.unwrap_or_default();
        assert!(
            !result.is_empty(),
            "{meaning}: {expression} has no result\n{}",
            cluster.logs()
        );
    }

    let exported: BTreeSet<String> = prometheus
        .get("/api/v1/label/__name__/values")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|name| name.as_str().map(str::to_string))
        .collect();

    let mut expressions = dashboard_expressions();
    assert!(
        expressions.len() >= 20,
        "the dashboards have their panels: {expressions:?}"
    );
    let rules = prometheus.get("/api/v1/rules").await;
    let mut alerts = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap().to_string();
            alerts.push(name.clone());
            expressions.push((
                format!("alert {name}"),
                rule["query"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(
        alerts.len() >= 10,
        "Prometheus loaded the deployment's alert rules: {alerts:?}"
    );
    for quiet in QUIET_ALERTS {
        assert!(
            alerts.iter().any(|a| a == quiet),
            "QUIET_ALERTS names {quiet}, which is no rule"
        );
    }

    let mut problems = Vec::new();
    for (source, expression) in &expressions {
        let names = metric_names(expression);
        assert!(
            !names.is_empty(),
            "{source}: no metric found in {expression}"
        );
        for name in &names {
            let known = exported.contains(name)
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| exported.contains(&format!("{name}{suffix}")));
            if !known {
                problems.push(format!(
                    "{source}: {name} is not exported by any role ({expression})"
                ));
            }
        }
        let query = expression.replace("$__rate_interval", "1m");
        let Some(result) = prometheus.query(&query).await else {
            problems.push(format!("{source}: Prometheus refused {query}"));
            continue;
        };
        let alert = source.strip_prefix("alert ");
        let quiet = alert.is_some_and(|name| QUIET_ALERTS.contains(&name));
        match (result.is_empty(), quiet) {
            (true, false) => problems.push(format!("{source}: no data for {query}")),
            (false, true) => problems.push(format!(
                "{source} fires in a healthy run: {query} → {result:?}"
            )),
            _ => {}
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n\n{}\n{}",
        problems.len(),
        problems.join("\n"),
        prometheus.log(),
        cluster.logs()
    );
}

/// Every `expr` of every panel of every dashboard in deploy/grafana/dashboards, with the
/// dashboard and panel title.
fn dashboard_expressions() -> Vec<(String, String)> {
    fn panels(value: &Value, dashboard: &str, found: &mut Vec<(String, String)>) {
        for panel in value["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    found.push((
                        format!("{dashboard} / {}", panel["title"].as_str().unwrap_or("?")),
                        expr.to_string(),
                    ));
                }
            }
            // Rows carry their collapsed panels inside.
            panels(panel, dashboard, found);
        }
    }
    let mut found = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_path("grafana/dashboards"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "dashboards: {files:?}");
    for file in files {
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let title = dashboard["title"].as_str().unwrap_or("?").to_string();
        panels(&dashboard, &title, &mut found);
    }
    found
}

/// The metric names a PromQL expression reads: identifiers that are not functions,
/// aggregations, keywords, label names (inside `{}` or `by (…)`) or strings.
fn metric_names(expression: &str) -> BTreeSet<String> {
    // Aggregations may put their `by (…)` before the parenthesis: `sum by (le) (…)`.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expression.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_until = |mut i: usize, close: char| {
        while i < chars.len() && chars[i] != close {
            i += 1;
        }
        i + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i = skip_until(i + 1, c);
        } else if c == '{' {
            i = skip_until(i, '}');
        } else if c == '[' {
            i = skip_until(i, ']');
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number, exponent included (1e-9).
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || (matches!(chars[i], '-' | '+') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let called = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if called {
                    i = skip_until(next, ')');
                }
            } else if !called && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (le, route) (rate(http_request_duration_seconds_bucket{job="api", status=~"5.."}[5m])))"#
        ),
        ["http_request_duration_seconds_bucket"]
    );
    assert_eq!(
        names(
            "sum(rate(a_total[1m])) / clamp_min(sum(rate(b_total[1m])), 1e-9) > 0.1 and on (x) c"
        ),
        ["a_total", "b_total", "c"]
    );
    assert_eq!(
        names("time() - process_start_time_seconds"),
        ["process_start_time_seconds"]
    );
}

/// A Prometheus server scraping the given targets every second, with the deployment's rules.
struct Prometheus {
    base: String,
    child: Child,
    log: PathBuf,
    client: reqwest::Client,
}

impl Prometheus {
    async fn start(binary: &Path, dir: &Path, targets: &[(&str, String)]) -> Prometheus {
        let rules = deploy_path("prometheus/rules/marketing.yml")
            .canonicalize()
            .unwrap();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
            rules.display()
        );
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus {
            base: format!("http://127.0.0.1:{port}"),
            child,
            log,
            client: reqwest::Client::new(),
        };
        let ready = format!("{}/-/ready", prometheus.base);
        wait_for(Duration::from_secs(15), "Prometheus to be ready", || {
            let request = prometheus.client.get(&ready).send();
            async move { request.await.ok()?.status().is_success().then_some(()) }
        })
        .await;
        prometheus
    }

    async fn get(&self, path: &str) -> Value {
        let answer: Value = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "success", "{path}: {answer}");
        answer["data"].clone()
    }

    /// An instant query's result series; `None` when Prometheus refuses the expression.
    async fn query(&self, expression: &str) -> Option<Vec<Value>> {
        let answer: Value = self
            .client
            .get(format!(
                "{}/api/v1/query?query={}",
                self.base,
                percent_encode(expression)
            ))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        if answer["status"] != "success" {
            eprintln!("query {expression}: {answer}");
            return None;
        }
        match &answer["data"]["result"] {
            Value::Array(series) => Some(series.clone()),
            // A scalar or string result is one value.
            other => Some(vec![other.clone()]),
        }
    }

    fn log(&self) -> String {
        format!(
            "--- prometheus ---\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
