//! The daemon (`run`) as operators run it: real processes of the binary, real HTTP against
//! simulators, a real PostgreSQL. Schedules, replicas, shutdown, crashes and failing districts.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use oneroster_sim::{Counts, Faults, SimConfig, SimHandle};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::{DISTRICT, Harness, district_toml};
use crate::support::{TestDb, write_config};
use crate::sync::{assert_store_eq, expected, store_rows};

/// A `run` process with its stdout (JSON log lines) collected as it goes.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_oneroster-sync"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .env_remove("DATABASE_URL")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start oneroster-sync run");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Daemon { child, lines }
    }

    /// The JSON log lines so far.
    fn logs(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (bounded) until a log line satisfies `pred`.
    async fn wait_for_log(&self, what: &str, deadline: Duration, pred: impl Fn(&Value) -> bool) {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if self.logs().iter().any(&pred) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no log line {what} within {deadline:?}; logs:\n{}",
            self.lines.lock().unwrap().join("\n")
        );
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("daemon still running")
    }

    async fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success());
    }

    async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        tokio::time::timeout(deadline, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("daemon did not exit within {deadline:?}"))
            .expect("wait for daemon")
    }

    /// SIGTERM and a clean exit (status 0) within `deadline`.
    async fn stop(&mut self, deadline: Duration) {
        self.sigterm().await;
        let status = self.wait_exit(deadline).await;
        assert!(status.success(), "daemon exited with {status}");
        self.wait_for_log("\"daemon stopped\"", Duration::from_secs(2), |l| {
            message(l) == "daemon stopped"
        })
        .await;
    }
}

fn message(line: &Value) -> &str {
    line["message"].as_str().unwrap_or("")
}

/// The district of a line: its own field, or the run span's.
fn district_of(line: &Value) -> &str {
    line["district"]
        .as_str()
        .or_else(|| line["span"]["district"].as_str())
        .unwrap_or("")
}

#[derive(Debug, sqlx::FromRow)]
struct RunRow {
    started: DateTime<Utc>,
    finished: Option<DateTime<Utc>>,
    outcome: String,
    full_pull: bool,
    /// full, delta or unchanged
    pull: Option<String>,
}

