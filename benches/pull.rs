//! Pull benchmark: every page of every collection through `OneRosterClient::pages`, no database,
//! against the simulator started in this process, at concurrency 1, 4 and 8.
//!
//! `cargo bench --bench pull` (tier from `BENCH_TIER`: S, M (default), L or XL; page size from
//! `BENCH_PAGE_SIZE`, default the configuration's default).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use oneroster_sim::{Counts, SimConfig, SimHandle, Tier};
use oneroster_sync::config::{AuthConfig, DistrictConfig, defaults};
use oneroster_sync::oneroster::{
    DEMOGRAPHICS_FIELDS, Endpoint, OneRosterClient, PullQuery, WireRecord, wire,
};
use url::Url;

#[derive(Default, Clone, Copy)]
struct Tally {
    records: u64,
    pages: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.records += other.records;
        self.pages += other.pages;
    }
}

fn tier() -> anyhow::Result<Tier> {
    let name = std::env::var("BENCH_TIER").unwrap_or_else(|_| "M".into());
    Ok(match name.to_ascii_uppercase().as_str() {
        "S" => Tier::S,
        "M" => Tier::M,
        "L" => Tier::L,
        "XL" => Tier::XL,
        other => bail!("BENCH_TIER must be S, M, L or XL (got {other})"),
    })
}

fn page_size() -> anyhow::Result<u32> {
    match std::env::var("BENCH_PAGE_SIZE") {
        Ok(v) => v.parse().context("BENCH_PAGE_SIZE must be a number"),
        Err(_) => Ok(defaults::PAGE_SIZE),
    }
}

fn district(sim: &SimHandle, page_size: u32, concurrency: usize) -> anyhow::Result<DistrictConfig> {
    let c = sim.credentials();
    Ok(DistrictConfig {
        id: "bench".into(),
        base_url: Url::parse(&sim.base_url())?,
        auth: AuthConfig::OAuth2 {
            token_url: Url::parse(&sim.token_url())?,
            client_id: c.client_id,
            client_secret: c.client_secret.into(),
            scope: None,
        },
        interval: defaults::INTERVAL,
        full_interval: defaults::FULL_INTERVAL,
        delta_overlap: defaults::DELTA_OVERLAP,
        page_size,
        dry_run: false,
        enabled: true,
        concurrency,
        connect_timeout: defaults::CONNECT_TIMEOUT,
        request_timeout: defaults::REQUEST_TIMEOUT,
        max_retries: defaults::MAX_RETRIES,
        run_timeout: defaults::RUN_TIMEOUT,
        demographics: true,
        limits: Default::default(),
    })
}

async fn pull<T: WireRecord>(
    client: &OneRosterClient,
    endpoint: Endpoint,
    query: PullQuery,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut pages = std::pin::pin!(client.pages::<T>(endpoint, query));
    while let Some(page) = pages.next().await {
        let page = page.with_context(|| format!("pulling {endpoint}"))?;
        tally.records += (page.records.len() + page.unreadable.len()) as u64;
        tally.pages += 1;
    }
    Ok(tally)
}

async fn pull_everything(client: &OneRosterClient) -> anyhow::Result<Tally> {
    let all = PullQuery::default();
    let mut tally = Tally::default();
    tally += pull::<wire::Org>(client, Endpoint::Orgs, all.clone()).await?;
    tally += pull::<wire::AcademicSession>(client, Endpoint::AcademicSessions, all.clone()).await?;
    tally += pull::<wire::Course>(client, Endpoint::Courses, all.clone()).await?;
    tally += pull::<wire::Class>(client, Endpoint::Classes, all.clone()).await?;
    tally += pull::<wire::User>(client, Endpoint::Users, all.clone()).await?;
    let demographics = PullQuery {
        fields: Some(DEMOGRAPHICS_FIELDS.to_vec()),
        ..PullQuery::default()
    };
    tally += pull::<wire::Demographics>(client, Endpoint::Demographics, demographics).await?;
    tally += pull::<wire::Enrollment>(client, Endpoint::Enrollments, all).await?;
    Ok(tally)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tier = tier()?;
    let page_size = page_size()?;
    let started = Instant::now();
    let sim = oneroster_sim::spawn(SimConfig::new(1, Counts::tier(tier)))
        .await
        .context("start the simulator")?;
    println!(
        "simulator: tier {tier:?} generated in {:.1?}; page_size {page_size}",
        started.elapsed()
    );
    println!(
        "{:>11} {:>10} {:>8} {:>10} {:>12}",
        "concurrency", "records", "pages", "seconds", "records/s"
    );
    for concurrency in [1, 4, 8] {
        // A new client per run: its own token, counters and retry budget, like a sync run.
        let client = OneRosterClient::new(&district(&sim, page_size, concurrency)?)?;
        let started = Instant::now();
        let tally = pull_everything(&client).await?;
        let elapsed = started.elapsed().max(Duration::from_micros(1));
        println!(
            "{concurrency:>11} {:>10} {:>8} {:>10.2} {:>12.0}",
            tally.records,
            tally.pages,
            elapsed.as_secs_f64(),
            tally.records as f64 / elapsed.as_secs_f64()
        );
        let stats = client.stats();
        if stats.retries > 0 {
            println!("{:>11} ({} retries)", "", stats.retries);
        }
    }
    sim.shutdown().await;
    Ok(())
}
