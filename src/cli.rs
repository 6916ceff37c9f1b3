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
use crate::domain::Entity;
use crate::health;
use crate::history;
use crate::journal;
use crate::oneroster::OneRosterClient;
use crate::pull;
use crate::scheduler::{self, DistrictState};
use crate::sync::{self, Outcome, RunOptions, RunReport};
use crate::table::Table;
use crate::telemetry::{self, Output, error_chain};
use crate::verify;

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
    about = "Keeps a roster store in step with districts' OneRoster (1.1 and 1.2) APIs"
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
    /// The district's runs, newest first: start, duration, outcome, pull, changes per entity
    /// and operation, errors and warnings per code.
    History {
        #[arg(long)]
        district: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long, value_enum, default_value_t = TableFormat::Text)]
        format: TableFormat,
    },
    /// The change journal, newest first: what each run changed (dry runs and held runs: what
    /// they would change), record by record.
    Changes {
        #[arg(long)]
        district: String,
        /// Only this run's changes.
        #[arg(long, conflicts_with = "since")]
        run: Option<uuid::Uuid>,
        /// Only changes of runs started this long ago or later (e.g. `3d`, `12h`).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Only this entity type (`users`, `classes`, `enrollments`, ...).
        #[arg(long, value_parser = parse_entity)]
        entity: Option<Entity>,
        /// Only this record.
        #[arg(long = "id")]
        sourced_id: Option<String>,
        #[arg(long, default_value_t = 10_000)]
        limit: i64,
        #[arg(long, value_enum, default_value_t = TableFormat::Text)]
        format: TableFormat,
    },
    /// Every skipped and warned record of a run (default: the last) with its code and message.
    Report {
        #[arg(long)]
        district: String,
        #[arg(long)]
        run: Option<uuid::Uuid>,
        #[arg(long, value_enum, default_value_t = TableFormat::Text)]
        format: TableFormat,
    },
    /// Drift check: the roster store against what the daemon last applied. Writes nothing;
    /// exit 1 on drift. `--repair`: the next run pulls everything and rewrites the drifted rows
    /// from the source.
    Verify {
        #[arg(long)]
        district: String,
        #[arg(long)]
        repair: bool,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TableFormat {
    Text,
    Json,
    Csv,
}

fn parse_entity(name: &str) -> Result<Entity, String> {
    Entity::from_name(name).ok_or_else(|| {
        format!(
            "not an entity type (one of {})",
            Entity::ALL.map(Entity::as_str).join(", ")
        )
    })
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
            full,
            format,
        } => {
            let district = district(&settings, &id)?;
            let dbs = databases(&settings).await?;
            let options = RunOptions {
                dry_run,
                allow_delta: delta,
                full,
            };
            sync_district(&dbs, &district, options, format).await
        }
        Command::Run => {
            // The daemon waits for its database (see `scheduler::run`).
            let dbs = Databases::lazy(&settings)?;
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
        Command::History {
            district: id,
            limit,
            format,
        } => {
            known(&settings, &id)?;
            let dbs = databases(&settings).await?;
            let runs = history::runs(&dbs.state, Some(&id), limit).await?;
            print_table(&history_table(&runs), format)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Changes {
            district: id,
            run,
            since,
            entity,
            sourced_id,
            limit,
            format,
        } => {
            known(&settings, &id)?;
            let dbs = databases(&settings).await?;
            let filter = journal::Filter {
                run,
                since: since.map(|d| {
                    chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or_default()
                }),
                entity,
                sourced_id,
                limit,
            };
            let changes = journal::changes(&dbs.state, &id, &filter).await?;
            print_table(&changes_table(&changes), format)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            district: id,
            run,
            format,
        } => {
            known(&settings, &id)?;
            let dbs = databases(&settings).await?;
            let Some(row) = history::run(&dbs.state, &id, run).await? else {
                bail!("district {id} has no such run in the history");
            };
            let findings = history::findings(&dbs.state, row.run_id).await?;
            if format == TableFormat::Text {
                println!(
                    "run {} of district {id}: {} at {}, {} findings",
                    row.run_id,
                    row.outcome,
                    row.started_at.to_rfc3339(),
                    findings.len()
                );
            }
            print_table(&report_table(row.run_id, &findings), format)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            district: id,
            repair,
            format,
        } => {
            known(&settings, &id)?;
            let dbs = databases(&settings).await?;
            verify_district(&dbs, &id, repair, format).await
        }
    }
}

fn known(settings: &Settings, id: &str) -> anyhow::Result<()> {
    if settings.district(id).is_none() {
        bail!("no district with id {id:?} in the configuration");
    }
    Ok(())
}

fn print_table(table: &Table, format: TableFormat) -> anyhow::Result<()> {
    match format {
        TableFormat::Text => print!("{}", table.text()),
        TableFormat::Json => print_json(&table.json())?,
        TableFormat::Csv => print!("{}", table.csv().context("writing CSV")?),
    }
    Ok(())
}

fn history_table(runs: &[history::RunRow]) -> Table {
    use serde_json::{Value, json};
    let mut t = Table::with_details(
        &[
            "started_at",
            "duration_s",
            "outcome",
            "pull",
            "changes",
            "errors",
            "warnings",
            "findings",
            "run_id",
        ],
        &[
            "dry_run",
            "pull_reason",
            "counts",
            "findings_by_code",
            "error",
        ],
    );
    for r in runs {
        let counts = &r.counts.0;
        let mut changes = Vec::new();
        for entity in Entity::ALL {
            let c = &counts[entity.as_str()];
            let n = |op: &str| c[op].as_i64().unwrap_or(0);
            let parts: Vec<String> = [
                ("+", n("created")),
                ("~", n("updated") + n("reactivated")),
                ("-", n("deleted")),
            ]
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(sign, n)| format!("{sign}{n}"))
            .collect();
            if !parts.is_empty() {
                changes.push(format!("{} {}", entity.as_str(), parts.join(" ")));
            }
        }
        let findings = r.findings.0.as_array().cloned().unwrap_or_default();
        let (mut errors, mut warnings) = (0, 0);
        let mut by_code = serde_json::Map::new();
        for f in &findings {
            let n = f["count"].as_i64().unwrap_or(0);
            match f["severity"].as_str() {
                Some("error") => errors += n,
                _ => warnings += n,
            }
            let code = f["code"].as_str().unwrap_or_default().to_owned();
            let total = by_code.get(&code).and_then(Value::as_i64).unwrap_or(0) + n;
            by_code.insert(code, json!(total));
        }
        let short: Vec<String> = by_code.iter().map(|(c, n)| format!("{c}={n}")).collect();
        let duration = r
            .finished_at
            .map(|f| ((f - r.started_at).num_milliseconds() as f64 / 1000.0).to_string());
        let mut outcome = r.outcome.clone();
        if r.dry_run && outcome != "dry_run" {
            outcome.push_str(" (dry run)");
        }
        t.push(vec![
            json!(
                r.started_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            duration.map_or(Value::Null, |d| json!(d.parse::<f64>().unwrap_or(0.0))),
            json!(outcome),
            json!(r.pull),
            json!(changes.join(", ")),
            json!(errors),
            json!(warnings),
            json!(short.join(" ")),
            json!(r.run_id),
            json!(r.dry_run),
            json!(r.pull_reason),
            r.counts.0.clone(),
            Value::Object(by_code),
            json!(r.error),
        ]);
    }
    t
}

fn changes_table(changes: &[journal::Change]) -> Table {
    use serde_json::{Value, json};
    let mut t = Table::with_details(
        &[
            "run_started_at",
            "mode",
            "entity",
            "sourced_id",
            "operation",
            "columns",
            "changes",
        ],
        &["run_id", "values"],
    );
    for c in changes {
        let values = c.changes.as_ref().map(|v| v.0.clone());
        // "email: a -> b; status: active -> deleted", demographics by name only.
        let shown: Vec<String> = c
            .columns
            .iter()
            .map(|col| match values.as_ref().and_then(|v| v.get(col)) {
                Some(Value::Array(pair)) if pair.len() == 2 => {
                    let side = |v: &Value| match v {
                        Value::Null => "NULL".to_owned(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    format!("{col}: {} -> {}", side(&pair[0]), side(&pair[1]))
                }
                _ => col.clone(),
            })
            .collect();
        t.push(vec![
            json!(
                c.run_started_at
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            ),
            json!(c.mode),
            json!(c.entity),
            json!(c.sourced_id),
            json!(c.operation),
            json!(c.columns.join(",")),
            json!(shown.join("; ")),
            json!(c.run_id),
            values.unwrap_or(Value::Null),
        ]);
    }
    t
}

fn report_table(run_id: uuid::Uuid, findings: &[history::FindingRow]) -> Table {
    use serde_json::json;
    let mut t = Table::with_details(
        &["severity", "code", "entity", "sourced_id", "message"],
        &["run_id"],
    );
    for f in findings {
        t.push(vec![
            json!(f.severity),
            json!(f.code),
            json!(f.entity),
            json!(f.sourced_id),
            json!(f.message),
            json!(run_id),
        ]);
    }
    t
}

/// `verify`: exit 0 without drift, 1 with.
async fn verify_district(
    dbs: &Databases,
    district: &str,
    repair: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let drift = verify::check(dbs, district).await?;
    let marked = if repair && drift.total() > 0 {
        Some(verify::repair(dbs, &drift).await?)
    } else {
        None
    };
    match format {
        Format::Json => {
            let mut doc = serde_json::to_value(&drift)?;
            doc["drifted"] = serde_json::json!(drift.total());
            doc["repair_marked"] = serde_json::json!(marked);
            print_json(&doc)?;
        }
        Format::Text => {
            if drift.total() == 0 {
                println!(
                    "district {district}: no drift: the roster store holds what the daemon last applied"
                );
            } else {
                println!(
                    "district {district}: DRIFT: {} rows changed, {} missing, {} added in the roster store since the daemon applied them",
                    drift.count("changed"),
                    drift.count("missing"),
                    drift.count("added")
                );
                for (entity, d) in &drift.entities {
                    if d.total() == 0 {
                        continue;
                    }
                    println!(
                        "  {:<18} changed {:>6} missing {:>6} added {:>6}",
                        entity.as_str(),
                        d.changed,
                        d.missing,
                        d.added
                    );
                    for (kind, ids) in &d.samples {
                        println!("    {kind}: {}", ids.join(", "));
                    }
                }
                match marked {
                    Some(n) => println!(
                        "repair: {n} rows marked; the district's next run pulls everything and rewrites them from the source (judged by the safety limits)"
                    ),
                    None => {
                        println!("to repair: oneroster-sync verify --district {district} --repair")
                    }
                }
            }
            if drift.statuses_only {
                println!(
                    "note: the mirror's row hashes are of an older version: only statuses were compared (the next run rewrites them)"
                );
            }
        }
    }
    Ok(if drift.total() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
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
    options: RunOptions,
    format: Format,
) -> anyhow::Result<ExitCode> {
    // A run that writes takes the district's lock, as the daemon does, so it never overlaps a
    // daemon's run of the same district (a dry run writes nothing).
    let lock = if options.dry_run {
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
    let started = std::time::Instant::now();
    let (client, _) = OneRosterClient::connect(district).await?;
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
