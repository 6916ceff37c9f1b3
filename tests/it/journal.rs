//! Going live and watching it: the change journal, `history`, `changes`, `report` and the drift
//! check (`verify`), through the real binary against a real PostgreSQL and the simulator.

use std::collections::{BTreeMap, BTreeSet};

use oneroster_sim::{Counts, Scenario, SimConfig};
use oneroster_sync::sync::{Outcome, RunOptions};
use serde_json::{Value, json};

use crate::support::{DISTRICT, Harness, output_text, run_binary, set_role};
use crate::sync::{StoreRows, expected, store_rows};

const DEMOGRAPHIC: [&str; 3] = ["gender", "hispanic_or_latino", "races"];

/// Runs a command; its exit status (0 or 1) and stdout.
async fn cli(h: &Harness, args: &[&str]) -> (i32, String) {
    let out = run_binary(&h.config, args, &[]).await;
    let code = out.status.code().unwrap_or(-1);
    assert!(code == 0 || code == 1, "{}", output_text(&out));
    (code, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `changes` of one run as JSON rows.
async fn journal_of(h: &Harness, run: &str) -> Vec<Value> {
    let (code, out) = cli(
        h,
        &[
            "changes",
            "--district",
            DISTRICT,
            "--run",
            run,
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    serde_json::from_str::<Value>(&out)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {out}"))
        .as_array()
        .unwrap()
        .clone()
}

/// The journal a run must write between two contract-level stores: per (entity, id) the
/// operation and, for updates, the changed columns with [old, new] values.
fn expected_journal(before: &StoreRows, after: &StoreRows) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for (table, rows) in after {
        let old = before.get(table).cloned().unwrap_or_default();
        for (id, row) in rows {
            let entry = match old.get(id) {
                None => json!({"operation": "created", "columns": []}),
                Some(o) if o == row => continue,
                Some(o) => {
                    let operation = match (o["status"].as_str(), row["status"].as_str()) {
                        (Some("active"), Some("deleted")) => "deleted",
                        (Some("deleted"), Some("active")) => "reactivated",
                        _ => "updated",
                    };
                    let mut columns = BTreeSet::new();
                    let mut values = serde_json::Map::new();
                    for (col, v) in row.as_object().unwrap() {
                        if o[col] != *v {
                            columns.insert(col.clone());
                            if !DEMOGRAPHIC.contains(&col.as_str()) {
                                values.insert(col.clone(), json!([o[col], v]));
                            }
                        }
                    }
                    json!({"operation": operation, "columns": columns, "values": values})
                }
            };
            out.insert((table.to_string(), id.clone()), entry);
        }
    }
    out
}

/// Timestamps as the journal keeps them (JSON of a timestamptz) and as the contract-level rows
/// write them differ in form only.
fn same_value(got: &Value, want: &Value) -> bool {
    let as_time = |v: &Value| {
        v.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    };
    match (as_time(got), as_time(want)) {
        (Some(a), Some(b)) => a == b,
        _ => got == want,
    }
}

#[tokio::test]
async fn the_journal_of_a_day_of_churn_lists_exactly_its_changes_demographics_by_name() {
    let h = Harness::new(Counts {
        students: 400,
        teachers: 30,
        classes: 60,
        ..Counts::tiny()
    })
    .await;
    let first = h.sync().await;
    assert_eq!(first.outcome, Outcome::Applied);
    // The first sync journals its creations.
    let created = journal_of(&h, &first.run_id.to_string()).await;
    let total: usize = first.counts.values().map(|c| c.created as usize).sum();
    assert_eq!(created.len(), total);
    assert!(
        created
            .iter()
            .all(|c| c["operation"] == "created" && c["mode"] == "applied")
    );

    let before = store_rows(&h.db, DISTRICT).await;
    h.sim.apply(Scenario::DayOfChurn { seed: 3 });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let after = store_rows(&h.db, DISTRICT).await;
    let want = expected_journal(&before, &after);
    assert_eq!(
        want,
        expected_journal(&before, &expected(&h.sim.snapshot(), &before))
    );
    let got = journal_of(&h, &report.run_id.to_string()).await;
    assert_eq!(got.len(), want.len(), "journal rows");
    assert_eq!(report.journaled as usize, want.len());
    let mut demographics_changed = 0;
    for row in &got {
        let key = (
            row["entity"].as_str().unwrap().to_owned(),
            row["sourced_id"].as_str().unwrap().to_owned(),
        );
        let w = want
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected journal row {row}"));
        assert_eq!(row["operation"], w["operation"], "{row}");
        let columns: BTreeSet<&str> = row["columns"]
            .as_str()
            .unwrap()
            .split(',')
            .filter(|c| !c.is_empty())
            .collect();
        if w["operation"] == "created" {
            continue;
        }
        let want_columns: BTreeSet<&str> = w["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(columns, want_columns, "{row}");
        let values = row["values"].as_object().unwrap();
        for col in &columns {
            if DEMOGRAPHIC.contains(col) {
                demographics_changed += 1;
                assert!(!values.contains_key(*col), "a demographic value in {row}");
                continue;
            }
            let (g, e) = (&values[*col], &w["values"][*col]);
            assert!(
                same_value(&g[0], &e[0]) && same_value(&g[1], &e[1]),
                "{col}: {g} != {e} in {row}"
            );
        }
    }
    assert!(demographics_changed > 0, "the churn changes demographics");
}

#[tokio::test]
async fn changes_follow_one_student_through_create_update_delete_and_reactivate() {
    let h = Harness::new(Counts::tiny()).await;
    let student = h.sim.read(|ds| {
        ds.users
            .iter()
            .find(|u| u.role == "student")
            .unwrap()
            .sourced_id
            .clone()
    });
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let bump = |ds: &mut oneroster_sim::Dataset| ds.next_timestamp();
    h.sim.with_data(|ds| {
        let now = bump(ds);
        let u = ds
            .users
            .iter_mut()
            .find(|u| u.sourced_id == student)
            .unwrap();
        u.family_name = "Renamed".into();
        u.date_last_modified = now;
    });
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    h.sim.with_data(|ds| {
        let now = bump(ds);
        let u = ds
            .users
            .iter_mut()
            .find(|u| u.sourced_id == student)
            .unwrap();
        u.status = oneroster_sim::Status::ToBeDeleted;
        u.date_last_modified = now;
    });
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    h.sim.with_data(|ds| {
        let now = bump(ds);
        let u = ds
            .users
            .iter_mut()
            .find(|u| u.sourced_id == student)
            .unwrap();
        u.status = oneroster_sim::Status::Active;
        u.date_last_modified = now;
    });
    assert_eq!(h.sync().await.outcome, Outcome::Applied);

    let (code, out) = cli(
        &h,
        &[
            "changes",
            "--district",
            DISTRICT,
            "--entity",
            "users",
            "--id",
            &student,
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let rows: Vec<Value> = serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    let ops: Vec<&str> = rows
        .iter()
        .map(|r| r["operation"].as_str().unwrap())
        .collect();
    // Newest first.
    assert_eq!(
        ops,
        ["reactivated", "deleted", "updated", "created"],
        "{out}"
    );
    assert_eq!(rows[2]["values"]["family_name"][1], "Renamed");
    assert!(
        rows[2]["changes"]
            .as_str()
            .unwrap()
            .contains("family_name: ")
    );
    assert_eq!(rows[1]["values"]["status"], json!(["active", "deleted"]));

    // The same rows as text and as CSV.
    let (_, text) = cli(&h, &["changes", "--district", DISTRICT, "--id", &student]).await;
    let text_rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(text_rows.len(), 4, "{text}");
    for (line, op) in text_rows.iter().zip(&ops) {
        assert!(line.contains(&student) && line.contains(op), "{line}");
    }
    let (_, csv) = cli(
        &h,
        &[
            "changes",
            "--district",
            DISTRICT,
            "--id",
            &student,
            "--format",
            "csv",
        ],
    )
    .await;
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header = reader.headers().unwrap().clone();
    let op_col = header.iter().position(|h| h == "operation").unwrap();
    let csv_ops: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[op_col].to_owned())
        .collect();
    assert_eq!(csv_ops, ops);
}

#[tokio::test]
async fn dry_runs_journal_what_they_would_change_and_history_and_report_agree_in_every_format() {
    let h = Harness::new(Counts::tiny()).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let bad = h.sim.with_data(|ds| {
        let now = ds.next_timestamp();
        let u = ds.users.iter_mut().find(|u| u.role == "teacher").unwrap();
        u.email = "new@example.org".into();
        u.date_last_modified = now;
        let s = ds.users.iter_mut().find(|u| u.role == "student").unwrap();
        set_role(s, "wizard");
        s.sourced_id.clone()
    });
    let dry = h
        .sync_with(RunOptions {
            dry_run: true,
            ..RunOptions::default()
        })
        .await;
    assert_eq!(dry.outcome, Outcome::DryRun);
    let rows = journal_of(&h, &dry.run_id.to_string()).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["mode"], "dry_run");
    assert_eq!(rows[0]["operation"], "updated");
    assert_eq!(rows[0]["values"]["email"][1], "new@example.org");

    // history: the same runs in the three forms, newest first.
    let (_, text) = cli(&h, &["history", "--district", DISTRICT]).await;
    let (_, json) = cli(&h, &["history", "--district", DISTRICT, "--format", "json"]).await;
    let (_, csv) = cli(&h, &["history", "--district", DISTRICT, "--format", "csv"]).await;
    let json: Vec<Value> = serde_json::from_str::<Value>(&json)
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(json.len(), 2);
    assert_eq!(json[0]["run_id"], dry.run_id.to_string());
    assert_eq!(json[0]["outcome"], "dry_run");
    assert_eq!(json[0]["errors"], 1);
    assert_eq!(json[0]["findings_by_code"]["user_role_unknown"], 1);
    assert_eq!(json[1]["outcome"], "applied");
    assert!(json[1]["changes"].as_str().unwrap().contains("users +"));
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header = reader.headers().unwrap().clone();
    let id_col = header.iter().position(|h| h == "run_id").unwrap();
    let csv_ids: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[id_col].to_owned())
        .collect();
    let json_ids: Vec<String> = json
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(csv_ids, json_ids);
    let text_lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(text_lines.len(), 2, "{text}");
    for (line, id) in text_lines.iter().zip(&json_ids) {
        assert!(line.contains(id.as_str()), "{line}");
    }

    // report: the dry run's skipped record, in the three forms.
    let (_, text) = cli(&h, &["report", "--district", DISTRICT]).await;
    assert!(
        text.contains(&bad) && text.contains("user_role_unknown"),
        "{text}"
    );
    let (_, json) = cli(&h, &["report", "--district", DISTRICT, "--format", "json"]).await;
    let json: Vec<Value> = serde_json::from_str::<Value>(&json)
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["severity"], "error");
    assert_eq!(json[0]["sourced_id"], bad.as_str());
    let (_, csv) = cli(&h, &["report", "--district", DISTRICT, "--format", "csv"]).await;
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    assert_eq!(reader.records().count(), 1);
}

#[tokio::test]
async fn a_row_edited_by_hand_is_found_by_verify_and_put_back_by_repair() {
    let h = Harness::new(Counts::tiny()).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let (code, out) = cli(&h, &["verify", "--district", DISTRICT]).await;
    assert_eq!(code, 0, "a clean sync has no drift: {out}");

    let want = store_rows(&h.db, DISTRICT).await;
    let (edited, removed) = h.sim.read(|ds| {
        (
            ds.users
                .iter()
                .find(|u| u.role == "teacher")
                .unwrap()
                .sourced_id
                .clone(),
            ds.classes[0].sourced_id.clone(),
        )
    });
    let mut conn = h.db.connect().await;
    sqlx::query(
        "UPDATE roster.users SET given_name = 'Edited', grades = '{a b,c}' WHERE sourced_id = $1",
    )
    .bind(&edited)
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("DELETE FROM roster.classes WHERE sourced_id = $1")
        .bind(&removed)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO roster.orgs (district_id, sourced_id, status, name) VALUES ($1, 'intruder', 'active', 'Added')",
    )
    .bind(DISTRICT)
    .execute(&mut conn)
    .await
    .unwrap();
    let before = h.db.dump();

    let (code, out) = cli(&h, &["verify", "--district", DISTRICT, "--format", "json"]).await;
    assert_eq!(code, 1, "{out}");
    let drift: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(drift["drifted"], 3);
    assert_eq!(drift["entities"]["users"]["changed"], 1);
    assert_eq!(
        drift["entities"]["users"]["samples"]["changed"],
        json!([edited])
    );
    assert_eq!(drift["entities"]["classes"]["missing"], 1);
    assert_eq!(drift["entities"]["orgs"]["added"], 1);
    assert_eq!(before, h.db.dump(), "verify wrote something");
    let (code, text) = cli(&h, &["verify", "--district", DISTRICT]).await;
    assert_eq!(code, 1);
    assert!(text.contains("DRIFT") && text.contains(&edited), "{text}");

    let (code, out) = cli(&h, &["verify", "--district", DISTRICT, "--repair"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("repair: 3 rows marked"), "{out}");
    // The next run, even one that may pull a delta, pulls everything and rewrites them.
    let report = h
        .sync_with(RunOptions {
            allow_delta: true,
            ..RunOptions::default()
        })
        .await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert!(report.full_pull, "{report:?}");
    assert_eq!(
        report.counts[&oneroster_sync::domain::Entity::Users].updated,
        1
    );
    assert_eq!(
        report.counts[&oneroster_sync::domain::Entity::Classes].updated,
        1
    );
    assert_eq!(
        report.counts[&oneroster_sync::domain::Entity::Orgs].deleted,
        1
    );
    let mut now = store_rows(&h.db, DISTRICT).await;
    let intruder = now.get_mut("orgs").unwrap().remove("intruder").unwrap();
    assert_eq!(intruder["status"], "deleted");
    crate::sync::assert_store_eq(&now, &want);
    let (code, out) = cli(&h, &["verify", "--district", DISTRICT]).await;
    assert_eq!(code, 0, "{out}");
    // And the run after is back to deltas.
    let next = h
        .sync_with(RunOptions {
            allow_delta: true,
            ..RunOptions::default()
        })
        .await;
    assert!(!next.full_pull, "{next:?}");
}

#[tokio::test]
async fn canaries_in_demographics_never_reach_the_journal() {
    const CANARY_CITY: &str = "Canaryburg-journal-51";
    let h = Harness::with(SimConfig::new(7, Counts::tiny()), None, "").await;
    h.sim.with_data(|ds| {
        for d in &mut ds.demographics {
            d.city_of_birth = CANARY_CITY.into();
        }
    });
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    // Every gender changes: the journal names the column, never the value.
    h.sim.with_data(|ds| {
        let now = ds.next_timestamp();
        for d in &mut ds.demographics {
            d.sex = if d.sex == "male" {
                "female".into()
            } else {
                "male".into()
            };
            d.date_last_modified = now;
        }
    });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let journal = h.db.dump_tables("sync.journal");
    assert!(!journal.contains(CANARY_CITY));
    assert!(journal.contains("gender"), "the changed column is named");
    assert!(
        !journal.contains("\"male\"") && !journal.contains("\"female\""),
        "a gender value is in the journal"
    );
    let (_, out) = cli(&h, &["changes", "--district", DISTRICT, "--format", "json"]).await;
    assert!(!out.contains("\"female\"") && !out.contains("\"male\""));
    assert!(!h.db.dump().contains(CANARY_CITY));
}
