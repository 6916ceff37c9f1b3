//! The pulled snapshot as it becomes a change set. Each record is checked (duplicate ids,
//! references into the snapshot), put in its stored form (a user's demographics joined in, an
//! enrollment's cascade status), hashed and classified against the mirror index. Only rows that
//! change leave, as COPY lines; every finding is collected on the way.
//!
//! These are the rules of CONTRACT §4, in one place for the sync, the dry run and the audit:
//! an *error* skips the record (its stored row stays), a *warning* stores it. A reference to a
//! record skipped as invalid is a reference into the snapshot (that record keeps its row); a
//! reference to one that is not there, or is `tobedeleted`, warns but stores (only an
//! enrollment, which is nothing without its user and class, is skipped).
//!
//! Pure: the pull feeds it and does the I/O around it (see `pull`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use foldhash::fast::FixedState;

use crate::config::SchoolScope;
use crate::diff::{self, Index, Key, Op, Tally};
use crate::domain::{
    AcademicSession, Class, Code, Course, Demo, Demographics, Enrollment, Entity, Finding, Org,
    Status, User,
};
use crate::scope::{Phase, Scope};
use crate::stored::{self, Stored};

/// Users of a delta pull held back until their demographics are read from the store; past this
/// many the delta is abandoned for a full pull (which needs no such help and costs the same).
const MAX_WAITING_USERS: usize = 100_000;

/// What sees every record the snapshot keeps, in its stored form (the audit's own checks).
pub trait Observe {
    fn org(&mut self, _: &Org) {}
    fn academic_session(&mut self, _: &AcademicSession) {}
    fn course(&mut self, _: &Course) {}
    fn class(&mut self, _: &Class) {}
    fn user(&mut self, _: &User) {}
    fn enrollment(&mut self, _: &Enrollment) {}
}

/// Sees nothing (the sync).
impl Observe for () {}

/// A record type as the snapshot checks it.
pub trait Checked: Stored {
    /// The records this one refers to (looked up before it is checked in a delta pull).
    fn references(&self, _out: &mut Vec<(Entity, String)>) {}

    /// A parent in its own collection, checked once the collection is complete.
    fn parent(&self) -> Option<(&str, Code)> {
        None
    }

    /// Checks the record's references against the rest of the snapshot: warnings go to
    /// `warnings`, an error (the record cannot be used) is returned.
    fn check(&mut self, _index: &Index, _warnings: &mut Vec<Finding>) -> Result<(), Finding> {
        Ok(())
    }

    fn observed_by(&self, observer: &mut impl Observe);

    /// A scoped district: whether the scope keeps the record (before it is checked).
    fn scoped(&self, _scope: &mut Scope) -> bool {
        true
    }

    /// A scoped district: what the scope learns of a record the snapshot kept.
    fn kept(&self, _scope: &mut Scope) {}
}

/// How a normalized record of one collection enters the snapshot.
pub trait Take: Sized {
    /// What a delta pull must load from the mirror before the record is taken.
    fn lookups(&self, out: &mut Vec<(Entity, String)>);
    fn take(self, findings: Vec<Finding>, snapshot: &mut Snapshot, observer: &mut impl Observe);
}

fn warn_reference<S: Stored>(
    warnings: &mut Vec<Finding>,
    index: &Index,
    record: &S,
    (target, id): (Entity, &str),
    (missing, deleted): (Code, Code),
    what: &str,
) {
    let reference = index.reference(target, id);
    let (code, state) = if !reference.known {
        (missing, "which is not in the snapshot")
    } else if reference.is_deleted() {
        (deleted, "which is tobedeleted")
    } else {
        return;
    };
    warnings.push(Finding::new(
        code,
        S::ENTITY.as_str(),
        record.sourced_id(),
        format!("references {what} {id} {state}; stored with the reference as sent"),
    ));
}

impl Checked for Org {
    fn references(&self, out: &mut Vec<(Entity, String)>) {
        out.extend(
            self.parent_sourced_id
                .iter()
                .map(|p| (Entity::Orgs, p.clone())),
        );
    }
    fn parent(&self) -> Option<(&str, Code)> {
        self.parent_sourced_id
            .as_deref()
            .map(|p| (p, Code::OrgParentMissing))
    }
    fn observed_by(&self, o: &mut impl Observe) {
        o.org(self);
    }
    fn kept(&self, scope: &mut Scope) {
        scope.org(
            &self.sourced_id,
            self.identifier.as_deref(),
            self.status == Status::Active,
        );
    }
}

