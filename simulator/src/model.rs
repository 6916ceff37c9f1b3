//! The district's records, typed, as the simulator stores them.
//!
//! Field names follow OneRoster 1.1 in snake_case, plus what 1.2 adds (a user's role
//! assignments, primary org, preferred names...); one district serves both wire versions.
//! Enumerated values that tests may want to bend (roles, types, sex) are [`Text`] so generated
//! values cost no allocation yet a test can plant any string. References hold only the target's
//! `sourcedId`; `href` and `type` are produced when the record is put on the wire.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A string that is usually a static literal (no allocation) but may be owned.
pub type Text = Cow<'static, str>;

/// Free-form JSON fields (`metadata`, or extra top-level fields flattened into the record).
pub type Fields = Map<String, Value>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    #[serde(rename = "tobedeleted")]
    ToBeDeleted,
    /// Legacy 1.0 value some servers still send; means the same as `tobedeleted`.
    Inactive,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::ToBeDeleted => "tobedeleted",
            Status::Inactive => "inactive",
        }
    }
}

/// The seven collections the simulator serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Collection {
    Orgs,
    AcademicSessions,
    Courses,
    Classes,
    Users,
    Enrollments,
    Demographics,
}

impl Collection {
    pub const ALL: [Collection; 7] = [
        Collection::Orgs,
        Collection::AcademicSessions,
        Collection::Courses,
        Collection::Classes,
        Collection::Users,
        Collection::Enrollments,
        Collection::Demographics,
    ];

