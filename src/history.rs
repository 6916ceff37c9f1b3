//! The daemon's record of its districts and runs: `sync.districts` (state, schedule, claims and
//! leases), `sync.runs` (one row per run, whatever its outcome), `sync.run_findings` (every
//! skipped and warned record of a run) and `sync.held_change_sets`. The only code that reads or
//! writes these tables; the scheduler, the sync and the command line go through it.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::diff::Samples;
use crate::domain::{Entity, Finding, FindingSummary};
use crate::safety::Hold;

// ---------------------------------------------------------------------------------------------
// What a run did

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

/// What a run pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PullKind {
    /// Every collection: a complete snapshot (records it lacks are deleted by absence).
    Full,
    /// Records modified since the watermark; nothing is deleted by absence.
    Delta,
    /// Nothing: the upstream revision and totals said nothing changed.
    Unchanged,
}

impl PullKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PullKind::Full => "full",
            PullKind::Delta => "delta",
            PullKind::Unchanged => "unchanged",
        }
    }
}

/// Per-entity counts of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EntityCounts {
    pub fetched: i64,
    pub created: i64,
    pub updated: i64,
    pub reactivated: i64,
    pub deleted: i64,
    pub skipped: i64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FetchStats {
    pub requests: u64,
    pub retries: u64,
    pub request_ms: u64,
}

/// What a run did; also what `sync` prints and what the run history keeps.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: Uuid,
    pub district: String,
    pub outcome: Outcome,
    pub dry_run: bool,
    pub pull: PullKind,
    /// `pull == Full` (kept for readers of the JSON report).
    pub full_pull: bool,
    /// Why the run pulled everything, when it could have pulled less.
    pub pull_reason: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub revision: Option<String>,
    pub counts: BTreeMap<Entity, EntityCounts>,
    /// Findings per code and collection (errors: records skipped; warnings: stored).
    pub findings: FindingSummary,
    /// Sample ids of the change set per entity and operation.
    pub samples: Samples,
    /// Set when the change set goes over a safety limit (held, or would be in a dry run, or
    /// applied because it was approved).
    pub hold: Option<Hold>,
    /// Time per phase in milliseconds: `pull` (wall time of the whole pull, which includes
    /// `index`, loading the mirror index; `classify`, checking, hashing and classifying
    /// records, while normalization runs beside it on other threads; and `stage`, copying
    /// changed rows into the change-set tables), `diff` (deletions by absence and the
    /// cascade), `apply` (store, mirror and journal), `journal` (within `apply`: the change
    /// journal's rows).
    pub phases_ms: BTreeMap<&'static str, u64>,
    /// OneRoster requests made (retries included) and the time spent on them.
    pub fetch: FetchStats,
    /// Change-journal rows written (for a dry run or a held set: what it would change).
    pub journaled: u64,
    pub error: Option<String>,
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
#[error("database error while {doing}: {source}")]
pub struct HistoryError {
    doing: &'static str,
    #[source]
    source: sqlx::Error,
}

fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> HistoryError {
    move |source| HistoryError { doing, source }
}

type Result<T> = std::result::Result<T, HistoryError>;

// ---------------------------------------------------------------------------------------------
// A district's state as a run needs it

/// What a run needs to know of its district before it starts.
#[derive(Debug, Default, sqlx::FromRow)]
pub struct DistrictState {
    pub pending_run_id: Option<Uuid>,
    pub last_full_pull_at: Option<DateTime<Utc>>,
    pub delta_watermark: Option<DateTime<Utc>>,
    /// The row-hash definition the mirror was written with.
    pub hash_version: Option<i32>,
    /// Records per collection upstream at the last full pull, plus creations since.
    pub upstream_counts: Option<sqlx::types::Json<BTreeMap<String, i64>>>,
    /// A change set is held: runs pull everything until it is applied or superseded, so the
    /// approved set can come back exactly as it was held.
    pub holding: bool,
    /// A drift repair asked for a full pull.
    pub full_pull_requested: bool,
    /// The upstream revision and collection totals of the last pull that was completely
    /// applied.
    pub last_revision: Option<String>,
    pub last_totals: Option<sqlx::types::Json<BTreeMap<String, i64>>>,
    /// The settings that shaped the rows of that pull (`DistrictConfig::stored_form`).
    pub applied_settings: Option<String>,
}

