//! What happens to each pulled record between normalization and the change-set tables: the
//! snapshot checks (duplicate ids, references into the snapshot), the stored form (a user's
//! demographics joined in, an enrollment's cascade status), its hash, and its classification
//! against the mirror index. Only rows that change leave as COPY lines; what a complete pull
//! never returned, and enrollments whose user or class goes away, become deletions at the end.
//!
//! Collections are pulled referenced types first (orgs, sessions, courses, classes,
//! demographics, users, enrollments), so every reference is checked against a complete set.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;

use chrono::{DateTime, Utc};
use foldhash::fast::FixedState;
use sqlx::{PgConnection, PgPool, Row};

use crate::diff::{self, Index, Key, Op, Tally};
use crate::domain::{
    AcademicSession, Class, Course, Demo, Demographics, Enrollment, Entity, Org, Skipped, Status,
    User, races_bits,
};
use crate::mirror::{self, CopyLine, MirrorError, StageRow};
use crate::normalize::Normalized;

/// Users of a delta pull held back until their demographics are read from the store; past this
/// many the delta is abandoned for a full pull (which needs no such help and costs the same).
const MAX_WAITING_USERS: usize = 100_000;
/// Ids per store query when completing a delta's users.
const STORE_BATCH: usize = 5_000;

/// A record type as the pipeline checks and stores it.
pub trait Pulled: StageRow {
    /// The records this one refers to (looked up before it is settled).
    fn references(&self, _out: &mut Vec<(Entity, String)>) {}

    /// Checks the record's references and turns it into its stored form, given the rest of
    /// the snapshot; `Err` says why it cannot be used (a reference to a record that is not in
    /// the snapshot).
    fn settle(&mut self, _index: &Index) -> Result<(), String> {
        Ok(())
    }
}

impl Pulled for Org {}
impl Pulled for AcademicSession {}
impl Pulled for Course {}
impl Pulled for User {}

fn missing(what: &str, id: &str) -> String {
    format!("references {what} {id} which is not in the snapshot")
}

impl Pulled for Class {
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

    fn settle(&mut self, index: &Index) -> Result<(), String> {
        if let Some(school) = &self.school_sourced_id
            && !index.is_known(Entity::Orgs, school)
        {
            return Err(missing("school", school));
        }
        if let Some(course) = &self.course_sourced_id
            && !index.is_known(Entity::Courses, course)
        {
            return Err(missing("course", course));
        }
        match self
            .term_sourced_ids
            .iter()
            .find(|t| !index.is_known(Entity::AcademicSessions, t))
        {
            Some(term) => Err(missing("term", term)),
            None => Ok(()),
        }
    }
}

impl Pulled for Enrollment {
    fn references(&self, out: &mut Vec<(Entity, String)>) {
        out.push((Entity::Users, self.user_sourced_id.clone()));
        out.push((Entity::Classes, self.class_sourced_id.clone()));
    }

    /// Also the cascade: an enrollment is stored deleted when its user or class will not be
    /// active.
    fn settle(&mut self, index: &Index) -> Result<(), String> {
        let user = index.reference(Entity::Users, &self.user_sourced_id);
        if !user.known {
            return Err(missing("user", &self.user_sourced_id));
        }
        let class = index.reference(Entity::Classes, &self.class_sourced_id);
        if !class.known {
            return Err(missing("class", &self.class_sourced_id));
        }
        if !(user.active && class.active) {
            self.status = Status::Deleted;
        }
        Ok(())
    }
}

/// A normalized record, for what a delta pull must look up in the mirror before classifying
/// it: its own id (valid or skipped) and what it refers to.
pub trait Lookups {
    fn lookups(&self, out: &mut Vec<(Entity, String)>);
}

impl<R: Pulled> Lookups for Normalized<R> {
    fn lookups(&self, out: &mut Vec<(Entity, String)>) {
        match self {
            Ok((row, _)) => {
                out.push((R::ENTITY, row.sourced_id().to_owned()));
                row.references(out);
            }
            Err(skipped) => out.push((R::ENTITY, skipped.sourced_id.clone())),
        }
    }
}

/// Demographics (with the id they were sent under) wait for their user in memory: nothing to
/// look up.
impl Lookups for (Option<String>, Normalized<Option<Demographics>>) {
    fn lookups(&self, _out: &mut Vec<(Entity, String)>) {}
}

