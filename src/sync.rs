//! One sync cycle for one district: pull → normalize → stage → diff → apply → record.
//!
//! [`run_once`] serves the daemon loop, `sync`, `sync --dry-run` and the tests alike. Nothing is
//! written to the roster store or the mirror unless the whole pull completed and passed its
//! checks; every run, whatever its outcome, leaves a row in `sync.runs` and one summary log line.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::{Connection, PgConnection};
use tracing::{Instrument, error, info, info_span, warn};
use uuid::Uuid;

use crate::config::DistrictConfig;
use crate::db::{Databases, DbError};
use crate::domain::{Entity, Skipped, Warning};
use crate::mirror::{self, ChangeCounts, DiffMode, MirrorError, Samples, StageRow};
use crate::normalize;
use crate::oneroster::{self, Endpoint, FetchError, OneRosterClient, Page, PullQuery, WireRecord};
use crate::safety::{self, Breach};
use crate::store::{self, StoreError};

/// How many times a pull starts over when the upstream revision moves under it.
const MAX_PULL_ATTEMPTS: usize = 4;
/// Skipped records logged one per line per run; the rest are counted (all are in the history).
const SKIPPED_LOG_LINES: usize = 100;
/// Skipped records kept in the run history row.
const SKIPPED_HISTORY: usize = 5_000;
/// Sample ids per entity and operation in change reports and held change sets.
const SAMPLE_IDS: i64 = 10;

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    NothingToDo,
    DryRun,
    Held,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::NothingToDo => "nothing_to_do",
            Outcome::DryRun => "dry_run",
            Outcome::Held => "held",
            Outcome::Failed => "failed",
        }
    }
}

/// Per-entity counts of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EntityCounts {
    pub fetched: i64,
    pub created: i64,
    pub updated: i64,
    pub reactivated: i64,
    pub deleted: i64,
    pub skipped: i64,
}

/// What a run did; also what `sync` prints and what the run history keeps.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: Uuid,
    pub district: String,
    pub outcome: Outcome,
    pub dry_run: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub revision: Option<String>,
    pub counts: BTreeMap<Entity, EntityCounts>,
    pub skipped: Vec<Skipped>,
    pub warnings: usize,
    /// Sample ids of the change set per entity and operation.
    pub samples: Samples,
    /// Set when the change set goes over a safety limit (held, or would be in a dry run, or
    /// applied because it was approved).
    pub hold: Option<Hold>,
    /// Time per phase in milliseconds: `pull` (wall time of the whole pull, which includes
    /// `normalize` and `stage`, the time spent normalizing and copying into staging), `check`,
    /// `diff`, `apply` (store and mirror).
    pub phases_ms: BTreeMap<&'static str, u64>,
    /// OneRoster requests made (retries included) and the time spent on them.
    pub fetch: FetchStats,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FetchStats {
    pub requests: u64,
    pub retries: u64,
    pub request_ms: u64,
}

/// Why a change set was (or would be) held, and how it is identified for `approve`.
#[derive(Debug, Clone, Serialize)]
pub struct Hold {
    pub fingerprint: String,
    pub breaches: Vec<Breach>,
    /// The operator approved exactly this change set, so it was applied.
    pub approved: bool,
}

impl RunReport {
    pub fn changes(&self) -> i64 {
        self.counts
            .values()
            .map(|c| c.created + c.updated + c.reactivated + c.deleted)
            .sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database error while {doing}: {source}")]
    Database {
        doing: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the {entity} collection came back empty while the store has {active} active {entity}: \
         refusing to treat an empty pull as deletions (upstream outage or lost permissions?)"
    )]
    EmptyCollection { entity: Entity, active: i64 },
    #[error(
        "the upstream data kept changing during the pull (x-perm-rev moved {attempts} times); giving up for this run"
    )]
    RevisionUnstable { attempts: usize },
    #[error("the run exceeded its deadline of {0:?} (run_timeout)")]
    Deadline(Duration),
}

fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> SyncError {
    move |source| SyncError::Database { doing, source }
}

/// One full cycle for one district. Never panics on bad data; failures are in the report.
pub async fn run_once(
    dbs: &Databases,
    district: &DistrictConfig,
    options: RunOptions,
) -> RunReport {
    let run_id = Uuid::now_v7();
    let dry_run = options.dry_run || district.dry_run;
    let span = info_span!("run", district = %district.id, run_id = %run_id);
    async move {
        let started_at = Utc::now();
        let clock = Instant::now();
        info!(dry_run, "run started");
        let mut run = Run {
            counts: BTreeMap::new(),
            skipped: Vec::new(),
            warnings: 0,
            revision: None,
            samples: Samples::new(),
            hold: None,
            phases: BTreeMap::new(),
            fetch: FetchStats::default(),
        };
        for entity in Entity::ALL {
            run.counts.insert(entity, EntityCounts::default());
        }
        if let Err(e) = record_start(dbs, &district.id, run_id, started_at, dry_run).await {
            // Without a history row the run cannot be accounted for: fail before pulling.
            return finish(
                dbs,
                district,
                run_id,
                started_at,
                clock,
                dry_run,
                run,
                Err(e),
            )
            .await;
        }
        let result = match tokio::time::timeout(
            district.run_timeout,
            cycle(dbs, district, run_id, dry_run, &mut run),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(SyncError::Deadline(district.run_timeout)),
        };
        finish(
            dbs, district, run_id, started_at, clock, dry_run, run, result,
        )
        .await
    }
    .instrument(span)
    .await
}

/// What a run accumulates while it goes.
struct Run {
    counts: BTreeMap<Entity, EntityCounts>,
    skipped: Vec<Skipped>,
    warnings: usize,
    revision: Option<String>,
    samples: Samples,
    hold: Option<Hold>,
    phases: BTreeMap<&'static str, Duration>,
    fetch: FetchStats,
}

impl Run {
    /// Adds time to a phase.
    fn timed(&mut self, phase: &'static str, since: Instant) {
        *self.phases.entry(phase).or_default() += since.elapsed();
    }

    fn skip(&mut self, entity: Entity, skipped: Skipped) {
        if let Some(c) = self.counts.get_mut(&entity) {
            c.skipped += 1;
        }
        if self.skipped.len() < SKIPPED_LOG_LINES {
            warn!(entity = skipped.entity, sourced_id = %skipped.sourced_id, reason = %skipped.reason, "record skipped");
        }
        self.skipped.push(skipped);
    }

    fn warn(&mut self, warning: Warning) {
        if self.warnings < SKIPPED_LOG_LINES {
            warn!(entity = warning.entity, sourced_id = %warning.sourced_id, message = %warning.message, "record kept with a warning");
        }
        self.warnings += 1;
    }
}

