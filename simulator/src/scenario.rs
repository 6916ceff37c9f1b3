//! Scripted, deterministic changes to the district, and the log of what each one did.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::generate::{self, GRADES, SEMESTER_1};
use crate::model::{Collection, Dataset, Record, Status, find};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Scenario {
    /// About 1 % of the district changes, in every way a normal school day brings.
    DayOfChurn {
        #[serde(default)]
        seed: u64,
    },
    /// The same day without purges: users and enrollments that would vanish are marked
    /// `tobedeleted` instead, so a delta pull (`dateLastModified` filter) sees every change.
    DayOfEdits {
        #[serde(default)]
        seed: u64,
    },
    /// Semester 1 ends: enrollments of semester-1-only classes are purged, those classes marked.
    TermRollover,
    /// Every collection answers 200 with no records until `Restore`.
    Outage,
    /// Ends an `Outage` (data unchanged).
    Restore,
}

/// What happened to one collection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionChanges {
    pub created: Vec<String>,
    /// Records whose imported content changed (for demographics: sex, race or ethnicity).
    pub updated: Vec<String>,
    pub marked_tobedeleted: Vec<String>,
    /// Records removed entirely, without ever showing `tobedeleted`.
    pub purged: Vec<String>,
}

impl CollectionChanges {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty()
            && self.updated.is_empty()
            && self.marked_tobedeleted.is_empty()
            && self.purged.is_empty()
    }
}

/// Everything a scenario did, per collection; every id list is sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeLog {
    pub changes: BTreeMap<Collection, CollectionChanges>,
    /// Users whose demographics changed only in fields the product does not import
    /// (`cityOfBirth`, `birthDate`, metadata extension flags): their `dateLastModified` moved but
    /// nothing downstream should. Not listed in `changes[demographics].updated`.
    pub demographics_nonimported_only: Vec<String>,
}

impl ChangeLog {
    /// Changes of one collection (empty when none).
    pub fn of(&self, collection: Collection) -> CollectionChanges {
        self.changes.get(&collection).cloned().unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.values().all(CollectionChanges::is_empty)
            && self.demographics_nonimported_only.is_empty()
    }

    fn entry(&mut self, collection: Collection) -> &mut CollectionChanges {
        self.changes.entry(collection).or_default()
    }

    fn finish(mut self) -> ChangeLog {
        for c in self.changes.values_mut() {
            c.created.sort();
            c.updated.sort();
            c.marked_tobedeleted.sort();
            c.purged.sort();
        }
        self.changes.retain(|_, c| !c.is_empty());
        self.demographics_nonimported_only.sort();
        self
    }
}

/// Applies a data-changing scenario (`DayOfChurn`, `DayOfEdits`, `TermRollover`) to the data set.
/// `Outage`/`Restore` do not touch data and return an empty log.
pub fn apply(data: &mut Dataset, scenario: &Scenario) -> ChangeLog {
    let log = match scenario {
        Scenario::DayOfChurn { seed } => day_of_churn(data, *seed, true),
        Scenario::DayOfEdits { seed } => day_of_churn(data, *seed, false),
        Scenario::TermRollover => term_rollover(data),
        Scenario::Outage | Scenario::Restore => ChangeLog::default(),
    };
    data.sort();
    log.finish()
}

fn term_rollover(data: &mut Dataset) -> ChangeLog {
    let mut log = ChangeLog::default();
    let now = data.next_timestamp();
    let mut ending = HashSet::new();
    for class in &mut data.classes {
        let only_sem1 = !class.terms.is_empty() && class.terms.iter().all(|t| t == SEMESTER_1);
        if only_sem1 && class.status == Status::Active {
            class.status = Status::ToBeDeleted;
            class.date_last_modified = now;
            ending.insert(class.sourced_id.clone());
            log.entry(Collection::Classes)
                .marked_tobedeleted
                .push(class.sourced_id.clone());
        }
    }
    let purged = &mut log.entry(Collection::Enrollments).purged;
    data.enrollments.retain(|e| {
        let keep = !ending.contains(&e.class);
        if !keep {
            purged.push(e.sourced_id.clone());
        }
        keep
    });
    log
}

/// Keeps the churn's random stream apart from the generator's for the same seed.
const CHURN_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

