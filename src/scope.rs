//! A district scoped to some schools (`schools`, `school_identifiers`): which records of a
//! pull the snapshot keeps. Pure; the snapshot consults it as records arrive.
//!
//! The scope keeps the configured schools' classes, those classes' enrollments, and the users
//! attached to one of the schools (`orgs`, `roles[]`, `primaryOrg`) or actively enrolled in
//! one of their classes. Orgs, academic sessions and courses are shared reference data and are
//! kept whole. A record left out is simply not in the snapshot: a stored row of it is deleted by
//! absence, judged by the safety limits like any deletion.
//!
//! Users come before enrollments in a pull, but whether a user is enrolled is known only from
//! the enrollments: a scoped pull reads the enrollments first, holds those of kept classes
//! (nothing else of them is kept in memory), reads the users, then lets the held enrollments
//! in. Memory is proportional to the scope, not to the district.

use std::collections::{BTreeMap, HashSet};

use crate::config::SchoolScope;
use crate::domain::{Enrollment, Entity, Finding, Status};

/// Where a scoped pull is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the enrollments: they will be held.
    Collecting,
    /// Enrollments read and held; the users are next.
    Holding,
    /// Users read: the held enrollments went in; later ones go straight in.
    Released,
}

pub struct Scope {
    config: SchoolScope,
    /// The schools' sourcedIds, once the orgs are in.
    schools: HashSet<String>,
    /// Active orgs whose identifier is configured: (identifier, sourcedId).
    by_identifier: Vec<(String, String)>,
    /// Kept classes.
    classes: HashSet<String>,
    /// Users actively enrolled in kept classes.
    enrolled: HashSet<String>,
    /// Users of held enrollments (any status), and those of them the scope left out.
    held_users: HashSet<String>,
    left_users: HashSet<String>,
    held: Vec<(Enrollment, Vec<Finding>)>,
    pub phase: Phase,
    /// Records left out, per entity.
    pub left_out: BTreeMap<Entity, u64>,
    /// Configured schools the source does not have (active), as the operator named them.
    pub missing: Vec<String>,
}

impl Scope {
    pub fn new(config: SchoolScope) -> Scope {
        Scope {
            config,
            schools: HashSet::new(),
            by_identifier: Vec::new(),
            classes: HashSet::new(),
            enrolled: HashSet::new(),
            held_users: HashSet::new(),
            left_users: HashSet::new(),
            held: Vec::new(),
            phase: Phase::Collecting,
            left_out: BTreeMap::new(),
            missing: Vec::new(),
        }
    }

    /// An active org the pull kept: noted when its identifier is configured.
    pub fn org(&mut self, sourced_id: &str, identifier: Option<&str>, active: bool) {
        if let Some(identifier) = identifier
            && active
            && self.config.identifiers.iter().any(|i| i == identifier)
        {
            self.by_identifier
                .push((identifier.to_owned(), sourced_id.to_owned()));
        }
    }

    /// Once the orgs are in: the schools, from `active` (whether an org is in the pull and
    /// active). Returns the configured schools that are not (also kept in `missing`).
    pub fn resolve(&mut self, active: impl Fn(&str) -> bool) -> &[String] {
        for id in &self.config.sourced_ids {
            if active(id) {
                self.schools.insert(id.clone());
            } else {
                self.missing.push(id.clone());
            }
        }
        for identifier in &self.config.identifiers {
            let found: Vec<&String> = self
                .by_identifier
                .iter()
                .filter(|(i, _)| i == identifier)
                .map(|(_, id)| id)
                .collect();
            if found.is_empty() {
                self.missing.push(format!("identifier {identifier}"));
            }
            self.schools.extend(found.into_iter().cloned());
        }
        &self.missing
    }

    /// The schools in the scope (sorted).
    pub fn schools(&self) -> Vec<String> {
        let mut v: Vec<String> = self.schools.iter().cloned().collect();
        v.sort();
        v
    }

    fn leave_out(&mut self, entity: Entity) {
        *self.left_out.entry(entity).or_default() += 1;
    }

    /// Whether a class is kept (it is then remembered for its enrollments).
    pub fn class(&mut self, sourced_id: &str, school: Option<&str>) -> bool {
        if school.is_some_and(|s| self.schools.contains(s)) {
            self.classes.insert(sourced_id.to_owned());
            true
        } else {
            self.leave_out(Entity::Classes);
            false
        }
    }

