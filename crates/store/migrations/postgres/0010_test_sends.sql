-- Every test message (POST /api/v1/campaigns/{id}/test), one row per address it was sent to.
-- The rows of an API key within the last minute and day are its test-send quota, counted here
-- so that every API process sharing the database counts the same sends. A row's id is what
-- the test message's unsubscribe token names: using the link suppresses that address.
-- The rows are kept (at most TEST_SEND_PER_DAY a day per key), so old links keep working.
CREATE TABLE test_sends (
    id          BIGSERIAL PRIMARY KEY,
    api_key_id  TEXT NOT NULL,
    campaign_id UUID NOT NULL,
    email       TEXT NOT NULL,
    sent_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX test_sends_key_time ON test_sends (api_key_id, sent_at);
