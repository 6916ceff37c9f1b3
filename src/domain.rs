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

    /// Name used in logs, run history and the roster store's table names.
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
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

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Org {
    pub sourced_id: String,
    pub status: Status,
    pub source_modified_at: Option<DateTime<Utc>>,
    pub name: Option<String>,
    pub org_type: Option<String>,
    pub identifier: Option<String>,
    pub parent_sourced_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
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

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Course {
    pub sourced_id: String,
    pub status: Status,
    pub source_modified_at: Option<DateTime<Utc>>,
    pub title: Option<String>,
    pub course_code: Option<String>,
    pub org_sourced_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
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

#[derive(Debug, Clone, Default, PartialEq)]
pub struct User {
    pub sourced_id: String,
    pub status: Status,
    pub source_modified_at: Option<DateTime<Utc>>,
    /// OneRoster role vocabulary, in its own spelling (`teacher`, `siteAdministrator`).
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
    /// OneRoster 1.2 (empty from a 1.1 record).
    pub preferred_first_name: Option<String>,
    pub preferred_middle_name: Option<String>,
    pub preferred_last_name: Option<String>,
    pub pronouns: Option<String>,
    /// 1.2's `primaryOrg`; from 1.1, the user's only org when it has exactly one.
    pub primary_org_sourced_id: Option<String>,
    /// The user's role at each org, sorted by org and role: 1.2's `roles[]` (or a 1.1 record
    /// that carries one), else the 1.1 `role` at each of its orgs.
    pub roles: Vec<RoleAssignment>,
    /// `userIds[]`: (type, identifier), sorted, without duplicates.
    pub identifiers: Vec<(String, String)>,
}

/// A user's role at one org.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RoleAssignment {
    pub org_sourced_id: String,
    /// In the vocabulary's spelling (or an `ext:` value as sent).
    pub role: String,
    /// `primary` or `secondary`.
    pub role_type: String,
    pub begin_date: Option<NaiveDate>,
    pub end_date: Option<NaiveDate>,
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

/// A user's imported demographics as the roster store holds them, in four bytes: a pull holds one
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
    /// Demographics as stored: gender (one of [`GENDERS`] or NULL), ethnicity, race names.
    pub fn stored(
        gender: Option<&str>,
        hispanic_or_latino: Option<bool>,
        races: Option<&[String]>,
    ) -> Demo {
        Demo {
            present: races.is_some(),
            gender: gender
                .and_then(|g| GENDERS.iter().position(|x| *x == g))
                .map_or(0, |i| i as u8 + 1),
            hispanic_or_latino,
            races: races.map_or(0, races_bits),
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

/// The only demographics the daemon keeps, keyed by the user's `sourcedId` (a demographics
/// record's id is its user's). `demo.present` is false for a `tobedeleted` record: the user's
/// demographics are stored NULL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Demographics {
    pub user_sourced_id: String,
    pub demo: Demo,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Enrollment {
    pub sourced_id: String,
    pub status: Status,
    pub source_modified_at: Option<DateTime<Utc>>,
    pub user_sourced_id: String,
    pub class_sourced_id: String,
    pub school_sourced_id: Option<String>,
    /// OneRoster enrollment role vocabulary, in its own spelling.
    pub role: String,
    pub is_primary: Option<bool>,
    pub begin_date: Option<NaiveDate>,
    pub end_date: Option<NaiveDate>,
}

// ---------------------------------------------------------------------------------------------
// Findings: what was odd about a record, with a stable code.

/// How bad a finding is (CONTRACT §4): an *error* means the record cannot be used and is
/// skipped (its stored row stays as it was); a *warning* means it is stored and something in it
/// is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

macro_rules! codes {
    ($($variant:ident = $name:literal, $severity:ident, $meaning:literal, $fix:literal;)*) => {
        /// The stable code of a per-record finding. The names are part of the interface:
        /// operators filter logs and reports by them (the operator guide lists them all).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code { $($variant),* }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $name),* }
            }

            pub fn severity(self) -> Severity {
                match self { $(Code::$variant => Severity::$severity),* }
            }

            /// What the finding means, for the operator guide and the audit.
            pub fn meaning(self) -> &'static str {
                match self { $(Code::$variant => $meaning),* }
            }

            /// What the district usually fixes in its SIS.
            pub fn usual_fix(self) -> &'static str {
                match self { $(Code::$variant => $fix),* }
            }

            pub fn from_name(name: &str) -> Option<Code> {
                match name { $($name => Some(Code::$variant),)* _ => None }
            }
        }

        impl Code {
            /// The collection a reference finding is about (what must be complete for it to
            /// mean anything).
            pub fn target(self) -> Option<&'static str> {
                Some(match self {
                    Code::ClassCourseMissing | Code::ClassCourseDeleted => "courses",
                    Code::ClassSchoolMissing | Code::ClassSchoolDeleted => "orgs",
                    Code::ClassTermMissing | Code::ClassTermDeleted => "academic_sessions",
                    Code::UserOrgMissing | Code::UserOrgDeleted => "orgs",
                    Code::CourseOrgMissing | Code::CourseOrgDeleted => "orgs",
                    Code::OrgParentMissing => "orgs",
                    Code::SessionParentMissing => "academic_sessions",
                    Code::EnrollmentUserMissing | Code::DemographicsUserMissing => "users",
                    Code::EnrollmentClassMissing => "classes",
                    _ => return None,
                })
            }
        }
    };
}

