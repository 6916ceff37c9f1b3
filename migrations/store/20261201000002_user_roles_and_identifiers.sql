-- OneRoster 1.2 (and what a 1.1 district has of it): preferred names, the primary org, a role
-- per org, and the identifiers the SIS and the identity provider use for a user. The arrays on
-- roster.users are the user's stored form (one JSON array per element); roster.user_roles and
-- roster.user_identifiers are derived from them in the same transaction, for the application to
-- query.
ALTER TABLE roster.users
    ADD COLUMN IF NOT EXISTS preferred_first_name   text,
    ADD COLUMN IF NOT EXISTS preferred_middle_name  text,
    ADD COLUMN IF NOT EXISTS preferred_last_name    text,
    ADD COLUMN IF NOT EXISTS pronouns               text,
    ADD COLUMN IF NOT EXISTS primary_org_sourced_id text,
    ADD COLUMN IF NOT EXISTS role_assignments       text[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS identifiers            text[] NOT NULL DEFAULT '{}';

-- One row per user, org and role: a teacher at one school and an administrator at another is
-- one user with two rows.
CREATE TABLE IF NOT EXISTS roster.user_roles (
    district_id     text NOT NULL,
    user_sourced_id text NOT NULL,
    org_sourced_id  text NOT NULL,
    role            text NOT NULL,
    role_type       text NOT NULL,   -- primary | secondary
    begin_date      date,
    end_date        date,
    PRIMARY KEY (district_id, user_sourced_id, org_sourced_id, role)
);
CREATE INDEX IF NOT EXISTS user_roles_org_idx ON roster.user_roles (district_id, org_sourced_id);

-- userIds: sign-in identifiers (LDAP, SIS, the identity provider's...).
CREATE TABLE IF NOT EXISTS roster.user_identifiers (
    district_id     text NOT NULL,
    user_sourced_id text NOT NULL,
    type            text NOT NULL,
    identifier      text NOT NULL,
    PRIMARY KEY (district_id, user_sourced_id, type, identifier)
);
CREATE INDEX IF NOT EXISTS user_identifiers_lookup_idx ON roster.user_identifiers (district_id, type, identifier);
