//! The daemon (`run`): every enabled district on its own schedule, shared among replicas.
//!
//! Each district has a task that sleeps until the district is due, takes a slot of the
//! process-wide limit (`[daemon] max_concurrent_runs`), claims the district in Postgres and runs
//! [`sync::run_once`]. Coordination between replicas on one database is Postgres only:
//!
//! - the claim is one atomic update of the district's row (`history::claim`) that succeeds
//!   only when the district is due (`next_run_at` passed) and nobody holds a live lease, and
//!   moves `next_run_at` on, so one replica wins and the others see the district as not due
//!   for that interval;
//! - for the run's whole length the winner holds a session-level advisory lock on a dedicated
//!   connection, so two runs of a district never overlap even when a run outlasts its interval
//!   (or `sync --district` runs it by hand); Postgres drops the lock when the holder dies.
//!
//! After a run, `next_run_at` is set from its outcome: the interval (plus a small jitter fixed
//! per district) after a success, an exponential backoff after a failure. Logs are the
//! monitoring surface: a start-up line with every schedule, a heartbeat line per district, an
//! error line per cycle for a quarantined district.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Connection, PgConnection, PgPool};

use crate::history::{self, HistoryError};
use crate::journal;
use crate::telemetry::error_chain;
use crate::verify;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{DaemonSettings, DistrictConfig, PauseWindow, Settings};
use crate::db::{Databases, DbError};
use crate::health::{self, HealthError, Monitor};
use crate::sync::{self, Outcome, RunOptions};

/// The jitter added to a district's interval: at most this share of it...
const JITTER_SHARE: f64 = 0.05;
/// ... and at most this long.
const JITTER_MAX: Duration = Duration::from_secs(30);
/// The first run of a district starts within this share of its interval after start...
const FIRST_DELAY_SHARE: f64 = 0.1;
/// ... and at most this long after it.
const FIRST_DELAY_MAX: Duration = Duration::from_secs(2);
/// Shortest wait before asking again whether a district is due.
const MIN_POLL: Duration = Duration::from_millis(100);
/// Wait after a scheduling error (database unreachable): at most this long.
const ERROR_RETRY_MAX: Duration = Duration::from_secs(30);
/// How often the scheduler loop proves it is alive (for `/readyz`).
const TICK: Duration = Duration::from_secs(1);
/// Bound on the database work of a heartbeat and of the shutdown clean-up.
const HOUSEKEEPING_TIMEOUT: Duration = Duration::from_secs(5);
/// Namespace of the advisory lock keys (hashed with the district id).
const LOCK_NAMESPACE: &str = "oneroster-sync:district:";

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database error while {doing} for district {district}: {source}")]
    Database {
        doing: &'static str,
        district: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error("district {district}: {source}")]
    History {
        district: String,
        #[source]
        source: HistoryError,
    },
}

fn hist(district: &str) -> impl FnOnce(HistoryError) -> SchedulerError {
    let district = district.to_owned();
    move |source| SchedulerError::History { district, source }
}

fn db(doing: &'static str, district: &str) -> impl FnOnce(sqlx::Error) -> SchedulerError {
    let district = district.to_owned();
    move |source| SchedulerError::Database {
        doing,
        district,
        source,
    }
}

/// What a district is doing, as heartbeats and `status` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistrictState {
    Idle,
    Running,
    Paused,
    BackingOff,
    Quarantined,
    /// Its last run was held by a safety limit; it waits for `approve`.
    Held,
    Disabled,
}

impl DistrictState {
    pub fn as_str(self) -> &'static str {
        match self {
            DistrictState::Idle => "idle",
            DistrictState::Running => "running",
            DistrictState::Paused => "paused",
            DistrictState::BackingOff => "backing_off",
            DistrictState::Quarantined => "quarantined",
            DistrictState::Held => "held",
            DistrictState::Disabled => "disabled",
        }
    }
}

/// One district's schedule state, from its history row and its latest run.
#[derive(Debug, Clone)]
pub struct DistrictView {
    pub id: String,
    pub state: DistrictState,
    pub last_success_at: Option<DateTime<Utc>>,
    pub consecutive_failures: i64,
    pub next_run_at: Option<DateTime<Utc>>,
    /// The replica holding a live lease (running it now), if any.
    pub leased_by: Option<String>,
    /// A change set of the district is held, waiting for approval.
    pub held: bool,
}