    /// Path segment and envelope key of the collection.
    pub fn path(self) -> &'static str {
        match self {
            Collection::Orgs => "orgs",
            Collection::AcademicSessions => "academicSessions",
            Collection::Courses => "courses",
            Collection::Classes => "classes",
            Collection::Users => "users",
            Collection::Enrollments => "enrollments",
            Collection::Demographics => "demographics",
        }
    }

    /// Envelope key of a single-object response (`demographics` stays plural).
    pub fn singular(self) -> &'static str {
        match self {
            Collection::Orgs => "org",
            Collection::AcademicSessions => "academicSession",
            Collection::Courses => "course",
            Collection::Classes => "class",
            Collection::Users => "user",
            Collection::Enrollments => "enrollment",
            Collection::Demographics => "demographics",
        }
    }

    pub fn from_path(path: &str) -> Option<Collection> {
        Collection::ALL.into_iter().find(|c| c.path() == path)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Org {
    pub sourced_id: String,
    pub status: Status,
    pub date_last_modified: DateTime<Utc>,
    pub metadata: Fields,
    pub name: String,
    /// district, school, department, local, state, national
    pub org_type: Text,
    pub identifier: String,
    pub parent: Option<String>,
    pub children: Vec<String>,
    pub extra: Fields,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AcademicSession {
    pub sourced_id: String,
    pub status: Status,
    pub date_last_modified: DateTime<Utc>,
    pub metadata: Fields,
    pub title: String,
    /// schoolYear, semester, term, gradingPeriod
    pub session_type: Text,
    pub start_date: Option<NaiveDate>,
    pub end_date: Option<NaiveDate>,
    pub parent: Option<String>,
    pub children: Vec<String>,
    /// The ending year, as a string ("2027").
    pub school_year: String,
    pub extra: Fields,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Course {
    pub sourced_id: String,
    pub status: Status,
    pub date_last_modified: DateTime<Utc>,
    pub metadata: Fields,
    pub title: String,
    pub course_code: String,
    /// Reference to the school-year academic session.
    pub school_year: Option<String>,
    pub grades: Vec<Text>,
    pub subjects: Vec<Text>,
    /// Reference to the owning org.
    pub org: String,
    pub extra: Fields,
}

/// `periods` is an array in the spec, but some servers send a plain string.
#[derive(Clone, Debug, PartialEq)]
pub enum Periods {
    List(Vec<String>),
    Text(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Class {
    pub sourced_id: String,
    pub status: Status,
    pub date_last_modified: DateTime<Utc>,
    pub metadata: Fields,
    pub title: String,
    pub class_code: String,
    /// homeroom or scheduled
    pub class_type: Text,
    pub location: String,
    pub grades: Vec<Text>,
    pub subjects: Vec<Text>,
    pub course: String,
    pub school: String,
    pub terms: Vec<String>,
    pub subject_codes: Vec<Text>,
    pub periods: Periods,
    pub extra: Fields,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UserId {
    pub id_type: Text,
    pub identifier: String,
}

/// One of a user's role assignments (OneRoster 1.2 `roles[]`).
#[derive(Clone, Debug, PartialEq)]
pub struct RoleAssignment {
    /// primary or secondary; a user has exactly one primary assignment.
    pub role_type: Text,
    /// 1.2 vocabulary: aide, counselor, districtAdministrator, guardian, parent, principal,
    /// proctor, relative, siteAdministrator, student, systemAdministrator, teacher, or `ext:...`.
    pub role: Text,
    /// Reference to the org the role is held at.
    pub org: String,
    /// The `profileId` of one of the user's [`UserProfile`]s.
    pub user_profile: Option<String>,
    pub begin_date: Option<NaiveDate>,
    pub end_date: Option<NaiveDate>,
}

impl RoleAssignment {
    pub fn is_primary(&self) -> bool {
        self.role_type == "primary"
    }
}

/// The 1.1 `role` a 1.2 role is sent as: the administrative roles 1.2 split out of 1.1's
/// `administrator` go back to it; every other value (1.1 vocabulary, `ext:...`) is unchanged.
pub fn v1p1_role(role: &str) -> &str {
    match role {
        "districtAdministrator"
        | "siteAdministrator"
        | "principal"
        | "counselor"
        | "systemAdministrator" => "administrator",
        other => other,
    }
}

/// The 1.2 role a 1.1 `role` is sent as when a user has no role assignments (a record a test
/// built by hand): 1.2 has no `administrator`, a school's administrator is `siteAdministrator`.
pub fn v1p2_role(role: &str) -> &str {
    match role {
        "administrator" => "siteAdministrator",
        other => other,
    }
}

/// An account of the user in another system (OneRoster 1.2 `userProfiles[]`).
#[derive(Clone, Debug, PartialEq)]
pub struct UserProfile {
    pub profile_id: String,
    pub profile_type: Text,
    pub vendor_id: String,
    pub application_id: String,
    pub description: String,
    pub credentials: Vec<ProfileCredential>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProfileCredential {
    pub credential_type: Text,
    pub username: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub sourced_id: String,
    pub status: Status,
    pub date_last_modified: DateTime<Utc>,
    pub metadata: Fields,
    pub username: String,
    pub user_ids: Vec<UserId>,
    pub enabled_user: bool,
    pub given_name: String,
    pub family_name: String,
    pub middle_name: String,
    /// The 1.1 role (administrator, aide, guardian, parent, proctor, relative, student,
    /// teacher), as the 1.1 wire sends it; for generated users, [`v1p1_role`] of the primary
    /// role assignment.
    pub role: Text,
    pub identifier: String,
    pub email: String,
    pub sms: String,
    pub phone: String,
    /// References to other users (guardians...).
    pub agents: Vec<String>,
    /// References to orgs (schools); the 1.1 wire's `orgs`.
    pub orgs: Vec<String>,
    pub grades: Vec<Text>,
    pub password: String,
    // From here on, what 1.2 adds (the 1.1 wire sends none of it, unless
    // `SimConfig::v1p1_roles` asks for `roles`).
    /// Role assignments. Generated users have a primary one mirroring `role` and the first of
    /// `orgs`; when empty, the 1.2 wire derives that one from `role` and `orgs`.
    pub roles: Vec<RoleAssignment>,
    /// Reference to the user's primary org (`primaryOrg`).
    pub primary_org: Option<String>,
    pub user_profiles: Vec<UserProfile>,
    /// An empty string is an absent value, here and in the names and pronouns below.
    pub user_master_identifier: String,
    pub preferred_first_name: String,
    pub preferred_middle_name: String,
    pub preferred_last_name: String,
    pub pronouns: String,
    pub extra: Fields,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Enrollment {
    pub sourced_id: String,
    pub status: Status,
    pub date_last_modified: DateTime<Utc>,
    pub metadata: Fields,
    pub user: String,
    pub class: String,
    pub school: String,
    /// administrator, proctor, student, teacher
    pub role: Text,
    pub primary: bool,
    pub begin_date: Option<NaiveDate>,
    pub end_date: Option<NaiveDate>,
    pub extra: Fields,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Demographics {
    /// Same as the user's `sourcedId`.
    pub sourced_id: String,
    pub status: Status,
    pub date_last_modified: DateTime<Utc>,
    /// Extension flags live here (`ext_economically_disadvantaged`, `ext_504`, ...).
    pub metadata: Fields,
    pub birth_date: Option<NaiveDate>,
    pub sex: Text,
    pub american_indian_or_alaska_native: bool,
    pub asian: bool,
    pub black_or_african_american: bool,
    pub native_hawaiian_or_other_pacific_islander: bool,
    pub white: bool,
    pub demographic_race_two_or_more_races: bool,
    pub hispanic_or_latino_ethnicity: bool,
    pub country_of_birth_code: String,
    pub state_of_birth_abbreviation: String,
    pub city_of_birth: String,
    pub public_school_residence_status: String,
    pub extra: Fields,
}

/// What every stored record offers the server: identity, status and modification time.
pub trait Record {
    const COLLECTION: Collection;
    fn sourced_id(&self) -> &str;
    fn status(&self) -> Status;
    fn date_last_modified(&self) -> DateTime<Utc>;
}

macro_rules! impl_record {
    ($t:ty, $c:expr) => {
        impl Record for $t {
            const COLLECTION: Collection = $c;
            fn sourced_id(&self) -> &str {
                &self.sourced_id
            }
            fn status(&self) -> Status {
                self.status
            }
            fn date_last_modified(&self) -> DateTime<Utc> {
                self.date_last_modified
            }
        }
    };
}

impl_record!(Org, Collection::Orgs);
impl_record!(AcademicSession, Collection::AcademicSessions);
impl_record!(Course, Collection::Courses);
impl_record!(Class, Collection::Classes);
impl_record!(User, Collection::Users);
impl_record!(Enrollment, Collection::Enrollments);
impl_record!(Demographics, Collection::Demographics);

/// The whole district. Each collection is kept sorted by `sourced_id` (byte-wise); after a
/// test edits it through `SimHandle::with_data` the server re-sorts it.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub orgs: Vec<Org>,
    pub academic_sessions: Vec<AcademicSession>,
    pub courses: Vec<Course>,
    pub classes: Vec<Class>,
    pub users: Vec<User>,
    pub enrollments: Vec<Enrollment>,
    pub demographics: Vec<Demographics>,
    /// The simulated clock: the latest `dateLastModified` handed out so far.
    pub clock: DateTime<Utc>,
}

impl Dataset {
    /// A fresh modification time, strictly later than any handed out before.
    pub fn next_timestamp(&mut self) -> DateTime<Utc> {
        self.clock += chrono::Duration::seconds(60);
        self.clock
    }

    /// Restores the sorted-by-`sourced_id` invariant (cheap when already sorted).
    pub fn sort(&mut self) {
        fn sort_vec<R: Record>(v: &mut [R]) {
            if !v.is_sorted_by(|a, b| a.sourced_id() <= b.sourced_id()) {
                v.sort_unstable_by(|a, b| a.sourced_id().cmp(b.sourced_id()));
            }
        }
        sort_vec(&mut self.orgs);
        sort_vec(&mut self.academic_sessions);
        sort_vec(&mut self.courses);
        sort_vec(&mut self.classes);
        sort_vec(&mut self.users);
        sort_vec(&mut self.enrollments);
        sort_vec(&mut self.demographics);
    }

    /// Number of records in a collection.
    pub fn len(&self, collection: Collection) -> usize {
        match collection {
            Collection::Orgs => self.orgs.len(),
            Collection::AcademicSessions => self.academic_sessions.len(),
            Collection::Courses => self.courses.len(),
            Collection::Classes => self.classes.len(),
            Collection::Users => self.users.len(),
            Collection::Enrollments => self.enrollments.len(),
            Collection::Demographics => self.demographics.len(),
        }
    }

    pub fn user(&self, id: &str) -> Option<&User> {
        find(&self.users, id)
    }

    pub fn class(&self, id: &str) -> Option<&Class> {
        find(&self.classes, id)
    }

    pub fn demographics_of(&self, id: &str) -> Option<&Demographics> {
        find(&self.demographics, id)
    }
}

/// Binary search in a sorted collection.
pub fn find<'a, R: Record>(records: &'a [R], id: &str) -> Option<&'a R> {
    records
        .binary_search_by(|r| r.sourced_id().cmp(id))
        .ok()
        .map(|i| &records[i])
}
