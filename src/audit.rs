//! The pre-enablement data audit (`audit --district ID`, CONTRACT §7): the sync's own pull in
//! report mode. It fetches every collection through the same client, normalization, reference
//! checks and skip rules as `sync --dry-run` (the `pull` and `snapshot` modules), stages
//! nothing, writes nothing anywhere and needs no database. A record the audit reports as
//! skipped is one the sync would skip, with the same finding code; what the sync keeps with a
//! warning is a warning here too.
//!
//! It adds only what is the audit's own: fetch failures per collection (missing permissions
//! above all), duplicate usernames, emails and identifiers among active users, active students
//! and teachers without an org, active classes without an active teacher, active enrollments
//! outside their class's term dates, and demographic coverage.
//!
//! Every [`AuditFinding`] has a stable `code` (the sync's codes for per-record findings), a
//! severity (`error`, `warning`, `info`), whether it is *blocking*, the collection, a count and
//! up to [`SAMPLES`] sample `sourcedId`s. Findings name fields and ids only. Blocking means the
//! sync would lose data or refuse to run: a fetch failure it would not survive, or records it
//! would skip amounting to more than [`BLOCKING_SHARE`] (1 %) of their collection.
//!
//! Memory: besides the snapshot's index (24 bytes a record), the audit keeps per record only
//! what its own checks need (ids, references, dates, lower-cased usernames/emails/identifiers,
//! a few flags), never whole records: tens of MB for an M district.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use tracing::info;

use crate::config::{DemographicsMode, DistrictConfig};
use crate::diff::Index;
use crate::domain::{
    AcademicSession, Class, Enrollment, Entity, FindingSummary, Org, Severity, Status, User,
};
use crate::oneroster::{FetchError, OneRosterClient};
use crate::pull::{Pull, PullError, Stage};
use crate::registry::{Collection, Kind, each_collection};
use crate::snapshot::{Observe, Snapshot};
use crate::telemetry::error_chain;

/// Sample ids kept per finding.
pub const SAMPLES: usize = 20;
/// Share of a collection's records above which records the sync would skip block.
pub const BLOCKING_SHARE: f64 = 0.01;
/// Demographic coverage below which it is a warning rather than info.
pub const COVERAGE_WARNING: f64 = 0.5;

/// How bad an audit finding is: the sync's severities, plus `info` for what is only
/// reported (coverage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSeverity {
    Error,
    Warning,
    Info,
}

impl AuditSeverity {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditSeverity::Error => "error",
            AuditSeverity::Warning => "warning",
            AuditSeverity::Info => "info",
        }
    }
}

