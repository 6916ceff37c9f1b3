//! Pulling a district: every collection of the registry, page by page, through normalization
//! into the [`Snapshot`]. One code path for the sync, the dry run and the audit: the sync
//! stages changed rows into the run's change set and looks up what a delta needs; the audit
//! stages nothing and needs no database ([`Stage::Report`]).
//!
//! Fetching and checking run side by side: pages are fetched (up to the client's concurrency)
//! and normalized on the blocking pool while earlier pages are classified and staged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::{PgConnection, PgPool};
use tracing::warn;

use crate::changeset::{self, ChangeSetError};
use crate::config::DemographicsMode;
use crate::domain::{Entity, Finding, FindingSummary, Severity};
use crate::journal::{self, JournalError};
use crate::mirror::{self, MirrorError};
use crate::oneroster::{FetchError, OneRosterClient, Page, PullQuery, WireRecord};
use crate::registry::{Collection, Kind, each_collection, kind};
use crate::scope::Phase;
use crate::snapshot::{Observe, Snapshot, Take};
use crate::store::{self, StoreError};

/// Changed rows are copied into the change-set tables in batches of about this size.
const COPY_BATCH_BYTES: usize = 8 << 20;
/// Ids per store query when completing a delta's users.
const STORE_BATCH: usize = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    ChangeSet(#[from] ChangeSetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "the district is scoped to schools the source does not have (or has as tobedeleted): {}; the district may have renamed or closed them: check `schools` / `school_identifiers` against the district's orgs (an audit lists them)",
        .missing.join(", ")
    )]
    ScopeSchoolsMissing { missing: Vec<String> },
    #[error("normalizing a page of {collection} failed: {detail}")]
    Normalize {
        collection: Collection,
        detail: String,
    },
}

/// Where a pull's changes go.
pub enum Stage<'a> {
    /// The sync: changed rows into the run's change-set tables on this session; a delta pull
    /// looks up the mirror there and stored users in `store`.
    ChangeSet {
        session: &'a mut PgConnection,
        store: &'a PgPool,
        district: &'a str,
        trust_hashes: bool,
        /// A first load: rows new to the mirror go straight into the store, the mirror and the
        /// journal, in the transaction the session is in.
        direct: Option<Direct>,
    },
    /// The audit: nothing is written or read but the district's API.
    Report,
}

/// What a first load writes its new rows with.
#[derive(Debug, Clone)]
pub struct Direct {
    pub run_id: uuid::Uuid,
    /// `deleted_at` of rows that arrive deleted, as COPY reads it.
    pub deleted_at: String,
}

/// How a collection's pull ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    Complete,
    /// `x-perm-rev` moved: the pull must start over.
    RevisionMoved,
    /// A delta cannot be completed as one (the snapshot says why).
    NeedsFull,
}

/// What a pull has found so far, besides the snapshot.
#[derive(Debug, Default)]
pub struct Tally {
    /// Records received per collection, readable or not.
    pub fetched: BTreeMap<Collection, i64>,
    /// Records skipped (error findings) per entity.
    pub skipped: BTreeMap<Entity, i64>,
    pub findings: FindingSummary,
    /// The collections pulled to the end.
    pub complete: Vec<Collection>,
    /// `X-Total-Count` per collection, as the first page announced it.
    pub totals: BTreeMap<Collection, i64>,
    /// The revision of the first page (`x-perm-rev`), and whether it moved since.
    pub revision: Option<String>,
    moved: bool,
    /// Time per phase.
    pub phases: BTreeMap<&'static str, Duration>,
    /// Journal rows a first load wrote as it went.
    pub journaled: u64,
}

impl Tally {
    fn timed(&mut self, phase: &'static str, since: Instant) {
        *self.phases.entry(phase).or_default() += since.elapsed();
    }

    /// Notes a page's revision; false once it differs from the first page's.
    fn observe_revision(&mut self, revision: &Option<String>) -> bool {
        match (&self.revision, revision) {
            (_, None) => {}
            (None, Some(r)) => self.revision = Some(r.clone()),
            (Some(first), Some(r)) if first != r => self.moved = true,
            _ => {}
        }
        !self.moved
    }
}

