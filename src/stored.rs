//! The stored form of a record: its columns in the roster store, and its line in PostgreSQL's COPY
//! text format, byte for byte as `COPY ... TO STDOUT` prints the stored row (session settings
//! `TimeZone = UTC`, `DateStyle = ISO`).
//!
//! [`Stored::columns`] lists every stored column of a record type with its value, in order. The
//! column list of the store and the change-set tables, the COPY lines a run writes and the row
//! hash the mirror keeps all come from it, so a new column is one line here (plus the domain
//! field and the migration). Because the line is what PostgreSQL itself prints for the row, the
//! drift check can hash the store's own output and compare it with the mirror.

use std::io::Write as _;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};

use crate::domain::{AcademicSession, Class, Course, Enrollment, Entity, Org, Status, User};

/// Column types of the roster store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Bool,
    Date,
    Timestamp,
    TextArray,
}

impl ColumnType {
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Bool => "boolean",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamptz",
            ColumnType::TextArray => "text[]",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
}

/// What a record's columns are written to: the column list, or a COPY line.
pub trait Columns {
    fn text(&mut self, name: &'static str, value: Option<&str>);
    fn bool(&mut self, name: &'static str, value: Option<bool>);
    fn date(&mut self, name: &'static str, value: Option<NaiveDate>);
    fn timestamp(&mut self, name: &'static str, value: Option<DateTime<Utc>>);
    /// A `text[]`; `None` is NULL (only `races` is ever NULL).
    fn array(&mut self, name: &'static str, value: Option<&[String]>);
}

/// A record type as the roster store holds it.
pub trait Stored: Default + Send + 'static {
    const ENTITY: Entity;
    fn sourced_id(&self) -> &str;
    fn status(&self) -> Status;
    /// `dateLastModified`, for the delta watermark.
    fn modified(&self) -> Option<DateTime<Utc>>;
    /// Every stored column besides `district_id`, `sourced_id`, `updated_at` and `deleted_at`,
    /// in order, `status` first.
    fn columns(&self, out: &mut impl Columns);

    fn is_active(&self) -> bool {
        self.status() == Status::Active
    }
}

/// The stored columns of `R`, in order.
pub fn columns_of<R: Stored>() -> Vec<Column> {
    struct List(Vec<Column>);
    impl List {
        fn push(&mut self, name: &'static str, ty: ColumnType) {
            self.0.push(Column { name, ty });
        }
    }
    impl Columns for List {
        fn text(&mut self, name: &'static str, _: Option<&str>) {
            self.push(name, ColumnType::Text);
        }
        fn bool(&mut self, name: &'static str, _: Option<bool>) {
            self.push(name, ColumnType::Bool);
        }
        fn date(&mut self, name: &'static str, _: Option<NaiveDate>) {
            self.push(name, ColumnType::Date);
        }
        fn timestamp(&mut self, name: &'static str, _: Option<DateTime<Utc>>) {
            self.push(name, ColumnType::Timestamp);
        }
        fn array(&mut self, name: &'static str, _: Option<&[String]>) {
            self.push(name, ColumnType::TextArray);
        }
    }
    let mut list = List(Vec::new());
    R::default().columns(&mut list);
    list.0
}

/// The stored columns of a roster table, in order.
pub fn columns(entity: Entity) -> &'static [Column] {
    static COLUMNS: std::sync::OnceLock<[Vec<Column>; 6]> = std::sync::OnceLock::new();
    let all = COLUMNS.get_or_init(|| {
        [
            columns_of::<Org>(),
            columns_of::<AcademicSession>(),
            columns_of::<Course>(),
            columns_of::<Class>(),
            columns_of::<User>(),
            columns_of::<Enrollment>(),
        ]
    });
    let i = match entity {
        Entity::Orgs => 0,
        Entity::AcademicSessions => 1,
        Entity::Courses => 2,
        Entity::Classes => 3,
        Entity::Users => 4,
        Entity::Enrollments => 5,
    };
    &all[i]
}

/// `prefix` + each column name, comma separated.
pub fn column_list(entity: Entity, prefix: &str) -> String {
    columns(entity)
        .iter()
        .map(|c| format!("{prefix}{}", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends the record's COPY line (`sourced_id`, then its columns; no newline) to `buf`.
pub fn encode<R: Stored>(row: &R, buf: &mut Vec<u8>) {
    copy_escaped(buf, row.sourced_id());
    row.columns(&mut CopyLine { buf });
}

/// Writes fields of a COPY text line, each after a tab.
struct CopyLine<'a> {
    buf: &'a mut Vec<u8>,
}

const NULL: &[u8] = b"\\N";

impl CopyLine<'_> {
    fn field(&mut self) -> &mut Vec<u8> {
        self.buf.push(b'\t');
        self.buf
    }
}

impl Columns for CopyLine<'_> {
    fn text(&mut self, _: &'static str, value: Option<&str>) {
        match value {
            Some(s) => copy_escaped(self.field(), s),
            None => self.field().extend_from_slice(NULL),
        }
    }

    fn bool(&mut self, _: &'static str, value: Option<bool>) {
        let text: &[u8] = match value {
            Some(true) => b"t",
            Some(false) => b"f",
            None => NULL,
        };
        self.field().extend_from_slice(text);
    }

    fn date(&mut self, _: &'static str, value: Option<NaiveDate>) {
        let buf = self.field();
        match value {
            Some(d) => {
                let _ = write!(buf, "{:04}-{:02}-{:02}", d.year(), d.month(), d.day());
            }
            None => buf.extend_from_slice(NULL),
        }
    }

    /// `YYYY-MM-DD HH:MM:SS[.f]+00`: PostgreSQL's ISO output in UTC, trailing zeros of the
    /// fraction dropped, as it prints them.
    fn timestamp(&mut self, _: &'static str, value: Option<DateTime<Utc>>) {
        let buf = self.field();
        let Some(t) = value else {
            buf.extend_from_slice(NULL);
            return;
        };
        let _ = write!(
            buf,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        let micros = t.timestamp_subsec_micros();
        if micros > 0 {
            let mut digits = format!("{micros:06}");
            while digits.ends_with('0') {
                digits.pop();
            }
            let _ = write!(buf, ".{digits}");
        }
        buf.extend_from_slice(b"+00");
    }

    /// PostgreSQL's `text[]` output (`{a,"b c"}`: an element is quoted when it is empty, is
    /// `NULL` in any case, or holds `"`, `\`, braces, a comma or white space), escaped again for
    /// the COPY layer.
    fn array(&mut self, _: &'static str, value: Option<&[String]>) {
        let Some(values) = value else {
            self.field().extend_from_slice(NULL);
            return;
        };
        let mut literal = String::from("{");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                literal.push(',');
            }
            let quote = v.is_empty()
                || v.eq_ignore_ascii_case("NULL")
                || v.chars().any(|c| {
                    matches!(
                        c,
                        '"' | '\\' | '{' | '}' | ',' | ' ' | '\t' | '\n' | '\r' | '\x0B' | '\x0C'
                    )
                });
            if quote {
                literal.push('"');
            }
            for c in v.chars() {
                if c == '"' || c == '\\' {
                    literal.push('\\');
                }
                literal.push(c);
            }
            if quote {
                literal.push('"');
            }
        }
        literal.push('}');
        copy_escaped(self.field(), &literal);
    }
}

/// A value in COPY text format: backslash and the control characters COPY names are escaped.
pub fn copy_escaped(buf: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            0x08 => buf.extend_from_slice(b"\\b"),
            0x0B => buf.extend_from_slice(b"\\v"),
            0x0C => buf.extend_from_slice(b"\\f"),
            _ => buf.push(b),
        }
    }
}

