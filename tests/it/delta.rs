//! Delta pulls: only what changed since the watermark is pulled, and it lands exactly as a full
//! pull would land it; records purged upstream (never `tobedeleted`) wait for the next full
//! pull, which alone deletes by absence. Also: the store-side paths the in-memory diff relies
//! on (rows the mirror does not know, mirror hashes of another version).

use oneroster_sim::{Collection, Counts, Faults, Scenario, Status, Tier};
use oneroster_sync::domain::Entity;
use oneroster_sync::sync::{Outcome, RunOptions, RunReport};
use serde_json::json;

use crate::support::{DISTRICT, Harness};
use crate::sync::{StoreRows, assert_store_eq, expected, store_rows};

async fn delta(h: &Harness) -> RunReport {
    h.sync_with(RunOptions {
        allow_delta: true,
        ..RunOptions::default()
    })
    .await
}

fn small() -> Counts {
    Counts {
        students: 400,
        teachers: 30,
        classes: 60,
        ..Counts::tiny()
    }
}

#[tokio::test]
async fn a_delta_lands_a_day_of_edits_exactly_and_purges_make_it_a_full_pull() {
    let h = Harness::new(small()).await;
    // No watermark yet: the first run pulls everything even when a delta is allowed.
    let first = delta(&h).await;
    assert_eq!(first.outcome, Outcome::Applied, "{first:?}");
    assert!(first.full_pull);

    // A day of edits (creates, updates, tobedeleted users and enrollments, demographics):
    // the delta pulls a few records and the store ends exactly where a full pull would.
    let before = store_rows(&h.db, DISTRICT).await;
    let log = h.sim.apply(Scenario::DayOfEdits { seed: 11 });
    assert!(
        !log.of(Collection::Enrollments)
            .marked_tobedeleted
            .is_empty()
    );
    let ds = h.sim.snapshot();
    let report = delta(&h).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert!(!report.full_pull, "{report:?}");
    let fetched = report.counts[&Entity::Users].fetched;
    assert!(
        fetched > 0 && fetched < ds.users.len() as i64 / 4,
        "a delta pulls few users, got {fetched} of {}",
        ds.users.len()
    );
    assert!(report.counts[&Entity::Users].created > 0);
    assert!(report.counts[&Entity::Enrollments].deleted > 0);
    assert_store_eq(&store_rows(&h.db, DISTRICT).await, &expected(&ds, &before));

    // A day of churn purges records (gone without ever being tobedeleted). A delta cannot see
    // them go, but the collection totals come out short: the run pulls everything at once.
    let before = store_rows(&h.db, DISTRICT).await;
    let log = h.sim.apply(Scenario::DayOfChurn { seed: 12 });
    assert!(!log.of(Collection::Users).purged.is_empty());
    let report = delta(&h).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert!(report.full_pull, "purges turn the delta into a full pull");
    assert!(report.counts[&Entity::Users].deleted >= log.of(Collection::Users).purged.len() as i64);
    assert_store_eq(
        &store_rows(&h.db, DISTRICT).await,
        &expected(&h.sim.snapshot(), &before),
    );

    // Nothing changed since: a delta pulls almost nothing and writes nothing.
    let report = delta(&h).await;
    assert_eq!(report.outcome, Outcome::NothingToDo, "{report:?}");
    assert!(!report.full_pull);
}

