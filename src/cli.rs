//! The command line (CONTRACT §2). `main.rs` only calls [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::audit;
use crate::config::Settings;
use crate::db::Databases;
use crate::safety;
use crate::scheduler::{self, DistrictState};
use crate::sync::{self, Outcome, RunOptions, RunReport};
use crate::{health, telemetry};

/// Exit status of a run that failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status of a bad command line or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit status of a run held by a safety limit.
pub const EXIT_HELD: u8 = 3;
/// Exit status of `sync --district` when another process (a daemon) is running that district.
pub const EXIT_BUSY: u8 = 4;

/// How long `healthcheck` waits for `/readyz`.
const HEALTHCHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// One cycle for one district (a full pull unless --delta), then exit.
    Sync {
        #[arg(long)]
        district: String,
        /// Compute and report the changes; write nothing to the store or the mirror.
        #[arg(long)]
        dry_run: bool,
        /// Pull only what changed since the last successful run, as the daemon does between
        /// full pulls (falls back to a full pull when one is due or no watermark exists).
        #[arg(long)]
        delta: bool,
        /// How to print the run report (logs go to stdout either way).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Pre-enablement data audit of a district: fetch, validate, report; writes nothing.
    /// Exit 0 when no blocking finding, 1 otherwise.
    Audit {
        #[arg(long)]
        district: String,
        /// `json`: one JSON document on the last line of stdout (after the log lines).
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
    CheckConfig,
    /// Each district's state, schedule, recent runs and any held change set.
    Status,
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
    if let Command::Pull { district } = &cli.command {
        return match runtime_block_on(pull_district(&settings, district)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("oneroster-sync: {}", sync::error_chain(e.as_ref()));
                ExitCode::from(EXIT_FAILED)
            }
        };
    }
    if let Command::CheckConfig = cli.command {
        println!("{}", settings.describe());
        return ExitCode::SUCCESS;
    }
    if let Command::Healthcheck = cli.command {
        return healthcheck(&settings);
    }
    if let Err(e) = telemetry::init(&settings.log) {
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
            let chain = sync::error_chain(e.as_ref());
            error!(error = %chain, "command failed");
            eprintln!("oneroster-sync: {chain}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn runtime_block_on<F: std::future::Future>(future: F) -> F::Output {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(future),
        Err(e) => {
            eprintln!("oneroster-sync: cannot start the async runtime: {e}");
            std::process::exit(i32::from(EXIT_FAILED))
        }
    }
}

/// `pull --district ID`: every page of every collection, parsed and discarded.
async fn pull_district(settings: &Settings, district: &str) -> anyhow::Result<()> {
    use crate::oneroster::{
        DEMOGRAPHICS_FIELDS, Endpoint, OneRosterClient, PullQuery, WireRecord, wire,
    };
    use futures_util::TryStreamExt;

    async fn count<W: WireRecord>(
        client: &OneRosterClient,
        endpoint: Endpoint,
        query: PullQuery,
    ) -> anyhow::Result<(usize, usize)> {
        let mut pages = std::pin::pin!(client.pages::<W>(endpoint, query));
        let (mut records, mut n) = (0, 0);
        while let Some(page) = pages.try_next().await? {
            records += page.records.len() + page.unreadable.len();
            n += 1;
        }
        Ok((records, n))
    }

    if settings.district(district).is_none() {
        bail!("no district with id {district:?} in the configuration");
    }
    let district = settings.with_resolved_secret(district)?;
    let client = OneRosterClient::new(&district)?;
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    results.push((
        Endpoint::Orgs,
        count::<wire::Org>(&client, Endpoint::Orgs, PullQuery::default()).await?,
    ));
    results.push((
        Endpoint::AcademicSessions,
        count::<wire::AcademicSession>(&client, Endpoint::AcademicSessions, PullQuery::default())
            .await?,
    ));
    results.push((
        Endpoint::Courses,
        count::<wire::Course>(&client, Endpoint::Courses, PullQuery::default()).await?,
    ));
    results.push((
        Endpoint::Classes,
        count::<wire::Class>(&client, Endpoint::Classes, PullQuery::default()).await?,
    ));
    results.push((
        Endpoint::Users,
        count::<wire::User>(&client, Endpoint::Users, PullQuery::default()).await?,
    ));
    if district.demographics {
        let query = PullQuery {
            fields: Some(DEMOGRAPHICS_FIELDS.to_vec()),
            ..PullQuery::default()
        };
        results.push((
            Endpoint::Demographics,
            count::<wire::Demographics>(&client, Endpoint::Demographics, query).await?,
        ));
    }
    results.push((
        Endpoint::Enrollments,
        count::<wire::Enrollment>(&client, Endpoint::Enrollments, PullQuery::default()).await?,
    ));
    let elapsed = started.elapsed();
    let total: usize = results.iter().map(|(_, (r, _))| r).sum();
    let pages: usize = results.iter().map(|(_, (_, p))| p).sum();
    let endpoints: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(e, (records, pages))| {
            (
                e.path().to_string(),
                serde_json::json!({ "records": records, "pages": pages }),
            )
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "district": district.id,
            "duration_ms": elapsed.as_millis() as u64,
            "records": total,
            "pages": pages,
            "endpoints": endpoints,
        })
    );
    Ok(())
}

