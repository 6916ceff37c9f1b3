//! Configuration: the TOML file (plus one file per district in `districts_dir`), then environment
//! overrides, deserialized once into raw structs with `deny_unknown_fields` and validated into
//! typed settings, so a bad value fails at start with the district's and the key's name.
//!
//! Secrets are held as [`SecretString`] from the moment they are read. No error message built
//! here quotes a secret or a database URL: messages name keys, hosts and file paths only, and the
//! parser errors of the `config`/`toml` crates (which echo the offending source line or value)
//! are rebuilt from their parts before they reach the caller.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;
use url::{Host, Url};

use crate::domain::Entity;

/// Every default of the configuration, in one place (the example config documents the same).
pub mod defaults {
    use std::time::Duration;

    pub const LOG_LEVEL: &str = "info";
    /// `[database]` / `[store]`: one connection attempt.
    pub const DATABASE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const INTERVAL: Duration = Duration::from_secs(60 * 60);
    pub const FULL_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
    pub const DELTA_OVERLAP: Duration = Duration::from_secs(60 * 60);
    pub const PAGE_SIZE: u32 = 1000;
    pub const DRY_RUN: bool = false;
    pub const ENABLED: bool = true;
    pub const CONCURRENCY: usize = 4;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
    pub const MAX_RETRIES: u32 = 6;
    pub const RUN_TIMEOUT: Duration = Duration::from_secs(4 * 60 * 60);
    /// How long the change journal keeps a district's rows (the daemon prunes it).
    pub const JOURNAL_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);
    pub const DEMOGRAPHICS: super::DemographicsMode = super::DemographicsMode::Required;
    /// More than this share of the users holding demographics losing them holds the run
    /// (a change of sharing, more often than of the roster).
    pub const MAX_DEMOGRAPHICS_CLEAR_PERCENT: f64 = 10.0;
    pub const MAX_DEMOGRAPHICS_CLEAR_COUNT: u64 = 500;
    /// Safety limits (CONTRACT §6), per entity type: Clever holds more than 10 % deleted or
    /// 75 % updated; Entra Connect holds 500 deletions; Okta applies percentages only above a
    /// floor of 100.
    pub const MAX_DELETE_PERCENT: f64 = 10.0;
    pub const MAX_DELETE_COUNT: u64 = 500;
    pub const MAX_UPDATE_PERCENT: f64 = 75.0;
    pub const MIN_POPULATION: u64 = 100;

    /// `[daemon]`: districts syncing at once in one process.
    pub const MAX_CONCURRENT_RUNS: usize = 4;
    /// `[daemon]`: consecutive failures after which a district is logged as quarantined.
    pub const QUARANTINE_AFTER: u32 = 5;
    /// `[daemon]`: how long in-flight runs may take to finish after SIGTERM/SIGINT.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    /// `[daemon]`: how often each district's heartbeat line is logged.
    pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(60);
    /// `[daemon]`: the longest a failing district is backed off (also capped by its
    /// `full_interval`, never below its `interval`).
    pub const MAX_BACKOFF: Duration = Duration::from_secs(6 * 60 * 60);
}

/// Limits on numeric district keys (inclusive).
const PAGE_SIZE_RANGE: (i64, i64) = (1, 10_000);
const CONCURRENCY_RANGE: (i64, i64) = (1, 32);
const MAX_RETRIES_RANGE: (i64, i64) = (0, 100);
const MAX_CONCURRENT_RUNS_RANGE: (i64, i64) = (1, 1024);
const QUARANTINE_AFTER_RANGE: (i64, i64) = (1, 1_000_000);

/// Prefix of the environment variables that override `[database]`, `[store]` and `[log]` keys:
/// `ONEROSTER_SYNC__<SECTION>__<KEY>`.
const ENV_PREFIX: &str = "ONEROSTER_SYNC";
const ENV_SEPARATOR: &str = "__";
const ENV_SECTIONS: [&str; 3] = ["database", "store", "log"];

/// A configuration that cannot be used. Every message names where the problem is (the district,
/// file, section or environment variable) and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {what} \"{path}\": {reason}")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The TOML itself does not parse; the message is the parser's, without the source excerpt
    /// (the offending line may hold a secret).
    #[error("{origin}: TOML syntax error at line {line}, column {column}: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{scope}: unknown key \"{key}\"{}", top_level_hint(key))]
    UnknownKey { scope: Scope, key: String },
    #[error("{scope}: key \"{key}\": {problem}")]
    InvalidKey {
        scope: Scope,
        key: String,
        problem: String,
    },
    #[error("{scope}: {problem}")]
    Invalid { scope: Scope, problem: String },
    #[error("database URL: {problem}")]
    DatabaseUrl { problem: String },
}

/// In TOML a key after a `[section]` header belongs to that section, a classic slip for
/// `districts_dir`; point it out.
fn top_level_hint(key: &str) -> &'static str {
    if matches!(
        key,
        "districts_dir" | "database" | "store" | "log" | "daemon" | "districts"
    ) {
        " (top-level keys must come before the first [section] header)"
    } else {
        ""
    }
}

/// Where in the configuration a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The top level of the main config file.
    File,
    /// A section of the main config file, e.g. `[database]`.
    Section(&'static str),
    /// An environment variable (by name; its value is never shown).
    EnvVar(String),
    District {
        /// The declared id, or the default one for a district file; `None` when unknown.
        id: Option<String>,
        origin: DistrictOrigin,
    },
}

/// Where a district was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DistrictOrigin {
    /// The n-th (1-based) inline `[[districts]]` table.
    Inline(usize),
    /// A file in `districts_dir`, shown as `districts_dir` + file name.
    File(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::File => f.write_str("config file"),
            Scope::Section(section) => write!(f, "[{section}]"),
            Scope::EnvVar(name) => write!(f, "environment variable \"{name}\""),
            Scope::District { id, origin } => {
                match id {
                    Some(id) => write!(f, "district \"{id}\"")?,
                    None => f.write_str("district")?,
                }
                match origin {
                    // The id is enough to find an inline district; the index helps when it has none.
                    DistrictOrigin::Inline(n) if id.is_none() => {
                        write!(f, " (inline [[districts]] #{n})")
                    }
                    DistrictOrigin::Inline(_) => Ok(()),
                    DistrictOrigin::File(file) => write!(f, " (file \"{file}\")"),
                }
            }
        }
    }
}

impl Scope {
    fn district(id: &str, origin: &DistrictOrigin) -> Scope {
        Scope::District {
            id: Some(id.to_owned()),
            origin: origin.clone(),
        }
    }

    fn key(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::InvalidKey {
            scope: self.clone(),
            key: key.to_owned(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    /// The roster store's database; `None` means the same database as `[database]`.
    pub store: Option<DatabaseSettings>,
    pub log: LogSettings,
    /// `[daemon]`: how `run` schedules, shuts down and reports.
    pub daemon: DaemonSettings,
    pub districts: Vec<DistrictConfig>,
    /// The config file this was loaded from (empty when loaded from a string).
    pub source: PathBuf,
    /// The resolved `districts_dir`, if one is configured.
    pub districts_dir: Option<PathBuf>,
    /// Where each district's secret comes from, by district id (what `describe` shows).
    pub secret_sources: BTreeMap<String, SecretSource>,
    /// Each district's `pause` windows, by district id (absent: never paused). Days on which
    /// the daemon does not sync the district, e.g. the summer rollover.
    pub pause_windows: BTreeMap<String, Vec<PauseWindow>>,
}

#[derive(Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    /// How long one attempt to connect may take (a refused or unreachable database fails a
    /// command within it, with the driver's cause).
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseSettings { url: <redacted> }")
    }
}

/// The `[daemon]` section: only `run` uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    pub max_concurrent_runs: usize,
    pub quarantine_after: u32,
    pub shutdown_grace: Duration,
    pub heartbeat_interval: Duration,
    pub max_backoff: Duration,
    /// Where `/healthz`, `/readyz` and `/metrics` are served; `None`: no listener.
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            max_concurrent_runs: defaults::MAX_CONCURRENT_RUNS,
            quarantine_after: defaults::QUARANTINE_AFTER,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            heartbeat_interval: defaults::HEARTBEAT_INTERVAL,
            max_backoff: defaults::MAX_BACKOFF,
            listen: None,
        }
    }
}

