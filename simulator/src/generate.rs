//! Builds the synthetic district, deterministically from a seed and the counts.

use std::borrow::Cow;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use rand::seq::{IndexedRandom, index};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{
    AcademicSession, Class, Course, Dataset, Demographics, Enrollment, Fields, Org, Periods,
    ProfileCredential, RoleAssignment, Status, Text, User, UserId, UserProfile, v1p1_role,
};

/// District sizes from ONEROSTER.md "Scale".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tier {
    S,
    M,
    L,
    XL,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub schools: usize,
    pub students: usize,
    pub teachers: usize,
    pub classes: usize,
    /// Classes each student is enrolled in (capped by the classes of the student's school).
    pub enrollments_per_student: usize,
    /// Administrators and aides.
    pub staff: usize,
}

impl Counts {
    pub fn tier(t: Tier) -> Counts {
        let (schools, students, teachers, classes) = match t {
            Tier::S => (12, 5_000, 300, 2_000),
            Tier::M => (90, 60_000, 3_500, 25_000),
            Tier::L => (400, 350_000, 18_000, 150_000),
            Tier::XL => (1_600, 1_000_000, 75_000, 450_000),
        };
        Counts {
            schools,
            students,
            teachers,
            classes,
            enrollments_per_student: 8,
            staff: schools * 2,
        }
    }

    /// A district small enough to reason about in a test.
    pub fn tiny() -> Counts {
        Counts {
            schools: 3,
            students: 60,
            teachers: 6,
            classes: 12,
            enrollments_per_student: 3,
            staff: 3,
        }
    }
}

pub(crate) const GIVEN_NAMES: &[&str] = &[
    "José",
    "Zoë",
    "Søren",
    "Aaliyah",
    "Mateo",
    "Ngọc",
    "Liam",
    "Olivia",
    "Chloé",
    "Björn",
    "Siobhán",
    "Wei",
    "Priya",
    "Kwame",
    "Émilie",
    "Noah",
    "Ava",
    "Jürgen",
    "Fatima",
    "Dmitri",
    "Ana-María",
    "Hiroshi",
    "Léa",
    "Mohammed",
    "Grace",
    "Iñaki",
    "Zainab",
    "Ethan",
    "Mia",
    "Øystein",
];

pub(crate) const FAMILY_NAMES: &[&str] = &[
    "Nguyễn",
    "O'Brien",
    "García",
    "Smith",
    "Müller",
    "Johansson",
    "Kowalski",
    "Okafor",
    "Chen",
    "Patel",
    "Dubois",
    "Hernández",
    "Johnson",
    "Søndergaard",
    "Van der Berg",
    "Kim",
    "Rossi",
    "Ivanova",
    "Yılmaz",
    "MacDonald",
    "Tanaka",
    "Brown",
    "Da Silva",
    "Łukasiewicz",
    "Ali",
    "Williams",
    "Peña",
    "Fitzgerald-Jones",
    "Schröder",
    "Abebe",
];

const MIDDLE_NAMES: &[&str] = &["", "", "", "Marie", "James", "Ann", "Lee", "José", "Renée"];

const PREFERRED_FIRST_NAMES: &[&str] = &["Jo", "Sam", "Alex", "Max", "Kit", "Bea", "Nico", "Rae"];

const PRONOUNS: &[&str] = &["she/her", "he/him", "they/them"];

pub(crate) const CITIES: &[&str] = &[
    "New York",
    "Miami",
    "São Paulo",
    "Hà Nội",
    "Ciudad de México",
    "Lagos",
    "Chicago",
    "Zürich",
    "Port-au-Prince",
    "Kraków",
    "",
];

const SUBJECTS: &[(&str, &str)] = &[
    ("Mathematics", "MAT"),
    ("English Language Arts", "ELA"),
    ("Science", "SCI"),
    ("Social Studies", "SOC"),
    ("Art", "ART"),
    ("Music", "MUS"),
    ("Physical Education", "PE"),
    ("World Languages", "WL"),
];

