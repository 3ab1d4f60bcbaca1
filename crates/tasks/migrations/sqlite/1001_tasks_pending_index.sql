-- Claims read pending tasks in priority, run_after, id order and stop after the batch: an
-- index in exactly that order, holding only pending rows, lets them read just that batch.
-- It replaces tasks_claimable, whose leading status/kind columns made a claim over several
-- kinds sort every pending row.
DROP INDEX IF EXISTS tasks_claimable;
CREATE INDEX tasks_pending ON tasks (priority DESC, run_after, id) WHERE status = 'pending';
