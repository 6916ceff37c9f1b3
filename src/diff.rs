//! The diff, in memory, as the pull streams by.
//!
//! A run loads an index of the district's mirror: per record one entry, keyed by a 128-bit hash
//! of its `sourcedId`, holding 56 bits of the hash of the row last stored and its status bits
//! (24 bytes a record, sized for the collection's total before it fills). Every pulled record
//! is checked (duplicates, references) and turned into its stored form, hashed, and classified
//! against the index on arrival: a record whose stored form did not change costs a hash lookup
//! and writes nothing; only created, updated, reactivated and deleted rows reach the database
//! (`apply_*`). What the index never saw in a complete pull is deleted by absence.
//!
//! The index also answers, for records that refer to others, whether the referenced record is
//! in the snapshot and whether it will be active after this run (the enrollment cascade).
//!
//! Pure: the mirror module fills the index from the database ([`Index::insert_mirrored`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use foldhash::fast::FixedState;
use serde::Serialize;
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use crate::domain::Entity;

/// A record's identity in the index: a 128-bit hash of its `sourcedId` (collisions among the
/// ids of one district are out of reach: about 2^-82 for ten million records), as two words
/// (a `u128` would align the index's buckets to 16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key([u64; 2]);

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Already uniform: one word is enough to place it.
        state.write_u64(self.0[0]);
    }
}

pub fn key(sourced_id: &str) -> Key {
    let h = xxh3_128(sourced_id.as_bytes());
    Key([h as u64, (h >> 64) as u64])
}

/// The most entries a collection's `X-Total-Count` reserves up front (a larger or bogus total
/// grows the index as records come instead).
const MAX_RESERVED: usize = 10_000_000;

/// The definition of [`row_hash`] and the row encoding it reads (`stored`), and the canonical
/// form of records (`normalize`). Bump it whenever any changes: a mirror hashed under another
/// version is not trusted (its rows are written once more, as no change, and the next run
/// pulls everything). 2: PostgreSQL's own COPY output as the encoding; sets sorted, vocabulary
/// in its spelling.
/// 3: users' preferred names, primary org, role assignments and identifiers.
pub const HASH_VERSION: i32 = 3;

/// The hash of a row's stored form (its COPY line), as the mirror keeps it.
pub fn row_hash(line: &[u8]) -> i64 {
    xxh3_64(line) as i64
}

const IN_MIRROR: u8 = 1;
const MIRROR_ACTIVE: u8 = 2;
/// The mirror has a hash for the row (NULL after a deletion by absence: content unknown).
const MIRROR_HASHED: u8 = 4;
/// A usable record with this id came in this pull.
const SEEN: u8 = 8;
/// A record with this id came in this pull but was skipped as invalid.
const SKIPPED: u8 = 16;
/// The record as stored after this run is active (meaningful with `SEEN`).
const ACTIVE: u8 = 32;

/// One record in the index: the flags in the top byte, the row hash's lower 56 bits below
/// them (a changed row keeps its hash's lower bits with odds of 2^-56).
#[derive(Debug, Clone, Copy, Default)]
struct Entry(u64);

const HASH_BITS: u64 = (1 << 56) - 1;

impl Entry {
    /// A record the mirror has; `hash` is NULL after a deletion by absence (or untrusted).
    fn mirrored(active: bool, hash: Option<i64>) -> Entry {
        let mut entry = Entry(hash.map_or(0, |h| h as u64 & HASH_BITS));
        entry.set(IN_MIRROR);
        if active {
            entry.set(MIRROR_ACTIVE);
        }
        if hash.is_some() {
            entry.set(MIRROR_HASHED);
        }
        entry
    }

    fn flags(self) -> u8 {
        (self.0 >> 56) as u8
    }

    fn has(self, flag: u8) -> bool {
        self.flags() & flag != 0
    }

    fn set(&mut self, flags: u8) {
        self.0 |= u64::from(flags) << 56;
    }

    fn clear(&mut self, flags: u8) {
        self.0 &= !(u64::from(flags) << 56);
    }

    /// Whether the entry holds this row hash (its lower 56 bits).
    fn holds(self, hash: i64) -> bool {
        self.0 & HASH_BITS == hash as u64 & HASH_BITS
    }

