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
    /// Joined from the demographics collection before the user is stored.
    pub demographics: Demo,
}

/// The stored gender values, in the order of [`Demo::gender`] codes 1..=4.
pub const GENDERS: [&str; 4] = ["male", "female", "other", "unspecified"];

/// The race flags kept, by stored name, sorted (bit `i` of [`Demo::races`] is `RACE_NAMES[i]`).
pub const RACE_NAMES: [&str; 5] = [
    "american_indian_or_alaska_native",
    "asian",
    "black_or_african_american",
    "native_hawaiian_or_other_pacific_islander",
    "white",
];

/// A user's imported demographics as stored on `roster.users`, in four bytes: a pull holds one
/// per user in memory until the user record arrives. `present == false` means no (or a
/// deleted) demographics record: gender, ethnicity and races are all stored NULL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demo {
    pub present: bool,
    /// 0 for NULL, else an index into [`GENDERS`] plus one.
    pub gender: u8,
    pub hispanic_or_latino: Option<bool>,
    /// Bit set over [`RACE_NAMES`].
    pub races: u8,
}

impl Demo {
    pub fn of(d: &Demographics) -> Demo {
        Demo {
            present: true,
            gender: d
                .gender
                .as_deref()
                .and_then(|g| GENDERS.iter().position(|x| *x == g))
                .map_or(0, |i| i as u8 + 1),
            hispanic_or_latino: d.hispanic_or_latino,
            races: races_bits(&d.races),
        }
    }

    pub fn gender(&self) -> Option<&'static str> {
        (self.gender as usize)
            .checked_sub(1)
            .and_then(|i| GENDERS.get(i).copied())
    }

    /// The stored `races` (sorted names of the true flags); `None` without a record.
    pub fn races(&self) -> Option<Vec<String>> {
        self.present.then(|| {
            RACE_NAMES
                .iter()
                .enumerate()
                .filter(|(i, _)| self.races & (1 << i) != 0)
                .map(|(_, name)| (*name).to_owned())
                .collect()
        })
    }
}

/// The bit set of the named races (unknown names are ignored).
pub fn races_bits<S: AsRef<str>>(names: &[S]) -> u8 {
    names
        .iter()
        .filter_map(|n| RACE_NAMES.iter().position(|r| *r == n.as_ref()))
        .fold(0, |bits, i| bits | (1 << i))
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
