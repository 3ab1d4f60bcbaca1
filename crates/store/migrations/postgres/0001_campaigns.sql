-- Campaigns keep their whole document (templates included) as JSONB, standing in for the
-- original design's MongoDB documents; the columns beside it are what lists and the
-- scheduler filter on.
CREATE TABLE campaigns (
    id              UUID PRIMARY KEY,
    name            TEXT NOT NULL,
    status          TEXT NOT NULL,
    document        JSONB NOT NULL,
    recipient_count BIGINT NOT NULL DEFAULT 0,
    scheduled_at    TIMESTAMPTZ,
    started_at      TIMESTAMPTZ,
    completed_at    TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX campaigns_status ON campaigns (status, scheduled_at);

-- One row per recipient of a campaign: the address, its personalization fields and the
-- state of its delivery. email_key (lower-cased address) makes de-duplication a constraint.
CREATE TABLE recipients (
    id              BIGSERIAL PRIMARY KEY,
    campaign_id     UUID NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    email           TEXT NOT NULL,
    email_key       TEXT NOT NULL,
    fields          JSONB NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ,
    smtp_reply      TEXT,
    last_error      TEXT,
    sent_at         TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ,
    UNIQUE (campaign_id, email_key)
);
CREATE INDEX recipients_campaign_status ON recipients (campaign_id, status);

-- Engagement and delivery events (opens, clicks, unsubscribes, bounces), keyed by recipient.
CREATE TABLE events (
    id           BIGSERIAL PRIMARY KEY,
    campaign_id  UUID NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    recipient_id BIGINT REFERENCES recipients (id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    detail       JSONB NOT NULL DEFAULT '{}',
    occurred_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_campaign_kind ON events (campaign_id, kind, occurred_at);

-- Addresses never to be sent to again (unsubscribed, hard-bounced, complained).
CREATE TABLE suppressions (
    email_key  TEXT PRIMARY KEY,
    email      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
