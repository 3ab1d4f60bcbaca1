//! The task repository adapter: [`TaskRepository`] over the service's HTTP API, for workers
//! in the split deployment (`TASK_REPO_URL`, `TASK_REPO_TOKEN`).
//!
//! Retries: a request that never reached the service (connection refused while connecting)
//! is retried whatever it is, since the service did nothing. A request that may have reached
//! it is retried only when repeating it is harmless: reads, heartbeats and creations whose
//! tasks all carry an idempotency key. Claims, completions, failures and requeues are not
//! repeated once sent: the first try may have taken effect, and a repeat would then answer
//! LeaseLost or NotDead for work that succeeded; a lost claim answer is recovered by the
//! lease expiring.
//!
//! `https://` URLs are verified against the built-in web PKI roots plus, for a private CA,
//! the PEM file given to [`HttpTaskRepository::with_trusted_ca`] (`SERVICE_TLS_CA`).

use crate::http::{
    ClaimBody, CompleteBody, CompleteManyAnswer, CompleteManyBody, Done, FailAnswer, FailBody,
    HeartbeatAnswer, HeartbeatBody, ListQuery, Problem, problem_type,
};
use crate::{Lease, NewTask, Task, TaskError, TaskFilter, TaskRepository, TaskStatus};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tls::http::{Answer, HttpClient, Method, StatusCode, header};
use uuid::Uuid;

/// How long a connection may take to open, and a whole exchange.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How hard the adapter tries before reporting the service unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdapterRetry {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Wait after the first failure; doubles after each further one, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for AdapterRetry {
    /// About 6 s of trying: enough to ride out a restart of the service.
    fn default() -> AdapterRetry {
        AdapterRetry {
            attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

/// Whether a request may be sent again after it may have reached the service.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Safe,
    OnlyIfUnsent,
}

/// What a request is about, to rebuild from an error answer the [`TaskError`] the service saw.
#[derive(Clone, Copy, Default)]
struct Subject<'a> {
    task: Option<Uuid>,
    worker: Option<&'a str>,
    lease: Option<Lease>,
}

/// A [`TaskRepository`] reached over HTTP.
#[derive(Clone)]
pub struct HttpTaskRepository {
    base: String,
    token: Option<String>,
    client: HttpClient,
    retry: AdapterRetry,
}

impl HttpTaskRepository {
    /// `base_url` is the service's root, e.g. `http://127.0.0.1:8503`; `token` the bearer token
    /// the service was started with, if any. A malformed URL is reported, naming it, by the
    /// first call. An `https://` service is trusted through the built-in web PKI roots; see
    /// [`HttpTaskRepository::with_trusted_ca`] for a private CA.
    pub fn new(base_url: &str, token: Option<String>) -> HttpTaskRepository {
        let client = HttpClient::new(None, CONNECT_TIMEOUT, REQUEST_TIMEOUT)
            .expect("the built-in roots alone always make a TLS configuration");
        HttpTaskRepository {
            base: base_url.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            client,
            retry: AdapterRetry::default(),
        }
    }

    /// Trusts the CAs of a PEM file besides the built-in roots (a service whose certificate
    /// a private CA signed); `None` keeps the built-in roots alone.
    pub fn with_trusted_ca(
        mut self,
        ca_file: Option<&Path>,
    ) -> Result<HttpTaskRepository, tls::TrustError> {
        self.client = HttpClient::new(ca_file, CONNECT_TIMEOUT, REQUEST_TIMEOUT)?;
        Ok(self)
    }

    pub fn with_retry(mut self, retry: AdapterRetry) -> HttpTaskRepository {
        self.retry = retry;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends the request, retrying as the module comment says; answers the successful
    /// response or the error the service's problem document describes.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&dyn ErasedBody>,
        repeat: Repeat,
        subject: Subject<'_>,
    ) -> Result<Answer, TaskError> {
        let url = format!("{}{}", self.base, path);
        let attempts = self.retry.attempts.max(1);
        let mut delay = self.retry.base_delay;
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let authorization = self.token.as_ref().map(|token| format!("Bearer {token}"));
            let mut headers = Vec::new();
            if let Some(value) = &authorization {
                headers.push((header::AUTHORIZATION, value.as_str()));
            }
            let payload = match body {
                Some(body) => {
                    headers.push((header::CONTENT_TYPE, "application/json"));
                    Some(body.to_json()?)
                }
                None => None,
            };
            match self
                .client
                .request(method.clone(), &url, &headers, payload)
                .await
            {
                Ok(response) => break response,
                Err(tls::http::RequestError::Invalid { url, reason }) => {
                    return Err(TaskError::InvalidUrl(format!("{url}: {reason}")));
                }
                Err(err) => {
                    let reason = match &err {
                        tls::http::RequestError::Connect { reason, .. }
                        | tls::http::RequestError::Exchange { reason, .. }
                        | tls::http::RequestError::Invalid { reason, .. } => reason.clone(),
                    };
                    if attempt >= attempts || !(err.is_unsent() || repeat == Repeat::Safe) {
                        return Err(TaskError::Unreachable {
                            url,
                            attempts: attempt,
                            reason,
                        });
                    }
                    tracing::warn!(%url, attempt, error = %reason, "task repository unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.retry.max_delay);
                }
            }
        };
        let status = response.status;
        if status.is_success() {
            return Ok(response);
        }
        let text = String::from_utf8_lossy(&response.body).into_owned();
        let problem: Option<Problem> = serde_json::from_str(&text).ok();
        Err(error_for(url, status, problem, text, subject))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&dyn ErasedBody>,
        repeat: Repeat,
        subject: Subject<'_>,
    ) -> Result<T, TaskError> {
        let url = format!("{}{}", self.base, path);
        let response = self.send(method, path, body, repeat, subject).await?;
        serde_json::from_slice::<T>(&response.body).map_err(|err| TaskError::Service {
            url,
            status: response.status.as_u16(),
            detail: format!("unreadable answer: {err}"),
        })
    }
}

