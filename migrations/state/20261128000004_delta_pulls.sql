-- Row hashes are now computed by the daemon as rows stream in (a 64-bit hash of the stored
-- row), not by md5 in SQL. Existing hashes cannot be converted: they become NULL, and the next
-- run writes those rows once more (the store's IS DISTINCT FROM guard leaves equal rows alone)
-- without counting them as changes. `hash_version` says which definition of the row hash a
-- district's mirror holds; when the daemon's differs, its hashes are treated the same way.
ALTER TABLE sync.mirror_orgs ALTER COLUMN hash TYPE bigint USING NULL;
ALTER TABLE sync.mirror_academic_sessions ALTER COLUMN hash TYPE bigint USING NULL;
ALTER TABLE sync.mirror_courses ALTER COLUMN hash TYPE bigint USING NULL;
ALTER TABLE sync.mirror_classes ALTER COLUMN hash TYPE bigint USING NULL;
ALTER TABLE sync.mirror_users ALTER COLUMN hash TYPE bigint USING NULL;
ALTER TABLE sync.mirror_enrollments ALTER COLUMN hash TYPE bigint USING NULL;

-- Delta pulls ask for records modified after this point (minus the district's delta_overlap):
-- the latest dateLastModified seen by the last successful run, never later than that run's
-- start.
ALTER TABLE sync.districts ADD COLUMN IF NOT EXISTS delta_watermark timestamptz;
ALTER TABLE sync.districts ADD COLUMN IF NOT EXISTS hash_version integer;

-- How many records of each type the server held at the last full pull, plus what deltas have
-- created since: a delta whose collection totals come out lower saw purges, and a full pull
-- follows at once.
ALTER TABLE sync.districts ADD COLUMN IF NOT EXISTS upstream_counts jsonb;
