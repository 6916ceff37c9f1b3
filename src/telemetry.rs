//! Telemetry: one `tracing` subscriber for the whole process. JSON lines on stdout for
//! containers and log shippers, a readable one-line format for people at a terminal.
//!
//! A JSON line is one flat object: `timestamp`, `level`, `target`, `span` (the innermost span's
//! name), the fields of every enclosing span, then the event's own fields (`message` among them).
//! So the per-run span's `district` and `run_id` are top-level keys of every line of a run, where
//! a log query or alert finds them without knowing about spans.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
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

/// Where the log lines go: the daemon logs on stdout (its output is its logs); a one-shot
/// command prints its result on stdout and logs on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// Installs the global subscriber: filter from `RUST_LOG` when set (and not empty), else
/// `log.level`; lines to `output` as `log.format` says. A second call returns
/// [`TelemetryError::AlreadyInstalled`] instead of panicking.
pub fn init(log: &LogSettings, output: Output) -> Result<(), TelemetryError> {
    let filter = filter(log)?;
    let installed = match output {
        Output::Stdout => subscriber(log.format, filter, std::io::stdout).try_init(),
        Output::Stderr => subscriber(log.format, filter, std::io::stderr).try_init(),
    };
    installed.map_err(|_| TelemetryError::AlreadyInstalled)
}

/// The error and its causes on one line, for a single log field (causes already quoted by
/// their parent are not repeated).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Fields whose value is a JSON document, kept as one in the line (the summary's findings per
/// code).
const JSON_FIELDS: [&str; 1] = ["findings"];

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
                // Span fields are kept as JSON text, which FlatJson merges into each line.
                .fmt_fields(JsonFields::new())
                .event_format(FlatJson)
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

/// One flat JSON object per event (see the module documentation).
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_string()));
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                innermost = Some(span.name());
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&fields.fields)
                {
                    line.extend(fields);
                }
            }
            if let Some(name) = innermost {
                line.insert("span".into(), Value::String(name.to_string()));
            }
        }
        event.record(&mut FieldVisitor(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Records an event's fields as JSON values.
struct FieldVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::Bool(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if JSON_FIELDS.contains(&field.name())
            && let Ok(document) = serde_json::from_str::<Value>(&text)
        {
            self.0.insert(field.name().into(), document);
            return;
        }
        self.0.insert(field.name().into(), Value::String(text));
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
                tracing::info!(created = 3, findings = %r#"{"date_unparseable":2}"#, "run finished");
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
        assert_eq!(line["findings"]["date_unparseable"], 2);
        assert_eq!(line["message"], "run finished");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["district"], "lakeside");
        assert_eq!(line["run_id"], "r-1");
        assert_eq!(line["span"], "run");
        assert_eq!(line["target"], module_path!());
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