pub(crate) const GRADES: [&str; 13] = [
    "KG", "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12",
];

/// Sex spellings: mostly the 1.1 values, some that a client must normalize or reject.
pub(crate) fn pick_sex(rng: &mut ChaCha8Rng) -> Text {
    let odd: [&'static str; 6] = ["M", "F", "Female", "unspecified", "X", "other"];
    match rng.random_range(0..100) {
        0..48 => Cow::Borrowed("male"),
        48..96 => Cow::Borrowed("female"),
        _ => Cow::Borrowed(odd[rng.random_range(0..odd.len())]),
    }
}

pub(crate) const SCHOOL_YEAR: &str = "sy-2026-2027";
pub(crate) const SEMESTER_1: &str = "sem1-2026-2027";
pub(crate) const SEMESTER_2: &str = "sem2-2026-2027";
const DISTRICT_ID: &str = "district-0001";

fn date(y: i32, m: u32, d: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(y, m, d)
}

/// Where the simulated clock starts; generated records are modified somewhat before it.
fn clock_start() -> DateTime<Utc> {
    // 2026-11-01T00:00:00Z is a valid instant, so `single()` is always Some.
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH)
}

fn earlier(rng: &mut ChaCha8Rng, clock: DateTime<Utc>) -> DateTime<Utc> {
    // Up to 120 days back, with millisecond precision like ClassLink's timestamps.
    clock - Duration::milliseconds(rng.random_range(1..120 * 86_400_000i64))
}