impl Checked for AcademicSession {
    fn references(&self, out: &mut Vec<(Entity, String)>) {
        out.extend(
            self.parent_sourced_id
                .iter()
                .map(|p| (Entity::AcademicSessions, p.clone())),
        );
    }
    fn parent(&self) -> Option<(&str, Code)> {
        self.parent_sourced_id
            .as_deref()
            .map(|p| (p, Code::SessionParentMissing))
    }
    fn observed_by(&self, o: &mut impl Observe) {
        o.academic_session(self);
    }
}

impl Checked for Course {
    fn references(&self, out: &mut Vec<(Entity, String)>) {
        out.extend(
            self.org_sourced_id
                .iter()
                .map(|o| (Entity::Orgs, o.clone())),
        );
    }
    fn check(&mut self, index: &Index, warnings: &mut Vec<Finding>) -> Result<(), Finding> {
        if let Some(org) = &self.org_sourced_id {
            let codes = (Code::CourseOrgMissing, Code::CourseOrgDeleted);
            warn_reference(warnings, index, self, (Entity::Orgs, org), codes, "org");
        }
        Ok(())
    }
    fn observed_by(&self, o: &mut impl Observe) {
        o.course(self);
    }
}

impl Checked for Class {
    fn references(&self, out: &mut Vec<(Entity, String)>) {
        out.extend(
            self.school_sourced_id
                .iter()
                .map(|id| (Entity::Orgs, id.clone())),
        );
        out.extend(
            self.course_sourced_id
                .iter()
                .map(|id| (Entity::Courses, id.clone())),
        );
        out.extend(
            self.term_sourced_ids
                .iter()
                .map(|id| (Entity::AcademicSessions, id.clone())),
        );
    }

    fn check(&mut self, index: &Index, warnings: &mut Vec<Finding>) -> Result<(), Finding> {
        if let Some(school) = &self.school_sourced_id {
            let codes = (Code::ClassSchoolMissing, Code::ClassSchoolDeleted);
            warn_reference(
                warnings,
                index,
                self,
                (Entity::Orgs, school),
                codes,
                "school",
            );
        }
        if let Some(course) = &self.course_sourced_id {
            let codes = (Code::ClassCourseMissing, Code::ClassCourseDeleted);
            warn_reference(
                warnings,
                index,
                self,
                (Entity::Courses, course),
                codes,
                "course",
            );
        }
        for term in &self.term_sourced_ids {
            let codes = (Code::ClassTermMissing, Code::ClassTermDeleted);
            warn_reference(
                warnings,
                index,
                self,
                (Entity::AcademicSessions, term),
                codes,
                "term",
            );
        }
        Ok(())
    }

    fn observed_by(&self, o: &mut impl Observe) {
        o.class(self);
    }

    fn scoped(&self, scope: &mut Scope) -> bool {
        scope.class(&self.sourced_id, self.school_sourced_id.as_deref())
    }
}

impl Checked for User {
    fn references(&self, out: &mut Vec<(Entity, String)>) {
        out.extend(
            self.org_sourced_ids
                .iter()
                .map(|id| (Entity::Orgs, id.clone())),
        );
    }

    fn check(&mut self, index: &Index, warnings: &mut Vec<Finding>) -> Result<(), Finding> {
        for org in &self.org_sourced_ids {
            let codes = (Code::UserOrgMissing, Code::UserOrgDeleted);
            warn_reference(warnings, index, self, (Entity::Orgs, org), codes, "org");
        }
        Ok(())
    }

    fn observed_by(&self, o: &mut impl Observe) {
        o.user(self);
    }
}

impl Checked for Enrollment {
    fn references(&self, out: &mut Vec<(Entity, String)>) {
        out.push((Entity::Users, self.user_sourced_id.clone()));
        out.push((Entity::Classes, self.class_sourced_id.clone()));
    }

