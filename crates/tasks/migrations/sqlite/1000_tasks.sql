-- The task repository's own table (versions from 1000, beside the campaign store's 1–999).
-- Times are integer microseconds since the epoch, like the campaign store's.
CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    run_after        INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    last_error       TEXT,
    result           TEXT,
    idempotency_key  TEXT UNIQUE,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX tasks_claimable ON tasks (status, kind, priority DESC, run_after);
CREATE INDEX tasks_leases ON tasks (status, lease_expires_at);
