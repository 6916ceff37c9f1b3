//! The mirror: what the daemon last applied to the roster store, and the tables a run writes its
//! change set into. The only code that knows the `sync.mirror_*` tables.
//!
//! A run classifies pulled records in memory against an index of the mirror (see the diff
//! module) and copies only what changes into temporary tables of its own database session:
//! `apply_*` (rows to insert or update, in their stored form, with the row hash and the
//! operation) and `del_*` (ids deleted by absence or by the enrollment cascade). The store
//! module applies those tables; [`advance`] then moves the mirror to match.

use std::collections::{BTreeMap, BTreeSet};

use std::io::Write as _;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use serde::Serialize;
use sqlx::{Executor, PgConnection};

use crate::domain::{
    AcademicSession, Class, Course, Enrollment, Entity, Org, Skipped, Status, User,
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
    #[error("the mirror is corrupt: {0}")]
    Corrupt(String),
}

fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> MirrorError {
    move |source| MirrorError::Database { doing, source }
}

// ---------------------------------------------------------------------------------------------
// The run's tables

/// Creates (or empties, when the pull starts over) the session's change-set tables.
pub async fn create_run_tables(conn: &mut PgConnection) -> Result<(), MirrorError> {
    let mut sql = String::from("DISCARD TEMP;\n");
    for entity in Entity::ALL {
        sql.push_str(&format!(
            "CREATE TEMP TABLE apply_{e} (sourced_id text NOT NULL, {defs}, hash bigint, op text NOT NULL);\n\
             CREATE TEMP TABLE del_{e} (sourced_id text PRIMARY KEY);\n",
            e = entity.as_str(),
            defs = column_defs(entity)
        ));
    }
    sql.push_str(
        "CREATE TEMP TABLE stage_skipped (entity text NOT NULL, sourced_id text NOT NULL, reason text NOT NULL);\n",
    );
    conn.execute(sqlx::AssertSqlSafe(sql))
        .await
        .map_err(db("creating the change-set tables"))?;
    Ok(())
}

/// Analyzes the deletion tables once the pull is complete (the apply joins them to the store).
pub async fn seal_run_tables(conn: &mut PgConnection) -> Result<(), MirrorError> {
    let mut sql = String::new();
    for entity in Entity::ALL {
        sql.push_str(&format!("ANALYZE del_{};\n", entity.as_str()));
    }
    conn.execute(sqlx::AssertSqlSafe(sql))
        .await
        .map_err(db("indexing the change set"))?;
    Ok(())
}

