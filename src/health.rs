//! The daemon's HTTP listener (`[daemon] listen`): `/healthz` (the process is up), `/readyz`
//! (the database answers and the scheduler loop is alive, else 503) and `/metrics` (Prometheus
//! text format). Only `run` starts it. The metrics are kept here, in-process, and rendered by
//! hand: a handful of counters and gauges does not need a metrics framework.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use tracing::warn;

use crate::db::Databases;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::sync::{Outcome, RunReport};

/// The scheduler loop counts as dead when it has not ticked for this long.
const TICK_STALE: Duration = Duration::from_secs(15);
/// How long one check of the database may take.
const DB_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the database is checked while it answers...
const DB_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// ... and at most how long between attempts while it does not (backing off from 1 s).
const DB_RETRY_MAX: Duration = Duration::from_secs(10);
/// A database that stays down is logged at most this often.
const DB_DOWN_LOG_EVERY: Duration = Duration::from_secs(60);
/// Bounds of the run duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0,
];

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot listen on {addr} ([daemon] listen): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the daemon tells the outside world: liveness of its scheduler loop and its metrics.
#[derive(Debug, Default)]
pub struct Monitor {
    /// Unix seconds of the scheduler loop's last tick; 0 before the first.
    last_tick: AtomicI64,
    stopping: AtomicBool,
    /// Whether the daemon's database answered its last check ([`watch_database`]).
    database_up: AtomicBool,
    metrics: Mutex<Metrics>,
}

