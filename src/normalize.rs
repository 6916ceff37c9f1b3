//! Wire records to domain records: pure functions, one per type, that read leniently and store
//! canonically (CONTRACT §4).
//!
//! A record is skipped (an *error* finding) only when it cannot be used: no `sourcedId`, no
//! known `status`, for users a `role` in the vocabulary, for enrollments `user`, `class` and
//! `role`. Anything else odd is kept and reported as a *warning*: a bad date becomes NULL, an
//! unrecognized `sex` becomes NULL, a type outside its vocabulary is stored as sent.
//!
//! The canonical form: optional text is trimmed, `""` is absent and NUL characters (which
//! PostgreSQL cannot store) are dropped; set-like lists are sorted and deduplicated, so the
//! order a server sends them in never changes a row; vocabulary values are matched
//! case-insensitively and stored in the vocabulary's own spelling (`Scheduled` is `scheduled`,
//! `siteadministrator` is `siteAdministrator`); OneRoster 1.2 extension values (`ext:...`) are
//! kept as sent; date-times are ISO 8601 with or without `T`, with or without a zone (none is
//! UTC), or a bare date. Findings name fields, never a field's value.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SubsecRound, Utc};

use crate::domain::{
    AcademicSession, Class, Code, Course, Demo, Demographics, Enrollment, Finding, GENDERS,
    MISSING_ID, Org, RACE_NAMES, RoleAssignment, Status, User,
};
use crate::oneroster::wire;

/// Result of normalizing one record: the record and its warnings, or the error that skips it.
pub type Normalized<T> = Result<(T, Vec<Finding>), Finding>;

/// User roles: OneRoster 1.1, then the 1.2 additions, in the specification's spelling.
pub const USER_ROLES: &[&str] = &[
    "administrator",
    "aide",
    "guardian",
    "parent",
    "proctor",
    "relative",
    "student",
    "teacher",
    // OneRoster 1.2
    "counselor",
    "districtAdministrator",
    "principal",
    "siteAdministrator",
    "systemAdministrator",
];

/// Enrollment roles: OneRoster 1.1 (administrator, proctor, student, teacher), plus the roles
/// 1.2 allows on an enrollment.
pub const ENROLLMENT_ROLES: &[&str] = &[
    "administrator",
    "proctor",
    "student",
    "teacher",
    // OneRoster 1.2
    "aide",
    "counselor",
    "districtAdministrator",
    "guardian",
    "parent",
    "principal",
    "relative",
    "siteAdministrator",
    "systemAdministrator",
];

pub const ORG_TYPES: &[&str] = &[
    "department",
    "district",
    "local",
    "national",
    "school",
    "state",
];
pub const SESSION_TYPES: &[&str] = &["gradingPeriod", "schoolYear", "semester", "term"];
pub const CLASS_TYPES: &[&str] = &["homeroom", "scheduled"];

/// A value read against a vocabulary.
#[derive(Debug, PartialEq)]
enum Vocab {
    Absent,
    /// In the vocabulary (its spelling), or an `ext:` extension value (as sent).
    Known(String),
    /// Outside the vocabulary, as sent (trimmed).
    Other(String),
}

