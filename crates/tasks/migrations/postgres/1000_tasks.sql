-- The task repository's own table (versions from 1000, beside the campaign store's 1–999).
CREATE TABLE tasks (
    id               UUID PRIMARY KEY,
    kind             TEXT NOT NULL,
    payload          JSONB NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    run_after        TIMESTAMPTZ NOT NULL,
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    last_error       TEXT,
    result           JSONB,
    idempotency_key  TEXT UNIQUE,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX tasks_claimable ON tasks (status, kind, priority DESC, run_after);
CREATE INDEX tasks_leases ON tasks (status, lease_expires_at);
