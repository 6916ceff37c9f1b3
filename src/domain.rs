//! Domain records: what a OneRoster record means to the roster store, after normalization.
//!
//! These are plain data. They carry no demographics beyond gender and ethnicity: birth dates,
//! birthplaces and extension flags never reach a type in this module.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

/// The roster entity types the daemon stores, in the order they are pulled and applied
/// (referenced types first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    Orgs,
    AcademicSessions,
    Courses,
    Classes,
    Users,
    Enrollments,
}

impl Entity {
    pub const ALL: [Entity; 6] = [
        Entity::Orgs,
        Entity::AcademicSessions,
        Entity::Courses,
        Entity::Classes,
        Entity::Users,
        Entity::Enrollments,
    ];

    /// Name used in logs, run history and table names (`roster.<name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Orgs => "orgs",
            Entity::AcademicSessions => "academic_sessions",
            Entity::Courses => "courses",
            Entity::Classes => "classes",
            Entity::Users => "users",
            Entity::Enrollments => "enrollments",
        }
    }
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stored status. OneRoster `tobedeleted` (and legacy `inactive`) become `Deleted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Deleted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Org {
    pub sourced_id: String,
    pub status: Status,
    pub source_modified_at: Option<DateTime<Utc>>,
    pub name: Option<String>,
    pub org_type: Option<String>,
    pub identifier: Option<String>,
    pub parent_sourced_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AcademicSession {
    pub sourced_id: String,
    pub status: Status,
    pub source_modified_at: Option<DateTime<Utc>>,
    pub title: Option<String>,
    pub session_type: Option<String>,
    pub start_date: Option<NaiveDate>,
    pub end_date: Option<NaiveDate>,
    pub parent_sourced_id: Option<String>,
    pub school_year: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Course {
    pub sourced_id: String,
    pub status: Status,
    pub source_modified_at: Option<DateTime<Utc>>,
    pub title: Option<String>,
    pub course_code: Option<String>,
    pub org_sourced_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Class {
    pub sourced_id: String,
    pub status: Status,
    pub source_modified_at: Option<DateTime<Utc>>,
    pub title: Option<String>,
    pub class_code: Option<String>,
    pub class_type: Option<String>,
    pub school_sourced_id: Option<String>,
    pub course_sourced_id: Option<String>,
    pub term_sourced_ids: Vec<String>,
    pub grades: Vec<String>,
    pub subjects: Vec<String>,
    pub periods: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub sourced_id: String,
    pub status: Status,
    pub source_modified_at: Option<DateTime<Utc>>,
    /// OneRoster role vocabulary, lower case.
    pub role: String,
    pub username: Option<String>,
    pub email: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub middle_name: Option<String>,
    pub identifier: Option<String>,
    pub enabled: Option<bool>,
    pub grades: Vec<String>,
    pub org_sourced_ids: Vec<String>,
}

/// The only demographics the daemon keeps, keyed by the user's `sourcedId`.
#[derive(Debug, Clone, PartialEq)]
pub struct Demographics {
    pub user_sourced_id: String,
    /// `male`, `female`, `other`, `unspecified`, or `None` when absent or unrecognized.
    pub gender: Option<String>,
    pub hispanic_or_latino: Option<bool>,
    /// Sorted names of the race flags that are true.
    pub races: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Enrollment {
    pub sourced_id: String,
    pub status: Status,
    pub source_modified_at: Option<DateTime<Utc>>,
    pub user_sourced_id: String,
    pub class_sourced_id: String,
    pub school_sourced_id: Option<String>,
    /// OneRoster enrollment role vocabulary, lower case.
    pub role: String,
    pub is_primary: Option<bool>,
    pub begin_date: Option<NaiveDate>,
    pub end_date: Option<NaiveDate>,
}

/// A record left out of the snapshot because it cannot be used, reported by id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub entity: &'static str,
    /// The record's `sourcedId`, or a placeholder such as `<missing>` when it has none.
    pub sourced_id: String,
    pub reason: String,
}

/// Something odd about a record that was kept (e.g. an unrecognized `sex` value stored as NULL).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Warning {
    pub entity: &'static str,
    pub sourced_id: String,
    pub message: String,
}
