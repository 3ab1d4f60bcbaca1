-- A/B tests. The campaign's phase: NULL (no test, or not started), 'testing' (the slice is
-- chosen and sends, the rest is held), 'decided' (a winner is chosen and the rest released;
-- its batches may not exist yet), 'sending_winner' (the rest's batches exist). The decision
-- is one conditional update from 'testing', so it happens once.
ALTER TABLE campaigns ADD COLUMN ab_phase TEXT;
ALTER TABLE campaigns ADD COLUMN ab_decide_at TIMESTAMPTZ;
ALTER TABLE campaigns ADD COLUMN ab_winner INTEGER;
ALTER TABLE campaigns ADD COLUMN ab_decided_at TIMESTAMPTZ;
-- How the winner was chosen (rule and per-variant numbers), as JSON.
ALTER TABLE campaigns ADD COLUMN ab_decision TEXT;
-- The index of the variant a recipient gets (into the document's variants); NULL without one.
ALTER TABLE recipients ADD COLUMN variant INTEGER;
-- 0: sent by the campaign's batches (every recipient of a campaign without a test, and the
-- test slice); 1: held back for the winner; 2: released to the winner, sent by its own
-- batches (so a range never has two task chains sending the same recipient).
ALTER TABLE recipients ADD COLUMN ab_hold INTEGER NOT NULL DEFAULT 0;
-- The variant of an event recorded without its recipient (aggregate-only tracking): the
-- signed link says it. Events that name their recipient take the recipient's.
ALTER TABLE tracking_events ADD COLUMN variant INTEGER;
