-- Only running tasks have a lease that can expire. Indexing every row made each claim and
-- each completion write one more index entry for nothing; the partial index is what the
-- expired-lease claim reads.
DROP INDEX IF EXISTS tasks_leases;
CREATE INDEX tasks_running ON tasks (lease_expires_at) WHERE status = 'running';
