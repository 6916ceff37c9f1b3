//! A district scoped to some schools (`schools`, `school_identifiers`): only their classes,
//! those classes' enrollments and the users attached to or enrolled in them are stored;
//! leaving the scope is a deletion, judged by the safety limits.

use std::collections::{BTreeMap, BTreeSet};

use oneroster_sim::{Counts, Dataset, SimConfig, Status};
use oneroster_sync::config::Settings;
use oneroster_sync::domain::Entity;
use oneroster_sync::sync::{Outcome, RunOptions, RunReport, run_once};
use serde_json::{Value, json};

use crate::support::{DISTRICT, Harness, district_toml, output_text, run_binary, write_config};
use crate::sync::{StoreRows, assert_store_eq, expected, store_rows};

/// The district's first two schools, and the third.
const TWO: [&str; 2] = ["7_1000", "7_1001"];
const THIRD: &str = "7_1002";

fn schools(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| format!("\"{s}\"")).collect();
    // min_population = 1: the tiny district's percentages count.
    format!("schools = [{}]\nmin_population = 1\n", quoted.join(", "))
}

async fn scoped_harness(list: &[&str]) -> Harness {
    Harness::with(SimConfig::new(7, Counts::tiny()), None, &schools(list)).await
}

/// The configuration rewritten with other `extra` keys (the database and simulator stay).
fn reconfigure(h: &Harness, extra: &str) -> Settings {
    let config = write_config(
        h._dir.path(),
        &h.db.url,
        None,
        &district_toml(&h.sim, DISTRICT, extra),
    );
    Settings::load(&config).expect("the rewritten config loads")
}

async fn sync_with(h: &Harness, settings: &Settings) -> RunReport {
    run_once(
        &h.dbs,
        settings.district(DISTRICT).unwrap(),
        RunOptions::default(),
    )
    .await
}

