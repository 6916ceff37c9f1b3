//! The mirror: what the daemon last applied to the roster store, and the diff of a new snapshot
//! against it. The only code that knows the `sync.mirror_*` tables.
//!
//! A run stages its snapshot with `COPY` into temporary tables of its own database session
//! (`stage_*`), checks references in SQL, derives the rows exactly as they would be stored
//! (`cand_*`, with an md5 of the stored columns), and diffs them against the mirror into
//! `apply_*` (rows to insert or update, with the operation) and `del_*` (ids deleted by absence
//! or by the enrollment cascade). The store module applies those tables; [`advance`] then moves
//! the mirror to match.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{Executor, PgConnection, Row};

use crate::domain::{
    AcademicSession, Class, Course, Demographics, Enrollment, Entity, Org, Skipped, Status, User,
};

/// Column types used by the roster store and the staging tables.
#[derive(Clone, Copy)]
pub enum ColumnType {
    Text,
    Bool,
    Date,
    Timestamp,
    TextArray,
}

impl ColumnType {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Bool => "boolean",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamptz",
            ColumnType::TextArray => "text[]",
        }
    }
}

use ColumnType::{Bool, Date, Text, TextArray, Timestamp};

/// The stored columns of one entity besides `district_id`, `sourced_id`, `updated_at` and
/// `deleted_at`, in a fixed order shared by staging, hashing and the store.
pub fn columns(entity: Entity) -> &'static [(&'static str, ColumnType)] {
    match entity {
        Entity::Orgs => &[
            ("status", Text),
            ("name", Text),
            ("type", Text),
            ("identifier", Text),
            ("parent_sourced_id", Text),
            ("source_modified_at", Timestamp),
        ],
        Entity::AcademicSessions => &[
            ("status", Text),
            ("title", Text),
            ("type", Text),
            ("start_date", Date),
            ("end_date", Date),
            ("parent_sourced_id", Text),
            ("school_year", Text),
            ("source_modified_at", Timestamp),
        ],
        Entity::Courses => &[
            ("status", Text),
            ("title", Text),
            ("course_code", Text),
            ("org_sourced_id", Text),
            ("source_modified_at", Timestamp),
        ],
        Entity::Classes => &[
            ("status", Text),
            ("title", Text),
            ("class_code", Text),
            ("class_type", Text),
            ("school_sourced_id", Text),
            ("course_sourced_id", Text),
            ("term_sourced_ids", TextArray),
            ("grades", TextArray),
            ("subjects", TextArray),
            ("periods", TextArray),
            ("source_modified_at", Timestamp),
        ],
        Entity::Users => &[
            ("status", Text),
            ("role", Text),
            ("username", Text),
            ("email", Text),
            ("given_name", Text),
            ("family_name", Text),
            ("middle_name", Text),
            ("identifier", Text),
            ("enabled", Bool),
            ("grades", TextArray),
            ("org_sourced_ids", TextArray),
            ("gender", Text),
            ("hispanic_or_latino", Bool),
            ("races", TextArray),
            ("source_modified_at", Timestamp),
        ],
        Entity::Enrollments => &[
            ("status", Text),
            ("user_sourced_id", Text),
            ("class_sourced_id", Text),
            ("school_sourced_id", Text),
            ("role", Text),
            ("is_primary", Bool),
            ("begin_date", Date),
            ("end_date", Date),
            ("source_modified_at", Timestamp),
        ],
    }
}

/// The demographics columns of `roster.users`, filled from the demographics collection.
const DEMOGRAPHIC_COLUMNS: [&str; 3] = ["gender", "hispanic_or_latino", "races"];