/// Decodes one COPY text field (for ids read back from `COPY ... TO STDOUT`).
pub fn unescape(field: &[u8]) -> String {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'b') => out.push(8),
            Some(b'f') => out.push(12),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'v') => out.push(11),
            Some(&other) => out.push(other),
            None => out.push(b'\\'),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A list of ids as COPY lines (one field each).
pub fn id_lines<S: AsRef<str>>(ids: &[S]) -> Vec<u8> {
    let mut buf = Vec::new();
    for id in ids {
        copy_escaped(&mut buf, id.as_ref());
        buf.push(b'\n');
    }
    buf
}

macro_rules! identity {
    ($entity:expr) => {
        const ENTITY: Entity = $entity;
        fn sourced_id(&self) -> &str {
            &self.sourced_id
        }
        fn status(&self) -> Status {
            self.status
        }
        fn modified(&self) -> Option<DateTime<Utc>> {
            self.source_modified_at
        }
    };
}

impl Stored for Org {
    identity!(Entity::Orgs);
    fn columns(&self, c: &mut impl Columns) {
        c.text("status", Some(self.status.as_str()));
        c.text("name", self.name.as_deref());
        c.text("type", self.org_type.as_deref());
        c.text("identifier", self.identifier.as_deref());
        c.text("parent_sourced_id", self.parent_sourced_id.as_deref());
        c.timestamp("source_modified_at", self.source_modified_at);
    }
}

