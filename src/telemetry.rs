//! Telemetry: one `tracing` subscriber for the whole process. JSON lines on stdout for
//! containers and log shippers, a readable one-line format for people at a terminal.
//!
//! Every JSON line carries the fields of the span it was logged in (`span`) and of all enclosing
//! spans (`spans`), so the per-run span's `district` and `run_id` are on every line of a run.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

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
/// `log.level`; output to stdout as `log.format` says. A second call returns
/// [`TelemetryError::AlreadyInstalled`] instead of panicking.
pub fn init(log: &LogSettings) -> Result<(), TelemetryError> {
    subscriber(log.format, filter(log)?, std::io::stdout)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)
}

/// The subscriber `init` installs, writing to `writer` (tests capture the output with it).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync + 'static>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt()
                .json()
                // Event fields at the top level rather than under "fields", for easy querying.
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .with_env_filter(filter)
                .with_writer(writer)
                .finish(),
        ),
        LogFormat::Pretty => Box::new(
            tracing_subscriber::fmt()
                .compact()
                .with_ansi(std::io::stdout().is_terminal())
                .with_env_filter(filter)
                .with_writer(writer)
                .finish(),
        ),
    }
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects everything the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    fn capture(format: LogFormat, level: &str) -> String {
        let out = Captured::default();
        let filter = EnvFilter::try_new(level).unwrap();
        tracing::subscriber::with_default(subscriber(format, filter, out.clone()), || {
            let run = tracing::info_span!("run", district = "lakeside", run_id = "r-1");
            run.in_scope(|| {
                tracing::info!(created = 3, "run finished");
                tracing::debug!("filtered out at info");
            });
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_lines_carry_event_and_span_fields() {
        let text = capture(LogFormat::Json, "info");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["created"], 3);
        assert_eq!(line["message"], "run finished");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["span"]["district"], "lakeside");
        assert_eq!(line["span"]["run_id"], "r-1");
        assert_eq!(line["spans"][0]["district"], "lakeside");
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
            "{timestamp}"
        );
    }

    #[test]
    fn pretty_lines_are_readable_and_filtered() {
        let text = capture(LogFormat::Pretty, "debug");
        assert!(text.contains("run finished"), "{text}");
        assert!(
            text.contains("district") && text.contains("lakeside"),
            "{text}"
        );
        assert!(text.contains("filtered out at info"), "{text}");
        assert!(!text.trim_start().starts_with('{'), "{text}");
    }
}
