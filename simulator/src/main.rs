//! `oneroster-sim`: serves a synthetic ClassLink district over HTTP, as OneRoster 1.1 and 1.2.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use oneroster_sim::{Counts, Credentials, SimConfig, Tier};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TierArg {
    S,
    M,
    L,
    #[value(name = "XL", alias = "xl")]
    Xl,
}

#[derive(Debug, Parser)]
#[command(
    name = "oneroster-sim",
    version,
    about,
    after_help = "Serves the same district as OneRoster 1.1 at /ims/oneroster/v1p1/... (ClassLink's \
                  wire format) and as OneRoster 1.2 Rostering at /ims/oneroster/rostering/v1p2/...: \
                  orgs, academicSessions, courses, classes, users, enrollments, demographics and \
                  single objects. Tokens from POST /oauth2/token; control API under /__sim \
                  (loopback only)."
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8900")]
    listen: SocketAddr,
    /// Seed of the synthetic district (same seed and counts give byte-identical responses).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// District size (ONEROSTER.md "Scale").
    #[arg(long, value_enum, ignore_case = true, default_value = "s")]
    tier: TierArg,
    /// Override the tier's number of students.
    #[arg(long)]
    students: Option<usize>,
    #[arg(long)]
    teachers: Option<usize>,
    #[arg(long)]
    schools: Option<usize>,
    #[arg(long)]
    classes: Option<usize>,
    #[arg(long)]
    enrollments_per_student: Option<usize>,
    #[arg(long, default_value = "sim-client")]
    client_id: String,
    #[arg(long, default_value = "sim-secret")]
    client_secret: String,
    #[arg(long, default_value = "sim-bearer-token")]
    bearer_token: String,
    /// Lifetime of OAuth2 tokens from the token endpoint.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    token_ttl: Duration,
    /// Most records per page the server honours.
    #[arg(long)]
    page_cap: Option<usize>,
    /// Over the page cap, return a short page silently instead of a 400.
    #[arg(long)]
    clamp_silently: bool,
    /// Users on the 1.1 wire also carry the 1.2 `roles[]` array, as some ClassLink districts
    /// send it.
    #[arg(long)]
    v1p1_roles: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let tier = match args.tier {
        TierArg::S => Tier::S,
        TierArg::M => Tier::M,
        TierArg::L => Tier::L,
        TierArg::Xl => Tier::XL,
    };
    let mut counts = Counts::tier(tier);
    counts.students = args.students.unwrap_or(counts.students);
    counts.teachers = args.teachers.unwrap_or(counts.teachers);
    counts.schools = args.schools.unwrap_or(counts.schools);
    counts.classes = args.classes.unwrap_or(counts.classes);
    counts.enrollments_per_student = args
        .enrollments_per_student
        .unwrap_or(counts.enrollments_per_student);

    let mut cfg = SimConfig::new(args.seed, counts.clone());
    cfg.credentials = Credentials {
        client_id: args.client_id,
        client_secret: args.client_secret,
        bearer_token: args.bearer_token,
    };
    cfg.token_ttl = args.token_ttl;
    cfg.page_cap = args.page_cap;
    cfg.clamp_silently = args.clamp_silently;
    cfg.v1p1_roles = args.v1p1_roles;

    tracing::info!(seed = args.seed, ?counts, "generating district");
    let sim = oneroster_sim::spawn_on(cfg, args.listen).await?;
    let (users, enrollments) = sim.read(|d| (d.users.len(), d.enrollments.len()));
    tracing::info!(
        base_url = %sim.base_url(),
        base_url_v1p2 = %sim.base_url_v1p2(),
        token_url = %sim.token_url(),
        control_url = %format!("http://{}/__sim", sim.addr()),
        users,
        enrollments,
        "oneroster-sim listening"
    );
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    sim.shutdown().await;
    Ok(())
}