/// The state of every configured district as the database (and the calendar) tells it.
pub async fn district_views(
    state_db: &PgPool,
    settings: &Settings,
) -> Result<Vec<DistrictView>, SchedulerError> {
    let mut by_id = history::schedule(state_db).await.map_err(hist("(all)"))?;
    let held: std::collections::HashSet<String> = history::all_pending(state_db)
        .await
        .map_err(hist("(all)"))?
        .into_iter()
        .map(|h| h.district)
        .collect();
    let today = Utc::now().date_naive();
    let quarantine_after = i64::from(settings.daemon.quarantine_after);
    Ok(settings
        .districts
        .iter()
        .map(|d| {
            let row = by_id.remove(&d.id).unwrap_or_default();
            let (last_success_at, failures, next_run_at, leased_by, last_outcome) = (
                row.last_success_at,
                row.consecutive_failures,
                row.next_run_at,
                row.leased_by,
                row.last_outcome,
            );
            let state = if !d.enabled {
                DistrictState::Disabled
            } else {
                derive_state(
                    leased_by.is_some(),
                    pause_window(settings.pause(&d.id), today).is_some(),
                    last_outcome.as_deref() == Some(Outcome::Held.as_str()),
                    failures,
                    quarantine_after,
                )
            };
            DistrictView {
                id: d.id.clone(),
                state,
                last_success_at,
                consecutive_failures: failures,
                next_run_at,
                leased_by,
                held: held.contains(&d.id),
            }
        })
        .collect())
}

fn derive_state(
    running: bool,
    paused: bool,
    held: bool,
    failures: i64,
    quarantine_after: i64,
) -> DistrictState {
    if running {
        DistrictState::Running
    } else if paused {
        DistrictState::Paused
    } else if failures >= quarantine_after {
        DistrictState::Quarantined
    } else if failures > 0 {
        DistrictState::BackingOff
    } else if held {
        DistrictState::Held
    } else {
        DistrictState::Idle
    }
}

/// The pause window `windows` has on `day`, if any.
pub fn pause_window(windows: &[PauseWindow], day: NaiveDate) -> Option<&PauseWindow> {
    windows.iter().find(|w| w.contains(day))
}

/// The jitter added to every interval of a district: fixed per district (a hash of its id), so
/// districts with the same interval spread out and stay spread out.
pub fn jitter(district: &str, interval: Duration) -> Duration {
    // FNV-1a: stable across builds and platforms, unlike the std hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in district.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let fraction = (hash % 10_000) as f64 / 10_000.0;
    interval
        .mul_f64(JITTER_SHARE)
        .min(JITTER_MAX)
        .mul_f64(fraction)
}

/// How long a district waits after its `failures`-th consecutive failure: its interval,
/// doubled per further failure, capped at `max_backoff` and `full_interval` (never below the
/// interval).
pub fn backoff(
    interval: Duration,
    full_interval: Duration,
    max_backoff: Duration,
    failures: u32,
) -> Duration {
    let cap = max_backoff.min(full_interval).max(interval);
    let exponent = failures.saturating_sub(1).min(30);
    interval.saturating_mul(1u32 << exponent).min(cap)
}

/// A session-level advisory lock on one district, held on a dedicated connection: while it is
/// held no other process runs the district. Dropping it closes the connection, which releases
/// the lock too (as does the death of the process).
pub struct DistrictLock {
    conn: PgConnection,
    district: String,
}

/// Takes the district's lock if nobody holds it; `None` when another process is running it.
pub async fn try_lock_district(
    dbs: &Databases,
    district: &str,
) -> Result<Option<DistrictLock>, SchedulerError> {
    let mut conn = dbs.state_session().await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("{LOCK_NAMESPACE}{district}"))
        .fetch_one(&mut conn)
        .await
        .map_err(db("taking the district lock", district))?;
    if !got {
        let _ = conn.close().await;
        return Ok(None);
    }
    history::close_abandoned(&mut conn, district)
        .await
        .map_err(hist(district))?;
    Ok(Some(DistrictLock {
        conn,
        district: district.to_owned(),
    }))
}

impl DistrictLock {
    /// Releases the lock and closes its connection.
    pub async fn release(mut self) {
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(format!("{LOCK_NAMESPACE}{}", self.district))
            .execute(&mut self.conn)
            .await;
        if let Err(e) = unlocked {
            // Closing (or failing to close) the session releases it all the same.
            warn!(district = %self.district, error = %e, "could not release the district lock explicitly");
        }
        let _ = self.conn.close().await;
    }
}

/// This process's name in the districts' leases.
fn replica_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
    let tag = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &tag[..8])
}

