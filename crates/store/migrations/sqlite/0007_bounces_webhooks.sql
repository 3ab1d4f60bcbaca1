-- Bounces and complaints as they arrive (POST /api/v1/bounces), attributed to a recipient
-- when the report names one (VERP token or Message-ID). Kept per address as well, because
-- soft bounces are counted per address across campaigns (SOFT_BOUNCE_LIMIT within
-- SOFT_BOUNCE_WINDOW_HOURS) and an unattributed hard bounce still suppresses its address.
CREATE TABLE feedback_events (
    id           INTEGER PRIMARY KEY,
    campaign_id  TEXT REFERENCES campaigns (id) ON DELETE CASCADE,
    recipient_id INTEGER REFERENCES recipients (id) ON DELETE CASCADE,
    email        TEXT NOT NULL,
    email_key    TEXT NOT NULL,
    -- hard_bounce, soft_bounce or complaint
    kind         TEXT NOT NULL,
    -- RFC 3463 status and RFC 3464 action of a bounce; the feedback type of a complaint
    status       TEXT,
    action       TEXT,
    diagnostic   TEXT,
    occurred_at  INTEGER NOT NULL
);
CREATE INDEX feedback_events_address ON feedback_events (email_key, kind, occurred_at);
CREATE INDEX feedback_events_campaign ON feedback_events (campaign_id, kind);

-- Which retry pass of a campaign its batch tasks belong to: POST …/retry-failed starts a new
-- pass, whose batch tasks need keys the first pass's (finished) tasks do not already hold.
ALTER TABLE campaigns ADD COLUMN send_pass INTEGER NOT NULL DEFAULT 0;

-- Outgoing webhook events waiting to be delivered, one row per (endpoint, event), so each
-- endpoint retries on its own schedule and nothing is lost across restarts. The payload is
-- the event's JSON text exactly as it is signed and sent.
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY,
    endpoint        TEXT NOT NULL,
    payload         TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (endpoint, next_attempt_at, id);
