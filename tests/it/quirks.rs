//! Reading the world's OneRoster data right (CONTRACT §4): payloads shaped the way real
//! providers send them, over real HTTP from the simulator (its `extra` fields replace regular
//! ones on the wire), each checked for the stored rows, the finding codes, and that a second run
//! writes nothing.

use oneroster_sim::{Counts, Faults, Periods, Scenario};
use oneroster_sync::domain::{Code, Entity, Severity};
use oneroster_sync::sync::{Outcome, PullKind, RunOptions, RunReport};
use serde_json::{Value, json};

use crate::support::{DISTRICT, Harness};
use crate::sync::{StoreRows, assert_store_eq, expected, store_rows};

fn fields(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("an object"),
    }
}

fn code_count(r: &RunReport, code: Code, entity: &str) -> u64 {
    r.findings.get(code, entity)
}

async fn updated_at(h: &Harness) -> Vec<(String, String, chrono::DateTime<chrono::Utc>)> {
    let mut out = Vec::new();
    let mut conn = h.db.connect().await;
    for entity in Entity::ALL {
        let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT sourced_id, updated_at FROM roster.{} ORDER BY sourced_id",
                entity.as_str()
            )))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        out.extend(rows.into_iter().map(|(id, t)| (entity.to_string(), id, t)));
    }
    out
}

/// A second run over the same source: nothing to do, no row touched.
async fn assert_second_run_writes_nothing(h: &Harness) {
    let before = updated_at(h).await;
    let again = h.sync().await;
    assert_eq!(again.outcome, Outcome::NothingToDo, "{again:?}");
    assert_eq!(again.changes(), 0);
    assert_eq!(before, updated_at(h).await, "a row was written again");
}

