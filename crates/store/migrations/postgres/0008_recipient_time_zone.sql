-- The IANA time zone a recipient is released in when the campaign has a local send time
-- (resolved at import from the recipient's field, or the campaign's fallback); NULL otherwise.
ALTER TABLE recipients ADD COLUMN time_zone TEXT;
