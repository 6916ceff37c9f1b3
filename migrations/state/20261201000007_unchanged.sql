-- The collection totals (X-Total-Count) of the district's last completely applied pull: with
-- `last_revision`, what tells an unchanged upstream (CONTRACT §2, `sync --full`).
ALTER TABLE sync.districts ADD COLUMN IF NOT EXISTS last_totals jsonb;