/// A pause window: the district is not synced on any day from `start` to `end`, both included
/// (UTC dates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseWindow {
    pub start: chrono::NaiveDate,
    pub end: chrono::NaiveDate,
}

impl PauseWindow {
    pub fn contains(&self, day: chrono::NaiveDate) -> bool {
        self.start <= day && day <= self.end
    }
}

impl fmt::Display for PauseWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Json,
            level: defaults::LOG_LEVEL.to_owned(),
        }
    }
}

/// How a district authenticates. For a district with `enabled = false` the secret is not read at
/// load time and is empty here: see [`Settings::with_resolved_secret`].
#[derive(Debug, Clone)]
pub enum AuthConfig {
    OAuth2 {
        token_url: Url,
        client_id: String,
        client_secret: SecretString,
        scope: Option<String>,
    },
    Bearer {
        token: SecretString,
    },
    OAuth1 {
        client_id: String,
        client_secret: SecretString,
    },
}

impl AuthConfig {
    /// The `auth` key's value for this mode.
    pub fn mode(&self) -> &'static str {
        match self {
            AuthConfig::OAuth2 { .. } => "oauth2",
            AuthConfig::Bearer { .. } => "bearer",
            AuthConfig::OAuth1 { .. } => "oauth1",
        }
    }

    fn set_secret(&mut self, secret: SecretString) {
        match self {
            AuthConfig::OAuth2 { client_secret, .. } | AuthConfig::OAuth1 { client_secret, .. } => {
                *client_secret = secret
            }
            AuthConfig::Bearer { token } => *token = secret,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DistrictConfig {
    pub id: String,
    pub base_url: Url,
    pub auth: AuthConfig,
    pub interval: Duration,
    pub full_interval: Duration,
    /// How far before the watermark a delta pull starts asking.
    pub delta_overlap: Duration,
    pub page_size: u32,
    pub dry_run: bool,
    pub enabled: bool,
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub run_timeout: Duration,
    pub demographics: DemographicsMode,
    pub journal_retention: Duration,
    /// Whether an unchanged upstream revision (and totals) may end a run after a handful of
    /// requests.
    pub trust_revision: bool,
    /// Safety limits per entity type (every type has an entry).
    pub limits: BTreeMap<Entity, SafetyLimits>,
    pub demographics_limits: DemographicsLimits,
    /// Which OneRoster version `base_url` serves (`oneroster_version`).
    pub version: OneRosterVersion,
    /// The `userIds` type every user should have (`required_identifier`, audited).
    pub required_identifier: Option<String>,
    /// The schools the district is scoped to (`schools`, `school_identifiers`); `None`: all.
    pub scope: Option<SchoolScope>,
}

impl DistrictConfig {
    /// The settings that shape the stored rows beyond what the server sends, as one text
    /// (`version`: the one the server was read with): a run whose text differs from the last
    /// applied pull's cannot take the unchanged shortcut or a delta.
    pub fn stored_form(&self, version: OneRosterVersion) -> String {
        format!(
            "oneroster={};demographics={};{}",
            version.as_str(),
            self.demographics.as_str(),
            self.scope
                .as_ref()
                .map_or_else(|| "all schools".to_owned(), SchoolScope::fingerprint)
        )
    }
}

/// `oneroster_version = "1.1" | "1.2" | "auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneRosterVersion {
    V1p1,
    V1p2,
    /// Probe the 1.2 root, fall back to 1.1 (`base_url` may name either; the other root is
    /// derived on the same host).
    Auto,
}

impl OneRosterVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            OneRosterVersion::V1p1 => "1.1",
            OneRosterVersion::V1p2 => "1.2",
            OneRosterVersion::Auto => "auto",
        }
    }
}

/// The standard roots of the two versions under a host (`{server}{ROOT}`).
pub const V1P1_ROOT: &str = "/ims/oneroster/v1p1";
pub const V1P2_ROOT: &str = "/ims/oneroster/rostering/v1p2";

/// The schools a district's sync keeps (CONTRACT-level: classes of these schools, their
/// enrollments, and the users attached to or enrolled in them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchoolScope {
    /// `schools`: org `sourcedId`s.
    pub sourced_ids: Vec<String>,
    /// `school_identifiers`: org `identifier`s (the SIS's school numbers).
    pub identifiers: Vec<String>,
}

impl SchoolScope {
    /// A stable text of the scope, so that a changed scope is noticed between runs.
    pub fn fingerprint(&self) -> String {
        format!(
            "schools={};identifiers={}",
            self.sourced_ids.join(","),
            self.identifiers.join(",")
        )
    }
}

/// Whether a district's demographics are pulled (`demographics = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemographicsMode {
    /// Pulled; a failure fails the run (`"required"`, or `true`).
    Required,
    /// Pulled; an endpoint that is forbidden (403) or absent (404) is logged and the run goes
    /// on without (the users' stored demographics are then judged by the clear limit).
    Optional,
    /// Not pulled (`"off"`, or `false`): users are stored without demographics.
    Off,
}

impl DemographicsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DemographicsMode::Required => "required",
            DemographicsMode::Optional => "optional",
            DemographicsMode::Off => "off",
        }
    }

    pub fn pulled(self) -> bool {
        self != DemographicsMode::Off
    }
}

/// When losing stored demographics holds a run (CONTRACT §6, like deletions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemographicsLimits {
    pub max_clear_percent: f64,
    pub max_clear_count: u64,
}

impl Default for DemographicsLimits {
    fn default() -> Self {
        DemographicsLimits {
            max_clear_percent: defaults::MAX_DEMOGRAPHICS_CLEAR_PERCENT,
            max_clear_count: defaults::MAX_DEMOGRAPHICS_CLEAR_COUNT,
        }
    }
}

/// Where a district's client secret (or bearer token) comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// `client_secret_env`: the name of an environment variable.
    Env(String),
    /// `client_secret_file`: a file (resolved against the config file's directory); a trailing
    /// newline is not part of the secret.
    File(PathBuf),
    /// `client_secret`: written in the config file.
    Inline(SecretString),
}

impl SecretSource {
    /// Reads the secret from the process environment or the file.
    pub fn resolve(&self, district: &str) -> Result<SecretString, ConfigError> {
        let scope = Scope::District {
            id: Some(district.to_owned()),
            origin: DistrictOrigin::Inline(0),
        };
        self.resolve_in(&scope, &EnvSource::Process)
    }

    fn resolve_in(&self, scope: &Scope, env: &EnvSource) -> Result<SecretString, ConfigError> {
        match self {
            SecretSource::Env(name) => match env.var(name) {
                Some(value) if !value.is_empty() => Ok(SecretString::from(value)),
                Some(_) => Err(scope.key(
                    "client_secret_env",
                    format!("environment variable \"{name}\" is empty"),
                )),
                None => Err(scope.key(
                    "client_secret_env",
                    format!("environment variable \"{name}\" is not set"),
                )),
            },
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    scope.key(
                        "client_secret_file",
                        format!("cannot read \"{}\": {e}", path.display()),
                    )
                })?;
                // Files written by `echo` or editors end in a newline that is not the secret.
                let secret = text.trim_end_matches(['\n', '\r']);
                if secret.is_empty() {
                    return Err(scope.key(
                        "client_secret_file",
                        format!("\"{}\" is empty", path.display()),
                    ));
                }
                Ok(SecretString::from(secret))
            }
            SecretSource::Inline(secret) => Ok(secret.clone()),
        }
    }

    /// How `check-config` shows the source: never the secret itself.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Env(name) => format!("env {name}"),
            SecretSource::File(path) => format!("file {}", path.display()),
            SecretSource::Inline(_) => "inline".to_owned(),
        }
    }
}

