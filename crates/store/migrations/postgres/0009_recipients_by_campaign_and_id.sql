-- A batch reads one id range of one campaign (due_recipients, next_due_in_range). Without this
-- index, and before ANALYZE has run on a freshly imported campaign, PostgreSQL planned those
-- queries as bitmap scans over every pending entry of recipients_campaign_status: 17-18 ms per
-- batch at 100,000 recipients, against 0.5 ms with it (docs/BENCHMARKS.md). SQLite needs no
-- such index: its (campaign_id, status) index already ends in the rowid, which is the id.
CREATE INDEX recipients_campaign_id ON recipients (campaign_id, id);