impl From<Severity> for AuditSeverity {
    fn from(s: Severity) -> AuditSeverity {
        match s {
            Severity::Error => AuditSeverity::Error,
            Severity::Warning => AuditSeverity::Warning,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditFinding {
    pub code: &'static str,
    pub severity: AuditSeverity,
    /// The sync would lose data or refuse to run.
    pub blocking: bool,
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
    /// Records the sync would store, by the status it would store them with.
    pub active: u64,
    pub deleted: u64,
    /// Records the sync would skip (error findings).
    pub invalid: u64,
    /// Whether every page of the collection was fetched.
    pub complete: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub district: String,
    pub generated_at: DateTime<Utc>,
    pub totals: BTreeMap<&'static str, Totals>,
    /// Blocking first, then errors, warnings, info.
    pub findings: Vec<AuditFinding>,
    pub blocking: bool,
    /// A district scoped to some schools: what the scope keeps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<ScopeReport>,
}

/// What a district's `schools` / `school_identifiers` keep, per school, and what they leave
/// out.
#[derive(Debug, Clone, Serialize)]
pub struct ScopeReport {
    pub schools: Vec<SchoolCounts>,
    /// Configured schools the source does not have (active).
    pub missing: Vec<String>,
    /// Records the scope leaves out (not stored; a stored row of one is deleted), per
    /// collection.
    pub left_out: BTreeMap<&'static str, u64>,
}

/// The active records the scope keeps for one school (a user attached to or enrolled at two
/// schools counts at both).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SchoolCounts {
    pub sourced_id: String,
    pub name: Option<String>,
    pub identifier: Option<String>,
    pub classes: u64,
    pub enrollments: u64,
    pub users: u64,
    pub students: u64,
    pub teachers: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot build the OneRoster client for the audit")]
    Client(#[source] FetchError),
}

/// Audits one district. Fetch failures are findings, not errors: only a client that cannot be
/// built at all (bad configuration) is an error.
pub async fn run(district: &DistrictConfig) -> Result<AuditReport, AuditError> {
    info!(district = %district.id, "audit started");
    let mut facts = Facts {
        scoped: district.scope.is_some(),
        required_identifier: district.required_identifier.clone(),
        ..Facts::default()
    };
    let mut failures = Vec::new();
    let client = match OneRosterClient::connect(district).await {
        Ok((client, _)) => client,
        Err(e @ FetchError::InvalidConfig(_)) => return Err(AuditError::Client(e)),
        Err(e) => {
            // Finding out the version failed the way the first collection would have.
            let e = PullError::Fetch(e);
            failures.push(fetch_finding(Collection::Orgs, &e, district.demographics));
            OneRosterClient::new(district).map_err(AuditError::Client)?
        }
    };
    let snapshot = Snapshot::new(Index::new(false, false), 0, None).scoped(district.scope.clone());
    let mut pull = Pull::new(&client, snapshot, Stage::Report, &mut facts, None);
    'pull: {
        if !failures.is_empty() {
            break 'pull;
        }
        each_collection!(K => {
            if K::COLLECTION != Collection::Demographics || district.demographics.pulled() {
                let pulled = pull.collection::<K>().await;
                // Per-record findings are in the pull's tally.
                pull.take_findings();
                if let Err(e) = pulled {
                    let fatal = matches!(&e, PullError::Fetch(f) if f.is_fatal());
                    failures.push(fetch_finding(K::COLLECTION, &e, district.demographics));
                    if fatal {
                        // No other collection can be read either (credentials, token endpoint,
                        // address): one finding, not one per collection.
                        break 'pull;
                    }
                }
            }
        });
    }
    let tally = std::mem::take(&mut pull.tally);
    let scope = pull.snapshot.scope.take();
    drop(pull);
    let mut totals: BTreeMap<&'static str, Totals> = BTreeMap::new();
    for &collection in Collection::ALL {
        if collection == Collection::Demographics && !district.demographics.pulled() {
            continue;
        }
        let t = totals.entry(collection.name()).or_default();
        t.complete = tally.complete.contains(&collection);
        t.fetched = tally.fetched.get(&collection).copied().unwrap_or(0) as u64;
        match collection.entity() {
            Some(entity) => {
                t.invalid = tally.skipped.get(&entity).copied().unwrap_or(0) as u64;
                let (active, deleted) = facts.statuses.get(&entity).copied().unwrap_or_default();
                t.active = active;
                t.deleted = deleted;
            }
            // Demographics: the users that would hold some.
            None => {
                t.active = facts.with_demographics;
                t.invalid = tally
                    .findings
                    .entries()
                    .iter()
                    .filter(|c| c.entity == "demographics" && c.severity == Severity::Error)
                    .map(|c| c.count)
                    .sum();
            }
        }
    }
    let scope = scope.map(|scope| facts.scope_report(&scope));
    let mut report = facts.report(&district.id, totals, &tally.findings, failures);
    if let Some(scope) = &scope
        && !scope.missing.is_empty()
    {
        report.findings.insert(
            0,
            AuditFinding {
                code: "scope_school_missing",
                severity: AuditSeverity::Error,
                blocking: true,
                entity: "orgs",
                count: scope.missing.len() as u64,
                message: format!(
                    "{} configured school(s) are not among the district's active orgs: the sync would fail; check `schools` / `school_identifiers` (renamed or closed schools)",
                    scope.missing.len()
                ),
                samples: scope.missing.clone(),
            },
        );
        report.blocking = true;
    }
    report.scope = scope;
    info!(
        district = %district.id,
        findings = report.findings.len(),
        blocking = report.blocking,
        "audit finished"
    );
    Ok(report)
}

fn fetch_finding(
    collection: Collection,
    e: &PullError,
    demographics: DemographicsMode,
) -> AuditFinding {
    let (code, survivable) = match e {
        PullError::Fetch(FetchError::Forbidden { .. }) => ("permission_denied", true),
        PullError::Fetch(FetchError::NotFound { .. }) => ("endpoint_not_found", true),
        PullError::Fetch(f) if f.is_permission() => ("credentials_rejected", false),
        _ => ("fetch_failed", false),
    };
    // An optional collection the sync goes on without.
    let blocking =
        !(survivable && collection.is_optional() && demographics == DemographicsMode::Optional);
    AuditFinding {
        code,
        severity: if blocking {
            AuditSeverity::Error
        } else {
            AuditSeverity::Warning
        },
        blocking,
        entity: collection.name(),
        count: 1,
        message: error_chain(e),
        samples: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// What the audit's own checks need of each record the sync would store.

struct ClassFacts {
    active: bool,
    terms: Vec<String>,
    /// Scoped districts only.
    school: Option<String>,
}

struct UserFacts {
    active: bool,
    role: String,
    orgs: bool,
    /// Scoped districts only: the orgs the user is attached to.
    attached: Vec<String>,
    gender: bool,
    ethnicity: bool,
    race: bool,
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
    /// (active, deleted) records per entity, as the sync would store them.
    statuses: BTreeMap<Entity, (u64, u64)>,
    /// Users that would be stored with demographics.
    with_demographics: u64,
    sessions: HashMap<String, (Option<NaiveDate>, Option<NaiveDate>)>,
    classes: HashMap<String, ClassFacts>,
    users: HashMap<String, UserFacts>,
    enrollments: Vec<EnrollmentFacts>,
    /// Active users by lower-cased username / email and by identifier: the ids holding each.
    usernames: HashMap<String, Vec<String>>,
    emails: HashMap<String, Vec<String>>,
    identifiers: HashMap<String, Vec<String>>,
    /// `required_identifier`: the userIds type, the active users without one, and the active
    /// users holding each value.
    required_identifier: Option<String>,
    without_required: Tally,
    required_values: HashMap<String, Vec<String>>,
    /// A scoped district: per-school counts are kept.
    scoped: bool,
    /// Orgs' names and identifiers (for the scope report).
    orgs: HashMap<String, (Option<String>, Option<String>)>,
}

impl Facts {
    fn status(&mut self, entity: Entity, status: Status) -> bool {
        let (active, deleted) = self.statuses.entry(entity).or_default();
        match status {
            Status::Active => *active += 1,
            Status::Deleted => *deleted += 1,
        }
        status == Status::Active
    }
}

impl Observe for Facts {
    fn org(&mut self, o: &Org) {
        self.status(Entity::Orgs, o.status);
        if self.scoped {
            self.orgs
                .insert(o.sourced_id.clone(), (o.name.clone(), o.identifier.clone()));
        }
    }

    fn academic_session(&mut self, s: &AcademicSession) {
        self.status(Entity::AcademicSessions, s.status);
        self.sessions
            .insert(s.sourced_id.clone(), (s.start_date, s.end_date));
    }

    fn course(&mut self, c: &crate::domain::Course) {
        self.status(Entity::Courses, c.status);
    }

    fn class(&mut self, c: &Class) {
        let active = self.status(Entity::Classes, c.status);
        self.classes.insert(
            c.sourced_id.clone(),
            ClassFacts {
                active,
                terms: c.term_sourced_ids.clone(),
                school: c.school_sourced_id.clone().filter(|_| self.scoped),
            },
        );
    }

    fn user(&mut self, u: &User) {
        let active = self.status(Entity::Users, u.status);
        let id = &u.sourced_id;
        if active {
            // Only the lower-cased values are kept, for duplicate detection.
            if let Some(name) = &u.username {
                push_holder(&mut self.usernames, name.to_lowercase(), id);
            }
            if let Some(email) = &u.email {
                push_holder(&mut self.emails, email.to_lowercase(), id);
            }
            if let Some(identifier) = &u.identifier {
                push_holder(&mut self.identifiers, identifier.clone(), id);
            }
            if let Some(wanted) = &self.required_identifier {
                let mut any = false;
                for (t, value) in &u.identifiers {
                    if t.eq_ignore_ascii_case(wanted) {
                        any = true;
                        push_holder(&mut self.required_values, value.clone(), id);
                    }
                }
                if !any {
                    self.without_required.add(id);
                }
            }
        }
        let d = u.demographics;
        if d.present {
            self.with_demographics += 1;
        }
        self.users.insert(
            id.clone(),
            UserFacts {
                active,
                role: u.role.clone(),
                orgs: !u.org_sourced_ids.is_empty(),
                attached: if self.scoped {
                    u.org_sourced_ids.clone()
                } else {
                    Vec::new()
                },
                gender: d.gender().is_some(),
                ethnicity: d.hispanic_or_latino.is_some(),
                race: d.races != 0,
            },
        );
    }

    fn enrollment(&mut self, e: &Enrollment) {
        let active = self.status(Entity::Enrollments, e.status);
        self.enrollments.push(EnrollmentFacts {
            id: e.sourced_id.clone(),
            active,
            user: e.user_sourced_id.clone(),
            class: e.class_sourced_id.clone(),
            teacher: e.role == "teacher",
            begin: e.begin_date,
            end: e.end_date,
        });
    }
}

impl Facts {
    fn report(
        self,
        district: &str,
        totals: BTreeMap<&'static str, Totals>,
        records: &FindingSummary,
        failures: Vec<AuditFinding>,
    ) -> AuditReport {
        let complete = |name: &str| totals.get(name).is_some_and(|t| t.complete);
        let mut findings = failures;
        // The sync's own findings, per code and collection; a reference into a collection that
        // could not be fetched completely means nothing (the fetch failure is the finding).
        for c in records.entries() {
            if c.code.target().is_some_and(|target| !complete(target)) {
                continue;
            }
            let entity = Collection::ALL
                .iter()
                .map(|c| c.name())
                .find(|n| *n == c.entity)
                .unwrap_or("records");
            let fetched = totals.get(entity).map_or(0, |t| t.fetched).max(1);
            let blocking =
                c.severity == Severity::Error && c.count as f64 / fetched as f64 > BLOCKING_SHARE;
            let what = if c.severity == Severity::Error {
                "would be skipped by a sync"
            } else {
                "would be stored with a warning"
            };
            findings.push(AuditFinding {
                code: c.code.as_str(),
                severity: c.severity.into(),
                blocking,
                entity,
                count: c.count,
                message: format!(
                    "{} {entity} record(s) {what}: {}",
                    c.count,
                    c.code.meaning()
                ),
                samples: c.samples.clone(),
            });
        }
        self.duplicates(&mut findings);
        if complete("users") {
            self.people(&mut findings);
            self.required_identifier(&mut findings);
        }
        if complete("classes") && complete("enrollments") && complete("users") {
            self.untaught(&mut findings);
        }
        if complete("enrollments") && complete("classes") && complete("academic_sessions") {
            self.term_dates(&mut findings);
        }
        if complete("demographics") && complete("users") {
            self.coverage(&mut findings);
        }
        findings.sort_by(|a, b| {
            (!a.blocking, a.severity, entity_rank(a.entity), a.code).cmp(&(
                !b.blocking,
                b.severity,
                entity_rank(b.entity),
                b.code,
            ))
        });
        let blocking = findings.iter().any(|f| f.blocking);
        AuditReport {
            district: district.to_owned(),
            generated_at: Utc::now(),
            totals,
            findings,
            blocking,
            scope: None,
        }
    }

    /// Active users without the `required_identifier` type, and values of it that several
    /// active users share (sign-in would pick the wrong one).
    fn required_identifier(&self, findings: &mut Vec<AuditFinding>) {
        let Some(wanted) = &self.required_identifier else {
            return;
        };
        if self.without_required.count > 0 {
            findings.push(finding(
                "required_identifier_missing",
                AuditSeverity::Warning,
                "users",
                &self.without_required,
                format!(
                    "{} active users have no {wanted} identifier (userIds); they cannot be signed in by it",
                    self.without_required.count
                ),
            ));
        }
        let mut shared: Vec<&Vec<String>> = self
            .required_values
            .values()
            .filter(|v| v.len() > 1)
            .collect();
        shared.sort();
        let mut tally = Tally::default();
        for ids in &shared {
            for id in *ids {
                tally.add(id);
            }
        }
        if tally.count > 0 {
            findings.push(finding(
                "required_identifier_duplicate",
                AuditSeverity::Warning,
                "users",
                &tally,
                format!(
                    "{} active users share {} {wanted} identifier value(s)",
                    tally.count,
                    shared.len()
                ),
            ));
        }
    }

    /// Per school of the scope: the active classes, their active enrollments, and the active
    /// users attached to the school or enrolled in one of its classes.
    fn scope_report(&self, scope: &crate::scope::Scope) -> ScopeReport {
        let mut schools: BTreeMap<String, (SchoolCounts, HashSet<&str>)> = scope
            .schools()
            .into_iter()
            .map(|id| {
                let (name, identifier) = self.orgs.get(&id).cloned().unwrap_or_default();
                let counts = SchoolCounts {
                    sourced_id: id.clone(),
                    name,
                    identifier,
                    ..SchoolCounts::default()
                };
                (id, (counts, HashSet::new()))
            })
            .collect();
        for c in self.classes.values() {
            if let Some((counts, _)) = c.school.as_ref().and_then(|s| schools.get_mut(s))
                && c.active
            {
                counts.classes += 1;
            }
        }
        for e in self.enrollments.iter().filter(|e| e.active) {
            let school = self.classes.get(&e.class).and_then(|c| c.school.as_ref());
            if let Some((counts, users)) = school.and_then(|s| schools.get_mut(s)) {
                counts.enrollments += 1;
                users.insert(e.user.as_str());
            }
        }
        for (id, u) in &self.users {
            for org in &u.attached {
                if let Some((_, users)) = schools.get_mut(org) {
                    users.insert(id.as_str());
                }
            }
        }
        let schools = schools
            .into_values()
            .map(|(mut counts, users)| {
                for u in users.iter().filter_map(|id| self.users.get(*id)) {
                    if !u.active {
                        continue;
                    }
                    counts.users += 1;
                    match u.role.as_str() {
                        "student" => counts.students += 1,
                        "teacher" => counts.teachers += 1,
                        _ => {}
                    }
                }
                counts
            })
            .collect();
        ScopeReport {
            schools,
            missing: scope.missing.clone(),
            left_out: scope
                .left_out
                .iter()
                .map(|(e, n)| (e.as_str(), *n))
                .collect(),
        }
    }

    fn duplicates(&self, findings: &mut Vec<AuditFinding>) {
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
                    AuditSeverity::Warning,
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

    fn people(&self, findings: &mut Vec<AuditFinding>) {
        let mut no_org = Tally::default();
        for (id, u) in sorted(&self.users) {
            if u.active && (u.role == "student" || u.role == "teacher") && !u.orgs {
                no_org.add(id);
            }
        }
        if no_org.count > 0 {
            findings.push(finding(
                "user_without_org",
                AuditSeverity::Warning,
                "users",
                &no_org,
                format!(
                    "{} active students or teachers belong to no org",
                    no_org.count
                ),
            ));
        }
    }

    fn untaught(&self, findings: &mut Vec<AuditFinding>) {
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
                AuditSeverity::Warning,
                "classes",
                &untaught,
                format!(
                    "{} active classes have no active teacher enrollment",
                    untaught.count
                ),
            ));
        }
    }

    /// An enrollment is outside its term dates when its `beginDate` is before the earliest
    /// `startDate` of its class's terms, or its `endDate` (exclusive) is more than one day
    /// after the latest `endDate` (inclusive) of those terms. Missing dates are not judged.
    fn term_dates(&self, findings: &mut Vec<AuditFinding>) {
        let mut outside = Tally::default();
        for e in self.enrollments.iter().filter(|e| e.active) {
            let Some(class) = self.classes.get(&e.class) else {
                continue;
            };
            let terms: Vec<&(Option<NaiveDate>, Option<NaiveDate>)> = class
                .terms
                .iter()
                .filter_map(|t| self.sessions.get(t))
                .collect();
            let start = terms.iter().filter_map(|t| t.0).min();
            let end = terms.iter().filter_map(|t| t.1).max();
            let early = matches!((e.begin, start), (Some(b), Some(s)) if b < s);
            let late = matches!((e.end, end), (Some(x), Some(t)) if x > t + chrono::Days::new(1));
            if early || late {
                outside.add(&e.id);
            }
        }
        if outside.count > 0 {
            findings.push(finding(
                "enrollment_outside_term",
                AuditSeverity::Warning,
                "enrollments",
                &outside,
                format!(
                    "{} active enrollments begin before or end after their class's terms",
                    outside.count
                ),
            ));
        }
    }

    /// Coverage over active students: with a gender, with ethnicity, with at least one race.
    fn coverage(&self, findings: &mut Vec<AuditFinding>) {
        let students: Vec<(&String, &UserFacts)> = sorted(&self.users)
            .filter(|(_, u)| u.active && u.role == "student")
            .collect();
        if students.is_empty() {
            return;
        }
        type Has = fn(&UserFacts) -> bool;
        let checks: [(&'static str, &str, Has); 3] = [
            ("coverage_gender", "a gender", |u| u.gender),
            (
                "coverage_ethnicity",
                "an ethnicity (Hispanic or Latino or not)",
                |u| u.ethnicity,
            ),
            ("coverage_race", "at least one race", |u| u.race),
        ];
        for (code, what, has) in checks {
            // The samples are students *without* the value: what someone would look up.
            let mut without = Tally::default();
            let mut with = 0u64;
            for (id, u) in &students {
                if has(u) {
                    with += 1;
                } else {
                    without.add(id);
                }
            }
            let share = with as f64 / students.len() as f64;
            let severity = if share < COVERAGE_WARNING {
                AuditSeverity::Warning
            } else {
                AuditSeverity::Info
            };
            findings.push(AuditFinding {
                code,
                severity,
                blocking: false,
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
    severity: AuditSeverity,
    entity: &'static str,
    tally: &Tally,
    message: String,
) -> AuditFinding {
    let mut samples = tally.samples.clone();
    samples.sort();
    AuditFinding {
        code,
        severity,
        blocking: false,
        entity,
        count: tally.count,
        message,
        samples,
    }
}

fn entity_rank(entity: &str) -> usize {
    Collection::ALL
        .iter()
        .position(|c| c.name() == entity)
        .unwrap_or(Collection::ALL.len())
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
        if let Some(scope) = &self.scope {
            let _ = writeln!(
                out,
                "\nscope: {} school(s) (active records kept per school)\n{:<16} {:<28} {:>8} {:>9} {:>11} {:>8} {:>9} {:>8}",
                scope.schools.len(),
                "school",
                "name",
                "classes",
                "students",
                "teachers",
                "users",
                "enrolls.",
                "ident."
            );
            for c in &scope.schools {
                let _ = writeln!(
                    out,
                    "{:<16} {:<28} {:>8} {:>9} {:>11} {:>8} {:>9} {:>8}",
                    c.sourced_id,
                    c.name.as_deref().unwrap_or("-"),
                    c.classes,
                    c.students,
                    c.teachers,
                    c.users,
                    c.enrollments,
                    c.identifier.as_deref().unwrap_or("-")
                );
            }
            for missing in &scope.missing {
                let _ = writeln!(out, "{missing:<16} NOT IN THE SOURCE");
            }
            let left: Vec<String> = scope
                .left_out
                .iter()
                .map(|(e, n)| format!("{n} {e}"))
                .collect();
            let _ = writeln!(
                out,
                "left out (not stored): {}",
                if left.is_empty() {
                    "nothing".to_owned()
                } else {
                    left.join(", ")
                }
            );
        }
        let _ = writeln!(out, "\nfindings: {}", self.findings.len());
        for f in &self.findings {
            let severity = if f.blocking {
                "BLOCKING".to_owned()
            } else {
                f.severity.as_str().to_uppercase()
            };
            let _ = writeln!(
                out,
                "{severity:<8} {:<28} {:<18} {:>7}  {}",
                f.code, f.entity, f.count, f.message
            );
            if !f.samples.is_empty() {
                let _ = writeln!(out, "         samples: {}", f.samples.join(", "));
            }
        }
        let blocking = self.findings.iter().filter(|f| f.blocking).count();
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

    fn term_facts(dates: &[(Option<NaiveDate>, Option<NaiveDate>)]) -> Facts {
        let mut facts = Facts::default();
        facts
            .sessions
            .insert("t1".into(), (date(2026, 8, 17), date(2027, 1, 23)));
        facts.classes.insert(
            "c1".into(),
            ClassFacts {
                active: true,
                terms: vec!["t1".into()],
                school: None,
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

    fn user(active: bool, role: &str, gender: bool, ethnicity: bool) -> UserFacts {
        UserFacts {
            active,
            role: role.into(),
            orgs: true,
            attached: Vec::new(),
            gender,
            ethnicity,
            race: false,
        }
    }

    #[test]
    fn duplicates_ignore_case_for_usernames_not_for_identifiers() {
        let mut facts = Facts::default();
        for (id, username, identifier) in
            [("u1", "Ana", "A1"), ("u2", "ana", "a1"), ("u3", "bo", "B")]
        {
            push_holder(&mut facts.usernames, username.to_lowercase(), id);
            push_holder(&mut facts.identifiers, identifier.to_owned(), id);
        }
        let mut findings = Vec::new();
        facts.duplicates(&mut findings);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].code, "duplicate_username");
        assert_eq!(findings[0].samples, vec!["u1", "u2"]);
    }

    #[test]
    fn coverage_below_half_is_a_warning_with_the_students_without() {
        let mut facts = Facts::default();
        facts
            .users
            .insert("s1".into(), user(true, "student", true, true));
        facts
            .users
            .insert("s2".into(), user(true, "student", true, false));
        facts
            .users
            .insert("s3".into(), user(true, "student", false, false));
        facts
            .users
            .insert("t1".into(), user(true, "teacher", false, false));
        let mut findings = Vec::new();
        facts.coverage(&mut findings);
        let by_code = |code: &str| findings.iter().find(|f| f.code == code).cloned().unwrap();
        let gender = by_code("coverage_gender");
        assert_eq!((gender.severity, gender.count), (AuditSeverity::Info, 2));
        assert_eq!(gender.samples, vec!["s3"]);
        let ethnicity = by_code("coverage_ethnicity");
        assert_eq!(
            (ethnicity.severity, ethnicity.count),
            (AuditSeverity::Warning, 1)
        );
        assert_eq!(ethnicity.samples, vec!["s2", "s3"]);
    }

    #[test]
    fn record_findings_block_over_one_percent_and_incomplete_targets_are_not_judged() {
        use crate::domain::{Code, Finding};
        let mut summary = FindingSummary::default();
        for i in 0..2 {
            summary.add(&Finding::new(
                Code::EnrollmentUserMissing,
                "enrollments",
                format!("e{i}"),
                "x",
            ));
        }
        summary.add(&Finding::new(
            Code::ClassCourseMissing,
            "classes",
            "c1",
            "x",
        ));
        let totals = |users_complete: bool| {
            let mut t = BTreeMap::new();
            for name in ["enrollments", "classes", "courses"] {
                t.insert(
                    name,
                    Totals {
                        fetched: 200,
                        complete: true,
                        ..Totals::default()
                    },
                );
            }
            t.insert(
                "users",
                Totals {
                    complete: users_complete,
                    ..Totals::default()
                },
            );
            t
        };
        let report = Facts::default().report("d", totals(true), &summary, Vec::new());
        let codes: Vec<(&str, bool)> = report
            .findings
            .iter()
            .map(|f| (f.code, f.blocking))
            .collect();
        // 2 of 200 is exactly 1 %: not over it; a warning never blocks.
        assert_eq!(
            codes,
            vec![
                ("enrollment_user_missing", false),
                ("class_course_missing", false)
            ]
        );
        let mut summary3 = summary.clone();
        summary3.add(&Finding::new(
            Code::EnrollmentUserMissing,
            "enrollments",
            "e9",
            "x",
        ));
        let report = Facts::default().report("d", totals(true), &summary3, Vec::new());
        assert!(report.blocking);
        // Users not fetched completely: every reference to them means nothing.
        let report = Facts::default().report("d", totals(false), &summary3, Vec::new());
        assert!(
            report
                .findings
                .iter()
                .all(|f| f.code != "enrollment_user_missing")
        );
        assert!(!report.blocking);
    }

    #[test]
    fn fetch_failures_are_blocking_and_classified() {
        use crate::oneroster::WireRecord;
        let demographics = <crate::oneroster::wire::Demographics as WireRecord>::ENDPOINT;
        let users = <crate::oneroster::wire::User as WireRecord>::ENDPOINT;
        let forbidden = PullError::Fetch(FetchError::Forbidden {
            endpoint: demographics,
        });
        let f = fetch_finding(
            Collection::Demographics,
            &forbidden,
            DemographicsMode::Required,
        );
        assert_eq!(
            (f.code, f.blocking, f.entity),
            ("permission_denied", true, "demographics")
        );
        let f = fetch_finding(
            Collection::Demographics,
            &forbidden,
            DemographicsMode::Optional,
        );
        assert_eq!((f.code, f.blocking), ("permission_denied", false));
        let unauthorized = PullError::Fetch(FetchError::Unauthorized { endpoint: users });
        let f = fetch_finding(Collection::Users, &unauthorized, DemographicsMode::Required);
        assert_eq!((f.code, f.blocking), ("credentials_rejected", true));
        let incomplete = PullError::Fetch(FetchError::IncompletePage {
            endpoint: users,
            offset: 500,
            expected: 500,
            got: 10,
        });
        let f = fetch_finding(Collection::Users, &incomplete, DemographicsMode::Required);
        assert_eq!((f.code, f.blocking), ("fetch_failed", true));
    }
}