#[tokio::test]
async fn a_server_that_ignores_or_refuses_the_filter_gets_full_pulls() {
    let h = Harness::new(Counts::tiny()).await;
    assert_eq!(delta(&h).await.outcome, Outcome::Applied);

    // Ignored: every record comes back, old ones included. Read as a delta it would hide
    // purges for good; the old dates give the server away and the run pulls everything. (The
    // revision moves, so the run does not stop at "unchanged".)
    h.sim.with_data(|_| {});
    h.sim.set_faults(Faults {
        ignore_filter: true,
        ..Faults::default()
    });
    let report = delta(&h).await;
    assert_eq!(report.outcome, Outcome::NothingToDo, "{report:?}");
    assert!(report.full_pull, "{report:?}");

    // Refused (400 invalid_filter_field): a full pull instead of a failed run, which also
    // deletes a record purged upstream.
    let gone = h.sim.with_data(|ds| ds.users.pop().unwrap().sourced_id);
    h.sim.set_faults(Faults {
        reject_filter: true,
        ..Faults::default()
    });
    let report = delta(&h).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert!(report.full_pull);
    assert!(h.sim.stats().per_status.get(&400).copied().unwrap_or(0) >= 1);
    let rows = store_rows(&h.db, DISTRICT).await;
    assert_eq!(rows["users"][&gone]["status"], "deleted");
}

#[tokio::test]
async fn deltas_join_stored_demographics_cascade_deletions_and_fall_back_for_reactivations() {
    // No overlap to speak of: the delta holds exactly the records changed below.
    let h = Harness::with(
        oneroster_sim::SimConfig::new(7, Counts::tiny()),
        None,
        "delta_overlap = \"1s\"",
    )
    .await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let before = store_rows(&h.db, DISTRICT).await;
    let ds = h.sim.snapshot();
    let with_enrollments = |u: &&oneroster_sim::User| {
        u.role == "student"
            && u.status == Status::Active
            && ds.demographics_of(&u.sourced_id).is_some()
            && before["enrollments"]
                .values()
                .any(|e| e["user_sourced_id"] == u.sourced_id.as_str() && e["status"] == "active")
    };
    let mut students = ds.users.iter().filter(with_enrollments);
    let a = students.next().unwrap().sourced_id.clone();
    let b = students.next().unwrap().sourced_id.clone();

    // A: only the demographics change (the user record is not in the delta); B: marked
    // tobedeleted (their enrollments are not in the delta either).
    let new_sex = if before["users"][&a]["gender"] == "female" {
        "male"
    } else {
        "female"
    };
    h.sim.with_data(|ds| {
        let when = ds.next_timestamp();
        let d = ds
            .demographics
            .iter_mut()
            .find(|d| d.sourced_id == a)
            .unwrap();
        d.sex = new_sex.into();
        d.white = !d.white;
        d.date_last_modified = when;
        let u = ds.users.iter_mut().find(|u| u.sourced_id == b).unwrap();
        u.status = Status::ToBeDeleted;
        u.date_last_modified = when;
    });
    let report = delta(&h).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert!(!report.full_pull, "{report:?}");
    // B (and at most the newest record of the last pull: the filter has whole seconds).
    let fetched = |e: Entity| report.counts[&e].fetched;
    assert!(fetched(Entity::Users) >= 1 && fetched(Entity::Users) <= 2);
    assert!(
        fetched(Entity::Enrollments) <= 1,
        "B's enrollments are not in the delta"
    );
    let ds = h.sim.snapshot();
    let rows = store_rows(&h.db, DISTRICT).await;
    assert_store_eq(&rows, &expected(&ds, &before));
    assert_eq!(rows["users"][&a]["gender"], json!(new_sex));
    assert_eq!(rows["users"][&b]["status"], "deleted");
    assert!(
        rows["enrollments"]
            .values()
            .filter(|e| e["user_sourced_id"] == b.as_str())
            .all(|e| e["status"] == "deleted")
    );
    assert!(report.counts[&Entity::Enrollments].deleted >= 1);

    // A changes in the user record only: the stored demographics stay.
    h.sim.with_data(|ds| {
        let when = ds.next_timestamp();
        let u = ds.users.iter_mut().find(|u| u.sourced_id == a).unwrap();
        u.given_name = "Renamed".into();
        u.date_last_modified = when;
    });
    let report = delta(&h).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert!(!report.full_pull);
    assert_eq!(report.counts[&Entity::Users].updated, 1);
    let rows = store_rows(&h.db, DISTRICT).await;
    assert_eq!(rows["users"][&a]["given_name"], "Renamed");
    assert_eq!(rows["users"][&a]["gender"], json!(new_sex));
    assert_store_eq(&rows, &expected(&h.sim.snapshot(), &before));

    // B comes back: which of their enrollments were deleted only because of them is not in
    // the delta, so the run pulls everything instead.
    h.sim.with_data(|ds| {
        let when = ds.next_timestamp();
        let u = ds.users.iter_mut().find(|u| u.sourced_id == b).unwrap();
        u.status = Status::Active;
        u.date_last_modified = when;
    });
    let report = delta(&h).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert!(report.full_pull, "a reactivation falls back to a full pull");
    let rows = store_rows(&h.db, DISTRICT).await;
    assert_store_eq(&rows, &expected(&h.sim.snapshot(), &before));
    assert!(
        rows["enrollments"]
            .values()
            .filter(|e| e["user_sourced_id"] == b.as_str())
            .any(|e| e["status"] == "active")
    );
}