/// Where environment variables are read from: the process, or a fixed map (hermetic tests).
/// Deliberately not `Debug`: a fixed map may hold secrets.
#[derive(Clone, Default)]
pub enum EnvSource {
    #[default]
    Process,
    Fixed(HashMap<String, String>),
}

impl EnvSource {
    fn var(&self, name: &str) -> Option<String> {
        match self {
            EnvSource::Process => std::env::var(name).ok(),
            EnvSource::Fixed(vars) => vars.get(name).cloned(),
        }
    }

    fn vars(&self) -> Vec<(String, String)> {
        match self {
            // Variables whose name or value is not UTF-8 cannot be ours; skip rather than panic.
            EnvSource::Process => std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            EnvSource::Fixed(vars) => vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

// ---- raw (serde) shapes ------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTop {
    database: Option<config::Value>,
    store: Option<config::Value>,
    log: Option<config::Value>,
    daemon: Option<config::Value>,
    districts_dir: Option<String>,
    #[serde(default)]
    districts: Vec<config::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    connect_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    max_concurrent_runs: Option<i64>,
    quarantine_after: Option<i64>,
    shutdown_grace: Option<String>,
    heartbeat_interval: Option<String>,
    max_backoff: Option<String>,
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDistrict {
    id: Option<String>,
    base_url: Option<String>,
    auth: Option<String>,
    token_url: Option<String>,
    client_id: Option<String>,
    client_secret_env: Option<String>,
    client_secret_file: Option<String>,
    client_secret: Option<SecretString>,
    scope: Option<String>,
    interval: Option<String>,
    full_interval: Option<String>,
    delta_overlap: Option<String>,
    page_size: Option<i64>,
    dry_run: Option<bool>,
    enabled: Option<bool>,
    concurrency: Option<i64>,
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    max_retries: Option<i64>,
    run_timeout: Option<String>,
    demographics: Option<RawDemographics>,
    journal_retention: Option<String>,
    trust_revision: Option<bool>,
    oneroster_version: Option<String>,
    required_identifier: Option<String>,
    schools: Option<Vec<String>>,
    school_identifiers: Option<Vec<String>>,
    max_demographics_clear_percent: Option<f64>,
    max_demographics_clear_count: Option<i64>,
    pause: Option<Vec<String>>,
    max_delete_percent: Option<f64>,
    max_delete_count: Option<i64>,
    max_update_percent: Option<f64>,
    max_update_count: Option<i64>,
    min_population: Option<i64>,
    /// Per entity type overrides of the limits above: `[districts.limits.enrollments]`.
    limits: Option<BTreeMap<String, RawLimits>>,
}

/// `demographics = true | false | "required" | "optional" | "off"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawDemographics {
    Flag(bool),
    Mode(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_delete_percent: Option<f64>,
    max_delete_count: Option<i64>,
    max_update_percent: Option<f64>,
    max_update_count: Option<i64>,
    min_population: Option<i64>,
}

// ---- the accepted keys, for the configuration reference ---------------------------------------

/// One table of the configuration and the keys it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigTable {
    /// The table's TOML path: `""` for the top level, then `"database"`, `"districts"` (also the
    /// shape of a district file), `"districts.limits.<entity>"`...
    pub table: &'static str,
    pub keys: &'static [&'static str],
}

/// Every key the configuration accepts, per table, read from the serde structs that parse it
/// (not a hand-kept list), so that the reference test (`tests/it/docs.rs`) fails when a key is
/// added without documentation.
pub fn accepted_keys() -> Vec<ConfigTable> {
    vec![
        ConfigTable {
            table: "",
            keys: field_names::<RawTop>(),
        },
        ConfigTable {
            table: "database",
            keys: field_names::<RawDatabase>(),
        },
        // `[store]` is parsed with the same struct as `[database]`.
        ConfigTable {
            table: "store",
            keys: field_names::<RawDatabase>(),
        },
        ConfigTable {
            table: "log",
            keys: field_names::<RawLog>(),
        },
        ConfigTable {
            table: "daemon",
            keys: field_names::<RawDaemon>(),
        },
        ConfigTable {
            table: "districts",
            keys: field_names::<RawDistrict>(),
        },
        ConfigTable {
            table: "districts.limits.<entity>",
            keys: field_names::<RawLimits>(),
        },
    ]
}

/// The field names serde-derive declares for `T`: it passes them to `deserialize_struct`, which
/// [`FieldNames`] records before refusing to go on (the technique of
/// `serde_aux::serde_introspect`). Empty for a type that is not a plain struct.
fn field_names<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields = None;
    // The deserializer always errors once it has the names: the error is the expected outcome.
    let _ = T::deserialize(FieldNames(&mut fields));
    fields.unwrap_or_default()
}

/// A `Deserializer` that only records the `fields` of a struct and yields no data.
struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(serde::de::Error::custom("field names recorded"))
    }

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

// ---- loading -----------------------------------------------------------------------------------

/// When a run's change set is held for approval instead of applied (CONTRACT §6). Judged per
/// entity type against the rows of that type active before the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SafetyLimits {
    /// More than this share of the active rows deleted holds the run (only when at least
    /// `min_population` rows are active).
    pub max_delete_percent: f64,
    /// More than this many rows deleted holds the run, whatever the population.
    pub max_delete_count: u64,
    /// More than this share of the active rows updated holds the run (same population rule).
    pub max_update_percent: f64,
    /// More than this many rows updated holds the run; `None`: no absolute update limit.
    pub max_update_count: Option<u64>,
    /// Below this many active rows the percentages do not apply.
    pub min_population: u64,
}

impl Default for SafetyLimits {
    fn default() -> Self {
        SafetyLimits {
            max_delete_percent: defaults::MAX_DELETE_PERCENT,
            max_delete_count: defaults::MAX_DELETE_COUNT,
            max_update_percent: defaults::MAX_UPDATE_PERCENT,
            max_update_count: None,
            min_population: defaults::MIN_POPULATION,
        }
    }
}