#[tokio::test]
async fn odd_but_usable_values_are_stored_canonically_and_a_second_run_writes_nothing() {
    let h = Harness::new(Counts::tiny()).await;
    let (teacher, student, class, org, session, enrollment) = h.sim.with_data(|ds| {
        let teacher = ds.users.iter().position(|u| u.role == "teacher").unwrap();
        let t = &mut ds.users[teacher];
        let orgs: Vec<Value> = t
            .orgs
            .iter()
            .rev()
            .enumerate()
            .map(|(i, id)| match i {
                // A relative href, a malformed one, one without href or type.
                0 => json!({"href": format!("/orgs/{id}"), "sourcedId": id, "type": "school"}),
                1 => json!({"href": "hhttp://nowhere", "sourcedId": id, "type": "user"}),
                _ => json!({"sourcedId": id}),
            })
            .collect();
        t.extra = fields(json!({
            "role": "Teacher",
            "enabledUser": 1,
            "middleName": null,
            "email": "",
            "grades": ["10", "09", "10"],
            "orgs": orgs,
            "dateLastModified": "2017-09-27 10:57:52",
        }));
        let teacher = t.sourced_id.clone();
        let student = ds.users.iter().position(|u| u.role == "student").unwrap();
        let s = &mut ds.users[student];
        s.extra = fields(json!({"enabledUser": "FALSE", "dateLastModified": "2017-09-27"}));
        let student = s.sourced_id.clone();

        let c = &mut ds.classes[0];
        let mut terms = c.terms.clone();
        terms.push(terms[0].clone());
        terms.reverse();
        c.extra = fields(json!({
            "classType": "Scheduled",
            "grades": ["12", "09", "11"],
            "subjects": ["Science", "Math", "Math"],
            "periods": "3, 1,2",
            "terms": terms.iter().map(|t| json!({"sourcedId": t})).collect::<Vec<_>>(),
            "dateLastModified": "2017-09-27T12:57:52+02:00",
            "classCode": null,
        }));
        let class = c.sourced_id.clone();
        let o = ds.orgs.iter_mut().find(|o| o.org_type == "school").unwrap();
        o.extra = fields(json!({"type": "School", "identifier": ""}));
        let org = o.sourced_id.clone();
        let a = &mut ds.academic_sessions[0];
        a.extra = fields(json!({"type": "SCHOOLYEAR", "startDate": "2026-08-01T00:00:00Z"}));
        let session = a.sourced_id.clone();
        let e = ds
            .enrollments
            .iter_mut()
            .find(|e| e.role == "teacher")
            .unwrap();
        e.extra = fields(json!({"role": "TEACHER", "primary": 1}));
        let enrollment = e.sourced_id.clone();
        (teacher, student, class, org, session, enrollment)
    });

    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    // All of it is usable and canonical: no finding at all.
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    let rows = store_rows(&h.db, DISTRICT).await;
    let t = &rows["users"][&teacher];
    assert_eq!(t["role"], "teacher");
    assert_eq!(t["enabled"], true);
    assert_eq!(t["middle_name"], Value::Null);
    assert_eq!(t["email"], Value::Null);
    assert_eq!(t["grades"], json!(["09", "10"]));
    let orgs = t["org_sourced_ids"].as_array().unwrap();
    assert!(
        orgs.windows(2).all(|w| w[0].as_str() < w[1].as_str()),
        "{t}"
    );
    assert_eq!(t["source_modified_at"], "2017-09-27T10:57:52.000000Z");
    let s = &rows["users"][&student];
    assert_eq!(s["enabled"], false);
    assert_eq!(s["source_modified_at"], "2017-09-27T00:00:00.000000Z");
    let c = &rows["classes"][&class];
    assert_eq!(c["class_type"], "scheduled");
    assert_eq!(c["grades"], json!(["09", "11", "12"]));
    assert_eq!(c["subjects"], json!(["Math", "Science"]));
    assert_eq!(c["periods"], json!(["1", "2", "3"]));
    let terms = c["term_sourced_ids"].as_array().unwrap();
    assert!(
        terms.windows(2).all(|w| w[0].as_str() < w[1].as_str()),
        "{c}"
    );
    assert_eq!(c["class_code"], Value::Null);
    assert_eq!(c["source_modified_at"], "2017-09-27T10:57:52.000000Z");
    assert_eq!(rows["orgs"][&org]["type"], "school");
    assert_eq!(rows["orgs"][&org]["identifier"], Value::Null);
    assert_eq!(rows["academic_sessions"][&session]["type"], "schoolYear");
    assert_eq!(
        rows["academic_sessions"][&session]["start_date"],
        "2026-08-01"
    );
    assert_eq!(rows["enrollments"][&enrollment]["role"], "teacher");
    assert_eq!(rows["enrollments"][&enrollment]["is_primary"], true);
    assert_second_run_writes_nothing(&h).await;

    // Every set in the source in another order, every vocabulary value in another case: no
    // change at all.
    h.sim.with_data(|ds| {
        for c in &mut ds.classes {
            c.grades.reverse();
            c.subjects.reverse();
            c.terms.reverse();
            if let Periods::List(p) = &mut c.periods {
                p.reverse();
            }
            c.class_type = c.class_type.to_uppercase().into();
        }
        for u in &mut ds.users {
            u.orgs.reverse();
            u.grades.reverse();
            u.role = u.role.to_uppercase().into();
            // (An `ext:` value is the provider's own, kept as sent.)
            for r in u.roles.iter_mut().filter(|r| !r.role.starts_with("ext:")) {
                r.role = r.role.to_uppercase().into();
            }
        }
        for o in &mut ds.orgs {
            o.org_type = o.org_type.to_uppercase().into();
        }
        for e in &mut ds.enrollments {
            e.role = e.role.to_uppercase().into();
        }
    });
    assert_second_run_writes_nothing(&h).await;
}

