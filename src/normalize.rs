//! Wire records to domain records: pure functions, one per type.
//!
//! A record is skipped (reported by `sourcedId`) only when it cannot be used: no `sourcedId`, no
//! known `status`, and for users a `role` in the vocabulary, for enrollments `user`, `class` and
//! `role`. Anything else odd is kept and reported as a [`Warning`]: a bad date or timestamp
//! becomes NULL, an unrecognized `sex` becomes NULL.
//!
//! Conventions: optional text is trimmed and `""` becomes `None`; lists are never `None`;
//! roles are lower-cased (the contract's vocabulary); org, session and class types are kept as
//! the server spells them (the 1.1 vocabulary is camelCase: `schoolYear`, `gradingPeriod`). Reasons and warnings never quote a field's
//! value: they name the field.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SubsecRound, Utc};

use crate::domain::{
    AcademicSession, Class, Course, Demo, Demographics, Enrollment, Org, RACE_NAMES, Skipped,
    Status, User, Warning,
};
use crate::oneroster::wire;

/// Result of normalizing one record: the record and what was odd about it, or why it was left out.
pub type Normalized<T> = Result<(T, Vec<Warning>), Skipped>;

/// User roles accepted: OneRoster 1.1, plus the 1.2 additions (stored lower case, e.g.
/// `districtadministrator`).
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
    "districtadministrator",
    "principal",
    "siteadministrator",
    "systemadministrator",
];

/// Enrollment roles accepted: OneRoster 1.1 (administrator, proctor, student, teacher), plus
/// the roles 1.2 allows on an enrollment.
pub const ENROLLMENT_ROLES: &[&str] = &[
    "administrator",
    "proctor",
    "student",
    "teacher",
    // OneRoster 1.2
    "aide",
    "guardian",
    "parent",
    "relative",
    "districtadministrator",
    "principal",
    "siteadministrator",
    "systemadministrator",
];

/// Identity and common fields of one record, collecting warnings as the fields are read.
struct Record {
    entity: &'static str,
    sourced_id: String,
    status: Status,
    warnings: Vec<Warning>,
}

impl Record {
    fn open(
        entity: &'static str,
        sourced_id: Option<String>,
        status: Option<String>,
    ) -> Result<Record, Skipped> {
        let sourced_id = match sourced_id {
            Some(id) if !id.trim().is_empty() => id,
            _ => return Err(skip(entity, "<missing>", "missing sourcedId")),
        };
        let status = match status.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
            Some(s) if s == "active" => Status::Active,
            Some(s) if s == "tobedeleted" || s == "inactive" => Status::Deleted,
            Some(s) if s.is_empty() => return Err(skip(entity, &sourced_id, "missing status")),
            None => return Err(skip(entity, &sourced_id, "missing status")),
            Some(_) => return Err(skip(entity, &sourced_id, "unknown status")),
        };
        Ok(Record {
            entity,
            sourced_id,
            status,
            warnings: Vec::new(),
        })
    }

    fn skip(&self, reason: &str) -> Skipped {
        skip(self.entity, &self.sourced_id, reason)
    }

    fn warn(&mut self, message: String) {
        self.warnings.push(Warning {
            entity: self.entity,
            sourced_id: self.sourced_id.clone(),
            message,
        });
    }

    fn modified(&mut self, value: Option<String>) -> Option<DateTime<Utc>> {
        let value = text(value)?;
        let parsed = DateTime::parse_from_rfc3339(&value)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                // Some servers drop the zone; OneRoster timestamps are UTC.
                NaiveDateTime::parse_from_str(&value, "%Y-%m-%dT%H:%M:%S%.f")
                    .ok()
                    .map(|t| t.and_utc())
            });
        if parsed.is_none() {
            self.warn(
                "field `dateLastModified` is not an ISO-8601 timestamp; stored as NULL".into(),
            );
        }
        // PostgreSQL keeps microseconds: hold exactly what the store will, so a row read back
        // from the store hashes like the record it came from.
        parsed.map(|t| t.round_subsecs(6))
    }

    fn date(&mut self, field: &str, value: Option<String>) -> Option<NaiveDate> {
        let value = text(value)?;
        let parsed = NaiveDate::parse_from_str(&value, "%Y-%m-%d")
            .ok()
            .or_else(|| {
                // A full timestamp where a date belongs: keep its date.
                DateTime::parse_from_rfc3339(&value)
                    .ok()
                    .map(|t| t.date_naive())
            });
        if parsed.is_none() {
            self.warn(format!(
                "field `{field}` is not a YYYY-MM-DD date; stored as NULL"
            ));
        }
        parsed
    }
}

