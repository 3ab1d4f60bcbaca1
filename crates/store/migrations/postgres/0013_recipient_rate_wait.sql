-- The sending rate a deferred recipient waits for (`group google`, `domain example.com`, `the
-- global limit`, `the campaign's max_rate`): set with the deferral by the same statement that
-- records it, NULL for a deferral by the server. A campaign's status groups its deferred
-- recipients by it to say what the campaign waits on, and until when.
ALTER TABLE recipients ADD COLUMN rate_wait TEXT;
