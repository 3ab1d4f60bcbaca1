-- Timestamps are INTEGER microseconds since the Unix epoch (UTC): they compare and sort as
-- numbers, which RFC 3339 text with a variable number of fraction digits does not.
-- Campaigns keep their whole document (templates included) as JSON text; the columns beside
-- it are what lists and the scheduler filter on.
CREATE TABLE campaigns (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    status          TEXT NOT NULL,
    document        TEXT NOT NULL,
    recipient_count INTEGER NOT NULL DEFAULT 0,
    scheduled_at    INTEGER,
    started_at      INTEGER,
    completed_at    INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX campaigns_status ON campaigns (status, scheduled_at);

-- One row per recipient of a campaign: the address, its personalization fields and the
-- state of its delivery. email_key (lower-cased address) makes de-duplication a constraint.
CREATE TABLE recipients (
    id              INTEGER PRIMARY KEY,
    campaign_id     TEXT NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    email           TEXT NOT NULL,
    email_key       TEXT NOT NULL,
    fields          TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    smtp_reply      TEXT,
    last_error      TEXT,
    sent_at         INTEGER,
    updated_at      INTEGER,
    UNIQUE (campaign_id, email_key)
);
CREATE INDEX recipients_campaign_status ON recipients (campaign_id, status);

-- Engagement and delivery events (opens, clicks, unsubscribes, bounces), keyed by recipient.
CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    campaign_id  TEXT NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    recipient_id INTEGER REFERENCES recipients (id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    detail       TEXT NOT NULL DEFAULT '{}',
    occurred_at  INTEGER NOT NULL
);
CREATE INDEX events_campaign_kind ON events (campaign_id, kind, occurred_at);

-- Addresses never to be sent to again (unsubscribed, hard-bounced, complained).
CREATE TABLE suppressions (
    email_key  TEXT PRIMARY KEY,
    email      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
