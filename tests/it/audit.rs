//! `oneroster-sync audit`: the real binary against the in-process simulator over HTTP.

use std::process::Output;

use oneroster_sim::{Collection, Counts, Faults, SimConfig, Status};
use serde_json::Value;

use crate::support::{TestDb, output_text, run_binary, write_config};
use crate::sync::{DISTRICT, Harness, district_toml};

/// Planted in every demographics record; must never reach the output.
const CANARY_CITY: &str = "Canaryburg-7f3a";
/// An unrecognized sex value; the value must never reach the output either.
const CANARY_SEX: &str = "Zebra-9c1e";

async fn audit(config: &std::path::Path, format: &str) -> Output {
    run_binary(
        config,
        &["audit", "--district", DISTRICT, "--format", format],
        &[],
    )
    .await
}

/// The JSON document: the last line of stdout (log lines come before it).
fn json_report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {}", output_text(out)))
}

fn findings(report: &Value) -> &Vec<Value> {
    report["findings"].as_array().expect("findings array")
}

fn find<'a>(report: &'a Value, code: &str) -> Vec<&'a Value> {
    findings(report)
        .iter()
        .filter(|f| f["code"] == code)
        .collect()
}

fn assert_no_secrets(out: &Output, secret: &str) {
    let text = output_text(out);
    assert!(!text.contains(secret), "the client secret is in the output");
    assert!(
        !text.contains(CANARY_CITY),
        "a city of birth is in the output"
    );
    assert!(!text.contains(CANARY_SEX), "a sex value is in the output");
}

fn plant_canary(sim: &oneroster_sim::SimHandle) {
    sim.with_data(|ds| {
        for d in &mut ds.demographics {
            d.city_of_birth = CANARY_CITY.into();
        }
    });
}

#[tokio::test]
async fn clean_district_has_no_blocking_finding_and_counts_every_record() {
    let db = TestDb::new().await;
    let sim = oneroster_sim::spawn(SimConfig::new(7, Counts::tiny()))
        .await
        .expect("start simulator");
    plant_canary(&sim);
    let dir = tempfile::tempdir().unwrap();
    // Audits happen before go-live: a disabled district, its secret read only by the command.
    let config = write_config(
        dir.path(),
        &db.url,
        None,
        &district_toml(&sim, DISTRICT, "enabled = false"),
    );

    let out = audit(&config, "json").await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let report = json_report(&out);
    assert_eq!(report["district"], DISTRICT);
    assert!(report["generated_at"].is_string());
    assert_eq!(report["blocking"], false);
    assert!(
        findings(&report)
            .iter()
            .all(|f| f["severity"] != "blocking"),
        "{report:#}"
    );
    // The simulator dates enrollments by their class's terms: nothing to warn about there.
    assert!(
        findings(&report)
            .iter()
            .all(|f| f["code"] != "enrollment_outside_term"),
        "{report:#}"
    );
    let ds = sim.snapshot();
    for (entity, collection) in [
        ("orgs", Collection::Orgs),
        ("academic_sessions", Collection::AcademicSessions),
        ("courses", Collection::Courses),
        ("classes", Collection::Classes),
        ("users", Collection::Users),
        ("enrollments", Collection::Enrollments),
        ("demographics", Collection::Demographics),
    ] {
        let t = &report["totals"][entity];
        assert_eq!(t["fetched"], ds.len(collection) as u64, "{entity}");
        assert_eq!(t["complete"], true, "{entity}");
        assert_eq!(t["invalid"], 0, "{entity}");
    }
    let active_users = ds
        .users
        .iter()
        .filter(|u| u.status == Status::Active)
        .count();
    assert_eq!(report["totals"]["users"]["active"], active_users as u64);
    assert_eq!(
        report["totals"]["users"]["deleted"],
        (ds.users.len() - active_users) as u64
    );
    // Every generated student has a gender and an ethnicity: coverage is info.
    let gender = find(&report, "coverage_gender");
    assert_eq!(gender.len(), 1);
    assert_eq!(gender[0]["severity"], "info");
    let active_students = ds
        .users
        .iter()
        .filter(|u| u.status == Status::Active && u.role == "student")
        .count();
    assert_eq!(gender[0]["count"], active_students as u64);
    assert_no_secrets(&out, &sim.credentials().client_secret);
}

/// Ids of the records a test made defective.
struct Planted {
    invalid_user: String,
    dangling_enrollment: String,
    class_with_ghost_term: String,
    duplicate_a: String,
    duplicate_b: String,
    user_without_org: String,
    class_without_teacher: String,
    enrollment_outside_term: String,
    unknown_type_org: String,
    unrecognized_sex: String,
}