    /// Also the cascade: an enrollment is stored deleted when its user or class will not be
    /// active.
    fn check(&mut self, index: &Index, _: &mut Vec<Finding>) -> Result<(), Finding> {
        let error = |code, what: &str, id: &str| {
            Finding::new(
                code,
                Entity::Enrollments.as_str(),
                self.sourced_id.clone(),
                format!("references {what} {id} which is not in the snapshot"),
            )
        };
        let user = index.reference(Entity::Users, &self.user_sourced_id);
        if !user.known {
            return Err(error(
                Code::EnrollmentUserMissing,
                "user",
                &self.user_sourced_id,
            ));
        }
        let class = index.reference(Entity::Classes, &self.class_sourced_id);
        if !class.known {
            return Err(error(
                Code::EnrollmentClassMissing,
                "class",
                &self.class_sourced_id,
            ));
        }
        if !(user.active && class.active) {
            self.status = Status::Deleted;
        }
        Ok(())
    }

    fn observed_by(&self, o: &mut impl Observe) {
        o.enrollment(self);
    }
}

macro_rules! take_stored {
    ($($record:ty),*) => {$(
        impl Take for $record {
            fn lookups(&self, out: &mut Vec<(Entity, String)>) {
                out.push((<$record as Stored>::ENTITY, self.sourced_id.clone()));
                self.references(out);
            }
            fn take(self, findings: Vec<Finding>, snapshot: &mut Snapshot, observer: &mut impl Observe) {
                if let Some(scope) = &mut snapshot.scope && !self.scoped(scope) {
                    return;
                }
                if let Some(row) = snapshot.accept(self, findings) {
                    if let Some(scope) = &mut snapshot.scope {
                        row.kept(scope);
                    }
                    row.observed_by(observer);
                }
            }
        }
    )*};
}

take_stored!(Org, AcademicSession, Course, Class);

impl Take for Enrollment {
    fn lookups(&self, out: &mut Vec<(Entity, String)>) {
        out.push((Entity::Enrollments, self.sourced_id.clone()));
        self.references(out);
    }
    fn take(self, findings: Vec<Finding>, snapshot: &mut Snapshot, observer: &mut impl Observe) {
        let (e, findings) = match &mut snapshot.scope {
            Some(scope) => match scope.enrollment(self, findings) {
                Some(kept) => kept,
                None => return,
            },
            None => (self, findings),
        };
        if let Some(row) = snapshot.accept(e, findings) {
            row.observed_by(observer);
        }
    }
}

impl Take for User {
    fn lookups(&self, out: &mut Vec<(Entity, String)>) {
        out.push((Entity::Users, self.sourced_id.clone()));
        self.references(out);
    }
    fn take(self, findings: Vec<Finding>, snapshot: &mut Snapshot, observer: &mut impl Observe) {
        if let Some(scope) = &mut snapshot.scope
            && !scope.user(&self.sourced_id, &self.org_sourced_ids)
        {
            // Its demographics are not for the store either.
            snapshot.demographics.remove(&diff::key(&self.sourced_id));
            return;
        }
        if let Some(user) = snapshot.accept_user(self, findings) {
            user.observed_by(observer);
        }
    }
}

/// Demographics wait for their user in memory: nothing to look up.
impl Take for Demographics {
    fn lookups(&self, _: &mut Vec<(Entity, String)>) {}
    fn take(self, findings: Vec<Finding>, snapshot: &mut Snapshot, _: &mut impl Observe) {
        snapshot.add_demographics(self, findings);
    }
}

/// One run's snapshot as it is pulled.
pub struct Snapshot {
    pub index: Index,
    pub tally: Tally,
    findings: Vec<Finding>,
    /// Demographics by user (with the id they came under), until the user arrives.
    demographics: HashMap<Key, (String, Demo), FixedState>,
    /// Delta pulls: users whose demographics did not come with the pull.
    waiting_users: Vec<(User, Vec<Finding>)>,
    /// Delta pulls: users and classes that stop being active in this run (their enrollments
    /// outside the pull follow them).
    deactivated: BTreeMap<Entity, Vec<String>>,
    /// Enrollments skipped as invalid (the cascade still applies to their stored rows).
    skipped_enrollments: Vec<String>,
    /// Records with a parent in their own collection: (entity, id, parent, code).
    parents: Vec<(Entity, String, String, Code)>,
    /// The entities with rows in their change-set tables (written, counted as changes or
    /// not); empty when the run has nothing to write.
    pub touched: BTreeSet<Entity>,
    /// The latest `dateLastModified` of a usable record.
    pub newest: Option<DateTime<Utc>>,
    /// Set when a delta pull cannot be completed as one (the run starts over with a full pull).
    pub needs_full: Option<String>,
    /// Delta pulls: the `dateLastModified` bound sent to the server.
    since: Option<DateTime<Utc>>,
    lines: Vec<u8>,
    /// A district scoped to some schools (see `scope`).
    pub scope: Option<Scope>,
}