pub(crate) fn column_list(entity: Entity, prefix: &str) -> String {
    columns(entity)
        .iter()
        .map(|(name, _)| format!("{prefix}{name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn column_defs(entity: Entity) -> String {
    columns(entity)
        .iter()
        .map(|(name, ty)| format!("{name} {}", ty.sql()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("database error while {doing}: {source}")]
    Database {
        doing: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> MirrorError {
    move |source| MirrorError::Database { doing, source }
}

// ---------------------------------------------------------------------------------------------
// Staging

/// Creates (or empties, when the pull restarts) the session's staging tables.
pub async fn create_stage(conn: &mut PgConnection) -> Result<(), MirrorError> {
    let mut sql = String::from("DISCARD TEMP;\n");
    for entity in Entity::ALL {
        sql.push_str(&format!(
            "CREATE TEMP TABLE stage_{e} (sourced_id text NOT NULL, {defs});\n",
            e = entity.as_str(),
            defs = column_defs(entity)
        ));
    }
    sql.push_str(
        "CREATE TEMP TABLE stage_demographics (user_sourced_id text NOT NULL, gender text, \
         hispanic_or_latino boolean, races text[]);\n\
         CREATE TEMP TABLE stage_skipped (entity text NOT NULL, sourced_id text NOT NULL, reason text NOT NULL);\n",
    );
    conn.execute(sqlx::AssertSqlSafe(sql))
        .await
        .map_err(db("creating staging tables"))?;
    Ok(())
}

/// A record that can be copied into its staging table, as one line of `COPY ... FROM STDIN`
/// text format: `sourced_id` then [`columns`] in order.
pub trait StageRow {
    const TABLE: &'static str;
    fn encode(&self, line: &mut CopyLine<'_>);
}

/// Appends COPY text-format fields to a buffer.
pub struct CopyLine<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl CopyLine<'_> {
    fn sep(&mut self) {
        if !self.first {
            self.buf.push(b'\t');
        }
        self.first = false;
    }

    fn escaped(&mut self, s: &str) {
        for b in s.bytes() {
            match b {
                b'\\' => self.buf.extend_from_slice(b"\\\\"),
                b'\t' => self.buf.extend_from_slice(b"\\t"),
                b'\n' => self.buf.extend_from_slice(b"\\n"),
                b'\r' => self.buf.extend_from_slice(b"\\r"),
                _ => self.buf.push(b),
            }
        }
    }

    pub fn null(&mut self) {
        self.sep();
        self.buf.extend_from_slice(b"\\N");
    }

    pub fn text(&mut self, value: Option<&str>) {
        match value {
            Some(s) => {
                self.sep();
                self.escaped(s);
            }
            None => self.null(),
        }
    }

    pub fn status(&mut self, status: Status) {
        self.text(Some(status.as_str()));
    }

    pub fn bool(&mut self, value: Option<bool>) {
        self.text(value.map(|b| if b { "t" } else { "f" }));
    }

    pub fn display(&mut self, value: Option<impl std::fmt::Display>) {
        self.text(value.map(|v| v.to_string()).as_deref());
    }

    /// A `text[]` literal: every element double-quoted, `"` and `\` backslash-escaped, and the
    /// whole literal escaped again for the COPY layer.
    pub fn array(&mut self, values: &[String]) {
        let mut literal = String::from("{");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                literal.push(',');
            }
            literal.push('"');
            for c in v.chars() {
                if c == '"' || c == '\\' {
                    literal.push('\\');
                }
                literal.push(c);
            }
            literal.push('"');
        }
        literal.push('}');
        self.text(Some(&literal));
    }
}

/// Copies records into their staging table.
pub async fn copy_rows<R: StageRow>(
    conn: &mut PgConnection,
    rows: &[R],
) -> Result<(), MirrorError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::with_capacity(rows.len() * 160);
    for row in rows {
        row.encode(&mut CopyLine {
            buf: &mut buf,
            first: true,
        });
        buf.push(b'\n');
    }
    copy_in(conn, &format!("COPY {} FROM STDIN", R::TABLE), buf).await
}

/// Copies skipped records, so reference checks and deletions can tell "invalid in this pull"
/// (leave the stored row alone) from "absent" (delete it).
pub async fn copy_skipped(conn: &mut PgConnection, skipped: &[Skipped]) -> Result<(), MirrorError> {
    if skipped.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::new();
    for s in skipped {
        let mut line = CopyLine {
            buf: &mut buf,
            first: true,
        };
        line.text(Some(s.entity));
        line.text(Some(&s.sourced_id));
        line.text(Some(&s.reason));
        buf.push(b'\n');
    }
    copy_in(conn, "COPY stage_skipped FROM STDIN", buf).await
}

async fn copy_in(
    conn: &mut PgConnection,
    statement: &str,
    data: Vec<u8>,
) -> Result<(), MirrorError> {
    let mut copy = conn
        .copy_in_raw(statement)
        .await
        .map_err(db("starting COPY into staging"))?;
    copy.send(data).await.map_err(db("sending COPY data"))?;
    copy.finish()
        .await
        .map_err(db("finishing COPY into staging"))?;
    Ok(())
}

impl StageRow for Org {
    const TABLE: &'static str = "stage_orgs";
    fn encode(&self, l: &mut CopyLine<'_>) {
        l.text(Some(&self.sourced_id));
        l.status(self.status);
        l.text(self.name.as_deref());
        l.text(self.org_type.as_deref());
        l.text(self.identifier.as_deref());
        l.text(self.parent_sourced_id.as_deref());
        l.display(self.source_modified_at.map(|t| t.to_rfc3339()));
    }
}

impl StageRow for AcademicSession {
    const TABLE: &'static str = "stage_academic_sessions";
    fn encode(&self, l: &mut CopyLine<'_>) {
        l.text(Some(&self.sourced_id));
        l.status(self.status);
        l.text(self.title.as_deref());
        l.text(self.session_type.as_deref());
        l.display(self.start_date);
        l.display(self.end_date);
        l.text(self.parent_sourced_id.as_deref());
        l.text(self.school_year.as_deref());
        l.display(self.source_modified_at.map(|t| t.to_rfc3339()));
    }
}

impl StageRow for Course {
    const TABLE: &'static str = "stage_courses";
    fn encode(&self, l: &mut CopyLine<'_>) {
        l.text(Some(&self.sourced_id));
        l.status(self.status);
        l.text(self.title.as_deref());
        l.text(self.course_code.as_deref());
        l.text(self.org_sourced_id.as_deref());
        l.display(self.source_modified_at.map(|t| t.to_rfc3339()));
    }
}

impl StageRow for Class {
    const TABLE: &'static str = "stage_classes";
    fn encode(&self, l: &mut CopyLine<'_>) {
        l.text(Some(&self.sourced_id));
        l.status(self.status);
        l.text(self.title.as_deref());
        l.text(self.class_code.as_deref());
        l.text(self.class_type.as_deref());
        l.text(self.school_sourced_id.as_deref());
        l.text(self.course_sourced_id.as_deref());
        l.array(&self.term_sourced_ids);
        l.array(&self.grades);
        l.array(&self.subjects);
        l.array(&self.periods);
        l.display(self.source_modified_at.map(|t| t.to_rfc3339()));
    }
}

impl StageRow for User {
    const TABLE: &'static str = "stage_users";
    fn encode(&self, l: &mut CopyLine<'_>) {
        l.text(Some(&self.sourced_id));
        l.status(self.status);
        l.text(Some(&self.role));
        l.text(self.username.as_deref());
        l.text(self.email.as_deref());
        l.text(self.given_name.as_deref());
        l.text(self.family_name.as_deref());
        l.text(self.middle_name.as_deref());
        l.text(self.identifier.as_deref());
        l.bool(self.enabled);
        l.array(&self.grades);
        l.array(&self.org_sourced_ids);
        // gender, hispanic_or_latino, races: joined from stage_demographics
        l.null();
        l.null();
        l.null();
        l.display(self.source_modified_at.map(|t| t.to_rfc3339()));
    }
}

impl StageRow for Demographics {
    const TABLE: &'static str = "stage_demographics";
    fn encode(&self, l: &mut CopyLine<'_>) {
        l.text(Some(&self.user_sourced_id));
        l.text(self.gender.as_deref());
        l.bool(self.hispanic_or_latino);
        l.array(&self.races);
    }
}

impl StageRow for Enrollment {
    const TABLE: &'static str = "stage_enrollments";
    fn encode(&self, l: &mut CopyLine<'_>) {
        l.text(Some(&self.sourced_id));
        l.status(self.status);
        l.text(Some(&self.user_sourced_id));
        l.text(Some(&self.class_sourced_id));
        l.text(self.school_sourced_id.as_deref());
        l.text(Some(&self.role));
        l.bool(self.is_primary);
        l.display(self.begin_date);
        l.display(self.end_date);
        l.display(self.source_modified_at.map(|t| t.to_rfc3339()));
    }
}

// ---------------------------------------------------------------------------------------------
// Checks on the whole snapshot

/// Indexes the staged snapshot, drops duplicate ids and records whose references point outside
/// the snapshot, and returns what it skipped, by entity (already recorded in `stage_skipped`).
///
/// A reference counts as "in the snapshot" when the pull returned a record with that id, even
/// one skipped as invalid: an invalid record keeps its stored row, so what refers to it keeps
/// working.
pub async fn check_snapshot(
    conn: &mut PgConnection,
) -> Result<Vec<(Entity, Skipped)>, MirrorError> {
    let mut sql = String::new();
    for entity in Entity::ALL {
        let e = entity.as_str();
        sql.push_str(&format!(
            "CREATE INDEX ON stage_{e} (sourced_id); ANALYZE stage_{e};\n"
        ));
    }
    sql.push_str(
        "CREATE INDEX ON stage_demographics (user_sourced_id); ANALYZE stage_demographics;\n\
         CREATE INDEX ON stage_skipped (entity, sourced_id);\n",
    );
    conn.execute(sqlx::AssertSqlSafe(sql))
        .await
        .map_err(db("indexing the staged snapshot"))?;

    let mut skipped = Vec::new();
    for entity in Entity::ALL {
        let e = entity.as_str();
        let rows = sqlx::query(sql!(
            "WITH dup AS (
                DELETE FROM stage_{e} a
                WHERE EXISTS (SELECT 1 FROM stage_{e} b WHERE b.sourced_id = a.sourced_id AND b.ctid < a.ctid)
                RETURNING a.sourced_id)
             INSERT INTO stage_skipped (entity, sourced_id, reason)
             SELECT '{e}', sourced_id, 'duplicate sourcedId in the pull (first copy kept)' FROM dup
             RETURNING sourced_id, reason"
        ))
        .fetch_all(&mut *conn)
        .await
        .map_err(db("removing duplicate records"))?;
        skipped.extend(rows.iter().map(|r| (entity, skipped_row(entity, r))));
    }
    sqlx::query(
        "DELETE FROM stage_demographics a WHERE EXISTS (SELECT 1 FROM stage_demographics b
         WHERE b.user_sourced_id = a.user_sourced_id AND b.ctid < a.ctid)",
    )
    .execute(&mut *conn)
    .await
    .map_err(db("removing duplicate demographics"))?;

    // Classes before enrollments: a class skipped here is still "in the snapshot" for them.
    let known = |entity: &str, expr: &str| {
        format!(
            "(EXISTS (SELECT 1 FROM stage_{entity} k WHERE k.sourced_id = {expr}) OR \
             EXISTS (SELECT 1 FROM stage_skipped k WHERE k.entity = '{entity}' AND k.sourced_id = {expr}))"
        )
    };
    let class_reason = format!(
        "CASE
            WHEN c.school_sourced_id IS NOT NULL AND NOT {school} THEN 'references school ' || c.school_sourced_id || ' which is not in the snapshot'
            WHEN c.course_sourced_id IS NOT NULL AND NOT {course} THEN 'references course ' || c.course_sourced_id || ' which is not in the snapshot'
            ELSE (SELECT 'references term ' || t || ' which is not in the snapshot' FROM unnest(c.term_sourced_ids) t WHERE NOT {term} LIMIT 1)
         END",
        school = known("orgs", "c.school_sourced_id"),
        course = known("courses", "c.course_sourced_id"),
        term = known("academic_sessions", "t"),
    );
    let enrollment_reason = format!(
        "CASE
            WHEN NOT {user} THEN 'references user ' || c.user_sourced_id || ' which is not in the snapshot'
            WHEN NOT {class} THEN 'references class ' || c.class_sourced_id || ' which is not in the snapshot'
         END",
        user = known("users", "c.user_sourced_id"),
        class = known("classes", "c.class_sourced_id"),
    );
    for (entity, reason) in [
        (Entity::Classes, class_reason),
        (Entity::Enrollments, enrollment_reason),
    ] {
        let e = entity.as_str();
        let rows = sqlx::query(sql!(
            "WITH bad AS (
                SELECT c.ctid AS row_id, c.sourced_id, {reason} AS reason FROM stage_{e} c),
             gone AS (
                DELETE FROM stage_{e} s USING bad WHERE s.ctid = bad.row_id AND bad.reason IS NOT NULL
                RETURNING bad.sourced_id, bad.reason)
             INSERT INTO stage_skipped (entity, sourced_id, reason)
             SELECT '{e}', sourced_id, reason FROM gone
             RETURNING sourced_id, reason"
        ))
        .fetch_all(&mut *conn)
        .await
        .map_err(db("checking references"))?;
        skipped.extend(rows.iter().map(|r| (entity, skipped_row(entity, r))));
    }
    Ok(skipped)
}