fn vocabulary(value: Option<String>, words: &[&'static str]) -> Vocab {
    let Some(value) = text(value) else {
        return Vocab::Absent;
    };
    if let Some(word) = words.iter().find(|w| w.eq_ignore_ascii_case(&value)) {
        return Vocab::Known((*word).to_owned());
    }
    // Bytes, not `str`: a character may straddle byte 4 (`abcé`).
    if value.len() > 4 && value.as_bytes()[..4].eq_ignore_ascii_case(b"ext:") {
        return Vocab::Known(value);
    }
    Vocab::Other(value)
}

/// Identity and common fields of one record, collecting warnings as the fields are read.
struct Record {
    entity: &'static str,
    sourced_id: String,
    status: Status,
    findings: Vec<Finding>,
}

impl Record {
    fn open(
        entity: &'static str,
        sourced_id: Option<String>,
        status: Option<String>,
    ) -> Result<Record, Finding> {
        let sourced_id = match sourced_id.map(strip_nul) {
            Some(id) if !id.trim().is_empty() => id,
            _ => {
                return Err(Finding::new(
                    Code::SourcedIdMissing,
                    entity,
                    MISSING_ID,
                    "the record has no sourcedId",
                ));
            }
        };
        let error = |code, message: &str| Finding::new(code, entity, sourced_id.clone(), message);
        let status = match text(status) {
            None => return Err(error(Code::StatusMissing, "the record has no status")),
            Some(s) if s.eq_ignore_ascii_case("active") => Status::Active,
            Some(s)
                if s.eq_ignore_ascii_case("tobedeleted") || s.eq_ignore_ascii_case("inactive") =>
            {
                Status::Deleted
            }
            Some(_) => {
                return Err(error(
                    Code::StatusUnknown,
                    "status is not active or tobedeleted",
                ));
            }
        };
        Ok(Record {
            entity,
            sourced_id,
            status,
            findings: Vec::new(),
        })
    }

    fn error(&self, code: Code, message: &str) -> Finding {
        Finding::new(code, self.entity, self.sourced_id.clone(), message)
    }

    fn warn(&mut self, code: Code, message: String) {
        let finding = self.error(code, &message);
        self.findings.push(finding);
    }

    /// A vocabulary value: its spelling, or the value as sent with a warning.
    fn typed(
        &mut self,
        field: &str,
        value: Option<String>,
        words: &[&'static str],
        code: Code,
    ) -> Option<String> {
        match vocabulary(value, words) {
            Vocab::Absent => None,
            Vocab::Known(v) => Some(v),
            Vocab::Other(v) => {
                self.warn(
                    code,
                    format!(
                        "field `{field}` is outside the vocabulary ({}); stored as sent",
                        words.join(", ")
                    ),
                );
                Some(v)
            }
        }
    }

    fn modified(&mut self, value: Option<String>) -> Option<DateTime<Utc>> {
        let value = text(value)?;
        let parsed = parse_timestamp(&value);
        if parsed.is_none() {
            self.warn(
                Code::DateUnparseable,
                "field `dateLastModified` is not an ISO 8601 date-time; stored as NULL".into(),
            );
        }
        parsed
    }

    fn date(&mut self, field: &str, value: Option<String>) -> Option<NaiveDate> {
        let value = text(value)?;
        let parsed = parse_date(&value);
        if parsed.is_none() {
            self.warn(
                Code::DateUnparseable,
                format!("field `{field}` is not an ISO 8601 date; stored as NULL"),
            );
        }
        parsed
    }

    fn done<T>(self, record: T) -> Normalized<T> {
        Ok((record, self.findings))
    }
}

/// A date-time in ISO 8601: with `T` or a space, with a zone (`Z`, `+hh:mm`, `+hhmm`) or
/// without one (UTC), with or without seconds and fractions, or a bare date (its midnight,
/// UTC). Rounded to the microseconds the store keeps, so a row read back hashes alike.
pub fn parse_timestamp(value: &str) -> Option<DateTime<Utc>> {
    let value = value.trim();
    if let Some(t) = common_timestamp(value.as_bytes()) {
        return Some(t);
    }
    let (date, time) = match value.find(['T', 't', ' ']) {
        Some(i) => (&value[..i], value[i + 1..].trim()),
        None => (value, ""),
    };
    let date = iso_date(date)?;
    if !(1..=9999).contains(&chrono::Datelike::year(&date)) {
        return None;
    }
    if time.is_empty() {
        return Some(date.and_time(NaiveTime::MIN).and_utc());
    }
    let joined = format!("{date}T{time}");
    let utc = if time.ends_with(['Z', 'z']) {
        NaiveDateTime::parse_from_str(&joined[..joined.len() - 1], "%Y-%m-%dT%H:%M:%S%.f")
            .or_else(|_| {
                NaiveDateTime::parse_from_str(&joined[..joined.len() - 1], "%Y-%m-%dT%H:%M")
            })
            .ok()
            .map(|t| t.and_utc())
    } else if time.contains(['+', '-']) {
        DateTime::parse_from_str(&joined, "%Y-%m-%dT%H:%M:%S%.f%#z")
            .or_else(|_| DateTime::parse_from_str(&joined, "%Y-%m-%dT%H:%M%#z"))
            .ok()
            .map(|t| t.with_timezone(&Utc))
    } else {
        NaiveDateTime::parse_from_str(&joined, "%Y-%m-%dT%H:%M:%S%.f")
            .or_else(|_| NaiveDateTime::parse_from_str(&joined, "%Y-%m-%dT%H:%M"))
            .ok()
            .map(|t| t.and_utc())
    }?;
    Some(utc.round_subsecs(6))
}

/// A date: `YYYY-MM-DD`, or a date-time (its own calendar date).
pub fn parse_date(value: &str) -> Option<NaiveDate> {
    let value = value.trim();
    let date_part = value.get(..10).unwrap_or(value);
    let date = iso_date(date_part)?;
    if !(1..=9999).contains(&chrono::Datelike::year(&date)) {
        return None;
    }
    if value.len() == 10 || parse_timestamp(value).is_some() {
        Some(date)
    } else {
        None
    }
}

/// `YYYY-MM-DD` (chrono's reading of it, which also takes unpadded months and days; the common
/// form is read without it).
fn iso_date(value: &str) -> Option<NaiveDate> {
    common_date(value.as_bytes()).or_else(|| NaiveDate::parse_from_str(value, "%Y-%m-%d").ok())
}

/// The value of a run of ASCII digits.
fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
    })
}

