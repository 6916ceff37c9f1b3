//! The pre-enablement data audit (`audit --district ID`, CONTRACT §7): fetch the whole district
//! through the OneRoster client, normalize every record exactly as a sync would, and report what
//! would stop or distort an import. It writes nothing anywhere and needs no database.
//!
//! Every [`Finding`] has a stable `code`, a [`Severity`], the entity it is about, a count and up
//! to [`SAMPLES`] sample `sourcedId`s. Findings name fields and ids only: never a name, an email,
//! a username or a demographics value.
//!
//! Severity:
//! - **blocking**: an endpoint answering 401/403 (`credentials_rejected`, `permission_denied`),
//!   any other fetch failure (`fetch_failed`: 5xx after retries, incomplete pages...), and
//!   invalid records (`invalid_record`) or dangling references (`dangling_*`) when they are more
//!   than [`BLOCKING_SHARE`] (1 %) of the records of their entity; at most 1 % they are warnings.
//! - **warning**: duplicate usernames/emails/identifiers among active users, active students and
//!   teachers without an org, active classes without an active teacher, active enrollments
//!   outside their class's term dates, types outside the OneRoster 1.1 vocabulary, unrecognized
//!   `sex` values, fields unreadable as dates or timestamps (stored as NULL), and demographic
//!   coverage below [`COVERAGE_WARNING`] (50 %).
//! - **info**: demographic coverage at or above 50 %.
//!
//! What counts:
//! - References are checked from active records only, against the records the sync would keep
//!   (present and valid, whatever their status); a reference to a record skipped as invalid is
//!   dangling, as it would be for the sync. A check is left out when a collection it needs could
//!   not be fetched completely (the fetch failure is the finding then).
//! - Duplicates are case-insensitive for usernames and emails, exact for identifiers; every user
//!   sharing a value is counted.
//! - An enrollment is outside its term dates when its `beginDate` is before the earliest
//!   `startDate` of its class's terms, or its `endDate` (exclusive) is more than one day after
//!   the latest `endDate` (inclusive) of those terms. Missing dates are not judged.
//! - Demographic coverage is over active students: with a gender, with ethnicity
//!   (`hispanicOrLatinoEthnicity` present), with at least one race flag true.
//!
//! Memory: the audit keeps, per record, only what its checks need (ids, references, dates,
//! lower-cased usernames/emails/identifiers, a few flags), never whole records. At S/M sizes
//! (60k students, ~500k enrollments) that is tens of MB; an L/XL district (millions of
//! enrollments) would want the checks done in SQL over the sync's staging tables instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use tracing::info;

use crate::config::DistrictConfig;
use crate::domain::{Skipped, Status, Warning};
use crate::normalize;
use crate::oneroster::{self, Endpoint, FetchError, OneRosterClient, PullQuery, WireRecord, wire};

/// Sample ids kept per finding.
pub const SAMPLES: usize = 20;
/// Share of an entity's records above which invalid records or dangling references block.
pub const BLOCKING_SHARE: f64 = 0.01;
/// Demographic coverage below which it is a warning rather than info.
pub const COVERAGE_WARNING: f64 = 0.5;

const ORG_TYPES: &[&str] = &[
    "department",
    "district",
    "local",
    "national",
    "school",
    "state",
];
const SESSION_TYPES: &[&str] = &["gradingPeriod", "schoolYear", "semester", "term"];
const CLASS_TYPES: &[&str] = &["homeroom", "scheduled"];

/// The collections in the order they are fetched (entity names as in the store and the logs).
const ENDPOINTS: [Endpoint; 7] = [
    Endpoint::Orgs,
    Endpoint::AcademicSessions,
    Endpoint::Courses,
    Endpoint::Classes,
    Endpoint::Users,
    Endpoint::Demographics,
    Endpoint::Enrollments,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Blocking,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Blocking => "blocking",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub severity: Severity,
    pub entity: &'static str,
    pub count: u64,
    pub message: String,
    /// Up to [`SAMPLES`] `sourcedId`s of affected records.
    pub samples: Vec<String>,
}

/// Record counts of one collection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Records received, readable or not.
    pub fetched: u64,
    pub active: u64,
    pub deleted: u64,
    /// Records the sync would skip (unreadable or failing validation).
    pub invalid: u64,
    /// Whether every page of the collection was fetched.
    pub complete: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub district: String,
    pub generated_at: DateTime<Utc>,
    pub totals: BTreeMap<&'static str, Totals>,
    /// Blocking first, then warnings, then info.
    pub findings: Vec<Finding>,
    pub blocking: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot build the OneRoster client for the audit")]
    Client(#[source] FetchError),
}