#[derive(Debug, Default)]
struct Metrics {
    /// (district, outcome) -> runs
    runs: BTreeMap<(String, &'static str), u64>,
    /// (district, entity, operation) -> records
    records: BTreeMap<(String, &'static str, &'static str), u64>,
    /// district -> unix seconds of the last successful run
    last_success: BTreeMap<String, i64>,
    /// district -> consecutive failures
    failures: BTreeMap<String, i64>,
    /// district -> (bucket counts, sum, count) of run durations
    durations: BTreeMap<String, Histogram>,
    /// district -> (OneRoster requests, seconds spent on them)
    fetches: BTreeMap<String, (u64, f64)>,
    /// (district, code, severity) -> findings
    findings: BTreeMap<(String, &'static str, &'static str), u64>,
    /// district -> journal rows written
    journaled: BTreeMap<String, u64>,
    /// district -> rows drifted at the last check
    drifted: BTreeMap<String, u64>,
    /// district -> held change sets pending (0 or 1)
    held: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; DURATION_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Monitor {
    pub fn new() -> Arc<Monitor> {
        Arc::new(Monitor::default())
    }

    /// The scheduler loop is alive now.
    pub fn tick(&self) {
        self.last_tick
            .store(Utc::now().timestamp(), Ordering::Relaxed);
    }

    /// Shutdown started: not ready any more (no new runs will start).
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The database answered the last check.
    pub fn database_up(&self) -> bool {
        self.database_up.load(Ordering::Relaxed)
    }

    fn scheduler_alive(&self) -> bool {
        let last = self.last_tick.load(Ordering::Relaxed);
        !self.stopping.load(Ordering::Relaxed)
            && last > 0
            && Utc::now().timestamp() - last <= TICK_STALE.as_secs() as i64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Metrics> {
        // A panic while holding the lock cannot leave the counters half-updated in a way that
        // matters for monitoring: keep serving them.
        self.metrics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The district's state as read from the database (at start and in heartbeats).
    pub fn set_district(
        &self,
        district: &str,
        last_success_at: Option<DateTime<Utc>>,
        consecutive_failures: i64,
        held: bool,
    ) {
        let mut m = self.lock();
        if let Some(at) = last_success_at {
            m.last_success.insert(district.to_owned(), at.timestamp());
        }
        m.failures.insert(district.to_owned(), consecutive_failures);
        m.held.insert(district.to_owned(), u64::from(held));
    }

    /// Rows the last drift check found drifted.
    pub fn set_drift(&self, district: &str, rows: u64) {
        self.lock().drifted.insert(district.to_owned(), rows);
    }

    /// Counts one finished run.
    pub fn record_run(&self, report: &RunReport) {
        let mut m = self.lock();
        *m.runs
            .entry((report.district.clone(), report.outcome.as_str()))
            .or_default() += 1;
        if matches!(report.outcome, Outcome::Applied | Outcome::NothingToDo) {
            m.last_success
                .insert(report.district.clone(), report.finished_at.timestamp());
        }
        for (entity, c) in &report.counts {
            for (op, n) in [
                ("fetched", c.fetched),
                ("created", c.created),
                ("updated", c.updated),
                ("reactivated", c.reactivated),
                ("deleted", c.deleted),
                ("skipped", c.skipped),
            ] {
                if n > 0 {
                    *m.records
                        .entry((report.district.clone(), entity.as_str(), op))
                        .or_default() += n as u64;
                }
            }
        }
        let seconds = report.duration_ms as f64 / 1000.0;
        let h = m.durations.entry(report.district.clone()).or_default();
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
        let f = m.fetches.entry(report.district.clone()).or_default();
        f.0 += report.fetch.requests;
        f.1 += report.fetch.request_ms as f64 / 1000.0;
        for c in report.findings.entries() {
            *m.findings
                .entry((
                    report.district.clone(),
                    c.code.as_str(),
                    c.severity.as_str(),
                ))
                .or_default() += c.count;
        }
        *m.journaled.entry(report.district.clone()).or_default() += report.journaled;
        if report.outcome == Outcome::Held {
            m.held.insert(report.district.clone(), 1);
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let m = self.lock();
        let mut out = String::new();
        // Writing to a String cannot fail; the results are ignored for that reason.
        out.push_str("# HELP oneroster_sync_runs_total Finished runs by district and outcome.\n");
        out.push_str("# TYPE oneroster_sync_runs_total counter\n");
        for ((district, outcome), n) in &m.runs {
            let _ = writeln!(
                out,
                "oneroster_sync_runs_total{{district=\"{}\",outcome=\"{outcome}\"}} {n}",
                label(district)
            );
        }
        out.push_str(
            "# HELP oneroster_sync_records_total Records by district, entity type and operation.\n",
        );
        out.push_str("# TYPE oneroster_sync_records_total counter\n");
        for ((district, entity, op), n) in &m.records {
            let _ = writeln!(
                out,
                "oneroster_sync_records_total{{district=\"{}\",entity=\"{entity}\",operation=\"{op}\"}} {n}",
                label(district)
            );
        }
        out.push_str("# HELP oneroster_sync_last_success_timestamp_seconds When the district last synced successfully.\n");
        out.push_str("# TYPE oneroster_sync_last_success_timestamp_seconds gauge\n");
        for (district, at) in &m.last_success {
            let _ = writeln!(
                out,
                "oneroster_sync_last_success_timestamp_seconds{{district=\"{}\"}} {at}",
                label(district)
            );
        }
        out.push_str(
            "# HELP oneroster_sync_consecutive_failures Failed runs since the last success.\n",
        );
        out.push_str("# TYPE oneroster_sync_consecutive_failures gauge\n");
        for (district, n) in &m.failures {
            let _ = writeln!(
                out,
                "oneroster_sync_consecutive_failures{{district=\"{}\"}} {n}",
                label(district)
            );
        }
        out.push_str(
            "# HELP oneroster_sync_run_duration_seconds Run duration (fetch, diff and apply).\n",
        );
        out.push_str("# TYPE oneroster_sync_run_duration_seconds histogram\n");
        for (district, h) in &m.durations {
            let d = label(district);
            for (bound, n) in DURATION_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "oneroster_sync_run_duration_seconds_bucket{{district=\"{d}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "oneroster_sync_run_duration_seconds_bucket{{district=\"{d}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "oneroster_sync_run_duration_seconds_sum{{district=\"{d}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "oneroster_sync_run_duration_seconds_count{{district=\"{d}\"}} {}",
                h.count
            );
        }
        out.push_str("# HELP oneroster_sync_findings_total Findings by district, code and severity (error: record skipped; warning: stored).\n");
        out.push_str("# TYPE oneroster_sync_findings_total counter\n");
        for ((district, code, severity), n) in &m.findings {
            let _ = writeln!(
                out,
                "oneroster_sync_findings_total{{district=\"{}\",code=\"{code}\",severity=\"{severity}\"}} {n}",
                label(district)
            );
        }
        out.push_str("# HELP oneroster_sync_journal_rows_total Change-journal rows written.\n");
        out.push_str("# TYPE oneroster_sync_journal_rows_total counter\n");
        for (district, n) in &m.journaled {
            let _ = writeln!(
                out,
                "oneroster_sync_journal_rows_total{{district=\"{}\"}} {n}",
                label(district)
            );
        }
        out.push_str("# HELP oneroster_sync_drifted_rows Rows of the roster store the last drift check found changed, missing or added by someone else.\n");
        out.push_str("# TYPE oneroster_sync_drifted_rows gauge\n");
        for (district, n) in &m.drifted {
            let _ = writeln!(
                out,
                "oneroster_sync_drifted_rows{{district=\"{}\"}} {n}",
                label(district)
            );
        }
        out.push_str("# HELP oneroster_sync_held_change_sets Change sets held by a safety limit, waiting for approval.\n");
        out.push_str("# TYPE oneroster_sync_held_change_sets gauge\n");
        for (district, n) in &m.held {
            let _ = writeln!(
                out,
                "oneroster_sync_held_change_sets{{district=\"{}\"}} {n}",
                label(district)
            );
        }
        out.push_str("# HELP oneroster_sync_fetch_duration_seconds Time per OneRoster request (sending, waiting, reading and parsing a page; retries count as requests).\n");
        out.push_str("# TYPE oneroster_sync_fetch_duration_seconds summary\n");
        for (district, (count, sum)) in &m.fetches {
            let d = label(district);
            let _ = writeln!(
                out,
                "oneroster_sync_fetch_duration_seconds_sum{{district=\"{d}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "oneroster_sync_fetch_duration_seconds_count{{district=\"{d}\"}} {count}"
            );
        }
        out
    }
}

/// District ids are `[a-z0-9_-]+`, but escape anyway so the exposition can never break.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Clone)]
struct AppState {
    monitor: Arc<Monitor>,
}

/// Checks the daemon's database in the background until `stop`, for `/readyz` and the
/// scheduler: a query with a short timeout every few seconds, backing off (capped) while it
/// fails. Logs one warning when the database stops answering (then at most once a minute while
/// it stays down, with the cause), and one info line when it is back.
pub async fn watch_database(dbs: Databases, monitor: Arc<Monitor>, stop: CancellationToken) {
    let mut was_up: Option<bool> = None;
    let mut retry = Duration::from_secs(1);
    let mut down_since = std::time::Instant::now();
    let mut last_logged = down_since;
    let mut attempts: u64 = 0;
    loop {
        let answered = matches!(
            tokio::time::timeout(
                DB_PROBE_TIMEOUT,
                sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&dbs.state)
            )
            .await,
            Ok(Ok(1))
        );
        monitor.database_up.store(answered, Ordering::Relaxed);
        let wait = if answered {
            if was_up == Some(false) {
                info!(
                    down_for_s = down_since.elapsed().as_secs(),
                    "database available again"
                );
            }
            retry = Duration::from_secs(1);
            attempts = 0;
            DB_CHECK_INTERVAL
        } else {
            attempts += 1;
            let first = was_up != Some(false);
            if first || last_logged.elapsed() >= DB_DOWN_LOG_EVERY {
                // The pool only says it timed out: a direct attempt says why.
                let cause = match dbs.check().await {
                    Err(e) => crate::telemetry::error_chain(&e),
                    Ok(()) => "it answered a new connection but not the pool".to_owned(),
                };
                if first {
                    down_since = std::time::Instant::now();
                    warn!(error = %cause, "database unavailable: not scheduling runs until it answers; /readyz answers 503");
                } else {
                    warn!(error = %cause, attempts, down_for_s = down_since.elapsed().as_secs(), "database still unavailable");
                }
                last_logged = std::time::Instant::now();
            }
            let wait = retry;
            retry = (retry * 2).min(DB_RETRY_MAX);
            wait
        };
        was_up = Some(answered);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Binds `[daemon] listen` (a bad address fails the start; port 0 takes a free port, which the
/// start-up line names).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HealthError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })
}

/// Serves the probes and metrics on an already bound listener until `shutdown`.
pub fn serve(
    listener: tokio::net::TcpListener,
    monitor: Arc<Monitor>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let bound = listener.local_addr().ok();
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState { monitor });
    info!(listen = %bound.map_or_else(String::new, |a| a.to_string()), "health and metrics listener started");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            error!(error = %e, "health and metrics listener stopped");
        }
    })
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the database answered its last check (kept by [`watch_database`]: nothing on
/// the request path waits for it) and the scheduler loop is alive.
async fn readyz(State(app): State<AppState>) -> (StatusCode, String) {
    let db_ok = app.monitor.database_up();
    let scheduler_ok = app.monitor.scheduler_alive();
    let status = if db_ok && scheduler_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "down" };
    (
        status,
        format!(
            "database {}\nscheduler {}\n",
            word(db_ok),
            word(scheduler_ok)
        ),
    )
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.monitor.render(),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("unreadable answer from {addr}")]
    BadResponse { addr: SocketAddr },
}

/// GETs `http://addr/readyz` and returns the status code (for the `healthcheck` command; a
/// plain HTTP/1.0 exchange on loopback needs no HTTP client).
pub async fn probe_ready(addr: SocketAddr, timeout: Duration) -> Result<u16, ProbeError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        let request = format!("GET /readyz HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        let text = String::from_utf8_lossy(&answer);
        // "HTTP/1.1 200 OK"
        text.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or(ProbeError::BadResponse { addr })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProbeError::Timeout { addr, timeout })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Entity;
    use crate::sync::EntityCounts;

    fn report(district: &str, outcome: Outcome, users_created: i64, ms: u64) -> RunReport {
        let mut counts = BTreeMap::new();
        counts.insert(
            Entity::Users,
            EntityCounts {
                fetched: 10,
                created: users_created,
                ..EntityCounts::default()
            },
        );
        RunReport {
            run_id: uuid::Uuid::nil(),
            district: district.to_owned(),
            outcome,
            dry_run: false,
            pull: crate::sync::PullKind::Full,
            full_pull: true,
            pull_reason: None,
            started_at: Utc::now(),
            finished_at: Utc::now(),
            duration_ms: ms,
            revision: None,
            counts,
            findings: Default::default(),
            samples: Default::default(),
            hold: None,
            phases_ms: Default::default(),
            fetch: oneroster_sync_fetch(ms),
            journaled: 0,
            error: None,
        }
    }

    fn oneroster_sync_fetch(ms: u64) -> crate::sync::FetchStats {
        crate::sync::FetchStats {
            requests: 4,
            retries: 1,
            request_ms: ms / 2,
        }
    }

    #[test]
    fn metrics_count_runs_records_and_durations() {
        let m = Monitor::default();
        m.record_run(&report("a", Outcome::Applied, 3, 2_000));
        m.record_run(&report("a", Outcome::Failed, 0, 20_000));
        m.record_run(&report("a", Outcome::Applied, 2, 500));
        let text = m.render();
        assert!(text.contains("oneroster_sync_runs_total{district=\"a\",outcome=\"applied\"} 2\n"));
        assert!(text.contains("oneroster_sync_runs_total{district=\"a\",outcome=\"failed\"} 1\n"));
        assert!(text.contains(
            "oneroster_sync_records_total{district=\"a\",entity=\"users\",operation=\"created\"} 5\n"
        ));
        assert!(text.contains(
            "oneroster_sync_records_total{district=\"a\",entity=\"users\",operation=\"fetched\"} 30\n"
        ));
        assert!(
            text.contains(
                "oneroster_sync_run_duration_seconds_bucket{district=\"a\",le=\"1\"} 1\n"
            )
        );
        assert!(
            text.contains(
                "oneroster_sync_run_duration_seconds_bucket{district=\"a\",le=\"5\"} 2\n"
            )
        );
        assert!(text.contains(
            "oneroster_sync_run_duration_seconds_bucket{district=\"a\",le=\"+Inf\"} 3\n"
        ));
        assert!(text.contains("oneroster_sync_last_success_timestamp_seconds{district=\"a\"}"));
        // 3 runs x 4 requests; (2 + 20 + 0.5) s of runs, half of it fetching.
        assert!(
            text.contains("oneroster_sync_fetch_duration_seconds_count{district=\"a\"} 12\n"),
            "{text}"
        );
        assert!(
            text.contains("oneroster_sync_fetch_duration_seconds_sum{district=\"a\"} 11.25\n"),
            "{text}"
        );
    }

    #[test]
    fn readiness_needs_a_recent_tick_and_no_shutdown() {
        let m = Monitor::default();
        assert!(!m.scheduler_alive());
        m.tick();
        assert!(m.scheduler_alive());
        m.stopping();
        assert!(!m.scheduler_alive());
    }
}
