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

/// What the simulator's wire sends the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OneRoster 1.1 (`role` and `orgs`).
    V1p1,
    /// 1.1 with 1.2's `roles[]` beside `role` (`SimConfig::v1p1_roles`).
    V1p1Roles,
    /// OneRoster 1.2.
    V1p2,
}

/// The version the end-to-end tests speak: `TEST_ONEROSTER_VERSION=1.2` runs them against the
/// simulator's 1.2 wire (`scripts/test` runs them on both).
pub fn wire() -> Wire {
    match std::env::var("TEST_ONEROSTER_VERSION").as_deref() {
        Ok("1.2") => Wire::V1p2,
        _ => Wire::V1p1,
    }
}

/// The simulator's root for [`wire`], with the `oneroster_version` key naming it.
pub fn version_toml(sim: &SimHandle) -> String {
    root_toml(sim, wire())
}

/// The `base_url` (and `oneroster_version`) lines of one wire.
pub fn root_toml(sim: &SimHandle, wire: Wire) -> String {
    match wire {
        Wire::V1p2 => format!(
            "base_url = \"{}\"\noneroster_version = \"1.2\"\n",
            sim.base_url_v1p2()
        ),
        _ => format!("base_url = \"{}\"\n", sim.base_url()),
    }
}

/// A district entry for the simulator (OAuth2 with its credentials) plus `extra` keys.
pub fn district_toml(sim: &SimHandle, id: &str, extra: &str) -> String {
    district_toml_at(sim, id, &version_toml(sim), extra)
}

/// [`district_toml`] with its own `root` lines (`base_url`, `oneroster_version`).
pub fn district_toml_at(sim: &SimHandle, id: &str, root: &str, extra: &str) -> String {
    let c = sim.credentials();
    format!(
        "[[districts]]\nid = \"{id}\"\n{root}token_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n\
         page_size = 500\nmax_retries = 2\n{extra}\n",
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

/// Gives a simulated user `role` on both wires: the 1.1 `role` and every 1.2 role assignment
/// (`""`: none at all).
pub fn set_role(u: &mut oneroster_sim::User, role: &str) {
    u.role = role.to_owned().into();
    if role.is_empty() {
        u.roles.clear();
    }
    for r in &mut u.roles {
        r.role = role.to_owned().into();
    }
}

/// Attaches a simulated user to one more org on both wires: 1.1's `orgs`, and a secondary
/// role assignment (the primary role at that org) on 1.2's `roles[]`.
pub fn add_org(u: &mut oneroster_sim::User, org: &str) {
    u.orgs.push(org.to_owned());
    let role = u
        .roles
        .iter()
        .find(|r| r.is_primary())
        .map(|r| r.role.clone());
    if let Some(role) = role {
        u.roles.push(oneroster_sim::RoleAssignment {
            role_type: "secondary".into(),
            role,
            org: org.to_owned(),
            user_profile: None,
            begin_date: None,
            end_date: None,
        });
    }
}

/// Detaches a simulated user from every org on both wires (on 1.2, role assignments with an
/// empty org reference).
pub fn clear_orgs(u: &mut oneroster_sim::User) {
    u.orgs.clear();
    u.primary_org = None;
    for r in &mut u.roles {
        r.org.clear();
    }
}