impl Stored for AcademicSession {
    identity!(Entity::AcademicSessions);
    fn columns(&self, c: &mut impl Columns) {
        c.text("status", Some(self.status.as_str()));
        c.text("title", self.title.as_deref());
        c.text("type", self.session_type.as_deref());
        c.date("start_date", self.start_date);
        c.date("end_date", self.end_date);
        c.text("parent_sourced_id", self.parent_sourced_id.as_deref());
        c.text("school_year", self.school_year.as_deref());
        c.timestamp("source_modified_at", self.source_modified_at);
    }
}

impl Stored for Course {
    identity!(Entity::Courses);
    fn columns(&self, c: &mut impl Columns) {
        c.text("status", Some(self.status.as_str()));
        c.text("title", self.title.as_deref());
        c.text("course_code", self.course_code.as_deref());
        c.text("org_sourced_id", self.org_sourced_id.as_deref());
        c.timestamp("source_modified_at", self.source_modified_at);
    }
}

impl Stored for Class {
    identity!(Entity::Classes);
    fn columns(&self, c: &mut impl Columns) {
        c.text("status", Some(self.status.as_str()));
        c.text("title", self.title.as_deref());
        c.text("class_code", self.class_code.as_deref());
        c.text("class_type", self.class_type.as_deref());
        c.text("school_sourced_id", self.school_sourced_id.as_deref());
        c.text("course_sourced_id", self.course_sourced_id.as_deref());
        c.array("term_sourced_ids", Some(&self.term_sourced_ids));
        c.array("grades", Some(&self.grades));
        c.array("subjects", Some(&self.subjects));
        c.array("periods", Some(&self.periods));
        c.timestamp("source_modified_at", self.source_modified_at);
    }
}

impl Stored for User {
    identity!(Entity::Users);
    fn columns(&self, c: &mut impl Columns) {
        c.text("status", Some(self.status.as_str()));
        c.text("role", Some(&self.role));
        c.text("username", self.username.as_deref());
        c.text("email", self.email.as_deref());
        c.text("given_name", self.given_name.as_deref());
        c.text("family_name", self.family_name.as_deref());
        c.text("middle_name", self.middle_name.as_deref());
        c.text("identifier", self.identifier.as_deref());
        c.bool("enabled", self.enabled);
        c.array("grades", Some(&self.grades));
        c.array("org_sourced_ids", Some(&self.org_sourced_ids));
        let d = self.demographics;
        c.text("gender", d.gender());
        c.bool("hispanic_or_latino", d.hispanic_or_latino);
        c.array("races", d.races().as_deref());
        c.timestamp("source_modified_at", self.source_modified_at);
        c.text("preferred_first_name", self.preferred_first_name.as_deref());
        c.text(
            "preferred_middle_name",
            self.preferred_middle_name.as_deref(),
        );
        c.text("preferred_last_name", self.preferred_last_name.as_deref());
        c.text("pronouns", self.pronouns.as_deref());
        c.text(
            "primary_org_sourced_id",
            self.primary_org_sourced_id.as_deref(),
        );
        c.array("role_assignments", Some(&role_elements(&self.roles)));
        c.array("identifiers", Some(&identifier_elements(&self.identifiers)));
    }
}

/// A user's role assignments as `roster.users.role_assignments` holds them (and
/// `roster.user_roles` is derived from): one JSON array `[org, role, role_type, begin_date,
/// end_date]` per assignment, in the assignments' order.
pub fn role_elements(roles: &[crate::domain::RoleAssignment]) -> Vec<String> {
    roles
        .iter()
        .map(|a| {
            let date = |d: Option<NaiveDate>| d.map(|d| d.format("%Y-%m-%d").to_string());
            serde_json::json!([
                a.org_sourced_id,
                a.role,
                a.role_type,
                date(a.begin_date),
                date(a.end_date)
            ])
            .to_string()
        })
        .collect()
}