fn day_of_churn(data: &mut Dataset, seed: u64, purges: bool) -> ChangeLog {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(CHURN_SALT));
    let mut log = ChangeLog::default();
    let now = data.next_timestamp();

    // Pick disjoint groups of active students so each id has exactly one fate.
    let mut students: Vec<usize> = (0..data.users.len())
        .filter(|&i| data.users[i].role == "student" && data.users[i].status == Status::Active)
        .collect();
    students.shuffle(&mut rng);
    let one_percent = (students.len() / 100).max(1);
    let portion = (one_percent / 2).max(1);
    let quarter = (one_percent / 4).max(1);
    let mut take = |n: usize| -> Vec<String> {
        let n = n.min(students.len());
        students
            .drain(..n)
            .map(|i| data.users[i].sourced_id.clone())
            .collect()
    };
    let to_update = take(portion);
    let mut to_mark = take(quarter);
    let mut to_purge = take(quarter);
    if !purges {
        to_mark.append(&mut to_purge);
    }
    let to_drop_enrollment = take(portion);
    let to_add_enrollment = take(portion);
    let demo_imported = take(quarter);
    let demo_nonimported = take(quarter);

    // Updated users: name, email or grade.
    for id in &to_update {
        let Some(u) = find_mut(&mut data.users, id) else {
            continue;
        };
        match rng.random_range(0..3) {
            0 => u.family_name = generate::pick_name(&mut rng).family.to_string(),
            1 => u.email = format!("{}.new@students.example.org", u.username),
            _ => {
                let next = GRADES
                    .iter()
                    .position(|g| u.grades.first().is_some_and(|c| c == g))
                    .map_or(0, |p| (p + 1) % GRADES.len());
                u.grades = vec![Cow::Borrowed(GRADES[next])];
            }
        }
        u.date_last_modified = now;
        log.entry(Collection::Users).updated.push(id.clone());
    }

    // Users marked tobedeleted (their other records stay as they are, as ClassLink does).
    for id in &to_mark {
        if let Some(u) = find_mut(&mut data.users, id) {
            u.status = Status::ToBeDeleted;
            u.date_last_modified = now;
            log.entry(Collection::Users)
                .marked_tobedeleted
                .push(id.clone());
        }
    }

    // Purged users vanish with their demographics and enrollments.
    let purge: HashSet<&String> = to_purge.iter().collect();
    data.users.retain(|u| !purge.contains(&u.sourced_id));
    log.entry(Collection::Users)
        .purged
        .extend(to_purge.iter().cloned());
    let demos_purged = &mut log.entry(Collection::Demographics).purged;
    data.demographics.retain(|d| {
        let keep = !purge.contains(&d.sourced_id);
        if !keep {
            demos_purged.push(d.sourced_id.clone());
        }
        keep
    });
    let adding: HashSet<&String> = to_add_enrollment.iter().collect();
    let mut taken: HashMap<String, HashSet<String>> = HashMap::new();
    let drop_one: HashSet<&String> = to_drop_enrollment.iter().collect();
    let mut dropped_for = HashSet::new();
    let mut enrollments_marked = Vec::new();
    let enrollments_purged = &mut log.entry(Collection::Enrollments).purged;
    data.enrollments.retain_mut(|e| {
        if adding.contains(&e.user) {
            taken
                .entry(e.user.clone())
                .or_default()
                .insert(e.class.clone());
        }
        let purge_all = purge.contains(&e.user);
        // One active enrollment dropped for each chosen student.
        let drop = drop_one.contains(&e.user)
            && e.status == Status::Active
            && dropped_for.insert(e.user.clone());
        if drop && !purges {
            e.status = Status::ToBeDeleted;
            e.date_last_modified = now;
            enrollments_marked.push(e.sourced_id.clone());
            return true;
        }
        if purge_all || drop {
            enrollments_purged.push(e.sourced_id.clone());
        }
        !(purge_all || drop)
    });
    log.entry(Collection::Enrollments)
        .marked_tobedeleted
        .append(&mut enrollments_marked);

    let mut classes_by_school: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, c) in data.classes.iter().enumerate() {
        if c.status == Status::Active {
            classes_by_school
                .entry(c.school.as_str())
                .or_default()
                .push(i);
        }
    }
    // Ids carry the (strictly increasing) clock so repeated churns never collide.
    let stamp = now.timestamp();
    let mut new_enrollments = Vec::new();
    let mut issued = 0usize;
    let mut enrollment_id = || {
        issued += 1;
        format!("enr-{stamp}-{issued:06}")
    };

    // Added enrollments: chosen students join another class of their school.
    for id in &to_add_enrollment {
        let Some(school) = find(&data.users, id).and_then(|u| u.orgs.first()) else {
            continue;
        };
        let none = HashSet::new();
        let taken = taken.get(id).unwrap_or(&none);
        let candidates: Vec<usize> = classes_by_school
            .get(school.as_str())
            .map(|list| {
                list.iter()
                    .copied()
                    .filter(|&i| !taken.contains(&data.classes[i].sourced_id))
                    .collect()
            })
            .unwrap_or_default();
        let Some(&ci) = candidates.choose(&mut rng) else {
            continue;
        };
        let eid = enrollment_id();
        new_enrollments.push(generate::student_enrollment(
            eid.clone(),
            id,
            &data.classes[ci],
            now,
        ));
        log.entry(Collection::Enrollments).created.push(eid);
    }

    // New students, each with demographics and enrollments in classes of their school.
    let schools: Vec<&str> = classes_by_school.keys().copied().collect();
    let per_student = 8
        .min(data.enrollments.len() / data.demographics.len().max(1))
        .max(1);
    for n in 0..portion {
        let Some(&school) = schools.choose(&mut rng) else {
            break;
        };
        let uid = format!("stu-{stamp}-{n:05}");
        let grade = rng.random_range(0..GRADES.len());
        let (user, demo) =
            generate::new_student(&mut rng, uid.clone(), 900_000 + n, school, grade, now);
        data.users.push(user);
        data.demographics.push(demo);
        log.entry(Collection::Users).created.push(uid.clone());
        log.entry(Collection::Demographics)
            .created
            .push(uid.clone());
        let mut candidates = classes_by_school.get(school).cloned().unwrap_or_default();
        candidates.shuffle(&mut rng);
        for &ci in candidates.iter().take(per_student) {
            let eid = enrollment_id();
            new_enrollments.push(generate::student_enrollment(
                eid.clone(),
                &uid,
                &data.classes[ci],
                now,
            ));
            log.entry(Collection::Enrollments).created.push(eid);
        }
    }
    data.enrollments.append(&mut new_enrollments);
    // The edits below look records up by binary search.
    data.sort();

    // A class retitled.
    let active: Vec<usize> = (0..data.classes.len())
        .filter(|&i| data.classes[i].status == Status::Active)
        .collect();
    if let Some(class) = active.choose(&mut rng).map(|&i| &mut data.classes[i]) {
        class.title = format!("{} (renamed)", class.title);
        class.date_last_modified = now;
        log.entry(Collection::Classes)
            .updated
            .push(class.sourced_id.clone());
    }

    // Demographics changes the product imports: sex or a race flag.
    for id in &demo_imported {
        let Some(d) = find_mut(&mut data.demographics, id) else {
            continue;
        };
        if rng.random_bool(0.5) {
            d.sex = if d.sex == "female" {
                Cow::Borrowed("male")
            } else {
                Cow::Borrowed("female")
            };
        } else {
            d.asian = !d.asian;
            d.demographic_race_two_or_more_races = [
                d.american_indian_or_alaska_native,
                d.asian,
                d.black_or_african_american,
                d.native_hawaiian_or_other_pacific_islander,
                d.white,
            ]
            .iter()
            .filter(|r| **r)
            .count()
                > 1;
        }
        d.date_last_modified = now;
        log.entry(Collection::Demographics).updated.push(id.clone());
    }

    // Demographics changes the product does not import.
    for id in &demo_nonimported {
        let Some(d) = find_mut(&mut data.demographics, id) else {
            continue;
        };
        match rng.random_range(0..3) {
            0 => d.city_of_birth = format!("{} Heights", d.city_of_birth).trim().to_string(),
            1 => d.birth_date = d.birth_date.and_then(|b| b.succ_opt()),
            _ => {
                let flag = d
                    .metadata
                    .get("ext_at_risk")
                    .and_then(Value::as_str)
                    .is_some_and(|v| v == "true");
                d.metadata
                    .insert("ext_at_risk".into(), Value::String((!flag).to_string()));
            }
        }
        d.date_last_modified = now;
        log.demographics_nonimported_only.push(id.clone());
    }

    log
}

/// Binary search for a record to edit; collections are sorted by `sourced_id` here.
fn find_mut<'a, R: Record>(records: &'a mut [R], id: &str) -> Option<&'a mut R> {
    records
        .binary_search_by(|r| r.sourced_id().cmp(id))
        .ok()
        .map(|i| &mut records[i])
}