/// `YYYY-MM-DD`, zero-padded, year 1 to 9999: most dates, read without chrono's format parser
/// (a few percent of an unchanged pull's CPU).
fn common_date(b: &[u8]) -> Option<NaiveDate> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = digits(&b[0..4])?;
    if year == 0 {
        return None;
    }
    NaiveDate::from_ymd_opt(year as i32, digits(&b[5..7])?, digits(&b[8..10])?)
}

/// `YYYY-MM-DDTHH:MM:SS[.f]Z`, what ClassLink and most servers send for `dateLastModified`;
/// anything else (and a leap second) is left to the general reader, which gives the same
/// value for this form.
fn common_timestamp(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[b.len() - 1] != b'Z' {
        return None;
    }
    let date = common_date(&b[..10])?;
    let (h, m, s) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => {
            digits(frac)? * 10u32.pow(9 - frac.len() as u32)
        }
        _ => return None,
    };
    let time = NaiveTime::from_hms_nano_opt(h, m, s, nanos)?;
    Some(date.and_time(time).and_utc().round_subsecs(6))
}

fn strip_nul(value: String) -> String {
    if value.contains('\0') {
        value.replace('\0', "")
    } else {
        value
    }
}

/// Optional text: NUL-free, trimmed, empty is absent.
fn text(value: Option<String>) -> Option<String> {
    let value = strip_nul(value?);
    let trimmed = value.trim();
    if trimmed.is_empty() {
        None
    } else if trimmed.len() == value.len() {
        Some(value)
    } else {
        Some(trimmed.to_owned())
    }
}

/// A set-like list: NUL-free, trimmed, sorted, without duplicates or empty items.
fn set(values: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = values.into_iter().filter_map(|v| text(Some(v))).collect();
    out.sort_unstable();
    out.dedup();
    out
}

pub fn org(w: wire::Org) -> Normalized<Org> {
    let mut r = Record::open("orgs", w.sourced_id, w.status)?;
    let org = Org {
        source_modified_at: r.modified(w.date_last_modified),
        name: text(w.name),
        org_type: r.typed("type", w.org_type, ORG_TYPES, Code::OrgTypeUnknown),
        identifier: text(w.identifier),
        parent_sourced_id: text(w.parent),
        sourced_id: r.sourced_id.clone(),
        status: r.status,
    };
    r.done(org)
}

pub fn academic_session(w: wire::AcademicSession) -> Normalized<AcademicSession> {
    let mut r = Record::open("academic_sessions", w.sourced_id, w.status)?;
    let session = AcademicSession {
        source_modified_at: r.modified(w.date_last_modified),
        title: text(w.title),
        session_type: r.typed(
            "type",
            w.session_type,
            SESSION_TYPES,
            Code::SessionTypeUnknown,
        ),
        start_date: r.date("startDate", w.start_date),
        end_date: r.date("endDate", w.end_date),
        parent_sourced_id: text(w.parent),
        school_year: text(w.school_year),
        sourced_id: r.sourced_id.clone(),
        status: r.status,
    };
    r.done(session)
}

pub fn course(w: wire::Course) -> Normalized<Course> {
    let mut r = Record::open("courses", w.sourced_id, w.status)?;
    let course = Course {
        source_modified_at: r.modified(w.date_last_modified),
        title: text(w.title),
        course_code: text(w.course_code),
        org_sourced_id: text(w.org),
        sourced_id: r.sourced_id.clone(),
        status: r.status,
    };
    r.done(course)
}

pub fn class(w: wire::Class) -> Normalized<Class> {
    let mut r = Record::open("classes", w.sourced_id, w.status)?;
    let class = Class {
        source_modified_at: r.modified(w.date_last_modified),
        title: text(w.title),
        class_code: text(w.class_code),
        class_type: r.typed(
            "classType",
            w.class_type,
            CLASS_TYPES,
            Code::ClassTypeUnknown,
        ),
        school_sourced_id: text(w.school),
        course_sourced_id: text(w.course),
        term_sourced_ids: set(w.terms),
        grades: set(w.grades),
        subjects: set(w.subjects),
        periods: set(w.periods),
        sourced_id: r.sourced_id.clone(),
        status: r.status,
    };
    r.done(class)
}