/// What this process knows that the database does not: which districts it is running or has
/// found paused.
#[derive(Debug, Clone, Copy, Default)]
struct Local {
    running: bool,
    paused: bool,
}

struct Ctx {
    dbs: Databases,
    daemon: DaemonSettings,
    replica: String,
    monitor: Arc<Monitor>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    local: Mutex<HashMap<String, Local>>,
}

impl Ctx {
    fn set_local(&self, district: &str, f: impl FnOnce(&mut Local)) {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        f(local.entry(district.to_owned()).or_default());
    }

    fn local(&self, district: &str) -> Local {
        let local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        local.get(district).copied().unwrap_or_default()
    }
}

/// Runs the daemon until `shutdown` is cancelled, then stops starting runs, lets runs in
/// progress finish for up to `[daemon] shutdown_grace`, drops the rest (their transactions roll
/// back) and returns.
///
/// The health listener and the database check start first: a daemon whose database is down
/// answers its probes (`/readyz`: 503), logs why, and starts scheduling when the database comes.
pub async fn run(
    dbs: &Databases,
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<(), SchedulerError> {
    let daemon = settings.daemon.clone();
    let monitor = Monitor::new();
    let listener_stop = CancellationToken::new();
    let listener = match daemon.listen {
        Some(addr) => Some(health::serve(
            health::bind(addr).await?,
            monitor.clone(),
            listener_stop.clone(),
        )),
        None => None,
    };
    let watcher = tokio::spawn(health::watch_database(
        dbs.clone(),
        monitor.clone(),
        listener_stop.clone(),
    ));
    let started = start(dbs, settings, &monitor, &shutdown).await;
    let result = match started {
        Ok(Some(districts)) => {
            schedule(dbs, settings, monitor, districts, shutdown).await;
            Ok(())
        }
        Ok(None) => {
            info!("shutdown requested before the database answered: daemon stopped");
            Ok(())
        }
        Err(e) => Err(e),
    };
    listener_stop.cancel();
    let _ = watcher.await;
    if let Some(listener) = listener {
        let _ = tokio::time::timeout(HOUSEKEEPING_TIMEOUT, listener).await;
    }
    result
}

/// Waits for the database (as long as it takes, or until shutdown: `None`), migrates it and
/// registers the enabled districts.
async fn start(
    dbs: &Databases,
    settings: &Settings,
    monitor: &Monitor,
    shutdown: &CancellationToken,
) -> Result<Option<Vec<DistrictConfig>>, SchedulerError> {
    let districts: Vec<DistrictConfig> = settings
        .districts
        .iter()
        .filter(|d| d.enabled)
        .cloned()
        .collect();
    loop {
        while !monitor.database_up() {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        let ready = async {
            dbs.migrate().await?;
            for d in &districts {
                history::register(&dbs.state, &d.id)
                    .await
                    .map_err(hist(&d.id))?;
            }
            Ok::<(), SchedulerError>(())
        }
        .await;
        match ready {
            Ok(()) => return Ok(Some(districts)),
            // The database went away again between the check and the migration: wait on.
            Err(e) if !monitor.database_up() || dbs.check().await.is_err() => {
                warn!(error = %error_chain(&e), "database unavailable while starting: waiting for it");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The scheduling loop proper, once the database answered.
async fn schedule(
    dbs: &Databases,
    settings: &Settings,
    monitor: Arc<Monitor>,
    districts: Vec<DistrictConfig>,
    shutdown: CancellationToken,
) {
    let daemon = settings.daemon.clone();
    let replica = replica_id();
    monitor.tick();
    log_start(settings, &districts, &replica);

    let ctx = Arc::new(Ctx {
        dbs: dbs.clone(),
        slots: Arc::new(Semaphore::new(daemon.max_concurrent_runs)),
        daemon,
        replica,
        monitor,
        shutdown: shutdown.clone(),
        local: Mutex::new(HashMap::new()),
    });
    heartbeat(&ctx, settings, false).await;

    let mut tasks = JoinSet::new();
    for d in districts {
        let pause = settings.pause(&d.id).to_vec();
        tasks.spawn(district_loop(ctx.clone(), d, pause));
    }

    let mut tick = tokio::time::interval(TICK);
    let mut next_heartbeat = tokio::time::Instant::now() + ctx.daemon.heartbeat_interval;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                ctx.monitor.tick();
                if tokio::time::Instant::now() >= next_heartbeat {
                    next_heartbeat += ctx.daemon.heartbeat_interval;
                    heartbeat(&ctx, settings, true).await;
                }
            }
        }
    }

    ctx.monitor.stopping();
    let in_flight = {
        let local = ctx.local.lock().unwrap_or_else(|e| e.into_inner());
        local.values().filter(|l| l.running).count()
    };
    info!(
        in_flight,
        shutdown_grace = %humantime::format_duration(ctx.daemon.shutdown_grace),
        "shutdown requested: no new runs; letting runs in progress finish"
    );
    let drained = tokio::time::timeout(ctx.daemon.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            "shutdown grace elapsed: dropping the runs still in progress (their transactions roll back; nothing is half-applied)"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    release_leases(&ctx).await;
    info!("daemon stopped");
}

/// The start-up line: every district and its schedule, no secrets.
fn log_start(settings: &Settings, enabled: &[DistrictConfig], replica: &str) {
    let h = |d: Duration| humantime::format_duration(d).to_string();
    let schedules: Vec<String> = enabled
        .iter()
        .map(|d| {
            let mut s = format!(
                "{}: every {} (+{} jitter), full pull every {}",
                d.id,
                h(d.interval),
                h(Duration::from_millis(
                    jitter(&d.id, d.interval).as_millis() as u64
                )),
                h(d.full_interval)
            );
            if d.dry_run {
                s.push_str(", dry run");
            }
            let pause = settings.pause(&d.id);
            if !pause.is_empty() {
                let windows: Vec<String> = pause.iter().map(ToString::to_string).collect();
                s.push_str(&format!(", paused {}", windows.join(" ")));
            }
            s
        })
        .collect();
    let disabled: Vec<&str> = settings
        .districts
        .iter()
        .filter(|d| !d.enabled)
        .map(|d| d.id.as_str())
        .collect();
    let dm = &settings.daemon;
    info!(
        replica,
        districts = %schedules.join("; "),
        disabled = %disabled.join(", "),
        max_concurrent_runs = dm.max_concurrent_runs,
        quarantine_after = dm.quarantine_after,
        heartbeat_interval = %h(dm.heartbeat_interval),
        shutdown_grace = %h(dm.shutdown_grace),
        listen = %dm.listen.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        "daemon started"
    );
}

/// One line per enabled district with its state; also refreshes the metrics' view of every
/// district (other replicas' runs included).
async fn heartbeat(ctx: &Ctx, settings: &Settings, log: bool) {
    let views = match tokio::time::timeout(
        HOUSEKEEPING_TIMEOUT,
        district_views(&ctx.dbs.state, settings),
    )
    .await
    {
        Ok(Ok(views)) => views,
        Ok(Err(e)) => {
            error!(error = %error_chain(&e), "heartbeat: cannot read the districts' state");
            return;
        }
        Err(_) => {
            error!("heartbeat: the database did not answer in time");
            return;
        }
    };
    for v in views.iter().filter(|v| v.state != DistrictState::Disabled) {
        ctx.monitor
            .set_district(&v.id, v.last_success_at, v.consecutive_failures, v.held);
        if !log {
            continue;
        }
        let local = ctx.local(&v.id);
        let state = if local.running {
            DistrictState::Running
        } else if local.paused && v.state != DistrictState::Running {
            DistrictState::Paused
        } else {
            v.state
        };
        let ts =
            |t: Option<DateTime<Utc>>| t.map_or_else(|| "never".to_owned(), |t| t.to_rfc3339());
        info!(
            district = %v.id,
            state = state.as_str(),
            last_success_at = %ts(v.last_success_at),
            consecutive_failures = v.consecutive_failures,
            next_run_at = %ts(v.next_run_at),
            leased_by = %v.leased_by.as_deref().unwrap_or(""),
            "heartbeat"
        );
    }
}

/// Clears the leases this process still holds (runs dropped at shutdown), so other replicas do
/// not wait for them to expire. Best effort: an expired lease frees the district anyway.
async fn release_leases(ctx: &Ctx) {
    let released = tokio::time::timeout(
        HOUSEKEEPING_TIMEOUT,
        history::release_leases(&ctx.dbs.state, &ctx.replica),
    )
    .await;
    if !matches!(released, Ok(Ok(_))) {
        warn!("could not release this process's leases; they expire on their own");
    }
}

async fn district_loop(ctx: Arc<Ctx>, district: DistrictConfig, pause: Vec<PauseWindow>) {
    let first = district
        .interval
        .mul_f64(FIRST_DELAY_SHARE)
        .min(FIRST_DELAY_MAX)
        .mul_f64(rand::random::<f64>());
    let mut wait = first;
    loop {
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = match cycle(&ctx, &district, &pause).await {
            Ok(next) => next,
            Err(e) => {
                let retry = district.interval.min(ERROR_RETRY_MAX);
                error!(
                    district = %district.id,
                    error = %error_chain(&e),
                    retry_in = %humantime::format_duration(retry),
                    "scheduling failed"
                );
                retry
            }
        };
    }
}

/// One scheduling cycle of a district: run it if it is due and not paused. Returns how long to
/// wait before the next cycle.
async fn cycle(
    ctx: &Ctx,
    d: &DistrictConfig,
    pause: &[PauseWindow],
) -> Result<Duration, SchedulerError> {
    if let Some(window) = pause_window(pause, Utc::now().date_naive()) {
        ctx.set_local(&d.id, |l| l.paused = true);
        info!(district = %d.id, window = %window, "district paused: not syncing inside its pause window");
        return Ok(d.interval);
    }
    ctx.set_local(&d.id, |l| l.paused = false);

    // The slot first, so a district is never claimed while it waits for one.
    let slot = tokio::select! {
        biased;
        _ = ctx.shutdown.cancelled() => return Ok(Duration::ZERO),
        slot = ctx.slots.clone().acquire_owned() => slot,
    };
    let Ok(_slot) = slot else {
        // The semaphore is never closed; treat it like shutdown.
        return Ok(Duration::ZERO);
    };
    if ctx.shutdown.is_cancelled() {
        return Ok(Duration::ZERO);
    }

    let Some(claim) = claim(ctx, d).await? else {
        // Not due: another replica ran it (or runs it), or an earlier process set its schedule.
        return until_due(ctx, d).await;
    };
    let quarantine_after = i64::from(ctx.daemon.quarantine_after);
    if claim.failures >= quarantine_after {
        error!(
            district = %d.id,
            consecutive_failures = claim.failures,
            quarantine_after,
            "district quarantined: it has failed {} times in a row; trying again, other districts are unaffected",
            claim.failures
        );
    }
    let Some(lock) = try_lock_district(&ctx.dbs, &d.id).await? else {
        info!(district = %d.id, "district is being synced by another process right now: skipping this cycle");
        end_lease(ctx, d, None).await?;
        return Ok(d.interval);
    };

    // Between full pulls the daemon pulls deltas; the run itself decides when a full pull is
    // due (full_interval passed, no watermark yet, a held change set, a pending reconcile).
    debug!(district = %d.id, "district due: starting a run");

    ctx.set_local(&d.id, |l| l.running = true);
    let options = RunOptions {
        dry_run: false,
        allow_delta: true,
        full: false,
    };
    let report = sync::run_once(&ctx.dbs, d, options).await;
    ctx.set_local(&d.id, |l| l.running = false);
    lock.release().await;
    ctx.monitor.record_run(&report);
    after_run(ctx, d, &report).await;

    let failures = history::consecutive_failures(&ctx.dbs.state, &d.id)
        .await
        .map_err(hist(&d.id))?;
    let next = if report.outcome == Outcome::Failed {
        let n = u32::try_from(failures).unwrap_or(1).max(1);
        let delay = backoff(d.interval, d.full_interval, ctx.daemon.max_backoff, n);
        if i64::from(n) >= quarantine_after {
            error!(
                district = %d.id,
                consecutive_failures = n,
                quarantine_after,
                retry_in = %humantime::format_duration(delay),
                "district quarantined after {n} consecutive failures; backing off"
            );
        } else {
            warn!(
                district = %d.id,
                consecutive_failures = n,
                retry_in = %humantime::format_duration(delay),
                "run failed: backing off"
            );
        }
        delay
    } else {
        d.interval + jitter(&d.id, d.interval)
    };
    end_lease(ctx, d, Some(next)).await?;
    ctx.monitor.set_district(
        &d.id,
        (report.outcome != Outcome::Failed).then_some(report.finished_at),
        failures,
        report.outcome == Outcome::Held,
    );
    Ok(next)
}

/// Housekeeping after a run: the journal past its retention goes; after a full pull that
/// succeeded, the drift check, with one warning line when the store drifted.
async fn after_run(ctx: &Ctx, d: &DistrictConfig, report: &sync::RunReport) {
    match journal::prune(&ctx.dbs.state, &d.id, d.journal_retention).await {
        Ok(0) => {}
        Ok(n) => debug!(district = %d.id, rows = n, "journal rows past journal_retention pruned"),
        Err(e) => warn!(district = %d.id, error = %error_chain(&e), "could not prune the journal"),
    }
    let checked = report.pull == sync::PullKind::Full
        && matches!(report.outcome, Outcome::Applied | Outcome::NothingToDo);
    if !checked {
        return;
    }
    match verify::check(&ctx.dbs, &d.id).await {
        Ok(drift) => {
            ctx.monitor.set_drift(&d.id, drift.total());
            if drift.total() > 0 {
                warn!(
                    district = %d.id,
                    changed = drift.count("changed"),
                    missing = drift.count("missing"),
                    added = drift.count("added"),
                    repair_with = %format!("oneroster-sync verify --district {} --repair", d.id),
                    "drift: the roster store differs from what the daemon last applied (someone else wrote to it)"
                );
            }
        }
        Err(e) => warn!(district = %d.id, error = %error_chain(&e), "the drift check failed"),
    }
}

struct Claim {
    failures: i64,
}

/// The atomic claim: succeeds for exactly one replica when the district is due.
async fn claim(ctx: &Ctx, d: &DistrictConfig) -> Result<Option<Claim>, SchedulerError> {
    let failures = history::claim(
        &ctx.dbs.state,
        &d.id,
        &ctx.replica,
        d.interval.as_secs_f64(),
    )
    .await
    .map_err(hist(&d.id))?;
    Ok(failures.map(|failures| Claim { failures }))
}

/// Ends this process's lease; with `next`, also schedules the next run that long from now.
async fn end_lease(
    ctx: &Ctx,
    d: &DistrictConfig,
    next: Option<Duration>,
) -> Result<(), SchedulerError> {
    history::end_lease(
        &ctx.dbs.state,
        &d.id,
        &ctx.replica,
        next.map(|n| n.as_secs_f64()),
    )
    .await
    .map_err(hist(&d.id))
}

/// How long until the district may be due again (its next run, or the end of a live lease).
async fn until_due(ctx: &Ctx, d: &DistrictConfig) -> Result<Duration, SchedulerError> {
    let seconds = history::seconds_until_due(&ctx.dbs.state, &d.id)
        .await
        .map_err(hist(&d.id))?;
    let wait = Duration::try_from_secs_f64(seconds.unwrap_or(0.0).max(0.0)).unwrap_or(MIN_POLL);
    Ok(wait.clamp(MIN_POLL, d.interval.max(MIN_POLL)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_interval_and_is_capped() {
        let s = Duration::from_secs;
        let (interval, full, max) = (s(60), s(24 * 3600), s(6 * 3600));
        assert_eq!(backoff(interval, full, max, 1), s(60));
        assert_eq!(backoff(interval, full, max, 2), s(120));
        assert_eq!(backoff(interval, full, max, 4), s(480));
        assert_eq!(backoff(interval, full, max, 40), s(6 * 3600));
        // full_interval caps too, but the interval is the floor.
        assert_eq!(backoff(interval, s(300), max, 10), s(300));
        assert_eq!(backoff(s(7200), s(7200), s(60), 3), s(7200));
    }

    #[test]
    fn jitter_is_small_and_fixed_per_district() {
        let hour = Duration::from_secs(3600);
        let a = jitter("lakeside", hour);
        assert_eq!(a, jitter("lakeside", hour));
        assert!(a <= JITTER_MAX);
        assert_ne!(a, jitter("riverside", hour));
        assert!(jitter("lakeside", Duration::from_secs(2)) <= Duration::from_millis(100));
    }

    #[test]
    fn state_precedence() {
        assert_eq!(derive_state(true, true, true, 9, 5), DistrictState::Running);
        assert_eq!(
            derive_state(false, true, false, 9, 5),
            DistrictState::Paused
        );
        assert_eq!(
            derive_state(false, false, true, 5, 5),
            DistrictState::Quarantined
        );
        assert_eq!(
            derive_state(false, false, true, 4, 5),
            DistrictState::BackingOff
        );
        assert_eq!(derive_state(false, false, true, 0, 5), DistrictState::Held);
        assert_eq!(derive_state(false, false, false, 0, 5), DistrictState::Idle);
    }

    #[test]
    fn pause_windows_include_both_ends() {
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_default();
        let w = PauseWindow {
            start: day("2027-06-20"),
            end: day("2027-08-15"),
        };
        assert!(w.contains(day("2027-06-20")));
        assert!(w.contains(day("2027-08-15")));
        assert!(!w.contains(day("2027-06-19")));
        assert!(!w.contains(day("2027-08-16")));
    }
}
