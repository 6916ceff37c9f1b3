-- The daemon's own state (schema `sync`): the mirror of what it last applied to the roster
-- store, per-district state, run history and held change sets. Only oneroster-sync reads these.

CREATE SCHEMA IF NOT EXISTS sync;

-- Per-district state. `pending_run_id` is set while a run's changes are being applied to a
-- roster store that lives in another database: if it is still set at the next run, the store
-- may be ahead of the mirror and that run reconciles against the store instead of trusting the
-- mirror (see store.rs).
CREATE TABLE IF NOT EXISTS sync.districts (
    district_id          text PRIMARY KEY,
    pending_run_id       uuid,
    pending_since        timestamptz,
    last_revision        text,
    last_success_at      timestamptz,
    last_full_pull_at    timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0
);

-- The mirror: one row per record last applied, with a hash of exactly what was stored.
-- `hash` is md5 of the stored columns; NULL after a deletion by absence (content unknown).
CREATE TABLE IF NOT EXISTS sync.mirror_orgs (
    district_id text NOT NULL,
    sourced_id  text NOT NULL,
    status      text NOT NULL,
    hash        text,
    PRIMARY KEY (district_id, sourced_id)
);
CREATE TABLE IF NOT EXISTS sync.mirror_academic_sessions (LIKE sync.mirror_orgs INCLUDING ALL);
CREATE TABLE IF NOT EXISTS sync.mirror_courses (LIKE sync.mirror_orgs INCLUDING ALL);
CREATE TABLE IF NOT EXISTS sync.mirror_classes (LIKE sync.mirror_orgs INCLUDING ALL);
CREATE TABLE IF NOT EXISTS sync.mirror_users (LIKE sync.mirror_orgs INCLUDING ALL);
-- Enrollments also keep their user and class, for the cascade of records skipped in a pull.
CREATE TABLE IF NOT EXISTS sync.mirror_enrollments (
    LIKE sync.mirror_orgs INCLUDING ALL,
    user_sourced_id  text NOT NULL,
    class_sourced_id text NOT NULL
);

-- Run history: one row per run, whatever its outcome.
CREATE TABLE IF NOT EXISTS sync.runs (
    run_id       uuid PRIMARY KEY,
    district_id  text NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    outcome      text NOT NULL,
    dry_run      boolean NOT NULL DEFAULT false,
    full_pull    boolean NOT NULL DEFAULT true,
    revision     text,
    -- {"users": {"fetched": n, "created": n, "updated": n, "deleted": n, "skipped": n}, ...}
    counts       jsonb NOT NULL DEFAULT '{}',
    -- [{"entity": "...", "sourced_id": "...", "reason": "..."}], capped
    skipped      jsonb NOT NULL DEFAULT '[]',
    error        text
);
CREATE INDEX IF NOT EXISTS runs_district_started_idx ON sync.runs (district_id, started_at DESC);

-- Change sets held by a safety limit until an operator approves them.
CREATE TABLE IF NOT EXISTS sync.held_change_sets (
    district_id  text NOT NULL,
    fingerprint  text NOT NULL,
    run_id       uuid NOT NULL,
    held_at      timestamptz NOT NULL DEFAULT now(),
    counts       jsonb NOT NULL,
    -- sample sourcedIds per entity and operation; ids only, no personal data
    samples      jsonb NOT NULL DEFAULT '{}',
    reasons      jsonb NOT NULL DEFAULT '[]',
    approved_at  timestamptz,
    -- set when the change set stops being pending: 'applied' (approved and applied) or
    -- 'superseded' (the source moved on; a newer change set was judged instead)
    released_at  timestamptz,
    resolution   text,
    PRIMARY KEY (district_id, fingerprint)
);
CREATE INDEX IF NOT EXISTS held_change_sets_pending_idx
    ON sync.held_change_sets (district_id, held_at DESC) WHERE released_at IS NULL;
