//! The command line (CONTRACT §2). `main.rs` only calls [`main`].
//!
//! Output streams: a one-shot command prints its result on stdout and logs on stderr; with
//! `--format json` stdout holds exactly one JSON document. The daemon (`run`) logs JSON lines
//! on stdout. Every command runs on one tokio runtime.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::audit;
use crate::config::{DistrictConfig, Settings};
use crate::db::Databases;
use crate::health;
use crate::history;
use crate::oneroster::OneRosterClient;
use crate::pull;
use crate::scheduler::{self, DistrictState};
use crate::sync::{self, Outcome, RunOptions, RunReport};
use crate::telemetry::{self, Output, error_chain};

/// Exit status of a run that failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status of a bad command line or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit status of a run held by a safety limit.
pub const EXIT_HELD: u8 = 3;
/// Exit status of `sync --district` when another process (a daemon) is running that district.
pub const EXIT_BUSY: u8 = 4;

/// How long `healthcheck` waits for `/readyz`.
const HEALTHCHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(
    name = "oneroster-sync",
    version,
    about = "Keeps a roster store in step with districts' OneRoster 1.1 APIs"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "ONEROSTER_SYNC_CONFIG",
        default_value = "config/oneroster-sync.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The daemon: every enabled district on its schedule until SIGTERM/SIGINT.
    Run,
    /// One cycle for one district, then exit.
    Sync {
        #[arg(long)]
        district: String,
        /// Compute and report the changes; write nothing to the store or the mirror.
        #[arg(long)]
        dry_run: bool,
        /// Pull only what changed since the last successful run, as the daemon does between
        /// full pulls (falls back to a full pull when one is due or no watermark exists).
        #[arg(long, conflicts_with = "full")]
        delta: bool,
        /// Pull everything, whatever the upstream revision says (no shortcut, no delta).
        #[arg(long)]
        full: bool,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Pre-enablement data audit of a district: fetch, validate, report; writes nothing and
    /// needs no database. Exit 0 when no blocking finding, 1 otherwise.
    Audit {
        #[arg(long)]
        district: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Let the district's held change set apply on its next run.
    Approve {
        #[arg(long)]
        district: String,
        /// Approve only if the held change set has this fingerprint (as `sync` and `status`
        /// show it).
        #[arg(long)]
        fingerprint: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Pull every collection of a district and discard it (no database): checks that the
    /// district is reachable and readable, and measures the pull alone (the benchmark floor).
    Pull {
        #[arg(long)]
        district: String,
    },
    /// Apply database migrations.
    Migrate,
    /// Load and validate the configuration and print the districts (secrets redacted).
    CheckConfig {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Each district's state, schedule, recent runs and any held change set.
    Status {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// GET /readyz on `[daemon] listen` (for a container HEALTHCHECK): exit 0 when ready, 1
    /// otherwise.
    Healthcheck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("oneroster-sync: configuration error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // The daemon's output is its logs; every other command keeps stdout for its result.
    let output = match cli.command {
        Command::Run => Output::Stdout,
        _ => Output::Stderr,
    };
    if let Err(e) = telemetry::init(&settings.log, output) {
        eprintln!("oneroster-sync: cannot set up logging: {e:#}");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oneroster-sync: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(dispatch(cli.command, settings)) {
        Ok(code) => code,
        Err(e) => {
            // The chain once, without repeating causes already quoted by their parents.
            eprintln!("oneroster-sync: {}", error_chain(e.as_ref()));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// A configured district, with its secret read (a district with `enabled = false` can still
/// be synced or audited by hand, e.g. before go-live).
fn district(settings: &Settings, id: &str) -> anyhow::Result<DistrictConfig> {
    if settings.district(id).is_none() {
        bail!("no district with id {id:?} in the configuration");
    }
    Ok(settings.with_resolved_secret(id)?)
}

async fn dispatch(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        // These need no database.
        Command::CheckConfig { format } => {
            match format {
                Format::Text => print!("{}", settings.describe()),
                Format::Json => print_json(&settings.describe_json())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck => Ok(healthcheck(&settings).await),
        Command::Pull { district: id } => {
            pull_district(&district(&settings, &id)?).await?;
            Ok(ExitCode::SUCCESS)
        }
        // The audit only reads the district's API: it must write nothing.
        Command::Audit {
            district: id,
            format,
        } => audit_district(&district(&settings, &id)?, format).await,
        Command::Migrate => {
            databases(&settings).await?;
            info!("migrations applied");
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync {
            district: id,
            dry_run,
            delta,
            full: _,
            format,
        } => {
            let district = district(&settings, &id)?;
            let dbs = databases(&settings).await?;
            sync_district(&dbs, &district, dry_run, delta, format).await
        }
        Command::Run => {
            let dbs = databases(&settings).await?;
            let shutdown = CancellationToken::new();
            let on_signal = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                on_signal.cancel();
            });
            scheduler::run(&dbs, &settings, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { format } => {
            let dbs = databases(&settings).await?;
            print_status(&dbs, &settings, format).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve {
            district: id,
            fingerprint,
            format,
        } => {
            if settings.district(&id).is_none() {
                bail!("no district with id {id:?} in the configuration");
            }
            let dbs = databases(&settings).await?;
            approve(&dbs, &id, fingerprint.as_deref(), format).await
        }
    }
}

/// The daemon's databases, migrated (every command that uses them migrates first).
async fn databases(settings: &Settings) -> anyhow::Result<Databases> {
    let dbs = Databases::connect(settings).await?;
    dbs.migrate().await?;
    Ok(dbs)
}

async fn sync_district(
    dbs: &Databases,
    district: &DistrictConfig,
    dry_run: bool,
    delta: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    // A run that writes takes the district's lock, as the daemon does, so it never overlaps a
    // daemon's run of the same district (a dry run writes nothing).
    let lock = if dry_run {
        None
    } else {
        match scheduler::try_lock_district(dbs, &district.id).await? {
            Some(lock) => Some(lock),
            None => {
                eprintln!(
                    "oneroster-sync: district {} is being synced by another process \
                     (a daemon?) right now; nothing done, try again later",
                    district.id
                );
                return Ok(ExitCode::from(EXIT_BUSY));
            }
        }
    };
    let options = RunOptions {
        dry_run,
        allow_delta: delta,
    };
    let report = sync::run_once(dbs, district, options).await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    match format {
        Format::Json => print_json(&report)?,
        Format::Text => print!("{}", render_report(&report)),
    }
    Ok(ExitCode::from(match report.outcome {
        Outcome::Failed => EXIT_FAILED,
        Outcome::Held => EXIT_HELD,
        _ => 0,
    }))
}

/// One JSON document on stdout.
fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string(value).context("serializing the result")?
    );
    Ok(())
}

/// `pull --district ID`: every page of every collection, parsed and discarded.
async fn pull_district(district: &DistrictConfig) -> anyhow::Result<()> {
    let client = OneRosterClient::new(district)?;
    let started = std::time::Instant::now();
    let results = pull::fetch_only(&client, district.demographics).await?;
    let elapsed = started.elapsed();
    let total: usize = results.iter().map(|(_, r, _)| r).sum();
    let pages: usize = results.iter().map(|(_, _, p)| p).sum();
    let endpoints: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(c, records, pages)| {
            (
                c.endpoint().path.to_owned(),
                serde_json::json!({ "records": records, "pages": pages }),
            )
        })
        .collect();
    print_json(&serde_json::json!({
        "district": district.id,
        "duration_ms": elapsed.as_millis() as u64,
        "records": total,
        "pages": pages,
        "endpoints": endpoints,
    }))
}

/// `audit --district ID`: exit 0 when no blocking finding, 1 otherwise.
async fn audit_district(district: &DistrictConfig, format: Format) -> anyhow::Result<ExitCode> {
    let report = audit::run(district).await?;
    match format {
        Format::Json => print_json(&report)?,
        Format::Text => println!("{}", report.render_text()),
    }
    Ok(if report.blocking {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

async fn approve(
    dbs: &Databases,
    district: &str,
    fingerprint: Option<&str>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let approved = history::approve(&dbs.state, district, fingerprint)
        .await
        .context("approving the held change set")?;
    let Some(held) = approved else {
        eprintln!(
            "oneroster-sync: district {district} has no held change set{}",
            fingerprint
                .map(|f| format!(" with fingerprint {f}"))
                .unwrap_or_default()
        );
        return Ok(ExitCode::from(EXIT_FAILED));
    };
    info!(district = %district, fingerprint = %held.fingerprint, "held change set approved");
    match format {
        Format::Json => print_json(&held)?,
        Format::Text => println!(
            "approved change set {} of district {district} (held at {}, reasons: {}); \
             it applies on the district's next run if the source has not moved on",
            held.fingerprint,
            held.held_at.to_rfc3339(),
            held.reasons
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The run report as a table, for people.
pub fn render_report(r: &RunReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(
        out,
        "district {} run {}: {}{} in {} ms ({} pull{})",
        r.district,
        r.run_id,
        r.outcome.as_str(),
        if r.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        },
        r.duration_ms,
        r.pull.as_str(),
        r.pull_reason
            .as_deref()
            .map(|reason| format!(": {reason}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "{:<18} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9}",
        "entity", "fetched", "created", "updated", "reactivated", "deleted", "skipped"
    );
    for (entity, c) in &r.counts {
        let _ = writeln!(
            out,
            "{:<18} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9}",
            entity.as_str(),
            c.fetched,
            c.created,
            c.updated,
            c.reactivated,
            c.deleted,
            c.skipped
        );
    }
    if let Some(hold) = &r.hold {
        let state = match (r.outcome, hold.approved) {
            (Outcome::Held, _) => "HELD by safety limits: nothing was applied",
            (Outcome::DryRun, false) => "would be HELD by safety limits",
            (_, true) => "over safety limits but approved",
            _ => "over safety limits",
        };
        let _ = writeln!(out, "change set {state} (fingerprint {})", hold.fingerprint);
        for b in &hold.breaches {
            let _ = writeln!(out, "  {b}");
        }
        if r.outcome == Outcome::Held {
            let _ = writeln!(
                out,
                "  review it, then: oneroster-sync approve --district {}",
                r.district
            );
        }
    }
    if !r.samples.is_empty() {
        out.push_str("sample ids:\n");
        for (entity, ops) in &r.samples {
            for (op, ids) in ops {
                let _ = writeln!(out, "  {entity} {op}: {}", ids.join(", "));
            }
        }
    }
    if !r.findings.is_empty() {
        out.push_str("findings (errors: skipped; warnings: stored):\n");
        for f in r.findings.entries() {
            let _ = writeln!(
                out,
                "  {:<8} {:<28} {:<18} {:>7}  e.g. {}",
                f.severity.as_str(),
                f.code.as_str(),
                f.entity,
                f.count,
                f.samples.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "  every record: oneroster-sync report --district {} --run {}",
            r.district, r.run_id
        );
    }
    if let Some(e) = &r.error {
        let _ = writeln!(out, "error: {e}");
    }
    out
}

/// `healthcheck`: 0 when `/readyz` answers 200, 1 otherwise (or when no listener is
/// configured).
async fn healthcheck(settings: &Settings) -> ExitCode {
    let Some(addr) = settings.daemon.listen else {
        eprintln!("oneroster-sync: no [daemon] listen address configured: nothing to check");
        return ExitCode::from(EXIT_FAILED);
    };
    match health::probe_ready(addr, HEALTHCHECK_TIMEOUT).await {
        Ok(200) => {
            println!("ready");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("oneroster-sync: not ready (/readyz on {addr} answered {status})");
            ExitCode::from(EXIT_FAILED)
        }
        Err(e) => {
            eprintln!("oneroster-sync: not ready: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn print_status(dbs: &Databases, settings: &Settings, format: Format) -> anyhow::Result<()> {
    let views = scheduler::district_views(&dbs.state, settings)
        .await
        .context("reading the districts' state")?;
    let runs = history::runs(&dbs.state, None, 5)
        .await
        .context("reading the run history")?;
    let held = history::all_pending(&dbs.state)
        .await
        .context("reading held change sets")?;
    if format == Format::Json {
        let districts: Vec<serde_json::Value> = views
            .iter()
            .map(|v| {
                serde_json::json!({
                    "id": v.id,
                    "state": v.state.as_str(),
                    "last_success_at": v.last_success_at,
                    "consecutive_failures": v.consecutive_failures,
                    "next_run_at": v.next_run_at,
                    "leased_by": v.leased_by,
                })
            })
            .collect();
        return print_json(&serde_json::json!({
            "districts": districts,
            "held": held,
            "runs": runs,
        }));
    }
    let ts = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(|| "never".to_owned(), |t| t.to_rfc3339())
    };
    for v in &views {
        let running = match (&v.state, &v.leased_by) {
            (DistrictState::Running, Some(by)) => format!(" (by {by})"),
            _ => String::new(),
        };
        println!(
            "{:<20} {}{running} last success {} consecutive failures {} next run {}",
            v.id,
            v.state.as_str(),
            ts(v.last_success_at),
            v.consecutive_failures,
            ts(v.next_run_at)
        );
    }
    for h in &held {
        println!(
            "{:<20} HELD since {} fingerprint {}{} reasons {}",
            h.district,
            h.held_at.to_rfc3339(),
            h.fingerprint,
            if h.approved {
                " (approved, applies on the next run)"
            } else {
                ""
            },
            h.reasons
        );
    }
    for r in &runs {
        println!(
            "{:<20} {} {:<14} {}",
            r.district_id,
            r.started_at.to_rfc3339(),
            r.outcome,
            r.error.clone().unwrap_or_default()
        );
    }
    Ok(())
}
