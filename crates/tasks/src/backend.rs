//! The SQL both backends run, written once; `task_repository!` expands it for a concrete sqlx
//! database. Only the transaction start and the row locking of a claim differ.

macro_rules! task_repository {
    ($repo:ident, $db:ty, skip_locked = $skip:literal, cte = $cte:literal) => {
        mod shared_sql {
            use super::$repo;
            use crate::{Lease, NewTask, Task, TaskError, TaskFilter, TaskRepository, TaskStatus, check_lease, check_page};
            use sqlx::types::Json;
            use sqlx::{QueryBuilder, Row};
            use std::collections::BTreeMap;
            use store::db_types::{DbId, DbTime};
            use time::Duration;
            use uuid::Uuid;

            const COLUMNS: &str = "id, kind, payload, priority, status, attempts, max_attempts, run_after, lease_owner, \
                lease_expires_at, last_error, result, idempotency_key, created_at, updated_at";

            /// When a lease taken at `now` ends; checked, so no lease can overflow the clock.
            fn lease_end(now: time::OffsetDateTime, lease: Duration) -> Result<time::OffsetDateTime, TaskError> {
                now.checked_add(lease)
                    .ok_or_else(|| TaskError::Invalid(format!("a lease of {lease} from {now} ends beyond any time the repository can store")))
            }

            fn task_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Task, TaskError> {
                let status: String = row.try_get("status")?;
                let Json(payload): Json<serde_json::Value> = row.try_get("payload")?;
                let result: Option<Json<serde_json::Value>> = row.try_get("result")?;
                let count = |column: &str| -> Result<u32, TaskError> {
                    Ok(u32::try_from(row.try_get::<i32, _>(column)?).unwrap_or(0))
                };
                Ok(Task {
                    id: row.try_get::<DbId, _>("id")?.0,
                    kind: row.try_get("kind")?,
                    payload,
                    priority: row.try_get("priority")?,
                    status: status.parse().map_err(TaskError::Corrupt)?,
                    attempts: count("attempts")?,
                    max_attempts: count("max_attempts")?,
                    run_after: row.try_get::<DbTime, _>("run_after")?.0,
                    lease_owner: row.try_get("lease_owner")?,
                    lease_expires_at: row.try_get::<Option<DbTime>, _>("lease_expires_at")?.map(|t| t.0),
                    last_error: row.try_get("last_error")?,
                    result: result.map(|Json(value)| value),
                    idempotency_key: row.try_get("idempotency_key")?,
                    created_at: row.try_get::<DbTime, _>("created_at")?.0,
                    updated_at: row.try_get::<DbTime, _>("updated_at")?.0,
                })
            }

            async fn insert(
                tx: &mut sqlx::Transaction<'static, $db>,
                task: &NewTask,
                now: DbTime,
            ) -> Result<Task, TaskError> {
                let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO tasks (id, kind, payload, priority, status, max_attempts, run_after, idempotency_key, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $8) \
                     ON CONFLICT (idempotency_key) DO NOTHING RETURNING {COLUMNS}"
                )))
                .bind(DbId(Uuid::now_v7()))
                .bind(&task.kind)
                .bind(Json(&task.payload))
                .bind(task.priority)
                .bind(i32::try_from(task.max_attempts.max(1)).unwrap_or(i32::MAX))
                .bind(task.run_after.map(DbTime::from).unwrap_or(now))
                .bind(task.idempotency_key.as_deref())
                .bind(now)
                .fetch_optional(&mut **tx)
                .await?;
                let row = match inserted {
                    Some(row) => row,
                    // The key was used before: the first task is the answer.
                    None => sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM tasks WHERE idempotency_key = $1")))
                        .bind(task.idempotency_key.as_deref())
                        .fetch_one(&mut **tx)
                        .await?,
                };
                task_from_row(&row)
            }

            /// `fail` and `fail_permanently`: a permanent failure is dead at once, attempts left
            /// or not; the lease check is the same.
            async fn record_failure(repo: &$repo, worker: &str, lease: Lease, error: &str, permanent: bool) -> Result<TaskStatus, TaskError> {
                    let now = repo.clock.now();
                    let task = match repo.get(lease.task_id).await? {
                        Some(task) => task,
                        None => return Err(TaskError::NotFound(lease.task_id)),
                    };
                    let (status, run_after) = if permanent || task.attempts >= task.max_attempts {
                        (TaskStatus::Dead, task.run_after)
                    } else {
                        (TaskStatus::Pending, now + repo.backoff.delay(task.attempts))
                    };
                    let changed = sqlx::query(
                        "UPDATE tasks SET status = $1, run_after = $2, last_error = $3, lease_owner = NULL, lease_expires_at = NULL, updated_at = $4 \
                         WHERE id = $5 AND lease_owner = $6 AND attempts = $7 AND status = 'running'",
                    )
                    .bind(status.as_str())
                    .bind(DbTime::from(run_after))
                    .bind(error)
                    .bind(DbTime::from(now))
                    .bind(DbId(lease.task_id))
                    .bind(worker)
                    .bind(i32::try_from(lease.attempt).unwrap_or(i32::MAX))
                    .execute(&repo.pool)
                    .await?
                    .rows_affected();
                    if changed != 1 {
                        return Err(lease_error(repo, worker, lease).await);
                    }
                    if status == TaskStatus::Dead {
                        metrics::record_task_dead(&task.kind);
                    }
                    Ok(status)
                }

            /// The lease is gone when the task exists but is not this worker's current claim.
            async fn lease_error(repo: &$repo, worker: &str, lease: Lease) -> TaskError {
                match repo.get(lease.task_id).await {
                    Ok(Some(_)) => TaskError::LeaseLost { task_id: lease.task_id, worker: worker.to_string(), attempt: lease.attempt },
                    Ok(None) => TaskError::NotFound(lease.task_id),
                    Err(err) => err,
                }
            }

            #[async_trait::async_trait]
            impl TaskRepository for $repo {
                async fn create(&self, task: NewTask) -> Result<Task, TaskError> {
                    task.check(self.clock.now())?;
                    let mut tx = self.begin_write().await?;
                    let created = insert(&mut tx, &task, DbTime::from(self.clock.now())).await?;
                    tx.commit().await?;
                    Ok(created)
                }

                async fn create_many(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, TaskError> {
                    let clock_now = self.clock.now();
                    for (index, task) in tasks.iter().enumerate() {
                        task.check(clock_now).map_err(|err| match err {
                            TaskError::Invalid(message) => TaskError::Invalid(format!("task {index}: {message}")),
                            other => other,
                        })?;
                    }
                    let now = DbTime::from(clock_now);
                    let mut tx = self.begin_write().await?;
                    let mut created = Vec::with_capacity(tasks.len());
                    for task in &tasks {
                        created.push(insert(&mut tx, task, now).await?);
                    }
                    tx.commit().await?;
                    Ok(created)
                }

                async fn claim(&self, worker: &str, kinds: &[String], limit: u32, lease: Duration) -> Result<Vec<Task>, TaskError> {
                    check_lease(lease)?;
                    if kinds.is_empty() || limit == 0 {
                        return Ok(Vec::new());
                    }
                    check_page(limit)?;
                    let clock_now = self.clock.now();
                    let now = DbTime::from(clock_now);
                    let expiry = DbTime::from(lease_end(clock_now, lease)?);
                    // Expired leases (crash recovery) and pending tasks are picked by separate
                    // selects: an OR of the two defeats the indexes, and the claim then sorts
                    // the whole table instead of reading the first rows of tasks_pending and
                    // tasks_running (measured: 20 ms against 0.9 ms at 50,000 pending tasks).
                    let candidates = |builder: &mut QueryBuilder<$db>, expired: bool, wanted: i64| {
                        if expired {
                            builder.push("SELECT id FROM tasks WHERE status = 'running' AND lease_expires_at < ").push_bind(now);
                        } else {
                            builder.push("SELECT id FROM tasks WHERE status = 'pending' AND run_after <= ").push_bind(now);
                        }
                        builder.push(" AND kind IN (");
                        let mut list = builder.separated(", ");
                        for kind in kinds {
                            list.push_bind(kind.clone());
                        }
                        builder.push(") ORDER BY priority DESC, run_after, id LIMIT ").push_bind(wanted);
                        builder.push($skip);
                    };
                    // A lease that ran out on the last allowed attempt ends the task: it goes
                    // dead in the claiming statement instead of being claimed again forever (a
                    // poison task crashing its workers). Pending tasks always have attempts
                    // left, so for them every CASE takes its ELSE.
                    let set = |builder: &mut QueryBuilder<$db>| {
                        const EXHAUSTED: &str = "CASE WHEN attempts >= max_attempts THEN ";
                        builder.push("UPDATE tasks SET status = ").push(EXHAUSTED).push("'dead' ELSE 'running' END");
                        builder.push(", last_error = ").push(EXHAUSTED)
                            .push("'the lease expired on the last attempt (worker lost?)' ELSE last_error END");
                        builder.push(", lease_owner = ").push(EXHAUSTED).push("NULL ELSE ").push_bind(worker.to_string()).push(" END");
                        builder.push(", lease_expires_at = ").push(EXHAUSTED).push("NULL ELSE ").push_bind(expiry).push(" END");
                        builder.push(", attempts = ").push(EXHAUSTED).push("attempts ELSE attempts + 1 END");
                        builder.push(", updated_at = ").push_bind(now);
                    };
                    let wanted = i64::from(limit);
                    let mut tasks: Vec<Task> = Vec::new();
                    // `expired` tells the rows taken over from a lease that ran out (crash
                    // recovery) from the pending ones, for the metrics.
                    let mut keep_running = |rows: Vec<<$db as sqlx::Database>::Row>, expired: Option<bool>| -> Result<(), TaskError> {
                        for row in rows {
                            let task = task_from_row(&row)?;
                            let from_expired = match expired {
                                Some(expired) => expired,
                                None => row.try_get::<bool, _>("from_expired")?,
                            };
                            if from_expired {
                                metrics::record_lease_expiry();
                            }
                            // Tasks that just went dead are not handed out.
                            if task.status == TaskStatus::Running {
                                tasks.push(task);
                            } else if task.status == TaskStatus::Dead {
                                metrics::record_task_dead(&task.kind);
                            }
                        }
                        Ok(())
                    };
                    if $cte {
                        // PostgreSQL: one statement, its own transaction, committed before any
                        // work starts. The selects lock what they pick and skip rows other
                        // claims hold; picking in CTEs keeps LIMIT exact (an `IN (subquery …
                        // LIMIT)` may be re-evaluated and hand out more rows).
                        let mut builder = QueryBuilder::<$db>::new("WITH expired AS (");
                        candidates(&mut builder, true, wanted);
                        builder.push("), pending AS (");
                        candidates(&mut builder, false, wanted);
                        builder.push("), picked AS (SELECT id FROM expired UNION ALL (SELECT id FROM pending LIMIT GREATEST(0, ")
                            .push_bind(wanted)
                            .push(" - (SELECT COUNT(*) FROM expired)))) ");
                        set(&mut builder);
                        builder.push(" FROM picked WHERE tasks.id = picked.id RETURNING tasks.*, tasks.id IN (SELECT id FROM expired) AS from_expired");
                        keep_running(builder.build().fetch_all(&self.pool).await?, None)?;
                    } else {
                        // SQLite: both statements inside BEGIN IMMEDIATE, which holds the only
                        // write lock, so no other claim can pick the same rows.
                        let mut tx = self.begin_write().await?;
                        let mut claimed = 0i64;
                        for expired in [true, false] {
                            let mut builder = QueryBuilder::<$db>::new("");
                            set(&mut builder);
                            builder.push(" WHERE id IN (");
                            candidates(&mut builder, expired, wanted - claimed);
                            builder.push(") RETURNING ").push(COLUMNS);
                            let rows = builder.build().fetch_all(&mut *tx).await?;
                            claimed += rows.len() as i64;
                            keep_running(rows, Some(expired))?;
                            if claimed >= wanted {
                                break;
                            }
                        }
                        tx.commit().await?;
                    }
                    tasks.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.run_after.cmp(&b.run_after)).then(a.id.cmp(&b.id)));
                    Ok(tasks)
                }

                async fn heartbeat(&self, worker: &str, leases: &[Lease], lease: Duration) -> Result<Vec<Lease>, TaskError> {
                    check_lease(lease)?;
                    let now = self.clock.now();
                    let expiry = lease_end(now, lease)?;
                    let mut lost = Vec::new();
                    for held in leases {
                        let extended = sqlx::query(
                            "UPDATE tasks SET lease_expires_at = $1, updated_at = $2 \
                             WHERE id = $3 AND lease_owner = $4 AND attempts = $5 AND status = 'running'",
                        )
                        .bind(DbTime::from(expiry))
                        .bind(DbTime::from(now))
                        .bind(DbId(held.task_id))
                        .bind(worker)
                        .bind(i32::try_from(held.attempt).unwrap_or(i32::MAX))
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                        if extended == 0 {
                            lost.push(*held);
                        }
                    }
                    Ok(lost)
                }

                async fn complete(&self, worker: &str, lease: Lease, result: serde_json::Value) -> Result<(), TaskError> {
                    let done = sqlx::query(
                        "UPDATE tasks SET status = 'completed', result = $1, lease_owner = NULL, lease_expires_at = NULL, updated_at = $2 \
                         WHERE id = $3 AND lease_owner = $4 AND attempts = $5 AND status = 'running'",
                    )
                    .bind(Json(&result))
                    .bind(DbTime::from(self.clock.now()))
                    .bind(DbId(lease.task_id))
                    .bind(worker)
                    .bind(i32::try_from(lease.attempt).unwrap_or(i32::MAX))
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                    if done == 1 { Ok(()) } else { Err(lease_error(self, worker, lease).await) }
                }

                async fn complete_many(&self, worker: &str, done: &[(Lease, serde_json::Value)]) -> Result<Vec<Lease>, TaskError> {
                    // 3 binds a row: far below either backend's limit on bound parameters.
                    const CHUNK: usize = 1000;
                    let now = DbTime::from(self.clock.now());
                    let mut completed = std::collections::HashSet::with_capacity(done.len());
                    let statement = |chunk: &[(Lease, serde_json::Value)]| {
                        // VALUES columns are named column1, column2, … on both backends.
                        let mut builder = QueryBuilder::<$db>::new(
                            "UPDATE tasks SET status = 'completed', result = v.column3, lease_owner = NULL, lease_expires_at = NULL, updated_at = ",
                        );
                        builder.push_bind(now).push(" FROM (");
                        builder.push_values(chunk, |mut row, (lease, result)| {
                            row.push_bind(DbId(lease.task_id))
                                .push_bind(i32::try_from(lease.attempt).unwrap_or(i32::MAX))
                                .push_bind(Json(result.clone()));
                        });
                        builder
                            .push(") AS v WHERE tasks.id = v.column1 AND tasks.attempts = v.column2 AND tasks.status = 'running' AND tasks.lease_owner = ")
                            .push_bind(worker.to_string())
                            .push(" RETURNING id");
                        builder
                    };
                    if $cte && done.len() <= CHUNK {
                        // PostgreSQL: one statement is its own transaction; BEGIN and COMMIT
                        // would only add two round trips. (SQLite keeps BEGIN IMMEDIATE, so
                        // the write waits for the lock rather than failing with SQLITE_BUSY.)
                        let ids: Vec<DbId> = statement(done).build_query_scalar().fetch_all(&self.pool).await?;
                        completed.extend(ids.into_iter().map(|id| id.0));
                    } else {
                        let mut tx = self.begin_write().await?;
                        for chunk in done.chunks(CHUNK) {
                            let ids: Vec<DbId> = statement(chunk).build_query_scalar().fetch_all(&mut *tx).await?;
                            completed.extend(ids.into_iter().map(|id| id.0));
                        }
                        tx.commit().await?;
                    }
                    Ok(done.iter().map(|(lease, _)| *lease).filter(|lease| !completed.contains(&lease.task_id)).collect())
                }

                async fn fail(&self, worker: &str, lease: Lease, error: &str) -> Result<TaskStatus, TaskError> {
                    record_failure(self, worker, lease, error, false).await
                }

                async fn fail_permanently(&self, worker: &str, lease: Lease, error: &str) -> Result<(), TaskError> {
                    record_failure(self, worker, lease, error, true).await.map(|_| ())
                }

                async fn get(&self, id: Uuid) -> Result<Option<Task>, TaskError> {
                    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM tasks WHERE id = $1")))
                        .bind(DbId(id))
                        .fetch_optional(&self.pool)
                        .await?;
                    row.as_ref().map(task_from_row).transpose()
                }

                async fn list(&self, filter: &TaskFilter) -> Result<Vec<Task>, TaskError> {
                    // Ids are UUIDv7: id order is creation order, and the last id is the cursor.
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {COLUMNS} FROM tasks WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR kind = $2) \
                         AND ($3 IS NULL OR id > $3) AND ($5 IS NULL OR substr(idempotency_key, 1, length($5)) = $5) ORDER BY id LIMIT $4"
                    )))
                    .bind(filter.status.map(TaskStatus::as_str))
                    .bind(filter.kind.as_deref())
                    .bind(filter.after.map(DbId))
                    .bind(i64::from(filter.limit.clamp(1, 1000)))
                    .bind(filter.key_prefix.as_deref())
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(task_from_row).collect()
                }

                async fn counts(&self) -> Result<BTreeMap<&'static str, i64>, TaskError> {
                    let mut counts: BTreeMap<&'static str, i64> = TaskStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
                    let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status").fetch_all(&self.pool).await?;
                    for row in rows {
                        let status: String = row.try_get("status")?;
                        let status: TaskStatus = status.parse().map_err(TaskError::Corrupt)?;
                        counts.insert(status.as_str(), row.try_get("n")?);
                    }
                    Ok(counts)
                }

                async fn oldest_due(&self) -> Result<Option<time::OffsetDateTime>, TaskError> {
                    // Read once per scrape: a scan of the pending rows (the partial index keeps them few).
                    let oldest: Option<DbTime> = sqlx::query_scalar(
                        "SELECT run_after FROM tasks WHERE status = 'pending' AND run_after <= $1 ORDER BY run_after LIMIT 1",
                    )
                    .bind(DbTime::from(self.clock.now()))
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(oldest.map(|t| t.0))
                }

                async fn requeue(&self, id: Uuid) -> Result<Task, TaskError> {
                    let now = DbTime::from(self.clock.now());
                    let changed = sqlx::query(
                        "UPDATE tasks SET status = 'pending', attempts = 0, run_after = $1, updated_at = $1 WHERE id = $2 AND status = 'dead'",
                    )
                    .bind(now)
                    .bind(DbId(id))
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                    let task = self.get(id).await?.ok_or(TaskError::NotFound(id))?;
                    if changed == 1 { Ok(task) } else { Err(TaskError::NotDead { id, status: task.status.as_str().to_string() }) }
                }
            }
        }
    };
}

pub(crate) use task_repository;