    /// An enrollment: left out (None), held (None, until [`Scope::release`]), or let in.
    pub fn enrollment(
        &mut self,
        e: Enrollment,
        findings: Vec<Finding>,
    ) -> Option<(Enrollment, Vec<Finding>)> {
        if !self.classes.contains(&e.class_sourced_id) {
            self.leave_out(Entity::Enrollments);
            return None;
        }
        match self.phase {
            Phase::Released => {
                if self.left_users.contains(&e.user_sourced_id) {
                    self.leave_out(Entity::Enrollments);
                    return None;
                }
                Some((e, findings))
            }
            Phase::Collecting | Phase::Holding => {
                if e.status == Status::Active {
                    self.enrolled.insert(e.user_sourced_id.clone());
                }
                self.held_users.insert(e.user_sourced_id.clone());
                self.held.push((e, findings));
                None
            }
        }
    }

    /// Whether a user is kept: attached to a school of the scope, or actively enrolled in one
    /// of its classes.
    pub fn user(&mut self, sourced_id: &str, orgs: &[String]) -> bool {
        if orgs.iter().any(|o| self.schools.contains(o)) || self.enrolled.contains(sourced_id) {
            return true;
        }
        if self.held_users.contains(sourced_id) {
            // Only in a kept class's inactive enrollments: those go with the user.
            self.left_users.insert(sourced_id.to_owned());
        }
        self.leave_out(Entity::Users);
        false
    }

    /// After the users: the held enrollments whose user was not left out, in pull order.
    pub fn release(&mut self) -> Vec<(Enrollment, Vec<Finding>)> {
        self.phase = Phase::Released;
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::with_capacity(held.len());
        for (e, findings) in held {
            if self.left_users.contains(&e.user_sourced_id) {
                self.leave_out(Entity::Enrollments);
            } else {
                out.push((e, findings));
            }
        }
        self.held_users = HashSet::new();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        let mut s = Scope::new(SchoolScope {
            sourced_ids: vec!["s1".into(), "gone".into()],
            identifiers: vec!["1002".into(), "9999".into()],
        });
        s.org("s2", Some("1002"), true);
        s.org("s3", Some("1003"), true);
        let missing = s
            .resolve(|id| id == "s1" || id == "s2" || id == "s3")
            .to_vec();
        assert_eq!(missing, ["gone", "identifier 9999"]);
        assert_eq!(s.schools(), ["s1", "s2"]);
        s
    }

    fn enrollment(id: &str, user: &str, class: &str, status: Status) -> Enrollment {
        Enrollment {
            sourced_id: id.into(),
            user_sourced_id: user.into(),
            class_sourced_id: class.into(),
            status,
            ..Enrollment::default()
        }
    }

    #[test]
    fn classes_enrollments_and_users_follow_the_schools() {
        let mut s = scope();
        assert!(s.class("c1", Some("s1")));
        assert!(s.class("c2", Some("s2")));
        assert!(!s.class("c3", Some("s3")));
        assert!(!s.class("c4", None));
        s.phase = Phase::Holding;
        for e in [
            enrollment("e1", "kid", "c1", Status::Active),
            enrollment("e2", "kid", "c3", Status::Active),
            enrollment("e3", "gone-kid", "c2", Status::Deleted),
            enrollment("e4", "teacher", "c2", Status::Active),
        ] {
            assert!(s.enrollment(e, Vec::new()).is_none(), "held or left out");
        }
        assert!(s.user("kid", &["s3".into()]), "enrolled in a kept class");
        assert!(s.user("teacher", &[]), "enrolled");
        assert!(s.user("admin", &["s2".into()]), "attached");
        assert!(
            !s.user("gone-kid", &["s3".into()]),
            "only a deleted enrollment"
        );
        assert!(!s.user("other", &["s3".into()]));
        let released: Vec<String> = s.release().into_iter().map(|(e, _)| e.sourced_id).collect();
        assert_eq!(released, ["e1", "e4"]);
        assert_eq!(
            s.left_out,
            BTreeMap::from([
                (Entity::Classes, 2),
                (Entity::Users, 2),
                (Entity::Enrollments, 2)
            ])
        );
        // After the release an enrollment goes straight in, or out with its user.
        assert!(
            s.enrollment(enrollment("e5", "kid", "c1", Status::Active), Vec::new())
                .is_some()
        );
        assert!(
            s.enrollment(
                enrollment("e6", "gone-kid", "c1", Status::Active),
                Vec::new()
            )
            .is_none()
        );
    }
}