pub async fn district_state(state: &PgPool, district: &str) -> Result<DistrictState> {
    let row: Option<DistrictState> = sqlx::query_as(
        "SELECT pending_run_id, last_full_pull_at, delta_watermark, hash_version, upstream_counts,
                full_pull_requested, last_revision, last_totals, applied_settings,
                EXISTS (SELECT 1 FROM sync.held_change_sets h
                        WHERE h.district_id = d.district_id AND h.released_at IS NULL) AS holding
         FROM sync.districts d WHERE district_id = $1",
    )
    .bind(district)
    .fetch_optional(state)
    .await
    .map_err(db("reading the district state"))?;
    Ok(row.unwrap_or_default())
}

/// Makes sure the district has its row.
pub async fn register(state: &PgPool, district: &str) -> Result<()> {
    sqlx::query("INSERT INTO sync.districts (district_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(district)
        .execute(state)
        .await
        .map_err(db("registering the district"))?;
    Ok(())
}

/// The run's row, before anything else happens: a run that cannot be recorded does not pull.
pub async fn record_start(
    state: &PgPool,
    district: &str,
    run_id: Uuid,
    started_at: DateTime<Utc>,
    dry_run: bool,
) -> Result<()> {
    register(state, district).await?;
    sqlx::query(
        "INSERT INTO sync.runs (run_id, district_id, started_at, outcome, dry_run) VALUES ($1, $2, $3, 'running', $4)",
    )
    .bind(run_id)
    .bind(district)
    .bind(started_at)
    .bind(dry_run)
    .execute(state)
    .await
    .map_err(db("recording the run start"))?;
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

/// The run's outcome, counts, findings per code and error; a failure counts against the
/// district.
pub async fn record_finish(state: &PgPool, report: &RunReport) -> Result<()> {
    let samples = serde_json::to_value(
        report
            .samples
            .iter()
            .map(|(e, ops)| (e.as_str(), ops))
            .collect::<BTreeMap<_, _>>(),
    )
    .unwrap_or_default();
    sqlx::query(
        "UPDATE sync.runs SET finished_at = $2, outcome = $3, revision = $4, counts = $5, findings = $6,
             error = $7, full_pull = $8, pull = $9, pull_reason = $10, changes = $11, journaled = $12
         WHERE run_id = $1",
    )
    .bind(report.run_id)
    .bind(report.finished_at)
    .bind(report.outcome.as_str())
    .bind(&report.revision)
    .bind(counts_json(&report.counts))
    .bind(serde_json::to_value(&report.findings).unwrap_or_default())
    .bind(&report.error)
    .bind(report.full_pull)
    .bind(report.pull.as_str())
    .bind(&report.pull_reason)
    .bind(samples)
    .bind(i64::try_from(report.journaled).unwrap_or(i64::MAX))
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

/// Forgets the findings of a run (its pull starts over).
pub async fn clear_findings(state: &PgPool, run_id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM sync.run_findings WHERE run_id = $1")
        .bind(run_id)
        .execute(state)
        .await
        .map_err(db("clearing findings"))?;
    Ok(())
}

/// Appends findings of a run (recorded as the run goes: a run may find many).
pub async fn record_findings(
    state: &PgPool,
    run_id: Uuid,
    district: &str,
    findings: &[Finding],
) -> Result<()> {
    if findings.is_empty() {
        return Ok(());
    }
    let mut lines = Vec::new();
    let run = run_id.to_string();
    for f in findings {
        for (i, field) in [
            run.as_str(),
            district,
            f.severity.as_str(),
            f.code.as_str(),
            f.entity,
            &f.sourced_id,
            &f.message,
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                lines.push(b'\t');
            }
            crate::stored::copy_escaped(&mut lines, field);
        }
        lines.push(b'\n');
    }
    let mut conn = state.acquire().await.map_err(db("recording findings"))?;
    let mut copy = conn
        .copy_in_raw(
            "COPY sync.run_findings (run_id, district_id, severity, code, entity, sourced_id, message) FROM STDIN",
        )
        .await
        .map_err(db("recording findings"))?;
    copy.send(lines).await.map_err(db("recording findings"))?;
    copy.finish().await.map_err(db("recording findings"))?;
    Ok(())
}

/// What a successful run leaves for the next: its revision, and for delta pulls the watermark
/// and the upstream counts.
pub struct Success<'a> {
    pub revision: Option<&'a str>,
    pub full_pull: bool,
    /// The newest `dateLastModified` applied, never later than the run's start.
    pub watermark: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub upstream_counts: Option<&'a BTreeMap<String, i64>>,
    /// The collection totals the server announced.
    pub totals: Option<&'a BTreeMap<String, i64>>,
    /// The settings the run's rows were stored under.
    pub settings: &'a str,
}

pub async fn mark_success(state: &PgPool, district: &str, s: Success<'_>) -> Result<()> {
    sqlx::query(
        "UPDATE sync.districts SET last_success_at = now(),
             last_full_pull_at = CASE WHEN $3 THEN $5 ELSE last_full_pull_at END,
             delta_watermark = CASE WHEN $3 THEN coalesce($4, delta_watermark)
                                    ELSE greatest(delta_watermark, $4) END,
             upstream_counts = coalesce($6, upstream_counts),
             full_pull_requested = full_pull_requested AND NOT $3,
             last_totals = $7, applied_settings = $8,
             last_revision = $2, consecutive_failures = 0
         WHERE district_id = $1",
    )
    .bind(district)
    .bind(s.revision)
    .bind(s.full_pull)
    .bind(s.watermark)
    .bind(s.started_at)
    .bind(s.upstream_counts.map(sqlx::types::Json))
    .bind(s.totals.map(sqlx::types::Json))
    .bind(s.settings)
    .execute(state)
    .await
    .map_err(db("recording the district's success"))?;
    Ok(())
}

/// A drift repair: the district's next run pulls everything (cleared by a full pull's success).
pub async fn request_full_pull(state: &PgPool, district: &str) -> Result<()> {
    register(state, district).await?;
    sqlx::query("UPDATE sync.districts SET full_pull_requested = true WHERE district_id = $1")
        .bind(district)
        .execute(state)
        .await
        .map_err(db("asking for a full pull"))?;
    Ok(())
}

/// Separate store: the district's apply is under way (committed before the store is touched).
pub async fn mark_pending(conn: &mut PgConnection, district: &str, run_id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE sync.districts SET pending_run_id = $2, pending_since = now() WHERE district_id = $1",
    )
    .bind(district)
    .bind(run_id)
    .execute(&mut *conn)
    .await
    .map_err(db("marking the apply as pending"))?;
    Ok(())
}