    fn set_hash(&mut self, hash: i64) {
        self.0 = (self.0 & !HASH_BITS) | (hash as u64 & HASH_BITS);
    }
}

/// What the snapshot says of a referenced record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference {
    /// The record came in this pull (usable or skipped as invalid), or, in a delta pull, the
    /// mirror has it.
    pub known: bool,
    /// It came in this pull but was skipped as invalid (it keeps its stored row).
    pub skipped: bool,
    /// It will be active in the store after this run.
    pub active: bool,
}

impl Reference {
    /// Known and deleted (`tobedeleted` in this pull, or deleted in the mirror): not a record
    /// skipped as invalid, whose stored row stands as it was.
    pub fn is_deleted(self) -> bool {
        self.known && !self.skipped && !self.active
    }
}

/// What to do with one pulled record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Reactivate,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Reactivate => "reactivate",
            Op::Delete => "delete",
        }
    }
}

/// A record to write: its operation, and whether it counts as a change (in reconcile mode
/// rows equal to the mirror are written again but are no change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    pub op: Op,
    pub counted: bool,
}

#[derive(Default)]
struct Table {
    entries: HashMap<Key, Entry, FixedState>,
    mirror_active: i64,
}

/// The mirror of one district as the pull sees it.
///
/// For a complete pull the whole mirror is loaded up front (every record will be looked up).
/// A delta pull touches few records: its index starts empty and loads the entries a page needs
/// ([`Index::unloaded`], [`Index::load`]) before the page is classified.
pub struct Index {
    tables: BTreeMap<Entity, Table>,
    /// A delta pull: records not in the pull are unchanged, not absent.
    delta: bool,
    /// Write every pulled row, whatever the mirror says (the mirror may be behind the store).
    reconcile: bool,
}

impl Index {
    /// An empty index: a full pull of a district never synced (or the audit), or a delta pull
    /// whose entries the mirror module loads as pages need them.
    pub fn new(delta: bool, reconcile: bool) -> Index {
        Index {
            tables: Entity::ALL.map(|e| (e, Table::default())).into(),
            delta,
            reconcile,
        }
    }

    /// Enters one mirror row (`hash` NULL after a deletion by absence, or when the mirror's
    /// hashes are of another [`HASH_VERSION`]).
    pub fn insert_mirrored(
        &mut self,
        entity: Entity,
        sourced_id: &str,
        active: bool,
        hash: Option<i64>,
    ) {
        let table = self.table_mut(entity);
        if active {
            table.mirror_active += 1;
        }
        table
            .entries
            .insert(key(sourced_id), Entry::mirrored(active, hash));
    }

