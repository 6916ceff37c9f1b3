-- What of the district's configuration shaped the rows its last completely applied pull
-- stored (OneRoster version, demographics mode, school scope): a change of any of them is a
-- change the upstream revision cannot show, so the next run pulls everything.
ALTER TABLE sync.districts ADD COLUMN IF NOT EXISTS applied_settings text;
