//! Shared test fixtures: a fresh database per test on the throwaway cluster that `scripts/test`
//! starts (`TEST_DATABASE_URL`), config files pointing at an in-process simulator, the
//! [`Harness`] every test file builds on, and the real binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use oneroster_sim::{Counts, SimConfig, SimHandle};
use oneroster_sync::config::Settings;
use oneroster_sync::db::Databases;
use oneroster_sync::sync::{RunOptions, RunReport, run_once};
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;

pub const DISTRICT: &str = "lakeside";

/// A fresh database, a running simulator, and a configuration with one district on it.
pub struct Harness {
    pub db: TestDb,
    pub sim: SimHandle,
    /// Keeps the config directory alive for the test.
    pub _dir: TempDir,
    pub config: PathBuf,
    pub settings: Settings,
    pub dbs: Databases,
}

/// A district entry for the simulator (OAuth2 with its credentials) plus `extra` keys.
pub fn district_toml(sim: &SimHandle, id: &str, extra: &str) -> String {
    let c = sim.credentials();
    format!(
        "[[districts]]\nid = \"{id}\"\nbase_url = \"{}\"\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n\
         page_size = 500\nmax_retries = 2\n{extra}\n",
        sim.base_url(),
        sim.token_url(),
        c.client_id,
        c.client_secret
    )
}

impl Harness {
    pub async fn new(counts: Counts) -> Harness {
        Harness::with(SimConfig::new(7, counts), None, "").await
    }

    /// The default district entry with `extra` keys, optionally with a separate store.
    pub async fn with(sim: SimConfig, store: Option<&TestDb>, extra: &str) -> Harness {
        let extra = extra.to_owned();
        Harness::build(sim, store, move |s| district_toml(s, DISTRICT, &extra)).await
    }

    /// A harness whose district entry (or entries) `entry` writes.
    pub async fn build(
        sim: SimConfig,
        store: Option<&TestDb>,
        entry: impl FnOnce(&SimHandle) -> String,
    ) -> Harness {
        let db = TestDb::new().await;
        let sim = oneroster_sim::spawn(sim).await.expect("start simulator");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_config(
            dir.path(),
            &db.url,
            store.map(|s| s.url.as_str()),
            &entry(&sim),
        );
        let settings = Settings::load(&config).expect("test config loads");
        let dbs = Databases::connect(&settings).await.expect("connect");
        dbs.migrate().await.expect("migrate");
        Harness {
            db,
            sim,
            _dir: dir,
            config,
            settings,
            dbs,
        }
    }

    pub async fn sync(&self) -> RunReport {
        self.sync_with(RunOptions::default()).await
    }

    pub async fn sync_with(&self, options: RunOptions) -> RunReport {
        let district = self.settings.district(DISTRICT).expect("the test district");
        run_once(&self.dbs, district, options).await
    }
}

/// A database of its own for one test, on the test cluster.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").expect(
        "TEST_DATABASE_URL is not set: run the tests with scripts/test, which starts a throwaway PostgreSQL",
    )
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin = admin_url();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("connect to the test cluster");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .expect("database url");
        TestDb {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    /// A plain-text dump of the whole database (schema and data), for byte-for-byte
    /// comparisons and canary searches.
    pub fn dump(&self) -> String {
        self.dump_with(&[])
    }

    /// A dump of some schemas only (e.g. `roster`), data included.
    pub fn dump_schemas(&self, schemas: &[&str]) -> String {
        let args: Vec<String> = schemas.iter().map(|s| format!("--schema={s}")).collect();
        self.dump_with(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// A dump of the tables matching a pattern (e.g. `sync.mirror_*`).
    pub fn dump_tables(&self, pattern: &str) -> String {
        self.dump_with(&[&format!("--table={pattern}")])
    }

    fn dump_with(&self, extra: &[&str]) -> String {
        let pg_dump = find_pg_bin("pg_dump");
        let out = std::process::Command::new(pg_dump)
            .args(["--no-owner", "--no-privileges", "--inserts"])
            .args(extra)
            .arg(&self.url)
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // pg_dump (15.14+) brackets its output with a random \restrict key: not content.
        String::from_utf8(out.stdout)
            .expect("utf-8 dump")
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn find_pg_bin(name: &str) -> PathBuf {
    let mut candidates = vec![];
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            candidates.push(e.path().join("bin").join(name));
        }
    }
    candidates.sort();
    candidates
        .into_iter()
        .rev()
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs the real `oneroster-sync` binary with a config file (without blocking the test's
/// runtime, which serves the in-process simulator).
pub async fn run_binary(config: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_oneroster-sync"));
    cmd.arg("--config").arg(config).args(args);
    cmd.env_remove("DATABASE_URL").env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().await.expect("run oneroster-sync")
}

pub fn output_text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes a configuration file with the given database(s) and raw district TOML.
pub fn write_config(
    dir: &Path,
    database_url: &str,
    store_url: Option<&str>,
    districts: &str,
) -> PathBuf {
    let store = store_url
        .map(|u| format!("[store]\nurl = \"{u}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "[database]\nurl = \"{database_url}\"\n{store}\n[log]\nformat = \"json\"\nlevel = \"info\"\n\n{districts}\n"
    );
    let path = dir.join("oneroster-sync.toml");
    std::fs::write(&path, text).expect("write config");
    path
}
