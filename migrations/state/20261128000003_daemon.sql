-- The daemon's schedule and lease per district, shared by every `run` replica on this
-- database. A replica claims a due district with one atomic UPDATE (next_run_at in the past,
-- no live lease), which moves next_run_at on so no other replica claims it for that interval;
-- a session-level advisory lock held for the run's length keeps two runs of one district from
-- ever overlapping (and is released by Postgres when the holder dies).
ALTER TABLE sync.districts
    ADD COLUMN IF NOT EXISTS next_run_at timestamptz,
    ADD COLUMN IF NOT EXISTS leased_by   text,
    ADD COLUMN IF NOT EXISTS lease_until timestamptz;