#[tokio::test]
async fn a_full_pull_is_due_after_full_interval_and_while_a_change_set_is_held() {
    let h = Harness::with(
        oneroster_sim::SimConfig::new(7, Counts::tiny()),
        None,
        "max_delete_count = 0",
    )
    .await;
    assert!(delta(&h).await.full_pull);
    assert!(!delta(&h).await.full_pull);

    // A held change set: runs pull everything until it is approved or superseded.
    h.sim.with_data(|ds| {
        let when = ds.next_timestamp();
        let u = ds
            .users
            .iter_mut()
            .find(|u| u.status == Status::Active)
            .unwrap();
        u.status = Status::ToBeDeleted;
        u.date_last_modified = when;
    });
    let report = delta(&h).await;
    assert_eq!(report.outcome, Outcome::Held, "{report:?}");
    let report = delta(&h).await;
    assert_eq!(report.outcome, Outcome::Held, "{report:?}");
    assert!(report.full_pull, "{report:?}");

    // The source moves on (the user is back, only their dateLastModified changed): the run
    // passes the gate, the held set is superseded, and deltas resume.
    h.sim.with_data(|ds| {
        let u = ds
            .users
            .iter_mut()
            .find(|u| u.status == Status::ToBeDeleted)
            .unwrap();
        u.status = Status::Active;
    });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:#?}");
    assert_eq!(report.changes(), 1);
    assert!(
        oneroster_sync::history::pending(&h.dbs.state, DISTRICT)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!delta(&h).await.full_pull);

    // The last full pull long ago: full.
    let mut conn = h.db.connect().await;
    sqlx::query("UPDATE sync.districts SET last_full_pull_at = now() - interval '25 hours'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(delta(&h).await.full_pull);
}

#[tokio::test]
async fn rows_the_mirror_does_not_know_and_hashes_of_another_version_change_nothing() {
    let h = Harness::new(Counts::tiny()).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let before = store_rows(&h.db, DISTRICT).await;
    let stamps = updated_at(&h).await;
    let mut conn = h.db.connect().await;

    // The mirror lost its users (the store still has them): they are "created" again, and the
    // insert of rows new to the mirror falls back to the upsert instead of failing.
    sqlx::query("DELETE FROM sync.mirror_users")
        .execute(&mut conn)
        .await
        .unwrap();
    // Upstream did not change: only a full pull looks.
    let full = RunOptions {
        full: true,
        ..RunOptions::default()
    };
    let report = h.sync_with(full).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert_eq!(
        report.counts[&Entity::Users].created,
        before["users"].len() as i64
    );
    assert_store_eq(&store_rows(&h.db, DISTRICT).await, &before);
    assert_eq!(updated_at(&h).await, stamps, "no store row was rewritten");

    // Hashes of another definition: every row is written again as no change (nothing held,
    // nothing counted), and the next run trusts the new hashes.
    sqlx::query("UPDATE sync.districts SET hash_version = NULL")
        .execute(&mut conn)
        .await
        .unwrap();
    let report = delta(&h).await;
    assert!(report.full_pull, "{report:?}");
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert_eq!(report.changes(), 0);
    assert_eq!(updated_at(&h).await, stamps);
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::NothingToDo, "{report:?}");
}