/// One run's pipeline state.
pub struct Pipeline {
    pub index: Index,
    pub tally: Tally,
    /// Demographics by user, until the user arrives.
    demographics: HashMap<Key, Demo, FixedState>,
    /// Delta pulls: the ids of the demographics pulled, to find users that changed only there.
    demographics_ids: Vec<String>,
    /// Delta pulls: users whose demographics did not come with the pull.
    waiting_users: Vec<User>,
    /// Delta pulls: users and classes that stop being active in this run (their enrollments
    /// outside the pull follow them).
    deactivated: BTreeMap<Entity, Vec<String>>,
    /// Enrollments skipped as invalid (the cascade still applies to their stored rows).
    skipped_enrollments: Vec<String>,
    /// The entities with rows in their change-set tables (written, counted as changes or
    /// not); empty when the run has nothing to write.
    pub touched: BTreeSet<Entity>,
    /// The latest `dateLastModified` of a usable record.
    pub newest: Option<DateTime<Utc>>,
    /// Set when a delta pull cannot be completed as one (the run starts over with a full pull).
    pub needs_full: Option<String>,
    /// Delta pulls: the `dateLastModified` bound sent to the server.
    pub since: Option<DateTime<Utc>>,
    lines: Vec<u8>,
    skipped: Vec<Skipped>,
}

impl Pipeline {
    pub fn new(index: Index, samples_per_operation: usize) -> Pipeline {
        Pipeline {
            index,
            tally: Tally::new(samples_per_operation),
            demographics: HashMap::default(),
            demographics_ids: Vec::new(),
            waiting_users: Vec::new(),
            deactivated: BTreeMap::new(),
            skipped_enrollments: Vec::new(),
            touched: BTreeSet::new(),
            newest: None,
            needs_full: None,
            since: None,
            lines: Vec::with_capacity(1 << 20),
            skipped: Vec::new(),
        }
    }

    /// Delta pulls: loads the mirror entries these lookups need.
    pub async fn prepare(
        &mut self,
        conn: &mut PgConnection,
        lookups: Vec<(Entity, String)>,
    ) -> Result<(), MirrorError> {
        if !self.index.is_delta() || lookups.is_empty() {
            return Ok(());
        }
        for entity in Entity::ALL {
            let ids: Vec<String> = lookups
                .iter()
                .filter(|(e, _)| *e == entity)
                .map(|(_, id)| id.clone())
                .collect();
            if !ids.is_empty() {
                self.index.ensure(conn, entity, &ids).await?;
            }
        }
        Ok(())
    }

    /// Checks, settles, hashes and classifies one pulled record; a changed row is buffered as
    /// a COPY line for `apply_*`.
    pub fn accept<R: Pulled>(&mut self, row: R) {
        // A server that ignores the filter sends everything: its "delta" would be read as
        // complete changes while deletions by absence go unseen.
        if let Some(since) = self.since
            && row.modified().is_none_or(|t| t <= since)
        {
            self.needs_full.get_or_insert_with(|| {
                "the server sent records not modified since the watermark (it does not apply the dateLastModified filter)".into()
            });
        }
        self.accept_row(row);
    }

    /// [`Pipeline::accept`] for a row rebuilt from the store (its dates are old by nature).
    fn accept_row<R: Pulled>(&mut self, mut row: R) {
        let entity = R::ENTITY;
        let key = diff::key(row.sourced_id());
        if self.index.is_duplicate(entity, key) {
            self.skip(
                Some(entity),
                Skipped {
                    entity: entity.as_str(),
                    sourced_id: row.sourced_id().to_owned(),
                    reason: "duplicate sourcedId in the pull (first copy kept)".into(),
                },
            );
            return;
        }
        if let Err(reason) = row.settle(&self.index) {
            self.skip(
                Some(entity),
                Skipped {
                    entity: entity.as_str(),
                    sourced_id: row.sourced_id().to_owned(),
                    reason,
                },
            );
            return;
        }
        if let Some(t) = row.modified() {
            self.newest = self.newest.max(Some(t));
        }
        let start = self.lines.len();
        row.encode(&mut CopyLine::new(&mut self.lines));
        let hash = diff::row_hash(&self.lines[start..]);
        let Some(write) = self.index.observe(entity, key, row.is_active(), hash) else {
            self.lines.truncate(start);
            return;
        };
        let _ = writeln!(self.lines, "\t{hash}\t{}", write.op.as_str());
        self.touched.insert(entity);
        if write.counted {
            self.tally.count(entity, write.op, row.sourced_id());
        }
        if self.index.is_delta() && matches!(entity, Entity::Users | Entity::Classes) {
            match write.op {
                // Enrollments this delta does not carry may have been stored deleted only
                // because of this record; which ones cannot be told without them.
                Op::Reactivate => {
                    self.needs_full
                        .get_or_insert_with(|| format!("a {} came back active", singular(entity)));
                }
                Op::Delete => self
                    .deactivated
                    .entry(entity)
                    .or_default()
                    .push(row.sourced_id().to_owned()),
                _ => {}
            }
        }
    }