impl Settings {
    /// Loads `path`, applies the process environment's overrides, and validates everything.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        Self::load_with_env(path, &EnvSource::Process)
    }

    /// [`Settings::load`] with the environment taken from `env`.
    pub fn load_with_env(path: &Path, env: &EnvSource) -> Result<Settings, ConfigError> {
        let text = read_file("config file", path)?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut settings = parse_settings(&text, &path.display().to_string(), base_dir, env)?;
        settings.source = path.to_path_buf();
        Ok(settings)
    }

    /// Parses a config given as a string; relative paths are resolved against `base_dir`. The
    /// process environment's overrides still apply.
    pub fn from_toml_str(toml: &str, base_dir: &Path) -> Result<Settings, ConfigError> {
        Self::from_toml_str_with_env(toml, base_dir, &EnvSource::Process)
    }

    /// [`Settings::from_toml_str`] with the environment taken from `env`.
    pub fn from_toml_str_with_env(
        toml: &str,
        base_dir: &Path,
        env: &EnvSource,
    ) -> Result<Settings, ConfigError> {
        parse_settings(toml, "config file", base_dir, env)
    }

    pub fn district(&self, id: &str) -> Option<&DistrictConfig> {
        self.districts.iter().find(|d| d.id == id)
    }

    /// The district's pause windows (empty when it has none).
    pub fn pause(&self, id: &str) -> &[PauseWindow] {
        self.pause_windows.get(id).map_or(&[], Vec::as_slice)
    }

    /// The roster store's database: `[store]` if configured, else `[database]`.
    pub fn store_settings(&self) -> &DatabaseSettings {
        self.store.as_ref().unwrap_or(&self.database)
    }

    /// The district with its secret read now, from the process environment or its file. Needed
    /// for a district with `enabled = false`, whose secret is not read at load time (so a
    /// disabled district does not need its secret provisioned).
    pub fn with_resolved_secret(&self, id: &str) -> Result<DistrictConfig, ConfigError> {
        let scope = Scope::District {
            id: Some(id.to_owned()),
            origin: DistrictOrigin::Inline(0),
        };
        let mut district = self
            .district(id)
            .cloned()
            .ok_or_else(|| ConfigError::Invalid {
                scope: scope.clone(),
                problem: "no such district".to_owned(),
            })?;
        let source = self
            .secret_sources
            .get(id)
            .ok_or_else(|| ConfigError::Invalid {
                scope: scope.clone(),
                problem: "no secret source recorded".to_owned(),
            })?;
        district
            .auth
            .set_secret(source.resolve_in(&scope, &EnvSource::Process)?);
        Ok(district)
    }

    /// What `check-config` prints: every setting, URLs with passwords redacted, secrets shown only
    /// by where they come from.
    pub fn describe(&self) -> String {
        let (top, districts) = self.description();
        let mut out = String::new();
        // Writing to a String cannot fail; the results are ignored for that reason.
        for (key, value) in &top {
            let _ = writeln!(out, "{key}: {value}");
        }
        let _ = writeln!(out, "districts: {}", districts.len());
        for (id, entries) in &districts {
            let _ = writeln!(out, "\ndistrict \"{id}\"");
            for (key, value) in entries {
                let _ = writeln!(out, "  {key}: {value}");
            }
        }
        out
    }

    /// [`Settings::describe`] as one JSON document (`check-config --format json`).
    pub fn describe_json(&self) -> serde_json::Value {
        let (top, districts) = self.description();
        let object = |entries: &[(String, String)]| {
            serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            )
        };
        let mut doc = object(&top);
        doc["districts"] = serde_json::Value::Array(
            districts
                .iter()
                .map(|(id, entries)| {
                    let mut d = object(entries);
                    d["id"] = serde_json::Value::String(id.clone());
                    d
                })
                .collect(),
        );
        doc
    }

    /// What `check-config` shows, secrets redacted: the top-level settings, then each
    /// district's, as (key, value) pairs.
    #[allow(clippy::type_complexity)]
    fn description(&self) -> (Vec<(String, String)>, Vec<(String, Vec<(String, String)>)>) {
        let h = |d: Duration| humantime::format_duration(d).to_string();
        let mut top: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| top.push((k.to_owned(), v));
        if !self.source.as_os_str().is_empty() {
            put("config", self.source.display().to_string());
        }
        put("database", self.database.redacted());
        put(
            "store",
            self.store
                .as_ref()
                .map_or_else(|| "same as database".to_owned(), DatabaseSettings::redacted),
        );
        let format = match self.log.format {
            LogFormat::Json => "json",
            LogFormat::Pretty => "pretty",
        };
        put(
            "log",
            format!("format = {format}, level = {}", self.log.level),
        );
        let dm = &self.daemon;
        put(
            "daemon",
            format!(
                "max_concurrent_runs = {}, quarantine_after = {}, shutdown_grace = {}, \
                 heartbeat_interval = {}, max_backoff = {}, listen = {}",
                dm.max_concurrent_runs,
                dm.quarantine_after,
                h(dm.shutdown_grace),
                h(dm.heartbeat_interval),
                h(dm.max_backoff),
                dm.listen
                    .map_or_else(|| "(off)".to_owned(), |a| a.to_string())
            ),
        );
        if let Some(dir) = &self.districts_dir {
            put("districts_dir", dir.display().to_string());
        }
        let districts = self
            .districts
            .iter()
            .map(|d| {
                let mut e: Vec<(String, String)> = Vec::new();
                let mut put = |k: &str, v: String| e.push((k.to_owned(), v));
                put("enabled", d.enabled.to_string());
                put("base_url", d.base_url.to_string());
                put("auth", d.auth.mode().to_owned());
                match &d.auth {
                    AuthConfig::OAuth2 {
                        token_url,
                        client_id,
                        scope,
                        ..
                    } => {
                        put("token_url", token_url.to_string());
                        put("client_id", client_id.clone());
                        put("scope", scope.clone().unwrap_or_else(|| "(none)".into()));
                    }
                    AuthConfig::OAuth1 { client_id, .. } => put("client_id", client_id.clone()),
                    AuthConfig::Bearer { .. } => {}
                }
                let secret_key = match d.auth {
                    AuthConfig::Bearer { .. } => "token",
                    _ => "client_secret",
                };
                let source = self
                    .secret_sources
                    .get(&d.id)
                    .map_or_else(|| "(unknown)".to_owned(), SecretSource::describe);
                let resolved = if d.enabled {
                    ""
                } else {
                    " (not read: disabled)"
                };
                put(secret_key, format!("{source}{resolved}"));
                put("interval", h(d.interval));
                put("full_interval", h(d.full_interval));
                put("delta_overlap", h(d.delta_overlap));
                put("page_size", d.page_size.to_string());
                put("dry_run", d.dry_run.to_string());
                put("concurrency", d.concurrency.to_string());
                put("connect_timeout", h(d.connect_timeout));
                put("request_timeout", h(d.request_timeout));
                put("max_retries", d.max_retries.to_string());
                put("run_timeout", h(d.run_timeout));
                put("demographics", d.demographics.as_str().to_owned());
                put("journal_retention", h(d.journal_retention));
                put("trust_revision", d.trust_revision.to_string());
                put("oneroster_version", d.version.as_str().to_owned());
                if let Some(t) = &d.required_identifier {
                    put("required_identifier", t.clone());
                }
                if let Some(scope) = &d.scope {
                    if !scope.sourced_ids.is_empty() {
                        put("schools", scope.sourced_ids.join(", "));
                    }
                    if !scope.identifiers.is_empty() {
                        put("school_identifiers", scope.identifiers.join(", "));
                    }
                }
                put(
                    "demographics_limits",
                    format!(
                        "clear > {}% or > {} users",
                        d.demographics_limits.max_clear_percent,
                        d.demographics_limits.max_clear_count
                    ),
                );
                if !self.pause(&d.id).is_empty() {
                    let windows: Vec<String> =
                        self.pause(&d.id).iter().map(ToString::to_string).collect();
                    put("pause", windows.join(", "));
                }
                for (entity, l) in &d.limits {
                    put(
                        &format!("limits.{entity}"),
                        format!(
                            "delete > {}% or > {} rows, update > {}%{} (percentages from {} active rows)",
                            l.max_delete_percent,
                            l.max_delete_count,
                            l.max_update_percent,
                            l.max_update_count
                                .map(|n| format!(" or > {n} rows"))
                                .unwrap_or_default(),
                            l.min_population
                        ),
                    );
                }
                (d.id.clone(), e)
            })
            .collect();
        (top, districts)
    }
}

impl DatabaseSettings {
    /// sqlx connection options for this URL.
    pub fn connect_options(&self) -> Result<PgConnectOptions, ConfigError> {
        // sqlx's parse error may quote the URL (and so the password): only say that it failed.
        PgConnectOptions::from_str(self.url.expose_secret()).map_err(|_| ConfigError::DatabaseUrl {
            problem: "not a valid Postgres connection URL".to_owned(),
        })
    }