pub fn user(w: wire::User) -> Normalized<User> {
    let mut r = Record::open("users", w.sourced_id, w.status)?;
    let primary_entry = w.roles.iter().find(|entry| {
        entry
            .role_type
            .as_deref()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("primary"))
    });
    // 1.1 `role`; failing that, the 1.2 `roles[]` primary role (or the first one).
    let role = match vocabulary(w.role, USER_ROLES) {
        Vocab::Absent => primary_entry
            .or(w.roles.first())
            .map_or(Vocab::Absent, |entry| {
                vocabulary(entry.role.clone(), USER_ROLES)
            }),
        sent => sent,
    };
    let role = match role {
        Vocab::Known(role) => role,
        Vocab::Other(_) => {
            return Err(r.error(
                Code::UserRoleUnknown,
                "role is not in the OneRoster vocabulary",
            ));
        }
        Vocab::Absent => return Err(r.error(Code::UserRoleMissing, "the user has no role")),
    };
    let roles = if w.roles.is_empty() {
        // 1.1: the one role at each of the user's orgs.
        set(w.orgs.clone())
            .into_iter()
            .map(|org| RoleAssignment {
                org_sourced_id: org,
                role: role.clone(),
                role_type: "primary".into(),
                begin_date: None,
                end_date: None,
            })
            .collect()
    } else {
        role_assignments(&mut r, w.roles)
    };
    let mut orgs = w.orgs;
    orgs.extend(roles.iter().map(|a| a.org_sourced_id.clone()));
    orgs.extend(w.primary_org.clone());
    let org_sourced_ids = set(orgs);
    let primary_org_sourced_id = text(w.primary_org).or_else(|| match org_sourced_ids.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    });
    let mut identifiers: Vec<(String, String)> = w
        .user_ids
        .into_iter()
        .filter_map(|id| Some((text(id.id_type).unwrap_or_default(), text(id.identifier)?)))
        .collect();
    identifiers.sort();
    identifiers.dedup();
    let user = User {
        source_modified_at: r.modified(w.date_last_modified),
        role,
        username: text(w.username),
        email: text(w.email),
        given_name: text(w.given_name),
        family_name: text(w.family_name),
        middle_name: text(w.middle_name),
        identifier: text(w.identifier),
        enabled: w.enabled_user,
        grades: set(w.grades),
        org_sourced_ids,
        demographics: Demo::default(),
        preferred_first_name: text(w.preferred_first_name),
        preferred_middle_name: text(w.preferred_middle_name),
        preferred_last_name: text(w.preferred_last_name),
        pronouns: text(w.pronouns),
        primary_org_sourced_id,
        roles,
        identifiers,
        sourced_id: r.sourced_id.clone(),
        status: r.status,
    };
    r.done(user)
}

/// A `roles[]` array as stored: one assignment per (org, role), the primary one kept when an
/// org lists a role twice, sorted; unusable entries left out with a warning.
fn role_assignments(r: &mut Record, entries: Vec<wire::RoleEntry>) -> Vec<RoleAssignment> {
    let mut out: Vec<RoleAssignment> = Vec::new();
    let mut unusable = 0;
    for entry in entries {
        let (Some(org), Vocab::Known(role)) = (text(entry.org), vocabulary(entry.role, USER_ROLES))
        else {
            unusable += 1;
            continue;
        };
        let role_type = match vocabulary(entry.role_type, &["primary", "secondary"]) {
            Vocab::Known(t) | Vocab::Other(t) => t,
            Vocab::Absent => "secondary".into(),
        };
        out.push(RoleAssignment {
            org_sourced_id: org,
            role,
            role_type,
            begin_date: r.date("roles.beginDate", entry.begin_date),
            end_date: r.date("roles.endDate", entry.end_date),
        });
    }
    if unusable > 0 {
        r.warn(
            Code::UserRoleEntryUnusable,
            format!("{unusable} roles[] entries without an org or with a role outside the vocabulary left out"),
        );
    }
    // Primary before secondary for the same (org, role), then one of each.
    out.sort_by(|a, b| {
        (&a.org_sourced_id, &a.role, a.role_type != "primary").cmp(&(
            &b.org_sourced_id,
            &b.role,
            b.role_type != "primary",
        ))
    });
    out.dedup_by(|b, a| a.org_sourced_id == b.org_sourced_id && a.role == b.role);
    out
}

pub fn enrollment(w: wire::Enrollment) -> Normalized<Enrollment> {
    let mut r = Record::open("enrollments", w.sourced_id, w.status)?;
    let Some(user_sourced_id) = text(w.user) else {
        return Err(r.error(
            Code::EnrollmentWithoutUser,
            "the enrollment has no user reference",
        ));
    };
    let Some(class_sourced_id) = text(w.class) else {
        return Err(r.error(
            Code::EnrollmentWithoutClass,
            "the enrollment has no class reference",
        ));
    };
    let role = match vocabulary(w.role, ENROLLMENT_ROLES) {
        Vocab::Known(role) => role,
        Vocab::Other(_) => {
            return Err(r.error(
                Code::EnrollmentRoleUnknown,
                "role is not in the OneRoster vocabulary",
            ));
        }
        Vocab::Absent => {
            return Err(r.error(Code::EnrollmentRoleMissing, "the enrollment has no role"));
        }
    };
    let enrollment = Enrollment {
        source_modified_at: r.modified(w.date_last_modified),
        user_sourced_id,
        class_sourced_id,
        school_sourced_id: text(w.school),
        role,
        is_primary: w.primary,
        begin_date: r.date("beginDate", w.begin_date),
        end_date: r.date("endDate", w.end_date),
        sourced_id: r.sourced_id.clone(),
        status: r.status,
    };
    r.done(enrollment)
}