impl Snapshot {
    /// `since`: the bound of a delta pull (the index is then a delta index).
    pub fn new(
        index: Index,
        samples_per_operation: usize,
        since: Option<DateTime<Utc>>,
    ) -> Snapshot {
        Snapshot {
            index,
            tally: Tally::new(samples_per_operation),
            findings: Vec::new(),
            demographics: HashMap::default(),
            waiting_users: Vec::new(),
            deactivated: BTreeMap::new(),
            skipped_enrollments: Vec::new(),
            parents: Vec::new(),
            touched: BTreeSet::new(),
            newest: None,
            needs_full: None,
            since,
            lines: Vec::with_capacity(1 << 20),
            scope: None,
        }
    }

    /// Keeps only what `scope` keeps (a district's `schools`).
    pub fn scoped(mut self, scope: Option<SchoolScope>) -> Snapshot {
        self.scope = scope.map(Scope::new);
        self
    }

    /// A scoped pull, once the orgs are in: the configured schools the pull does not have
    /// (active); empty when all are there (or the district is not scoped).
    pub fn resolve_scope(&mut self) -> Vec<String> {
        let index = &self.index;
        match &mut self.scope {
            Some(scope) => scope
                .resolve(|id| index.reference(Entity::Orgs, id).active)
                .to_vec(),
            None => Vec::new(),
        }
    }

    /// Whether the next enrollments are to be held until the users are in (a scoped pull
    /// reads the enrollments before the users).
    pub fn holds_enrollments(&self) -> bool {
        self.scope
            .as_ref()
            .is_some_and(|s| s.phase == Phase::Collecting)
    }

    /// The enrollments a scoped pull held, once the users are in.
    pub fn release_enrollments(&mut self, observer: &mut impl Observe) {
        let Some(scope) = &mut self.scope else {
            return;
        };
        for (e, findings) in scope.release() {
            if let Some(row) = self.accept(e, findings) {
                row.observed_by(observer);
            }
        }
    }

    pub fn is_delta(&self) -> bool {
        self.index.is_delta()
    }

    /// Checks, settles, hashes and classifies one pulled record; a changed row is buffered as
    /// a COPY line for `apply_*`. Returns the record as stored, or `None` when it was skipped.
    pub fn accept<R: Checked>(&mut self, row: R, findings: Vec<Finding>) -> Option<R> {
        // A server that ignores the filter sends everything: its "delta" would be read as
        // complete changes while deletions by absence go unseen.
        if let Some(since) = self.since
            && row.modified().is_none_or(|t| t <= since)
        {
            self.needs_full.get_or_insert_with(|| {
                "the server sent records not modified since the watermark (it does not apply the dateLastModified filter)".into()
            });
        }
        self.accept_row(row, findings)
    }

    /// [`Snapshot::accept`] for a row rebuilt from the store (its dates are old by nature).
    fn accept_row<R: Checked>(&mut self, mut row: R, mut findings: Vec<Finding>) -> Option<R> {
        let entity = R::ENTITY;
        let key = diff::key(row.sourced_id());
        if self.index.is_duplicate(entity, key) {
            let finding = Finding::new(
                Code::DuplicateSourcedId,
                entity.as_str(),
                row.sourced_id(),
                "a second record with this sourcedId in the pull (the first is kept)",
            );
            self.findings.push(finding);
            return None;
        }
        if let Err(error) = row.check(&self.index, &mut findings) {
            // The error is what matters of a record that cannot be used.
            self.skip(entity, error);
            return None;
        }
        self.findings.append(&mut findings);
        if let Some((parent, code)) = row.parent() {
            self.parents
                .push((entity, row.sourced_id().to_owned(), parent.to_owned(), code));
        }
        if let Some(t) = row.modified() {
            self.newest = self.newest.max(Some(t));
        }
        let start = self.lines.len();
        stored::encode(&row, &mut self.lines);
        let hash = diff::row_hash(&self.lines[start..]);
        let Some(write) = self.index.observe(entity, key, row.is_active(), hash) else {
            self.lines.truncate(start);
            return Some(row);
        };
        use std::io::Write as _;
        let counted = if write.counted { 't' } else { 'f' };
        let _ = writeln!(self.lines, "\t{hash}\t{}\t{counted}", write.op.as_str());
        self.touched.insert(entity);
        if write.counted {
            self.tally.count(entity, write.op, row.sourced_id());
        }
        if self.is_delta() && matches!(entity, Entity::Users | Entity::Classes) {
            match write.op {
                // Enrollments this delta does not carry may have been stored deleted only
                // because of this record; which ones cannot be told without them.
                Op::Reactivate => {
                    let what = if entity == Entity::Users {
                        "user"
                    } else {
                        "class"
                    };
                    self.needs_full
                        .get_or_insert_with(|| format!("a {what} came back active"));
                }
                Op::Delete => self
                    .deactivated
                    .entry(entity)
                    .or_default()
                    .push(row.sourced_id().to_owned()),
                _ => {}
            }
        }
        Some(row)
    }

