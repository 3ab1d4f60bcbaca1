-- Secrets the service generates for itself when none is configured (e.g. the tracking-token
-- key), kept in the database so every process sharing it signs and verifies alike.
CREATE TABLE service_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