#[tokio::test]
async fn values_outside_a_vocabulary_and_bad_dates_are_stored_with_their_codes() {
    let h = Harness::new(Counts::tiny()).await;
    let (class, org, session, enrollment) = h.sim.with_data(|ds| {
        ds.classes[0].class_type = "Lab".into();
        let o = ds.orgs.iter_mut().find(|o| o.org_type == "school").unwrap();
        o.org_type = "campus".into();
        let a = &mut ds.academic_sessions[0];
        a.session_type = "quarter".into();
        let e = &mut ds.enrollments[0];
        e.extra = fields(json!({"beginDate": "08/15/2026", "dateLastModified": "yesterday"}));
        (
            ds.classes[0].sourced_id.clone(),
            o.sourced_id.clone(),
            a.sourced_id.clone(),
            e.sourced_id.clone(),
        )
    });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert_eq!(code_count(&report, Code::ClassTypeUnknown, "classes"), 1);
    assert_eq!(code_count(&report, Code::OrgTypeUnknown, "orgs"), 1);
    assert_eq!(
        code_count(&report, Code::SessionTypeUnknown, "academic_sessions"),
        1
    );
    assert_eq!(code_count(&report, Code::DateUnparseable, "enrollments"), 2);
    assert_eq!(report.findings.count(Severity::Error), 0);
    let rows = store_rows(&h.db, DISTRICT).await;
    assert_eq!(rows["classes"][&class]["class_type"], "Lab");
    assert_eq!(rows["orgs"][&org]["type"], "campus");
    assert_eq!(rows["academic_sessions"][&session]["type"], "quarter");
    assert_eq!(rows["enrollments"][&enrollment]["begin_date"], Value::Null);
    assert_eq!(
        rows["enrollments"][&enrollment]["source_modified_at"],
        Value::Null
    );
    assert_eq!(rows["enrollments"][&enrollment]["status"], "active");
    // The findings are in the history, every one with its record.
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sync.run_findings WHERE run_id = $1 AND severity = 'warning'",
    )
    .bind(report.run_id)
    .fetch_one(&h.dbs.state)
    .await
    .unwrap();
    assert_eq!(n, 5);
    assert_second_run_writes_nothing(&h).await;
}

#[tokio::test]
async fn a_class_whose_course_is_not_shared_lands_with_its_enrollments_active() {
    let h = Harness::new(Counts::tiny()).await;
    let (class, course) = h.sim.with_data(|ds| {
        let course = ds.classes[0].course.clone();
        // The course is not shared with the app: every class of it references a course the
        // snapshot lacks.
        ds.courses.retain(|c| c.sourced_id != course);
        (ds.classes[0].sourced_id.clone(), course)
    });
    let classes_of_course =
        h.sim
            .read(|ds| ds.classes.iter().filter(|c| c.course == course).count()) as u64;
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert_eq!(
        code_count(&report, Code::ClassCourseMissing, "classes"),
        classes_of_course
    );
    assert_eq!(
        report.findings.count(Severity::Error),
        0,
        "{:?}",
        report.findings
    );
    let rows = store_rows(&h.db, DISTRICT).await;
    let c = &rows["classes"][&class];
    assert_eq!(c["status"], "active");
    assert_eq!(
        c["course_sourced_id"],
        course.as_str(),
        "the reference is kept as sent"
    );
    let enrollments: Vec<&Value> = rows["enrollments"]
        .values()
        .filter(|e| e["class_sourced_id"] == class.as_str())
        .collect();
    assert!(!enrollments.is_empty());
    assert!(
        enrollments.iter().all(|e| e["status"] == "active"),
        "{enrollments:?}"
    );
    // And the store is exactly what the contract says.
    assert_store_eq(&rows, &expected(&h.sim.snapshot(), &StoreRows::new()));
    assert_second_run_writes_nothing(&h).await;
}

