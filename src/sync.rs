//! One sync cycle for one district: pull → normalize → stage → diff → apply → record.
//!
//! [`run_once`] serves the daemon loop, `sync`, `sync --dry-run` and the tests alike. Nothing is
//! written to the roster store or the mirror unless the whole pull completed and passed its
//! checks; every run, whatever its outcome, leaves a row in `sync.runs` and one summary log line.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::{Connection, Executor, PgConnection};
use tracing::{Instrument, error, info, info_span, warn};
use uuid::Uuid;

use crate::config::DistrictConfig;
use crate::db::{Databases, DbError};
use crate::diff::{HASH_VERSION, Index};
use crate::domain::{Demo, Entity, Skipped, Warning};
use crate::mirror::{self, DiffMode, MirrorError, Samples};
use crate::normalize;
use crate::oneroster::{self, Endpoint, FetchError, OneRosterClient, Page, PullQuery, WireRecord};
use crate::pipeline::{Lookups, Pipeline};
use crate::safety::{self, Breach};
use crate::store::{self, StoreError};

/// How many times a pull starts over when the upstream revision moves under it.
const MAX_PULL_ATTEMPTS: usize = 4;
/// Skipped records logged one per line per run; the rest are counted (all are in the history).
const SKIPPED_LOG_LINES: usize = 100;
/// Skipped records kept in the run history row.
const SKIPPED_HISTORY: usize = 5_000;
/// Changed rows are copied into the change-set tables in batches of about this size.
const COPY_BATCH_BYTES: usize = 8 << 20;
/// Sample ids per entity and operation in change reports and held change sets.
const SAMPLE_IDS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    pub dry_run: bool,
    /// A delta pull may be used (when one is possible and a full pull is not due); otherwise
    /// the run pulls everything.
    pub allow_delta: bool,
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
    /// `true` for a complete snapshot, `false` for a delta pull (changes since the watermark;
    /// nothing is deleted by absence).
    pub full_pull: bool,
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
    /// `index`, loading the mirror index; `classify`, checking, hashing and classifying
    /// records, while normalization runs beside it on other threads; and `stage`, copying
    /// changed rows into the change-set tables), `diff` (deletions by absence and the
    /// cascade), `apply` (store and mirror).
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
    #[error("internal error: {0}")]
    Internal(String),
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
            started_at,
            full_pull: true,
            watermark: None,
            upstream_counts: None,
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
            cycle(dbs, district, run_id, options, dry_run, &mut run),
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
    started_at: DateTime<Utc>,
    /// Whether the snapshot is complete (deletions by absence) or a delta.
    full_pull: bool,
    /// The newest `dateLastModified` pulled.
    watermark: Option<DateTime<Utc>>,
    /// What `sync.districts.upstream_counts` becomes if the run succeeds.
    upstream_counts: Option<BTreeMap<String, i64>>,
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
    options: RunOptions,
    dry_run: bool,
    run: &mut Run,
) -> Result<Outcome, SyncError> {
    let client = OneRosterClient::new(district)?;
    let mut session = dbs.state_session().await?;
    let result = cycle_in_session(
        dbs,
        district,
        run_id,
        options,
        dry_run,
        run,
        &client,
        &mut session,
    )
    .await;
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
    options: RunOptions,
    dry_run: bool,
    run: &mut Run,
    client: &OneRosterClient,
    session: &mut PgConnection,
) -> Result<Outcome, SyncError> {
    // Change sets are session-local tables: give them memory before the first one exists.
    session
        .execute("SET temp_buffers = '256MB'")
        .await
        .map_err(db("configuring the session"))?;
    let state = district_state(dbs, &district.id).await?;
    let mode = if dbs.store_is_separate && state.pending_run_id.is_some() {
        warn!(pending_run_id = ?state.pending_run_id, "a previous run did not finish applying to the store: reconciling against it");
        DiffMode::Reconcile
    } else {
        DiffMode::Mirror
    };
    let mut since = delta_since(options, district, &state, mode);
    // A delta pull does not load the mirror, so its active counts (for the safety limits) are
    // counted beside the pull.
    let counting = since.map(|_| {
        tokio::spawn(crate::diff::active_counts(
            dbs.state.clone(),
            district.id.clone(),
        ))
    });
    let phase = Instant::now();
    // What the server holds per collection, to tell whether records were purged since the
    // last full pull (a delta cannot see them go).
    let totals = match since {
        Some(_) => match upstream_totals(client).await {
            Ok(totals) => Some(totals),
            Err(e) => {
                warn!(error = %error_chain(&e), "could not read the collection totals: pulling everything");
                since = None;
                None
            }
        },
        None => None,
    };
    let mut pipeline = loop {
        match since {
            Some(t) => {
                info!(since = %t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "delta pull: records modified since the watermark")
            }
            None => info!("full pull"),
        }
        let pipeline = pull_snapshot(
            dbs,
            district,
            client,
            session,
            run,
            since,
            mode,
            state.hash_version == Some(HASH_VERSION),
        )
        .await?;
        let needs_full = match (&pipeline.needs_full, &totals) {
            (Some(reason), _) => Some(reason.clone()),
            (None, Some(totals)) if since.is_some() => {
                purged(totals, state.upstream_counts.as_deref(), &pipeline.tally)
            }
            _ => None,
        };
        match (needs_full, since) {
            (Some(reason), Some(_)) => {
                warn!(reason = %reason, "delta pull abandoned ({reason}): pulling everything");
                since = None;
            }
            // Only a delta stops early; a full pull that did would read as deletions.
            (Some(reason), None) => {
                return Err(SyncError::Internal(format!(
                    "a full pull stopped early ({reason})"
                )));
            }
            (None, _) => break pipeline,
        }
    };
    run.full_pull = since.is_none();
    run.timed("pull", phase);
    run.upstream_counts = Some(if run.full_pull {
        run.counts
            .iter()
            .map(|(e, c)| (e.as_str().to_owned(), c.fetched))
            .collect()
    } else {
        let mut counts = state
            .upstream_counts
            .as_deref()
            .cloned()
            .unwrap_or_default();
        for (e, c) in &pipeline.tally.counts {
            *counts.entry(e.as_str().to_owned()).or_default() += c.created;
        }
        counts
    });
    if let Some(counting) = counting
        && !run.full_pull
    {
        let counts = counting
            .await
            .map_err(|e| SyncError::Internal(format!("counting mirrored rows failed: {e}")))??;
        pipeline.index.set_mirror_active(&counts);
    }

    // Fail closed: an empty collection is never read as "everyone left". A delta pull is
    // empty whenever nothing changed, and deletes nothing by absence.
    if run.full_pull {
        for entity in Entity::ALL {
            let fetched = run.counts.get(&entity).map(|c| c.fetched).unwrap_or(0);
            let active = pipeline.index.mirror_active(entity);
            if fetched == 0 && active > 0 {
                return Err(SyncError::EmptyCollection { entity, active });
            }
        }
    }

    let phase = Instant::now();
    pipeline.finish(session, &dbs.store, &district.id).await?;
    mirror::seal_run_tables(session).await?;
    run.timed("diff", phase);
    let changes = pipeline.tally.counts.clone();
    for (entity, c) in &changes {
        if let Some(counts) = run.counts.get_mut(entity) {
            counts.created = c.created;
            counts.updated = c.updated;
            counts.reactivated = c.reactivated;
            counts.deleted = c.deleted;
        }
    }
    let active: BTreeMap<Entity, i64> = Entity::ALL
        .into_iter()
        .map(|e| (e, pipeline.index.mirror_active(e)))
        .collect();
    run.samples = pipeline.tally.samples();
    run.watermark = pipeline.newest;

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
    if breaches.is_empty() && state.holding {
        safety::supersede(&dbs.state, &district.id)
            .await
            .map_err(db("retiring the held change set"))?;
    }
    if pipeline.touched.is_empty() {
        mark_success(dbs, district, run).await?;
        return Ok(Outcome::NothingToDo);
    }

    let phase = Instant::now();
    if dbs.store_is_separate {
        apply_separate(dbs, &district.id, run_id, mode, &pipeline.touched, session).await?;
    } else {
        let mut tx = session
            .begin()
            .await
            .map_err(db("starting the apply transaction"))?;
        store::apply(&mut tx, &district.id, &pipeline.touched).await?;
        mirror::advance(&mut tx, &district.id, &pipeline.touched).await?;
        tx.commit()
            .await
            .map_err(db("committing the apply transaction"))?;
    }
    run.timed("apply", phase);
    mark_success(dbs, district, run).await?;
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
    touched: &BTreeSet<Entity>,
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
        store::apply(&mut tx, district, touched).await?;
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
    let mut touched = touched.clone();
    for (entity, ids) in gone {
        if ids.is_empty() {
            continue;
        }
        touched.insert(entity);
        sqlx::query(sql!(
            "INSERT INTO del_{} SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
            entity.as_str()
        ))
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(db("recording reconciled deletions"))?;
    }
    mirror::advance(&mut tx, district, &touched).await?;
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

/// Pulls every collection through the pipeline into the change-set tables: everything, or
/// (`since`) what changed after that time. Starts over (bounded) when the upstream revision
/// (`x-perm-rev`) moves during the pull, so a snapshot never mixes two revisions.
#[allow(clippy::too_many_arguments)]
async fn pull_snapshot(
    dbs: &Databases,
    district: &DistrictConfig,
    client: &OneRosterClient,
    session: &mut PgConnection,
    run: &mut Run,
    since: Option<DateTime<Utc>>,
    mode: DiffMode,
    hashes_current: bool,
) -> Result<Pipeline, SyncError> {
    for attempt in 1..=MAX_PULL_ATTEMPTS {
        mirror::create_run_tables(session).await?;
        let phase = Instant::now();
        let index = Index::load(
            session,
            &district.id,
            since.is_some(),
            mode == DiffMode::Reconcile,
            hashes_current,
        )
        .await?;
        run.timed("index", phase);
        let mut pipeline = Pipeline::new(index, SAMPLE_IDS);
        // The filter has whole seconds: the bound is what the server is sent.
        let bound = since.map(|t| t.trunc_subsecs(0));
        pipeline.since = bound;
        for c in run.counts.values_mut() {
            *c = EntityCounts::default();
        }
        run.skipped.clear();
        run.warnings = 0;
        let mut pull = Pull {
            revision: None,
            moved: false,
            filter: bound.map(|t| {
                format!(
                    "dateLastModified>'{}'",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            }),
        };
        let pulled = pull_all(
            dbs,
            district,
            client,
            session,
            run,
            &mut pull,
            &mut pipeline,
        )
        .await;
        match pulled {
            // A server that does not take the delta filter refuses the first page.
            Err(SyncError::Fetch(FetchError::Client { status: 400, .. })) if since.is_some() => {
                pipeline.needs_full =
                    Some("the server refused the dateLastModified filter (HTTP 400)".into());
                return Ok(pipeline);
            }
            other => other?,
        }
        if pipeline.needs_full.is_some() {
            return Ok(pipeline);
        }
        if !pull.moved {
            run.revision = pull.revision;
            return Ok(pipeline);
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
    /// The delta filter, on every collection of a delta pull.
    filter: Option<String>,
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

    fn query(&self) -> PullQuery {
        PullQuery {
            filter: self.filter.clone(),
            ..PullQuery::default()
        }
    }
}

/// Every collection, referenced types first: a reference is checked against a complete set,
/// and a user's demographics are at hand when the user arrives.
async fn pull_all(
    dbs: &Databases,
    district: &DistrictConfig,
    client: &OneRosterClient,
    session: &mut PgConnection,
    run: &mut Run,
    pull: &mut Pull,
    pipeline: &mut Pipeline,
) -> Result<(), SyncError> {
    macro_rules! collection {
        ($endpoint:expr, $entity:expr, $normalize:path, $accept:ident) => {
            let query = pull.query();
            let done = pull_collection(
                client,
                session,
                run,
                pull,
                pipeline,
                $endpoint,
                $entity,
                query,
                $normalize,
                |normalized, pipeline, run| match normalized {
                    Ok((row, warnings)) => {
                        for w in warnings {
                            run.warn(w);
                        }
                        pipeline.$accept(row);
                    }
                    Err(bad) => pipeline.skip(Some($entity), bad),
                },
            )
            .await?;
            if !done || pipeline.needs_full.is_some() {
                return Ok(());
            }
        };
    }
    collection!(Endpoint::Orgs, Entity::Orgs, normalize::org, accept);
    collection!(
        Endpoint::AcademicSessions,
        Entity::AcademicSessions,
        normalize::academic_session,
        accept
    );
    collection!(
        Endpoint::Courses,
        Entity::Courses,
        normalize::course,
        accept
    );
    collection!(Endpoint::Classes, Entity::Classes, normalize::class, accept);
    if district.demographics {
        let selected = PullQuery {
            fields: Some(oneroster::DEMOGRAPHICS_FIELDS.to_vec()),
            ..pull.query()
        };
        let done = match pull_demographics(client, session, run, pull, pipeline, selected).await {
            // Every page carries the same `fields`, so a server that refuses the selection
            // refuses the first page, before anything was kept. Without the selection the
            // server sends whole records; the wire type still keeps only gender and ethnicity.
            // (A delta pull whose filter is refused falls back to a full pull instead.)
            Err(SyncError::Fetch(FetchError::Client { status: 400, .. }))
                if pull.filter.is_none() =>
            {
                warn!(
                    "the server refused the demographics field selection (HTTP 400): \
                     pulling demographics without it (only gender and ethnicity are kept)"
                );
                let query = pull.query();
                pull_demographics(client, session, run, pull, pipeline, query).await?
            }
            other => other?,
        };
        if !done {
            return Ok(());
        }
    }
    collection!(Endpoint::Users, Entity::Users, normalize::user, accept_user);
    pipeline
        .complete_users(session, &dbs.store, &district.id)
        .await?;
    flush(session, run, pipeline, Entity::Users).await?;
    if pipeline.needs_full.is_some() {
        return Ok(());
    }
    collection!(
        Endpoint::Enrollments,
        Entity::Enrollments,
        normalize::enrollment,
        accept
    );
    Ok(())
}

async fn pull_demographics(
    client: &OneRosterClient,
    session: &mut PgConnection,
    run: &mut Run,
    pull: &mut Pull,
    pipeline: &mut Pipeline,
    query: PullQuery,
) -> Result<bool, SyncError> {
    pull_collection(
        client,
        session,
        run,
        pull,
        pipeline,
        Endpoint::Demographics,
        Entity::Users,
        query,
        |w: oneroster::wire::Demographics| (w.sourced_id.clone(), normalize::demographics(w)),
        |(id, normalized), pipeline, run| {
            match normalized {
                Ok((record, warnings)) => {
                    for w in warnings {
                        run.warn(w);
                    }
                    match (record, id) {
                        (Some(d), _) => {
                            let demo = Demo::of(&d);
                            pipeline.add_demographics(d.user_sourced_id, demo);
                        }
                        // Deleted: the user's demographics are stored NULL.
                        (None, Some(id)) => pipeline.add_demographics(id, Demo::default()),
                        (None, None) => {}
                    }
                }
                // A bad demographics record only costs that user's demographics.
                Err(skipped) => run.warn(Warning {
                    entity: "demographics",
                    sourced_id: skipped.sourced_id,
                    message: skipped.reason,
                }),
            }
        },
    )
    .await
}

/// Copies what the pipeline buffered into the change-set tables.
async fn flush(
    session: &mut PgConnection,
    run: &mut Run,
    pipeline: &mut Pipeline,
    entity: Entity,
) -> Result<(), SyncError> {
    let phase = Instant::now();
    mirror::copy_lines(session, entity, pipeline.take_lines()).await?;
    let skipped = pipeline.take_skipped();
    mirror::copy_skipped(session, &skipped).await?;
    run.timed("stage", phase);
    for bad in skipped {
        run.skip(entity, bad);
    }
    Ok(())
}

/// Streams one collection's pages through `normalize` (on the blocking pool, a page at a time,
/// while the previous page goes on) and `each` (hand to the pipeline) into the change-set
/// tables. Returns false when the revision moved (the caller starts over).
#[allow(clippy::too_many_arguments)]
async fn pull_collection<W, N>(
    client: &OneRosterClient,
    session: &mut PgConnection,
    run: &mut Run,
    pull: &mut Pull,
    pipeline: &mut Pipeline,
    endpoint: Endpoint,
    entity: Entity,
    query: PullQuery,
    normalize: fn(W) -> N,
    mut each: impl FnMut(N, &mut Pipeline, &mut Run),
) -> Result<bool, SyncError>
where
    W: WireRecord,
    N: Lookups + Send + 'static,
{
    // Demographics records are no roster records of their own: an unreadable one is not a
    // skipped user.
    let roster_entity = (endpoint != Endpoint::Demographics).then_some(entity);
    // Fetching and staging run side by side: the producer keeps the client's requests going
    // while the consumer normalizes and copies earlier pages. The channel (plus the client's
    // own `concurrency` requests in flight) bounds the pages held in memory.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Page<N>>(client.concurrency());
    let producer = async move {
        let mut pages = std::pin::pin!(client.pages::<W>(endpoint, query));
        while let Some(page) = pages.try_next().await? {
            let Page {
                offset,
                total,
                revision,
                records,
                unreadable,
            } = page;
            let records = tokio::task::spawn_blocking(move || {
                records.into_iter().map(normalize).collect::<Vec<N>>()
            })
            .await
            .map_err(|e| SyncError::Internal(format!("normalizing a page failed: {e}")))?;
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
        Ok::<(), SyncError>(())
    };
    let consumer = async move {
        while let Some(page) = rx.recv().await {
            if !pull.observe(&page.revision) {
                return Ok(false);
            }
            if roster_entity.is_some()
                && let Some(c) = run.counts.get_mut(&entity)
            {
                c.fetched += (page.records.len() + page.unreadable.len()) as i64;
            }
            if pipeline.index.is_delta() {
                let mut lookups = Vec::new();
                for record in &page.records {
                    record.lookups(&mut lookups);
                }
                if let Some(entity) = roster_entity {
                    lookups.extend(
                        page.unreadable
                            .iter()
                            .map(|s| (entity, s.sourced_id.clone())),
                    );
                }
                pipeline.prepare(session, lookups).await?;
            }
            let phase = Instant::now();
            for bad in page.unreadable {
                pipeline.skip(roster_entity, bad);
            }
            for record in page.records {
                each(record, pipeline, run);
            }
            run.timed("classify", phase);
            // Few large COPYs: each statement costs a round trip or two whatever its size.
            if pipeline.buffered() >= COPY_BATCH_BYTES {
                flush(session, run, pipeline, entity).await?;
            }
        }
        flush(session, run, pipeline, entity).await?;
        Ok::<bool, SyncError>(true)
    };
    let (fetched, staged) = tokio::join!(producer, consumer);
    // A fetch failure ends the channel early: it must not read as a complete collection.
    fetched?;
    staged
}

/// How many records the server holds per collection (one one-record request each).
async fn upstream_totals(client: &OneRosterClient) -> Result<BTreeMap<Entity, i64>, FetchError> {
    use oneroster::wire;
    let (orgs, sessions, courses, classes, users, enrollments) = tokio::try_join!(
        client.total::<wire::Org>(Endpoint::Orgs),
        client.total::<wire::AcademicSession>(Endpoint::AcademicSessions),
        client.total::<wire::Course>(Endpoint::Courses),
        client.total::<wire::Class>(Endpoint::Classes),
        client.total::<wire::User>(Endpoint::Users),
        client.total::<wire::Enrollment>(Endpoint::Enrollments),
    )?;
    Ok(BTreeMap::from(
        [
            (Entity::Orgs, orgs),
            (Entity::AcademicSessions, sessions),
            (Entity::Courses, courses),
            (Entity::Classes, classes),
            (Entity::Users, users),
            (Entity::Enrollments, enrollments),
        ]
        .map(|(e, n)| (e, n as i64)),
    ))
}

/// Why a delta cannot be trusted for deletions, if it cannot: a collection holds fewer records
/// than the last full pull found plus what deltas (this one included) created since, so some
/// were purged without ever being `tobedeleted`.
fn purged(
    totals: &BTreeMap<Entity, i64>,
    upstream: Option<&BTreeMap<String, i64>>,
    tally: &crate::diff::Tally,
) -> Option<String> {
    let upstream = upstream?;
    totals.iter().find_map(|(entity, &total)| {
        let known = upstream.get(entity.as_str()).copied().unwrap_or(0)
            + tally.counts.get(entity).map_or(0, |c| c.created);
        (total < known).then(|| {
            format!(
                "the server holds {total} {entity}, fewer than the {known} known since the last full pull: records were purged"
            )
        })
    })
}

/// What the run needs to know of its district before it starts.
#[derive(Default, sqlx::FromRow)]
struct DistrictState {
    pending_run_id: Option<Uuid>,
    last_full_pull_at: Option<DateTime<Utc>>,
    delta_watermark: Option<DateTime<Utc>>,
    /// The row-hash definition the mirror was written with.
    hash_version: Option<i32>,
    /// Records per collection upstream at the last full pull, plus creations since.
    upstream_counts: Option<sqlx::types::Json<BTreeMap<String, i64>>>,
    /// A change set is held: runs pull everything until it is applied or superseded, so the
    /// approved set can come back exactly as it was held.
    holding: bool,
}

async fn district_state(dbs: &Databases, district: &str) -> Result<DistrictState, SyncError> {
    let state: Option<DistrictState> = sqlx::query_as(
        "SELECT pending_run_id, last_full_pull_at, delta_watermark, hash_version, upstream_counts,
                EXISTS (SELECT 1 FROM sync.held_change_sets h
                        WHERE h.district_id = d.district_id AND h.released_at IS NULL) AS holding
         FROM sync.districts d WHERE district_id = $1",
    )
    .bind(district)
    .fetch_optional(&dbs.state)
    .await
    .map_err(db("reading the district state"))?;
    Ok(state.unwrap_or_default())
}

/// When a delta pull may be used, the time it asks for changes after: the watermark minus
/// the district's `delta_overlap`. Otherwise (None) the run pulls everything, and says why.
fn delta_since(
    options: RunOptions,
    district: &DistrictConfig,
    state: &DistrictState,
    mode: DiffMode,
) -> Option<DateTime<Utc>> {
    if !options.allow_delta {
        return None;
    }
    let reason = if mode == DiffMode::Reconcile {
        "the store may be ahead of the mirror"
    } else if state.holding {
        "a change set is held for approval"
    } else if state.last_full_pull_at.is_none()
        || state.delta_watermark.is_none()
        || state.upstream_counts.is_none()
    {
        "no complete pull yet"
    } else if state.hash_version != Some(HASH_VERSION) {
        "the mirror's row hashes are of another version"
    } else if state
        .last_full_pull_at
        .is_some_and(|t| (Utc::now() - t).to_std().unwrap_or_default() >= district.full_interval)
    {
        "full_interval has passed since the last full pull"
    } else {
        let overlap = chrono::Duration::from_std(district.delta_overlap).unwrap_or_default();
        return state.delta_watermark.map(|w| w - overlap);
    };
    info!(reason, "a full pull is due");
    None
}

/// Records a successful run: success, revision, and for the next delta pull the watermark (the
/// newest `dateLastModified` applied, never later than this run's start, so a clock ahead of
/// ours cannot make deltas skip changes).
async fn mark_success(
    dbs: &Databases,
    district: &DistrictConfig,
    run: &Run,
) -> Result<(), SyncError> {
    let watermark = run.watermark.map(|t| t.min(run.started_at));
    sqlx::query(
        "UPDATE sync.districts SET last_success_at = now(),
             last_full_pull_at = CASE WHEN $3 THEN $5 ELSE last_full_pull_at END,
             delta_watermark = CASE WHEN $3 THEN coalesce($4, delta_watermark)
                                    ELSE greatest(delta_watermark, $4) END,
             upstream_counts = coalesce($6, upstream_counts),
             last_revision = $2, consecutive_failures = 0
         WHERE district_id = $1",
    )
    .bind(&district.id)
    .bind(run.revision.as_deref())
    .bind(run.full_pull)
    .bind(watermark)
    .bind(run.started_at)
    .bind(run.upstream_counts.as_ref().map(sqlx::types::Json))
    .execute(&dbs.state)
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
        full_pull: run.full_pull,
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
        "UPDATE sync.runs SET finished_at = $2, outcome = $3, revision = $4, counts = $5, skipped = $6, error = $7,
             full_pull = $8
         WHERE run_id = $1",
    )
    .bind(report.run_id)
    .bind(report.finished_at)
    .bind(report.outcome.as_str())
    .bind(&report.revision)
    .bind(counts)
    .bind(skipped)
    .bind(&report.error)
    .bind(report.full_pull)
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
        pull = if r.full_pull { "full" } else { "delta" },
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