/// A request body, serialised once per try.
trait ErasedBody: Sync {
    fn to_json(&self) -> Result<Vec<u8>, TaskError>;
}

impl<T: Serialize + Sync> ErasedBody for T {
    fn to_json(&self) -> Result<Vec<u8>, TaskError> {
        serde_json::to_vec(self).map_err(|err| TaskError::Invalid(err.to_string()))
    }
}

fn error_for(
    url: String,
    status: StatusCode,
    problem: Option<Problem>,
    text: String,
    subject: Subject<'_>,
) -> TaskError {
    let (kind, detail, task_status) = match problem {
        Some(problem) => (problem.kind, problem.detail, problem.task_status),
        None => (String::new(), text, None),
    };
    if status == StatusCode::UNAUTHORIZED {
        return TaskError::Unauthorized { url, detail };
    }
    match (kind.as_str(), subject) {
        (
            problem_type::LEASE_LOST,
            Subject {
                worker: Some(worker),
                lease: Some(lease),
                ..
            },
        ) => TaskError::LeaseLost {
            task_id: lease.task_id,
            worker: worker.to_string(),
            attempt: lease.attempt,
        },
        (
            problem_type::NOT_FOUND,
            Subject {
                task: Some(task), ..
            },
        ) => TaskError::NotFound(task),
        (
            problem_type::NOT_DEAD,
            Subject {
                task: Some(task), ..
            },
        ) => TaskError::NotDead {
            id: task,
            status: task_status.unwrap_or_default(),
        },
        (problem_type::VALIDATION, _) => TaskError::Invalid(detail),
        _ => TaskError::Service {
            url,
            status: status.as_u16(),
            detail,
        },
    }
}

fn lease_ms(lease: time::Duration) -> u64 {
    u64::try_from(lease.whole_milliseconds()).unwrap_or(0)
}

impl HttpTaskRepository {
    /// `POST …/fail`, retried or (with `permanent`) dead at once.
    async fn record_failure(
        &self,
        worker: &str,
        lease: Lease,
        error: &str,
        permanent: bool,
    ) -> Result<TaskStatus, TaskError> {
        let body = FailBody {
            worker_id: worker.to_string(),
            attempt: lease.attempt,
            error: error.to_string(),
            permanent,
        };
        let answer: FailAnswer = self
            .json(
                Method::POST,
                &format!("/api/v1/tasks/{}/fail", lease.task_id),
                Some(&body),
                Repeat::OnlyIfUnsent,
                Subject {
                    task: Some(lease.task_id),
                    worker: Some(worker),
                    lease: Some(lease),
                },
            )
            .await?;
        Ok(answer.status)
    }
}

#[async_trait::async_trait]
impl TaskRepository for HttpTaskRepository {
    async fn create(&self, task: NewTask) -> Result<Task, TaskError> {
        let repeat = match task.idempotency_key {
            Some(_) => Repeat::Safe,
            None => Repeat::OnlyIfUnsent,
        };
        self.json(
            Method::POST,
            "/api/v1/tasks",
            Some(&task),
            repeat,
            Subject::default(),
        )
        .await
    }

