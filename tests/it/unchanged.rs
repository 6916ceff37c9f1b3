//! An unchanged district costs a handful of requests: the upstream revision (`x-perm-rev`) and
//! every collection's total equal those of the last completely applied pull, so the run stops
//! after one one-record request per collection. Never for `--full`, `trust_revision = false`,
//! a held change set, or past `full_interval`.

use oneroster_sim::{Counts, SimConfig};
use oneroster_sync::domain::Entity;
use oneroster_sync::sync::{Outcome, PullKind, RunOptions};

use crate::support::{DISTRICT, Harness};

fn requests(h: &Harness) -> u64 {
    h.sim.stats().per_collection.values().sum()
}

#[tokio::test]
async fn an_unchanged_upstream_ends_the_run_after_one_request_per_collection() {
    let h = Harness::new(Counts::tiny()).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let before = h.db.dump_schemas(&["roster"]);
    let mirror = h.db.dump_tables("sync.mirror_*");

    h.sim.reset_stats();
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::NothingToDo, "{report:?}");
    assert_eq!(report.pull, PullKind::Unchanged);
    assert!(!report.full_pull);
    assert!(report.counts.values().all(|c| c.fetched == 0), "{report:?}");
    // One one-record request per collection (demographics included), nothing else.
    let stats = h.sim.stats();
    assert_eq!(stats.per_collection.len(), 7, "{stats:?}");
    assert!(stats.per_collection.values().all(|n| *n == 1), "{stats:?}");
    assert_eq!(before, h.db.dump_schemas(&["roster"]));
    assert_eq!(mirror, h.db.dump_tables("sync.mirror_*"));
    let recorded: (String, String) =
        sqlx::query_as("SELECT outcome, pull FROM sync.runs WHERE run_id = $1")
            .bind(report.run_id)
            .fetch_one(&h.dbs.state)
            .await
            .unwrap();
    assert_eq!(recorded, ("nothing_to_do".into(), "unchanged".into()));

    // `--full` pulls everything whatever the revision says.
    h.sim.reset_stats();
    let full = h
        .sync_with(RunOptions {
            full: true,
            ..RunOptions::default()
        })
        .await;
    assert_eq!(full.outcome, Outcome::NothingToDo, "{full:?}");
    assert_eq!(full.pull, PullKind::Full);
    let users = h.sim.read(|ds| ds.users.len()) as i64;
    assert_eq!(full.counts[&Entity::Users].fetched, users);
    // Whole pages (here one per collection), not one-record probes.
    assert_eq!(requests(&h), 7);

    // The daemon's runs (delta allowed) take the same shortcut.
    let delta = h
        .sync_with(RunOptions {
            allow_delta: true,
            ..RunOptions::default()
        })
        .await;
    assert_eq!(delta.pull, PullKind::Unchanged, "{delta:?}");

    // Data that moved (a new revision) is pulled.
    h.sim.with_data(|ds| {
        let now = ds.next_timestamp();
        ds.users[0].given_name = "Moved".into();
        ds.users[0].date_last_modified = now;
    });
    let moved = h.sync().await;
    assert_eq!(moved.outcome, Outcome::Applied, "{moved:?}");
    assert_eq!(moved.pull, PullKind::Full);
    assert_eq!(moved.counts[&Entity::Users].updated, 1);
}

#[tokio::test]
async fn no_shortcut_when_the_revision_is_not_trusted_or_a_full_pull_is_due() {
    let h = Harness::with(
        SimConfig::new(7, Counts::tiny()),
        None,
        "trust_revision = false",
    )
    .await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let report = h.sync().await;
    assert_eq!(report.pull, PullKind::Full, "{report:?}");

    let h = Harness::new(Counts::tiny()).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    // full_interval (24h) has passed since the last full pull.
    sqlx::query("UPDATE sync.districts SET last_full_pull_at = now() - interval '25 hours'")
        .execute(&h.dbs.state)
        .await
        .unwrap();
    let report = h.sync().await;
    assert_eq!(report.pull, PullKind::Full, "{report:?}");
    assert_eq!(report.outcome, Outcome::NothingToDo);
    // ...which resets it: the next one may stop early again.
    assert_eq!(h.sync().await.pull, PullKind::Unchanged);

    // A dry run does not count as an applied pull.
    h.sim.with_data(|ds| ds.users[0].given_name = "Dry".into());
    let dry = h
        .sync_with(RunOptions {
            dry_run: true,
            ..RunOptions::default()
        })
        .await;
    assert_eq!(dry.outcome, Outcome::DryRun);
    let after_dry = h.sync().await;
    assert_eq!(after_dry.pull, PullKind::Full, "{after_dry:?}");
    assert_eq!(after_dry.outcome, Outcome::Applied);
    let stored: String = sqlx::query_scalar(
        "SELECT given_name FROM roster.users WHERE district_id = $1 ORDER BY sourced_id LIMIT 1",
    )
    .bind(DISTRICT)
    .fetch_one(&h.dbs.state)
    .await
    .unwrap();
    assert_eq!(stored, "Dry");
}

#[tokio::test]
async fn a_revision_that_never_moves_hides_changes_only_until_full_interval_or_a_total_moves() {
    let h = Harness::new(Counts::tiny()).await;
    h.sim.set_faults(oneroster_sim::Faults {
        frozen_revision: Some("rev-forever".into()),
        ..oneroster_sim::Faults::default()
    });
    assert_eq!(h.sync().await.outcome, Outcome::Applied);

    // The data moves, the revision does not, the totals neither: the shortcut believes it.
    h.sim.with_data(|ds| {
        let now = ds.next_timestamp();
        ds.users[0].given_name = "Hidden".into();
        ds.users[0].date_last_modified = now;
    });
    let report = h.sync().await;
    assert_eq!(report.pull, PullKind::Unchanged, "{report:?}");

    // full_interval bounds it: the next full pull picks the change up.
    sqlx::query("UPDATE sync.districts SET last_full_pull_at = now() - interval '25 hours'")
        .execute(&h.dbs.state)
        .await
        .unwrap();
    let report = h.sync().await;
    assert_eq!(report.pull, PullKind::Full, "{report:?}");
    assert_eq!(report.counts[&Entity::Users].updated, 1);

    // A collection whose total moves is pulled at once, revision or not.
    h.sim.with_data(|ds| {
        let mut extra = ds.users[0].clone();
        extra.sourced_id = "zz-new-user".into();
        ds.users.push(extra);
    });
    let report = h.sync().await;
    assert_eq!(report.pull, PullKind::Full, "{report:?}");
    assert_eq!(report.counts[&Entity::Users].created, 1);
}