fn skipped_row(entity: Entity, row: &sqlx::postgres::PgRow) -> Skipped {
    Skipped {
        entity: entity.as_str(),
        sourced_id: row.get("sourced_id"),
        reason: row.get("reason"),
    }
}

/// Active rows per entity in the mirror (what the store holds as active), for the empty-pull
/// guard.
pub async fn active_counts(
    conn: &mut PgConnection,
    district: &str,
) -> Result<BTreeMap<Entity, i64>, MirrorError> {
    let mut counts = BTreeMap::new();
    for entity in Entity::ALL {
        let n: i64 = sqlx::query_scalar(sql!(
            "SELECT count(*) FROM sync.mirror_{} WHERE district_id = $1 AND status = 'active'",
            entity.as_str()
        ))
        .bind(district)
        .fetch_one(&mut *conn)
        .await
        .map_err(db("counting mirrored rows"))?;
        counts.insert(entity, n);
    }
    Ok(counts)
}

// ---------------------------------------------------------------------------------------------
// Diff

/// Counts of one entity's changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChangeCounts {
    pub created: i64,
    pub updated: i64,
    pub reactivated: i64,
    pub deleted: i64,
}

impl ChangeCounts {
    pub fn total(&self) -> i64 {
        self.created + self.updated + self.reactivated + self.deleted
    }
}