/// The gender and ethnicity of one user (keyed by the demographics `sourcedId`, which is the
/// user's). A `tobedeleted` record means the user has no demographics.
pub fn demographics(w: wire::Demographics) -> Normalized<Demographics> {
    let mut r = Record::open("demographics", w.sourced_id, w.status)?;
    if r.status == Status::Deleted {
        let record = Demographics {
            user_sourced_id: r.sourced_id.clone(),
            demo: Demo::default(),
        };
        return r.done(record);
    }
    let gender = match text(w.sex).map(|s| s.to_ascii_lowercase()) {
        None => None,
        Some(sex) => match sex.as_str() {
            "male" | "m" => Some("male"),
            "female" | "f" => Some("female"),
            "other" | "x" | "o" | "nonbinary" | "non-binary" => Some("other"),
            "unspecified" | "notspecified" | "unknown" | "u" => Some("unspecified"),
            _ => {
                // The value itself is personal data: name the field only.
                r.warn(
                    Code::SexUnknown,
                    "field `sex` is outside male/female/other/unspecified; gender stored as NULL"
                        .into(),
                );
                None
            }
        },
    };
    let flags = [
        w.american_indian_or_alaska_native,
        w.asian,
        w.black_or_african_american,
        w.native_hawaiian_or_other_pacific_islander,
        w.white,
    ];
    // Bit i is RACE_NAMES[i]; the flags above are in that order.
    debug_assert_eq!(flags.len(), RACE_NAMES.len());
    let races = flags
        .iter()
        .enumerate()
        .filter(|(_, flag)| **flag == Some(true))
        .fold(0u8, |bits, (i, _)| bits | (1 << i));
    let record = Demographics {
        user_sourced_id: r.sourced_id.clone(),
        demo: Demo {
            present: true,
            gender: gender
                .and_then(|g| GENDERS.iter().position(|x| *x == g))
                .map_or(0, |i| i as u8 + 1),
            hispanic_or_latino: w.hispanic_or_latino_ethnicity,
            races,
        },
    };
    r.done(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    fn user_w(role: &str) -> wire::User {
        wire::User {
            sourced_id: some("u1"),
            status: some("active"),
            role: some(role),
            ..Default::default()
        }
    }

    fn enrollment_w() -> wire::Enrollment {
        wire::Enrollment {
            sourced_id: some("e1"),
            status: some("active"),
            user: some("u1"),
            class: some("c1"),
            role: some("student"),
            ..Default::default()
        }
    }

    fn codes(findings: &[Finding]) -> Vec<Code> {
        findings.iter().map(|f| f.code).collect()
    }

    #[test]
    fn status_mapping_and_errors() {
        for (status, want) in [
            ("active", Status::Active),
            ("ACTIVE", Status::Active),
            ("tobedeleted", Status::Deleted),
            ("toBeDeleted", Status::Deleted),
            ("inactive", Status::Deleted),
        ] {
            let w = wire::Org {
                sourced_id: some("o"),
                status: some(status),
                ..Default::default()
            };
            assert_eq!(org(w).unwrap().0.status, want, "{status}");
        }
        for (status, code) in [
            (None, Code::StatusMissing),
            (some(""), Code::StatusMissing),
            (some("archived"), Code::StatusUnknown),
        ] {
            let w = wire::Org {
                sourced_id: some("o"),
                status,
                ..Default::default()
            };
            let f = org(w).unwrap_err();
            assert_eq!(
                (f.code, f.entity, f.sourced_id.as_str()),
                (code, "orgs", "o")
            );
            assert!(f.is_error());
        }
    }

    #[test]
    fn missing_sourced_id_is_an_error_with_a_placeholder_id() {
        for id in [None, some(""), some("  "), some("\0")] {
            let w = wire::Course {
                sourced_id: id,
                status: some("active"),
                ..Default::default()
            };
            let f = course(w).unwrap_err();
            assert_eq!(f.sourced_id, MISSING_ID);
            assert_eq!(f.code, Code::SourcedIdMissing);
            assert_eq!(f.entity, "courses");
        }
    }

    #[test]
    fn empty_strings_become_none_and_vocabulary_takes_its_own_spelling() {
        let w = wire::Org {
            sourced_id: some("o1"),
            status: some("active"),
            name: some(" Lakeside\0 High "),
            org_type: some("School"),
            identifier: some(""),
            parent: some(""),
            ..Default::default()
        };
        let (o, warnings) = org(w).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(o.name.as_deref(), Some("Lakeside High"));
        assert_eq!(o.org_type.as_deref(), Some("school"));
        assert_eq!(o.identifier, None);
        assert_eq!(o.parent_sourced_id, None);

        let w = wire::AcademicSession {
            sourced_id: some("t"),
            status: some("active"),
            session_type: some("SCHOOLYEAR"),
            ..Default::default()
        };
        assert_eq!(
            academic_session(w).unwrap().0.session_type.as_deref(),
            Some("schoolYear")
        );
    }

    #[test]
    fn values_outside_a_vocabulary_are_stored_as_sent_with_a_warning() {
        let w = wire::Class {
            sourced_id: some("c1"),
            status: some("active"),
            class_type: some(" Lab "),
            ..Default::default()
        };
        let (c, warnings) = class(w).unwrap();
        assert_eq!(c.class_type.as_deref(), Some("Lab"));
        assert_eq!(codes(&warnings), vec![Code::ClassTypeUnknown]);
        assert!(!warnings[0].message.contains("Lab"));
        // 1.2 extension values are legal.
        let w = wire::Org {
            sourced_id: some("o"),
            status: some("active"),
            org_type: some("ext:campus"),
            ..Default::default()
        };
        let (o, warnings) = org(w).unwrap();
        assert_eq!(o.org_type.as_deref(), Some("ext:campus"));
        assert!(warnings.is_empty());
    }

    #[test]
    fn user_roles_1_1_and_1_2_and_unknown() {
        let (u, _) = user(user_w("Teacher")).unwrap();
        assert_eq!(u.role, "teacher");
        let (u, _) = user(user_w("districtadministrator")).unwrap();
        assert_eq!(u.role, "districtAdministrator");
        let (u, _) = user(user_w("ext:nurse")).unwrap();
        assert_eq!(u.role, "ext:nurse");
        assert_eq!(
            user(user_w("janitor")).unwrap_err().code,
            Code::UserRoleUnknown
        );
        assert_eq!(user(user_w("")).unwrap_err().code, Code::UserRoleMissing);
    }

    #[test]
    fn user_role_falls_back_to_primary_1_2_role() {
        let mut w = user_w("");
        w.roles = vec![
            wire::RoleEntry {
                role_type: some("secondary"),
                role: some("aide"),
                org: some("s2"),
                ..Default::default()
            },
            wire::RoleEntry {
                role_type: some("primary"),
                role: some("teacher"),
                org: some("s1"),
                ..Default::default()
            },
        ];
        assert_eq!(user(w.clone()).unwrap().0.role, "teacher");
        w.roles[1].role_type = some("secondary");
        assert_eq!(user(w).unwrap().0.role, "aide");
    }

    #[test]
    fn one_user_with_several_roles_has_one_assignment_per_org_and_role() {
        let entry = |role: &str, role_type: &str, org: &str| wire::RoleEntry {
            role_type: some(role_type),
            role: some(role),
            org: some(org),
            ..Default::default()
        };
        let mut w = user_w("");
        w.roles = vec![
            entry("siteadministrator", "secondary", "s2"),
            entry("Teacher", "primary", "s1"),
            entry("teacher", "secondary", "s1"),
            entry("janitor", "secondary", "s3"),
            wire::RoleEntry {
                role: some("aide"),
                ..Default::default()
            },
        ];
        w.primary_org = some("s1");
        w.user_ids = vec![
            wire::UserId {
                id_type: some("LDAP"),
                identifier: some("ana@lakeside"),
            },
            wire::UserId {
                id_type: some("SIS"),
                identifier: some(" 123 "),
            },
            wire::UserId {
                id_type: some("LDAP"),
                identifier: some("ana@lakeside"),
            },
            wire::UserId {
                id_type: some("SIS"),
                identifier: some(""),
            },
        ];
        let (u, warnings) = user(w).unwrap();
        assert_eq!(u.role, "teacher");
        let roles: Vec<(&str, &str, &str)> = u
            .roles
            .iter()
            .map(|a| {
                (
                    a.org_sourced_id.as_str(),
                    a.role.as_str(),
                    a.role_type.as_str(),
                )
            })
            .collect();
        assert_eq!(
            roles,
            [
                ("s1", "teacher", "primary"),
                ("s2", "siteAdministrator", "secondary")
            ]
        );
        assert_eq!(u.org_sourced_ids, ["s1", "s2"]);
        assert_eq!(u.primary_org_sourced_id.as_deref(), Some("s1"));
        assert_eq!(
            u.identifiers,
            [
                ("LDAP".to_owned(), "ana@lakeside".to_owned()),
                ("SIS".to_owned(), "123".to_owned())
            ]
        );
        assert_eq!(codes(&warnings), vec![Code::UserRoleEntryUnusable]);
        // 1.1: the one role at each org; a single org is the primary one.
        let mut w = user_w("teacher");
        w.orgs = vec!["s2".into(), "s1".into()];
        let (u, _) = user(w.clone()).unwrap();
        assert_eq!(u.roles.len(), 2);
        assert!(
            u.roles
                .iter()
                .all(|a| a.role == "teacher" && a.role_type == "primary")
        );
        assert_eq!(u.primary_org_sourced_id, None);
        w.orgs = vec!["s1".into()];
        assert_eq!(
            user(w).unwrap().0.primary_org_sourced_id.as_deref(),
            Some("s1")
        );
    }

    #[test]
    fn sets_are_sorted_and_deduplicated() {
        let mut w = user_w("student");
        w.email = some("");
        w.middle_name = some("");
        w.given_name = some("Ana");
        w.enabled_user = Some(false);
        w.orgs = vec!["s2".into(), "s1".into(), "s2".into()];
        w.grades = vec!["10".into(), "09".into(), " 09 ".into()];
        let (u, _) = user(w).unwrap();
        assert_eq!(u.email, None);
        assert_eq!(u.middle_name, None);
        assert_eq!(u.given_name.as_deref(), Some("Ana"));
        assert_eq!(u.enabled, Some(false));
        assert_eq!(u.org_sourced_ids, vec!["s1", "s2"]);
        assert_eq!(u.grades, vec!["09", "10"]);

        let w = |terms: Vec<String>| wire::Class {
            sourced_id: some("c1"),
            status: some("active"),
            terms,
            periods: vec!["3".into(), "1".into()],
            ..Default::default()
        };
        let a = class(w(vec!["t2".into(), "t1".into()])).unwrap().0;
        let b = class(w(vec!["t1".into(), "t2".into()])).unwrap().0;
        assert_eq!(a, b);
        assert_eq!(a.periods, vec!["1", "3"]);
    }

    #[test]
    fn the_common_forms_read_alike_by_both_readers() {
        for value in [
            "2026-09-02T07:06:57.096Z",
            "2026-09-02T07:06:57Z",
            "2026-09-02T07:06:57.1234567Z",
            "2026-09-02T07:06:57.9999996Z",
            "0001-01-01T00:00:00.5Z",
            "2026-12-31T23:59:59.999999999Z",
        ] {
            let general = parse_timestamp(&value.replace('Z', "+00:00"));
            assert_eq!(common_timestamp(value.as_bytes()), general, "{value}");
            assert!(general.is_some(), "{value}");
        }
        for value in [
            "2026-02-30T07:06:57Z",
            "2026-09-02T24:00:00Z",
            "2026-09-02 07:06:57Z",
            "2026-09-02T07:06:57.Z",
            "0000-09-02T07:06:57Z",
            "2026-9-02T07:06:57Z",
        ] {
            assert_eq!(common_timestamp(value.as_bytes()), None, "{value}");
        }
        assert_eq!(
            common_date(b"2026-09-02"),
            NaiveDate::from_ymd_opt(2026, 9, 2)
        );
        assert_eq!(common_date(b"2026-9-2"), None);
        assert_eq!(iso_date("2026-9-2"), NaiveDate::from_ymd_opt(2026, 9, 2));
    }

    #[test]
    fn date_times_with_or_without_t_and_zone() {
        let utc = |s: &str| parse_timestamp(s).map(|t| t.to_rfc3339());
        let want = Some("2017-09-27T10:57:52+00:00".to_owned());
        for form in [
            "2017-09-27T10:57:52Z",
            "2017-09-27T10:57:52.000Z",
            "2017-09-27 10:57:52",
            "2017-09-27T10:57:52",
            "2017-09-27 10:57:52Z",
            "2017-09-27T12:57:52+02:00",
            "2017-09-27T05:57:52-0500",
            "2017-09-27 10:57:52+00",
        ] {
            assert_eq!(utc(form), want, "{form}");
        }
        assert_eq!(
            utc("2017-09-27"),
            Some("2017-09-27T00:00:00+00:00".to_owned())
        );
        assert_eq!(
            utc("2017-09-27T10:57"),
            Some("2017-09-27T10:57:00+00:00".to_owned())
        );
        for bad in [
            "yesterday",
            "2017-13-01",
            "27/09/2017",
            "2017-09-27T25:00:00",
            "",
        ] {
            assert_eq!(utc(bad), None, "{bad}");
        }
        assert_eq!(
            parse_date("2026-08-15"),
            NaiveDate::from_ymd_opt(2026, 8, 15)
        );
        assert_eq!(
            parse_date("2027-06-30T00:00:00Z"),
            NaiveDate::from_ymd_opt(2027, 6, 30)
        );
        assert_eq!(parse_date("2026-08-15junk"), None);
    }

    #[test]
    fn bad_dates_warn_and_are_stored_as_null() {
        let mut w = enrollment_w();
        w.date_last_modified = some("2026-11-20T08:30:00.000Z");
        w.begin_date = some("2026-08-15");
        w.end_date = some("2026-13-45");
        let (e, warnings) = enrollment(w).unwrap();
        assert_eq!(
            e.source_modified_at.unwrap().to_rfc3339(),
            "2026-11-20T08:30:00+00:00"
        );
        assert_eq!(e.begin_date, NaiveDate::from_ymd_opt(2026, 8, 15));
        assert_eq!(e.end_date, None);
        assert_eq!(codes(&warnings), vec![Code::DateUnparseable]);
        assert!(warnings[0].message.contains("endDate"));
        assert!(!warnings[0].message.contains("2026-13-45"));
    }

    #[test]
    fn enrollment_required_fields() {
        let mut w = enrollment_w();
        w.user = None;
        assert_eq!(enrollment(w).unwrap_err().code, Code::EnrollmentWithoutUser);
        let mut w = enrollment_w();
        w.class = some("");
        assert_eq!(
            enrollment(w).unwrap_err().code,
            Code::EnrollmentWithoutClass
        );
        let mut w = enrollment_w();
        w.role = None;
        assert_eq!(enrollment(w).unwrap_err().code, Code::EnrollmentRoleMissing);
        let mut w = enrollment_w();
        w.role = some("janitor");
        let f = enrollment(w).unwrap_err();
        assert_eq!(
            (f.code, f.entity, f.sourced_id.as_str()),
            (Code::EnrollmentRoleUnknown, "enrollments", "e1")
        );
        let mut w = enrollment_w();
        w.role = some("Teacher");
        w.primary = Some(true);
        w.school = some("s1");
        let (e, _) = enrollment(w).unwrap();
        assert_eq!(e.role, "teacher");
        assert_eq!(e.is_primary, Some(true));
        assert_eq!(e.school_sourced_id.as_deref(), Some("s1"));
    }

    fn demo(sex: Option<&str>) -> wire::Demographics {
        wire::Demographics {
            sourced_id: some("u1"),
            status: some("active"),
            sex: sex.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn sex_mapping() {
        for (sex, want) in [
            (Some("Male"), Some("male")),
            (Some("m"), Some("male")),
            (Some("FEMALE"), Some("female")),
            (Some("f"), Some("female")),
            (Some("other"), Some("other")),
            (Some("X"), Some("other")),
            (Some("nonbinary"), Some("other")),
            (Some("unspecified"), Some("unspecified")),
            (Some("notSpecified"), Some("unspecified")),
            (Some("unknown"), Some("unspecified")),
            (Some(""), None),
            (None, None),
        ] {
            let (d, warnings) = demographics(demo(sex)).unwrap();
            assert_eq!(d.demo.gender(), want, "{sex:?}");
            assert!(d.demo.present);
            assert!(warnings.is_empty());
        }
        let (d, warnings) = demographics(demo(Some("Zebra"))).unwrap();
        assert_eq!(d.demo.gender(), None);
        assert_eq!(codes(&warnings), vec![Code::SexUnknown]);
        assert_eq!(warnings[0].entity, "demographics");
        assert_eq!(warnings[0].sourced_id, "u1");
        assert!(!warnings[0].message.to_lowercase().contains("zebra"));
    }

    #[test]
    fn races_are_sorted_true_flags_and_ethnicity_is_kept() {
        let w = wire::Demographics {
            white: Some(true),
            asian: Some(true),
            black_or_african_american: Some(false),
            american_indian_or_alaska_native: None,
            native_hawaiian_or_other_pacific_islander: Some(true),
            demographic_race_two_or_more_races: Some(true),
            hispanic_or_latino_ethnicity: Some(false),
            ..demo(Some("female"))
        };
        let (d, _) = demographics(w).unwrap();
        assert_eq!(d.user_sourced_id, "u1");
        assert_eq!(
            d.demo.races().unwrap(),
            vec![
                "asian",
                "native_hawaiian_or_other_pacific_islander",
                "white"
            ]
        );
        assert_eq!(d.demo.hispanic_or_latino, Some(false));
        let (d, _) = demographics(demo(None)).unwrap();
        assert_eq!(d.demo.races(), Some(Vec::new()));
        assert_eq!(d.demo.hispanic_or_latino, None);
    }

    #[test]
    fn deleted_demographics_is_no_record() {
        let mut w = demo(Some("male"));
        w.status = some("tobedeleted");
        let (d, _) = demographics(w).unwrap();
        assert!(!d.demo.present);
        assert_eq!(d.demo.races(), None);
        let mut w = demo(Some("male"));
        w.status = None;
        assert_eq!(demographics(w).unwrap_err().code, Code::StatusMissing);
    }
}
