//! Never wipe a district: the complete-snapshot gate, safety limits, hold and approve.

use oneroster_sim::{Counts, Faults, Scenario, SimConfig};
use oneroster_sync::domain::Entity;
use oneroster_sync::sync::Outcome;

use crate::support::{DISTRICT, Harness};
use crate::support::{output_text, run_binary};
use crate::sync::{StoreRows, assert_store_eq, expected, store_rows};

fn medium() -> Counts {
    Counts {
        students: 300,
        teachers: 24,
        classes: 40,
        ..Counts::tiny()
    }
}

/// Runs `sync` after `faults` and checks that it failed and left store and mirror as they were.
async fn assert_untouched_by(h: &Harness, faults: Faults, expect_in_error: &str) {
    let store = h.db.dump_schemas(&["roster"]);
    let mirror = h.db.dump_tables("sync.mirror_*");
    h.sim
        .with_data(|ds| ds.users[0].family_name = "Moved".into());
    h.sim.set_faults(faults);
    let report = h.sync().await;
    h.sim.set_faults(Faults::default());
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    let error = report.error.unwrap_or_default();
    assert!(
        error.contains(expect_in_error),
        "error {error:?} lacks {expect_in_error:?}"
    );
    assert_eq!(h.db.dump_schemas(&["roster"]), store, "the store changed");
    assert_eq!(
        h.db.dump_tables("sync.mirror_*"),
        mirror,
        "the mirror changed"
    );
}

#[tokio::test]
async fn truncated_clamped_and_unsettled_pulls_write_nothing() {
    // A server that clamps the page size silently (the field failure mode), not with a 400.
    let sim = SimConfig {
        clamp_silently: true,
        ..SimConfig::new(7, Counts::tiny())
    };
    let h = Harness::with(sim, None, "").await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);

    // Every body cut off mid-way: retried, then the run fails.
    assert_untouched_by(
        &h,
        Faults {
            truncate_body_every: Some(1),
            ..Faults::default()
        },
        "",
    )
    .await;
    // A server that silently clamps the page size to 50 while we ask for 500.
    assert_untouched_by(
        &h,
        Faults {
            page_cap: Some(50),
            ..Faults::default()
        },
        "",
    )
    .await;
    // Data that keeps moving under the pull.
    assert_untouched_by(
        &h,
        Faults {
            revision_never_settles: true,
            ..Faults::default()
        },
        "x-perm-rev",
    )
    .await;
}

#[tokio::test]
async fn a_revision_change_mid_pull_restarts_the_pull_and_then_succeeds() {
    let h = Harness::new(Counts::tiny()).await;
    h.sim.set_faults(Faults {
        revision_change_after: Some(4),
        ..Faults::default()
    });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let stats = h.sim.stats();
    // Every collection was asked for at least twice: the first pull was abandoned.
    assert!(
        stats.per_collection.get("orgs").copied().unwrap_or(0) >= 2,
        "{stats:?}"
    );
    assert_store_eq(
        &store_rows(&h.db, DISTRICT).await,
        &expected(&h.sim.snapshot(), &StoreRows::new()),
    );
}