    /// The URL with any password (in the user info or a `password` query parameter) replaced by
    /// `***`.
    pub fn redacted(&self) -> String {
        let Ok(mut url) = Url::parse(self.url.expose_secret()) else {
            return "<unparseable URL>".to_owned();
        };
        if url.password().is_some() {
            // Only fails for URLs that cannot have a password, which this one just had.
            let _ = url.set_password(Some("***"));
        }
        if url.query_pairs().any(|(k, _)| k == "password") {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" {
                        "***".to_owned()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn parse_settings(
    text: &str,
    origin: &str,
    base_dir: &Path,
    env: &EnvSource,
) -> Result<Settings, ConfigError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml));
    // DATABASE_URL first so that ONEROSTER_SYNC__DATABASE__URL (a later source) wins over it.
    if let Some(url) = env.var("DATABASE_URL").filter(|v| !v.is_empty()) {
        let vars = [("DATABASE__URL".to_owned(), url)].into_iter().collect();
        builder = builder.add_source(
            config::Environment::default()
                .separator(ENV_SEPARATOR)
                .source(Some(vars)),
        );
    }
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .separator(ENV_SEPARATOR)
            .ignore_empty(true)
            .source(Some(prefixed_env_vars(env)?)),
    );
    let merged = builder
        .build()
        .map_err(|e| syntax_error(e, text, origin, Scope::File))?;
    let raw: RawTop = merged
        .try_deserialize()
        .map_err(|e| translate(e, &Scope::File))?;

    let database = match raw.database {
        Some(value) => parse_database(value, "database")?,
        None => None,
    }
    .ok_or_else(|| {
        Scope::Section("database").key(
            "url",
            "required (or set DATABASE_URL / ONEROSTER_SYNC__DATABASE__URL)",
        )
    })?;
    let store = match raw.store {
        Some(value) => parse_database(value, "store")?,
        None => None,
    };
    let log = match raw.log {
        Some(value) => parse_log(value)?,
        None => LogSettings::default(),
    };
    let daemon = match raw.daemon {
        Some(value) => parse_daemon(value)?,
        None => DaemonSettings::default(),
    };

    let mut declared: Vec<(config::Value, DistrictOrigin, Option<String>)> = raw
        .districts
        .into_iter()
        .enumerate()
        .map(|(i, value)| (value, DistrictOrigin::Inline(i + 1), None))
        .collect();
    let districts_dir = match raw.districts_dir {
        Some(dir) => {
            let resolved = base_dir.join(&dir);
            declared.extend(read_districts_dir(&dir, &resolved)?);
            Some(resolved)
        }
        None => None,
    };

    let mut districts = Vec::with_capacity(declared.len());
    let mut secret_sources = BTreeMap::new();
    let mut pause_windows = BTreeMap::new();
    let mut origins: HashMap<String, DistrictOrigin> = HashMap::new();
    for (value, origin, default_id) in declared {
        let (district, secret_source, pause) =
            parse_district(value, &origin, default_id, base_dir, env)?;
        if let Some(first) = origins.get(&district.id) {
            return Err(ConfigError::InvalidKey {
                scope: Scope::district(&district.id, &origin),
                key: "id".to_owned(),
                problem: format!("duplicate id (also declared {})", describe_origin(first)),
            });
        }
        origins.insert(district.id.clone(), origin);
        secret_sources.insert(district.id.clone(), secret_source);
        if !pause.is_empty() {
            pause_windows.insert(district.id.clone(), pause);
        }
        districts.push(district);
    }

    Ok(Settings {
        database,
        store,
        log,
        daemon,
        districts,
        source: PathBuf::new(),
        districts_dir,
        secret_sources,
        pause_windows,
    })
}

fn describe_origin(origin: &DistrictOrigin) -> String {
    match origin {
        DistrictOrigin::Inline(n) => format!("in inline [[districts]] #{n}"),
        DistrictOrigin::File(file) => format!("in file \"{file}\""),
    }
}

/// The `ONEROSTER_SYNC__*` variables, refusing any that does not name a `[database]`, `[store]`
/// or `[log]` key (a typo would otherwise be silently ignored).
fn prefixed_env_vars(env: &EnvSource) -> Result<config::Map<String, String>, ConfigError> {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    let mut vars = config::Map::new();
    for (name, value) in env.vars() {
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let parts: Vec<&str> = rest.split(ENV_SEPARATOR).collect();
        let known = matches!(parts.as_slice(), [section, key]
            if ENV_SECTIONS.contains(&section.to_ascii_lowercase().as_str()) && !key.is_empty());
        if !known {
            return Err(ConfigError::Invalid {
                scope: Scope::EnvVar(name.clone()),
                problem: format!(
                    "only [database], [store] and [log] keys can be overridden, as \
                     {prefix}<SECTION>{ENV_SEPARATOR}<KEY>"
                ),
            });
        }
        vars.insert(name, value);
    }
    Ok(vars)
}

