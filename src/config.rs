//! Configuration: TOML file (+ `districts_dir`), then environment overrides, validated once
//! into typed settings. (Interface stub: being implemented.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    /// The roster store's database; `None` means the same database as `[database]`.
    pub store: Option<DatabaseSettings>,
    pub log: LogSettings,
    pub districts: Vec<DistrictConfig>,
    pub source: PathBuf,
}

#[derive(Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseSettings { url: <redacted> }")
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

#[derive(Debug, Clone)]
pub struct DistrictConfig {
    pub id: String,
    pub base_url: Url,
    pub auth: AuthConfig,
    pub interval: Duration,
    pub full_interval: Duration,
    pub page_size: u32,
    pub dry_run: bool,
    pub enabled: bool,
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub run_timeout: Duration,
    pub demographics: bool,
}

impl Settings {
    pub fn load(_path: &Path) -> Result<Settings, ConfigError> {
        Err(ConfigError("not implemented".into()))
    }

    pub fn district(&self, id: &str) -> Option<&DistrictConfig> {
        self.districts.iter().find(|d| d.id == id)
    }
}