    /// A record skipped as invalid: still "in the snapshot" for references, not a deletion.
    /// `entity` is the roster type it would have been stored as (`None` for a demographics
    /// record, which is no roster record of its own).
    pub fn skip(&mut self, entity: Option<Entity>, skipped: Skipped) {
        if let Some(entity) = entity {
            self.index
                .mark_skipped(entity, diff::key(&skipped.sourced_id));
            if entity == Entity::Enrollments {
                self.skipped_enrollments.push(skipped.sourced_id.clone());
            }
        }
        self.skipped.push(skipped);
    }

    /// A user's demographics (or, `Demo::default()`, their deletion); the first record wins.
    pub fn add_demographics(&mut self, user_sourced_id: String, demo: Demo) {
        let key = diff::key(&user_sourced_id);
        if self.demographics.contains_key(&key) {
            return;
        }
        self.demographics.insert(key, demo);
        if self.index.is_delta() {
            self.demographics_ids.push(user_sourced_id);
        }
    }

    /// A user, with the demographics pulled before it. In a delta pull a user whose
    /// demographics did not change is held until [`Pipeline::complete_users`] reads them from
    /// the store.
    pub fn accept_user(&mut self, mut user: User) {
        match self.demographics.remove(&diff::key(&user.sourced_id)) {
            Some(demo) => {
                user.demographics = demo;
                self.accept(user);
            }
            None if self.index.is_delta() => {
                if self.waiting_users.len() >= MAX_WAITING_USERS {
                    self.needs_full.get_or_insert_with(|| {
                        format!("the delta holds more than {MAX_WAITING_USERS} changed users")
                    });
                    return;
                }
                self.waiting_users.push(user);
            }
            None => self.accept(user),
        }
    }

    /// Delta pulls, after the users: gives held users their stored demographics, and stores
    /// the new demographics of users whose own record did not change, on their stored row.
    pub async fn complete_users(
        &mut self,
        conn: &mut PgConnection,
        store: &PgPool,
        district: &str,
    ) -> Result<(), MirrorError> {
        if !self.index.is_delta() {
            self.demographics = HashMap::default();
            return Ok(());
        }
        let mut waiting = std::mem::take(&mut self.waiting_users);
        while !waiting.is_empty() {
            let batch: Vec<User> = waiting.drain(..waiting.len().min(STORE_BATCH)).collect();
            let ids: Vec<&str> = batch.iter().map(|u| u.sourced_id.as_str()).collect();
            let stored: HashMap<String, Demo> = stored_users(store, district, &ids)
                .await?
                .into_iter()
                .map(|u| (u.sourced_id, u.demographics))
                .collect();
            for mut user in batch {
                user.demographics = stored.get(&user.sourced_id).copied().unwrap_or_default();
                self.accept(user);
            }
        }
        // Demographics left over belong to users this delta did not carry.
        let ids: Vec<String> = std::mem::take(&mut self.demographics_ids)
            .into_iter()
            .filter(|id| self.demographics.contains_key(&diff::key(id)))
            .collect();
        for batch in ids.chunks(STORE_BATCH) {
            self.index.ensure(conn, Entity::Users, batch).await?;
            let ids: Vec<&str> = batch.iter().map(String::as_str).collect();
            for mut user in stored_users(store, district, &ids).await? {
                if let Some(demo) = self.demographics.get(&diff::key(&user.sourced_id)) {
                    user.demographics = *demo;
                    self.accept_row(user);
                }
            }
        }
        self.demographics = HashMap::default();
        Ok(())
    }

    /// Bytes of COPY lines buffered.
    pub fn buffered(&self) -> usize {
        self.lines.len()
    }

