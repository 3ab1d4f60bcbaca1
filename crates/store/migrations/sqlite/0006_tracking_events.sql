-- What recipients did with a campaign's messages (opens, clicks, unsubscribes) and what came
-- back (bounces, complaints). Append-only; the analytics are computed from these rows.
-- recipient_id is NULL for events recorded aggregate-only (privacy), link_index names the
-- link of the HTML template for clicks, and ip_hash is a keyed hash: addresses are never
-- stored raw. Timestamps are INTEGER microseconds since the epoch, as elsewhere.
-- It replaces the `events` table of 0001, which nothing ever wrote.
DROP TABLE IF EXISTS events;
CREATE TABLE tracking_events (
    id           INTEGER PRIMARY KEY,
    campaign_id  TEXT NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    recipient_id INTEGER,
    kind         TEXT NOT NULL CHECK (kind IN ('open', 'click', 'unsubscribe', 'bounce_hard', 'bounce_soft', 'complaint')),
    link_index   INTEGER,
    detail       TEXT,
    ip_hash      TEXT,
    occurred_at  INTEGER NOT NULL
);
-- Totals and the hourly series per kind; unique counts per kind and recipient; clicks per link.
CREATE INDEX tracking_events_campaign_kind_time ON tracking_events (campaign_id, kind, occurred_at);
CREATE INDEX tracking_events_campaign_kind_recipient ON tracking_events (campaign_id, kind, recipient_id);
CREATE INDEX tracking_events_campaign_link ON tracking_events (campaign_id, link_index) WHERE link_index IS NOT NULL;