/// Audits one district. Fetch failures are findings, not errors: only a client that cannot be
/// built at all (bad configuration) is an error.
pub async fn run(district: &DistrictConfig) -> Result<AuditReport, AuditError> {
    let client = OneRosterClient::new(district).map_err(AuditError::Client)?;
    info!(district = %district.id, "audit started");
    let mut facts = Facts::default();
    for endpoint in ENDPOINTS {
        match endpoint {
            Endpoint::Orgs => facts.fetch(&client, endpoint, Facts::take_org).await,
            Endpoint::AcademicSessions => facts.fetch(&client, endpoint, Facts::take_session).await,
            Endpoint::Courses => facts.fetch(&client, endpoint, Facts::take_course).await,
            Endpoint::Classes => facts.fetch(&client, endpoint, Facts::take_class).await,
            Endpoint::Users => facts.fetch(&client, endpoint, Facts::take_user).await,
            Endpoint::Enrollments => facts.fetch(&client, endpoint, Facts::take_enrollment).await,
            Endpoint::Demographics if district.demographics => {
                facts
                    .fetch(&client, endpoint, Facts::take_demographics)
                    .await
            }
            Endpoint::Demographics => {}
        }
    }
    let report = facts.report(&district.id);
    info!(
        district = %district.id,
        findings = report.findings.len(),
        blocking = report.blocking,
        "audit finished"
    );
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// What the checks need of each record.

struct OrgFacts {
    active: bool,
    parent: Option<String>,
    org_type: Option<String>,
}

struct SessionFacts {
    active: bool,
    parent: Option<String>,
    session_type: Option<String>,
    start: Option<NaiveDate>,
    end: Option<NaiveDate>,
}

struct CourseFacts {
    active: bool,
    org: Option<String>,
}

struct ClassFacts {
    active: bool,
    school: Option<String>,
    course: Option<String>,
    terms: Vec<String>,
    class_type: Option<String>,
}

struct UserFacts {
    active: bool,
    role: String,
    orgs: Vec<String>,
}

struct EnrollmentFacts {
    id: String,
    active: bool,
    user: String,
    class: String,
    teacher: bool,
    begin: Option<NaiveDate>,
    end: Option<NaiveDate>,
}

/// Whether a student's demographics hold one of the values coverage is measured on.
type Has = fn(&DemographicsFacts) -> bool;

struct DemographicsFacts {
    gender: bool,
    ethnicity: bool,
    race: bool,
}

/// A count with a few sample ids.
#[derive(Default)]
struct Tally {
    count: u64,
    samples: Vec<String>,
}

impl Tally {
    fn add(&mut self, id: &str) {
        self.count += 1;
        if self.samples.len() < SAMPLES {
            self.samples.push(id.to_owned());
        }
    }
}

#[derive(Default)]
struct Facts {
    totals: BTreeMap<&'static str, Totals>,
    orgs: HashMap<String, OrgFacts>,
    sessions: HashMap<String, SessionFacts>,
    courses: HashMap<String, CourseFacts>,
    classes: HashMap<String, ClassFacts>,
    users: HashMap<String, UserFacts>,
    enrollments: Vec<EnrollmentFacts>,
    demographics: HashMap<String, DemographicsFacts>,
    /// Active users by lower-cased username / email and by identifier: the ids holding each.
    usernames: HashMap<String, Vec<String>>,
    emails: HashMap<String, Vec<String>>,
    identifiers: HashMap<String, Vec<String>>,
    /// (entity, reason) of records the sync would skip.
    invalid: BTreeMap<(&'static str, String), Tally>,
    /// (entity, message) of fields stored as NULL.
    field_warnings: BTreeMap<(&'static str, String), Tally>,
    unrecognized_sex: Tally,
    fetch_failures: Vec<Finding>,
}

impl Facts {
    /// Fetches one collection page by page, handing each record to `take`. A failure is kept as
    /// a finding and leaves the collection marked incomplete; the audit goes on.
    async fn fetch<W: WireRecord>(
        &mut self,
        client: &OneRosterClient,
        endpoint: Endpoint,
        take: fn(&mut Facts, W),
    ) {
        let entity = endpoint.entity();
        self.totals.entry(entity).or_default();
        let query = match endpoint {
            Endpoint::Demographics => PullQuery {
                fields: Some(oneroster::DEMOGRAPHICS_FIELDS.to_vec()),
                ..PullQuery::default()
            },
            _ => PullQuery::default(),
        };
        let mut pages = std::pin::pin!(client.pages::<W>(endpoint, query));
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    self.fetch_failures.push(fetch_finding(endpoint, &e));
                    return;
                }
            };
            self.total(entity).fetched += (page.records.len() + page.unreadable.len()) as u64;
            for bad in page.unreadable {
                self.skip(bad);
            }
            for record in page.records {
                take(self, record);
            }
        }
        self.total(entity).complete = true;
    }

    fn total(&mut self, entity: &'static str) -> &mut Totals {
        self.totals.entry(entity).or_default()
    }

    fn skip(&mut self, skipped: Skipped) {
        self.total(skipped.entity).invalid += 1;
        self.invalid
            .entry((skipped.entity, skipped.reason))
            .or_default()
            .add(&skipped.sourced_id);
    }

    fn status(&mut self, entity: &'static str, status: Status) -> bool {
        let t = self.total(entity);
        match status {
            Status::Active => t.active += 1,
            Status::Deleted => t.deleted += 1,
        }
        status == Status::Active
    }

    fn warnings(&mut self, warnings: Vec<Warning>) {
        for w in warnings {
            self.field_warnings
                .entry((w.entity, w.message))
                .or_default()
                .add(&w.sourced_id);
        }
    }

    fn take_org(&mut self, w: wire::Org) {
        match normalize::org(w) {
            Ok((o, warnings)) => {
                self.warnings(warnings);
                let active = self.status("orgs", o.status);
                self.orgs.insert(
                    o.sourced_id,
                    OrgFacts {
                        active,
                        parent: o.parent_sourced_id,
                        org_type: o.org_type,
                    },
                );
            }
            Err(s) => self.skip(s),
        }
    }

    fn take_session(&mut self, w: wire::AcademicSession) {
        match normalize::academic_session(w) {
            Ok((s, warnings)) => {
                self.warnings(warnings);
                let active = self.status("academic_sessions", s.status);
                self.sessions.insert(
                    s.sourced_id,
                    SessionFacts {
                        active,
                        parent: s.parent_sourced_id,
                        session_type: s.session_type,
                        start: s.start_date,
                        end: s.end_date,
                    },
                );
            }
            Err(s) => self.skip(s),
        }
    }

    fn take_course(&mut self, w: wire::Course) {
        match normalize::course(w) {
            Ok((c, warnings)) => {
                self.warnings(warnings);
                let active = self.status("courses", c.status);
                self.courses.insert(
                    c.sourced_id,
                    CourseFacts {
                        active,
                        org: c.org_sourced_id,
                    },
                );
            }
            Err(s) => self.skip(s),
        }
    }

    fn take_class(&mut self, w: wire::Class) {
        match normalize::class(w) {
            Ok((c, warnings)) => {
                self.warnings(warnings);
                let active = self.status("classes", c.status);
                self.classes.insert(
                    c.sourced_id,
                    ClassFacts {
                        active,
                        school: c.school_sourced_id,
                        course: c.course_sourced_id,
                        terms: c.term_sourced_ids,
                        class_type: c.class_type,
                    },
                );
            }
            Err(s) => self.skip(s),
        }
    }

    fn take_user(&mut self, w: wire::User) {
        match normalize::user(w) {
            Ok((u, warnings)) => {
                self.warnings(warnings);
                let active = self.status("users", u.status);
                if active {
                    // Only the lower-cased values are kept, for duplicate detection.
                    let id = &u.sourced_id;
                    if let Some(name) = &u.username {
                        push_holder(&mut self.usernames, name.to_lowercase(), id);
                    }
                    if let Some(email) = &u.email {
                        push_holder(&mut self.emails, email.to_lowercase(), id);
                    }
                    if let Some(identifier) = &u.identifier {
                        push_holder(&mut self.identifiers, identifier.clone(), id);
                    }
                }
                self.users.insert(
                    u.sourced_id,
                    UserFacts {
                        active,
                        role: u.role,
                        orgs: u.org_sourced_ids,
                    },
                );
            }
            Err(s) => self.skip(s),
        }
    }

    fn take_enrollment(&mut self, w: wire::Enrollment) {
        match normalize::enrollment(w) {
            Ok((e, warnings)) => {
                self.warnings(warnings);
                let active = self.status("enrollments", e.status);
                self.enrollments.push(EnrollmentFacts {
                    id: e.sourced_id,
                    active,
                    user: e.user_sourced_id,
                    class: e.class_sourced_id,
                    teacher: e.role == "teacher",
                    begin: e.begin_date,
                    end: e.end_date,
                });
            }
            Err(s) => self.skip(s),
        }
    }

    fn take_demographics(&mut self, w: wire::Demographics) {
        // Whether a value was sent at all; the value itself is never kept.
        let sex_sent = w.sex.as_deref().is_some_and(|s| !s.trim().is_empty());
        let id = w.sourced_id.clone().unwrap_or_default();
        match normalize::demographics(w) {
            Ok((record, _)) => {
                // normalize's only demographics warning is the unrecognized sex, counted here.
                let Some(d) = record else {
                    self.total("demographics").deleted += 1;
                    return;
                };
                self.total("demographics").active += 1;
                if sex_sent && d.gender.is_none() {
                    self.unrecognized_sex.add(&id);
                }
                self.demographics.insert(
                    d.user_sourced_id,
                    DemographicsFacts {
                        gender: d.gender.is_some(),
                        ethnicity: d.hispanic_or_latino.is_some(),
                        race: !d.races.is_empty(),
                    },
                );
            }
            Err(s) => self.skip(s),
        }
    }

    fn complete(&self, entity: &str) -> bool {
        self.totals.get(entity).is_some_and(|t| t.complete)
    }

    fn fetched(&self, entity: &str) -> u64 {
        self.totals.get(entity).map_or(0, |t| t.fetched)
    }

    /// Severity of a defect affecting `count` records of `entity`: blocking over 1 %.
    fn share_severity(&self, entity: &str, count: u64) -> Severity {
        let fetched = self.fetched(entity).max(1);
        if count as f64 / fetched as f64 > BLOCKING_SHARE {
            Severity::Blocking
        } else {
            Severity::Warning
        }
    }

    fn report(self, district: &str) -> AuditReport {
        let mut findings = Vec::new();
        findings.extend(self.fetch_failures.iter().cloned());

        for ((entity, reason), tally) in &self.invalid {
            findings.push(finding(
                "invalid_record",
                self.share_severity(entity, tally.count),
                entity,
                tally,
                format!(
                    "{} {entity} record(s) would be skipped by a sync: {reason}",
                    tally.count
                ),
            ));
        }
        for ((entity, message), tally) in &self.field_warnings {
            findings.push(finding(
                "field_stored_as_null",
                Severity::Warning,
                entity,
                tally,
                format!("{} {entity} record(s): {message}", tally.count),
            ));
        }
        if self.unrecognized_sex.count > 0 {
            let t = &self.unrecognized_sex;
            findings.push(finding(
                "unrecognized_sex",
                Severity::Warning,
                "demographics",
                t,
                format!(
                    "{} demographics records have a sex value outside male/female/other/unspecified (and their usual spellings); gender would be stored as NULL",
                    t.count
                ),
            ));
        }

        self.dangling(&mut findings);
        self.duplicates(&mut findings);
        self.people_and_classes(&mut findings);
        self.term_dates(&mut findings);
        self.vocabulary(&mut findings);
        self.coverage(&mut findings);

        findings.sort_by(|a, b| {
            (a.severity, entity_rank(a.entity), a.code).cmp(&(
                b.severity,
                entity_rank(b.entity),
                b.code,
            ))
        });
        let blocking = findings.iter().any(|f| f.severity == Severity::Blocking);
        AuditReport {
            district: district.to_owned(),
            generated_at: Utc::now(),
            totals: self.totals,
            findings,
            blocking,
        }
    }

    fn dangling(&self, findings: &mut Vec<Finding>) {
        let mut check = |code: &'static str,
                         entity: &'static str,
                         target: &'static str,
                         what: &str,
                         tally: Tally| {
            if tally.count == 0 || !self.complete(entity) || !self.complete(target) {
                return;
            }
            findings.push(finding(
                code,
                self.share_severity(entity, tally.count),
                entity,
                &tally,
                format!(
                    "{} active {entity} reference {what} that is not in the snapshot (absent, or skipped as invalid)",
                    tally.count
                ),
            ));
        };

        let mut parent = Tally::default();
        for (id, o) in sorted(&self.orgs) {
            if o.active
                && o.parent
                    .as_ref()
                    .is_some_and(|p| !self.orgs.contains_key(p))
            {
                parent.add(id);
            }
        }
        check(
            "dangling_org_parent",
            "orgs",
            "orgs",
            "a parent org",
            parent,
        );

        let mut parent = Tally::default();
        for (id, s) in sorted(&self.sessions) {
            if s.active
                && s.parent
                    .as_ref()
                    .is_some_and(|p| !self.sessions.contains_key(p))
            {
                parent.add(id);
            }
        }
        check(
            "dangling_session_parent",
            "academic_sessions",
            "academic_sessions",
            "a parent session",
            parent,
        );

        let mut org = Tally::default();
        for (id, c) in sorted(&self.courses) {
            if c.active && c.org.as_ref().is_some_and(|o| !self.orgs.contains_key(o)) {
                org.add(id);
            }
        }
        check("dangling_course_org", "courses", "orgs", "an org", org);

        let (mut school, mut course, mut term) =
            (Tally::default(), Tally::default(), Tally::default());
        for (id, c) in sorted(&self.classes).filter(|(_, c)| c.active) {
            if c.school
                .as_ref()
                .is_some_and(|s| !self.orgs.contains_key(s))
            {
                school.add(id);
            }
            if c.course
                .as_ref()
                .is_some_and(|k| !self.courses.contains_key(k))
            {
                course.add(id);
            }
            if c.terms.iter().any(|t| !self.sessions.contains_key(t)) {
                term.add(id);
            }
        }
        check(
            "dangling_class_school",
            "classes",
            "orgs",
            "a school",
            school,
        );
        check(
            "dangling_class_course",
            "classes",
            "courses",
            "a course",
            course,
        );
        check(
            "dangling_class_term",
            "classes",
            "academic_sessions",
            "a term",
            term,
        );

        let mut org = Tally::default();
        for (id, u) in sorted(&self.users).filter(|(_, u)| u.active) {
            if u.orgs.iter().any(|o| !self.orgs.contains_key(o)) {
                org.add(id);
            }
        }
        check("dangling_user_org", "users", "orgs", "an org", org);

        let (mut user, mut class) = (Tally::default(), Tally::default());
        for e in self.enrollments.iter().filter(|e| e.active) {
            if !self.users.contains_key(&e.user) {
                user.add(&e.id);
            }
            if !self.classes.contains_key(&e.class) {
                class.add(&e.id);
            }
        }
        check(
            "dangling_enrollment_user",
            "enrollments",
            "users",
            "a user",
            user,
        );
        check(
            "dangling_enrollment_class",
            "enrollments",
            "classes",
            "a class",
            class,
        );

        let mut user = Tally::default();
        for (id, _) in sorted(&self.demographics) {
            if !self.users.contains_key(id) {
                user.add(id);
            }
        }
        check(
            "dangling_demographics_user",
            "demographics",
            "users",
            "no user (a demographics record's sourcedId is its user's)",
            user,
        );
    }

    fn duplicates(&self, findings: &mut Vec<Finding>) {
        for (code, field, holders) in [
            ("duplicate_username", "username", &self.usernames),
            ("duplicate_email", "email", &self.emails),
            ("duplicate_identifier", "identifier", &self.identifiers),
        ] {
            let mut tally = Tally::default();
            // Sorted so the samples are the same from one audit to the next.
            let mut shared: Vec<&Vec<String>> = holders.values().filter(|v| v.len() > 1).collect();
            shared.sort();
            let values = shared.len();
            for ids in shared {
                for id in ids {
                    tally.add(id);
                }
            }
            if tally.count > 0 {
                findings.push(finding(
                    code,
                    Severity::Warning,
                    "users",
                    &tally,
                    format!(
                        "{} active users share {values} {field} value(s){}",
                        tally.count,
                        if field == "identifier" {
                            ""
                        } else {
                            " (compared case-insensitively)"
                        }
                    ),
                ));
            }
        }
    }

    fn people_and_classes(&self, findings: &mut Vec<Finding>) {
        if self.complete("users") {
            let mut no_org = Tally::default();
            for (id, u) in sorted(&self.users) {
                if u.active && (u.role == "student" || u.role == "teacher") && u.orgs.is_empty() {
                    no_org.add(id);
                }
            }
            if no_org.count > 0 {
                findings.push(finding(
                    "user_without_org",
                    Severity::Warning,
                    "users",
                    &no_org,
                    format!(
                        "{} active students or teachers belong to no org",
                        no_org.count
                    ),
                ));
            }
        }
        if self.complete("classes") && self.complete("enrollments") && self.complete("users") {
            let taught: HashSet<&str> = self
                .enrollments
                .iter()
                .filter(|e| e.active && e.teacher)
                .filter(|e| self.users.get(&e.user).is_some_and(|u| u.active))
                .map(|e| e.class.as_str())
                .collect();
            let mut untaught = Tally::default();
            for (id, c) in sorted(&self.classes) {
                if c.active && !taught.contains(id.as_str()) {
                    untaught.add(id);
                }
            }
            if untaught.count > 0 {
                findings.push(finding(
                    "class_without_teacher",
                    Severity::Warning,
                    "classes",
                    &untaught,
                    format!(
                        "{} active classes have no active teacher enrollment",
                        untaught.count
                    ),
                ));
            }
        }
    }

    fn term_dates(&self, findings: &mut Vec<Finding>) {
        if !self.complete("enrollments")
            || !self.complete("classes")
            || !self.complete("academic_sessions")
        {
            return;
        }
        let mut outside = Tally::default();
        for e in self.enrollments.iter().filter(|e| e.active) {
            let Some(class) = self.classes.get(&e.class) else {
                continue;
            };
            let terms: Vec<&SessionFacts> = class
                .terms
                .iter()
                .filter_map(|t| self.sessions.get(t))
                .collect();
            let start = terms.iter().filter_map(|t| t.start).min();
            let end = terms.iter().filter_map(|t| t.end).max();
            let early = matches!((e.begin, start), (Some(b), Some(s)) if b < s);
            // endDate is exclusive on an enrollment, inclusive on a session.
            let late = matches!((e.end, end), (Some(x), Some(t)) if x > t + chrono::Days::new(1));
            if early || late {
                outside.add(&e.id);
            }
        }
        if outside.count > 0 {
            findings.push(finding(
                "enrollment_outside_term",
                Severity::Warning,
                "enrollments",
                &outside,
                format!(
                    "{} active enrollments begin before or end after their class's terms",
                    outside.count
                ),
            ));
        }
    }

    fn vocabulary(&self, findings: &mut Vec<Finding>) {
        let mut push = |code, entity, field: &str, allowed: &[&str], tally: Tally| {
            if tally.count > 0 {
                findings.push(finding(
                    code,
                    Severity::Warning,
                    entity,
                    &tally,
                    format!(
                        "{} active {entity} have a {field} outside the OneRoster 1.1 vocabulary ({}; spelling matters)",
                        tally.count,
                        allowed.join(", ")
                    ),
                ));
            }
        };
        let unknown = |t: &Option<String>, allowed: &[&str]| {
            t.as_deref().is_some_and(|t| !allowed.contains(&t))
        };

        let mut tally = Tally::default();
        for (id, o) in sorted(&self.orgs) {
            if o.active && unknown(&o.org_type, ORG_TYPES) {
                tally.add(id);
            }
        }
        push("unknown_org_type", "orgs", "type", ORG_TYPES, tally);

        let mut tally = Tally::default();
        for (id, s) in sorted(&self.sessions) {
            if s.active && unknown(&s.session_type, SESSION_TYPES) {
                tally.add(id);
            }
        }
        push(
            "unknown_session_type",
            "academic_sessions",
            "type",
            SESSION_TYPES,
            tally,
        );

        let mut tally = Tally::default();
        for (id, c) in sorted(&self.classes) {
            if c.active && unknown(&c.class_type, CLASS_TYPES) {
                tally.add(id);
            }
        }
        push(
            "unknown_class_type",
            "classes",
            "classType",
            CLASS_TYPES,
            tally,
        );
    }

    fn coverage(&self, findings: &mut Vec<Finding>) {
        if !self.complete("demographics") || !self.complete("users") {
            return;
        }
        let students: Vec<&String> = sorted(&self.users)
            .filter(|(_, u)| u.active && u.role == "student")
            .map(|(id, _)| id)
            .collect();
        if students.is_empty() {
            return;
        }
        let checks: [(&'static str, &str, Has); 3] = [
            ("coverage_gender", "a gender", |d| d.gender),
            (
                "coverage_ethnicity",
                "an ethnicity (Hispanic or Latino or not)",
                |d| d.ethnicity,
            ),
            ("coverage_race", "at least one race", |d| d.race),
        ];
        for (code, what, has) in checks {
            // The samples are students *without* the value: what someone would look up.
            let mut without = Tally::default();
            let mut with = 0u64;
            for id in &students {
                if self.demographics.get(*id).is_some_and(has) {
                    with += 1;
                } else {
                    without.add(id);
                }
            }
            let share = with as f64 / students.len() as f64;
            let severity = if share < COVERAGE_WARNING {
                Severity::Warning
            } else {
                Severity::Info
            };
            findings.push(Finding {
                code,
                severity,
                entity: "demographics",
                count: with,
                message: format!(
                    "{with} of {} active students ({:.1} %) have {what}",
                    students.len(),
                    share * 100.0
                ),
                samples: without.samples,
            });
        }
    }
}

fn push_holder(map: &mut HashMap<String, Vec<String>>, key: String, id: &str) {
    map.entry(key).or_default().push(id.to_owned());
}

/// A map's entries by key, so samples do not depend on hashing.
fn sorted<V>(map: &HashMap<String, V>) -> impl Iterator<Item = (&String, &V)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries.into_iter()
}

