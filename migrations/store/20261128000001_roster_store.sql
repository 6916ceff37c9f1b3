-- The roster store (CONTRACT §5): what the application reads. Written only by oneroster-sync's
-- store module. Every table is keyed by (district_id, sourced_id); deletes are soft.

CREATE SCHEMA IF NOT EXISTS roster;

CREATE TABLE IF NOT EXISTS roster.orgs (
    district_id        text NOT NULL,
    sourced_id         text NOT NULL,
    status             text NOT NULL CHECK (status IN ('active', 'deleted')),
    name               text,
    type               text,
    identifier         text,
    parent_sourced_id  text,
    source_modified_at timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    deleted_at         timestamptz,
    PRIMARY KEY (district_id, sourced_id)
);

CREATE TABLE IF NOT EXISTS roster.academic_sessions (
    district_id        text NOT NULL,
    sourced_id         text NOT NULL,
    status             text NOT NULL CHECK (status IN ('active', 'deleted')),
    title              text,
    type               text,
    start_date         date,
    end_date           date,
    parent_sourced_id  text,
    school_year        text,
    source_modified_at timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    deleted_at         timestamptz,
    PRIMARY KEY (district_id, sourced_id)
);

CREATE TABLE IF NOT EXISTS roster.courses (
    district_id        text NOT NULL,
    sourced_id         text NOT NULL,
    status             text NOT NULL CHECK (status IN ('active', 'deleted')),
    title              text,
    course_code        text,
    org_sourced_id     text,
    source_modified_at timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    deleted_at         timestamptz,
    PRIMARY KEY (district_id, sourced_id)
);

CREATE TABLE IF NOT EXISTS roster.classes (
    district_id        text NOT NULL,
    sourced_id         text NOT NULL,
    status             text NOT NULL CHECK (status IN ('active', 'deleted')),
    title              text,
    class_code         text,
    class_type         text,
    school_sourced_id  text,
    course_sourced_id  text,
    term_sourced_ids   text[] NOT NULL DEFAULT '{}',
    grades             text[] NOT NULL DEFAULT '{}',
    subjects           text[] NOT NULL DEFAULT '{}',
    periods            text[] NOT NULL DEFAULT '{}',
    source_modified_at timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    deleted_at         timestamptz,
    PRIMARY KEY (district_id, sourced_id)
);

CREATE TABLE IF NOT EXISTS roster.users (
    district_id        text NOT NULL,
    sourced_id         text NOT NULL,
    status             text NOT NULL CHECK (status IN ('active', 'deleted')),
    role               text NOT NULL,
    username           text,
    email              text,
    given_name         text,
    family_name        text,
    middle_name        text,
    identifier         text,
    enabled            boolean,
    grades             text[] NOT NULL DEFAULT '{}',
    org_sourced_ids    text[] NOT NULL DEFAULT '{}',
    gender             text,
    hispanic_or_latino boolean,
    races              text[],
    source_modified_at timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    deleted_at         timestamptz,
    PRIMARY KEY (district_id, sourced_id)
);

CREATE TABLE IF NOT EXISTS roster.enrollments (
    district_id        text NOT NULL,
    sourced_id         text NOT NULL,
    status             text NOT NULL CHECK (status IN ('active', 'deleted')),
    user_sourced_id    text NOT NULL,
    class_sourced_id   text NOT NULL,
    school_sourced_id  text,
    role               text NOT NULL,
    is_primary         boolean,
    begin_date         date,
    end_date           date,
    source_modified_at timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    deleted_at         timestamptz,
    PRIMARY KEY (district_id, sourced_id)
);

-- The application reads a class's roster and a user's classes.
CREATE INDEX IF NOT EXISTS enrollments_class_idx ON roster.enrollments (district_id, class_sourced_id);
CREATE INDEX IF NOT EXISTS enrollments_user_idx ON roster.enrollments (district_id, user_sourced_id);
