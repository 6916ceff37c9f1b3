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
//! Memory: besides the snapshot's index (32 bytes a record), the audit keeps per record only
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
    let mut facts = Facts::default();
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
    let snapshot = Snapshot::new(Index::new(false, false), 0, None);
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
    let report = facts.report(&district.id, totals, &tally.findings, failures);
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
}

struct UserFacts {
    active: bool,
    role: String,
    orgs: bool,
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