pub async fn clear_pending(conn: &mut PgConnection, district: &str) -> Result<()> {
    sqlx::query(
        "UPDATE sync.districts SET pending_run_id = NULL, pending_since = NULL WHERE district_id = $1",
    )
    .bind(district)
    .execute(&mut *conn)
    .await
    .map_err(db("clearing the pending mark"))?;
    Ok(())
}

/// Every row this run pulled now carries a hash of the current definition (same transaction
/// as the mirror's advance).
pub async fn set_hash_version(conn: &mut PgConnection, district: &str, version: i32) -> Result<()> {
    sqlx::query("UPDATE sync.districts SET hash_version = $2 WHERE district_id = $1")
        .bind(district)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map_err(db("recording the row-hash version"))?;
    Ok(())
}

/// Holding the district's lock, no other applying run of it is alive: a run still marked
/// `running` belonged to a process that died (or was stopped past its grace) mid-run.
pub async fn close_abandoned(conn: &mut PgConnection, district: &str) -> Result<()> {
    sqlx::query(
        "UPDATE sync.runs SET outcome = 'abandoned', finished_at = now(),
             error = 'the process running it stopped before it finished; the next run converges'
         WHERE district_id = $1 AND outcome = 'running' AND NOT dry_run",
    )
    .bind(district)
    .execute(&mut *conn)
    .await
    .map_err(db("closing abandoned runs"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Held change sets (CONTRACT §6)

/// A change set waiting for approval, as `status` and `approve` show it.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    pub district: String,
    pub fingerprint: String,
    pub run_id: Uuid,
    pub held_at: DateTime<Utc>,
    pub approved: bool,
    pub counts: serde_json::Value,
    pub reasons: serde_json::Value,
}

/// Whether this exact change set was approved and not applied yet.
pub async fn is_approved(state: &PgPool, district: &str, fingerprint: &str) -> Result<bool> {
    let approved: Option<bool> = sqlx::query_scalar(
        "SELECT approved_at IS NOT NULL FROM sync.held_change_sets
         WHERE district_id = $1 AND fingerprint = $2 AND released_at IS NULL",
    )
    .bind(district)
    .bind(fingerprint)
    .fetch_optional(state)
    .await
    .map_err(db("reading held change sets"))?;
    Ok(approved.unwrap_or(false))
}

/// Keeps a change set as held (again, if the same one was held before) and retires any other
/// pending one of the district: only the newest change set can be approved.
pub async fn hold(state: &PgPool, district: &str, run_id: Uuid, report: &RunReport) -> Result<()> {
    let Some(hold) = &report.hold else {
        return Ok(());
    };
    let samples = serde_json::to_value(
        report
            .samples
            .iter()
            .map(|(e, ops)| (e.as_str(), ops))
            .collect::<BTreeMap<_, _>>(),
    )
    .unwrap_or_default();
    let reasons = serde_json::to_value(&hold.breaches).unwrap_or_default();
    let mut tx = state
        .begin()
        .await
        .map_err(db("storing the held change set"))?;
    sqlx::query(
        "UPDATE sync.held_change_sets SET released_at = now(), resolution = 'superseded'
         WHERE district_id = $1 AND fingerprint <> $2 AND released_at IS NULL",
    )
    .bind(district)
    .bind(&hold.fingerprint)
    .execute(&mut *tx)
    .await
    .map_err(db("storing the held change set"))?;
    sqlx::query(
        "INSERT INTO sync.held_change_sets (district_id, fingerprint, run_id, counts, samples, reasons)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (district_id, fingerprint) DO UPDATE
         SET run_id = EXCLUDED.run_id, counts = EXCLUDED.counts, samples = EXCLUDED.samples,
             reasons = EXCLUDED.reasons,
             held_at = CASE WHEN sync.held_change_sets.released_at IS NULL THEN sync.held_change_sets.held_at ELSE now() END,
             approved_at = CASE WHEN sync.held_change_sets.released_at IS NULL THEN sync.held_change_sets.approved_at END,
             released_at = NULL, resolution = NULL",
    )
    .bind(district)
    .bind(&hold.fingerprint)
    .bind(run_id)
    .bind(counts_json(&report.counts))
    .bind(samples)
    .bind(reasons)
    .execute(&mut *tx)
    .await
    .map_err(db("storing the held change set"))?;
    tx.commit().await.map_err(db("storing the held change set"))
}

/// Marks an approved change set applied, and retires any other pending one.
pub async fn release(state: &PgPool, district: &str, fingerprint: &str) -> Result<()> {
    sqlx::query(
        "UPDATE sync.held_change_sets
         SET released_at = now(), resolution = CASE WHEN fingerprint = $2 THEN 'applied' ELSE 'superseded' END
         WHERE district_id = $1 AND released_at IS NULL",
    )
    .bind(district)
    .bind(fingerprint)
    .execute(state)
    .await
    .map_err(db("releasing the approved change set"))?;
    Ok(())
}

/// Retires every pending change set of the district: a run passed the gate without one, so the
/// source moved on from what was held.
pub async fn supersede(state: &PgPool, district: &str) -> Result<()> {
    sqlx::query(
        "UPDATE sync.held_change_sets SET released_at = now(), resolution = 'superseded'
         WHERE district_id = $1 AND released_at IS NULL",
    )
    .bind(district)
    .execute(state)
    .await
    .map_err(db("retiring the held change set"))?;
    Ok(())
}

type HeldRow = (
    String,
    String,
    Uuid,
    DateTime<Utc>,
    bool,
    serde_json::Value,
    serde_json::Value,
);

fn held(row: HeldRow) -> Held {
    let (district, fingerprint, run_id, held_at, approved, counts, reasons) = row;
    Held {
        district,
        fingerprint,
        run_id,
        held_at,
        approved,
        counts,
        reasons,
    }
}

/// The district's pending held change set, if any.
pub async fn pending(state: &PgPool, district: &str) -> Result<Option<Held>> {
    let row: Option<HeldRow> = sqlx::query_as(
        "SELECT district_id, fingerprint, run_id, held_at, approved_at IS NOT NULL, counts, reasons
         FROM sync.held_change_sets WHERE district_id = $1 AND released_at IS NULL
         ORDER BY held_at DESC LIMIT 1",
    )
    .bind(district)
    .fetch_optional(state)
    .await
    .map_err(db("reading held change sets"))?;
    Ok(row.map(held))
}

/// Every pending held change set, by district.
pub async fn all_pending(state: &PgPool) -> Result<Vec<Held>> {
    let rows: Vec<HeldRow> = sqlx::query_as(
        "SELECT district_id, fingerprint, run_id, held_at, approved_at IS NOT NULL, counts, reasons
         FROM sync.held_change_sets WHERE released_at IS NULL ORDER BY district_id, held_at DESC",
    )
    .fetch_all(state)
    .await
    .map_err(db("reading held change sets"))?;
    Ok(rows.into_iter().map(held).collect())
}

/// Approves the district's pending change set (optionally only if it has this fingerprint);
/// returns it, or `None` when nothing matching is held.
pub async fn approve(
    state: &PgPool,
    district: &str,
    fingerprint: Option<&str>,
) -> Result<Option<Held>> {
    let Some(held) = pending(state, district).await? else {
        return Ok(None);
    };
    if fingerprint.is_some_and(|f| f != held.fingerprint) {
        return Ok(None);
    }
    sqlx::query(
        "UPDATE sync.held_change_sets SET approved_at = now()
         WHERE district_id = $1 AND fingerprint = $2 AND released_at IS NULL",
    )
    .bind(district)
    .bind(&held.fingerprint)
    .execute(state)
    .await
    .map_err(db("approving the held change set"))?;
    Ok(Some(Held {
        approved: true,
        ..held
    }))
}

// ---------------------------------------------------------------------------------------------
// The schedule: claims and leases shared by every replica

/// A district's schedule row and its latest run's outcome.
#[derive(Debug, Clone, Default)]
pub struct ScheduleRow {
    pub last_success_at: Option<DateTime<Utc>>,
    pub consecutive_failures: i64,
    pub next_run_at: Option<DateTime<Utc>>,
    /// The replica holding a live lease, if any.
    pub leased_by: Option<String>,
    pub last_outcome: Option<String>,
}

/// Every district's schedule row, by id.
pub async fn schedule(state: &PgPool) -> Result<HashMap<String, ScheduleRow>> {
    type Row = (
        String,
        Option<DateTime<Utc>>,
        i32,
        Option<DateTime<Utc>>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT d.district_id, d.last_success_at, d.consecutive_failures, d.next_run_at,
                CASE WHEN d.lease_until > now() THEN d.leased_by END,
                (SELECT r.outcome FROM sync.runs r WHERE r.district_id = d.district_id
                  ORDER BY r.started_at DESC LIMIT 1)
         FROM sync.districts d",
    )
    .fetch_all(state)
    .await
    .map_err(db("reading the schedule"))?;
    Ok(rows
        .into_iter()
        .map(|(id, s, f, n, l, o)| {
            (
                id,
                ScheduleRow {
                    last_success_at: s,
                    consecutive_failures: i64::from(f),
                    next_run_at: n,
                    leased_by: l,
                    last_outcome: o,
                },
            )
        })
        .collect())
}

/// The atomic claim: succeeds for exactly one replica when the district is due (its next run
/// passed, no live lease), and moves `next_run_at` on by `interval_secs`. Returns the
/// district's consecutive failures.
pub async fn claim(
    state: &PgPool,
    district: &str,
    replica: &str,
    interval_secs: f64,
) -> Result<Option<i64>> {
    let row: Option<(i32,)> = sqlx::query_as(
        "UPDATE sync.districts
            SET next_run_at = now() + make_interval(secs => $3),
                leased_by = $2,
                lease_until = now() + make_interval(secs => $3)
          WHERE district_id = $1
            AND (next_run_at IS NULL OR next_run_at <= now())
            AND (lease_until IS NULL OR lease_until < now())
          RETURNING consecutive_failures",
    )
    .bind(district)
    .bind(replica)
    .bind(interval_secs)
    .fetch_optional(state)
    .await
    .map_err(db("claiming the district"))?;
    Ok(row.map(|(f,)| i64::from(f)))
}

/// Ends this replica's lease; with `next_secs`, also schedules the next run that long from now.
pub async fn end_lease(
    state: &PgPool,
    district: &str,
    replica: &str,
    next_secs: Option<f64>,
) -> Result<()> {
    sqlx::query(
        "UPDATE sync.districts
            SET next_run_at = COALESCE(now() + make_interval(secs => $3), next_run_at),
                leased_by = CASE WHEN leased_by = $2 THEN NULL ELSE leased_by END,
                lease_until = CASE WHEN leased_by = $2 THEN NULL ELSE lease_until END
          WHERE district_id = $1",
    )
    .bind(district)
    .bind(replica)
    .bind(next_secs)
    .execute(state)
    .await
    .map_err(db("scheduling the next run"))?;
    Ok(())
}

/// Seconds until the district may be due again (its next run, or the end of a live lease).
pub async fn seconds_until_due(state: &PgPool, district: &str) -> Result<Option<f64>> {
    let seconds: Option<Option<f64>> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (GREATEST(next_run_at, lease_until) - now()))::float8
           FROM sync.districts WHERE district_id = $1",
    )
    .bind(district)
    .fetch_optional(state)
    .await
    .map_err(db("reading the schedule"))?;
    Ok(seconds.flatten())
}