fn read_districts_dir(
    declared: &str,
    dir: &Path,
) -> Result<Vec<(config::Value, DistrictOrigin, Option<String>)>, ConfigError> {
    let unreadable = |e: std::io::Error| {
        Scope::File.key(
            "districts_dir",
            format!("cannot read directory \"{}\": {e}", dir.display()),
        )
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(unreadable)?;
    files.retain(|p| p.extension().is_some_and(|ext| ext == "toml") && p.is_file());
    // Sorted by file name so the district order (and so logs and check-config) is stable.
    files.sort();

    let mut out = Vec::with_capacity(files.len());
    for path in files {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let shown = format!("{}/{file_name}", declared.trim_end_matches('/'));
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = read_file("district file", &path)?;
        let origin_text = format!("district file \"{shown}\"");
        let scope = Scope::District {
            id: Some(stem.clone()),
            origin: DistrictOrigin::File(shown.clone()),
        };
        let table = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .build()
            .map_err(|e| syntax_error(e, &text, &origin_text, scope.clone()))?
            .try_deserialize::<config::Value>()
            .map_err(|e| translate(e, &scope))?;
        out.push((table, DistrictOrigin::File(shown), Some(stem)));
    }
    Ok(out)
}

fn parse_database(
    value: config::Value,
    section: &'static str,
) -> Result<Option<DatabaseSettings>, ConfigError> {
    let scope = Scope::Section(section);
    let raw: RawDatabase = value.try_deserialize().map_err(|e| translate(e, &scope))?;
    let Some(url) = raw.url else {
        return Ok(None);
    };
    // The URL may carry a password: no message below quotes it.
    let parsed =
        Url::parse(&url).map_err(|e| scope.key("url", format!("not a valid URL ({e})")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(scope.key(
            "url",
            format!(
                "must be a postgres:// or postgresql:// URL (got scheme \"{}\")",
                parsed.scheme()
            ),
        ));
    }
    let settings = DatabaseSettings {
        url: SecretString::from(url),
        connect_timeout: duration(
            &scope,
            "connect_timeout",
            raw.connect_timeout,
            defaults::DATABASE_CONNECT_TIMEOUT,
        )?,
    };
    settings
        .connect_options()
        .map_err(|_| scope.key("url", "not a valid Postgres connection URL"))?;
    Ok(Some(settings))
}

fn parse_log(value: config::Value) -> Result<LogSettings, ConfigError> {
    let scope = Scope::Section("log");
    let raw: RawLog = value.try_deserialize().map_err(|e| translate(e, &scope))?;
    let format = match raw.format.as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("pretty") => LogFormat::Pretty,
        Some(other) => {
            return Err(scope.key(
                "format",
                format!("must be \"json\" or \"pretty\" (got \"{other}\")"),
            ));
        }
    };
    let level = raw.level.unwrap_or_else(|| defaults::LOG_LEVEL.to_owned());
    tracing_subscriber::EnvFilter::try_new(&level)
        .map_err(|e| scope.key("level", format!("not a valid filter ({e})")))?;
    Ok(LogSettings { format, level })
}

fn parse_daemon(value: config::Value) -> Result<DaemonSettings, ConfigError> {
    let scope = Scope::Section("daemon");
    let raw: RawDaemon = value.try_deserialize().map_err(|e| translate(e, &scope))?;
    let listen = match raw.listen {
        None => None,
        Some(text) => Some(text.parse().map_err(|_| {
            scope.key(
                "listen",
                format!(
                    "not an address:port (got \"{}\", expected e.g. \"127.0.0.1:9464\")",
                    text.escape_debug()
                ),
            )
        })?),
    };
    Ok(DaemonSettings {
        max_concurrent_runs: in_range(
            &scope,
            "max_concurrent_runs",
            raw.max_concurrent_runs,
            defaults::MAX_CONCURRENT_RUNS,
            MAX_CONCURRENT_RUNS_RANGE,
        )?,
        quarantine_after: in_range(
            &scope,
            "quarantine_after",
            raw.quarantine_after,
            defaults::QUARANTINE_AFTER,
            QUARANTINE_AFTER_RANGE,
        )?,
        shutdown_grace: duration(
            &scope,
            "shutdown_grace",
            raw.shutdown_grace,
            defaults::SHUTDOWN_GRACE,
        )?,
        heartbeat_interval: duration(
            &scope,
            "heartbeat_interval",
            raw.heartbeat_interval,
            defaults::HEARTBEAT_INTERVAL,
        )?,
        max_backoff: duration(
            &scope,
            "max_backoff",
            raw.max_backoff,
            defaults::MAX_BACKOFF,
        )?,
        listen,
    })
}

/// `pause = ["2027-06-20..2027-08-15", "2027-12-24"]`: inclusive UTC date ranges, or one day.
fn pause_windows(scope: &Scope, raw: Option<Vec<String>>) -> Result<Vec<PauseWindow>, ConfigError> {
    let date = |text: &str, whole: &str| {
        chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").map_err(|_| {
            scope.key(
                "pause",
                format!(
                    "not a date or date range (got \"{}\", expected e.g. \"2027-06-20..2027-08-15\" or \"2027-12-24\")",
                    whole.escape_debug()
                ),
            )
        })
    };
    let mut windows = Vec::new();
    for text in raw.unwrap_or_default() {
        let (start, end) = match text.split_once("..") {
            Some((a, b)) => (date(a, &text)?, date(b, &text)?),
            None => {
                let day = date(&text, &text)?;
                (day, day)
            }
        };
        if end < start {
            return Err(scope.key(
                "pause",
                format!(
                    "range ends before it starts (got \"{}\")",
                    text.escape_debug()
                ),
            ));
        }
        windows.push(PauseWindow { start, end });
    }
    Ok(windows)
}

fn parse_district(
    value: config::Value,
    origin: &DistrictOrigin,
    default_id: Option<String>,
    base_dir: &Path,
    env: &EnvSource,
) -> Result<(DistrictConfig, SecretSource, Vec<PauseWindow>), ConfigError> {
    // Read the id first so that even a deserialization error can name the district.
    let declared_id = value
        .clone()
        .into_table()
        .ok()
        .and_then(|t| t.get("id").cloned())
        .and_then(|v| v.into_string().ok());
    let scope = Scope::District {
        id: declared_id.or_else(|| default_id.clone()),
        origin: origin.clone(),
    };
    let mut raw: RawDistrict = value.try_deserialize().map_err(|e| translate(e, &scope))?;

    let id = raw
        .id
        .or(default_id)
        .ok_or_else(|| scope.key("id", "required"))?;
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(scope.key(
            "id",
            format!("must match [a-z0-9_-]+ (got \"{}\")", id.escape_debug()),
        ));
    }
    let scope = Scope::district(&id, origin);

    let base_url = http_url(
        &scope,
        "base_url",
        raw.base_url
            .ok_or_else(|| scope.key("base_url", "required"))?,
    )?;
    let base_url = without_trailing_slash(base_url);
    let version = oneroster_version(&scope, raw.oneroster_version.take(), &base_url)?;

    let mode = raw.auth.as_deref().unwrap_or("oauth2");
    let secret_source = secret_source(
        &scope,
        raw.client_secret_env,
        raw.client_secret_file,
        raw.client_secret,
        base_dir,
    )?;
    let enabled = raw.enabled.unwrap_or(defaults::ENABLED);
    // A disabled district is never synced, so its secret need not be provisioned yet.
    let secret = if enabled {
        secret_source.resolve_in(&scope, env)?
    } else {
        SecretString::default()
    };
    let auth = match mode {
        "oauth2" => AuthConfig::OAuth2 {
            token_url: http_url(
                &scope,
                "token_url",
                raw.token_url
                    .ok_or_else(|| scope.key("token_url", "required when auth = \"oauth2\""))?,
            )?,
            client_id: required_client_id(&scope, raw.client_id, mode)?,
            client_secret: secret,
            scope: raw.scope,
        },
        "bearer" | "oauth1" => {
            if raw.token_url.is_some() {
                return Err(scope.key(
                    "token_url",
                    format!("only used with auth = \"oauth2\" (auth is \"{mode}\")"),
                ));
            }
            if raw.scope.is_some() {
                return Err(scope.key(
                    "scope",
                    format!("only used with auth = \"oauth2\" (auth is \"{mode}\")"),
                ));
            }
            if mode == "bearer" {
                // client_id is accepted for bearer (operators keep it for reference) but unused.
                AuthConfig::Bearer { token: secret }
            } else {
                AuthConfig::OAuth1 {
                    client_id: required_client_id(&scope, raw.client_id, mode)?,
                    client_secret: secret,
                }
            }
        }
        other => {
            return Err(scope.key(
                "auth",
                format!(
                    "must be \"oauth2\", \"bearer\" or \"oauth1\" (got \"{}\")",
                    other.escape_debug()
                ),
            ));
        }
    };

    let interval = duration(&scope, "interval", raw.interval, defaults::INTERVAL)?;
    let full_interval = duration(
        &scope,
        "full_interval",
        raw.full_interval,
        defaults::FULL_INTERVAL,
    )?;
    if full_interval < interval {
        return Err(scope.key(
            "full_interval",
            format!(
                "must be at least interval ({} < {})",
                humantime::format_duration(full_interval),
                humantime::format_duration(interval)
            ),
        ));
    }
    let delta_overlap = duration(
        &scope,
        "delta_overlap",
        raw.delta_overlap,
        defaults::DELTA_OVERLAP,
    )?;
    let raw_limits = RawLimits {
        max_delete_percent: raw.max_delete_percent,
        max_delete_count: raw.max_delete_count,
        max_update_percent: raw.max_update_percent,
        max_update_count: raw.max_update_count,
        min_population: raw.min_population,
    };
    let raw_overrides = raw.limits.take();
    let pause = pause_windows(&scope, raw.pause.take())?;
    let district = DistrictConfig {
        base_url,
        auth,
        interval,
        full_interval,
        delta_overlap,
        page_size: in_range(
            &scope,
            "page_size",
            raw.page_size,
            defaults::PAGE_SIZE,
            PAGE_SIZE_RANGE,
        )?,
        dry_run: raw.dry_run.unwrap_or(defaults::DRY_RUN),
        enabled,
        concurrency: in_range(
            &scope,
            "concurrency",
            raw.concurrency,
            defaults::CONCURRENCY,
            CONCURRENCY_RANGE,
        )?,
        connect_timeout: duration(
            &scope,
            "connect_timeout",
            raw.connect_timeout,
            defaults::CONNECT_TIMEOUT,
        )?,
        request_timeout: duration(
            &scope,
            "request_timeout",
            raw.request_timeout,
            defaults::REQUEST_TIMEOUT,
        )?,
        max_retries: in_range(
            &scope,
            "max_retries",
            raw.max_retries,
            defaults::MAX_RETRIES,
            MAX_RETRIES_RANGE,
        )?,
        run_timeout: duration(
            &scope,
            "run_timeout",
            raw.run_timeout,
            defaults::RUN_TIMEOUT,
        )?,
        demographics: demographics_mode(&scope, raw.demographics.take())?,
        trust_revision: raw.trust_revision.unwrap_or(true),
        journal_retention: duration(
            &scope,
            "journal_retention",
            raw.journal_retention.take(),
            defaults::JOURNAL_RETENTION,
        )?,
        limits: safety_limits(&scope, &raw_limits, raw_overrides)?,
        demographics_limits: demographics_limits(
            &scope,
            raw.max_demographics_clear_percent,
            raw.max_demographics_clear_count,
        )?,
        version,
        required_identifier: match raw.required_identifier.take() {
            Some(t) if t.trim().is_empty() => {
                return Err(scope.key("required_identifier", "must not be empty"));
            }
            other => other.map(|t| t.trim().to_owned()),
        },
        scope: school_scope(&scope, raw.schools.take(), raw.school_identifiers.take())?,
        id,
    };
    Ok((district, secret_source, pause))
}