/// A record in its stored form, as one line of `COPY ... FROM STDIN` text format:
/// `sourced_id` then [`columns`] in order.
pub trait StageRow {
    const ENTITY: Entity;
    fn sourced_id(&self) -> &str;
    fn is_active(&self) -> bool;
    /// `dateLastModified`, for the delta watermark.
    fn modified(&self) -> Option<DateTime<Utc>>;
    fn encode(&self, line: &mut CopyLine<'_>);
}

/// Appends COPY text-format fields to a buffer.
pub struct CopyLine<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> CopyLine<'a> {
    /// Starts a line at the end of `buf`.
    pub fn new(buf: &'a mut Vec<u8>) -> CopyLine<'a> {
        CopyLine { buf, first: true }
    }

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

    /// A date as `YYYY-MM-DD`.
    pub fn date(&mut self, value: Option<NaiveDate>) {
        match value {
            Some(d) => {
                self.sep();
                let _ = write!(self.buf, "{:04}-{:02}-{:02}", d.year(), d.month(), d.day());
            }
            None => self.null(),
        }
    }

    /// A timestamp as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (microseconds, as stored).
    pub fn timestamp(&mut self, value: Option<DateTime<Utc>>) {
        match value {
            Some(t) => {
                self.sep();
                let _ = write!(
                    self.buf,
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                    t.year(),
                    t.month(),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second(),
                    t.timestamp_subsec_micros()
                );
            }
            None => self.null(),
        }
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

/// Copies complete COPY lines into a change-set table.
pub async fn copy_lines(
    conn: &mut PgConnection,
    entity: Entity,
    lines: Vec<u8>,
) -> Result<(), MirrorError> {
    if lines.is_empty() {
        return Ok(());
    }
    copy_in(
        conn,
        &format!("COPY apply_{} FROM STDIN", entity.as_str()),
        lines,
    )
    .await
}

/// Copies ids into `del_*`.
pub async fn copy_deleted(
    conn: &mut PgConnection,
    entity: Entity,
    ids: &[String],
) -> Result<(), MirrorError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::new();
    for id in ids {
        CopyLine::new(&mut buf).text(Some(id));
        buf.push(b'\n');
    }
    copy_in(
        conn,
        &format!("COPY del_{} FROM STDIN", entity.as_str()),
        buf,
    )
    .await
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
macro_rules! common {
    ($entity:expr) => {
        const ENTITY: Entity = $entity;
        fn sourced_id(&self) -> &str {
            &self.sourced_id
        }
        fn is_active(&self) -> bool {
            self.status == Status::Active
        }
        fn modified(&self) -> Option<DateTime<Utc>> {
            self.source_modified_at
        }
    };
}

impl StageRow for Org {
    common!(Entity::Orgs);
    fn encode(&self, l: &mut CopyLine<'_>) {
        l.text(Some(&self.sourced_id));
        l.status(self.status);
        l.text(self.name.as_deref());
        l.text(self.org_type.as_deref());
        l.text(self.identifier.as_deref());
        l.text(self.parent_sourced_id.as_deref());
        l.timestamp(self.source_modified_at);
    }
}

impl StageRow for AcademicSession {
    common!(Entity::AcademicSessions);
    fn encode(&self, l: &mut CopyLine<'_>) {
        l.text(Some(&self.sourced_id));
        l.status(self.status);
        l.text(self.title.as_deref());
        l.text(self.session_type.as_deref());
        l.date(self.start_date);
        l.date(self.end_date);
        l.text(self.parent_sourced_id.as_deref());
        l.text(self.school_year.as_deref());
        l.timestamp(self.source_modified_at);
    }
}

impl StageRow for Course {
    common!(Entity::Courses);
    fn encode(&self, l: &mut CopyLine<'_>) {
        l.text(Some(&self.sourced_id));
        l.status(self.status);
        l.text(self.title.as_deref());
        l.text(self.course_code.as_deref());
        l.text(self.org_sourced_id.as_deref());
        l.timestamp(self.source_modified_at);
    }
}

impl StageRow for Class {
    common!(Entity::Classes);
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
        l.timestamp(self.source_modified_at);
    }
}

impl StageRow for User {
    common!(Entity::Users);
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
        let d = self.demographics;
        l.text(d.gender());
        l.bool(d.hispanic_or_latino);
        match d.races() {
            Some(races) => l.array(&races),
            None => l.null(),
        }
        l.timestamp(self.source_modified_at);
    }
}

impl StageRow for Enrollment {
    common!(Entity::Enrollments);
    fn encode(&self, l: &mut CopyLine<'_>) {
        l.text(Some(&self.sourced_id));
        l.status(self.status);
        l.text(Some(&self.user_sourced_id));
        l.text(Some(&self.class_sourced_id));
        l.text(self.school_sourced_id.as_deref());
        l.text(Some(&self.role));
        l.bool(self.is_primary);
        l.date(self.begin_date);
        l.date(self.end_date);
        l.timestamp(self.source_modified_at);
    }
}

// ---------------------------------------------------------------------------------------------
// The change set

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

/// Sample ids per entity and operation (`create`, `update`, `reactivate`, `delete`), for change
/// reports and held change sets: ids only, never content.
pub type Samples = BTreeMap<Entity, BTreeMap<String, Vec<String>>>;

/// A digest of the whole change set (every row to write, with its operation and stored
/// content hash, and every deletion): what an approval refers to.
pub async fn fingerprint(conn: &mut PgConnection) -> Result<String, MirrorError> {
    let parts = Entity::ALL
        .iter()
        .map(|entity| {
            let e = entity.as_str();
            format!(
                "SELECT '{e}' AS part, md5(coalesce(string_agg(sourced_id || '/' || op || '/' || coalesce(hash::text, ''), ',' ORDER BY sourced_id), '')) AS h FROM apply_{e}
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

/// Writes the rows of `apply_*` into a table, given its `insert` (`INSERT … SELECT … FROM
/// apply_* a`, bound to the district as `$1`) and `upsert` (its `ON CONFLICT` clause). Rows new
/// to the mirror (`op = 'create'`) are new to the target too unless the two drifted apart, so
/// they go in with a plain `INSERT` (a first load of a large district costs a third less than
/// through `ON CONFLICT`); if a row is there after all, that insert is rolled back to a
/// savepoint and done again as an upsert. The other rows are upserted.
pub(crate) async fn write_change_set(
    conn: &mut PgConnection,
    district: &str,
    insert: &str,
    upsert: &str,
) -> Result<(), sqlx::Error> {
    conn.execute("SAVEPOINT new_rows").await?;
    let plain = sqlx::query(sql!("{insert} WHERE a.op = 'create'"))
        .bind(district)
        .execute(&mut *conn)
        .await;
    match plain {
        Ok(_) => {
            conn.execute("RELEASE SAVEPOINT new_rows").await?;
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            conn.execute("ROLLBACK TO SAVEPOINT new_rows").await?;
            sqlx::query(sql!("{insert} WHERE a.op = 'create' {upsert}"))
                .bind(district)
                .execute(&mut *conn)
                .await?;
        }
        Err(e) => return Err(e),
    }
    sqlx::query(sql!("{insert} WHERE a.op <> 'create' {upsert}"))
        .bind(district)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Moves the mirror to what was just applied (for the `touched` entities): `apply_*` rows as they were stored, `del_*`
/// rows as deleted (content unknown, so no hash: if the record comes back it is applied).
pub async fn advance(
    conn: &mut PgConnection,
    district: &str,
    touched: &BTreeSet<Entity>,
) -> Result<(), MirrorError> {
    for &entity in touched {
        let e = entity.as_str();
        let (extra_cols, extra_set) = if entity == Entity::Enrollments {
            (
                ", user_sourced_id, class_sourced_id",
                ", user_sourced_id = EXCLUDED.user_sourced_id, class_sourced_id = EXCLUDED.class_sourced_id",
            )
        } else {
            ("", "")
        };
        let insert = format!(
            "INSERT INTO sync.mirror_{e} AS t (district_id, sourced_id, status, hash{extra_cols})
             SELECT $1, a.sourced_id, a.status, a.hash{extra_cols} FROM apply_{e} a"
        );
        let upsert = format!(
            "ON CONFLICT (district_id, sourced_id) DO UPDATE
             SET status = EXCLUDED.status, hash = EXCLUDED.hash{extra_set}"
        );
        write_change_set(conn, district, &insert, &upsert)
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
    // Every row this run pulled now carries a hash of the current definition.
    sqlx::query("UPDATE sync.districts SET hash_version = $2 WHERE district_id = $1")
        .bind(district)
        .bind(crate::diff::HASH_VERSION)
        .execute(&mut *conn)
        .await
        .map_err(db("advancing the mirror"))?;
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