fn plant_defects(sim: &oneroster_sim::SimHandle) -> Planted {
    sim.with_data(|ds| {
        // No enrollment dates but the one planted below, so it is the only one judged.
        for e in &mut ds.enrollments {
            e.begin_date = None;
            e.end_date = None;
        }
        let active = |s: Status| s == Status::Active;
        let class_ids: Vec<String> = ds
            .classes
            .iter()
            .filter(|c| active(c.status))
            .map(|c| c.sourced_id.clone())
            .collect();
        let (ghost_term_class, untaught_class) = (class_ids[0].clone(), class_ids[1].clone());
        ds.classes
            .iter_mut()
            .find(|c| c.sourced_id == ghost_term_class)
            .unwrap()
            .terms
            .push("no-such-term".into());
        ds.enrollments
            .retain(|e| !(e.class == untaught_class && e.role == "teacher"));

        // A staff member: no enrollment refers to them, so only the user itself is invalid.
        let invalid_user = ds
            .users
            .iter_mut()
            .find(|u| u.role == "administrator")
            .unwrap();
        invalid_user.role = "janitor".into();
        let invalid_user = invalid_user.sourced_id.clone();

        let teachers: Vec<usize> = (0..ds.users.len())
            .filter(|&i| ds.users[i].role == "teacher" && active(ds.users[i].status))
            .collect();
        let (a, b) = (teachers[0], teachers[1]);
        ds.users[b].username = ds.users[a].username.to_uppercase();
        ds.users[b].email = ds.users[a].email.to_uppercase();

        let students: Vec<usize> = (0..ds.users.len())
            .filter(|&i| ds.users[i].role == "student" && active(ds.users[i].status))
            .collect();
        ds.users[students[0]].orgs.clear();
        let unrecognized_sex = ds.users[students[1]].sourced_id.clone();
        ds.demographics
            .iter_mut()
            .find(|d| d.sourced_id == unrecognized_sex)
            .unwrap()
            .sex = CANARY_SEX.into();

        let clean_class = |c: &str| c != ghost_term_class && c != untaught_class;
        let usable: Vec<usize> = (0..ds.enrollments.len())
            .filter(|&i| {
                let e = &ds.enrollments[i];
                e.role == "student"
                    && active(e.status)
                    && clean_class(&e.class)
                    && ds.class(&e.class).is_some_and(|c| active(c.status))
            })
            .collect();
        let dangling = &mut ds.enrollments[usable[0]];
        dangling.user = "no-such-user".into();
        let dangling_enrollment = dangling.sourced_id.clone();
        let outside = &mut ds.enrollments[usable[1]];
        outside.begin_date = chrono::NaiveDate::from_ymd_opt(2020, 1, 6);
        outside.end_date = chrono::NaiveDate::from_ymd_opt(2020, 6, 1);
        let enrollment_outside_term = outside.sourced_id.clone();

        let school = ds.orgs.iter_mut().find(|o| o.org_type == "school").unwrap();
        school.org_type = "campus".into();

        Planted {
            invalid_user,
            dangling_enrollment,
            class_with_ghost_term: ghost_term_class,
            duplicate_a: ds.users[a].sourced_id.clone(),
            duplicate_b: ds.users[b].sourced_id.clone(),
            user_without_org: ds.users[students[0]].sourced_id.clone(),
            class_without_teacher: untaught_class,
            enrollment_outside_term,
            unknown_type_org: school.sourced_id.clone(),
            unrecognized_sex,
        }
    })
}