/// `oneroster_version`, checked against the root `base_url` names: a 1.1 root with `"1.2"` (or
/// the reverse) is a mistake the first request would only report as a 404.
fn oneroster_version(
    scope: &Scope,
    raw: Option<String>,
    base_url: &Url,
) -> Result<OneRosterVersion, ConfigError> {
    let version = match raw.as_deref() {
        None | Some("1.1") => OneRosterVersion::V1p1,
        Some("1.2") => OneRosterVersion::V1p2,
        Some("auto") => OneRosterVersion::Auto,
        Some(other) => {
            return Err(scope.key(
                "oneroster_version",
                format!(
                    "must be \"1.1\", \"1.2\" or \"auto\" (got \"{}\")",
                    other.escape_debug()
                ),
            ));
        }
    };
    let path = base_url.path().trim_end_matches('/');
    let (wrong, right) = match version {
        OneRosterVersion::V1p1 => (V1P2_ROOT, V1P1_ROOT),
        OneRosterVersion::V1p2 => (V1P1_ROOT, V1P2_ROOT),
        OneRosterVersion::Auto => {
            if !(path.ends_with(V1P1_ROOT) || path.ends_with(V1P2_ROOT)) {
                return Err(scope.key(
                    "oneroster_version",
                    format!(
                        "\"auto\" derives one version's root from the other's: base_url must end in {V1P1_ROOT} or {V1P2_ROOT} (got {path:?}); name the version instead"
                    ),
                ));
            }
            return Ok(version);
        }
    };
    if path.ends_with(wrong) {
        return Err(scope.key(
            "base_url",
            format!(
                "ends in {wrong}, the other version's root, but oneroster_version is \"{}\": use the {right} root, or oneroster_version = \"auto\"",
                version.as_str()
            ),
        ));
    }
    Ok(version)
}

/// `schools` and `school_identifiers`: trimmed, without empties or duplicates; both absent
/// (or empty) is no scope.
fn school_scope(
    scope: &Scope,
    schools: Option<Vec<String>>,
    identifiers: Option<Vec<String>>,
) -> Result<Option<SchoolScope>, ConfigError> {
    let clean = |key: &str, list: Option<Vec<String>>| -> Result<Vec<String>, ConfigError> {
        let mut out: Vec<String> = Vec::new();
        for item in list.unwrap_or_default() {
            let item = item.trim();
            if item.is_empty() {
                return Err(scope.key(key, "has an empty entry"));
            }
            if !out.iter().any(|o| o == item) {
                out.push(item.to_owned());
            }
        }
        Ok(out)
    };
    let sourced_ids = clean("schools", schools)?;
    let identifiers = clean("school_identifiers", identifiers)?;
    if sourced_ids.is_empty() && identifiers.is_empty() {
        return Ok(None);
    }
    Ok(Some(SchoolScope {
        sourced_ids,
        identifiers,
    }))
}

fn demographics_mode(
    scope: &Scope,
    raw: Option<RawDemographics>,
) -> Result<DemographicsMode, ConfigError> {
    Ok(match raw {
        None => defaults::DEMOGRAPHICS,
        Some(RawDemographics::Flag(true)) => DemographicsMode::Required,
        Some(RawDemographics::Flag(false)) => DemographicsMode::Off,
        Some(RawDemographics::Mode(mode)) => match mode.as_str() {
            "required" => DemographicsMode::Required,
            "optional" => DemographicsMode::Optional,
            "off" => DemographicsMode::Off,
            other => {
                return Err(scope.key(
                    "demographics",
                    format!(
                        "must be \"required\", \"optional\" or \"off\" (or true/false; got \"{}\")",
                        other.escape_debug()
                    ),
                ));
            }
        },
    })
}

fn demographics_limits(
    scope: &Scope,
    percent: Option<f64>,
    count: Option<i64>,
) -> Result<DemographicsLimits, ConfigError> {
    let mut limits = DemographicsLimits::default();
    if let Some(v) = percent {
        if !(0.0..=100.0).contains(&v) {
            return Err(scope.key(
                "max_demographics_clear_percent",
                format!("must be a percentage between 0 and 100 (got {v})"),
            ));
        }
        limits.max_clear_percent = v;
    }
    if let Some(v) = count {
        limits.max_clear_count = u64::try_from(v).map_err(|_| {
            scope.key(
                "max_demographics_clear_count",
                format!("must not be negative (got {v})"),
            )
        })?;
    }
    Ok(limits)
}

/// The district-wide limits, then per entity type overrides (`limits.<entity>`).
fn safety_limits(
    scope: &Scope,
    district: &RawLimits,
    overrides: Option<BTreeMap<String, RawLimits>>,
) -> Result<BTreeMap<Entity, SafetyLimits>, ConfigError> {
    let base = apply_limits(scope, "", SafetyLimits::default(), district)?;
    let mut overrides = overrides.unwrap_or_default();
    for name in overrides.keys() {
        if !Entity::ALL.iter().any(|e| e.as_str() == name) {
            return Err(scope.key(
                &format!("limits.{name}"),
                format!(
                    "not an entity type (one of {})",
                    Entity::ALL.map(|e| e.as_str()).join(", ")
                ),
            ));
        }
    }
    let mut limits = BTreeMap::new();
    for entity in Entity::ALL {
        let own = overrides.remove(entity.as_str()).unwrap_or_default();
        let prefix = format!("limits.{}.", entity.as_str());
        limits.insert(entity, apply_limits(scope, &prefix, base, &own)?);
    }
    Ok(limits)
}

fn apply_limits(
    scope: &Scope,
    prefix: &str,
    mut limits: SafetyLimits,
    raw: &RawLimits,
) -> Result<SafetyLimits, ConfigError> {
    let percent = |key: &str, value: f64| {
        if (0.0..=100.0).contains(&value) {
            Ok(value)
        } else {
            Err(scope.key(
                &format!("{prefix}{key}"),
                format!("must be a percentage between 0 and 100 (got {value})"),
            ))
        }
    };
    let count = |key: &str, value: i64| {
        u64::try_from(value).map_err(|_| {
            scope.key(
                &format!("{prefix}{key}"),
                format!("must not be negative (got {value})"),
            )
        })
    };
    if let Some(v) = raw.max_delete_percent {
        limits.max_delete_percent = percent("max_delete_percent", v)?;
    }
    if let Some(v) = raw.max_update_percent {
        limits.max_update_percent = percent("max_update_percent", v)?;
    }
    if let Some(v) = raw.max_delete_count {
        limits.max_delete_count = count("max_delete_count", v)?;
    }
    if let Some(v) = raw.max_update_count {
        limits.max_update_count = Some(count("max_update_count", v)?);
    }
    if let Some(v) = raw.min_population {
        limits.min_population = count("min_population", v)?;
    }
    Ok(limits)
}