pub async fn consecutive_failures(state: &PgPool, district: &str) -> Result<i64> {
    let n: i32 = sqlx::query_scalar(
        "SELECT consecutive_failures FROM sync.districts WHERE district_id = $1",
    )
    .bind(district)
    .fetch_one(state)
    .await
    .map_err(db("reading the failure count"))?;
    Ok(i64::from(n))
}

/// Clears the leases a replica still holds (runs dropped at shutdown).
pub async fn release_leases(state: &PgPool, replica: &str) -> Result<()> {
    sqlx::query(
        "UPDATE sync.districts SET leased_by = NULL, lease_until = NULL WHERE leased_by = $1",
    )
    .bind(replica)
    .execute(state)
    .await
    .map_err(db("releasing leases"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading the history back

/// One run as the history keeps it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub run_id: Uuid,
    pub district_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: String,
    pub dry_run: bool,
    pub pull: Option<String>,
    pub pull_reason: Option<String>,
    pub revision: Option<String>,
    pub counts: sqlx::types::Json<serde_json::Value>,
    pub findings: sqlx::types::Json<serde_json::Value>,
    pub error: Option<String>,
}

/// The district's latest runs, newest first (`district` `None`: every district's, up to
/// `limit` each).
pub async fn runs(state: &PgPool, district: Option<&str>, limit: i64) -> Result<Vec<RunRow>> {
    sqlx::query_as(
        "SELECT run_id, district_id, started_at, finished_at, outcome, dry_run,
                coalesce(pull, CASE WHEN full_pull THEN 'full' ELSE 'delta' END) AS pull,
                pull_reason, revision, counts, findings, error
         FROM (SELECT *, row_number() OVER (PARTITION BY district_id ORDER BY started_at DESC) AS n
               FROM sync.runs WHERE $1::text IS NULL OR district_id = $1) r
         WHERE n <= $2 ORDER BY district_id, started_at DESC",
    )
    .bind(district)
    .bind(limit)
    .fetch_all(state)
    .await
    .map_err(db("reading the run history"))
}

/// A run of the district: this one, or (`None`) the latest.
pub async fn run(state: &PgPool, district: &str, run_id: Option<Uuid>) -> Result<Option<RunRow>> {
    sqlx::query_as(
        "SELECT run_id, district_id, started_at, finished_at, outcome, dry_run,
                coalesce(pull, CASE WHEN full_pull THEN 'full' ELSE 'delta' END) AS pull,
                pull_reason, revision, counts, findings, error
         FROM sync.runs
         WHERE district_id = $1 AND ($2::uuid IS NULL OR run_id = $2)
         ORDER BY started_at DESC LIMIT 1",
    )
    .bind(district)
    .bind(run_id)
    .fetch_optional(state)
    .await
    .map_err(db("reading the run history"))
}

/// One finding of a run, as `report` lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FindingRow {
    pub severity: String,
    pub code: String,
    pub entity: String,
    pub sourced_id: String,
    pub message: String,
}

/// Every finding of a run: errors first, then by code, collection and `sourcedId`.
pub async fn findings(state: &PgPool, run_id: Uuid) -> Result<Vec<FindingRow>> {
    sqlx::query_as(
        "SELECT severity, code, entity, sourced_id, message FROM sync.run_findings
         WHERE run_id = $1 ORDER BY severity, code, entity, sourced_id",
    )
    .bind(run_id)
    .fetch_all(state)
    .await
    .map_err(db("reading the run's findings"))
}