    /// A record that cannot be used (an error finding): it is still "in the snapshot" for
    /// references and keeps its stored row. `entity` is the roster type it would have been
    /// stored as.
    pub fn skip(&mut self, entity: Entity, error: Finding) {
        self.index
            .mark_skipped(entity, diff::key(&error.sourced_id));
        if entity == Entity::Enrollments {
            self.skipped_enrollments.push(error.sourced_id.clone());
        }
        self.findings.push(error);
    }

    /// A finding about a record of no roster type of its own (demographics), or about the
    /// snapshot as a whole.
    pub fn report(&mut self, finding: Finding) {
        self.findings.push(finding);
    }

    /// A user's demographics (or, with `demo.present == false`, their deletion); the first
    /// record wins.
    pub fn add_demographics(&mut self, record: Demographics, findings: Vec<Finding>) {
        let key = diff::key(&record.user_sourced_id);
        if self.demographics.contains_key(&key) {
            self.findings.push(Finding::new(
                Code::DuplicateSourcedId,
                "demographics",
                record.user_sourced_id,
                "a second demographics record with this sourcedId in the pull (the first is kept)",
            ));
            return;
        }
        self.findings.extend(findings);
        self.demographics
            .insert(key, (record.user_sourced_id, record.demo));
    }

    /// A user, with the demographics pulled before it. In a delta pull a user whose
    /// demographics did not come is held until [`Snapshot::waiting_users`] gives them back with
    /// the stored ones.
    pub fn accept_user(&mut self, mut user: User, findings: Vec<Finding>) -> Option<User> {
        match self.demographics.remove(&diff::key(&user.sourced_id)) {
            Some((_, demo)) => {
                user.demographics = demo;
                self.accept(user, findings)
            }
            None if self.is_delta() => {
                if self.waiting_users.len() >= MAX_WAITING_USERS {
                    self.needs_full.get_or_insert_with(|| {
                        format!("the delta holds more than {MAX_WAITING_USERS} changed users")
                    });
                    return None;
                }
                self.waiting_users.push((user, findings));
                None
            }
            None => self.accept(user, findings),
        }
    }

    /// Delta pulls: the users held for their stored demographics.
    pub fn waiting_users(&mut self) -> Vec<(User, Vec<Finding>)> {
        std::mem::take(&mut self.waiting_users)
    }

    /// Delta pulls: a held user, with the demographics the store holds for it.
    pub fn accept_waiting(&mut self, mut user: User, findings: Vec<Finding>, stored: Demo) {
        user.demographics = stored;
        self.accept(user, findings);
    }

    /// After the users: demographics that found no user in the pull. A full pull reports them
    /// at once (a user skipped as invalid is no unknown user) and returns nothing; a delta pull
    /// returns their ids, to look the users up in the store ([`Snapshot::restore_user`], then
    /// [`Snapshot::demographics_done`]).
    pub fn users_done(&mut self) -> Vec<String> {
        if self.is_delta() {
            let mut ids: Vec<String> = self
                .demographics
                .values()
                .map(|(id, _)| id.clone())
                .collect();
            ids.sort();
            return ids;
        }
        self.demographics_done();
        Vec::new()
    }