/// One pull of a district (one attempt: a moved revision starts a new one).
pub struct Pull<'a, O: Observe> {
    client: &'a OneRosterClient,
    pub snapshot: Snapshot,
    pub tally: Tally,
    stage: Stage<'a>,
    observer: &'a mut O,
    /// The delta filter, on every collection of a delta pull.
    filter: Option<String>,
    /// Findings not yet handed to the caller (the sync records them as it goes).
    pending: Vec<Finding>,
    /// A revision move stops a sync's pull; the audit reads on.
    stop_on_revision_move: bool,
    /// The entity of the collection being pulled (collections are pulled one at a time, so
    /// the buffered rows are its).
    current: Option<Entity>,
}

impl<'a, O: Observe> Pull<'a, O> {
    pub fn new(
        client: &'a OneRosterClient,
        snapshot: Snapshot,
        stage: Stage<'a>,
        observer: &'a mut O,
        filter: Option<String>,
    ) -> Pull<'a, O> {
        let stop_on_revision_move = matches!(stage, Stage::ChangeSet { .. });
        Pull {
            client,
            snapshot,
            tally: Tally::default(),
            stage,
            observer,
            filter,
            pending: Vec::new(),
            stop_on_revision_move,
            current: None,
        }
    }

    /// The findings since the last call, in the order they were found.
    pub fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.pending)
    }

    fn query<K: Kind>(&self) -> PullQuery {
        PullQuery {
            filter: self.filter.clone(),
            fields: K::FIELDS.map(<[_]>::to_vec),
        }
    }

    /// Pulls one collection into the snapshot. A server that refuses the field selection
    /// (HTTP 400) refuses the first page, before anything was kept: the collection is pulled
    /// again without it (the wire type keeps only the fields the daemon may hold either way).
    ///
    /// A scoped pull (see `scope`) reads the enrollments before the users: asked for the
    /// users, it pulls the enrollments first; asked for the enrollments afterwards, it has
    /// them already.
    pub async fn collection<K: Kind>(&mut self) -> Result<Flow, PullError> {
        let phase = self.snapshot.scope.as_ref().map(|s| s.phase);
        match (K::COLLECTION, phase) {
            (Collection::Enrollments, Some(Phase::Released)) => return Ok(Flow::Complete),
            (Collection::Users, Some(Phase::Collecting)) => {
                let flow = self.collection_once::<kind::Enrollments>().await?;
                if flow != Flow::Complete {
                    return Ok(flow);
                }
                if let Some(scope) = &mut self.snapshot.scope {
                    scope.phase = Phase::Holding;
                }
            }
            _ => {}
        }
        self.collection_once::<K>().await
    }

    async fn collection_once<K: Kind>(&mut self) -> Result<Flow, PullError> {
        let query = self.query::<K>();
        let selected = query.fields.is_some();
        let flow = match self.collection_with::<K>(query).await {
            Err(PullError::Fetch(FetchError::Client { status: 400, .. }))
                if selected && self.filter.is_none() =>
            {
                warn!(
                    collection = %K::COLLECTION,
                    "the server refused the field selection (HTTP 400): pulling {} without it (only the fields the daemon keeps are read)",
                    K::COLLECTION
                );
                let query = PullQuery {
                    fields: None,
                    ..self.query::<K>()
                };
                self.collection_with::<K>(query).await?
            }
            other => other?,
        };
        if flow != Flow::Complete {
            return Ok(flow);
        }
        if let Some(entity) = K::COLLECTION.entity() {
            self.snapshot.collection_done(entity);
        }
        if K::COLLECTION == Collection::Orgs {
            let missing = self.snapshot.resolve_scope();
            // The audit reports them and reads on.
            if !missing.is_empty() && matches!(self.stage, Stage::ChangeSet { .. }) {
                return Err(PullError::ScopeSchoolsMissing { missing });
            }
        }
        if K::COLLECTION == Collection::Users {
            self.users_done().await?;
            if self.snapshot.scope.is_some() {
                // The held enrollments go in after the users, as the enrollments' rows.
                self.flush(true).await?;
                self.current = Some(Entity::Enrollments);
                self.snapshot.release_enrollments(&mut *self.observer);
            }
        }
        self.flush(true).await?;
        self.tally.complete.push(K::COLLECTION);
        Ok(if self.snapshot.needs_full.is_some() {
            Flow::NeedsFull
        } else {
            Flow::Complete
        })
    }

    async fn collection_with<K: Kind>(&mut self, query: PullQuery) -> Result<Flow, PullError> {
        let collection = K::COLLECTION;
        let entity = collection.entity();
        self.current = entity;
        type Normalized<K> = crate::normalize::Normalized<<K as Kind>::Record>;
        let client = self.client;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Page<Normalized<K>>>(client.concurrency());
        let producer = async move {
            let mut pages = std::pin::pin!(client.pages::<K::Wire>(query));
            while let Some(page) = pages.try_next().await? {
                let Page {
                    offset,
                    total,
                    revision,
                    records,
                    unreadable,
                } = page;
                let records = tokio::task::spawn_blocking(move || {
                    records.into_iter().map(K::normalize).collect::<Vec<_>>()
                })
                .await
                .map_err(|e| PullError::Normalize {
                    collection,
                    detail: e.to_string(),
                })?;
                let page = Page {
                    offset,
                    total,
                    revision,
                    records,
                    unreadable,
                };
                if tx.send(page).await.is_err() {
                    break; // the consumer stopped (revision moved or staging failed)
                }
            }
            Ok::<(), PullError>(())
        };
        let consumer = async {
            // A complete pull's index of this entity, sized by the first page's total, loads
            // while the next pages come in.
            let mut first = rx.recv().await;
            if let (Some(entity), false) = (entity, self.snapshot.is_delta()) {
                if let Some(page) = first.as_ref().filter(|p| p.offset == 0) {
                    self.snapshot.index.reserve(entity, page.total);
                }
                if let Stage::ChangeSet {
                    session,
                    district,
                    trust_hashes,
                    ..
                } = &mut self.stage
                {
                    let phase = Instant::now();
                    mirror::load_entity(
                        session,
                        &mut self.snapshot.index,
                        district,
                        entity,
                        *trust_hashes,
                    )
                    .await?;
                    self.tally.timed("index", phase);
                }
            }
            while let Some(page) = match first.take() {
                Some(page) => Some(page),
                None => rx.recv().await,
            } {
                if !self.tally.observe_revision(&page.revision) && self.stop_on_revision_move {
                    return Ok(Flow::RevisionMoved);
                }
                *self.tally.fetched.entry(collection).or_default() +=
                    (page.records.len() + page.unreadable.len()) as i64;
                if page.offset == 0 {
                    self.tally.totals.insert(collection, page.total as i64);
                }
                if self.snapshot.is_delta() {
                    self.prepare(&page).await?;
                }
                let phase = Instant::now();
                for bad in page.unreadable {
                    self.reject(entity, bad);
                }
                for record in page.records {
                    match record {
                        Ok((record, findings)) => {
                            record.take(findings, &mut self.snapshot, &mut *self.observer)
                        }
                        Err(error) => self.reject(entity, error),
                    }
                }
                self.tally.timed("classify", phase);
                self.flush(false).await?;
            }
            Ok::<Flow, PullError>(Flow::Complete)
        };
        let (fetched, consumed) = tokio::join!(producer, consumer);
        let flow = consumed?;
        if flow == Flow::Complete {
            // A fetch failure ends the channel early: it must not read as a complete collection.
            fetched?;
        }
        Ok(flow)
    }

    fn reject(&mut self, entity: Option<Entity>, error: Finding) {
        match entity {
            Some(entity) => self.snapshot.skip(entity, error),
            // A bad demographics record costs that user's demographics only.
            None => self.snapshot.report(error),
        }
    }

    /// Delta pulls: loads the mirror entries a page's records need.
    async fn prepare<R: Take>(
        &mut self,
        page: &Page<crate::normalize::Normalized<R>>,
    ) -> Result<(), PullError> {
        let Stage::ChangeSet {
            session,
            district,
            trust_hashes,
            ..
        } = &mut self.stage
        else {
            return Ok(());
        };
        let mut lookups = Vec::new();
        for record in &page.records {
            match record {
                Ok((record, _)) => record.lookups(&mut lookups),
                Err(error) => {
                    if let Some(entity) = Entity::from_name(error.entity) {
                        lookups.push((entity, error.sourced_id.clone()));
                    }
                }
            }
        }
        for bad in &page.unreadable {
            if let Some(entity) = Entity::from_name(bad.entity) {
                lookups.push((entity, bad.sourced_id.clone()));
            }
        }
        for entity in Entity::ALL {
            let ids: Vec<String> = lookups
                .iter()
                .filter(|(e, _)| *e == entity)
                .map(|(_, id)| id.clone())
                .collect();
            if !ids.is_empty() {
                mirror::ensure(
                    session,
                    &mut self.snapshot.index,
                    district,
                    entity,
                    &ids,
                    *trust_hashes,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// After the users: a full pull reports demographics of unknown users; a delta pull gives
    /// held users their stored demographics, and stores the new demographics of users whose own
    /// record did not change, on their stored row.
    async fn users_done(&mut self) -> Result<(), PullError> {
        let left = self.snapshot.users_done();
        let Stage::ChangeSet {
            session,
            store,
            district,
            trust_hashes,
            ..
        } = &mut self.stage
        else {
            return Ok(());
        };
        if !self.snapshot.is_delta() {
            return Ok(());
        }
        let mut waiting = self.snapshot.waiting_users();
        while !waiting.is_empty() {
            let batch: Vec<_> = waiting.drain(..waiting.len().min(STORE_BATCH)).collect();
            let ids: Vec<&str> = batch.iter().map(|(u, _)| u.sourced_id.as_str()).collect();
            let stored: std::collections::HashMap<String, crate::domain::Demo> =
                store::users(store, district, &ids)
                    .await?
                    .into_iter()
                    .map(|u| (u.sourced_id, u.demographics))
                    .collect();
            for (user, findings) in batch {
                let demo = stored.get(&user.sourced_id).copied().unwrap_or_default();
                self.snapshot.accept_waiting(user, findings, demo);
            }
        }
        for batch in left.chunks(STORE_BATCH) {
            mirror::ensure(
                session,
                &mut self.snapshot.index,
                district,
                Entity::Users,
                batch,
                *trust_hashes,
            )
            .await?;
            let ids: Vec<&str> = batch.iter().map(String::as_str).collect();
            for user in store::users(store, district, &ids).await? {
                self.snapshot.restore_user(user);
            }
        }
        self.snapshot.demographics_done();
        Ok(())
    }

    /// Hands the findings on, and copies buffered rows into the change set (`all`: whatever
    /// is buffered; else only a full batch: each COPY costs a round trip or two).
    async fn flush(&mut self, all: bool) -> Result<(), PullError> {
        for f in self.snapshot.take_findings() {
            if f.severity == Severity::Error
                && let Some(entity) = Entity::from_name(f.entity)
            {
                *self.tally.skipped.entry(entity).or_default() += 1;
            }
            self.tally.findings.add(&f);
            self.pending.push(f);
        }
        if !all && self.snapshot.buffered() < COPY_BATCH_BYTES {
            return Ok(());
        }
        let phase = Instant::now();
        let lines = self.snapshot.take_lines();
        let Stage::ChangeSet {
            session,
            district,
            direct,
            ..
        } = &mut self.stage
        else {
            return Ok(());
        };
        let Some(entity) = self.current else {
            return Ok(());
        };
        match direct {
            Some(d) => {
                let (new, rest) = changeset::split_new(&lines);
                let step = Instant::now();
                let copied =
                    store::copy_new(session, district, entity, &new, &d.deleted_at).await?;
                self.tally.timed("stage_store", step);
                if copied {
                    let step = Instant::now();
                    mirror::copy_new(session, district, entity, &new).await?;
                    self.tally.timed("stage_mirror", step);
                    let step = Instant::now();
                    self.tally.journaled +=
                        journal::copy_created(session, district, d.run_id, entity, &new).await?;
                    self.tally.timed("stage_journal", step);
                } else {
                    // The store has some of them already: the change set's upsert writes them.
                    changeset::copy_rows(session, entity, new).await?;
                }
                changeset::copy_rows(session, entity, rest).await?;
            }
            None => changeset::copy_rows(session, entity, lines).await?,
        }
        self.tally.timed("stage", phase);
        Ok(())
    }
}

/// Every collection of the district, parsed and discarded (`pull`, the benchmark floor):
/// records and pages per collection.
pub async fn fetch_only(
    client: &OneRosterClient,
    demographics: DemographicsMode,
) -> Result<Vec<(Collection, usize, usize)>, FetchError> {
    async fn count<W: WireRecord>(
        client: &OneRosterClient,
        query: PullQuery,
    ) -> Result<(usize, usize), FetchError> {
        let mut pages = std::pin::pin!(client.pages::<W>(query));
        let (mut records, mut n) = (0, 0);
        while let Some(page) = pages.try_next().await? {
            records += page.records.len() + page.unreadable.len();
            n += 1;
        }
        Ok((records, n))
    }
    let mut out = Vec::new();
    each_collection!(K => {
        if K::COLLECTION != Collection::Demographics || demographics.pulled() {
            let query = PullQuery {
                fields: K::FIELDS.map(<[_]>::to_vec),
                ..PullQuery::default()
            };
            let (records, pages) = count::<<K as Kind>::Wire>(client, query).await?;
            out.push((K::COLLECTION, records, pages));
        }
    });
    Ok(out)
}

/// What the server says of every collection it would be pulled (one one-record request
/// each, all at once): its record count, and the data's revision when all agree on one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub totals: BTreeMap<Collection, i64>,
    /// `x-perm-rev`, when every answer carried the same one.
    pub revision: Option<String>,
}

impl Probe {
    /// The totals of the roster collections.
    pub fn entity_totals(&self) -> BTreeMap<Entity, i64> {
        self.totals
            .iter()
            .filter_map(|(c, n)| c.entity().map(|e| (e, *n)))
            .collect()
    }
}

/// One collection's total and revision.
type Total = (Collection, usize, Option<String>);

pub async fn probe(
    client: &OneRosterClient,
    demographics: DemographicsMode,
) -> Result<Probe, FetchError> {
    type Answer<'a> = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<Total>, FetchError>> + Send + 'a>,
    >;
    let mut requests: Vec<Answer<'_>> = Vec::new();
    each_collection!(K => {
        if K::COLLECTION != Collection::Demographics || demographics.pulled() {
            requests.push(Box::pin(async move {
                match client.probe::<<K as Kind>::Wire>().await {
                    Ok((n, revision)) => Ok(Some((K::COLLECTION, n, revision))),
                    // A collection the district may do without: no total (so no shortcut).
                    Err(FetchError::Forbidden { .. } | FetchError::NotFound { .. })
                        if K::COLLECTION.is_optional()
                            && demographics == DemographicsMode::Optional =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }));
        }
    });
    let answers: Vec<Total> = futures_util::future::try_join_all(requests)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let mut revisions: Vec<Option<String>> = answers.iter().map(|(_, _, r)| r.clone()).collect();
    revisions.dedup();
    let revision = match revisions.as_slice() {
        [Some(one)] => Some(one.clone()),
        _ => None,
    };
    Ok(Probe {
        totals: answers.into_iter().map(|(c, n, _)| (c, n as i64)).collect(),
        revision,
    })
}