    /// Delta pulls: of these ids, the ones whose mirror entry is not loaded yet.
    pub fn unloaded<'a>(&self, entity: Entity, ids: &'a [String]) -> Vec<&'a str> {
        let table = self.table(entity);
        let mut missing: Vec<&str> = ids
            .iter()
            .filter(|id| !table.entries.contains_key(&key(id)))
            .map(String::as_str)
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    /// Delta pulls: the mirror rows of `ids` (loaded with [`Index::unloaded`]); an id the
    /// mirror lacks is remembered as such.
    pub fn load(&mut self, entity: Entity, ids: &[&str], rows: Vec<(String, bool, Option<i64>)>) {
        let table = self.table_mut(entity);
        for (id, active, hash) in rows {
            table
                .entries
                .insert(key(&id), Entry::mirrored(active, hash));
        }
        for id in ids {
            table.entries.entry(key(id)).or_default();
        }
    }

    pub fn is_delta(&self) -> bool {
        self.delta
    }

    /// A complete pull, before the entity's mirror loads: room for `total` records (the
    /// collection's `X-Total-Count`), so the index is not regrown as it fills (growing holds
    /// the old table and the new one at once).
    pub fn reserve(&mut self, entity: Entity, total: usize) {
        let entries = &mut self.table_mut(entity).entries;
        let wanted = total.min(MAX_RESERVED).saturating_sub(entries.len());
        entries.reserve(wanted);
    }

    fn table(&self, entity: Entity) -> &Table {
        &self.tables[&entity]
    }

    fn table_mut(&mut self, entity: Entity) -> &mut Table {
        self.tables.entry(entity).or_default()
    }

    fn get(&self, entity: Entity, key: Key) -> Entry {
        self.table(entity)
            .entries
            .get(&key)
            .copied()
            .unwrap_or_default()
    }

    /// Rows of the type the store holds as active before this run.
    pub fn mirror_active(&self, entity: Entity) -> i64 {
        self.table(entity).mirror_active
    }

    /// Delta pulls: the active counts, counted beside the pull ([`active_counts`]).
    pub fn set_mirror_active(&mut self, counts: &BTreeMap<Entity, i64>) {
        for (entity, n) in counts {
            self.table_mut(*entity).mirror_active = *n;
        }
    }

    /// Whether a usable record with this id already came in this pull (the first copy wins).
    pub fn is_duplicate(&self, entity: Entity, key: Key) -> bool {
        self.get(entity, key).has(SEEN)
    }

    /// Whether a reference to `sourced_id` points into the snapshot: a record with that id came
    /// in this pull (even one skipped as invalid: it keeps its stored row), or, in a delta
    /// pull, the store has it.
    pub fn is_known(&self, entity: Entity, sourced_id: &str) -> bool {
        self.reference(entity, sourced_id).known
    }

    /// Whether the record will be active in the store after this run: as pulled; as stored
    /// when it was skipped as invalid, or absent from a delta pull.
    pub fn will_be_active(&self, entity: Entity, sourced_id: &str) -> bool {
        self.reference(entity, sourced_id).active
    }

    /// What the snapshot says of the record with this id.
    pub fn reference(&self, entity: Entity, sourced_id: &str) -> Reference {
        let e = self.get(entity, key(sourced_id));
        Reference {
            known: e.has(SEEN | SKIPPED) || (self.delta && e.has(IN_MIRROR)),
            skipped: e.has(SKIPPED) && !e.has(SEEN),
            active: self.active_after(e),
        }
    }

    fn active_after(&self, e: Entry) -> bool {
        if e.has(SEEN) {
            e.has(ACTIVE)
        } else if e.has(SKIPPED) || self.delta {
            e.has(MIRROR_ACTIVE)
        } else {
            false
        }
    }

    pub fn mark_skipped(&mut self, entity: Entity, key: Key) {
        self.table_mut(entity)
            .entries
            .entry(key)
            .or_default()
            .set(SKIPPED);
    }

    /// Records a usable pulled record in its stored form and says what to write, if anything.
    pub fn observe(&mut self, entity: Entity, key: Key, active: bool, hash: i64) -> Option<Write> {
        let reconcile = self.reconcile;
        let entry = self.table_mut(entity).entries.entry(key).or_default();
        let before = *entry;
        entry.set(SEEN | if active { ACTIVE } else { 0 });
        entry.set_hash(hash);
        if !before.has(IN_MIRROR) {
            return Some(Write {
                op: Op::Create,
                counted: true,
            });
        }
        let same = before.has(MIRROR_HASHED) && before.holds(hash);
        let op = match (before.has(MIRROR_ACTIVE), active) {
            (true, false) => Op::Delete,
            (false, true) => Op::Reactivate,
            _ => Op::Update,
        };
        // An active row without a hash was stored before hashes were kept (see the migration):
        // rewriting it refreshes the hash and is no change.
        let unhashed = !before.has(MIRROR_HASHED) && op == Op::Update;
        let quiet = reconcile || unhashed;
        (!same || quiet).then_some(Write {
            op,
            counted: !same && !quiet,
        })
    }

    /// Records active in the mirror that a complete pull did not return (and did not skip):
    /// deleted by absence. Always zero for a delta pull.
    pub fn absent_count(&self, entity: Entity) -> usize {
        if self.delta {
            return 0;
        }
        self.table(entity)
            .entries
            .values()
            .filter(|e| e.has(MIRROR_ACTIVE) && !e.has(SEEN | SKIPPED))
            .count()
    }

    /// Whether the mirror row with this id is deleted by absence in this pull.
    pub fn is_absent(&self, entity: Entity, sourced_id: &str) -> bool {
        let e = self.get(entity, key(sourced_id));
        !self.delta && e.has(MIRROR_ACTIVE) && !e.has(SEEN | SKIPPED)
    }

    /// Whether a mirror-active enrollment that did not come usable in this pull (skipped, or
    /// absent from a delta) is deleted by the cascade: its user or class will not be active.
    pub fn cascades(&self, enrollment: &str, user: &str, class: &str) -> bool {
        let e = self.get(Entity::Enrollments, key(enrollment));
        e.has(MIRROR_ACTIVE)
            && !e.has(SEEN)
            && !(self.will_be_active(Entity::Users, user)
                && self.will_be_active(Entity::Classes, class))
    }

    /// Records a deletion found after the pull (absence or cascade), so counting it twice is
    /// impossible.
    pub fn mark_deleted(&mut self, entity: Entity, key: Key) {
        let entry = self.table_mut(entity).entries.entry(key).or_default();
        entry.set(SEEN);
        entry.clear(ACTIVE);
    }
}

