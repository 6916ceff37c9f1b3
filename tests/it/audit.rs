//! `oneroster-sync audit`: the real binary against the in-process simulator over HTTP. The
//! audit applies exactly the sync's rules: on data with every finding class, what it reports as
//! skipped is what a dry run skips, with the same codes.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;

use oneroster_sim::{Collection, Counts, Faults, SimConfig, Status};
use oneroster_sync::domain::Code;
use oneroster_sync::sync::{Outcome, RunOptions};
use serde_json::{Value, json};

use crate::support::{
    DISTRICT, Harness, TestDb, add_org, clear_orgs, district_toml, output_text, run_binary,
    set_role, write_config,
};

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

/// The JSON document: the whole of stdout (logs go to stderr).
fn json_report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            output_text(out)
        )
    })
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

fn counts() -> Counts {
    Counts {
        staff: 7,
        ..Counts::tiny()
    }
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
        findings(&report).iter().all(|f| f["blocking"] == false),
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

/// Puts one record of every finding class into the district; returns (code, sample id) for
/// each, and the audit's own findings.
fn plant_defects(sim: &oneroster_sim::SimHandle) -> Vec<(&'static str, String)> {
    sim.with_data(|ds| {
        let mut planted: Vec<(&'static str, String)> = Vec::new();
        let active = |s: Status| s == Status::Active;
        let over = |fields: Value| match fields {
            Value::Object(m) => m,
            _ => unreachable!("an object"),
        };
        // No enrollment dates but the one planted below, so it is the only one judged.
        for e in &mut ds.enrollments {
            e.begin_date = None;
            e.end_date = None;
        }
        // A closed school and a closed term, still referenced below.
        let mut closed = ds.orgs[0].clone();
        closed.sourced_id = "zz-closed-school".into();
        closed.status = Status::ToBeDeleted;
        closed.parent = None;
        closed.children.clear();
        ds.orgs.push(closed);
        let mut closed = ds.academic_sessions[0].clone();
        closed.sourced_id = "zz-closed-term".into();
        closed.status = Status::ToBeDeleted;
        closed.parent = None;
        closed.children.clear();
        ds.academic_sessions.push(closed);

        // Staff that no enrollment refers to: only the user itself is affected.
        let staff: Vec<usize> = (0..ds.users.len())
            .filter(|&i| ds.users[i].role == "administrator" || ds.users[i].role == "aide")
            .collect();
        set_role(&mut ds.users[staff[0]], "janitor");
        planted.push(("user_role_unknown", ds.users[staff[0]].sourced_id.clone()));
        set_role(&mut ds.users[staff[1]], "");
        planted.push(("user_role_missing", ds.users[staff[1]].sourced_id.clone()));
        ds.users[staff[2]].extra = over(json!({"sourcedId": ""}));
        planted.push(("sourced_id_missing", "<missing>".into()));
        ds.users[staff[3]].extra = over(json!({"status": "archived"}));
        planted.push(("status_unknown", ds.users[staff[3]].sourced_id.clone()));
        ds.users[staff[4]].extra = over(json!({"enabledUser": {"not": "a flag"}}));
        planted.push(("record_unreadable", ds.users[staff[4]].sourced_id.clone()));
        add_org(&mut ds.users[staff[5]], "no-such-org");
        planted.push(("user_org_missing", ds.users[staff[5]].sourced_id.clone()));
        add_org(&mut ds.users[staff[5]], "zz-closed-school");
        planted.push(("user_org_deleted", ds.users[staff[5]].sourced_id.clone()));

        let teachers: Vec<usize> = (0..ds.users.len())
            .filter(|&i| ds.users[i].role == "teacher" && active(ds.users[i].status))
            .collect();
        let (a, b) = (teachers[0], teachers[1]);
        ds.users[b].username = ds.users[a].username.to_uppercase();
        ds.users[b].email = ds.users[a].email.to_uppercase();
        planted.push(("duplicate_username", ds.users[a].sourced_id.clone()));
        planted.push(("duplicate_email", ds.users[b].sourced_id.clone()));
        let mut twin = ds.users[teachers[2]].clone();
        twin.given_name = "Twin".into();
        planted.push(("duplicate_sourced_id", twin.sourced_id.clone()));
        ds.users.push(twin);
        // A roles[] entry with a role outside the vocabulary beside the user's real one.
        let org = ds.users[teachers[3]].orgs[0].clone();
        ds.users[teachers[3]].extra = over(json!({"roles": [
            {"roleType": "primary", "role": "teacher", "org": {"sourcedId": org, "type": "org"}},
            {"roleType": "secondary", "role": "janitor", "org": {"sourcedId": org, "type": "org"}},
        ]}));
        planted.push((
            "user_role_entry_unusable",
            ds.users[teachers[3]].sourced_id.clone(),
        ));

        let students: Vec<usize> = (0..ds.users.len())
            .filter(|&i| ds.users[i].role == "student" && active(ds.users[i].status))
            .collect();
        clear_orgs(&mut ds.users[students[0]]);
        planted.push(("user_without_org", ds.users[students[0]].sourced_id.clone()));
        let unrecognized_sex = ds.users[students[1]].sourced_id.clone();
        ds.demographics
            .iter_mut()
            .find(|d| d.sourced_id == unrecognized_sex)
            .unwrap()
            .sex = CANARY_SEX.into();
        planted.push(("sex_unknown", unrecognized_sex));
        let mut stray = ds.demographics[0].clone();
        stray.sourced_id = "zz-no-such-user".into();
        ds.demographics.push(stray);
        planted.push(("demographics_user_missing", "zz-no-such-user".into()));

        let class_ids: Vec<String> = ds
            .classes
            .iter()
            .filter(|c| active(c.status))
            .map(|c| c.sourced_id.clone())
            .collect();
        let class = |ds: &mut oneroster_sim::Dataset, i: usize| {
            let id = class_ids[i].clone();
            ds.classes.iter().position(|c| c.sourced_id == id).unwrap()
        };
        let c = class(ds, 0);
        ds.classes[c].terms.push("no-such-term".into());
        planted.push(("class_term_missing", ds.classes[c].sourced_id.clone()));
        let c = class(ds, 1);
        ds.classes[c].course = "no-such-course".into();
        planted.push(("class_course_missing", ds.classes[c].sourced_id.clone()));
        let c = class(ds, 2);
        ds.classes[c].school = "no-such-school".into();
        planted.push(("class_school_missing", ds.classes[c].sourced_id.clone()));
        let c = class(ds, 3);
        ds.classes[c].class_type = "lab".into();
        planted.push(("class_type_unknown", ds.classes[c].sourced_id.clone()));
        let c = class(ds, 4);
        let deleted_course = ds.classes[c].course.clone();
        planted.push(("class_course_deleted", ds.classes[c].sourced_id.clone()));
        let c = class(ds, 6);
        ds.classes[c].school = "zz-closed-school".into();
        planted.push(("class_school_deleted", ds.classes[c].sourced_id.clone()));
        let c = class(ds, 7);
        ds.classes[c].terms.push("zz-closed-term".into());
        planted.push(("class_term_deleted", ds.classes[c].sourced_id.clone()));
        let untaught = class_ids[5].clone();
        ds.enrollments
            .retain(|e| !(e.class == untaught && e.role == "teacher"));
        planted.push(("class_without_teacher", untaught.clone()));
        for course in ds
            .courses
            .iter_mut()
            .filter(|k| k.sourced_id == deleted_course)
        {
            course.status = Status::ToBeDeleted;
        }
        let others: Vec<usize> = (0..ds.courses.len())
            .filter(|&k| ds.courses[k].sourced_id != deleted_course)
            .collect();
        ds.courses[others[0]].org = "no-such-org".into();
        planted.push((
            "course_org_missing",
            ds.courses[others[0]].sourced_id.clone(),
        ));
        ds.courses[others[1]].org = "zz-closed-school".into();
        planted.push((
            "course_org_deleted",
            ds.courses[others[1]].sourced_id.clone(),
        ));
        ds.users[staff[6]].extra = over(json!({"status": ""}));
        planted.push(("status_missing", ds.users[staff[6]].sourced_id.clone()));

        let school = ds.orgs.iter_mut().find(|o| o.org_type == "school").unwrap();
        school.org_type = "campus".into();
        planted.push(("org_type_unknown", school.sourced_id.clone()));
        let school = ds
            .orgs
            .iter_mut()
            .rfind(|o| o.org_type == "school")
            .unwrap();
        school.parent = Some("no-such-parent".into());
        planted.push(("org_parent_missing", school.sourced_id.clone()));
        let session = &mut ds.academic_sessions[0];
        session.session_type = "quarter".into();
        planted.push(("session_type_unknown", session.sourced_id.clone()));
        let last = ds.academic_sessions.len() - 2;
        let session = &mut ds.academic_sessions[last];
        session.parent = Some("no-such-session".into());
        planted.push(("session_parent_missing", session.sourced_id.clone()));

        let clean = |c: &str| !class_ids[..8].iter().any(|x| x == c);
        let usable: Vec<usize> = (0..ds.enrollments.len())
            .filter(|&i| {
                let e = &ds.enrollments[i];
                e.role == "student"
                    && active(e.status)
                    && clean(&e.class)
                    && ds.class(&e.class).is_some_and(|c| active(c.status))
            })
            .collect();
        let mut plant =
            |i: usize, code: &'static str, f: &dyn Fn(&mut oneroster_sim::Enrollment)| {
                let e = &mut ds.enrollments[usable[i]];
                f(e);
                planted.push((code, e.sourced_id.clone()));
            };
        plant(0, "enrollment_user_missing", &|e| {
            e.user = "no-such-user".into()
        });
        plant(1, "enrollment_class_missing", &|e| {
            e.class = "no-such-class".into()
        });
        plant(2, "enrollment_without_user", &|e| {
            e.extra = over(json!({"user": null}))
        });
        plant(3, "enrollment_without_class", &|e| {
            e.extra = over(json!({"class": ""}))
        });
        plant(4, "enrollment_role_missing", &|e| e.role = "".into());
        plant(5, "enrollment_role_unknown", &|e| e.role = "janitor".into());
        plant(6, "date_unparseable", &|e| {
            e.extra = over(json!({"beginDate": "someday"}))
        });
        plant(7, "enrollment_outside_term", &|e| {
            e.begin_date = chrono::NaiveDate::from_ymd_opt(2020, 1, 6);
            e.end_date = chrono::NaiveDate::from_ymd_opt(2020, 6, 1);
        });
        planted
    })
}

#[tokio::test]
async fn every_planted_defect_is_reported_with_its_code_and_nothing_is_written() {
    let h = Harness::new(counts()).await;
    // A store with rows in it, so "writes nothing" has something to keep.
    let first = h.sync().await;
    assert_eq!(first.outcome, Outcome::Applied, "{first:?}");
    plant_canary(&h.sim);
    let planted = plant_defects(&h.sim);
    // Every per-record code is planted.
    for code in Code::ALL {
        assert!(
            planted.iter().any(|(c, _)| *c == code.as_str()),
            "{code} not planted"
        );
    }
    let before = h.db.dump();

    let out = audit(&h.config, "json").await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert_no_secrets(&out, &h.sim.credentials().client_secret);
    let report = json_report(&out);
    assert_eq!(report["blocking"], true);
    for (code, id) in &planted {
        let hits = find(&report, code);
        let hit = hits
            .iter()
            .find(|f| f["samples"].as_array().unwrap().iter().any(|s| s == id))
            .unwrap_or_else(|| panic!("no {code} finding with sample {id}: {report:#}"));
        let severity = match Code::from_name(code) {
            Some(c) => c.severity().as_str(),
            None => "warning",
        };
        assert_eq!(hit["severity"], severity, "{code}: {hit}");
        assert!(hit["count"].as_u64().unwrap() >= 1);
        assert!(hit["entity"].is_string() && hit["message"].is_string());
    }
    // Users: 5 skipped of 70 (> 1 %) block; enrollments: 7 of ~190 block too; a warning never
    // blocks.
    let users = find(&report, "user_role_unknown")[0];
    assert_eq!(users["blocking"], true, "{users}");
    assert!(
        users["message"]
            .as_str()
            .unwrap()
            .contains("not in the OneRoster vocabulary")
    );
    assert_eq!(find(&report, "class_course_missing")[0]["blocking"], false);
    // The planted ones are the only ones of their kind in this data.
    for code in [
        "user_role_unknown",
        "class_term_missing",
        "enrollment_user_missing",
        "enrollment_outside_term",
        "org_type_unknown",
        "sex_unknown",
        "date_unparseable",
    ] {
        assert_eq!(find(&report, code)[0]["count"], 1, "{code}");
    }
    // Blocking findings come first, then by severity.
    let order: Vec<(bool, &str)> = findings(&report)
        .iter()
        .map(|f| (f["blocking"] == false, f["severity"].as_str().unwrap()))
        .collect();
    let rank = |s: &str| ["error", "warning", "info"].iter().position(|x| *x == s);
    assert!(
        order
            .windows(2)
            .all(|w| (w[0].0, rank(w[0].1)) <= (w[1].0, rank(w[1].1))),
        "{order:?}"
    );

    let out = audit(&h.config, "text").await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert_no_secrets(&out, &h.sim.credentials().client_secret);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    for (code, id) in &planted {
        let found = lines.windows(2).any(|w| {
            w[0].split_whitespace().nth(1) == Some(code)
                && w[1].trim_start().starts_with("samples:")
                && w[1].contains(id.as_str())
        });
        assert!(found, "no {code} line with {id}:\n{stdout}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("BLOCKING user_role_unknown"))
    );
    assert!(stdout.contains(&format!("data audit of district {DISTRICT}")));
    assert!(stdout.contains("blocking finding(s)"));

    assert_eq!(before, h.db.dump(), "the audit wrote to the database");
}

/// (code, entity) -> the ids of every record with that finding.
type ById = BTreeMap<(String, String), BTreeSet<String>>;

#[tokio::test]
async fn the_audit_skips_and_warns_exactly_what_a_dry_run_does() {
    let h = Harness::new(counts()).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    plant_defects(&h.sim);

    let out = audit(&h.config, "json").await;
    let report = json_report(&out);
    let dry = h
        .sync_with(RunOptions {
            dry_run: true,
            ..RunOptions::default()
        })
        .await;
    assert_eq!(dry.outcome, Outcome::DryRun, "{dry:?}");

    // Every finding of the dry run, from its history.
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT severity, code, entity, sourced_id FROM sync.run_findings WHERE run_id = $1",
    )
    .bind(dry.run_id)
    .fetch_all(&h.dbs.state)
    .await
    .unwrap();
    let mut dry_run = ById::new();
    for (severity, code, entity, id) in &rows {
        assert_eq!(
            Code::from_name(code).map(|c| c.severity().as_str()),
            Some(severity.as_str())
        );
        dry_run
            .entry((code.clone(), entity.clone()))
            .or_default()
            .insert(id.clone());
    }
    // The audit's per-record findings, with every id (each code is planted a few times at
    // most, well within the samples).
    let mut audited = ById::new();
    for f in findings(&report) {
        let code = f["code"].as_str().unwrap();
        if Code::from_name(code).is_none() {
            continue;
        }
        assert!(f["count"].as_u64().unwrap() <= 20, "{f}");
        let ids: BTreeSet<String> = f["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len() as u64, f["count"].as_u64().unwrap(), "{f}");
        audited.insert(
            (code.to_owned(), f["entity"].as_str().unwrap().to_owned()),
            ids,
        );
    }
    let only_audit: Vec<_> = audited
        .iter()
        .filter(|(k, v)| dry_run.get(*k) != Some(v))
        .collect();
    let only_dry: Vec<_> = dry_run
        .iter()
        .filter(|(k, v)| audited.get(*k) != Some(v))
        .collect();
    assert!(
        only_audit.is_empty() && only_dry.is_empty(),
        "audit alone: {only_audit:?}\ndry run alone: {only_dry:?}"
    );
    assert!(dry_run.len() >= Code::ALL.len(), "{dry_run:?}");
    // And the skip counts per collection agree.
    for (entity, counts) in &dry.counts {
        assert_eq!(
            report["totals"][entity.as_str()]["invalid"],
            counts.skipped,
            "{entity}"
        );
    }
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
        .filter(|f| f["blocking"] == true)
        .collect();
    assert_eq!(blocking.len(), 1, "{report:#}");
    assert_eq!(blocking[0]["code"], "permission_denied");
    assert_eq!(blocking[0]["entity"], "demographics");
    let message = blocking[0]["message"].as_str().unwrap();
    assert!(message.contains("\"Demographics\""), "{message}");
    assert!(message.contains("demographics = \"off\""), "{message}");

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
async fn rejected_credentials_stop_the_audit_at_once_and_the_secret_is_not_shown() {
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
    // One finding: no other collection can be read with those credentials either.
    let all = findings(&report);
    assert_eq!(all.len(), 1, "{report:#}");
    assert_eq!(all[0]["code"], "credentials_rejected");
    assert_eq!(all[0]["blocking"], true);
    assert!(sim.stats().token_requests <= 1, "{:?}", sim.stats());
    assert_no_secrets(&out, wrong);
}

#[tokio::test]
async fn users_without_the_required_identifier_and_shared_values_are_reported() {
    let h = Harness::with(
        SimConfig::new(7, Counts::tiny()),
        None,
        "required_identifier = \"LDAP\"\n",
    )
    .await;
    let (twins, active) = h.sim.with_data(|ds| {
        let mut twins = Vec::new();
        for u in ds
            .users
            .iter_mut()
            .filter(|u| u.status == oneroster_sim::Status::Active)
            .take(3)
        {
            u.user_ids.push(oneroster_sim::UserId {
                // The type is compared case-insensitively.
                id_type: if twins.is_empty() { "ldap" } else { "LDAP" }.into(),
                identifier: if twins.len() < 2 {
                    "shared@lakeview".into()
                } else {
                    "own@lakeview".into()
                },
            });
            twins.push(u.sourced_id.clone());
        }
        twins.truncate(2);
        twins.sort();
        let n = ds
            .users
            .iter()
            .filter(|u| u.status == oneroster_sim::Status::Active)
            .count();
        (twins, n)
    });
    let out = audit(&h.config, "json").await;
    let report = json_report(&out);
    let missing = find(&report, "required_identifier_missing");
    assert_eq!(missing.len(), 1, "{report:#}");
    assert_eq!(missing[0]["count"], active as u64 - 3);
    assert_eq!(missing[0]["severity"], "warning");
    assert!(missing[0]["message"].as_str().unwrap().contains("LDAP"));
    let shared = find(&report, "required_identifier_duplicate");
    assert_eq!(shared.len(), 1, "{report:#}");
    assert_eq!(shared[0]["count"], 2);
    assert_eq!(shared[0]["samples"], json!(twins));
    // The identifiers themselves are never in the report.
    assert!(!output_text(&out).contains("shared@lakeview"));

    // Without the key, neither is reported.
    let plain = Harness::new(Counts::tiny()).await;
    let report = json_report(&audit(&plain.config, "json").await);
    assert!(find(&report, "required_identifier_missing").is_empty());
}