#[tokio::test]
async fn a_delta_against_a_total_that_ignores_the_filter_completes_as_a_full_pull() {
    let h = Harness::new(Counts::tiny()).await;
    let delta = RunOptions {
        allow_delta: true,
        ..RunOptions::default()
    };
    assert_eq!(h.sync_with(delta).await.outcome, Outcome::Applied);
    let before = store_rows(&h.db, DISTRICT).await;
    h.sim.apply(Scenario::DayOfEdits { seed: 5 });
    h.sim.set_faults(Faults {
        total_ignores_filter: true,
        ..Faults::default()
    });
    let report = h.sync_with(delta).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert_eq!(report.pull, PullKind::Full);
    assert!(report.full_pull);
    assert!(
        report
            .pull_reason
            .as_deref()
            .is_some_and(|r| r.contains("X-Total-Count ignores")),
        "{report:?}"
    );
    assert_store_eq(
        &store_rows(&h.db, DISTRICT).await,
        &expected(&h.sim.snapshot(), &before),
    );
    let recorded: (Option<String>, bool) =
        sqlx::query_as("SELECT pull, full_pull FROM sync.runs WHERE run_id = $1")
            .bind(report.run_id)
            .fetch_one(&h.dbs.state)
            .await
            .unwrap();
    assert_eq!(recorded, (Some("full".to_owned()), true));
}

#[tokio::test]
async fn an_html_login_page_fails_at_once_naming_the_endpoint_and_the_content_type() {
    let h = Harness::new(Counts::tiny()).await;
    h.sim.set_faults(Faults {
        html_for: Some("orgs".into()),
        ..Faults::default()
    });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Failed);
    let error = report.error.unwrap_or_default();
    assert!(error.contains("orgs:"), "{error}");
    assert!(error.contains("text/html"), "{error}");
    assert!(error.contains("<!DOCTYPE html>"), "{error}");
    // Not retried: the same page would come back.
    assert_eq!(h.sim.stats().per_collection.get("orgs"), Some(&1));
    assert!(store_rows(&h.db, DISTRICT).await["users"].is_empty());
}

#[tokio::test]
async fn demographics_that_do_not_exist_name_the_key_or_are_done_without() {
    let h = Harness::new(Counts::tiny()).await;
    h.sim.set_faults(Faults {
        status_for: Some(("demographics".into(), 404)),
        ..Faults::default()
    });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Failed);
    let error = report.error.unwrap_or_default();
    assert!(error.contains("does not exist on this server"), "{error}");
    assert!(error.contains("demographics = \"off\""), "{error}");

    // A provider without demographics, configured as such: users land without them.
    let h = Harness::with(
        oneroster_sim::SimConfig::new(7, Counts::tiny()),
        None,
        "demographics = \"optional\"",
    )
    .await;
    h.sim.set_faults(Faults {
        status_for: Some(("demographics".into(), 404)),
        ..Faults::default()
    });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let rows = store_rows(&h.db, DISTRICT).await;
    assert!(rows["users"].values().all(|u| u["races"] == Value::Null));
    assert_second_run_writes_nothing(&h).await;
}

#[tokio::test]
async fn demographics_that_go_away_are_held_not_cleared() {
    let h = Harness::with(
        oneroster_sim::SimConfig::new(7, Counts::tiny()),
        None,
        "demographics = \"optional\"\nmin_population = 10",
    )
    .await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let with_demographics = || async {
        store_rows(&h.db, DISTRICT).await["users"]
            .values()
            .filter(|u| u["races"] != Value::Null)
            .count()
    };
    let stored = with_demographics().await;
    assert!(stored > 10);

    // The district switched the app's demographics sharing off: 403.
    h.sim.set_faults(Faults {
        status_for: Some(("demographics".into(), 403)),
        ..Faults::default()
    });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Held, "{report:?}");
    let hold = report.hold.clone().unwrap();
    assert!(
        hold.breaches
            .iter()
            .any(|b| b.operation == "clear_demographics" && b.count == stored as i64),
        "{hold:?}"
    );
    assert_eq!(with_demographics().await, stored, "nothing was cleared");

    // Or the endpoint answers, empty.
    h.sim.set_faults(Faults::default());
    h.sim.with_data(|ds| ds.demographics.clear());
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Held, "{report:?}");
    assert_eq!(with_demographics().await, stored);
    let held = oneroster_sync::history::pending(&h.dbs.state, DISTRICT)
        .await
        .unwrap()
        .unwrap();
    assert!(
        held.reasons.to_string().contains("clear_demographics"),
        "{held:?}"
    );
}