#[tokio::test]
async fn every_planted_defect_is_reported_with_its_severity_and_nothing_is_written() {
    let h = Harness::new(Counts::tiny()).await;
    // A store with rows in it, so "writes nothing" has something to keep.
    let first = h.sync().await;
    assert_eq!(
        first.outcome,
        oneroster_sync::sync::Outcome::Applied,
        "{first:?}"
    );
    plant_canary(&h.sim);
    let p = plant_defects(&h.sim);
    let before = h.db.dump();

    // users: 1 invalid of 69 (> 1 %) blocks; classes: 1 dangling term of 12 blocks;
    // enrollments: 1 dangling user of ~190 (< 1 %) warns.
    let expected: Vec<(&str, &str, &str)> = vec![
        ("invalid_record", "blocking", &p.invalid_user),
        ("dangling_class_term", "blocking", &p.class_with_ghost_term),
        (
            "dangling_enrollment_user",
            "warning",
            &p.dangling_enrollment,
        ),
        ("duplicate_username", "warning", &p.duplicate_a),
        ("duplicate_username", "warning", &p.duplicate_b),
        ("duplicate_email", "warning", &p.duplicate_a),
        ("duplicate_email", "warning", &p.duplicate_b),
        ("user_without_org", "warning", &p.user_without_org),
        ("class_without_teacher", "warning", &p.class_without_teacher),
        (
            "enrollment_outside_term",
            "warning",
            &p.enrollment_outside_term,
        ),
        ("unknown_org_type", "warning", &p.unknown_type_org),
        ("unrecognized_sex", "warning", &p.unrecognized_sex),
    ];

    let out = audit(&h.config, "json").await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert_no_secrets(&out, &h.sim.credentials().client_secret);
    let report = json_report(&out);
    assert_eq!(report["blocking"], true);
    for (code, severity, id) in &expected {
        let hits = find(&report, code);
        let hit = hits
            .iter()
            .find(|f| f["samples"].as_array().unwrap().iter().any(|s| s == id))
            .unwrap_or_else(|| panic!("no {code} finding with sample {id}: {report:#}"));
        assert_eq!(hit["severity"], *severity, "{code}: {hit}");
        assert!(hit["count"].as_u64().unwrap() >= 1);
        assert!(hit["entity"].is_string() && hit["message"].is_string());
    }
    // The planted ones are the only ones of their kind in this data.
    for code in [
        "invalid_record",
        "dangling_class_term",
        "dangling_enrollment_user",
        "enrollment_outside_term",
        "unknown_org_type",
        "unrecognized_sex",
    ] {
        assert_eq!(find(&report, code)[0]["count"], 1, "{code}");
    }
    let invalid = &find(&report, "invalid_record")[0];
    assert_eq!(invalid["entity"], "users");
    assert!(
        invalid["message"]
            .as_str()
            .unwrap()
            .contains("unknown role")
    );
    // Blocking findings come first.
    let severities: Vec<&str> = findings(&report)
        .iter()
        .map(|f| f["severity"].as_str().unwrap())
        .collect();
    let rank = |s: &str| ["blocking", "warning", "info"].iter().position(|x| *x == s);
    assert!(severities.windows(2).all(|w| rank(w[0]) <= rank(w[1])));

    let out = audit(&h.config, "text").await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert_no_secrets(&out, &h.sim.credentials().client_secret);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    for (code, severity, id) in &expected {
        let found = lines.windows(2).any(|w| {
            w[0].starts_with(&severity.to_uppercase())
                && w[0].split_whitespace().nth(1) == Some(code)
                && w[1].trim_start().starts_with("samples:")
                && w[1].contains(id)
        });
        assert!(found, "no {severity} {code} line with {id}:\n{stdout}");
    }
    assert!(stdout.contains(&format!("data audit of district {DISTRICT}")));
    assert!(stdout.contains("blocking finding(s)"));

    assert_eq!(before, h.db.dump(), "the audit wrote to the database");
}

#[tokio::test]
async fn forbidden_demographics_is_a_blocking_permission_finding_and_the_rest_is_audited() {
    let h = Harness::new(Counts::tiny()).await;
    h.sim.set_faults(Faults {
        status_for: Some(("demographics".into(), 403)),
        ..Faults::default()
    });

    let out = audit(&h.config, "json").await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let report = json_report(&out);
    assert_eq!(report["blocking"], true);
    let blocking: Vec<&Value> = findings(&report)
        .iter()
        .filter(|f| f["severity"] == "blocking")
        .collect();
    assert_eq!(blocking.len(), 1, "{report:#}");
    assert_eq!(blocking[0]["code"], "permission_denied");
    assert_eq!(blocking[0]["entity"], "demographics");
    let message = blocking[0]["message"].as_str().unwrap();
    assert!(message.contains("Full Permissions"), "{message}");
    assert!(
        message.contains("demographics are not enabled"),
        "{message}"
    );

    assert_eq!(report["totals"]["demographics"]["complete"], false);
    let users = h.sim.read(|ds| ds.users.len()) as u64;
    assert_eq!(report["totals"]["users"]["fetched"], users);
    // The collection after demographics was still fetched and checked.
    assert_eq!(report["totals"]["enrollments"]["complete"], true);
    assert!(
        h.sim
            .stats()
            .per_collection
            .get("enrollments")
            .is_some_and(|n| *n > 0)
    );
    assert!(find(&report, "coverage_gender").is_empty());
}

#[tokio::test]
async fn audit_needs_no_database() {
    let sim = oneroster_sim::spawn(SimConfig::new(7, Counts::tiny()))
        .await
        .expect("start simulator");
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: any command that connects would fail.
    let config = write_config(
        dir.path(),
        "postgres://nobody@127.0.0.1:1/none",
        None,
        &district_toml(&sim, DISTRICT, ""),
    );
    let out = audit(&config, "json").await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(json_report(&out)["blocking"], false);
}

#[tokio::test]
async fn rejected_credentials_are_blocking_and_the_secret_is_not_shown() {
    let sim = oneroster_sim::spawn(SimConfig::new(7, Counts::tiny()))
        .await
        .expect("start simulator");
    let dir = tempfile::tempdir().unwrap();
    let wrong = "wrong-secret-5e1d";
    let toml = district_toml(&sim, DISTRICT, "").replace(
        &format!("client_secret = \"{}\"", sim.credentials().client_secret),
        &format!("client_secret = \"{wrong}\""),
    );
    assert!(toml.contains(wrong));
    let db = TestDb::new().await;
    let config = write_config(dir.path(), &db.url, None, &toml);

    let out = audit(&config, "json").await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let report = json_report(&out);
    let all = findings(&report);
    assert!(!all.is_empty());
    // Every endpoint was tried, and each failed on its credentials.
    assert_eq!(find(&report, "credentials_rejected").len(), 7, "{report:#}");
    assert!(all.iter().all(|f| f["severity"] == "blocking"));
    assert_no_secrets(&out, wrong);
}