fn guid(rng: &mut ChaCha8Rng) -> String {
    let a: u128 = rng.random();
    let h = format!("{a:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn status(rng: &mut ChaCha8Rng, per_thousand: u32) -> Status {
    if rng.random_range(0..1000) < per_thousand {
        Status::ToBeDeleted
    } else {
        Status::Active
    }
}

pub(crate) fn ext_flags(rng: &mut ChaCha8Rng) -> Fields {
    let mut m = Fields::new();
    for (key, per_cent) in [
        ("ext_economically_disadvantaged", 40),
        ("ext_504", 5),
        ("ext_at_risk", 10),
        ("ext_special_education", 12),
    ] {
        let v = rng.random_range(0..100) < per_cent;
        m.insert(key.into(), Value::String(v.to_string()));
    }
    m
}

/// Sourced id of the i-th student; the zero padding keeps generation order sorted.
pub(crate) fn student_id(i: usize) -> String {
    format!("stu-{i:07}")
}

pub(crate) struct NameParts {
    pub given: &'static str,
    pub family: &'static str,
    pub middle: &'static str,
}

pub(crate) fn pick_name(rng: &mut ChaCha8Rng) -> NameParts {
    NameParts {
        given: GIVEN_NAMES.choose(rng).copied().unwrap_or("Alex"),
        family: FAMILY_NAMES.choose(rng).copied().unwrap_or("Doe"),
        middle: MIDDLE_NAMES.choose(rng).copied().unwrap_or(""),
    }
}

/// An ASCII-ish login: first letter of the given name, family name, and a number.
pub(crate) fn username(name: &NameParts, n: usize) -> String {
    let first: String = name.given.chars().take(1).collect();
    let family: String = name
        .family
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect();
    format!("{}{}{}", first, family, n).to_lowercase()
}

/// A role assignment without profile or dates.
fn assignment(role_type: &'static str, role: &'static str, org: &str) -> RoleAssignment {
    RoleAssignment {
        role_type: Cow::Borrowed(role_type),
        role: Cow::Borrowed(role),
        org: org.to_string(),
        user_profile: None,
        begin_date: None,
        end_date: None,
    }
}

/// The 1.2-only name fields, from the user's number alone. Nothing 1.2 adds draws from the
/// random streams, so generation and the churn stay as they were and 1.1 bytes do not move.
struct Preferred {
    first: &'static str,
    middle: &'static str,
    last: &'static str,
    pronouns: &'static str,
}

fn preferred(n: usize) -> Preferred {
    let pick = |list: &[&'static str], i: usize| list[i % list.len()];
    Preferred {
        first: if n % 10 == 4 {
            pick(PREFERRED_FIRST_NAMES, n / 10)
        } else {
            ""
        },
        middle: if n % 20 == 14 { "Sky" } else { "" },
        last: if n % 30 == 4 {
            pick(FAMILY_NAMES, n / 30 + 7)
        } else {
            ""
        },
        pronouns: if n % 8 == 3 {
            pick(PRONOUNS, n / 8)
        } else {
            ""
        },
    }
}

pub(crate) fn new_student(
    rng: &mut ChaCha8Rng,
    sourced_id: String,
    n: usize,
    school: &str,
    grade: usize,
    dlm: DateTime<Utc>,
) -> (User, Demographics) {
    let name = pick_name(rng);
    let login = username(&name, n);
    let email = if rng.random_range(0..10) == 0 {
        String::new()
    } else {
        format!("{login}@students.example.org")
    };
    let identifier = format!("{:08}", 10_000_000 + n);
    let roles = vec![assignment("primary", "student", school)];
    let p = preferred(n);
    let user = User {
        sourced_id: sourced_id.clone(),
        status: Status::Active,
        date_last_modified: dlm,
        metadata: Fields::new(),
        username: login,
        user_ids: vec![UserId {
            id_type: Cow::Borrowed("SIS"),
            identifier: identifier.clone(),
        }],
        enabled_user: true,
        given_name: name.given.into(),
        family_name: name.family.into(),
        middle_name: name.middle.into(),
        role: Cow::Borrowed(v1p1_role("student")),
        identifier,
        email,
        sms: String::new(),
        phone: String::new(),
        agents: Vec::new(),
        orgs: vec![school.to_string()],
        grades: vec![Cow::Borrowed(GRADES[grade % GRADES.len()])],
        password: String::new(),
        roles,
        primary_org: Some(school.to_string()),
        user_profiles: Vec::new(),
        user_master_identifier: format!("NY{:09}", 200_000_000 + n),
        preferred_first_name: p.first.into(),
        preferred_middle_name: p.middle.into(),
        preferred_last_name: p.last.into(),
        pronouns: p.pronouns.into(),
        extra: Fields::new(),
    };
    let demo = demographics(rng, sourced_id, 2021 - (grade % 13) as i32, dlm);
    (user, demo)
}

fn demographics(
    rng: &mut ChaCha8Rng,
    sourced_id: String,
    birth_year: i32,
    dlm: DateTime<Utc>,
) -> Demographics {
    let mut races = [false; 5];
    let multi = rng.random_range(0..100) < 6;
    races[rng.random_range(0..5)] = true;
    if multi {
        races[rng.random_range(0..5)] = true;
    }
    let two_or_more = races.iter().filter(|r| **r).count() > 1;
    Demographics {
        sourced_id,
        status: Status::Active,
        date_last_modified: dlm,
        metadata: ext_flags(rng),
        birth_date: date(
            birth_year,
            rng.random_range(1..=12),
            rng.random_range(1..=28),
        ),
        sex: pick_sex(rng),
        american_indian_or_alaska_native: races[0],
        asian: races[1],
        black_or_african_american: races[2],
        native_hawaiian_or_other_pacific_islander: races[3],
        white: races[4],
        demographic_race_two_or_more_races: two_or_more,
        hispanic_or_latino_ethnicity: rng.random_range(0..100) < 25,
        country_of_birth_code: if rng.random_range(0..10) < 8 {
            "US".into()
        } else {
            String::new()
        },
        state_of_birth_abbreviation: ["NY", "FL", "CA", "TX", ""]
            .choose(rng)
            .copied()
            .unwrap_or("")
            .into(),
        city_of_birth: CITIES.choose(rng).copied().unwrap_or("").into(),
        public_school_residence_status: ["01652", "03243", ""]
            .choose(rng)
            .copied()
            .unwrap_or("")
            .into(),
        extra: Fields::new(),
    }
}

/// An enrollment runs as long as its class: one semester, or the whole school year.
fn class_dates(class: &Class) -> (Option<NaiveDate>, Option<NaiveDate>) {
    match class.terms.as_slice() {
        [only] if only == SEMESTER_1 => (date(2026, 8, 17), date(2027, 1, 23)),
        [only] if only == SEMESTER_2 => (date(2027, 1, 25), date(2027, 6, 19)),
        _ => (date(2026, 8, 17), date(2027, 6, 19)),
    }
}

pub(crate) fn student_enrollment(
    sourced_id: String,
    user: &str,
    class: &Class,
    dlm: DateTime<Utc>,
) -> Enrollment {
    Enrollment {
        sourced_id,
        status: Status::Active,
        date_last_modified: dlm,
        metadata: Fields::new(),
        user: user.to_string(),
        class: class.sourced_id.clone(),
        school: class.school.clone(),
        role: Cow::Borrowed("student"),
        primary: false,
        begin_date: class_dates(class).0,
        end_date: class_dates(class).1,
        extra: Fields::new(),
    }
}

/// The whole synthetic district.
pub fn generate(seed: u64, counts: &Counts) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let clock = clock_start();
    let n_schools = counts.schools.max(1);

    // Orgs: the district and its schools ("7_1553"-style ids, as some SIS exports use).
    let school_ids: Vec<String> = (0..n_schools).map(|i| format!("7_{}", 1000 + i)).collect();
    let mut orgs = vec![Org {
        sourced_id: DISTRICT_ID.into(),
        status: Status::Active,
        date_last_modified: earlier(&mut rng, clock),
        metadata: Fields::new(),
        name: "Lakeview Unified School District".into(),
        org_type: Cow::Borrowed("district"),
        identifier: "3600001".into(),
        parent: None,
        children: school_ids.clone(),
        extra: Fields::new(),
    }];
    let levels = [
        "Elementary School",
        "Middle School",
        "High School",
        "Academy",
    ];
    for (i, id) in school_ids.iter().enumerate() {
        let family = FAMILY_NAMES[i % FAMILY_NAMES.len()];
        orgs.push(Org {
            sourced_id: id.clone(),
            status: Status::Active,
            date_last_modified: earlier(&mut rng, clock),
            metadata: Fields::new(),
            name: format!("{family} {}", levels[i % levels.len()]),
            org_type: Cow::Borrowed("school"),
            identifier: format!("{}", 360_000_100 + i),
            parent: Some(DISTRICT_ID.into()),
            children: Vec::new(),
            extra: Fields::new(),
        });
    }

    // Academic sessions: a school year, two semesters, four grading periods.
    let session = |id: &str,
                   title: &str,
                   kind: &'static str,
                   start: Option<NaiveDate>,
                   end: Option<NaiveDate>,
                   parent: Option<&str>,
                   children: &[&str],
                   dlm: DateTime<Utc>| AcademicSession {
        sourced_id: id.into(),
        status: Status::Active,
        date_last_modified: dlm,
        metadata: Fields::new(),
        title: title.into(),
        session_type: Cow::Borrowed(kind),
        start_date: start,
        end_date: end,
        parent: parent.map(str::to_string),
        children: children.iter().map(|c| c.to_string()).collect(),
        school_year: "2027".into(),
        extra: Fields::new(),
    };
    let mut academic_sessions = vec![
        session(
            SCHOOL_YEAR,
            "2026-2027",
            "schoolYear",
            date(2026, 8, 17),
            date(2027, 6, 19),
            None,
            &[SEMESTER_1, SEMESTER_2],
            earlier(&mut rng, clock),
        ),
        session(
            SEMESTER_1,
            "Fall 2026",
            "semester",
            date(2026, 8, 17),
            date(2027, 1, 23),
            Some(SCHOOL_YEAR),
            &["gp1-2026-2027", "gp2-2026-2027"],
            earlier(&mut rng, clock),
        ),
        session(
            SEMESTER_2,
            "Spring 2027",
            "semester",
            date(2027, 1, 25),
            date(2027, 6, 19),
            Some(SCHOOL_YEAR),
            &["gp3-2026-2027", "gp4-2026-2027"],
            earlier(&mut rng, clock),
        ),
    ];
    let periods = [
        (1, SEMESTER_1, date(2026, 8, 17), date(2026, 11, 7)),
        (2, SEMESTER_1, date(2026, 11, 9), date(2027, 1, 23)),
        (3, SEMESTER_2, date(2027, 1, 25), date(2027, 4, 3)),
        (4, SEMESTER_2, date(2027, 4, 5), date(2027, 6, 19)),
    ];
    for (n, parent, start, end) in periods {
        let dlm = earlier(&mut rng, clock);
        academic_sessions.push(session(
            &format!("gp{n}-2026-2027"),
            &format!("Marking Period {n}"),
            "gradingPeriod",
            start,
            end,
            Some(parent),
            &[],
            dlm,
        ));
    }

    // Courses: a few per school, one per subject at most.
    let courses_per_school = (counts.classes / n_schools / 3).clamp(1, SUBJECTS.len());
    let mut courses = Vec::with_capacity(n_schools * courses_per_school);
    for (s, school) in school_ids.iter().enumerate() {
        for (c, (subject, code)) in SUBJECTS.iter().take(courses_per_school).enumerate() {
            courses.push(Course {
                sourced_id: format!("crs-{s:05}-{c:02}"),
                status: Status::Active,
                date_last_modified: earlier(&mut rng, clock),
                metadata: Fields::new(),
                title: format!("{subject} {}", s % 13),
                course_code: format!("{code}{:03}", 100 + s % 900),
                school_year: Some(SCHOOL_YEAR.into()),
                grades: vec![Cow::Borrowed(GRADES[s % 13])],
                subjects: vec![Cow::Borrowed(subject)],
                org: school.clone(),
                extra: Fields::new(),
            });
        }
    }

    // Teachers (GUID-like ids) and staff, round-robin over schools.
    let mut users = Vec::with_capacity(counts.students + counts.teachers + counts.staff);
    let mut teachers_by_school: Vec<Vec<String>> = vec![Vec::new(); n_schools];
    let mut demographics_list = Vec::with_capacity(counts.students + counts.teachers / 3);
    for t in 0..counts.teachers {
        let id = guid(&mut rng);
        let school = t % n_schools;
        teachers_by_school[school].push(id.clone());
        let name = pick_name(&mut rng);
        let login = username(&name, t);
        let mut orgs_of = vec![school_ids[school].clone()];
        let mut roles = vec![assignment("primary", "teacher", &school_ids[school])];
        let mut user_profiles = Vec::new();
        if t % 17 == 0 && n_schools > 1 {
            let other = &school_ids[(school + 1) % n_schools];
            orgs_of.push(other.clone());
            // The district's first teacher also runs the next school for the year; the others
            // listed at two schools teach at both.
            roles.push(if t == 0 {
                RoleAssignment {
                    begin_date: date(2026, 8, 17),
                    end_date: date(2027, 6, 19),
                    ..assignment("secondary", "siteAdministrator", other)
                }
            } else {
                assignment("secondary", "teacher", other)
            });
        }
        if t % 5 == 0 {
            let profile_id = format!("urn:lakeview:lms:T{t:06}");
            roles[0].user_profile = Some(profile_id.clone());
            user_profiles.push(UserProfile {
                profile_id,
                profile_type: Cow::Borrowed("lms"),
                vendor_id: "lakeview-lms".into(),
                application_id: String::new(),
                description: "Learning management system account".into(),
                credentials: vec![ProfileCredential {
                    credential_type: Cow::Borrowed("username"),
                    username: login.clone(),
                }],
            });
        }
        let p = preferred(t);
        let dlm = earlier(&mut rng, clock);
        users.push(User {
            sourced_id: id.clone(),
            status: status(&mut rng, 5),
            date_last_modified: dlm,
            metadata: Fields::new(),
            username: login.clone(),
            user_ids: vec![UserId {
                id_type: Cow::Borrowed("SIS"),
                identifier: format!("T{t:06}"),
            }],
            enabled_user: true,
            given_name: name.given.into(),
            family_name: name.family.into(),
            middle_name: name.middle.into(),
            role: Cow::Borrowed(v1p1_role("teacher")),
            identifier: format!("T{t:06}"),
            email: format!("{login}@example.org"),
            sms: String::new(),
            phone: String::new(),
            agents: Vec::new(),
            orgs: orgs_of,
            grades: Vec::new(),
            password: String::new(),
            roles,
            primary_org: Some(school_ids[school].clone()),
            user_profiles,
            user_master_identifier: format!("NYE{t:07}"),
            preferred_first_name: p.first.into(),
            preferred_middle_name: p.middle.into(),
            preferred_last_name: p.last.into(),
            pronouns: p.pronouns.into(),
            extra: Fields::new(),
        });
        if t % 3 == 0 {
            let year = rng.random_range(1960..2000);
            demographics_list.push(demographics(&mut rng, id, year, dlm));
        }
    }
    for a in 0..counts.staff {
        let name = pick_name(&mut rng);
        let login = username(&name, a);
        // 1.2 splits 1.1's administrator: site administrators, principals and counselors here
        // (all `administrator` on the 1.1 wire); the first three staff hold a second role.
        let school = &school_ids[a % n_schools];
        let primary = match (a % 3, (a / 3) % 2) {
            (2, _) => "aide",
            (0, _) => "siteAdministrator",
            (_, 0) => "principal",
            _ => "counselor",
        };
        let mut roles = vec![assignment("primary", primary, school)];
        match a {
            0 => roles.push(assignment(
                "secondary",
                "districtAdministrator",
                DISTRICT_ID,
            )),
            1 => roles.push(RoleAssignment {
                begin_date: date(2026, 8, 17),
                ..assignment("secondary", "counselor", school)
            }),
            2 => roles.push(assignment("secondary", "ext:paraprofessional", school)),
            _ => {}
        }
        users.push(User {
            sourced_id: format!("adm-{a}"),
            status: Status::Active,
            date_last_modified: earlier(&mut rng, clock),
            metadata: Fields::new(),
            username: login.clone(),
            user_ids: Vec::new(),
            enabled_user: true,
            given_name: name.given.into(),
            family_name: name.family.into(),
            middle_name: String::new(),
            role: Cow::Borrowed(v1p1_role(primary)),
            identifier: format!("A{a:04}"),
            email: if a % 4 == 3 {
                String::new()
            } else {
                format!("{login}@example.org")
            },
            sms: String::new(),
            phone: String::new(),
            agents: Vec::new(),
            orgs: vec![school.clone()],
            grades: Vec::new(),
            password: String::new(),
            roles,
            primary_org: Some(school.clone()),
            user_profiles: Vec::new(),
            user_master_identifier: String::new(),
            preferred_first_name: String::new(),
            preferred_middle_name: String::new(),
            preferred_last_name: String::new(),
            pronouns: String::new(),
            extra: Fields::new(),
        });
    }

    // Classes, round-robin over schools: a third semester 1 only, a third semester 2 only, a
    // third the whole year; every tenth a homeroom.
    let mut classes = Vec::with_capacity(counts.classes);
    let mut classes_by_school: Vec<Vec<usize>> = vec![Vec::new(); n_schools];
    for c in 0..counts.classes {
        let school = c % n_schools;
        let course_idx = school * courses_per_school + (c / n_schools) % courses_per_school;
        let course = &courses[course_idx];
        let terms = match c % 3 {
            0 => vec![SEMESTER_1.to_string()],
            1 => vec![SEMESTER_2.to_string()],
            _ => vec![SEMESTER_1.to_string(), SEMESTER_2.to_string()],
        };
        let homeroom = c % 10 == 9;
        let period = (c / n_schools) % 8 + 1;
        let periods = if c % 11 == 0 {
            Periods::Text(period.to_string())
        } else {
            Periods::List(vec![period.to_string()])
        };
        let subject = course
            .subjects
            .first()
            .cloned()
            .unwrap_or(Cow::Borrowed(""));
        classes_by_school[school].push(c);
        classes.push(Class {
            sourced_id: format!("cls-{c:07}"),
            status: status(&mut rng, 3),
            date_last_modified: earlier(&mut rng, clock),
            metadata: Fields::new(),
            title: if homeroom {
                format!("Homeroom {}", c / n_schools + 1)
            } else {
                format!("{} - Period {period}", course.title)
            },
            class_code: format!("{}-{:02}", course.course_code, c / n_schools),
            class_type: Cow::Borrowed(if homeroom { "homeroom" } else { "scheduled" }),
            location: if c % 5 == 0 {
                String::new()
            } else {
                format!("Room {}", 100 + c % 300)
            },
            grades: course.grades.clone(),
            subjects: vec![subject],
            course: course.sourced_id.clone(),
            school: school_ids[school].clone(),
            terms,
            subject_codes: Vec::new(),
            periods,
            extra: Fields::new(),
        });
    }

    // Enrollments: a primary teacher per class (sometimes a second teacher), then each
    // student in `enrollments_per_student` classes of their school.
    let mut enrollments =
        Vec::with_capacity(counts.students * counts.enrollments_per_student + counts.classes * 2);
    let mut next_enrollment = 0usize;
    let mut enrollment_id = || {
        next_enrollment += 1;
        format!("enr-{next_enrollment:09}")
    };
    let all_teachers: Vec<&String> = teachers_by_school.iter().flatten().collect();
    for (c, class) in classes.iter().enumerate() {
        let school = c % n_schools;
        let local = &teachers_by_school[school];
        let pool: Vec<&String> = if local.is_empty() {
            all_teachers.clone()
        } else {
            local.iter().collect()
        };
        if pool.is_empty() {
            continue;
        }
        let primary = pool[(c / n_schools) % pool.len()];
        let mut teacher = |user: &str, primary: bool, rng: &mut ChaCha8Rng| Enrollment {
            sourced_id: enrollment_id(),
            status: Status::Active,
            date_last_modified: earlier(rng, clock),
            metadata: Fields::new(),
            user: user.to_string(),
            class: class.sourced_id.clone(),
            school: class.school.clone(),
            role: Cow::Borrowed("teacher"),
            primary,
            begin_date: class_dates(class).0,
            end_date: class_dates(class).1,
            extra: Fields::new(),
        };
        enrollments.push(teacher(primary, true, &mut rng));
        if c % 7 == 3 && pool.len() > 1 {
            let second = pool[(c / n_schools + 1) % pool.len()];
            enrollments.push(teacher(second, false, &mut rng));
        }
    }
    for s in 0..counts.students {
        let school = s % n_schools;
        let grade = (s / n_schools) % 13;
        let id = student_id(s);
        let dlm = earlier(&mut rng, clock);
        let (mut user, demo) =
            new_student(&mut rng, id.clone(), s, &school_ids[school], grade, dlm);
        user.status = status(&mut rng, 5);
        users.push(user);
        demographics_list.push(demo);
        let local = &classes_by_school[school];
        let k = counts.enrollments_per_student.min(local.len());
        for pick in index::sample(&mut rng, local.len(), k) {
            let class = &classes[local[pick]];
            let mut e = student_enrollment(enrollment_id(), &id, class, earlier(&mut rng, clock));
            e.status = status(&mut rng, 3);
            enrollments.push(e);
        }
    }

    let mut data = Dataset {
        orgs,
        academic_sessions,
        courses,
        classes,
        users,
        enrollments,
        demographics: demographics_list,
        clock,
    };
    data.sort();
    data
}