async fn cycle(
    dbs: &Databases,
    district: &DistrictConfig,
    run_id: Uuid,
    dry_run: bool,
    run: &mut Run,
) -> Result<Outcome, SyncError> {
    let client = OneRosterClient::new(district)?;
    let mut session = dbs.state_session().await?;
    let result = cycle_in_session(dbs, district, run_id, dry_run, run, &client, &mut session).await;
    let stats = client.stats();
    run.fetch = FetchStats {
        requests: stats.requests,
        retries: stats.retries,
        request_ms: stats.request_time.as_millis() as u64,
    };
    // Closing the session drops every temporary table; a failed close changes nothing.
    let _ = session.close().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn cycle_in_session(
    dbs: &Databases,
    district: &DistrictConfig,
    run_id: Uuid,
    dry_run: bool,
    run: &mut Run,
    client: &OneRosterClient,
    session: &mut PgConnection,
) -> Result<Outcome, SyncError> {
    let phase = Instant::now();
    pull_snapshot(district, client, session, run).await?;
    run.timed("pull", phase);

    let phase = Instant::now();
    for (entity, skipped) in mirror::check_snapshot(session).await? {
        run.skip(entity, skipped);
    }
    run.timed("check", phase);

    // Fail closed: an empty collection is never read as "everyone left".
    let active = mirror::active_counts(session, &district.id).await?;
    for entity in Entity::ALL {
        let fetched = run.counts.get(&entity).map(|c| c.fetched).unwrap_or(0);
        let active = active.get(&entity).copied().unwrap_or(0);
        if fetched == 0 && active > 0 {
            return Err(SyncError::EmptyCollection { entity, active });
        }
    }

    let pending = pending_run(dbs, &district.id).await?;
    let mode = if dbs.store_is_separate && pending.is_some() {
        warn!(pending_run_id = ?pending, "a previous run did not finish applying to the store: reconciling against it");
        DiffMode::Reconcile
    } else {
        DiffMode::Mirror
    };
    let phase = Instant::now();
    let changes = mirror::diff(session, &district.id, mode).await?;
    run.timed("diff", phase);
    for (entity, c) in &changes {
        if let Some(counts) = run.counts.get_mut(entity) {
            counts.created = c.created;
            counts.updated = c.updated;
            counts.reactivated = c.reactivated;
            counts.deleted = c.deleted;
        }
    }
    let total: i64 = changes.values().map(ChangeCounts::total).sum();
    run.samples = mirror::samples(session, SAMPLE_IDS).await?;

    // The safety gate: over a limit, nothing is applied unless this exact change set was
    // approved.
    let breaches = safety::judge(&changes, &active, &district.limits);
    if !breaches.is_empty() {
        let fingerprint = mirror::fingerprint(session).await?;
        let approved = safety::is_approved(&dbs.state, &district.id, &fingerprint)
            .await
            .map_err(db("reading held change sets"))?;
        run.hold = Some(Hold {
            fingerprint: fingerprint.clone(),
            breaches: breaches.clone(),
            approved,
        });
        if dry_run {
            return Ok(Outcome::DryRun);
        }
        if !approved {
            hold(dbs, district, run_id, run, &fingerprint, &breaches).await?;
            return Ok(Outcome::Held);
        }
        info!(fingerprint = %fingerprint, "applying an approved change set");
    }

    if dry_run {
        return Ok(Outcome::DryRun);
    }
    if total == 0 && mode == DiffMode::Mirror {
        mark_success(&dbs.state, &district.id, run.revision.as_deref()).await?;
        return Ok(Outcome::NothingToDo);
    }

    let phase = Instant::now();
    if dbs.store_is_separate {
        apply_separate(dbs, &district.id, run_id, mode, session).await?;
    } else {
        let mut tx = session
            .begin()
            .await
            .map_err(db("starting the apply transaction"))?;
        store::apply(&mut tx, &district.id).await?;
        mirror::advance(&mut tx, &district.id).await?;
        tx.commit()
            .await
            .map_err(db("committing the apply transaction"))?;
    }
    run.timed("apply", phase);
    mark_success(&dbs.state, &district.id, run.revision.as_deref()).await?;
    if let Some(hold) = &run.hold {
        safety::release(&dbs.state, &district.id, &hold.fingerprint)
            .await
            .map_err(db("releasing the approved change set"))?;
    }
    Ok(Outcome::Applied)
}

/// Keeps the change set for approval and says so in one error-level line: the district, the
/// counts, the limits and how to approve.
async fn hold(
    dbs: &Databases,
    district: &DistrictConfig,
    run_id: Uuid,
    run: &Run,
    fingerprint: &str,
    breaches: &[Breach],
) -> Result<(), SyncError> {
    let counts = counts_json(&run.counts);
    let samples = serde_json::to_value(
        run.samples
            .iter()
            .map(|(e, ops)| (e.as_str(), ops))
            .collect::<BTreeMap<_, _>>(),
    )
    .unwrap_or_default();
    let reasons = serde_json::to_value(breaches).unwrap_or_default();
    safety::hold(
        &dbs.state,
        &district.id,
        fingerprint,
        run_id,
        &counts,
        &samples,
        &reasons,
    )
    .await
    .map_err(db("storing the held change set"))?;
    let reasons = breaches
        .iter()
        .map(Breach::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let c = |e: Entity| run.counts.get(&e).copied().unwrap_or_default();
    error!(
        district = %district.id,
        fingerprint = %fingerprint,
        reasons = %reasons,
        users_deleted = c(Entity::Users).deleted,
        users_updated = c(Entity::Users).updated + c(Entity::Users).reactivated,
        classes_deleted = c(Entity::Classes).deleted,
        classes_updated = c(Entity::Classes).updated + c(Entity::Classes).reactivated,
        enrollments_deleted = c(Entity::Enrollments).deleted,
        enrollments_updated = c(Entity::Enrollments).updated + c(Entity::Enrollments).reactivated,
        approve_with = %format!("oneroster-sync approve --district {}", district.id),
        "change set held by safety limits, nothing applied: {reasons}; review it (sync --dry-run) and run `oneroster-sync approve --district {}` to apply it",
        district.id
    );
    Ok(())
}

fn counts_json(counts: &BTreeMap<Entity, EntityCounts>) -> serde_json::Value {
    serde_json::to_value(
        counts
            .iter()
            .map(|(e, c)| (e.as_str(), c))
            .collect::<BTreeMap<_, _>>(),
    )
    .unwrap_or_default()
}

/// Applies to a roster store in another database; see the store module for the protocol and
/// why it converges after a crash at any step.
async fn apply_separate(
    dbs: &Databases,
    district: &str,
    run_id: Uuid,
    mode: DiffMode,
    session: &mut PgConnection,
) -> Result<(), SyncError> {
    sqlx::query("UPDATE sync.districts SET pending_run_id = $2, pending_since = now() WHERE district_id = $1")
        .bind(district)
        .bind(run_id)
        .execute(&mut *session)
        .await
        .map_err(db("marking the apply as pending"))?;

    let mut store_session = dbs.store_session().await?;
    let result: Result<BTreeMap<Entity, Vec<String>>, SyncError> = async {
        let mut tx = store_session
            .begin()
            .await
            .map_err(db("starting the store transaction"))?;
        store::transfer(session, &mut tx).await?;
        store::apply(&mut tx, district).await?;
        let gone = match mode {
            DiffMode::Reconcile => store::reconcile_absent(&mut tx, district).await?,
            DiffMode::Mirror => BTreeMap::new(),
        };
        tx.commit()
            .await
            .map_err(db("committing the store transaction"))?;
        Ok(gone)
    }
    .await;
    let _ = store_session.close().await;
    let gone = result?;

    let mut tx = session
        .begin()
        .await
        .map_err(db("starting the mirror transaction"))?;
    for (entity, ids) in gone {
        if ids.is_empty() {
            continue;
        }
        sqlx::query(sql!(
            "INSERT INTO del_{} SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
            entity.as_str()
        ))
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(db("recording reconciled deletions"))?;
    }
    mirror::advance(&mut tx, district).await?;
    sqlx::query("UPDATE sync.districts SET pending_run_id = NULL, pending_since = NULL WHERE district_id = $1")
        .bind(district)
        .execute(&mut *tx)
        .await
        .map_err(db("clearing the pending mark"))?;
    tx.commit()
        .await
        .map_err(db("committing the mirror transaction"))?;
    Ok(())
}

/// Pulls every collection into the staging tables. Starts over (bounded) when the upstream
/// revision (`x-perm-rev`) moves during the pull, so a snapshot never mixes two revisions.
async fn pull_snapshot(
    district: &DistrictConfig,
    client: &OneRosterClient,
    session: &mut PgConnection,
    run: &mut Run,
) -> Result<(), SyncError> {
    for attempt in 1..=MAX_PULL_ATTEMPTS {
        mirror::create_stage(session).await?;
        for c in run.counts.values_mut() {
            *c = EntityCounts::default();
        }
        run.skipped.clear();
        run.warnings = 0;
        let mut pull = Pull {
            revision: None,
            moved: false,
        };
        pull_all(district, client, session, run, &mut pull).await?;
        if !pull.moved {
            run.revision = pull.revision;
            return Ok(());
        }
        warn!(
            attempt,
            "upstream revision changed during the pull: starting over"
        );
    }
    Err(SyncError::RevisionUnstable {
        attempts: MAX_PULL_ATTEMPTS,
    })
}

struct Pull {
    revision: Option<String>,
    moved: bool,
}

impl Pull {
    /// Notes a page's revision; false once it differs from the first page's.
    fn observe(&mut self, revision: &Option<String>) -> bool {
        match (&self.revision, revision) {
            (_, None) => {}
            (None, Some(r)) => self.revision = Some(r.clone()),
            (Some(first), Some(r)) if first != r => self.moved = true,
            _ => {}
        }
        !self.moved
    }
}

async fn pull_all(
    district: &DistrictConfig,
    client: &OneRosterClient,
    session: &mut PgConnection,
    run: &mut Run,
    pull: &mut Pull,
) -> Result<(), SyncError> {
    macro_rules! collection {
        ($endpoint:expr, $entity:expr, $normalize:path) => {
            if !pull_collection(
                client,
                session,
                run,
                pull,
                $endpoint,
                $entity,
                PullQuery::default(),
                |w| $normalize(w).map(|(row, warnings)| (Some(row), warnings)),
            )
            .await?
            {
                return Ok(());
            }
        };
    }
    collection!(Endpoint::Orgs, Entity::Orgs, normalize::org);
    collection!(
        Endpoint::AcademicSessions,
        Entity::AcademicSessions,
        normalize::academic_session
    );
    collection!(Endpoint::Courses, Entity::Courses, normalize::course);
    collection!(Endpoint::Classes, Entity::Classes, normalize::class);
    collection!(Endpoint::Users, Entity::Users, normalize::user);
    if district.demographics {
        let query = PullQuery {
            fields: Some(oneroster::DEMOGRAPHICS_FIELDS.to_vec()),
            ..PullQuery::default()
        };
        let selected = pull_collection(
            client,
            session,
            run,
            pull,
            Endpoint::Demographics,
            Entity::Users,
            query,
            normalize::demographics,
        )
        .await;
        let completed = match selected {
            // Every page carries the same `fields`, so a server that refuses the selection
            // refuses the first page, before anything was staged. Without the selection the
            // server sends whole records; the wire type still keeps only gender and ethnicity.
            Err(SyncError::Fetch(FetchError::Client { status: 400, .. })) => {
                warn!(
                    "the server refused the demographics field selection (HTTP 400): \
                     pulling demographics without it (only gender and ethnicity are kept)"
                );
                pull_collection(
                    client,
                    session,
                    run,
                    pull,
                    Endpoint::Demographics,
                    Entity::Users,
                    PullQuery::default(),
                    normalize::demographics,
                )
                .await?
            }
            other => other?,
        };
        if !completed {
            return Ok(());
        }
    }
    collection!(
        Endpoint::Enrollments,
        Entity::Enrollments,
        normalize::enrollment
    );
    Ok(())
}

/// Streams one collection's pages through normalization into staging. Returns false when the
/// revision moved (the caller starts over).
#[allow(clippy::too_many_arguments)]
async fn pull_collection<W, D>(
    client: &OneRosterClient,
    session: &mut PgConnection,
    run: &mut Run,
    pull: &mut Pull,
    endpoint: Endpoint,
    entity: Entity,
    query: PullQuery,
    normalize: fn(W) -> normalize::Normalized<Option<D>>,
) -> Result<bool, SyncError>
where
    W: WireRecord,
    D: StageRow,
{
    let counts_fetched = endpoint != Endpoint::Demographics;
    // Fetching and staging run side by side: the producer keeps the client's requests going
    // while the consumer normalizes and copies earlier pages. The channel (plus the client's
    // own `concurrency` requests in flight) bounds the pages held in memory.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Page<W>>(client.concurrency());
    let producer = async move {
        let mut pages = std::pin::pin!(client.pages::<W>(endpoint, query));
        while let Some(page) = pages.try_next().await? {
            if tx.send(page).await.is_err() {
                break; // the consumer stopped (revision moved or staging failed)
            }
        }
        Ok::<(), SyncError>(())
    };
    let consumer = async move {
        while let Some(page) = rx.recv().await {
            if !pull.observe(&page.revision) {
                return Ok(false);
            }
            if counts_fetched && let Some(c) = run.counts.get_mut(&entity) {
                c.fetched += (page.records.len() + page.unreadable.len()) as i64;
            }
            // Skipped records are staged too: they are "in the snapshot" for references and
            // are not deletions.
            let mut skipped = page.unreadable;
            let mut rows = Vec::with_capacity(page.records.len());
            let phase = Instant::now();
            for record in page.records {
                match normalize(record) {
                    Ok((row, warnings)) => {
                        for w in warnings {
                            run.warn(w);
                        }
                        if let Some(row) = row {
                            rows.push(row);
                        }
                    }
                    Err(skipped) if endpoint == Endpoint::Demographics => {
                        // A bad demographics record only costs that user's demographics.
                        run.warn(Warning {
                            entity: "demographics",
                            sourced_id: skipped.sourced_id,
                            message: skipped.reason,
                        });
                    }
                    Err(bad) => skipped.push(bad),
                }
            }
            run.timed("normalize", phase);
            let phase = Instant::now();
            mirror::copy_rows(session, &rows).await?;
            mirror::copy_skipped(session, &skipped).await?;
            run.timed("stage", phase);
            for bad in skipped {
                run.skip(entity, bad);
            }
        }
        Ok::<bool, SyncError>(true)
    };
    let (fetched, staged) = tokio::join!(producer, consumer);
    // A fetch failure ends the channel early: it must not read as a complete collection.
    fetched?;
    staged
}

async fn pending_run(dbs: &Databases, district: &str) -> Result<Option<Uuid>, SyncError> {
    sqlx::query_scalar("SELECT pending_run_id FROM sync.districts WHERE district_id = $1")
        .bind(district)
        .fetch_optional(&dbs.state)
        .await
        .map(Option::flatten)
        .map_err(db("reading the district state"))
}

async fn mark_success(
    state: &sqlx::PgPool,
    district: &str,
    revision: Option<&str>,
) -> Result<(), SyncError> {
    sqlx::query(
        "UPDATE sync.districts SET last_success_at = now(), last_full_pull_at = now(),
         last_revision = $2, consecutive_failures = 0 WHERE district_id = $1",
    )
    .bind(district)
    .bind(revision)
    .execute(state)
    .await
    .map_err(db("recording the district's success"))?;
    Ok(())
}

async fn record_start(
    dbs: &Databases,
    district: &str,
    run_id: Uuid,
    started_at: DateTime<Utc>,
    dry_run: bool,
) -> Result<(), SyncError> {
    sqlx::query("INSERT INTO sync.districts (district_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(district)
        .execute(&dbs.state)
        .await
        .map_err(db("registering the district"))?;
    sqlx::query(
        "INSERT INTO sync.runs (run_id, district_id, started_at, outcome, dry_run) VALUES ($1, $2, $3, 'running', $4)",
    )
    .bind(run_id)
    .bind(district)
    .bind(started_at)
    .bind(dry_run)
    .execute(&dbs.state)
    .await
    .map_err(db("recording the run start"))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    dbs: &Databases,
    district: &DistrictConfig,
    run_id: Uuid,
    started_at: DateTime<Utc>,
    clock: Instant,
    dry_run: bool,
    run: Run,
    result: Result<Outcome, SyncError>,
) -> RunReport {
    let (outcome, error) = match result {
        Ok(outcome) => (outcome, None),
        Err(e) => {
            let chain = error_chain(&e);
            error!(error = %chain, "run failed; nothing was written to the roster store");
            (Outcome::Failed, Some(chain))
        }
    };
    let report = RunReport {
        run_id,
        district: district.id.clone(),
        outcome,
        dry_run,
        started_at,
        finished_at: Utc::now(),
        duration_ms: clock.elapsed().as_millis() as u64,
        revision: run.revision,
        counts: run.counts,
        skipped: run.skipped,
        warnings: run.warnings,
        samples: run.samples,
        hold: run.hold,
        phases_ms: run
            .phases
            .iter()
            .map(|(k, v)| (*k, v.as_millis() as u64))
            .collect(),
        fetch: run.fetch,
        error,
    };
    if let Err(e) = record_finish(&dbs.state, &report).await {
        error!(error = %error_chain(&e), "could not record the run in the history");
    }
    log_summary(&report);
    report
}

async fn record_finish(state: &sqlx::PgPool, report: &RunReport) -> Result<(), SyncError> {
    let counts = counts_json(&report.counts);
    let skipped = serde_json::to_value(
        report
            .skipped
            .iter()
            .take(SKIPPED_HISTORY)
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default();
    sqlx::query(
        "UPDATE sync.runs SET finished_at = $2, outcome = $3, revision = $4, counts = $5, skipped = $6, error = $7
         WHERE run_id = $1",
    )
    .bind(report.run_id)
    .bind(report.finished_at)
    .bind(report.outcome.as_str())
    .bind(&report.revision)
    .bind(counts)
    .bind(skipped)
    .bind(&report.error)
    .execute(state)
    .await
    .map_err(db("recording the run outcome"))?;
    if report.outcome == Outcome::Failed {
        sqlx::query("UPDATE sync.districts SET consecutive_failures = consecutive_failures + 1 WHERE district_id = $1")
            .bind(&report.district)
            .execute(state)
            .await
            .map_err(db("recording the failure"))?;
    }
    Ok(())
}

/// The one summary line of a run (CONTRACT §8): outcome, duration and per entity the fetched /
/// created / updated / deleted / skipped counts (reactivations count as updates here).
fn log_summary(r: &RunReport) {
    let c = |e: Entity| r.counts.get(&e).copied().unwrap_or_default();
    let (o, a, co, cl, u, en) = (
        c(Entity::Orgs),
        c(Entity::AcademicSessions),
        c(Entity::Courses),
        c(Entity::Classes),
        c(Entity::Users),
        c(Entity::Enrollments),
    );
    info!(
        outcome = r.outcome.as_str(),
        duration_ms = r.duration_ms,
        orgs_fetched = o.fetched,
        orgs_created = o.created,
        orgs_updated = o.updated + o.reactivated,
        orgs_deleted = o.deleted,
        orgs_skipped = o.skipped,
        academic_sessions_fetched = a.fetched,
        academic_sessions_created = a.created,
        academic_sessions_updated = a.updated + a.reactivated,
        academic_sessions_deleted = a.deleted,
        academic_sessions_skipped = a.skipped,
        courses_fetched = co.fetched,
        courses_created = co.created,
        courses_updated = co.updated + co.reactivated,
        courses_deleted = co.deleted,
        courses_skipped = co.skipped,
        classes_fetched = cl.fetched,
        classes_created = cl.created,
        classes_updated = cl.updated + cl.reactivated,
        classes_deleted = cl.deleted,
        classes_skipped = cl.skipped,
        users_fetched = u.fetched,
        users_created = u.created,
        users_updated = u.updated + u.reactivated,
        users_deleted = u.deleted,
        users_skipped = u.skipped,
        enrollments_fetched = en.fetched,
        enrollments_created = en.created,
        enrollments_updated = en.updated + en.reactivated,
        enrollments_deleted = en.deleted,
        enrollments_skipped = en.skipped,
        "run summary"
    );
}

/// The error and its causes on one line, for a single log field.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
