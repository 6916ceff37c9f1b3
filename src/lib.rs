//! oneroster-sync: keeps a K-12 application's roster store in step with each district's
//! OneRoster 1.1 API (ClassLink Roster Server).
//!
//! Data flows one way: `config` → `scheduler` → `sync::run_once` → `pull` (every collection of
//! the `registry`, through `oneroster` (HTTP) and `normalize` (pure) into the `snapshot`,
//! classified against the `mirror` index by `diff`) → change set (`changeset`) → `safety`
//! verdict → `store` (apply) and `mirror` (advance) → `history` and the run summary. The
//! `audit` is the same pull in report mode.

/// SQL assembled from this crate's own table and column names (never from input), marked as
/// such for sqlx.
macro_rules! sql {
    ($($arg:tt)*) => {
        sqlx::AssertSqlSafe(format!($($arg)*))
    };
}

pub mod audit;
pub mod changeset;
pub mod cli;
pub mod config;
pub mod db;
pub mod diff;
pub mod domain;
pub mod health;
pub mod history;
pub mod journal;
pub mod mirror;
pub mod normalize;
pub mod oneroster;
pub mod pull;
pub mod registry;
pub mod safety;
pub mod scheduler;
pub mod scope;
pub mod snapshot;
pub mod store;
pub mod stored;
pub mod sync;
pub mod table;
pub mod telemetry;
pub mod verify;