async fn updated_at(h: &Harness) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    let mut conn = h.db.connect().await;
    sqlx::query_as(
        "SELECT sourced_id, updated_at FROM roster.users UNION ALL
         SELECT sourced_id, updated_at FROM roster.enrollments ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// The S tier through a sequence of full and delta pulls, compared row for row with what the
/// contract's rules give from the simulator's data (`expected`, computed independently of the
/// daemon): creates, updates, tobedeleted and purged records, the enrollment cascade, a term
/// rollover and reactivations.
#[tokio::test]
async fn the_s_district_through_fulls_and_deltas_matches_the_contract_row_for_row() {
    let h = Harness::new(Counts::tier(Tier::S)).await;
    let original = h.sim.snapshot();
    let empty = StoreRows::new();
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    assert_store_eq(
        &store_rows(&h.db, DISTRICT).await,
        &expected(&h.sim.snapshot(), &empty),
    );

    // A day of churn through a full pull.
    let before = store_rows(&h.db, DISTRICT).await;
    h.sim.apply(Scenario::DayOfChurn { seed: 21 });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let want = expected(&h.sim.snapshot(), &before);
    assert_store_eq(&store_rows(&h.db, DISTRICT).await, &want);

    // Term rollover (a semester's enrollments purged, its classes marked): large, so allowed
    // by an approval of exactly that change set.
    let before = want;
    h.sim.apply(Scenario::TermRollover);
    let report = h.sync().await;
    let ds = h.sim.snapshot();
    let want = expected(&ds, &before);
    if report.outcome == Outcome::Held {
        let fingerprint = report.hold.as_ref().unwrap().fingerprint.clone();
        oneroster_sync::history::approve(&h.dbs.state, DISTRICT, Some(&fingerprint))
            .await
            .unwrap();
        let report = h.sync().await;
        assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    } else {
        assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    }
    assert_store_eq(&store_rows(&h.db, DISTRICT).await, &want);

    // Users purged and marked come back (reactivated, enrollments with them), through a
    // delta that falls back to a full pull.
    let before = want;
    let gone: Vec<String> = before["users"]
        .iter()
        .filter(|(_, u)| u["status"] == "deleted")
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!gone.is_empty());
    h.sim.with_data(|ds| {
        let when = ds.next_timestamp();
        for id in &gone {
            match ds.users.iter_mut().find(|u| &u.sourced_id == id) {
                Some(u) => {
                    u.status = Status::Active;
                    u.date_last_modified = when;
                }
                None => {
                    if let Some(u) = original.users.iter().find(|u| &u.sourced_id == id) {
                        let mut u = u.clone();
                        u.date_last_modified = when;
                        ds.users.push(u);
                    }
                }
            }
        }
        ds.sort();
    });
    let report = delta(&h).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert!(report.counts[&Entity::Users].reactivated > 0);
    assert_store_eq(
        &store_rows(&h.db, DISTRICT).await,
        &expected(&h.sim.snapshot(), &before),
    );

    // A day of edits through a delta, and a day of churn whose purges turn the delta into a
    // full pull.
    for (scenario, full) in [
        (Scenario::DayOfEdits { seed: 22 }, false),
        (Scenario::DayOfChurn { seed: 23 }, true),
    ] {
        let before = store_rows(&h.db, DISTRICT).await;
        h.sim.apply(scenario);
        let report = delta(&h).await;
        assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
        assert_eq!(report.full_pull, full);
        assert_store_eq(
            &store_rows(&h.db, DISTRICT).await,
            &expected(&h.sim.snapshot(), &before),
        );
    }
}
