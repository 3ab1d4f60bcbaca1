-- Which rule the stored email_key columns (recipients, suppressions, feedback_events) were
-- computed with. Rule 1: the address lower-cased. Rule 2 (EmailAddress::key): the domain as
-- IDNA A-labels, the local part NFKC-normalised, both lower-cased. Only non-ASCII addresses
-- differ, and SQL cannot compute IDNA or NFKC, so the store recomputes those rows in Rust
-- when it opens a database still at rule 1, then records 2 here.
CREATE TABLE email_key_rule (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO email_key_rule (id, version) VALUES (1, 1);