fn skip(entity: &'static str, sourced_id: &str, reason: &str) -> Skipped {
    Skipped {
        entity,
        sourced_id: sourced_id.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Optional text: trimmed, empty is absent.
fn text(value: Option<String>) -> Option<String> {
    let value = value?;
    let trimmed = value.trim();
    if trimmed.is_empty() {
        None
    } else if trimmed.len() == value.len() {
        Some(value)
    } else {
        Some(trimmed.to_owned())
    }
}

/// Vocabulary value: trimmed, lower case, empty is absent.
fn vocabulary(value: Option<String>) -> Option<String> {
    text(value).map(|v| v.to_lowercase())
}

pub fn org(w: wire::Org) -> Normalized<Org> {
    let mut r = Record::open("orgs", w.sourced_id, w.status)?;
    let org = Org {
        source_modified_at: r.modified(w.date_last_modified),
        name: text(w.name),
        org_type: text(w.org_type),
        identifier: text(w.identifier),
        parent_sourced_id: text(w.parent),
        sourced_id: r.sourced_id.clone(),
        status: r.status,
    };
    Ok((org, r.warnings))
}

pub fn academic_session(w: wire::AcademicSession) -> Normalized<AcademicSession> {
    let mut r = Record::open("academic_sessions", w.sourced_id, w.status)?;
    let session = AcademicSession {
        source_modified_at: r.modified(w.date_last_modified),
        title: text(w.title),
        session_type: text(w.session_type),
        start_date: r.date("startDate", w.start_date),
        end_date: r.date("endDate", w.end_date),
        parent_sourced_id: text(w.parent),
        school_year: text(w.school_year),
        sourced_id: r.sourced_id.clone(),
        status: r.status,
    };
    Ok((session, r.warnings))
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
    Ok((course, r.warnings))
}

pub fn class(w: wire::Class) -> Normalized<Class> {
    let mut r = Record::open("classes", w.sourced_id, w.status)?;
    let class = Class {
        source_modified_at: r.modified(w.date_last_modified),
        title: text(w.title),
        class_code: text(w.class_code),
        class_type: text(w.class_type),
        school_sourced_id: text(w.school),
        course_sourced_id: text(w.course),
        term_sourced_ids: w.terms,
        grades: w.grades,
        subjects: w.subjects,
        periods: w.periods,
        sourced_id: r.sourced_id.clone(),
        status: r.status,
    };
    Ok((class, r.warnings))
}

pub fn user(w: wire::User) -> Normalized<User> {
    let mut r = Record::open("users", w.sourced_id, w.status)?;
    // 1.1 `role`; failing that, the 1.2 `roles[]` primary role (or the first one).
    let role = vocabulary(w.role).or_else(|| {
        let primary = w.roles.iter().find(|entry| {
            entry
                .role_type
                .as_deref()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("primary"))
        });
        primary
            .or(w.roles.first())
            .and_then(|entry| vocabulary(entry.role.clone()))
    });
    let role = match role {
        Some(role) if USER_ROLES.contains(&role.as_str()) => role,
        Some(_) => return Err(r.skip("unknown role")),
        None => return Err(r.skip("missing role")),
    };
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
        grades: w.grades,
        org_sourced_ids: w.orgs,
        demographics: Demo::default(),
        sourced_id: r.sourced_id.clone(),
        status: r.status,
    };
    Ok((user, r.warnings))
}