/// Counts of one entity's changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChangeCounts {
    pub created: i64,
    pub updated: i64,
    pub reactivated: i64,
    pub deleted: i64,
}

impl ChangeCounts {
    pub fn total(&self) -> i64 {
        self.created + self.updated + self.reactivated + self.deleted
    }
}

/// Sample ids per entity and operation (`create`, `update`, `reactivate`, `delete`), for change
/// reports and held change sets: ids only, never content.
pub type Samples = BTreeMap<Entity, BTreeMap<String, Vec<String>>>;

/// Change counts and sample ids of a run, gathered as rows are classified.
#[derive(Debug, Default)]
pub struct Tally {
    pub counts: BTreeMap<Entity, ChangeCounts>,
    samples: BTreeMap<Entity, BTreeMap<&'static str, BTreeSet<String>>>,
    per_operation: usize,
}

impl Tally {
    pub fn new(per_operation: usize) -> Tally {
        Tally {
            per_operation,
            ..Tally::default()
        }
    }

    pub fn count(&mut self, entity: Entity, op: Op, sourced_id: &str) {
        let c = self.counts.entry(entity).or_default();
        match op {
            Op::Create => c.created += 1,
            Op::Update => c.updated += 1,
            Op::Reactivate => c.reactivated += 1,
            Op::Delete => c.deleted += 1,
        }
        // The first ids in sourcedId order, allocating only for those that make the cut.
        let ids = self
            .samples
            .entry(entity)
            .or_default()
            .entry(op.as_str())
            .or_default();
        if ids.len() < self.per_operation
            || ids.last().is_some_and(|last| sourced_id < last.as_str())
        {
            ids.insert(sourced_id.to_owned());
            if ids.len() > self.per_operation {
                ids.pop_last();
            }
        }
    }