/// A user's identifiers as `roster.users.identifiers` holds them (and
/// `roster.user_identifiers` is derived from): one JSON array `[type, identifier]` each.
pub fn identifier_elements(ids: &[(String, String)]) -> Vec<String> {
    ids.iter()
        .map(|(t, id)| serde_json::json!([t, id]).to_string())
        .collect()
}

/// The role assignments back from their stored elements (unreadable ones are left out).
pub fn roles_from(elements: &[String]) -> Vec<crate::domain::RoleAssignment> {
    elements
        .iter()
        .filter_map(|e| {
            let v: Vec<Option<String>> = serde_json::from_str(e).ok()?;
            let get = |i: usize| v.get(i).cloned().flatten();
            let date =
                |i: usize| get(i).and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
            Some(crate::domain::RoleAssignment {
                org_sourced_id: get(0)?,
                role: get(1)?,
                role_type: get(2)?,
                begin_date: date(3),
                end_date: date(4),
            })
        })
        .collect()
}

/// The identifiers back from their stored elements.
pub fn identifiers_from(elements: &[String]) -> Vec<(String, String)> {
    elements
        .iter()
        .filter_map(|e| serde_json::from_str::<(String, String)>(e).ok())
        .collect()
}

impl Stored for Enrollment {
    identity!(Entity::Enrollments);
    fn columns(&self, c: &mut impl Columns) {
        c.text("status", Some(self.status.as_str()));
        c.text("user_sourced_id", Some(&self.user_sourced_id));
        c.text("class_sourced_id", Some(&self.class_sourced_id));
        c.text("school_sourced_id", self.school_sourced_id.as_deref());
        c.text("role", Some(&self.role));
        c.bool("is_primary", self.is_primary);
        c.date("begin_date", self.begin_date);
        c.date("end_date", self.end_date);
        c.timestamp("source_modified_at", self.source_modified_at);
    }
}

/// The columns a journal may show the values of: every column but the demographics, which it
/// names only.
pub const DEMOGRAPHIC_COLUMNS: [&str; 3] = ["gender", "hispanic_or_latino", "races"];

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn line<R: Stored>(row: &R) -> String {
        let mut buf = Vec::new();
        encode(row, &mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn text_escapes_specials_and_nulls() {
        let org = Org {
            sourced_id: "o\t1".into(),
            status: Status::Active,
            name: Some("A\\B\nC\u{8}".into()),
            identifier: Some(String::new()),
            ..Org::default()
        };
        assert_eq!(line(&org), "o\\t1\tactive\tA\\\\B\\nC\\b\t\\N\t\t\\N\t\\N");
    }

    #[test]
    fn arrays_and_timestamps_as_postgres_prints_them() {
        let class = Class {
            sourced_id: "c".into(),
            grades: vec!["09".into(), "".into(), "a b".into(), "null".into()],
            subjects: vec!["x\"y".into(), "c\\d".into(), "e,f".into()],
            source_modified_at: Some(
                Utc.with_ymd_and_hms(2026, 11, 20, 8, 30, 0).unwrap()
                    + chrono::Duration::microseconds(120_000),
            ),
            ..Class::default()
        };
        let text = line(&class);
        let fields: Vec<&str> = text.split('\t').collect();
        assert_eq!(fields[7], "{}");
        assert_eq!(fields[8], "{09,\"\",\"a b\",\"null\"}");
        // literal {"x\"y","c\\d","e,f"}, then COPY doubles each backslash
        assert_eq!(fields[9], "{\"x\\\\\"y\",\"c\\\\\\\\d\",\"e,f\"}");
        assert_eq!(fields[11], "2026-11-20 08:30:00.12+00");
        let whole = Class {
            source_modified_at: Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()),
            ..Class::default()
        };
        assert!(line(&whole).ends_with("\t2026-01-02 03:04:05+00"));
    }

    #[test]
    fn every_entity_has_status_first_and_its_own_columns() {
        for entity in Entity::ALL {
            assert_eq!(columns(entity)[0].name, "status", "{entity}");
        }
        assert_eq!(columns(Entity::Enrollments).len(), 9);
        assert_eq!(columns(Entity::Users)[1].name, "role");
        assert_eq!(
            column_list(Entity::Courses, "a."),
            "a.status, a.title, a.course_code, a.org_sourced_id, a.source_modified_at"
        );
    }

    #[test]
    fn ids_unescape() {
        assert_eq!(unescape(b"a\\tb\\\\c\\nd"), "a\tb\\c\nd");
    }
}