/// How the snapshot is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffMode {
    /// Against the mirror: only rows whose stored form changed are applied.
    Mirror,
    /// Every row of the snapshot is applied (the store skips rows that are already equal):
    /// used when the mirror cannot be trusted to match the store.
    Reconcile,
}

/// Builds `cand_*`, `apply_*` and `del_*` for every entity and returns the change counts.
pub async fn diff(
    conn: &mut PgConnection,
    district: &str,
    mode: DiffMode,
) -> Result<BTreeMap<Entity, ChangeCounts>, MirrorError> {
    // Users and classes as they will be after this run, for the enrollment cascade: what the
    // snapshot says, or for a record skipped as invalid, what the mirror has.
    let effective = |entity: &str| {
        format!(
            "INSERT INTO eff_active
             SELECT '{entity}', sourced_id FROM stage_{entity} WHERE status = 'active'
             UNION
             SELECT '{entity}', m.sourced_id FROM sync.mirror_{entity} m
             JOIN stage_skipped k ON k.entity = '{entity}' AND k.sourced_id = m.sourced_id
             WHERE m.district_id = $1 AND m.status = 'active'
               AND NOT EXISTS (SELECT 1 FROM stage_{entity} s WHERE s.sourced_id = m.sourced_id)"
        )
    };
    conn.execute(
        "DROP TABLE IF EXISTS eff_active;
         CREATE TEMP TABLE eff_active (entity text NOT NULL, sourced_id text NOT NULL, PRIMARY KEY (entity, sourced_id));",
    )
    .await
    .map_err(db("preparing the diff"))?;
    for entity in ["users", "classes"] {
        sqlx::query(sqlx::AssertSqlSafe(effective(entity)))
            .bind(district)
            .execute(&mut *conn)
            .await
            .map_err(db("computing active users and classes"))?;
    }

    let mut counts = BTreeMap::new();
    for entity in Entity::ALL {
        let e = entity.as_str();
        let cols = column_list(entity, "");
        let hash = format!("md5(ROW({})::text)", column_list(entity, "c."));
        // The candidate rows, exactly as they would be stored.
        let source = match entity {
            Entity::Users => {
                let own = columns(entity)
                    .iter()
                    .map(|(name, _)| {
                        if DEMOGRAPHIC_COLUMNS.contains(name) {
                            format!("d.{name}")
                        } else {
                            format!("s.{name}")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "SELECT s.sourced_id, {own} FROM stage_users s
                     LEFT JOIN stage_demographics d ON d.user_sourced_id = s.sourced_id"
                )
            }
            Entity::Enrollments => {
                let own = columns(entity)
                    .iter()
                    .map(|(name, _)| {
                        if *name == "status" {
                            "CASE WHEN s.status = 'active'
                               AND EXISTS (SELECT 1 FROM eff_active a WHERE a.entity = 'users' AND a.sourced_id = s.user_sourced_id)
                               AND EXISTS (SELECT 1 FROM eff_active a WHERE a.entity = 'classes' AND a.sourced_id = s.class_sourced_id)
                             THEN 'active' ELSE 'deleted' END AS status"
                                .to_string()
                        } else {
                            format!("s.{name}")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("SELECT s.sourced_id, {own} FROM stage_enrollments s")
            }
            _ => format!("SELECT sourced_id, {cols} FROM stage_{e}"),
        };
        let changed = match mode {
            DiffMode::Mirror => "m.sourced_id IS NULL OR m.hash IS DISTINCT FROM c.hash",
            DiffMode::Reconcile => "true",
        };
        let extra_deleted = if entity == Entity::Enrollments {
            // Enrollments skipped in this pull keep their row, unless their user or class is
            // no longer active: the cascade applies to them too.
            "UNION
             SELECT m.sourced_id FROM sync.mirror_enrollments m
             JOIN stage_skipped k ON k.entity = 'enrollments' AND k.sourced_id = m.sourced_id
             WHERE m.district_id = $1 AND m.status = 'active'
               AND NOT EXISTS (SELECT 1 FROM cand_enrollments c WHERE c.sourced_id = m.sourced_id)
               AND NOT (EXISTS (SELECT 1 FROM eff_active a WHERE a.entity = 'users' AND a.sourced_id = m.user_sourced_id)
                    AND EXISTS (SELECT 1 FROM eff_active a WHERE a.entity = 'classes' AND a.sourced_id = m.class_sourced_id))"
        } else {
            ""
        };
        let sql = format!(
            "DROP TABLE IF EXISTS cand_{e}, apply_{e}, del_{e};
             CREATE TEMP TABLE cand_{e} AS {source} WITH NO DATA;
             ALTER TABLE cand_{e} ADD COLUMN hash text;
             CREATE TEMP TABLE apply_{e} (LIKE cand_{e});
             ALTER TABLE apply_{e} ADD COLUMN op text NOT NULL;
             CREATE TEMP TABLE del_{e} (sourced_id text PRIMARY KEY);"
        );
        conn.execute(sqlx::AssertSqlSafe(sql))
            .await
            .map_err(db("creating diff tables"))?;
        sqlx::query(sql!(
            "INSERT INTO cand_{e} SELECT c.*, {hash} FROM ({source}) c"
        ))
        .execute(&mut *conn)
        .await
        .map_err(db("deriving stored rows"))?;
        conn.execute(sql!(
            "CREATE UNIQUE INDEX ON cand_{e} (sourced_id); ANALYZE cand_{e};"
        ))
        .await
        .map_err(db("indexing stored rows"))?;
        sqlx::query(sql!(
            "INSERT INTO apply_{e}
             SELECT c.*, CASE
                 WHEN m.sourced_id IS NULL THEN 'create'
                 WHEN m.status = 'active' AND c.status = 'deleted' THEN 'delete'
                 WHEN m.status = 'deleted' AND c.status = 'active' THEN 'reactivate'
                 ELSE 'update' END
             FROM cand_{e} c
             LEFT JOIN sync.mirror_{e} m ON m.district_id = $1 AND m.sourced_id = c.sourced_id
             WHERE {changed}"
        ))
        .bind(district)
        .execute(&mut *conn)
        .await
        .map_err(db("diffing against the mirror"))?;
        sqlx::query(sql!(
            "INSERT INTO del_{e}
             SELECT m.sourced_id FROM sync.mirror_{e} m
             WHERE m.district_id = $1 AND m.status = 'active'
               AND NOT EXISTS (SELECT 1 FROM cand_{e} c WHERE c.sourced_id = m.sourced_id)
               AND NOT EXISTS (SELECT 1 FROM stage_skipped k WHERE k.entity = '{e}' AND k.sourced_id = m.sourced_id)
             {extra_deleted}"
        ))
        .bind(district)
        .execute(&mut *conn)
        .await
        .map_err(db("finding deleted records"))?;

        let mut c = ChangeCounts::default();
        // In reconcile mode every row is in apply_*: only what the mirror did not already
        // have counts as a change.
        let counted = match mode {
            DiffMode::Mirror => "true",
            DiffMode::Reconcile => {
                "NOT EXISTS (SELECT 1 FROM sync.mirror_{e} m WHERE m.district_id = $1 AND m.sourced_id = a.sourced_id AND m.hash IS NOT DISTINCT FROM a.hash)"
            }
        }
        .replace("{e}", e);
        let rows = sqlx::query(sql!(
            "SELECT op, count(*) AS n FROM apply_{e} a WHERE {counted} GROUP BY op"
        ))
        .bind(district)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("counting changes"))?;
        for row in rows {
            let n: i64 = row.get("n");
            match row.get::<&str, _>("op") {
                "create" => c.created += n,
                "delete" => c.deleted += n,
                "reactivate" => c.reactivated += n,
                _ => c.updated += n,
            }
        }
        let absent: i64 = sqlx::query_scalar(sql!("SELECT count(*) FROM del_{e}"))
            .fetch_one(&mut *conn)
            .await
            .map_err(db("counting deletions"))?;
        c.deleted += absent;
        counts.insert(entity, c);
    }
    Ok(counts)
}

/// Sample ids per entity and operation (`create`, `update`, `reactivate`, `delete`), for change
/// reports and held change sets: ids only, never content.
pub type Samples = BTreeMap<Entity, BTreeMap<String, Vec<String>>>;

pub async fn samples(conn: &mut PgConnection, per_operation: i64) -> Result<Samples, MirrorError> {
    let mut out = Samples::new();
    for entity in Entity::ALL {
        let e = entity.as_str();
        let rows: Vec<(String, Vec<String>)> = sqlx::query_as(sql!(
            "SELECT op, (array_agg(sourced_id ORDER BY sourced_id))[1:$1] FROM (
                SELECT op, sourced_id FROM apply_{e}
                UNION ALL SELECT 'delete', sourced_id FROM del_{e}
             ) c GROUP BY op"
        ))
        .bind(per_operation)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("sampling changes"))?;
        if !rows.is_empty() {
            out.insert(entity, rows.into_iter().collect());
        }
    }
    Ok(out)
}

/// A digest of the whole change set (every row to write, with its operation and stored
/// content hash, and every deletion): what an approval refers to.
pub async fn fingerprint(conn: &mut PgConnection) -> Result<String, MirrorError> {
    let parts = Entity::ALL
        .iter()
        .map(|entity| {
            let e = entity.as_str();
            format!(
                "SELECT '{e}' AS part, md5(coalesce(string_agg(sourced_id || '/' || op || '/' || coalesce(hash, ''), ',' ORDER BY sourced_id), '')) AS h FROM apply_{e}
                 UNION ALL
                 SELECT '{e}-deleted', md5(coalesce(string_agg(sourced_id, ',' ORDER BY sourced_id), '')) FROM del_{e}"
            )
        })
        .collect::<Vec<_>>()
        .join("\nUNION ALL\n");
    sqlx::query_scalar(sql!(
        "SELECT md5(string_agg(part || '=' || h, ';' ORDER BY part)) FROM ({parts}) p"
    ))
    .fetch_one(&mut *conn)
    .await
    .map_err(db("fingerprinting the change set"))
}

/// Moves the mirror to what was just applied: `apply_*` rows as they were stored, `del_*`
/// rows as deleted (content unknown, so no hash: if the record comes back it is applied).
pub async fn advance(conn: &mut PgConnection, district: &str) -> Result<(), MirrorError> {
    for entity in Entity::ALL {
        let e = entity.as_str();
        let (extra_cols, extra_set) = if entity == Entity::Enrollments {
            (
                ", user_sourced_id, class_sourced_id",
                ", user_sourced_id = EXCLUDED.user_sourced_id, class_sourced_id = EXCLUDED.class_sourced_id",
            )
        } else {
            ("", "")
        };
        sqlx::query(sql!(
            "INSERT INTO sync.mirror_{e} (district_id, sourced_id, status, hash{extra_cols})
             SELECT $1, sourced_id, status, hash{extra_cols} FROM apply_{e}
             ON CONFLICT (district_id, sourced_id) DO UPDATE
             SET status = EXCLUDED.status, hash = EXCLUDED.hash{extra_set}"
        ))
        .bind(district)
        .execute(&mut *conn)
        .await
        .map_err(db("advancing the mirror"))?;
        sqlx::query(sql!(
            "UPDATE sync.mirror_{e} m SET status = 'deleted', hash = NULL
             FROM del_{e} d WHERE m.district_id = $1 AND m.sourced_id = d.sourced_id"
        ))
        .bind(district)
        .execute(&mut *conn)
        .await
        .map_err(db("advancing the mirror"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<R: StageRow>(row: &R) -> String {
        let mut buf = Vec::new();
        row.encode(&mut CopyLine {
            buf: &mut buf,
            first: true,
        });
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn copy_text_escapes_specials_and_nulls() {
        let org = Org {
            sourced_id: "o\t1".into(),
            status: Status::Active,
            source_modified_at: None,
            name: Some("A\\B\nC".into()),
            org_type: None,
            identifier: Some(String::new()),
            parent_sourced_id: None,
        };
        assert_eq!(encode(&org), "o\\t1\tactive\tA\\\\B\\nC\t\\N\t\t\\N\t\\N");
    }

    #[test]
    fn arrays_are_quoted_twice() {
        let mut buf = Vec::new();
        let mut line = CopyLine {
            buf: &mut buf,
            first: true,
        };
        line.array(&["a\"b".to_string(), "c\\d".to_string(), "e,f".to_string()]);
        line.array(&[]);
        // literal {"a\"b","c\\d","e,f"} then COPY doubles each backslash
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "{\"a\\\\\"b\",\"c\\\\\\\\d\",\"e,f\"}\t{}"
        );
    }

    #[test]
    fn every_entity_has_status_first() {
        for e in Entity::ALL {
            assert_eq!(columns(e)[0].0, "status", "{e}");
        }
    }
}