    /// The COPY lines buffered since the last call.
    pub fn take_lines(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.lines)
    }

    /// The records skipped since the last call.
    pub fn take_skipped(&mut self) -> Vec<Skipped> {
        std::mem::take(&mut self.skipped)
    }

    /// After the pull: deletions by absence (complete pulls only) and the enrollment cascade
    /// for stored enrollments the pull did not settle, into `del_*`.
    pub async fn finish(
        &mut self,
        conn: &mut PgConnection,
        store: &PgPool,
        district: &str,
    ) -> Result<(), MirrorError> {
        for entity in Entity::ALL {
            if self.index.absent_count(entity) == 0 {
                continue;
            }
            let sql = format!(
                "COPY (SELECT sourced_id FROM sync.mirror_{} WHERE district_id = {} AND status = 'active') TO STDOUT",
                entity.as_str(),
                diff::quote_literal(district)
            );
            let mut gone = Vec::new();
            let index = &self.index;
            diff::copy_out_lines(conn, sql, |line| {
                let id = diff::unescape(line);
                if index.is_absent(entity, &id) {
                    gone.push(id);
                }
                Ok(())
            })
            .await?;
            self.delete(conn, entity, gone).await?;
        }

        let candidates: Vec<(String, String, String)> = if self.index.is_delta() {
            let users = self.deactivated.remove(&Entity::Users).unwrap_or_default();
            let classes = self
                .deactivated
                .remove(&Entity::Classes)
                .unwrap_or_default();
            if users.is_empty() && classes.is_empty() {
                Vec::new()
            } else {
                // The store's indexes find a user's or a class's enrollments; a delta runs only
                // when the store and the mirror agree.
                sqlx::query_as(
                    "SELECT sourced_id, user_sourced_id, class_sourced_id FROM roster.enrollments
                     WHERE district_id = $1 AND status = 'active'
                       AND (user_sourced_id = ANY($2) OR class_sourced_id = ANY($3))",
                )
                .bind(district)
                .bind(&users)
                .bind(&classes)
                .fetch_all(store)
                .await
                .map_err(db("finding the enrollments of deleted users and classes"))?
            }
        } else if self.skipped_enrollments.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(
                "SELECT sourced_id, user_sourced_id, class_sourced_id FROM sync.mirror_enrollments
                 WHERE district_id = $1 AND status = 'active' AND sourced_id = ANY($2)",
            )
            .bind(district)
            .bind(&self.skipped_enrollments)
            .fetch_all(&mut *conn)
            .await
            .map_err(db("reading skipped enrollments"))?
        };
        let mut lookups = Vec::new();
        for (id, user, class) in &candidates {
            lookups.push((Entity::Enrollments, id.clone()));
            lookups.push((Entity::Users, user.clone()));
            lookups.push((Entity::Classes, class.clone()));
        }
        self.prepare(conn, lookups).await?;
        let cascaded = candidates
            .into_iter()
            .filter(|(id, user, class)| self.index.cascades(id, user, class))
            .map(|(id, _, _)| id)
            .collect();
        self.delete(conn, Entity::Enrollments, cascaded).await
    }

    async fn delete(
        &mut self,
        conn: &mut PgConnection,
        entity: Entity,
        mut ids: Vec<String>,
    ) -> Result<(), MirrorError> {
        ids.sort();
        ids.dedup();
        for id in &ids {
            self.index.mark_deleted(entity, diff::key(id));
            self.tally.count(entity, Op::Delete, id);
        }
        if !ids.is_empty() {
            self.touched.insert(entity);
        }
        mirror::copy_deleted(conn, entity, &ids).await
    }
}

fn singular(entity: Entity) -> &'static str {
    match entity {
        Entity::Users => "user",
        Entity::Classes => "class",
        _ => entity.as_str(),
    }
}

/// Users as the store holds them, demographics included.
async fn stored_users(
    store: &PgPool,
    district: &str,
    ids: &[&str],
) -> Result<Vec<User>, MirrorError> {
    let rows = sqlx::query(
        "SELECT sourced_id, status, role, username, email, given_name, family_name, middle_name,
                identifier, enabled, grades, org_sourced_ids, gender, hispanic_or_latino, races,
                source_modified_at
         FROM roster.users WHERE district_id = $1 AND sourced_id = ANY($2)",
    )
    .bind(district)
    .bind(ids)
    .fetch_all(store)
    .await
    .map_err(db("reading stored users for a delta pull"))?;
    rows.iter()
        .map(|r| -> Result<User, sqlx::Error> {
            let gender: Option<String> = r.try_get("gender")?;
            let races: Option<Vec<String>> = r.try_get("races")?;
            let demographics = Demo {
                present: races.is_some(),
                gender: gender
                    .as_deref()
                    .and_then(|g| crate::domain::GENDERS.iter().position(|x| *x == g))
                    .map_or(0, |i| i as u8 + 1),
                hispanic_or_latino: r.try_get("hispanic_or_latino")?,
                races: races.as_deref().map_or(0, races_bits),
            };
            Ok(User {
                sourced_id: r.try_get("sourced_id")?,
                status: if r.try_get::<&str, _>("status")? == "active" {
                    Status::Active
                } else {
                    Status::Deleted
                },
                source_modified_at: r.try_get("source_modified_at")?,
                role: r.try_get("role")?,
                username: r.try_get("username")?,
                email: r.try_get("email")?,
                given_name: r.try_get("given_name")?,
                family_name: r.try_get("family_name")?,
                middle_name: r.try_get("middle_name")?,
                identifier: r.try_get("identifier")?,
                enabled: r.try_get("enabled")?,
                grades: r.try_get("grades")?,
                org_sourced_ids: r.try_get("org_sourced_ids")?,
                demographics,
            })
        })
        .collect::<Result<_, _>>()
        .map_err(db("reading stored users for a delta pull"))
}

fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> MirrorError {
    move |source| MirrorError::Database { doing, source }
}