fn finding(
    code: &'static str,
    severity: Severity,
    entity: &'static str,
    tally: &Tally,
    message: String,
) -> Finding {
    let mut samples = tally.samples.clone();
    samples.sort();
    Finding {
        code,
        severity,
        entity,
        count: tally.count,
        message,
        samples,
    }
}

fn fetch_finding(endpoint: Endpoint, e: &FetchError) -> Finding {
    let code = match e {
        FetchError::Forbidden { .. } => "permission_denied",
        e if e.is_permission() => "credentials_rejected",
        _ => "fetch_failed",
    };
    Finding {
        code,
        severity: Severity::Blocking,
        entity: endpoint.entity(),
        count: 1,
        message: crate::sync::error_chain(e),
        samples: Vec::new(),
    }
}

fn entity_rank(entity: &str) -> usize {
    ENDPOINTS
        .iter()
        .position(|e| e.entity() == entity)
        .unwrap_or(ENDPOINTS.len())
}

impl AuditReport {
    /// The report for people: header, totals, findings (blocking first) with their samples.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(
            out,
            "data audit of district {} at {}",
            self.district,
            self.generated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let _ = writeln!(
            out,
            "\n{:<18} {:>9} {:>9} {:>9} {:>9}  complete",
            "entity", "fetched", "active", "deleted", "invalid"
        );
        let mut totals: Vec<_> = self.totals.iter().collect();
        totals.sort_by_key(|(entity, _)| entity_rank(entity));
        for (entity, t) in totals {
            let _ = writeln!(
                out,
                "{entity:<18} {:>9} {:>9} {:>9} {:>9}  {}",
                t.fetched,
                t.active,
                t.deleted,
                t.invalid,
                if t.complete { "yes" } else { "NO" }
            );
        }
        let _ = writeln!(out, "\nfindings: {}", self.findings.len());
        for f in &self.findings {
            let _ = writeln!(
                out,
                "{:<8} {:<28} {:<18} {:>7}  {}",
                f.severity.as_str().to_uppercase(),
                f.code,
                f.entity,
                f.count,
                f.message
            );
            if !f.samples.is_empty() {
                let _ = writeln!(out, "         samples: {}", f.samples.join(", "));
            }
        }
        let blocking = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Blocking)
            .count();
        let _ = write!(
            out,
            "\nresult: {}",
            if self.blocking {
                format!("{blocking} blocking finding(s): fix these before enabling the district")
            } else {
                "no blocking finding".to_owned()
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(y, m, d)
    }

    fn complete(facts: &mut Facts, entities: &[&'static str]) {
        for entity in entities {
            facts.total(entity).complete = true;
        }
    }

    fn codes(report: &AuditReport) -> Vec<(&'static str, Severity, u64)> {
        report
            .findings
            .iter()
            .map(|f| (f.code, f.severity, f.count))
            .collect()
    }

    /// A class `c1` in term `t1` (2026-08-17 .. 2027-01-23) with one active enrollment per
    /// (begin, end) given.
    fn term_facts(dates: &[(Option<NaiveDate>, Option<NaiveDate>)]) -> Facts {
        let mut facts = Facts::default();
        complete(&mut facts, &["academic_sessions", "classes", "enrollments"]);
        facts.sessions.insert(
            "t1".into(),
            SessionFacts {
                active: true,
                parent: None,
                session_type: Some("semester".into()),
                start: date(2026, 8, 17),
                end: date(2027, 1, 23),
            },
        );
        facts.classes.insert(
            "c1".into(),
            ClassFacts {
                active: true,
                school: None,
                course: None,
                terms: vec!["t1".into()],
                class_type: Some("scheduled".into()),
            },
        );
        for (i, (begin, end)) in dates.iter().enumerate() {
            facts.enrollments.push(EnrollmentFacts {
                id: format!("e{i}"),
                active: true,
                user: "u1".into(),
                class: "c1".into(),
                teacher: false,
                begin: *begin,
                end: *end,
            });
        }
        facts
    }

    #[test]
    fn enrollment_end_is_exclusive_against_the_term_end() {
        let facts = term_facts(&[
            (date(2026, 8, 17), date(2027, 1, 24)), // the day after the term: inside
            (None, None),                           // no dates: not judged
            (date(2026, 8, 16), None),              // a day early
            (None, date(2027, 1, 25)),              // two days late
        ]);
        let mut findings = Vec::new();
        facts.term_dates(&mut findings);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].code, "enrollment_outside_term");
        assert_eq!(findings[0].samples, vec!["e2", "e3"]);
    }

    #[test]
    fn dangling_share_decides_blocking_and_incomplete_targets_are_not_judged() {
        let mut facts = Facts::default();
        complete(&mut facts, &["users", "classes", "enrollments"]);
        facts.total("enrollments").fetched = 200;
        facts.classes.insert(
            "c1".into(),
            ClassFacts {
                active: true,
                school: None,
                course: None,
                terms: Vec::new(),
                class_type: None,
            },
        );
        let enrollment = |id: &str, user: &str| EnrollmentFacts {
            id: id.into(),
            active: true,
            user: user.into(),
            class: "c1".into(),
            teacher: false,
            begin: None,
            end: None,
        };
        facts.enrollments.push(enrollment("e1", "ghost"));
        facts.enrollments.push(enrollment("e2", "ghost"));
        let mut findings = Vec::new();
        facts.dangling(&mut findings);
        // 2 of 200 is exactly 1 %: not over it.
        assert_eq!(findings.len(), 1);
        assert_eq!(
            (findings[0].code, findings[0].severity, findings[0].count),
            ("dangling_enrollment_user", Severity::Warning, 2)
        );
        facts.enrollments.push(enrollment("e3", "ghost"));
        let mut findings = Vec::new();
        facts.dangling(&mut findings);
        assert_eq!(findings[0].severity, Severity::Blocking);

        // Users not fetched completely: every reference would look dangling; say nothing.
        facts.total("users").complete = false;
        let mut findings = Vec::new();
        facts.dangling(&mut findings);
        assert!(findings.is_empty());
    }

    #[test]
    fn duplicates_ignore_case_for_usernames_not_for_identifiers() {
        let mut facts = Facts::default();
        complete(&mut facts, &["users"]);
        for (id, username, identifier) in
            [("u1", "Ana", "A1"), ("u2", "ana", "a1"), ("u3", "bo", "B")]
        {
            push_holder(&mut facts.usernames, username.to_lowercase(), id);
            push_holder(&mut facts.identifiers, identifier.to_owned(), id);
        }
        let report = facts.report("d");
        assert_eq!(
            codes(&report),
            vec![("duplicate_username", Severity::Warning, 2)]
        );
        assert_eq!(report.findings[0].samples, vec!["u1", "u2"]);
        assert!(!report.blocking);
    }

    #[test]
    fn coverage_below_half_is_a_warning_with_the_students_without() {
        let mut facts = Facts::default();
        complete(&mut facts, &["users", "demographics"]);
        for id in ["s1", "s2", "s3"] {
            facts.users.insert(
                id.into(),
                UserFacts {
                    active: true,
                    role: "student".into(),
                    orgs: vec!["o".into()],
                },
            );
        }
        facts.demographics.insert(
            "s1".into(),
            DemographicsFacts {
                gender: true,
                ethnicity: true,
                race: false,
            },
        );
        facts.demographics.insert(
            "s2".into(),
            DemographicsFacts {
                gender: true,
                ethnicity: false,
                race: false,
            },
        );
        let report = facts.report("d");
        let by_code = |code: &str| {
            report
                .findings
                .iter()
                .find(|f| f.code == code)
                .cloned()
                .unwrap()
        };
        let gender = by_code("coverage_gender");
        assert_eq!((gender.severity, gender.count), (Severity::Info, 2));
        assert_eq!(gender.samples, vec!["s3"]);
        let ethnicity = by_code("coverage_ethnicity");
        assert_eq!(
            (ethnicity.severity, ethnicity.count),
            (Severity::Warning, 1)
        );
        assert_eq!(ethnicity.samples, vec!["s2", "s3"]);
        // Warnings sort before info.
        assert_eq!(report.findings[0].severity, Severity::Warning);
    }

    #[test]
    fn fetch_failures_are_blocking_and_classified() {
        let forbidden = fetch_finding(
            Endpoint::Demographics,
            &FetchError::Forbidden {
                endpoint: Endpoint::Demographics,
            },
        );
        assert_eq!(
            (forbidden.code, forbidden.severity, forbidden.entity),
            ("permission_denied", Severity::Blocking, "demographics")
        );
        let unauthorized = fetch_finding(
            Endpoint::Users,
            &FetchError::Unauthorized {
                endpoint: Endpoint::Users,
            },
        );
        assert_eq!(unauthorized.code, "credentials_rejected");
        let incomplete = fetch_finding(
            Endpoint::Users,
            &FetchError::IncompletePage {
                endpoint: Endpoint::Users,
                offset: 500,
                expected: 500,
                got: 10,
            },
        );
        assert_eq!(
            (incomplete.code, incomplete.severity),
            ("fetch_failed", Severity::Blocking)
        );
    }
}