async fn runs(db: &TestDb, district: &str) -> Vec<RunRow> {
    let mut conn = db.connect().await;
    sqlx::query_as(
        "SELECT started_at AS started, finished_at AS finished, outcome, full_pull, pull
         FROM sync.runs WHERE district_id = $1 ORDER BY started_at",
    )
    .bind(district)
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// Waits (bounded) until the district has at least `n` runs with one of `outcomes`.
async fn wait_for_runs(
    db: &TestDb,
    district: &str,
    outcomes: &[&str],
    n: usize,
    deadline: Duration,
) {
    let start = Instant::now();
    loop {
        let done = runs(db, district)
            .await
            .iter()
            .filter(|r| outcomes.contains(&r.outcome.as_str()))
            .count();
        if done >= n {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "district {district}: {done} of {n} runs ({outcomes:?}) within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs of one district never overlap: each starts after the previous one finished.
fn assert_no_overlap(district: &str, runs: &[RunRow]) {
    for pair in runs.windows(2) {
        let finished = pair[0]
            .finished
            .unwrap_or_else(|| panic!("{district}: a run never finished: {pair:?}"));
        assert!(
            pair[1].started >= finished,
            "{district}: overlapping runs {pair:?}"
        );
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn tiny_sim(seed: u64) -> SimHandle {
    oneroster_sim::spawn(SimConfig::new(seed, Counts::tiny()))
        .await
        .expect("start simulator")
}

/// A config with a `[daemon]` section and the given district tables.
fn daemon_config(dir: &Path, db: &TestDb, daemon: &str, districts: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &db.url,
        None,
        &format!("[daemon]\nheartbeat_interval = \"1s\"\n{daemon}\n\n{districts}"),
    )
}

/// Applies the migrations, so the test can read `sync.runs` before the daemon is up.
async fn migrate(config: &Path) {
    let out = crate::support::run_binary(config, &["migrate"], &[]).await;
    assert!(
        out.status.success(),
        "{}",
        crate::support::output_text(&out)
    );
}

async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn districts_run_on_their_own_schedules_and_a_slow_one_does_not_delay_another() {
    let db = TestDb::new().await;
    let fast = tiny_sim(1).await;
    let slow = tiny_sim(2).await;
    // Every request to the slow district takes 400 ms: a run of it lasts seconds.
    slow.set_faults(Faults {
        delay: Some(Duration::from_millis(400)),
        ..Faults::default()
    });
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = daemon_config(
        dir.path(),
        &db,
        &format!("listen = \"127.0.0.1:{port}\""),
        &format!(
            "{}{}",
            district_toml(&fast, "fast", "interval = \"2s\""),
            district_toml(&slow, "slow", "interval = \"5s\"")
        ),
    );
    migrate(&config).await;
    let mut daemon = Daemon::start(&config);
    daemon
        .wait_for_log("\"daemon started\"", Duration::from_secs(10), |l| {
            message(l) == "daemon started"
        })
        .await;
    let started = Instant::now();
    let start_line = daemon
        .logs()
        .into_iter()
        .find(|l| message(l) == "daemon started")
        .unwrap();
    let schedules = start_line["districts"].as_str().unwrap().to_owned();
    assert!(schedules.contains("fast: every 2s") && schedules.contains("slow: every 5s"));

    // Three fast runs complete while the slow district is still in its first run or just past.
    wait_for_runs(
        &db,
        "fast",
        &["applied", "nothing_to_do"],
        3,
        Duration::from_secs(15),
    )
    .await;

    // Health and metrics while it runs.
    let ready = http_get(port, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.0 200"), "{ready}");
    assert!(http_get(port, "/healthz").await.starts_with("HTTP/1.0 200"));
    let metrics = http_get(port, "/metrics").await;
    assert!(
        metrics.contains("oneroster_sync_runs_total{district=\"fast\",outcome=\"applied\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("oneroster_sync_last_success_timestamp_seconds{district=\"fast\"}"));
    assert!(
        metrics.contains("oneroster_sync_fetch_duration_seconds_count{district=\"fast\"}"),
        "{metrics}"
    );
    let check = crate::support::run_binary(&config, &["healthcheck"], &[]).await;
    assert!(check.status.success(), "healthcheck: {check:?}");

    while started.elapsed() < Duration::from_secs(9) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.stop(Duration::from_secs(10)).await;
    let window = started.elapsed().as_secs_f64();

    let fast_runs = runs(&db, "fast").await;
    let slow_runs = runs(&db, "slow").await;
    assert_no_overlap("fast", &fast_runs);
    assert_no_overlap("slow", &slow_runs);
    for r in fast_runs.iter().chain(&slow_runs) {
        assert!(
            matches!(r.outcome.as_str(), "applied" | "nothing_to_do"),
            "{r:?}"
        );
    }
    // Every 2 s (plus the run itself) for ~9 s, and never more often than the interval.
    assert!(
        (3..=(window / 2.0) as usize + 1).contains(&fast_runs.len()),
        "fast: {} runs in {window:.1}s",
        fast_runs.len()
    );
    for pair in fast_runs.windows(2) {
        let gap = (pair[1].started - pair[0].finished.unwrap()).num_milliseconds();
        assert!(gap >= 1_900, "fast ran again after {gap} ms: {pair:?}");
    }
    assert!(
        (1..=2).contains(&slow_runs.len()),
        "slow: {} runs in {window:.1}s",
        slow_runs.len()
    );
    // The fast district ran (more than once) while the slow one's first run was going on.
    let slow_first = &slow_runs[0];
    let during = fast_runs
        .iter()
        .filter(|f| f.started > slow_first.started && f.finished <= slow_first.finished)
        .count();
    assert!(
        during >= 1,
        "no fast run during the slow run {slow_first:?}: {fast_runs:?}"
    );

    // Heartbeats for both districts, with their state.
    let logs = daemon.logs();
    for d in ["fast", "slow"] {
        assert!(
            logs.iter().any(|l| message(l) == "heartbeat"
                && district_of(l) == d
                && l["state"].is_string()
                && l["consecutive_failures"] == 0
                && l["next_run_at"].is_string()
                && l["last_success_at"].is_string()),
            "no heartbeat for {d}"
        );
    }
    // Readiness goes away with the process.
    let gone = crate::support::run_binary(&config, &["healthcheck"], &[]).await;
    assert!(!gone.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sync_each_district_once_per_interval() {
    let db = TestDb::new().await;
    let a = tiny_sim(3).await;
    let b = tiny_sim(4).await;
    let dir = tempfile::tempdir().unwrap();
    let config = daemon_config(
        dir.path(),
        &db,
        "",
        &format!(
            "{}{}",
            district_toml(&a, "alpha", "interval = \"2s\""),
            district_toml(&b, "beta", "interval = \"3s\"")
        ),
    );
    // Migrated first so the two replicas start on an equal footing.
    migrate(&config).await;
    let mut one = Daemon::start(&config);
    let mut two = Daemon::start(&config);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(9) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    one.stop(Duration::from_secs(10)).await;
    two.stop(Duration::from_secs(10)).await;
    let window = started.elapsed().as_secs_f64();

    for (district, sim, interval) in [("alpha", &a, 2.0), ("beta", &b, 3.0)] {
        let rows = runs(&db, district).await;
        assert_no_overlap(district, &rows);
        // Once per interval between the two of them: a double run would about double this.
        let most = (window / interval) as usize + 1;
        assert!(
            (2..=most).contains(&rows.len()),
            "{district}: {} runs in {window:.1}s with interval {interval}s (at most {most})",
            rows.len()
        );
        // The simulator saw exactly one pull per recorded run: one orgs page per full pull;
        // for the others one orgs request for the collection's total and revision, and for a
        // delta one orgs page more. The first run pulls everything; the others, between full
        // pulls, find the data unchanged (or pull a delta).
        assert!(
            rows[0].full_pull && rows[1..].iter().all(|r| !r.full_pull),
            "{rows:?}"
        );
        let orgs = sim.stats().per_collection.get("orgs").copied().unwrap_or(0);
        let expected: usize = rows
            .iter()
            .map(|r| match r.pull.as_deref() {
                Some("full") => 1,
                Some("delta") => 2,
                _ => 1,
            })
            .sum();
        assert_eq!(orgs, expected as u64, "{district}: orgs requests vs runs");
        // And the two processes' logs account for exactly those runs.
        let summaries = [&one, &two]
            .iter()
            .flat_map(|d| d.logs())
            .filter(|l| message(l) == "run summary" && district_of(l) == district)
            .count();
        assert_eq!(summaries, rows.len(), "{district}: summary lines vs runs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_run_exits_cleanly_and_the_next_start_converges() {
    let h = Harness::with(
        SimConfig::new(5, Counts::tiny()),
        None,
        "interval = \"1s\"\n[daemon]\nshutdown_grace = \"1s\"\nheartbeat_interval = \"1s\"",
    )
    .await;
    // A run that takes several seconds: past the 1 s grace it is dropped.
    h.sim.set_faults(Faults {
        delay: Some(Duration::from_millis(500)),
        ..Faults::default()
    });
    let mut daemon = Daemon::start(&h.config);
    daemon
        .wait_for_log("\"run started\"", Duration::from_secs(10), |l| {
            message(l) == "run started"
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let term = Instant::now();
    daemon.stop(Duration::from_secs(5)).await;
    assert!(
        term.elapsed() < Duration::from_secs(4),
        "{:?}",
        term.elapsed()
    );
    assert!(
        daemon
            .logs()
            .iter()
            .any(|l| message(l).starts_with("shutdown grace elapsed"))
    );
    // The dropped run wrote nothing: the store is still the before state (empty).
    let empty = store_rows(&h.db, DISTRICT).await;
    assert!(empty.values().all(|t| t.is_empty()), "{empty:?}");

    // A second life with a long grace: SIGTERM mid-run lets the run finish and apply.
    let config = std::fs::read_to_string(&h.config)
        .unwrap()
        .replace("shutdown_grace = \"1s\"", "shutdown_grace = \"30s\"");
    std::fs::write(&h.config, config).unwrap();
    h.sim.set_faults(Faults {
        delay: Some(Duration::from_millis(100)),
        ..Faults::default()
    });
    let mut daemon = Daemon::start(&h.config);
    daemon
        .wait_for_log("\"run started\"", Duration::from_secs(10), |l| {
            message(l) == "run started"
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    daemon.stop(Duration::from_secs(30)).await;
    let last = runs(&h.db, DISTRICT).await.pop().unwrap();
    assert_eq!(last.outcome, "applied", "{last:?}");
    let want = expected(&h.sim.snapshot(), &Default::default());
    assert_store_eq(&store_rows(&h.db, DISTRICT).await, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_apply_leaves_the_store_consistent_and_the_next_run_converges() {
    let h = Harness::with(
        SimConfig::new(6, Counts::tiny()),
        None,
        "interval = \"1s\"\n[daemon]\nheartbeat_interval = \"1s\"",
    )
    .await;
    // Hold the enrollments table so the apply stops in the middle of its transaction (orgs to
    // users already written in it), where we kill the process.
    let mut blocker = h.db.connect().await;
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE roster.enrollments IN EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let mut daemon = Daemon::start(&h.config);
    let mut watcher = h.db.connect().await;
    let start = Instant::now();
    let apply_pid: i32 = loop {
        let waiting: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
               AND wait_event_type = 'Lock' AND query ILIKE '%roster.enrollments%'",
        )
        .fetch_optional(&mut watcher)
        .await
        .unwrap();
        if let Some(pid) = waiting {
            break pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the apply never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    daemon.child.start_kill().unwrap();
    let status = daemon.wait_exit(Duration::from_secs(5)).await;
    assert!(
        !status.success(),
        "kill -9 should not look like a clean exit"
    );
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    // The orphaned backend notices its client is gone and rolls back.
    let start = Instant::now();
    loop {
        let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(apply_pid)
            .fetch_one(&mut watcher)
            .await
            .unwrap();
        if alive == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "backend {apply_pid} lingers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing of the interrupted apply is visible: store and mirror are the before state.
    let empty = store_rows(&h.db, DISTRICT).await;
    assert!(
        empty.values().all(|t| t.is_empty()),
        "half-applied: {empty:?}"
    );
    let mirrored: i64 = sqlx::query_scalar("SELECT count(*) FROM sync.mirror_users")
        .fetch_one(&mut watcher)
        .await
        .unwrap();
    assert_eq!(mirrored, 0);

    // The next start converges on the source.
    let before = runs(&h.db, DISTRICT).await.len();
    let mut daemon = Daemon::start(&h.config);
    let start = Instant::now();
    loop {
        let rows = runs(&h.db, DISTRICT).await;
        if rows[before.min(rows.len())..]
            .iter()
            .any(|r| r.outcome == "applied")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no applied run after restart: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop(Duration::from_secs(10)).await;
    let want = expected(&h.sim.snapshot(), &Default::default());
    assert_store_eq(&store_rows(&h.db, DISTRICT).await, &want);
    // The killed run is accounted for in the history, not left "running" forever.
    let rows = runs(&h.db, DISTRICT).await;
    assert!(rows.iter().all(|r| r.outcome != "running"), "{rows:?}");
    assert!(rows.iter().any(|r| r.outcome == "abandoned"), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_district_whose_server_is_down_backs_off_and_is_quarantined_while_another_syncs() {
    let db = TestDb::new().await;
    let up = tiny_sim(7).await;
    let closed = free_port();
    let down = format!(
        "[[districts]]\nid = \"down\"\nbase_url = \"http://127.0.0.1:{closed}/ims/oneroster/v1p1\"\n\
         token_url = \"http://127.0.0.1:{closed}/oauth2/token\"\nclient_id = \"x\"\nclient_secret = \"y\"\n\
         max_retries = 0\nconnect_timeout = \"1s\"\ninterval = \"1s\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = daemon_config(
        dir.path(),
        &db,
        "quarantine_after = 2",
        &format!("{}{down}", district_toml(&up, "up", "interval = \"1s\"")),
    );
    migrate(&config).await;
    let mut daemon = Daemon::start(&config);
    // Failures 1 and 2 (1 s apart), then 2 s of backoff before the third.
    wait_for_runs(&db, "down", &["failed"], 3, Duration::from_secs(20)).await;
    daemon
        .wait_for_log("quarantine error", Duration::from_secs(5), |l| {
            l["level"] == "ERROR" && district_of(l) == "down" && message(l).contains("quarantined")
        })
        .await;
    daemon
        .wait_for_log("quarantined heartbeat", Duration::from_secs(5), |l| {
            message(l) == "heartbeat" && district_of(l) == "down" && l["state"] == "quarantined"
        })
        .await;
    wait_for_runs(
        &db,
        "up",
        &["applied", "nothing_to_do"],
        3,
        Duration::from_secs(10),
    )
    .await;
    daemon.stop(Duration::from_secs(10)).await;

    // `status` shows the states.
    let status = crate::support::run_binary(&config, &["status"], &[]).await;
    let text = crate::support::output_text(&status);
    assert!(status.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("down ") && l.contains("quarantined")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("up ") && l.contains("idle")),
        "{text}"
    );

    let logs = daemon.logs();
    assert!(
        logs.iter()
            .any(|l| message(l) == "run failed: backing off" && district_of(l) == "down")
    );
    // The healthy district is never quarantined nor failing.
    assert!(
        !logs
            .iter()
            .any(|l| district_of(l) == "up" && l["level"] == "ERROR")
    );
    let up_runs = runs(&db, "up").await;
    assert!(up_runs.iter().all(|r| r.outcome != "failed"), "{up_runs:?}");

    // Backoff: the gap before each retry grows.
    let down_runs = runs(&db, "down").await;
    let gaps: Vec<i64> = down_runs
        .windows(2)
        .map(|p| (p[1].started - p[0].finished.unwrap()).num_milliseconds())
        .collect();
    assert!(gaps.len() >= 2, "{down_runs:?}");
    assert!(
        gaps[1] as f64 >= gaps[0] as f64 * 1.5 && gaps[1] >= 1_800,
        "no backoff: gaps {gaps:?}"
    );
    // Meanwhile the healthy district kept its 1 s cadence (no backoff leaked to it).
    for p in up_runs.windows(2) {
        let gap = (p[1].started - p[0].finished.unwrap()).num_milliseconds();
        assert!((900..1_800).contains(&gap), "up waited {gap} ms: {p:?}");
    }
}