codes! {
    RecordUnreadable = "record_unreadable", Error,
        "a field has a JSON type that cannot be read (an object where text belongs, ...); the message names the field",
        "the provider's export of that field (report it to the SIS or ClassLink)";
    SourcedIdMissing = "sourced_id_missing", Error,
        "the record has no sourcedId",
        "the record's id in the SIS";
    StatusMissing = "status_missing", Error,
        "the record has no status",
        "the provider's export (status is required by OneRoster)";
    StatusUnknown = "status_unknown", Error,
        "the status is neither active nor tobedeleted (nor the legacy inactive)",
        "the provider's export";
    DuplicateSourcedId = "duplicate_sourced_id", Error,
        "a second record with the same sourcedId in one pull; the first is kept",
        "duplicate records in the SIS or a provider paging fault";
    UserRoleMissing = "user_role_missing", Error,
        "a user without a role",
        "the user's role in the SIS";
    UserRoleUnknown = "user_role_unknown", Error,
        "a user whose role is not in the OneRoster vocabulary",
        "the user's role in the SIS (or its mapping in ClassLink)";
    EnrollmentWithoutUser = "enrollment_without_user", Error,
        "an enrollment without a user reference",
        "the enrollment in the SIS";
    EnrollmentWithoutClass = "enrollment_without_class", Error,
        "an enrollment without a class reference",
        "the enrollment in the SIS";
    EnrollmentRoleMissing = "enrollment_role_missing", Error,
        "an enrollment without a role",
        "the enrollment's role in the SIS";
    EnrollmentRoleUnknown = "enrollment_role_unknown", Error,
        "an enrollment whose role is not in the OneRoster vocabulary",
        "the enrollment's role in the SIS";
    EnrollmentUserMissing = "enrollment_user_missing", Error,
        "an enrollment whose user is not in the snapshot (not shared with the app, or removed)",
        "the user's sharing in ClassLink, or the stale enrollment in the SIS";
    EnrollmentClassMissing = "enrollment_class_missing", Error,
        "an enrollment whose class is not in the snapshot",
        "the class's sharing in ClassLink, or the stale enrollment in the SIS";
    ClassCourseMissing = "class_course_missing", Warning,
        "a class whose course is not in the snapshot (often a course not shared with the app); stored with the reference as sent",
        "share the course with the app in ClassLink, or fix the class's course in the SIS";
    ClassCourseDeleted = "class_course_deleted", Warning,
        "a class whose course is tobedeleted; stored with the reference as sent",
        "the class's course in the SIS";
    ClassSchoolMissing = "class_school_missing", Warning,
        "a class whose school is not in the snapshot (often a school outside the app's permissions); stored",
        "the school's sharing in ClassLink, or the class's school in the SIS";
    ClassSchoolDeleted = "class_school_deleted", Warning,
        "a class whose school is tobedeleted; stored",
        "the class's school in the SIS";
    ClassTermMissing = "class_term_missing", Warning,
        "a class with a term that is not in the snapshot; stored",
        "the class's terms in the SIS";
    ClassTermDeleted = "class_term_deleted", Warning,
        "a class with a term that is tobedeleted; stored",
        "the class's terms in the SIS (a closed term still referenced)";
    UserRoleEntryUnusable = "user_role_entry_unusable", Warning,
        "a roles[] entry without an org, or whose role is outside the vocabulary; left out (the user is stored with its other roles)",
        "the user's role assignments in the SIS";
    UserOrgMissing = "user_org_missing", Warning,
        "a user with an org that is not in the snapshot; stored",
        "the org's sharing in ClassLink, or the user's schools in the SIS";
    UserOrgDeleted = "user_org_deleted", Warning,
        "a user with an org that is tobedeleted; stored",
        "the user's schools in the SIS";
    CourseOrgMissing = "course_org_missing", Warning,
        "a course whose org is not in the snapshot; stored",
        "the course's org in the SIS";
    CourseOrgDeleted = "course_org_deleted", Warning,
        "a course whose org is tobedeleted; stored",
        "the course's org in the SIS";
    OrgParentMissing = "org_parent_missing", Warning,
        "an org whose parent org is not in the snapshot; stored",
        "the org hierarchy in the SIS";
    SessionParentMissing = "session_parent_missing", Warning,
        "an academic session whose parent session is not in the snapshot; stored",
        "the calendar in the SIS";
    DateUnparseable = "date_unparseable", Warning,
        "a date or timestamp that is not ISO 8601; stored as NULL (the message names the field)",
        "the date's format in the provider's export";
    ClassTypeUnknown = "class_type_unknown", Warning,
        "a classType outside the vocabulary (homeroom, scheduled); stored as sent",
        "the class type in the SIS";
    OrgTypeUnknown = "org_type_unknown", Warning,
        "an org type outside the vocabulary (department, district, local, national, school, state); stored as sent",
        "the org type in the SIS";
    SessionTypeUnknown = "session_type_unknown", Warning,
        "an academic session type outside the vocabulary (gradingPeriod, schoolYear, semester, term); stored as sent",
        "the session type in the SIS";
    SexUnknown = "sex_unknown", Warning,
        "a demographics sex value outside male/female/other/unspecified and their usual spellings; gender stored as NULL (the value is never shown)",
        "the student's sex in the SIS";
    DemographicsUserMissing = "demographics_user_missing", Warning,
        "demographics for a user that is not in the snapshot; nothing is stored for it",
        "the user's sharing in ClassLink, or the stale demographics record";
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One thing found in one record (CONTRACT §4). Messages name fields and ids, never a value
/// the record holds (it may be personal data).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub code: Code,
    pub severity: Severity,
    /// The collection: an [`Entity`] name or `demographics`.
    pub entity: &'static str,
    /// The record's `sourcedId`, or `<missing>` when it has none.
    pub sourced_id: String,
    pub message: String,
}