fn required_client_id(
    scope: &Scope,
    client_id: Option<String>,
    mode: &str,
) -> Result<String, ConfigError> {
    match client_id {
        Some(id) if !id.is_empty() => Ok(id),
        Some(_) => Err(scope.key("client_id", "must not be empty")),
        None => Err(scope.key("client_id", format!("required when auth = \"{mode}\""))),
    }
}

fn secret_source(
    scope: &Scope,
    env: Option<String>,
    file: Option<String>,
    inline: Option<SecretString>,
    base_dir: &Path,
) -> Result<SecretSource, ConfigError> {
    let given: Vec<&str> = [
        env.as_ref().map(|_| "client_secret_env"),
        file.as_ref().map(|_| "client_secret_file"),
        inline.as_ref().map(|_| "client_secret"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() > 1 {
        return Err(scope.key(
            given[1],
            format!(
                "exactly one of client_secret_env, client_secret_file, client_secret may be \
                 set (got {})",
                given.join(" and ")
            ),
        ));
    }
    match (env, file, inline) {
        (Some(name), _, _) => {
            let valid = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(scope.key(
                    "client_secret_env",
                    format!(
                        "not an environment variable name (got \"{}\")",
                        name.escape_debug()
                    ),
                ));
            }
            Ok(SecretSource::Env(name))
        }
        (None, Some(file), _) if file.is_empty() => {
            Err(scope.key("client_secret_file", "must not be empty"))
        }
        (None, Some(file), _) => Ok(SecretSource::File(base_dir.join(file))),
        (None, None, Some(secret)) if secret.expose_secret().is_empty() => {
            Err(scope.key("client_secret", "must not be empty"))
        }
        (None, None, Some(secret)) => Ok(SecretSource::Inline(secret)),
        (None, None, None) => Err(scope.key(
            "client_secret_env",
            "one of client_secret_env, client_secret_file or client_secret is required",
        )),
    }
}

/// An `https://` URL, or `http://` to a loopback host (the local simulator, a sidecar proxy).
fn http_url(scope: &Scope, key: &str, text: String) -> Result<Url, ConfigError> {
    let url = Url::parse(&text).map_err(|e| scope.key(key, format!("not a valid URL ({e})")))?;
    // Credentials in a URL would be printed wherever the URL is: refuse them.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(scope.key(key, "must not contain a user name or password"));
    }
    let host = url
        .host()
        .ok_or_else(|| scope.key(key, "must have a host"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&host) => Ok(url),
        "http" => Err(scope.key(
            key,
            format!("plain http:// is only allowed for loopback hosts (got host \"{host}\")"),
        )),
        other => Err(scope.key(
            key,
            format!("must be an https:// URL (got scheme \"{other}\")"),
        )),
    }
}

fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Paths are appended to the base URL (`{base_url}/users`): a trailing slash would double it.
fn without_trailing_slash(mut url: Url) -> Url {
    let path = url.path().trim_end_matches('/').to_owned();
    if !path.is_empty() {
        url.set_path(&path);
    }
    url
}

fn duration(
    scope: &Scope,
    key: &str,
    text: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = text else {
        return Ok(default);
    };
    let value = humantime::parse_duration(&text).map_err(|e| {
        scope.key(
            key,
            format!(
                "not a duration ({e}; got \"{}\", expected e.g. \"90s\", \"15m\", \"1h\")",
                text.escape_debug()
            ),
        )
    })?;
    if value.is_zero() {
        return Err(scope.key(key, "must be greater than zero"));
    }
    Ok(value)
}

fn in_range<T: TryFrom<i64>>(
    scope: &Scope,
    key: &str,
    value: Option<i64>,
    default: T,
    (min, max): (i64, i64),
) -> Result<T, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    if !(min..=max).contains(&value) {
        return Err(scope.key(
            key,
            format!("must be between {min} and {max} (got {value})"),
        ));
    }
    T::try_from(value).map_err(|_| scope.key(key, format!("out of range (got {value})")))
}

// ---- turning the config crate's errors into ours -----------------------------------------------

/// A build error: a TOML syntax error becomes [`ConfigError::Syntax`] with the position but
/// without the parser's source excerpt (the line could hold a secret).
fn syntax_error(err: config::ConfigError, text: &str, origin: &str, scope: Scope) -> ConfigError {
    if let config::ConfigError::FileParse { cause, .. } = &err {
        if let Some(toml_err) = cause.downcast_ref::<toml::de::Error>() {
            let (line, column) = toml_err
                .span()
                .map_or((0, 0), |span| line_and_column(text, span.start));
            return ConfigError::Syntax {
                origin: origin.to_owned(),
                line,
                column,
                message: toml_err.message().trim().to_owned(),
            };
        }
        return ConfigError::Syntax {
            origin: origin.to_owned(),
            line: 0,
            column: 0,
            message: strip_literals(&cause.to_string()),
        };
    }
    translate(err, &scope)
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A deserialization error, named by scope and key, with no value from the config in it.
fn translate(err: config::ConfigError, scope: &Scope) -> ConfigError {
    translate_at(err, scope, None)
}

fn translate_at(err: config::ConfigError, scope: &Scope, at: Option<String>) -> ConfigError {
    match err {
        config::ConfigError::At { error, key, .. } => translate_at(*error, scope, key.or(at)),
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => {
            // `unexpected` displays the value itself (e.g. string "..."): keep only its kind.
            let shown = unexpected.to_string();
            let kind = shown.split(['`', '"']).next().unwrap_or("").trim();
            scope.key(
                &leaf_key(key.or(at).as_deref()),
                format!("expected {expected}, got {kind}"),
            )
        }
        config::ConfigError::NotFound(key) => scope.key(&leaf_key(Some(&key)), "required"),
        config::ConfigError::Message(message) => {
            if let Some(key) = backticked_after(&message, "unknown field ") {
                let key = match at {
                    Some(parent) => format!("{}.{key}", leaf_key(Some(&parent))),
                    None => key,
                };
                return ConfigError::UnknownKey {
                    scope: scope.clone(),
                    key,
                };
            }
            if let Some(key) = backticked_after(&message, "missing field ") {
                return scope.key(&key, "required");
            }
            let problem = strip_literals(&message);
            match at {
                Some(key) => scope.key(&leaf_key(Some(&key)), problem),
                None => ConfigError::Invalid {
                    scope: scope.clone(),
                    problem,
                },
            }
        }
        other => ConfigError::Invalid {
            scope: scope.clone(),
            problem: strip_literals(&other.to_string()),
        },
    }
}

/// Sections and districts are deserialized one by one, so keys here are already relative to the
/// scope; a key the config crate did not report is shown as `?`.
fn leaf_key(key: Option<&str>) -> String {
    match key {
        Some(k) if !k.is_empty() => k.to_owned(),
        _ => "?".to_owned(),
    }
}

fn backticked_after(message: &str, marker: &str) -> Option<String> {
    let rest = message.split_once(marker)?.1.strip_prefix('`')?;
    Some(rest.split_once('`')?.0.to_owned())
}

/// Removes quoted literals from a foreign error message: they may be values from the config.
fn strip_literals(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '`' || c == '"' => {
                out.push(c);
                quote = Some(c);
            }
            None => out.push(c),
        }
    }
    out
}