/// What the store holds after syncing `ds` scoped to `list`, given `prev`: the contract's rows
/// of the classes of those schools, their enrollments, and the users attached to one of them or
/// actively enrolled in one of their classes; everything else of `prev` deleted.
fn expected_scoped(ds: &Dataset, prev: &StoreRows, list: &[&str]) -> StoreRows {
    let all = expected(ds, &StoreRows::new());
    let kept_classes: BTreeSet<&str> = ds
        .classes
        .iter()
        .filter(|c| list.contains(&c.school.as_str()))
        .map(|c| c.sourced_id.as_str())
        .collect();
    let enrolled: BTreeSet<&str> = ds
        .enrollments
        .iter()
        .filter(|e| e.status == Status::Active && kept_classes.contains(e.class.as_str()))
        .map(|e| e.user.as_str())
        .collect();
    let attached = |row: &Value| {
        row["org_sourced_ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| list.contains(&o.as_str().unwrap()))
    };
    let mut out = StoreRows::new();
    for (table, rows) in all {
        let kept: BTreeMap<String, Value> = rows
            .into_iter()
            .filter(|(id, row)| match table {
                "classes" => kept_classes.contains(id.as_str()),
                "users" => enrolled.contains(id.as_str()) || attached(row),
                _ => true,
            })
            .collect();
        out.insert(table, kept);
    }
    let users: BTreeSet<String> = out["users"].keys().cloned().collect();
    out.get_mut("enrollments").unwrap().retain(|_, e| {
        kept_classes.contains(e["class_sourced_id"].as_str().unwrap())
            && users.contains(e["user_sourced_id"].as_str().unwrap())
    });
    for (table, rows) in prev {
        let now = out.entry(table).or_default();
        for (id, row) in rows {
            now.entry(id.clone()).or_insert_with(|| {
                let mut row = row.clone();
                row["status"] = json!("deleted");
                row
            });
        }
    }
    out
}

#[tokio::test]
async fn a_district_scoped_to_two_schools_stores_only_their_rows() {
    let h = scoped_harness(&TWO).await;
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let ds = h.sim.snapshot();
    let want = expected_scoped(&ds, &StoreRows::new(), &TWO);
    let got = store_rows(&h.db, DISTRICT).await;
    assert_store_eq(&got, &want);
    // The scope is a real cut: the third school's classes, and users only there, are out.
    let third_classes = ds.classes.iter().filter(|c| c.school == THIRD).count();
    assert!(third_classes > 0);
    assert!(
        got["classes"]
            .values()
            .all(|c| c["school_sourced_id"] != THIRD)
    );
    assert!(got["users"].len() < ds.users.len());
    assert!(got["enrollments"].len() < ds.enrollments.len());
    // Shared reference data is whole.
    assert_eq!(got["orgs"].len(), ds.orgs.len());
    assert_eq!(got["courses"].len(), ds.courses.len());
    // A second run writes nothing (and may take the unchanged shortcut).
    assert_eq!(h.sync().await.outcome, Outcome::NothingToDo);
}

#[tokio::test]
async fn narrowing_the_scope_is_held_like_a_large_deletion_and_widening_it_creates() {
    let h = scoped_harness(&TWO).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let two = store_rows(&h.db, DISTRICT).await;

    // One school: half the classes leave. The upstream did not change, so only the changed
    // settings make this run pull at all.
    let one = reconfigure(&h, &schools(&TWO[..1]));
    let report = sync_with(&h, &one).await;
    assert_eq!(report.outcome, Outcome::Held, "{report:?}");
    let hold = report.hold.as_ref().unwrap();
    assert!(
        hold.breaches
            .iter()
            .any(|b| b.entity == Entity::Classes && b.operation == "delete"),
        "{hold:?}"
    );
    assert_store_eq(&store_rows(&h.db, DISTRICT).await, &two);

    let out = run_binary(&h.config, &["approve", "--district", DISTRICT], &[]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let report = sync_with(&h, &one).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert!(report.counts[&Entity::Classes].deleted > 0);
    let ds = h.sim.snapshot();
    let narrowed = expected_scoped(&ds, &two, &TWO[..1]);
    assert_store_eq(&store_rows(&h.db, DISTRICT).await, &narrowed);

    // Back to two schools: the rows come back, as creations are never held.
    let again = reconfigure(&h, &schools(&TWO));
    let report = sync_with(&h, &again).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert!(
        report.counts[&Entity::Classes].reactivated > 0,
        "{report:?}"
    );
    assert_store_eq(
        &store_rows(&h.db, DISTRICT).await,
        &expected_scoped(&ds, &narrowed, &TWO),
    );
}

#[tokio::test]
async fn a_configured_school_missing_from_the_source_fails_the_run_with_its_id() {
    let h = Harness::with(
        SimConfig::new(7, Counts::tiny()),
        None,
        "schools = [\"7_1000\", \"7_1099\"]\nschool_identifiers = [\"360000101\", \"999\"]\n",
    )
    .await;
    let before = h.db.dump_schemas(&["roster"]);
    let out = run_binary(&h.config, &["sync", "--district", DISTRICT], &[]).await;
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    for needle in ["7_1099", "identifier 999", "schools"] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    assert!(
        !text.contains("7_1000,"),
        "a found school is not named: {text}"
    );
    assert_eq!(h.db.dump_schemas(&["roster"]), before, "nothing written");

    // By identifier alone, the same school is found.
    let settings = reconfigure(&h, "school_identifiers = [\"360000101\"]\n");
    let report = sync_with(&h, &settings).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let ds = h.sim.snapshot();
    assert_store_eq(
        &store_rows(&h.db, DISTRICT).await,
        &expected_scoped(&ds, &StoreRows::new(), &["7_1001"]),
    );
}

#[tokio::test]
async fn the_audit_shows_per_school_what_the_scope_keeps() {
    let h = Harness::with(
        SimConfig::new(7, Counts::tiny()),
        None,
        "schools = [\"7_1000\", \"7_1001\", \"7_1099\"]\n",
    )
    .await;
    let out = run_binary(
        &h.config,
        &["audit", "--district", DISTRICT, "--format", "json"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let missing = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "scope_school_missing")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(missing["blocking"], true);
    assert_eq!(missing["samples"], json!(["7_1099"]));

    let ds = h.sim.snapshot();
    let want = expected_scoped(&ds, &StoreRows::new(), &TWO);
    let scope = &report["scope"];
    assert_eq!(scope["missing"], json!(["7_1099"]));
    for school in TWO {
        let row = scope["schools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["sourced_id"] == school)
            .unwrap();
        let classes: BTreeSet<&str> = want["classes"]
            .values()
            .filter(|c| c["school_sourced_id"] == school && c["status"] == "active")
            .map(|c| c["sourced_id"].as_str().unwrap())
            .collect();
        let enrollments: Vec<&Value> = want["enrollments"]
            .values()
            .filter(|e| {
                e["status"] == "active" && classes.contains(e["class_sourced_id"].as_str().unwrap())
            })
            .collect();
        let mut users: BTreeSet<&str> = enrollments
            .iter()
            .map(|e| e["user_sourced_id"].as_str().unwrap())
            .collect();
        for u in want["users"].values() {
            if u["org_sourced_ids"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o == school)
            {
                users.insert(u["sourced_id"].as_str().unwrap());
            }
        }
        let active: Vec<&Value> = users
            .iter()
            .map(|id| &want["users"][*id])
            .filter(|u| u["status"] == "active")
            .collect();
        let students = active.iter().filter(|u| u["role"] == "student").count();
        assert_eq!(row["classes"], classes.len(), "{school}: {row}");
        assert_eq!(row["enrollments"], enrollments.len(), "{school}: {row}");
        assert_eq!(row["users"], active.len(), "{school}: {row}");
        assert_eq!(row["students"], students, "{school}: {row}");
        assert!(row["name"].is_string());
    }
    let left_classes = ds.classes.len() - want["classes"].len();
    assert_eq!(scope["left_out"]["classes"], left_classes);

    // The text form has the table.
    let out = run_binary(&h.config, &["audit", "--district", DISTRICT], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("scope: 2 school(s)"), "{text}");
    assert!(
        text.contains("7_1099           NOT IN THE SOURCE"),
        "{text}"
    );
}