    async fn create_many(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, TaskError> {
        let repeat = if tasks.iter().all(|task| task.idempotency_key.is_some()) {
            Repeat::Safe
        } else {
            Repeat::OnlyIfUnsent
        };
        self.json(
            Method::POST,
            "/api/v1/tasks/batch",
            Some(&tasks),
            repeat,
            Subject::default(),
        )
        .await
    }

    async fn claim(
        &self,
        worker: &str,
        kinds: &[String],
        limit: u32,
        lease: time::Duration,
    ) -> Result<Vec<Task>, TaskError> {
        let body = ClaimBody {
            worker_id: worker.to_string(),
            kinds: kinds.to_vec(),
            limit,
            lease_ms: lease_ms(lease),
        };
        self.json(
            Method::POST,
            "/api/v1/tasks/claim",
            Some(&body),
            Repeat::OnlyIfUnsent,
            Subject::default(),
        )
        .await
    }

    async fn heartbeat(
        &self,
        worker: &str,
        leases: &[Lease],
        lease: time::Duration,
    ) -> Result<Vec<Lease>, TaskError> {
        let body = HeartbeatBody {
            worker_id: worker.to_string(),
            leases: leases.to_vec(),
            lease_ms: lease_ms(lease),
        };
        let answer: HeartbeatAnswer = self
            .json(
                Method::POST,
                "/api/v1/tasks/heartbeat",
                Some(&body),
                Repeat::Safe,
                Subject::default(),
            )
            .await?;
        Ok(answer.lost)
    }

    async fn complete(
        &self,
        worker: &str,
        lease: Lease,
        result: serde_json::Value,
    ) -> Result<(), TaskError> {
        let body = CompleteBody {
            worker_id: worker.to_string(),
            attempt: lease.attempt,
            result,
        };
        self.send(
            Method::POST,
            &format!("/api/v1/tasks/{}/complete", lease.task_id),
            Some(&body),
            Repeat::OnlyIfUnsent,
            Subject {
                task: Some(lease.task_id),
                worker: Some(worker),
                lease: Some(lease),
            },
        )
        .await?;
        Ok(())
    }

    async fn complete_many(
        &self,
        worker: &str,
        done: &[(Lease, serde_json::Value)],
    ) -> Result<Vec<Lease>, TaskError> {
        let body = CompleteManyBody {
            worker_id: worker.to_string(),
            done: done
                .iter()
                .map(|(lease, result)| Done {
                    task_id: lease.task_id,
                    attempt: lease.attempt,
                    result: result.clone(),
                })
                .collect(),
        };
        let answer: CompleteManyAnswer = self
            .json(
                Method::POST,
                "/api/v1/tasks/complete",
                Some(&body),
                Repeat::OnlyIfUnsent,
                Subject::default(),
            )
            .await?;
        Ok(answer.refused)
    }

    async fn fail(&self, worker: &str, lease: Lease, error: &str) -> Result<TaskStatus, TaskError> {
        self.record_failure(worker, lease, error, false).await
    }

    async fn fail_permanently(
        &self,
        worker: &str,
        lease: Lease,
        error: &str,
    ) -> Result<(), TaskError> {
        self.record_failure(worker, lease, error, true)
            .await
            .map(|_| ())
    }

    async fn get(&self, id: Uuid) -> Result<Option<Task>, TaskError> {
        let answer = self
            .json(
                Method::GET,
                &format!("/api/v1/tasks/{id}"),
                None,
                Repeat::Safe,
                Subject {
                    task: Some(id),
                    ..Subject::default()
                },
            )
            .await;
        match answer {
            Ok(task) => Ok(Some(task)),
            Err(TaskError::NotFound(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn list(&self, filter: &TaskFilter) -> Result<Vec<Task>, TaskError> {
        let query = ListQuery {
            status: filter.status.map(|s| s.as_str().to_string()),
            kind: filter.kind.clone(),
            key_prefix: filter.key_prefix.clone(),
            after: filter.after,
            limit: Some(filter.limit),
        };
        let mut path = String::from("/api/v1/tasks?");
        let mut pairs = Vec::new();
        if let Some(status) = &query.status {
            pairs.push(format!("status={}", encode_query_value(status)));
        }
        if let Some(kind) = &query.kind {
            pairs.push(format!("kind={}", encode_query_value(kind)));
        }
        if let Some(prefix) = &query.key_prefix {
            pairs.push(format!("key_prefix={}", encode_query_value(prefix)));
        }
        if let Some(after) = query.after {
            pairs.push(format!("after={after}"));
        }
        if let Some(limit) = query.limit {
            pairs.push(format!("limit={limit}"));
        }
        path.push_str(&pairs.join("&"));
        self.json(Method::GET, &path, None, Repeat::Safe, Subject::default())
            .await
    }

    async fn counts(&self) -> Result<BTreeMap<&'static str, i64>, TaskError> {
        let answer: BTreeMap<String, i64> = self
            .json(
                Method::GET,
                "/api/v1/tasks/counts",
                None,
                Repeat::Safe,
                Subject::default(),
            )
            .await?;
        // Keyed by the statuses this build knows, as the store answers.
        Ok(TaskStatus::ALL
            .iter()
            .map(|status| {
                let count = answer.get(status.as_str()).copied().unwrap_or(0);
                (status.as_str(), count)
            })
            .collect())
    }

    async fn oldest_due(&self) -> Result<Option<time::OffsetDateTime>, TaskError> {
        let answer: crate::http::OldestDue = self
            .json(
                Method::GET,
                "/api/v1/tasks/oldest-due",
                None,
                Repeat::Safe,
                Subject::default(),
            )
            .await?;
        Ok(answer.run_after)
    }

    async fn requeue(&self, id: Uuid) -> Result<Task, TaskError> {
        self.json(
            Method::POST,
            &format!("/api/v1/tasks/{id}/requeue"),
            None,
            Repeat::OnlyIfUnsent,
            Subject {
                task: Some(id),
                ..Subject::default()
            },
        )
        .await
    }
}

/// Percent-encodes a query value (kinds are free text).
fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
