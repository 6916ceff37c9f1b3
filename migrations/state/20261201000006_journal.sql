-- The change journal (CONTRACT §2 `changes`): one row per record a run changed, or would have
-- changed (dry runs and held runs, marked by `mode`). `columns` names every column an update
-- changed; `changes` holds their old and new values ({"email": ["old", "new"]}), except the
-- demographic columns, which appear in `columns` by name only. Pruned per district after
-- `journal_retention`.
CREATE TABLE IF NOT EXISTS sync.journal (
    district_id text NOT NULL,
    -- UUIDv7: ordered by time, so (district_id, run_id) serves "newest first", --since and
    -- the pruning
    run_id      uuid NOT NULL,
    mode        text NOT NULL,      -- applied | dry_run | held
    entity      text NOT NULL,
    sourced_id  text NOT NULL,
    operation   text NOT NULL,      -- created | updated | deleted | reactivated
    columns     text[] NOT NULL DEFAULT '{}',
    changes     jsonb
);
CREATE INDEX IF NOT EXISTS journal_run_idx ON sync.journal (district_id, run_id);

-- A drift check with --repair asks the district's next run to pull everything.
ALTER TABLE sync.districts ADD COLUMN IF NOT EXISTS full_pull_requested boolean NOT NULL DEFAULT false;
ALTER TABLE sync.runs ADD COLUMN IF NOT EXISTS journaled bigint NOT NULL DEFAULT 0;
