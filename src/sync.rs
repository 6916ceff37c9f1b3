//! One sync cycle for one district, as values moving forward:
//!
//! pull (every collection through the [`Snapshot`] into the run's change set) → the safety
//! [`Verdict`] → apply (store and mirror, one transaction) → record (history, summary line).
//!
//! [`run_once`] serves the daemon loop, `sync`, `sync --dry-run` and the tests alike. Nothing is
//! written to the roster store or the mirror unless the whole pull completed and passed its
//! checks; every run, whatever its outcome, leaves a row in the run history and one summary log line.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::{Connection, Executor, PgConnection};
use tracing::{Instrument, error, info, info_span, warn};
use uuid::Uuid;

use crate::changeset::{self, ChangeSetError};
use crate::config::{DemographicsMode, DistrictConfig};
use crate::db::{Databases, DbError};
use crate::diff::{ChangeCounts, HASH_VERSION, Index, Samples};
use crate::domain::{Entity, Finding, FindingSummary, Severity};
use crate::history::{self, DistrictState, HistoryError, Success};
use crate::journal::{self, JournalError};
use crate::mirror::{self, MirrorError};
use crate::oneroster::{FetchError, OneRosterClient};
use crate::pull::{self, Flow, Pull, PullError, Stage};
use crate::registry::{Collection, Kind, each_collection};
use crate::safety::{self, Changes, Verdict};
use crate::snapshot::Snapshot;
use crate::store::{self, StoreError};
use crate::telemetry::error_chain;

pub use crate::history::{EntityCounts, FetchStats, Outcome, PullKind, RunReport};
pub use crate::safety::Hold;

/// How many times a pull starts over when the upstream revision moves under it.
const MAX_PULL_ATTEMPTS: usize = 4;
/// Findings logged one per line per run; the rest are counted (all are in the history).
const FINDING_LOG_LINES: usize = 100;
/// Sample ids per entity and operation in change reports and held change sets.
const SAMPLE_IDS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    pub dry_run: bool,
    /// A delta pull may be used (when one is possible and a full pull is not due); otherwise
    /// the run pulls everything.
    pub allow_delta: bool,
    /// Pull everything whatever the upstream revision says (no unchanged shortcut, no delta).
    pub full: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    ChangeSet(#[from] ChangeSetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    Journal(#[from] JournalError),
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
    #[error("a full pull stopped early ({reason}); nothing was written")]
    FullPullStopped { reason: String },
    #[error("counting the mirror's active rows failed: {0}")]
    Counting(String),
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
        let mut run = Run::new(dbs, district, run_id, options, dry_run);
        info!(dry_run, "run started");
        let result =
            match history::record_start(&dbs.state, &district.id, run_id, run.started_at, dry_run)
                .await
            {
                // Without a history row the run cannot be accounted for: fail before pulling.
                Err(e) => Err(e.into()),
                Ok(()) => match tokio::time::timeout(district.run_timeout, run.cycle()).await {
                    Ok(result) => result,
                    Err(_) => Err(SyncError::Deadline(district.run_timeout)),
                },
            };
        run.finish(result).await
    }
    .instrument(span)
    .await
}

/// One run: what it is for, and what it accumulates as it goes.
struct Run<'a> {
    dbs: &'a Databases,
    district: &'a DistrictConfig,
    run_id: Uuid,
    options: RunOptions,
    dry_run: bool,
    started_at: DateTime<Utc>,
    clock: Instant,
    counts: BTreeMap<Entity, EntityCounts>,
    findings: FindingSummary,
    /// Findings logged so far (the first [`FINDING_LOG_LINES`]).
    logged: usize,
    revision: Option<String>,
    samples: Samples,
    hold: Option<Hold>,
    phases: BTreeMap<&'static str, Duration>,
    fetch: FetchStats,
    pull_kind: PullKind,
    pull_reason: Option<String>,
    /// The newest `dateLastModified` pulled.
    watermark: Option<DateTime<Utc>>,
    /// The district's upstream counts if the run succeeds (see `history`).
    upstream_counts: Option<BTreeMap<String, i64>>,
    /// Journal rows written.
    journaled: u64,
    /// The collection totals the server announced, for the next run's unchanged check.
    totals: Option<BTreeMap<String, i64>>,
    /// The settings the rows are stored under (`DistrictConfig::stored_form`), once the
    /// server's version is known.
    settings: String,
}

/// What a pull delivered.
struct Pulled {
    snapshot: Snapshot,
    tally: pull::Tally,
    /// Records skipped as invalid, by entity (a reconcile leaves their rows alone).
    skipped: Vec<(Entity, String)>,
    /// A first load: the session is in the transaction that already holds the new rows.
    direct: bool,
}