    /// Delta pulls: a user as the store holds it, whose demographics changed without it.
    pub fn restore_user(&mut self, mut user: User) {
        if let Some((_, demo)) = self.demographics.remove(&diff::key(&user.sourced_id)) {
            user.demographics = demo;
            self.accept_row(user, Vec::new());
        }
    }

    /// Demographics still waiting belong to no user the snapshot knows.
    pub fn demographics_done(&mut self) {
        let mut left: Vec<String> = std::mem::take(&mut self.demographics)
            .into_values()
            .map(|(id, _)| id)
            .filter(|id| !self.index.reference(Entity::Users, id).known)
            .collect();
        left.sort();
        for id in left {
            self.findings.push(Finding::new(
                Code::DemographicsUserMissing,
                "demographics",
                id,
                "demographics for a user that is not in the snapshot; nothing stored for it",
            ));
        }
    }

    /// Once a collection is complete: the parents in it are checked.
    pub fn collection_done(&mut self, entity: Entity) {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parents)
            .into_iter()
            .partition(|(e, ..)| *e == entity);
        self.parents = rest;
        for (entity, id, parent, code) in mine {
            if !self.index.reference(entity, &parent).known {
                self.findings.push(Finding::new(
                    code,
                    entity.as_str(),
                    id,
                    format!("references parent {parent} which is not in the snapshot; stored with the reference as sent"),
                ));
            }
        }
    }

    /// Bytes of COPY lines buffered.
    pub fn buffered(&self) -> usize {
        self.lines.len()
    }

    /// The COPY lines buffered since the last call.
    pub fn take_lines(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.lines)
    }

    /// The findings since the last call.
    pub fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }

    /// After the pull, the entities with records deleted by absence (a complete pull only):
    /// the caller hands every active mirror id of them to [`Snapshot::is_absent`].
    pub fn with_absences(&self) -> Vec<Entity> {
        Entity::ALL
            .into_iter()
            .filter(|e| self.index.absent_count(*e) > 0)
            .collect()
    }

    pub fn is_absent(&self, entity: Entity, sourced_id: &str) -> bool {
        self.index.is_absent(entity, sourced_id)
    }

    /// Delta pulls: the users and classes deactivated by this run, whose stored enrollments
    /// the cascade looks at.
    pub fn deactivated(&mut self) -> (Vec<String>, Vec<String>) {
        (
            self.deactivated.remove(&Entity::Users).unwrap_or_default(),
            self.deactivated
                .remove(&Entity::Classes)
                .unwrap_or_default(),
        )
    }

    /// Full pulls: the enrollments skipped as invalid, whose stored rows the cascade looks at.
    pub fn skipped_enrollments(&self) -> &[String] {
        &self.skipped_enrollments
    }

    /// Of these stored (enrollment, user, class) triples, the enrollments the cascade deletes.
    pub fn cascaded(&self, candidates: Vec<(String, String, String)>) -> Vec<String> {
        candidates
            .into_iter()
            .filter(|(id, user, class)| self.index.cascades(id, user, class))
            .map(|(id, _, _)| id)
            .collect()
    }

    /// Deletions found after the pull (absence or cascade): counted once, and returned sorted
    /// for `del_*`.
    pub fn delete(&mut self, entity: Entity, mut ids: Vec<String>) -> Vec<String> {
        ids.sort();
        ids.dedup();
        for id in &ids {
            self.index.mark_deleted(entity, diff::key(id));
            self.tally.count(entity, Op::Delete, id);
        }
        if !ids.is_empty() {
            self.touched.insert(entity);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot::new(Index::new(false, false), 10, None)
    }

    fn codes(s: &mut Snapshot) -> Vec<(Code, String)> {
        s.take_findings()
            .into_iter()
            .map(|f| (f.code, f.sourced_id))
            .collect()
    }

    fn class(id: &str, course: &str) -> Class {
        Class {
            sourced_id: id.into(),
            course_sourced_id: Some(course.into()),
            term_sourced_ids: vec!["t1".into()],
            ..Class::default()
        }
    }

    #[test]
    fn a_class_with_a_missing_or_deleted_course_is_stored_with_a_warning() {
        let mut s = snapshot();
        s.accept(
            AcademicSession {
                sourced_id: "t1".into(),
                ..AcademicSession::default()
            },
            Vec::new(),
        );
        s.accept(
            Course {
                sourced_id: "gone".into(),
                status: Status::Deleted,
                ..Course::default()
            },
            Vec::new(),
        );
        s.skip(
            Entity::Courses,
            Finding::new(Code::StatusUnknown, "courses", "bad", "x"),
        );
        assert!(s.accept(class("c1", "nowhere"), Vec::new()).is_some());
        assert!(s.accept(class("c2", "gone"), Vec::new()).is_some());
        assert!(s.accept(class("c3", "bad"), Vec::new()).is_some());
        assert_eq!(
            codes(&mut s),
            vec![
                (Code::StatusUnknown, "bad".into()),
                (Code::ClassCourseMissing, "c1".into()),
                (Code::ClassCourseDeleted, "c2".into()),
            ]
        );
        assert_eq!(s.tally.counts[&Entity::Classes].created, 3);
    }

    #[test]
    fn an_enrollment_needs_its_user_and_class_and_follows_them() {
        let mut s = snapshot();
        s.accept(class("c1", "k"), Vec::new());
        s.take_findings();
        s.accept_user(
            User {
                sourced_id: "u1".into(),
                status: Status::Deleted,
                role: "student".into(),
                ..User::default()
            },
            Vec::new(),
        );
        let e = |id: &str, user: &str| Enrollment {
            sourced_id: id.into(),
            user_sourced_id: user.into(),
            class_sourced_id: "c1".into(),
            role: "student".into(),
            ..Enrollment::default()
        };
        let kept = s.accept(e("e1", "u1"), Vec::new()).unwrap();
        assert_eq!(kept.status, Status::Deleted, "the cascade");
        assert!(s.accept(e("e2", "ghost"), Vec::new()).is_none());
        assert!(s.accept(e("e1", "u1"), Vec::new()).is_none());
        assert_eq!(
            codes(&mut s),
            vec![
                (Code::EnrollmentUserMissing, "e2".into()),
                (Code::DuplicateSourcedId, "e1".into()),
            ]
        );
        assert_eq!(s.skipped_enrollments(), ["e2"]);
    }

    #[test]
    fn parents_are_checked_when_their_collection_is_complete() {
        let mut s = snapshot();
        let org = |id: &str, parent: Option<&str>| Org {
            sourced_id: id.into(),
            parent_sourced_id: parent.map(str::to_owned),
            ..Org::default()
        };
        // The child comes before its parent (sourcedId order).
        s.accept(org("a-school", Some("z-district")), Vec::new());
        s.accept(org("b-school", Some("nowhere")), Vec::new());
        s.accept(org("z-district", None), Vec::new());
        assert!(s.take_findings().is_empty());
        s.collection_done(Entity::Orgs);
        assert_eq!(
            codes(&mut s),
            vec![(Code::OrgParentMissing, "b-school".into())]
        );
    }

    #[test]
    fn demographics_join_their_user_and_unknown_ones_warn() {
        let mut s = snapshot();
        let d = |id: &str| Demographics {
            user_sourced_id: id.into(),
            demo: Demo {
                present: true,
                gender: 2,
                ..Demo::default()
            },
        };
        s.add_demographics(d("u1"), Vec::new());
        s.add_demographics(d("ghost"), Vec::new());
        s.add_demographics(d("bad-user"), Vec::new());
        let user = s
            .accept_user(
                User {
                    sourced_id: "u1".into(),
                    role: "student".into(),
                    ..User::default()
                },
                Vec::new(),
            )
            .unwrap();
        assert_eq!(user.demographics.gender(), Some("female"));
        s.skip(
            Entity::Users,
            Finding::new(Code::UserRoleMissing, "users", "bad-user", "x"),
        );
        s.take_findings();
        assert!(s.users_done().is_empty());
        assert_eq!(
            codes(&mut s),
            vec![(Code::DemographicsUserMissing, "ghost".into())]
        );
    }

    #[test]
    fn an_unchanged_record_writes_nothing() {
        let org = Org {
            sourced_id: "o".into(),
            ..Org::default()
        };
        let mut line = Vec::new();
        stored::encode(&org, &mut line);
        let mut index = Index::new(false, false);
        index.insert_mirrored(Entity::Orgs, "o", true, Some(diff::row_hash(&line)));
        let mut s = Snapshot::new(index, 10, None);
        s.accept(org, Vec::new());
        assert_eq!(s.buffered(), 0);
        assert!(s.touched.is_empty());
    }
}
