//! Pull benchmark: every page of every collection of the registry (`pull::fetch_only`), no database,
//! against the simulator started in this process, at concurrency 1, 4 and 8.
//!
//! `cargo bench --bench pull` (tier from `BENCH_TIER`: S, M (default), L or XL; page size from
//! `BENCH_PAGE_SIZE`, default the configuration's default).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use oneroster_sim::{Counts, SimConfig, SimHandle, Tier};
use oneroster_sync::config::{
    AuthConfig, DemographicsMode, DistrictConfig, OneRosterVersion, defaults,
};
use oneroster_sync::oneroster::OneRosterClient;
use oneroster_sync::pull;
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
        demographics: DemographicsMode::Required,
        journal_retention: defaults::JOURNAL_RETENTION,
        trust_revision: true,
        limits: Default::default(),
        demographics_limits: Default::default(),
        version: OneRosterVersion::V1p1,
        required_identifier: None,
        scope: None,
    })
}

/// Every collection of the registry, as `oneroster-sync pull` fetches it.
async fn pull_everything(client: &OneRosterClient) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    for (_, records, pages) in pull::fetch_only(client, DemographicsMode::Required).await? {
        tally += Tally {
            records: records as u64,
            pages: pages as u64,
        };
    }
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
