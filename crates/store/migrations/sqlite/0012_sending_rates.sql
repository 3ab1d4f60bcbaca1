-- Sending-rate schedules shared by every worker on the database: one row per limit (the
-- global SMTP_RATE_LIMIT, and each destination-domain group of RATE_LIMITS_FILE). A row holds
-- the time of the next free sending slot; a worker leases a short stretch of the schedule (a
-- few hundred milliseconds' worth of slots) by moving it forward in one statement, sends in
-- those slots, and gives back what it did not use. A lease is a stretch of time, so a worker
-- that dies holds nothing once that time has passed: no lease needs reclaiming.
-- Times are integer nanoseconds since the Unix epoch (slots of a fast rate are microseconds).
CREATE TABLE sending_rate_schedules (
    name            TEXT PRIMARY KEY,
    next_slot_ns    INTEGER NOT NULL,
    -- The rate a throttling receiver has pushed this destination down to (messages per
    -- second); NULL while it sends at its configured rate.
    slowed_rate     REAL,
    -- The last throttling reply (421, or 4xx with 4.7.x) any worker got for it.
    throttled_ns    INTEGER
);
