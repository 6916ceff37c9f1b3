//! Failing fast and saying why when the database is not there: one-shot commands against a
//! refused or missing database, and the daemon on a PostgreSQL cluster of its own that the test
//! stops and starts (the throwaway `scripts/pg` clusters, on a free port).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oneroster_sim::{Counts, SimConfig};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::health::get;
use crate::support::{DISTRICT, admin_url, district_toml, output_text, run_binary, write_config};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scripts_pg() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg")
}

/// A cluster of the test's own, in a temporary directory: started on demand, stopped on drop.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn start(&self) {
        let out = std::process::Command::new(scripts_pg())
            .arg("start")
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&self) {
        let _ = std::process::Command::new(scripts_pg())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn commands_fail_within_seconds_naming_the_cause() {
    let sim = oneroster_sim::spawn(SimConfig::new(7, Counts::tiny()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let refused = format!("postgres://postgres@127.0.0.1:{}/none", free_port());
    let config = write_config(
        dir.path(),
        &refused,
        None,
        &district_toml(&sim, DISTRICT, ""),
    );
    for args in [
        vec!["sync", "--district", DISTRICT],
        vec!["status"],
        vec!["approve", "--district", DISTRICT],
        vec!["migrate"],
        vec!["history", "--district", DISTRICT],
    ] {
        let started = Instant::now();
        let out = run_binary(&config, &args, &[]).await;
        let took = started.elapsed();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            output_text(&out)
        );
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot connect to the state database"),
            "{stderr}"
        );
        assert!(stderr.to_lowercase().contains("refused"), "{stderr}");
        assert!(!stderr.contains("pool timed out"), "{stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: a result on stdout");
    }
    // A database that does not exist, on a server that answers: its own words.
    let missing = admin_url().replace("/postgres", "/no_such_database_5f2");
    let config = write_config(
        dir.path(),
        &missing,
        None,
        &district_toml(&sim, DISTRICT, ""),
    );
    let out = run_binary(&config, &["status"], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[tokio::test]
async fn healthcheck_gives_up_within_two_seconds() {
    // A listener that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "postgres://postgres@127.0.0.1:1/none",
        None,
        &format!("[daemon]\nlisten = \"{addr}\"\n"),
    );
    let started = Instant::now();
    let out = run_binary(&config, &["healthcheck"], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        started.elapsed() < Duration::from_millis(2_900),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

/// The daemon's stdout (JSON log lines), collected as it goes.
struct Logs(Arc<Mutex<Vec<Value>>>);

impl Logs {
    fn has(&self, f: impl Fn(&Value) -> bool) -> bool {
        self.0.lock().unwrap().iter().any(f)
    }

    fn count(&self, f: impl Fn(&Value) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|l| f(l)).count()
    }

    async fn wait(&self, what: &str, deadline: Duration, f: impl Fn(&Value) -> bool) {
        let started = Instant::now();
        while started.elapsed() < deadline {
            if self.has(&f) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let lines: Vec<String> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect();
        panic!("no {what} within {deadline:?}:\n{}", lines.join("\n"));
    }
}

fn message(l: &Value) -> &str {
    l["message"].as_str().unwrap_or_default()
}

/// `/readyz` answers at once (well within a probe's 1 s) with this status.
async fn assert_ready_is(addr: std::net::SocketAddr, status: &str) {
    let started = Instant::now();
    let answer = get(addr, "/readyz").await;
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert!(
        answer.starts_with(&format!("HTTP/1.0 {status}")),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_waits_for_its_database_answers_its_probes_and_tells_each_outage() {
    let cluster = Cluster::new();
    let sim = oneroster_sim::spawn(SimConfig::new(7, Counts::tiny()))
        .await
        .unwrap();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &cluster.url(),
        None,
        &format!(
            "[daemon]\nlisten = \"{listen}\"\nheartbeat_interval = \"1s\"\n\n{}",
            district_toml(&sim, DISTRICT, "interval = \"1s\"")
        ),
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_oneroster-sync"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let stdout = child.stdout.take().unwrap();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                sink.lock().unwrap().push(v);
            }
        }
    });
    let logs = Logs(lines);

    // No database: the listener is up, the warning says so at once, /readyz is 503.
    logs.wait("the unavailable warning", Duration::from_secs(3), |l| {
        l["level"] == "WARN" && message(l).starts_with("database unavailable")
    })
    .await;
    assert!(
        logs.has(|l| message(l).starts_with("database unavailable")
            && l["error"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase()
                .contains("refused")),
        "the cause is named"
    );
    assert!(get(listen, "/healthz").await.starts_with("HTTP/1.0 200"));
    assert_ready_is(listen, "503").await;
    assert!(!logs.has(|l| message(l) == "daemon started"));

    // The database comes: the daemon starts scheduling and becomes ready.
    cluster.start();
    logs.wait("a run", Duration::from_secs(30), |l| {
        message(l) == "run summary" && l["outcome"] == "applied"
    })
    .await;
    assert!(logs.has(|l| message(l) == "database available again"));
    assert_ready_is(listen, "200").await;

    // Lost under the running daemon: one warning when noticed, one info line when back.
    let before = logs.count(|l| message(l).starts_with("database unavailable"));
    cluster.stop();
    logs.wait("the outage warning", Duration::from_secs(10), |l| {
        message(l).starts_with("database unavailable")
    })
    .await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        if get(listen, "/readyz").await.starts_with("HTTP/1.0 503") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ready_is(listen, "503").await;
    let back = logs.count(|l| message(l) == "database available again");
    cluster.start();
    let started = Instant::now();
    while logs.count(|l| message(l) == "database available again") == back {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no recovery line"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        logs.count(|l| message(l).starts_with("database unavailable")),
        before + 1,
        "one warning per outage"
    );
    let ready = Instant::now();
    while !get(listen, "/readyz").await.starts_with("HTTP/1.0 200") {
        assert!(ready.elapsed() < Duration::from_secs(10), "not ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pid = child.id().unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("stops after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