impl<'a> Run<'a> {
    fn new(
        dbs: &'a Databases,
        district: &'a DistrictConfig,
        run_id: Uuid,
        options: RunOptions,
        dry_run: bool,
    ) -> Run<'a> {
        Run {
            dbs,
            district,
            run_id,
            options,
            dry_run,
            started_at: Utc::now(),
            clock: Instant::now(),
            counts: Entity::ALL
                .into_iter()
                .map(|e| (e, EntityCounts::default()))
                .collect(),
            findings: FindingSummary::default(),
            logged: 0,
            revision: None,
            samples: Samples::new(),
            hold: None,
            phases: BTreeMap::new(),
            fetch: FetchStats::default(),
            pull_kind: PullKind::Full,
            pull_reason: None,
            watermark: None,
            upstream_counts: None,
            journaled: 0,
            totals: None,
            settings: String::new(),
        }
    }

    fn timed(&mut self, phase: &'static str, since: Instant) {
        *self.phases.entry(phase).or_default() += since.elapsed();
    }

    async fn cycle(&mut self) -> Result<Outcome, SyncError> {
        let (client, version) = OneRosterClient::connect(self.district).await?;
        self.settings = self.district.stored_form(version);
        let mut session = self.dbs.state_session().await?;
        let result = self.cycle_in_session(&client, &mut session).await;
        let stats = client.stats();
        self.fetch = FetchStats {
            requests: stats.requests,
            retries: stats.retries,
            request_ms: stats.request_time.as_millis() as u64,
        };
        // Closing the session drops every temporary table; a failed close changes nothing.
        let _ = session.close().await;
        result
    }

    async fn cycle_in_session(
        &mut self,
        client: &OneRosterClient,
        session: &mut PgConnection,
    ) -> Result<Outcome, SyncError> {
        // Change sets are session-local tables: give them memory before the first one exists.
        session
            .execute("SET temp_buffers = '256MB'")
            .await
            .map_err(db("configuring the session"))?;
        let state = history::district_state(&self.dbs.state, &self.district.id).await?;
        let reconcile = self.dbs.store_is_separate && state.pending_run_id.is_some();
        if reconcile {
            warn!(pending_run_id = ?state.pending_run_id, "a previous run did not finish applying to the store: reconciling against it");
        }

        let phase = Instant::now();
        let pulled = self.pull(client, session, &state, reconcile).await?;
        self.timed("pull", phase);
        let Some(mut pulled) = pulled else {
            // Unchanged upstream: nothing pulled, nothing written but the run's record.
            self.mark_success().await?;
            return Ok(Outcome::NothingToDo);
        };
        let full = self.pull_kind == PullKind::Full;

        // Fail closed: an empty collection is never read as "everyone left". A delta pull is
        // empty whenever nothing changed, and deletes nothing by absence.
        if full {
            for entity in Entity::ALL {
                let active = pulled.snapshot.index.mirror_active(entity);
                if self.counts[&entity].fetched == 0 && active > 0 {
                    return Err(SyncError::EmptyCollection { entity, active });
                }
            }
        }

        let phase = Instant::now();
        self.deletions(session, &mut pulled.snapshot).await?;
        changeset::copy_skipped(session, &pulled.skipped).await?;
        changeset::seal(session).await?;
        self.timed("diff", phase);

        let direct = pulled.direct;
        self.journaled += pulled.tally.journaled;
        let snapshot = pulled.snapshot;
        for (entity, c) in &snapshot.tally.counts {
            if let Some(counts) = self.counts.get_mut(entity) {
                counts.created = c.created;
                counts.updated = c.updated;
                counts.reactivated = c.reactivated;
                counts.deleted = c.deleted;
            }
        }
        self.samples = snapshot.tally.samples();
        self.watermark = snapshot.newest;

        // The safety gate: over a limit, nothing is applied unless this exact change set was
        // approved.
        let changes = self.changes(session, &snapshot).await?;
        let (dbs, district) = (self.dbs, self.district);
        let fingerprinted = &mut *session;
        let (verdict, hold) = safety::gate(
            &changes,
            &district.limits,
            &district.demographics_limits,
            self.dry_run,
            move || async move {
                let fingerprint = changeset::fingerprint(fingerprinted).await?;
                let approved = history::is_approved(&dbs.state, &district.id, &fingerprint).await?;
                Ok::<_, SyncError>((fingerprint, approved))
            },
        )
        .await?;
        let over_limits = hold.is_some();
        self.hold = hold;
        match verdict {
            Verdict::DryRun => {
                self.journal_unapplied(session, &snapshot.touched, journal::Mode::DryRun)
                    .await?;
                return Ok(Outcome::DryRun);
            }
            Verdict::Hold => {
                if direct {
                    // Not for a first load (nothing can be held), but should it come to that:
                    // its rows go, and the held set is journaled as it stands.
                    session
                        .execute("ROLLBACK")
                        .await
                        .map_err(db("rolling back the first load"))?;
                    self.journaled = 0;
                }
                self.journal_unapplied(session, &snapshot.touched, journal::Mode::Held)
                    .await?;
                self.hold_change_set().await?;
                return Ok(Outcome::Held);
            }
            Verdict::ApplyApproved => {
                if let Some(hold) = &self.hold {
                    info!(fingerprint = %hold.fingerprint, "applying an approved change set");
                }
            }
            Verdict::Apply => {}
        }
        if !over_limits && state.holding {
            history::supersede(&self.dbs.state, &self.district.id).await?;
        }
        if snapshot.touched.is_empty() {
            if direct {
                session
                    .execute("COMMIT")
                    .await
                    .map_err(db("ending the first load's transaction"))?;
            }
            self.mark_success().await?;
            return Ok(Outcome::NothingToDo);
        }

        let phase = Instant::now();
        if self.dbs.store_is_separate {
            self.journaled += self
                .apply_separate(session, &snapshot.touched, reconcile)
                .await?;
        } else if direct {
            // The transaction the first load's rows went into.
            self.apply_shared(session, &snapshot.touched).await?;
            if snapshot.touched.contains(&Entity::Users) {
                store::derive_all_user_tables(session, &self.district.id).await?;
            }
            session
                .execute("COMMIT")
                .await
                .map_err(db("committing the apply transaction"))?;
        } else {
            let mut tx = session
                .begin()
                .await
                .map_err(db("starting the apply transaction"))?;
            self.apply_shared(&mut tx, &snapshot.touched).await?;
            tx.commit()
                .await
                .map_err(db("committing the apply transaction"))?;
        }
        self.timed("apply", phase);
        self.mark_success().await?;
        if let Some(hold) = &self.hold {
            history::release(&self.dbs.state, &self.district.id, &hold.fingerprint).await?;
        }
        Ok(Outcome::Applied)
    }

    /// Pulls the district: a delta when one may be used and can be trusted, else (or when the
    /// delta cannot be completed as one) everything.
    async fn pull(
        &mut self,
        client: &OneRosterClient,
        session: &mut PgConnection,
        state: &DistrictState,
        reconcile: bool,
    ) -> Result<Option<Pulled>, SyncError> {
        let settings = self.settings.as_str();
        let mut since = match delta_since(self.options, self.district, state, reconcile, settings) {
            Ok(since) => Some(since),
            Err(reason) => {
                if self.options.allow_delta {
                    info!(reason = %reason, "a full pull is due");
                    self.pull_reason = Some(reason.to_owned());
                }
                None
            }
        };
        let shortcut = unchanged_possible(self.options, self.district, state, reconcile, settings);
        // What the server holds per collection and its revision (one one-record request each):
        // whether anything changed at all, and whether records were purged since the last full
        // pull (a delta cannot see them go).
        let probe = if since.is_some() || shortcut.is_ok() {
            match pull::probe(client, self.district.demographics).await {
                Ok(probe) => Some(probe),
                // A server that refuses a one-record page (or has no such endpoint) still
                // serves a whole pull; anything else would fail the pull the same way.
                Err(e @ (FetchError::Client { .. } | FetchError::NotFound { .. })) => {
                    warn!(error = %error_chain(&e), "could not read the collection totals: pulling everything");
                    if since.is_some() {
                        self.pull_reason = Some("the collection totals could not be read".into());
                    }
                    since = None;
                    None
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        if let (Ok(()), Some(probe)) = (shortcut, &probe) {
            let totals = named(&probe.totals);
            let same_totals = state.last_totals.as_deref() == Some(&totals);
            if probe.revision.is_some() && probe.revision == state.last_revision && same_totals {
                info!(revision = %probe.revision.as_deref().unwrap_or(""), "upstream unchanged since the last applied pull (same revision and totals): nothing to pull");
                self.pull_kind = PullKind::Unchanged;
                self.revision = probe.revision.clone();
                self.totals = Some(totals);
                return Ok(None);
            }
        }
        let totals = probe.as_ref().map(pull::Probe::entity_totals);
        // A delta pull does not load the mirror, so its active counts (for the safety limits)
        // are counted beside the pull.
        let counting = since.map(|_| {
            tokio::spawn(mirror::active_counts(
                self.dbs.state.clone(),
                self.district.id.clone(),
            ))
        });
        let trust_hashes = state.hash_version == Some(HASH_VERSION);
        let mut pulled = loop {
            match since {
                Some(t) => {
                    info!(since = %t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "delta pull: records modified since the watermark")
                }
                None => info!("full pull"),
            }
            let pulled = self
                .pull_snapshot(client, session, since, reconcile, trust_hashes)
                .await?;
            let needs_full = match (&pulled.snapshot.needs_full, &totals) {
                (Some(reason), _) => Some(reason.clone()),
                (None, Some(totals)) if since.is_some() => purged(
                    totals,
                    state.upstream_counts.as_deref(),
                    &pulled.snapshot.tally.counts,
                ),
                _ => None,
            };
            match (needs_full, since) {
                (Some(reason), Some(_)) => {
                    warn!(reason = %reason, "delta pull abandoned ({reason}): pulling everything");
                    self.pull_reason = Some(reason);
                    since = None;
                }
                // Only a delta stops early; a full pull that did would read as deletions.
                (Some(reason), None) => return Err(SyncError::FullPullStopped { reason }),
                (None, _) => break pulled,
            }
        };
        self.pull_kind = if since.is_some() {
            PullKind::Delta
        } else {
            PullKind::Full
        };
        if self.pull_kind == PullKind::Full {
            self.upstream_counts = Some(
                self.counts
                    .iter()
                    .map(|(e, c)| (e.as_str().to_owned(), c.fetched))
                    .collect(),
            );
        } else {
            let mut counts = state
                .upstream_counts
                .as_deref()
                .cloned()
                .unwrap_or_default();
            for (e, c) in &pulled.snapshot.tally.counts {
                *counts.entry(e.as_str().to_owned()).or_default() += c.created;
            }
            self.upstream_counts = Some(counts);
            if let Some(counting) = counting {
                let counts = counting
                    .await
                    .map_err(|e| SyncError::Counting(e.to_string()))??;
                pulled.snapshot.index.set_mirror_active(&counts);
            }
        }
        self.findings = std::mem::take(&mut pulled.tally.findings);
        self.revision = pulled.tally.revision.take();
        self.totals = Some(match (self.pull_kind, &probe) {
            (PullKind::Full, _) | (_, None) => named(&pulled.tally.totals),
            (_, Some(probe)) => named(&probe.totals),
        });
        for (phase, d) in std::mem::take(&mut pulled.tally.phases) {
            *self.phases.entry(phase).or_default() += d;
        }
        Ok(Some(pulled))
    }

    /// Pulls every collection through the snapshot into the change-set tables: everything,
    /// or (`since`) what changed after that time. Starts over (bounded) when the upstream
    /// revision (`x-perm-rev`) moves during the pull, so a snapshot never mixes two revisions.
    async fn pull_snapshot(
        &mut self,
        client: &OneRosterClient,
        session: &mut PgConnection,
        since: Option<DateTime<Utc>>,
        reconcile: bool,
        trust_hashes: bool,
    ) -> Result<Pulled, SyncError> {
        // A first load (the mirror holds nothing, so nothing can be held): its rows go straight
        // into the store, the mirror and the journal, in one transaction opened for the pull.
        let direct = since.is_none()
            && !reconcile
            && !self.dry_run
            && !self.dbs.store_is_separate
            && mirror::is_empty(session, &self.district.id).await?;
        for attempt in 1..=MAX_PULL_ATTEMPTS {
            if direct {
                if attempt > 1 {
                    session
                        .execute("ROLLBACK")
                        .await
                        .map_err(db("starting the pull over"))?;
                }
                session
                    .execute("BEGIN")
                    .await
                    .map_err(db("starting the first load's transaction"))?;
            }
            changeset::create(session).await?;
            // Findings of an abandoned attempt (revision moved, delta given up) go.
            history::clear_findings(&self.dbs.state, self.run_id).await?;
            self.logged = 0;
            // A complete pull loads the mirror one entity at a time as its collection comes in
            // (see `pull`); a delta pull looks up what its pages need.
            let index = Index::new(since.is_some(), reconcile);
            // The filter has whole seconds: the bound is what the server is sent.
            let bound = since.map(|t| t.trunc_subsecs(0));
            let filter = bound.map(|t| {
                format!(
                    "dateLastModified>'{}'",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            });
            let snapshot =
                Snapshot::new(index, SAMPLE_IDS, bound).scoped(self.district.scope.clone());
            let mut skipped = Vec::new();
            let mut observer = ();
            let stage = Stage::ChangeSet {
                session: &mut *session,
                store: &self.dbs.store,
                district: &self.district.id,
                trust_hashes,
                direct: direct.then(|| pull::Direct {
                    run_id: self.run_id,
                    deleted_at: Utc::now().format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
                }),
            };
            let mut pull = Pull::new(client, snapshot, stage, &mut observer, filter);
            let flow = self.pull_all(&mut pull, &mut skipped).await;
            let flow = match flow {
                // A server that does not take the delta filter refuses the first page.
                Err(SyncError::Pull(PullError::Fetch(FetchError::Client {
                    status: 400, ..
                }))) if since.is_some() => {
                    pull.snapshot.needs_full =
                        Some("the server refused the dateLastModified filter (HTTP 400)".into());
                    Flow::NeedsFull
                }
                // A total counted before the filter: the pages come back short of it.
                Err(SyncError::Pull(PullError::Fetch(FetchError::IncompletePage { .. })))
                    if since.is_some() =>
                {
                    pull.snapshot.needs_full = Some(
                        "the server's X-Total-Count ignores the dateLastModified filter (pages came back short of it)".into(),
                    );
                    Flow::NeedsFull
                }
                other => other?,
            };
            for &collection in Collection::ALL {
                if let Some(c) = collection.entity().and_then(|e| self.counts.get_mut(&e)) {
                    c.fetched = pull.tally.fetched.get(&collection).copied().unwrap_or(0);
                }
            }
            for (entity, c) in self.counts.iter_mut() {
                c.skipped = pull.tally.skipped.get(entity).copied().unwrap_or(0);
            }
            if flow != Flow::RevisionMoved {
                let Pull {
                    snapshot, tally, ..
                } = pull;
                if let Some(scope) = &snapshot.scope {
                    let left = |e: Entity| scope.left_out.get(&e).copied().unwrap_or(0);
                    info!(
                        schools = %scope.schools().join(","),
                        classes_left_out = left(Entity::Classes),
                        users_left_out = left(Entity::Users),
                        enrollments_left_out = left(Entity::Enrollments),
                        "scoped to {} schools: records outside them are not stored",
                        scope.schools().len()
                    );
                }
                return Ok(Pulled {
                    snapshot,
                    tally,
                    skipped,
                    direct,
                });
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

    /// Every collection of the registry, in its order.
    async fn pull_all(
        &mut self,
        pull: &mut Pull<'_, ()>,
        skipped: &mut Vec<(Entity, String)>,
    ) -> Result<Flow, SyncError> {
        let demographics = self.district.demographics;
        each_collection!(K => {
            let pulled = K::COLLECTION != Collection::Demographics || demographics.pulled();
            if pulled {
                let flow = match pull.collection::<K>().await {
                    Err(PullError::Fetch(e))
                        if K::COLLECTION.is_optional()
                            && demographics == DemographicsMode::Optional
                            && matches!(e, FetchError::Forbidden { .. } | FetchError::NotFound { .. }) =>
                    {
                        warn!(
                            collection = %K::COLLECTION,
                            error = %error_chain(&e),
                            "demographics are unavailable (demographics = \"optional\"): users are pulled without them; stored demographics going away are judged by max_demographics_clear_percent"
                        );
                        Flow::Complete
                    }
                    other => other?,
                };
                self.record(pull.take_findings(), skipped).await?;
                if flow != Flow::Complete {
                    return Ok(flow);
                }
            }
        });
        Ok(Flow::Complete)
    }

    /// Logs the first findings of the run and keeps all of them in the history.
    async fn record(
        &mut self,
        findings: Vec<Finding>,
        skipped: &mut Vec<(Entity, String)>,
    ) -> Result<(), SyncError> {
        for f in &findings {
            if self.logged < FINDING_LOG_LINES {
                self.logged += 1;
                match f.severity {
                    Severity::Error => {
                        warn!(code = %f.code, entity = f.entity, sourced_id = %f.sourced_id, detail = %f.message, "record skipped")
                    }
                    Severity::Warning => {
                        warn!(code = %f.code, entity = f.entity, sourced_id = %f.sourced_id, detail = %f.message, "record kept with a warning")
                    }
                }
            }
            if f.severity == Severity::Error
                && let Some(entity) = Entity::from_name(f.entity)
            {
                skipped.push((entity, f.sourced_id.clone()));
            }
        }
        history::record_findings(&self.dbs.state, self.run_id, &self.district.id, &findings)
            .await?;
        Ok(())
    }

    /// After the pull: deletions by absence (complete pulls only) and the enrollment cascade
    /// for stored enrollments the pull did not settle, into `del_*`.
    async fn deletions(
        &mut self,
        session: &mut PgConnection,
        snapshot: &mut Snapshot,
    ) -> Result<(), SyncError> {
        let district = &self.district.id;
        for entity in snapshot.with_absences() {
            let mut gone = Vec::new();
            mirror::active_ids(session, district, entity, |id| {
                if snapshot.is_absent(entity, &id) {
                    gone.push(id);
                }
            })
            .await?;
            let ids = snapshot.delete(entity, gone);
            changeset::copy_deleted(session, entity, &ids).await?;
        }
        let candidates = if snapshot.is_delta() {
            let (users, classes) = snapshot.deactivated();
            store::enrollments_of(&self.dbs.store, district, &users, &classes).await?
        } else {
            let skipped = snapshot.skipped_enrollments().to_vec();
            mirror::active_enrollments(session, district, &skipped).await?
        };
        if snapshot.is_delta() && !candidates.is_empty() {
            // Only the entries' status matters to the cascade, not their hashes.
            let trust = true;
            let ids = |f: fn(&(String, String, String)) -> &String| -> Vec<String> {
                candidates.iter().map(|c| f(c).clone()).collect()
            };
            for (entity, ids) in [
                (Entity::Enrollments, ids(|c| &c.0)),
                (Entity::Users, ids(|c| &c.1)),
                (Entity::Classes, ids(|c| &c.2)),
            ] {
                mirror::ensure(session, &mut snapshot.index, district, entity, &ids, trust).await?;
            }
        }
        let cascaded = snapshot.cascaded(candidates);
        let ids = snapshot.delete(Entity::Enrollments, cascaded);
        changeset::copy_deleted(session, Entity::Enrollments, &ids).await?;
        Ok(())
    }

    /// The change set as the gate judges it: counts, active rows, demographics cleared.
    async fn changes(
        &self,
        session: &mut PgConnection,
        snapshot: &Snapshot,
    ) -> Result<Changes, SyncError> {
        let counts: BTreeMap<Entity, ChangeCounts> = snapshot.tally.counts.clone();
        let active = Entity::ALL
            .into_iter()
            .map(|e| (e, snapshot.index.mirror_active(e)))
            .collect();
        let mut changes = Changes {
            counts,
            active,
            ..Changes::default()
        };
        if snapshot.touched.contains(&Entity::Users) {
            let losing = changeset::users_losing_demographics(session).await?;
            changes.demographics_cleared =
                store::users_with_demographics(&self.dbs.store, &self.district.id, &losing).await?;
            if changes.demographics_cleared > 0 {
                changes.users_with_demographics =
                    store::count_with_demographics(&self.dbs.store, &self.district.id).await?;
            }
        }
        Ok(changes)
    }

    /// Keeps the change set for approval and says so in one error-level line: the district,
    /// the counts, the limits and how to approve.
    async fn hold_change_set(&mut self) -> Result<(), SyncError> {
        let report = self.report(Outcome::Held, None);
        history::hold(&self.dbs.state, &self.district.id, self.run_id, &report).await?;
        let Some(hold) = &self.hold else {
            return Ok(());
        };
        let reasons = hold
            .breaches
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let c = |e: Entity| self.counts.get(&e).copied().unwrap_or_default();
        let demographics = hold
            .breaches
            .iter()
            .find(|b| b.operation == "clear_demographics")
            .map_or(0, |b| b.count);
        error!(
            district = %self.district.id,
            fingerprint = %hold.fingerprint,
            reasons = %reasons,
            users_deleted = c(Entity::Users).deleted,
            users_updated = c(Entity::Users).updated + c(Entity::Users).reactivated,
            users_losing_demographics = demographics,
            classes_deleted = c(Entity::Classes).deleted,
            classes_updated = c(Entity::Classes).updated + c(Entity::Classes).reactivated,
            enrollments_deleted = c(Entity::Enrollments).deleted,
            enrollments_updated = c(Entity::Enrollments).updated + c(Entity::Enrollments).reactivated,
            approve_with = %format!("oneroster-sync approve --district {}", self.district.id),
            "change set held by safety limits, nothing applied: {reasons}; review it (sync --dry-run) and run `oneroster-sync approve --district {}` to apply it",
            self.district.id
        );
        Ok(())
    }

    /// Records the success: revision, and for the next delta pull the watermark (never later
    /// than this run's start, so a clock ahead of ours cannot make deltas skip changes).
    async fn mark_success(&self) -> Result<(), SyncError> {
        history::mark_success(
            &self.dbs.state,
            &self.district.id,
            Success {
                revision: self.revision.as_deref(),
                full_pull: self.pull_kind == PullKind::Full,
                watermark: self.watermark.map(|t| t.min(self.started_at)),
                started_at: self.started_at,
                upstream_counts: self.upstream_counts.as_ref(),
                totals: self.totals.as_ref(),
                settings: &self.settings,
            },
        )
        .await?;
        Ok(())
    }

    /// Applies to a roster store in another database; see the store module for the protocol
    /// and why it converges after a crash at any step.
    async fn apply_separate(
        &self,
        session: &mut PgConnection,
        touched: &std::collections::BTreeSet<Entity>,
        reconcile: bool,
    ) -> Result<u64, SyncError> {
        let district = &self.district.id;
        history::mark_pending(session, district, self.run_id).await?;
        let mut store_session = self.dbs.store_session().await?;
        let result: Result<BTreeMap<Entity, Vec<String>>, SyncError> = async {
            let mut tx = store_session
                .begin()
                .await
                .map_err(db("starting the store transaction"))?;
            changeset::transfer(session, &mut tx).await?;
            // The old values are the store's: the journal's rows are computed there.
            store::journal(&mut tx, district, touched).await?;
            changeset::journal_back(&mut tx, session).await?;
            store::apply(&mut tx, district, touched).await?;
            let gone = if reconcile {
                store::reconcile_absent(&mut tx, district).await?
            } else {
                BTreeMap::new()
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
        let journaled = journal::record(
            &mut tx,
            district,
            self.run_id,
            journal::Mode::Applied,
            touched.iter().copied(),
        )
        .await?;
        let mut touched = touched.clone();
        for (entity, ids) in gone {
            if ids.is_empty() {
                continue;
            }
            touched.insert(entity);
            changeset::add_deleted(&mut tx, entity, &ids).await?;
        }
        mirror::advance(&mut tx, district, &touched).await?;
        history::set_hash_version(&mut tx, district, HASH_VERSION).await?;
        history::clear_pending(&mut tx, district).await?;
        tx.commit()
            .await
            .map_err(db("committing the mirror transaction"))?;
        Ok(journaled)
    }

    /// Applies the change set when store and mirror share the database, on the caller's
    /// transaction: the journal (the store's old values first), the store, the mirror.
    async fn apply_shared(
        &mut self,
        conn: &mut PgConnection,
        touched: &std::collections::BTreeSet<Entity>,
    ) -> Result<(), SyncError> {
        let district = &self.district.id;
        let journaling = Instant::now();
        store::journal(conn, district, touched).await?;
        self.journaled += journal::record(
            conn,
            district,
            self.run_id,
            journal::Mode::Applied,
            touched.iter().copied(),
        )
        .await?;
        self.timed("journal", journaling);
        store::apply(conn, district, touched).await?;
        mirror::advance(conn, district, touched).await?;
        history::set_hash_version(conn, district, HASH_VERSION).await?;
        Ok(())
    }

    /// Journals what a change set would change without applying it (a dry run, a held set).
    async fn journal_unapplied(
        &mut self,
        session: &mut PgConnection,
        touched: &std::collections::BTreeSet<Entity>,
        mode: journal::Mode,
    ) -> Result<(), SyncError> {
        let district = &self.district.id;
        if self.dbs.store_is_separate {
            let mut store_session = self.dbs.store_session().await?;
            let computed: Result<(), SyncError> = async {
                let mut tx = store_session
                    .begin()
                    .await
                    .map_err(db("starting the store transaction"))?;
                changeset::transfer(session, &mut tx).await?;
                store::journal(&mut tx, district, touched).await?;
                changeset::journal_back(&mut tx, session).await?;
                // Nothing of it stays in the store.
                tx.rollback()
                    .await
                    .map_err(db("ending the store transaction"))?;
                Ok(())
            }
            .await;
            let _ = store_session.close().await;
            computed?;
        } else {
            store::journal(session, district, touched).await?;
        }
        self.journaled = journal::record(
            session,
            district,
            self.run_id,
            mode,
            touched.iter().copied(),
        )
        .await?;
        Ok(())
    }

    fn report(&self, outcome: Outcome, error: Option<String>) -> RunReport {
        RunReport {
            run_id: self.run_id,
            district: self.district.id.clone(),
            outcome,
            dry_run: self.dry_run,
            pull: self.pull_kind,
            full_pull: self.pull_kind == PullKind::Full,
            pull_reason: self.pull_reason.clone(),
            started_at: self.started_at,
            finished_at: Utc::now(),
            duration_ms: self.clock.elapsed().as_millis() as u64,
            revision: self.revision.clone(),
            counts: self.counts.clone(),
            findings: self.findings.clone(),
            samples: self.samples.clone(),
            hold: self.hold.clone(),
            phases_ms: self
                .phases
                .iter()
                .map(|(k, v)| (*k, v.as_millis() as u64))
                .collect(),
            fetch: self.fetch,
            journaled: self.journaled,
            error,
        }
    }

    async fn finish(self, result: Result<Outcome, SyncError>) -> RunReport {
        let (outcome, error) = match result {
            Ok(outcome) => (outcome, None),
            Err(e) => {
                let chain = error_chain(&e);
                error!(error = %chain, "run failed; nothing was written to the roster store");
                (Outcome::Failed, Some(chain))
            }
        };
        let report = self.report(outcome, error);
        if let Err(e) = history::record_finish(&self.dbs.state, &report).await {
            error!(error = %error_chain(&e), "could not record the run in the history");
        }
        log_summary(&report);
        report
    }
}

/// Collection totals by collection name, as the district's state keeps them.
fn named(totals: &BTreeMap<Collection, i64>) -> BTreeMap<String, i64> {
    totals
        .iter()
        .map(|(c, n)| (c.name().to_owned(), *n))
        .collect()
}

const SETTINGS_CHANGED: &str = "the district's settings that shape its rows (version, demographics, schools) changed since the last applied pull";

/// Whether an unchanged upstream may end the run after the probe (the revision and totals
/// decide), or why not.
fn unchanged_possible(
    options: RunOptions,
    district: &DistrictConfig,
    state: &DistrictState,
    reconcile: bool,
    settings: &str,
) -> Result<(), &'static str> {
    if options.full {
        return Err("a full pull was asked for");
    }
    if !district.trust_revision {
        return Err("trust_revision = false");
    }
    if state.last_revision.is_none() || state.last_totals.is_none() {
        return Err("no revision of an applied pull");
    }
    if state.applied_settings.as_deref() != Some(settings) {
        return Err(SETTINGS_CHANGED);
    }
    if reconcile || state.holding || state.full_pull_requested {
        return Err("a full pull is due");
    }
    if state.hash_version != Some(HASH_VERSION) {
        return Err("the mirror's row hashes are of another version");
    }
    match state.last_full_pull_at {
        Some(t) if (Utc::now() - t).to_std().unwrap_or_default() < district.full_interval => Ok(()),
        _ => Err("full_interval has passed since the last full pull"),
    }
}

/// When a delta pull may be used, the time it asks for changes after: the watermark minus
/// the district's `delta_overlap`. Otherwise why the run pulls everything.
fn delta_since(
    options: RunOptions,
    district: &DistrictConfig,
    state: &DistrictState,
    reconcile: bool,
    settings: &str,
) -> Result<DateTime<Utc>, &'static str> {
    if !options.allow_delta || options.full {
        return Err("a full pull was asked for");
    }
    if district.scope.is_some() {
        // A delta cannot tell who left the scope (an enrollment that ended, a user moved).
        return Err("the district is scoped to some schools");
    }
    if reconcile {
        return Err("the store may be ahead of the mirror");
    }
    if state.holding {
        return Err("a change set is held for approval");
    }
    if state.full_pull_requested {
        return Err("a drift repair asked for a full pull");
    }
    let (Some(last_full), Some(watermark), Some(_)) = (
        state.last_full_pull_at,
        state.delta_watermark,
        state.upstream_counts.as_ref(),
    ) else {
        return Err("no complete pull yet");
    };
    if state.applied_settings.as_deref() != Some(settings) {
        return Err(SETTINGS_CHANGED);
    }
    if state.hash_version != Some(HASH_VERSION) {
        return Err("the mirror's row hashes are of another version");
    }
    if (Utc::now() - last_full).to_std().unwrap_or_default() >= district.full_interval {
        return Err("full_interval has passed since the last full pull");
    }
    let overlap = chrono::Duration::from_std(district.delta_overlap).unwrap_or_default();
    Ok(watermark - overlap)
}

/// Why a delta cannot be trusted for deletions, if it cannot: a collection holds fewer records
/// than the last full pull found plus what deltas (this one included) created since, so some
/// were purged without ever being `tobedeleted`.
fn purged(
    totals: &BTreeMap<Entity, i64>,
    upstream: Option<&BTreeMap<String, i64>>,
    changes: &BTreeMap<Entity, ChangeCounts>,
) -> Option<String> {
    let upstream = upstream?;
    totals.iter().find_map(|(entity, &total)| {
        let known = upstream.get(entity.as_str()).copied().unwrap_or(0)
            + changes.get(entity).map_or(0, |c| c.created);
        (total < known).then(|| {
            format!(
                "the server holds {total} {entity}, fewer than the {known} known since the last full pull: records were purged"
            )
        })
    })
}

/// The one summary line of a run (CONTRACT §8): outcome, duration, the pull, per entity the
/// fetched / created / updated / deleted / skipped counts (reactivations count as updates
/// here), and the findings per code.
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
    let findings = serde_json::to_string(&r.findings.per_code()).unwrap_or_default();
    info!(
        outcome = r.outcome.as_str(),
        duration_ms = r.duration_ms,
        pull = r.pull.as_str(),
        pull_reason = r.pull_reason.as_deref().unwrap_or(""),
        errors = r.findings.count(Severity::Error),
        warnings = r.findings.count(Severity::Warning),
        findings = %findings,
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