async fn dispatch(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    // The audit only reads the district's API: it needs no database and must write nothing.
    if let Command::Audit { district, format } = &command {
        return audit_district(&settings, district, *format).await;
    }
    let dbs = Databases::connect(&settings).await?;
    dbs.migrate().await?;
    match command {
        Command::Migrate => {
            info!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync {
            district,
            dry_run,
            delta,
            format,
        } => {
            if settings.district(&district).is_none() {
                bail!("no district with id {district:?} in the configuration");
            }
            // A district with `enabled = false` can still be synced by hand (e.g. dry runs
            // before go-live); its secret is only read now.
            let district = settings.with_resolved_secret(&district)?;
            // A run that writes takes the district's lock, as the daemon does, so it never
            // overlaps a daemon's run of the same district (a dry run writes nothing).
            let lock = if dry_run {
                None
            } else {
                match scheduler::try_lock_district(&dbs, &district.id).await? {
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
            let report = sync::run_once(
                &dbs,
                &district,
                RunOptions {
                    dry_run,
                    allow_delta: delta,
                },
            )
            .await;
            if let Some(lock) = lock {
                lock.release().await;
            }
            print_report(&report, format)?;
            Ok(ExitCode::from(match report.outcome {
                Outcome::Failed => EXIT_FAILED,
                Outcome::Held => EXIT_HELD,
                _ => 0,
            }))
        }
        Command::Run => {
            let shutdown = CancellationToken::new();
            let on_signal = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                on_signal.cancel();
            });
            scheduler::run(&dbs, &settings, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            print_status(&dbs, &settings).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck => Ok(healthcheck(&settings)),
        Command::Approve {
            district,
            fingerprint,
        } => {
            if settings.district(&district).is_none() {
                bail!("no district with id {district:?} in the configuration");
            }
            match safety::approve(&dbs.state, &district, fingerprint.as_deref())
                .await
                .context("approving the held change set")?
            {
                Some(held) => {
                    info!(district = %district, fingerprint = %held.fingerprint, "held change set approved");
                    println!(
                        "approved change set {} of district {district} (held at {}, reasons: {}); \
                         it applies on the district's next run if the source has not moved on",
                        held.fingerprint,
                        held.held_at.to_rfc3339(),
                        held.reasons
                    );
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!(
                        "oneroster-sync: district {district} has no held change set{}",
                        fingerprint
                            .map(|f| format!(" with fingerprint {f}"))
                            .unwrap_or_default()
                    );
                    Ok(ExitCode::from(EXIT_FAILED))
                }
            }
        }
        // Both are handled before the database is opened (check-config in `main`).
        Command::Audit { .. } | Command::CheckConfig | Command::Pull { .. } => {
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `audit --district ID`: exit 0 when no blocking finding, 1 otherwise.
async fn audit_district(
    settings: &Settings,
    district: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    if settings.district(district).is_none() {
        bail!("no district with id {district:?} in the configuration");
    }
    // Audits come before go-live, so the district is usually `enabled = false`: read its
    // secret now.
    let district = settings.with_resolved_secret(district)?;
    let report = audit::run(&district).await?;
    match format {
        // Logs share stdout: the document is one line, and the last one.
        Format::Json => println!(
            "{}",
            serde_json::to_string(&report).context("serializing the audit report")?
        ),
        Format::Text => println!("{}", report.render_text()),
    }
    Ok(if report.blocking {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
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

fn print_report(report: &RunReport, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            println!(
                "{}",
                serde_json::to_string(report).context("serializing the report")?
            );
        }
        Format::Text => eprintln!("{}", render_report(report)),
    }
    Ok(())
}

/// The run report as a table, for people.
pub fn render_report(r: &RunReport) -> String {
    let mut out = format!(
        "district {} run {}: {}{} in {} ms ({} pull)\n",
        r.district,
        r.run_id,
        r.outcome.as_str(),
        if r.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        },
        r.duration_ms,
        if r.full_pull { "full" } else { "delta" }
    );
    out.push_str(&format!(
        "{:<18} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9}\n",
        "entity", "fetched", "created", "updated", "reactivated", "deleted", "skipped"
    ));
    for (entity, c) in &r.counts {
        out.push_str(&format!(
            "{:<18} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9}\n",
            entity.as_str(),
            c.fetched,
            c.created,
            c.updated,
            c.reactivated,
            c.deleted,
            c.skipped
        ));
    }
    if let Some(hold) = &r.hold {
        let state = match (r.outcome, hold.approved) {
            (Outcome::Held, _) => "HELD by safety limits: nothing was applied",
            (Outcome::DryRun, false) => "would be HELD by safety limits",
            (_, true) => "over safety limits but approved",
            _ => "over safety limits",
        };
        out.push_str(&format!(
            "change set {state} (fingerprint {})\n",
            hold.fingerprint
        ));
        for b in &hold.breaches {
            out.push_str(&format!("  {b}\n"));
        }
        if r.outcome == Outcome::Held {
            out.push_str(&format!(
                "  review it, then: oneroster-sync approve --district {}\n",
                r.district
            ));
        }
    }
    if !r.samples.is_empty() {
        out.push_str("sample ids:\n");
        for (entity, ops) in &r.samples {
            for (op, ids) in ops {
                out.push_str(&format!("  {entity} {op}: {}\n", ids.join(", ")));
            }
        }
    }
    if !r.skipped.is_empty() {
        out.push_str("skipped records:\n");
        for s in r.skipped.iter().take(50) {
            out.push_str(&format!("  {} {}: {}\n", s.entity, s.sourced_id, s.reason));
        }
        if r.skipped.len() > 50 {
            out.push_str(&format!(
                "  ... and {} more (see sync.runs)\n",
                r.skipped.len() - 50
            ));
        }
    }
    if let Some(e) = &r.error {
        out.push_str(&format!("error: {e}\n"));
    }
    out
}

/// `healthcheck`: 0 when `/readyz` answers 200, 1 otherwise (or when no listener is
/// configured).
fn healthcheck(settings: &Settings) -> ExitCode {
    let Some(addr) = settings.daemon.listen else {
        eprintln!("oneroster-sync: no [daemon] listen address configured: nothing to check");
        return ExitCode::from(EXIT_FAILED);
    };
    let probed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(health::probe_ready(addr, HEALTHCHECK_TIMEOUT))
                .map_err(|e| e.to_string())
        });
    match probed {
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

async fn print_status(dbs: &Databases, settings: &Settings) -> anyhow::Result<()> {
    let ts = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(|| "never".to_owned(), |t| t.to_rfc3339())
    };
    for v in scheduler::district_views(&dbs.state, settings)
        .await
        .context("reading the districts' state")?
    {
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
    let rows: Vec<(String, String, chrono::DateTime<chrono::Utc>, Option<String>)> = sqlx::query_as(
        "SELECT district_id, outcome, started_at, error FROM (
            SELECT *, row_number() OVER (PARTITION BY district_id ORDER BY started_at DESC) AS n FROM sync.runs
         ) r WHERE n <= 5 ORDER BY district_id, started_at DESC",
    )
    .fetch_all(&dbs.state)
    .await
    .context("reading the run history")?;
    let held: Vec<(
        String,
        String,
        chrono::DateTime<chrono::Utc>,
        bool,
        serde_json::Value,
    )> = sqlx::query_as(
        "SELECT district_id, fingerprint, held_at, approved_at IS NOT NULL, reasons
         FROM sync.held_change_sets WHERE released_at IS NULL ORDER BY district_id, held_at DESC",
    )
    .fetch_all(&dbs.state)
    .await
    .context("reading held change sets")?;
    for (district, fingerprint, held_at, approved, reasons) in held {
        println!(
            "{district:<20} HELD since {} fingerprint {fingerprint}{} reasons {reasons}",
            held_at.to_rfc3339(),
            if approved {
                " (approved, applies on the next run)"
            } else {
                ""
            }
        );
    }
    for (district, outcome, started, error) in rows {
        println!(
            "{district:<20} {} {outcome:<14} {}",
            started.to_rfc3339(),
            error.unwrap_or_default()
        );
    }
    Ok(())
}
