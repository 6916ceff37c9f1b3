-- Findings per run (CONTRACT §4, §8): every skipped (error) and warned record of a run, by code,
-- for `report`; the run row keeps the counts per code and a few sample ids for `history`.
-- Messages name fields and ids only, never a value a record holds.
ALTER TABLE sync.runs ADD COLUMN IF NOT EXISTS pull text;
ALTER TABLE sync.runs ADD COLUMN IF NOT EXISTS pull_reason text;
ALTER TABLE sync.runs ADD COLUMN IF NOT EXISTS findings jsonb NOT NULL DEFAULT '{}';
ALTER TABLE sync.runs ADD COLUMN IF NOT EXISTS changes jsonb NOT NULL DEFAULT '{}';

CREATE TABLE IF NOT EXISTS sync.run_findings (
    run_id      uuid NOT NULL,
    district_id text NOT NULL,
    severity    text NOT NULL,
    code        text NOT NULL,
    entity      text NOT NULL,
    sourced_id  text NOT NULL,
    message     text NOT NULL
);
CREATE INDEX IF NOT EXISTS run_findings_run_idx ON sync.run_findings (run_id);
CREATE INDEX IF NOT EXISTS run_findings_district_idx ON sync.run_findings (district_id);