    /// Sample ids per entity and operation, in sourcedId order.
    pub fn samples(&self) -> Samples {
        self.samples
            .iter()
            .map(|(e, ops)| {
                (
                    *e,
                    ops.iter()
                        .map(|(op, ids)| (op.to_string(), ids.iter().cloned().collect()))
                        .collect(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mirrored users: (id, active, hash).
    fn index_with(rows: &[(&str, bool, Option<i64>)]) -> Index {
        let mut index = Index::new(false, false);
        for (id, active, hash) in rows {
            index.insert_mirrored(Entity::Users, id, *active, *hash);
        }
        index
    }

    #[test]
    fn an_entry_costs_24_bytes_and_its_flags_never_touch_its_hash() {
        assert_eq!(std::mem::size_of::<(Key, Entry)>(), 24);
        // A hash whose top byte is all ones, flags set and cleared beside it.
        let hash = 0xff34_5678_9abc_def1_u64 as i64;
        let mut e = Entry::mirrored(true, Some(hash));
        assert!(e.has(IN_MIRROR) && e.has(MIRROR_ACTIVE) && e.has(MIRROR_HASHED));
        assert!(!e.has(SEEN | SKIPPED | ACTIVE));
        e.set(SEEN | ACTIVE);
        e.clear(ACTIVE);
        assert!(e.has(SEEN) && !e.has(ACTIVE) && e.holds(hash));
        assert!(!e.holds(hash ^ (1 << 40)) && !e.holds(hash ^ 1));
        e.set_hash(-1);
        assert!(e.holds(-1) && e.has(SEEN | IN_MIRROR) && !e.has(ACTIVE));
        let unhashed = Entry::mirrored(false, None);
        assert!(unhashed.has(IN_MIRROR) && !unhashed.has(MIRROR_ACTIVE | MIRROR_HASHED));
    }

    #[test]
    fn reserving_a_bogus_total_is_capped_and_keeps_what_is_there() {
        let mut index = index_with(&[("a", true, Some(1))]);
        index.reserve(Entity::Users, usize::MAX);
        let capacity = index.table(Entity::Users).entries.capacity();
        assert!(
            (MAX_RESERVED..2 * MAX_RESERVED).contains(&capacity),
            "{capacity}"
        );
        // The mirrored entry stands: the same row is no change.
        assert_eq!(index.observe(Entity::Users, key("a"), true, 1), None);
    }

    #[test]
    fn classification_against_the_mirror() {
        let mut index = index_with(&[
            ("a", true, Some(1)),
            ("b", true, Some(2)),
            ("c", false, Some(3)),
            ("d", true, None),
            ("e", true, Some(5)),
        ]);
        let u = Entity::Users;
        assert_eq!(index.mirror_active(u), 4);
        assert_eq!(index.observe(u, key("a"), true, 1), None);
        assert_eq!(
            index.observe(u, key("b"), false, 20),
            Some(Write {
                op: Op::Delete,
                counted: true
            })
        );
        assert_eq!(
            index.observe(u, key("c"), true, 30).unwrap().op,
            Op::Reactivate
        );
        // An active row stored before hashes were kept is written again, as no change.
        assert_eq!(
            index.observe(u, key("d"), true, 4),
            Some(Write {
                op: Op::Update,
                counted: false
            })
        );
        assert_eq!(
            index.observe(u, key("new"), true, 9).unwrap().op,
            Op::Create
        );
        assert!(index.is_duplicate(u, key("a")));
        assert_eq!(index.absent_count(u), 1);
        assert!(index.is_absent(u, "e"));
        assert!(!index.is_absent(u, "a"));
    }

    #[test]
    fn reconcile_writes_equal_rows_without_counting_them() {
        let mut index = index_with(&[("a", true, Some(1))]);
        index.reconcile = true;
        assert_eq!(
            index.observe(Entity::Users, key("a"), true, 1),
            Some(Write {
                op: Op::Update,
                counted: false
            })
        );
    }

    #[test]
    fn delta_pulls_know_the_mirror_and_delete_nothing_by_absence() {
        let mut index = index_with(&[("a", true, Some(1)), ("b", false, Some(2))]);
        index.delta = true;
        let u = Entity::Users;
        assert!(index.is_known(u, "a") && index.is_known(u, "b") && !index.is_known(u, "x"));
        assert!(index.will_be_active(u, "a") && !index.will_be_active(u, "b"));
        assert_eq!(index.absent_count(u), 0);
        index.delta = false;
        assert!(!index.is_known(u, "a") && !index.will_be_active(u, "a"));
        assert_eq!(index.absent_count(u), 1);
    }

    #[test]
    fn skipped_records_keep_their_stored_status_for_references() {
        let mut index = index_with(&[("a", true, Some(1))]);
        let u = Entity::Users;
        index.mark_skipped(u, key("a"));
        assert!(index.is_known(u, "a") && index.will_be_active(u, "a"));
        assert_eq!(index.absent_count(u), 0);
    }

    #[test]
    fn references_tell_skipped_from_deleted() {
        let mut index = index_with(&[("gone", false, Some(1))]);
        let u = Entity::Users;
        index.observe(u, key("del"), false, 2);
        index.observe(u, key("ok"), true, 3);
        index.mark_skipped(u, key("bad"));
        assert!(index.reference(u, "del").is_deleted());
        assert!(!index.reference(u, "ok").is_deleted());
        let bad = index.reference(u, "bad");
        assert!(bad.known && bad.skipped && !bad.is_deleted());
        assert!(!index.reference(u, "nowhere").known);
        // Not in a full pull: absent, not known.
        assert!(!index.reference(u, "gone").known);
    }

    #[test]
    fn samples_keep_the_first_ids_in_order() {
        let mut tally = Tally::new(2);
        for id in ["d", "b", "c", "a"] {
            tally.count(Entity::Users, Op::Create, id);
        }
        assert_eq!(tally.counts[&Entity::Users].created, 4);
        assert_eq!(tally.samples()[&Entity::Users]["create"], vec!["a", "b"]);
    }
}