pub fn enrollment(w: wire::Enrollment) -> Normalized<Enrollment> {
    let mut r = Record::open("enrollments", w.sourced_id, w.status)?;
    let Some(user_sourced_id) = text(w.user) else {
        return Err(r.skip("missing user reference"));
    };
    let Some(class_sourced_id) = text(w.class) else {
        return Err(r.skip("missing class reference"));
    };
    let role = match vocabulary(w.role) {
        Some(role) if ENROLLMENT_ROLES.contains(&role.as_str()) => role,
        Some(_) => return Err(r.skip("unknown role")),
        None => return Err(r.skip("missing role")),
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
    Ok((enrollment, r.warnings))
}

/// The gender and ethnicity of one user (keyed by the demographics `sourcedId`, which is the
/// user's). A deleted demographics record is `None`: the user has no demographics.
pub fn demographics(w: wire::Demographics) -> Normalized<Option<Demographics>> {
    let mut r = Record::open("demographics", w.sourced_id, w.status)?;
    if r.status == Status::Deleted {
        return Ok((None, r.warnings));
    }
    let gender = match w.sex.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
        None => None,
        Some(sex) => match sex.as_str() {
            "" => None,
            "male" | "m" => Some("male"),
            "female" | "f" => Some("female"),
            "other" | "x" | "nonbinary" | "non-binary" => Some("other"),
            "unspecified" | "notspecified" | "unknown" => Some("unspecified"),
            _ => {
                // The value itself is personal data: name the field only.
                r.warn("unrecognized sex value; gender stored as NULL".into());
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
    let races = RACE_NAMES
        .iter()
        .zip(flags)
        .filter(|(_, flag)| *flag == Some(true))
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let demographics = Demographics {
        user_sourced_id: r.sourced_id.clone(),
        gender: gender.map(str::to_owned),
        hispanic_or_latino: w.hispanic_or_latino_ethnicity,
        races,
    };
    Ok((Some(demographics), r.warnings))
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

    #[test]
    fn status_mapping_and_skips() {
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
        for (status, reason) in [
            (None, "missing status"),
            (some(""), "missing status"),
            (some("archived"), "unknown status"),
        ] {
            let w = wire::Org {
                sourced_id: some("o"),
                status,
                ..Default::default()
            };
            let s = org(w).unwrap_err();
            assert_eq!(
                (s.entity, s.sourced_id.as_str(), s.reason.as_str()),
                ("orgs", "o", reason)
            );
        }
    }

    #[test]
    fn missing_sourced_id_is_skipped_as_missing() {
        for id in [None, some(""), some("  ")] {
            let w = wire::Course {
                sourced_id: id,
                status: some("active"),
                ..Default::default()
            };
            let s = course(w).unwrap_err();
            assert_eq!(s.sourced_id, "<missing>");
            assert_eq!(s.reason, "missing sourcedId");
            assert_eq!(s.entity, "courses");
        }
    }

    #[test]
    fn empty_strings_become_none_and_types_keep_their_spelling() {
        let w = wire::Org {
            sourced_id: some("o1"),
            status: some("active"),
            name: some(" Lakeside High "),
            org_type: some("School"),
            identifier: some(""),
            parent: some(""),
            ..Default::default()
        };
        let (o, warnings) = org(w).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(o.name.as_deref(), Some("Lakeside High"));
        assert_eq!(o.org_type.as_deref(), Some("School"));
        assert_eq!(o.identifier, None);
        assert_eq!(o.parent_sourced_id, None);
    }

    #[test]
    fn user_roles_1_1_and_1_2_and_unknown() {
        let (u, _) = user(user_w("Teacher")).unwrap();
        assert_eq!(u.role, "teacher");
        let (u, _) = user(user_w("districtAdministrator")).unwrap();
        assert_eq!(u.role, "districtadministrator");
        assert_eq!(user(user_w("janitor")).unwrap_err().reason, "unknown role");
        assert_eq!(user(user_w("")).unwrap_err().reason, "missing role");
    }

    #[test]
    fn user_role_falls_back_to_primary_1_2_role() {
        let mut w = user_w("");
        w.roles = vec![
            wire::RoleEntry {
                role_type: some("secondary"),
                role: some("aide"),
            },
            wire::RoleEntry {
                role_type: some("primary"),
                role: some("teacher"),
            },
        ];
        assert_eq!(user(w.clone()).unwrap().0.role, "teacher");
        w.roles[1].role_type = some("secondary");
        assert_eq!(user(w).unwrap().0.role, "aide");
    }

    #[test]
    fn user_fields_and_lists() {
        let mut w = user_w("student");
        w.email = some("");
        w.middle_name = some("");
        w.given_name = some("Ana");
        w.enabled_user = Some(false);
        w.orgs = vec!["s1".into()];
        let (u, _) = user(w).unwrap();
        assert_eq!(u.email, None);
        assert_eq!(u.middle_name, None);
        assert_eq!(u.given_name.as_deref(), Some("Ana"));
        assert_eq!(u.enabled, Some(false));
        assert_eq!(u.org_sourced_ids, vec!["s1"]);
        assert!(u.grades.is_empty());
    }

    #[test]
    fn timestamps_and_dates_bad_values_warn_not_skip() {
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
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].message.contains("endDate"));
        assert!(!warnings[0].message.contains("2026-13-45"));

        let mut w = enrollment_w();
        w.date_last_modified = some("yesterday");
        let (e, warnings) = enrollment(w).unwrap();
        assert_eq!(e.source_modified_at, None);
        assert!(warnings[0].message.contains("dateLastModified"));
    }

    #[test]
    fn enrollment_required_fields() {
        let mut w = enrollment_w();
        w.user = None;
        assert_eq!(enrollment(w).unwrap_err().reason, "missing user reference");
        let mut w = enrollment_w();
        w.class = some("");
        assert_eq!(enrollment(w).unwrap_err().reason, "missing class reference");
        let mut w = enrollment_w();
        w.role = None;
        assert_eq!(enrollment(w).unwrap_err().reason, "missing role");
        let mut w = enrollment_w();
        w.role = some("janitor");
        let s = enrollment(w).unwrap_err();
        assert_eq!(
            (s.entity, s.sourced_id.as_str(), s.reason.as_str()),
            ("enrollments", "e1", "unknown role")
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

    #[test]
    fn class_and_session_mapping() {
        let w = wire::Class {
            sourced_id: some("c1"),
            status: some("active"),
            class_type: some("Homeroom"),
            class_code: some(""),
            course: some("k1"),
            terms: vec!["t1".into()],
            periods: vec!["1".into(), "2".into()],
            ..Default::default()
        };
        let (c, _) = class(w).unwrap();
        assert_eq!(c.class_type.as_deref(), Some("Homeroom"));
        assert_eq!(c.class_code, None);
        assert_eq!(c.course_sourced_id.as_deref(), Some("k1"));
        assert_eq!(c.term_sourced_ids, vec!["t1"]);
        assert_eq!(c.periods, vec!["1", "2"]);
        assert!(c.subjects.is_empty());

        let w = wire::AcademicSession {
            sourced_id: some("t1"),
            status: some("active"),
            session_type: some("schoolYear"),
            start_date: some("2026-08-01"),
            end_date: some("2027-06-30T00:00:00Z"),
            school_year: some("2027"),
            ..Default::default()
        };
        let (s, warnings) = academic_session(w).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(s.session_type.as_deref(), Some("schoolYear"));
        assert_eq!(s.end_date, NaiveDate::from_ymd_opt(2027, 6, 30));
        assert_eq!(s.school_year.as_deref(), Some("2027"));
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
            assert_eq!(d.unwrap().gender.as_deref(), want, "{sex:?}");
            assert!(warnings.is_empty());
        }
        let (d, warnings) = demographics(demo(Some("Zebra"))).unwrap();
        assert_eq!(d.unwrap().gender, None);
        assert_eq!(warnings.len(), 1);
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
        let d = d.unwrap();
        assert_eq!(d.user_sourced_id, "u1");
        assert_eq!(
            d.races,
            vec![
                "asian",
                "native_hawaiian_or_other_pacific_islander",
                "white"
            ]
        );
        assert_eq!(d.hispanic_or_latino, Some(false));
        let (d, _) = demographics(demo(None)).unwrap();
        let d = d.unwrap();
        assert!(d.races.is_empty());
        assert_eq!(d.hispanic_or_latino, None);
    }

    #[test]
    fn deleted_demographics_is_no_record() {
        let mut w = demo(Some("male"));
        w.status = some("tobedeleted");
        assert_eq!(demographics(w).unwrap().0, None);
        let mut w = demo(Some("male"));
        w.status = None;
        assert_eq!(demographics(w).unwrap_err().reason, "missing status");
    }
}
