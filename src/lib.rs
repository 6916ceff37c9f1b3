//! oneroster-sync: keeps a K-12 application's roster store in step with each district's
//! OneRoster 1.1 API (ClassLink Roster Server).
//!
//! Data flows one way: `config` → `sync::run_once` → `oneroster` (HTTP) → `normalize` (pure) →
//! `mirror` (stage + diff) → `store` (apply) → run summary.

/// SQL assembled from this crate's own table and column names (never from input), marked as
/// such for sqlx.
macro_rules! sql {
    ($($arg:tt)*) => {
        sqlx::AssertSqlSafe(format!($($arg)*))
    };
}

pub mod audit;
pub mod cli;
pub mod config;
pub mod db;
pub mod diff;
pub mod domain;
pub mod health;
pub mod mirror;
pub mod normalize;
pub mod oneroster;
pub mod pipeline;
pub mod safety;
pub mod scheduler;
pub mod store;
pub mod sync;
pub mod telemetry;