impl Finding {
    pub fn new(
        code: Code,
        entity: &'static str,
        sourced_id: impl Into<String>,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            code,
            severity: code.severity(),
            entity,
            sourced_id: sourced_id.into(),
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The placeholder id of a record without one.
pub const MISSING_ID: &str = "<missing>";

/// Sample ids kept per code and entity in run summaries, the history and the audit.
pub const FINDING_SAMPLES: usize = 10;

/// Findings counted per code and collection, with the first ids in `sourcedId` order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FindingSummary {
    counts: std::collections::BTreeMap<(Code, &'static str), FindingCount>,
}

/// One code's findings in one collection.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct FindingCount {
    #[serde(with = "code_name")]
    pub code: Code,
    pub severity: Severity,
    pub entity: String,
    pub count: u64,
    pub samples: Vec<String>,
}

mod code_name {
    use super::Code;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(code: &Code, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(code.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Code, D::Error> {
        let name = String::deserialize(d)?;
        Code::from_name(&name).ok_or_else(|| serde::de::Error::custom("unknown finding code"))
    }
}

impl<'de> serde::Deserialize<'de> for Severity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Severity, D::Error> {
        match String::deserialize(d)?.as_str() {
            "error" => Ok(Severity::Error),
            "warning" => Ok(Severity::Warning),
            _ => Err(serde::de::Error::custom("unknown severity")),
        }
    }
}

impl FindingSummary {
    pub fn add(&mut self, f: &Finding) {
        let entry = self
            .counts
            .entry((f.code, f.entity))
            .or_insert_with(|| FindingCount {
                code: f.code,
                severity: f.severity,
                entity: f.entity.to_owned(),
                count: 0,
                samples: Vec::new(),
            });
        entry.count += 1;
        let samples = &mut entry.samples;
        if samples.len() < FINDING_SAMPLES || samples.last().is_some_and(|l| f.sourced_id < *l) {
            let at = samples.partition_point(|s| *s < f.sourced_id);
            if samples.get(at) != Some(&f.sourced_id) {
                samples.insert(at, f.sourced_id.clone());
                samples.truncate(FINDING_SAMPLES);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn count(&self, severity: Severity) -> u64 {
        self.counts
            .values()
            .filter(|c| c.severity == severity)
            .map(|c| c.count)
            .sum()
    }

    /// Findings per code, over every collection.
    pub fn per_code(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let mut out = std::collections::BTreeMap::new();
        for ((code, _), c) in &self.counts {
            *out.entry(code.as_str()).or_default() += c.count;
        }
        out
    }

    /// Errors first, then warnings; by code, then collection.
    pub fn entries(&self) -> Vec<FindingCount> {
        let mut out: Vec<FindingCount> = self.counts.values().cloned().collect();
        out.sort_by(|a, b| (a.severity, a.code, &a.entity).cmp(&(b.severity, b.code, &b.entity)));
        out
    }

    /// The count of one code in one collection.
    pub fn get(&self, code: Code, entity: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((c, e), _)| *c == code && *e == entity)
            .map(|(_, c)| c.count)
            .sum()
    }
}

impl Serialize for FindingSummary {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.entries().serialize(s)
    }
}

impl Entity {
    /// The entity of a collection name (`None` for `demographics`).
    pub fn from_name(name: &str) -> Option<Entity> {
        Entity::ALL.into_iter().find(|e| e.as_str() == name)
    }
}
