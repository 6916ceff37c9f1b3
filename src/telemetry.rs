//! Telemetry: one `tracing` subscriber for the whole process. JSON lines on stdout for
//! containers and log shippers, a readable one-line format for people at a terminal.
//!
//! Every JSON line carries the fields of the span it was logged in (`span`) and of all enclosing
//! spans (`spans`), so the per-run span's `district` and `run_id` are on every line of a run.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// The variable that, when set, overrides `[log].level`.
const FILTER_ENV: &str = "RUST_LOG";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{FILTER_ENV}: not a valid filter: {0}")]
    InvalidEnvFilter(#[source] tracing_subscriber::filter::ParseError),
    #[error("[log]: key \"level\": not a valid filter: {0}")]
    InvalidLevel(#[source] tracing_subscriber::filter::ParseError),
    /// A global subscriber is already installed (e.g. a second call in tests); harmless there.
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs the global subscriber: filter from `RUST_LOG` when set (and not empty), else
/// `log.level`; output as `log.format` says. A second call returns
/// [`TelemetryError::AlreadyInstalled`] instead of panicking.
pub fn init(log: &LogSettings) -> Result<(), TelemetryError> {
    let filter = filter(log)?;
    let installed = match log.format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            // Event fields at the top level rather than under "fields", for easy querying.
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .try_init(),
        LogFormat::Pretty => tracing_subscriber::fmt()
            .compact()
            .with_ansi(std::io::stdout().is_terminal())
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .try_init(),
    };
    installed.map_err(|_| TelemetryError::AlreadyInstalled)
}

/// The filter `init` would install (exposed for `check-config` and tests).
pub fn filter(log: &LogSettings) -> Result<EnvFilter, TelemetryError> {
    match std::env::var(FILTER_ENV) {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::try_new(directives).map_err(TelemetryError::InvalidEnvFilter)
        }
        _ => EnvFilter::try_new(&log.level).map_err(TelemetryError::InvalidLevel),
    }
}
