-- When a campaign was queued for sending (by `send`, or by the campaign processor when its
-- scheduled time came): queued_at - scheduled_at is how late a scheduled campaign started.
ALTER TABLE campaigns ADD COLUMN queued_at TIMESTAMPTZ;