#[tokio::test]
async fn a_term_rollover_is_held_until_approved_and_a_different_change_set_is_held_again() {
    let h = Harness::new(medium()).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let before = expected(&h.sim.snapshot(), &StoreRows::new());
    let store_before = h.db.dump_schemas(&["roster"]);

    let log = h.sim.apply(Scenario::TermRollover);
    assert!(
        !log.of(oneroster_sim::Collection::Enrollments)
            .purged
            .is_empty()
    );
    let out = run_binary(&h.config, &["sync", "--district", DISTRICT], &[]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(3), "a held run exits 3:\n{text}");
    assert!(text.contains("HELD"), "{text}");
    let held_line = text
        .lines()
        .find(|l| l.contains("\"level\":\"ERROR\"") && l.contains("held by safety limits"))
        .unwrap_or_else(|| panic!("no error-level hold line in:\n{text}"));
    for needle in [DISTRICT, "enrollments", "max_delete", "approve --district"] {
        assert!(
            held_line.contains(needle),
            "hold line lacks {needle}: {held_line}"
        );
    }
    assert_eq!(
        h.db.dump_schemas(&["roster"]),
        store_before,
        "a held change set wrote to the store"
    );

    // Held again on the next run (the daemon's reminder), still nothing applied.
    assert_eq!(h.sync().await.outcome, Outcome::Held);
    let status = run_binary(&h.config, &["status"], &[]).await;
    assert!(
        output_text(&status).contains("HELD"),
        "{}",
        output_text(&status)
    );

    let out = run_binary(&h.config, &["approve", "--district", DISTRICT], &[]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert!(report.hold.as_ref().is_some_and(|h| h.approved));
    let after = expected(&h.sim.snapshot(), &before);
    assert_store_eq(&store_rows(&h.db, DISTRICT).await, &after);

    // The approval covered that change set only: a new large change is judged afresh.
    h.sim.with_data(|ds| {
        let n = ds.users.len() / 4;
        ds.users.truncate(ds.users.len() - n);
    });
    assert_eq!(h.sync().await.outcome, Outcome::Held);
    let out = run_binary(
        &h.config,
        &["approve", "--district", DISTRICT, "--fingerprint", "not-it"],
        &[],
    )
    .await;
    assert!(
        !out.status.success(),
        "approving a fingerprint that is not held must fail"
    );
    assert_eq!(h.sync().await.outcome, Outcome::Held);
}

#[tokio::test]
async fn an_approval_does_not_carry_over_when_the_source_moves_on() {
    let h = Harness::new(medium()).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    h.sim.apply(Scenario::TermRollover);
    let held = h.sync().await;
    assert_eq!(held.outcome, Outcome::Held);
    let out = run_binary(&h.config, &["approve", "--district", DISTRICT], &[]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    // Before the next run the source changes again: the approved change set no longer exists.
    h.sim.with_data(|ds| {
        let n = ds.enrollments.len() / 10;
        ds.enrollments.truncate(ds.enrollments.len() - n);
    });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Held, "{report:?}");
    assert_ne!(
        report.hold.unwrap().fingerprint,
        held.hold.unwrap().fingerprint
    );
}

#[tokio::test]
async fn ordinary_churn_of_a_tiny_district_is_not_held() {
    // Every type below the default minimum population of 100 active rows.
    let micro = Counts {
        schools: 2,
        students: 24,
        teachers: 4,
        classes: 6,
        enrollments_per_student: 3,
        staff: 2,
    };
    let h = Harness::new(micro).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    h.sim.apply(Scenario::DayOfChurn { seed: 9 });
    // One class out of six (and its enrollments) is far over 10 %, but below the minimum
    // population percentages do not apply.
    h.sim.with_data(|ds| {
        let when = ds.next_timestamp();
        ds.classes[0].status = oneroster_sim::Status::ToBeDeleted;
        ds.classes[0].date_last_modified = when;
    });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let classes = report.counts[&Entity::Classes];
    assert!(classes.deleted * 10 > 6, "{classes:?}");
    assert!(report.hold.is_none());
}

#[tokio::test]
async fn a_dry_run_over_a_limit_reports_it_and_writes_nothing() {
    let h = Harness::with(SimConfig::new(7, medium()), None, "dry_run = true").await;
    // A district in `dry_run = true` mode: the daemon and `sync` only report.
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::DryRun);
    assert!(store_rows(&h.db, DISTRICT).await["users"].is_empty());

    let h = Harness::new(medium()).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    h.sim.apply(Scenario::TermRollover);
    let store = h.db.dump_schemas(&["roster"]);
    let out = run_binary(
        &h.config,
        &[
            "sync",
            "--district",
            DISTRICT,
            "--dry-run",
            "--format",
            "json",
        ],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "a dry run exits 0: {}",
        output_text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["outcome"], "dry_run");
    assert!(
        report["hold"]["breaches"][0]["limit"]
            .as_str()
            .unwrap()
            .starts_with("max_delete")
    );
    assert!(
        !report["samples"]["enrollments"]["delete"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(h.db.dump_schemas(&["roster"]), store);
}
