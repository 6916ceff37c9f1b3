//! End-to-end sync: the simulator over real HTTP, a real PostgreSQL, the roster store compared
//! row by row with what the contract says it must hold.

use std::collections::{BTreeMap, BTreeSet};

use oneroster_sim::{Counts, Dataset, Faults, Periods, Scenario, SimConfig, Status, Tier};
use oneroster_sync::config::Settings;
use oneroster_sync::domain::{Code, Entity, Severity};
use oneroster_sync::sync::{Outcome, RunOptions, RunReport, run_once};
use serde_json::{Value, json};

use crate::support::{
    DISTRICT, Harness, TestDb, Wire, district_toml, output_text, run_binary, set_role, write_config,
};

// ---------------------------------------------------------------------------------------------
// What the store must hold, computed from the simulator's data by the contract's rules alone.

/// table -> sourced_id -> row (stored columns but district_id, updated_at, deleted_at)
pub type StoreRows = BTreeMap<&'static str, BTreeMap<String, Value>>;

fn opt(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { json!(s) }
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Active => "active",
        _ => "deleted",
    }
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> Value {
    json!(t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

fn date(d: Option<chrono::NaiveDate>) -> Value {
    d.map(|d| json!(d.to_string())).unwrap_or(Value::Null)
}

/// A set-like list as the contract stores it: trimmed, sorted, without duplicates or empties.
fn set<S: AsRef<str>>(v: &[S]) -> Value {
    let items: BTreeSet<String> = v
        .iter()
        .map(|s| s.as_ref().trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    json!(items.into_iter().collect::<Vec<_>>())
}

/// A vocabulary value as the contract stores it: the vocabulary's spelling when it matches
/// case-insensitively, else as sent (trimmed); `""` is NULL.
fn vocab(value: &str, words: &[&str]) -> Value {
    let value = value.trim();
    match words.iter().find(|w| w.eq_ignore_ascii_case(value)) {
        Some(w) => json!(w),
        None => opt(value),
    }
}

const ROLES: &[&str] = &[
    "administrator",
    "aide",
    "guardian",
    "parent",
    "proctor",
    "relative",
    "student",
    "teacher",
    "counselor",
    "districtAdministrator",
    "principal",
    "siteAdministrator",
    "systemAdministrator",
];
const ORG_TYPES: &[&str] = &[
    "department",
    "district",
    "local",
    "national",
    "school",
    "state",
];
const SESSION_TYPES: &[&str] = &["gradingPeriod", "schoolYear", "semester", "term"];
const CLASS_TYPES: &[&str] = &["homeroom", "scheduled"];

/// A roles[] entry as the wire sends it: org, role, role type, begin and end date.
type SentRole = (String, String, String, Value, Value);

/// A role as stored: the vocabulary's spelling, or an `ext:` value as sent; None for a value
/// outside both (the roles[] entry is left out).
fn role_word(value: &str) -> Option<String> {
    let value = value.trim();
    if let Some(w) = ROLES.iter().find(|w| w.eq_ignore_ascii_case(value)) {
        return Some((*w).to_owned());
    }
    (value.len() > 4 && value.as_bytes()[..4].eq_ignore_ascii_case(b"ext:"))
        .then(|| value.to_owned())
}

fn gender(sex: &str) -> Value {
    match sex.trim().to_lowercase().as_str() {
        "male" | "m" => json!("male"),
        "female" | "f" => json!("female"),
        "other" | "x" => json!("other"),
        "unspecified" => json!("unspecified"),
        _ => Value::Null,
    }
}

/// The store after syncing `ds`, given what it held before (`prev`, possibly empty): records
/// absent from `ds` keep their row, deleted; enrollments follow their user and class.
pub fn expected(ds: &Dataset, prev: &StoreRows) -> StoreRows {
    expected_on(ds, prev, crate::support::wire())
}

/// [`expected`] for what one wire sends.
pub fn expected_on(ds: &Dataset, prev: &StoreRows, wire: Wire) -> StoreRows {
    let mut out = StoreRows::new();
    let orgs = ds.orgs.iter().map(|o| {
        (o.sourced_id.clone(), json!({
            "sourced_id": o.sourced_id, "status": status(o.status), "name": opt(&o.name), "type": vocab(&o.org_type, ORG_TYPES),
            "identifier": opt(&o.identifier), "parent_sourced_id": o.parent.as_deref().map(opt).unwrap_or(Value::Null),
            "source_modified_at": ts(o.date_last_modified),
        }))
    });
    out.insert("orgs", orgs.collect());
    let sessions = ds.academic_sessions.iter().map(|a| {
        (a.sourced_id.clone(), json!({
            "sourced_id": a.sourced_id, "status": status(a.status), "title": opt(&a.title), "type": vocab(&a.session_type, SESSION_TYPES),
            "start_date": date(a.start_date), "end_date": date(a.end_date),
            "parent_sourced_id": a.parent.as_deref().map(opt).unwrap_or(Value::Null), "school_year": opt(&a.school_year),
            "source_modified_at": ts(a.date_last_modified),
        }))
    });
    out.insert("academic_sessions", sessions.collect());
    let courses = ds.courses.iter().map(|c| {
        (
            c.sourced_id.clone(),
            json!({
                "sourced_id": c.sourced_id, "status": status(c.status), "title": opt(&c.title),
                "course_code": opt(&c.course_code), "org_sourced_id": opt(&c.org),
                "source_modified_at": ts(c.date_last_modified),
            }),
        )
    });
    out.insert("courses", courses.collect());
    let classes = ds.classes.iter().map(|c| {
        let periods: Vec<String> = match &c.periods {
            Periods::List(v) => v.clone(),
            Periods::Text(s) => s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
        };
        (c.sourced_id.clone(), json!({
            "sourced_id": c.sourced_id, "status": status(c.status), "title": opt(&c.title),
            "class_code": opt(&c.class_code), "class_type": vocab(&c.class_type, CLASS_TYPES),
            "school_sourced_id": opt(&c.school), "course_sourced_id": opt(&c.course),
            "term_sourced_ids": set(&c.terms), "grades": set(&c.grades), "subjects": set(&c.subjects),
            "periods": set(&periods), "source_modified_at": ts(c.date_last_modified),
        }))
    });
    out.insert("classes", classes.collect());
    let users = ds.users.iter().map(|u| {
        let demo = ds.demographics_of(&u.sourced_id).filter(|d| d.status == Status::Active);
        let (g, h, r) = match demo {
            None => (Value::Null, Value::Null, Value::Null),
            Some(d) => {
                let mut races = Vec::new();
                for (flag, name) in [
                    (d.american_indian_or_alaska_native, "american_indian_or_alaska_native"),
                    (d.asian, "asian"),
                    (d.black_or_african_american, "black_or_african_american"),
                    (d.native_hawaiian_or_other_pacific_islander, "native_hawaiian_or_other_pacific_islander"),
                    (d.white, "white"),
                ] {
                    if flag {
                        races.push(name);
                    }
                }
                races.sort();
                (gender(&d.sex), json!(d.hispanic_or_latino_ethnicity), json!(races))
            }
        };
        let v1p2 = wire == Wire::V1p2;
        // The roles[] the wire carries (the 1.1 wire only when asked to).
        let sent_roles: Option<Vec<SentRole>> = (v1p2 || wire == Wire::V1p1Roles).then(|| {
            if u.roles.is_empty() {
                let derived = u.orgs.first().map(|org| (org.clone(), oneroster_sim::v1p2_role(&u.role).to_owned(), "primary".to_owned(), Value::Null, Value::Null));
                derived.into_iter().collect()
            } else {
                u.roles.iter().map(|r| (r.org.clone(), r.role.to_string(), r.role_type.to_string(), date(r.begin_date), date(r.end_date))).collect()
            }
        });
        let role = match (v1p2, &sent_roles) {
            (true, Some(roles)) => {
                let primary = roles.iter().find(|r| r.2 == "primary").or(roles.first());
                primary.map(|r| vocab(&r.1, ROLES)).unwrap_or(Value::Null)
            }
            _ => vocab(&u.role, ROLES),
        };
        // One row per (org, role): the primary one of a pair, the vocabulary's spelling.
        let mut role_rows: BTreeMap<(String, String), Value> = BTreeMap::new();
        match &sent_roles {
            None => {
                for org in set(&u.orgs).as_array().unwrap() {
                    let org = org.as_str().unwrap().to_owned();
                    role_rows.insert((org.clone(), role.as_str().unwrap_or_default().to_owned()),
                        json!([org, role, "primary", null, null]));
                }
            }
            Some(roles) => {
                for (org, r, kind, begin, end) in roles {
                    let Some(r) = role_word(r) else { continue };
                    let kind = if kind.eq_ignore_ascii_case("primary") { "primary" } else { "secondary" };
                    let key = (org.clone(), r.clone());
                    if kind == "primary" || !role_rows.contains_key(&key) {
                        role_rows.insert(key, json!([org, r, kind, begin, end]));
                    }
                }
            }
        }
        let mut orgs: Vec<String> = if v1p2 { Vec::new() } else { u.orgs.clone() };
        orgs.extend(role_rows.keys().map(|(org, _)| org.clone()));
        if v1p2 {
            orgs.extend(u.primary_org.clone());
        }
        let orgs = set(&orgs);
        let primary_org = match (&u.primary_org, v1p2, orgs.as_array().unwrap().as_slice()) {
            (Some(p), true, _) => json!(p),
            (_, _, [only]) => only.clone(),
            _ => Value::Null,
        };
        let ids: BTreeSet<(String, String)> = u.user_ids.iter()
            .filter(|i| !i.identifier.trim().is_empty())
            .map(|i| (i.id_type.trim().to_owned(), i.identifier.trim().to_owned()))
            .collect();
        let names = |s: &str| if v1p2 { opt(s) } else { Value::Null };
        (u.sourced_id.clone(), json!({
            "sourced_id": u.sourced_id, "status": status(u.status), "role": role,
            "username": opt(&u.username), "email": opt(&u.email), "given_name": opt(&u.given_name),
            "family_name": opt(&u.family_name), "middle_name": opt(&u.middle_name), "identifier": opt(&u.identifier),
            "enabled": u.enabled_user, "grades": set(&u.grades), "org_sourced_ids": orgs,
            "gender": g, "hispanic_or_latino": h, "races": r, "source_modified_at": ts(u.date_last_modified),
            "preferred_first_name": names(&u.preferred_first_name), "preferred_middle_name": names(&u.preferred_middle_name),
            "preferred_last_name": names(&u.preferred_last_name), "pronouns": names(&u.pronouns),
            "primary_org_sourced_id": primary_org,
            "roles": role_rows.into_values().collect::<Vec<_>>(),
            "ids": ids.into_iter().map(|(t, i)| json!([t, i])).collect::<Vec<_>>(),
        }))
    });
    out.insert("users", users.collect());

    // Records gone from the source keep their previous row, deleted.
    for (table, rows) in prev {
        let now = out.entry(table).or_default();
        for (id, row) in rows {
            if !now.contains_key(id) && *table != "enrollments" {
                let mut row = row.clone();
                row["status"] = json!("deleted");
                now.insert(id.clone(), row);
            }
        }
    }
    let active = |table: &str, id: &str| {
        out.get(table)
            .and_then(|t| t.get(id))
            .is_some_and(|r| r["status"] == "active")
    };
    let known_users: BTreeSet<&str> = ds.users.iter().map(|u| u.sourced_id.as_str()).collect();
    let known_classes: BTreeSet<&str> = ds.classes.iter().map(|c| c.sourced_id.as_str()).collect();
    let mut enrollments = BTreeMap::new();
    for e in &ds.enrollments {
        let row = if known_users.contains(e.user.as_str())
            && known_classes.contains(e.class.as_str())
        {
            let st = if e.status == Status::Active
                && active("users", &e.user)
                && active("classes", &e.class)
            {
                "active"
            } else {
                "deleted"
            };
            json!({
                "sourced_id": e.sourced_id, "status": st, "user_sourced_id": e.user, "class_sourced_id": e.class,
                "school_sourced_id": opt(&e.school), "role": vocab(&e.role, ROLES), "is_primary": e.primary,
                "begin_date": date(e.begin_date), "end_date": date(e.end_date),
                "source_modified_at": ts(e.date_last_modified),
            })
        } else {
            // Skipped as a dangling reference: the stored row (if any) stays, cascaded.
            match prev.get("enrollments").and_then(|t| t.get(&e.sourced_id)) {
                Some(row) => row.clone(),
                None => continue,
            }
        };
        enrollments.insert(e.sourced_id.clone(), row);
    }
    if let Some(rows) = prev.get("enrollments") {
        for (id, row) in rows {
            enrollments.entry(id.clone()).or_insert_with(|| {
                let mut row = row.clone();
                row["status"] = json!("deleted");
                row
            });
        }
    }
    for row in enrollments.values_mut() {
        let user = row["user_sourced_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let class = row["class_sourced_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !(active("users", &user) && active("classes", &class)) {
            row["status"] = json!("deleted");
        }
    }
    out.insert("enrollments", enrollments);
    out
}

pub async fn store_rows(db: &TestDb, district: &str) -> StoreRows {
    let mut conn = db.connect().await;
    sqlx::query("SET TIME ZONE 'UTC'")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut out = StoreRows::new();
    for entity in Entity::ALL {
        let table = entity.as_str();
        // A user's roles and identifiers as roster.user_roles and roster.user_identifiers
        // hold them (the arrays on roster.users are their stored form).
        let (dropped, derived) = if entity == Entity::Users {
            ("- 'role_assignments' - 'identifiers'", "|| jsonb_build_object(
                'roles', (SELECT coalesce(jsonb_agg(jsonb_build_array(org_sourced_id, role, role_type, begin_date, end_date)
                                  ORDER BY org_sourced_id, role), '[]')
                          FROM roster.user_roles r WHERE r.district_id = t.district_id AND r.user_sourced_id = t.sourced_id),
                'ids', (SELECT coalesce(jsonb_agg(jsonb_build_array(type, identifier) ORDER BY type, identifier), '[]')
                        FROM roster.user_identifiers i WHERE i.district_id = t.district_id AND i.user_sourced_id = t.sourced_id))")
        } else {
            ("", "")
        };
        let rows: Vec<(String, Value, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT sourced_id, (to_jsonb(t) - 'district_id' - 'updated_at' - 'deleted_at' {dropped})
                    || jsonb_build_object('source_modified_at',
                         to_char(source_modified_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')) {derived},
                    (status = 'deleted') = (deleted_at IS NOT NULL)
             FROM roster.{table} t WHERE district_id = $1"
        )))
        .bind(district)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let mut map = BTreeMap::new();
        for (id, row, deleted_at_consistent) in rows {
            assert!(
                deleted_at_consistent,
                "{table} {id}: deleted_at does not match status"
            );
            map.insert(id, row);
        }
        out.insert(table, map);
    }
    out
}

/// Compares every row, reporting the first few differences readably.
pub fn assert_store_eq(actual: &StoreRows, expected: &StoreRows) {
    let mut problems = Vec::new();
    for (table, want) in expected {
        let got = actual.get(table).cloned().unwrap_or_default();
        for (id, row) in want {
            match got.get(id) {
                None => problems.push(format!("{table} {id}: missing")),
                Some(g) if g != row => {
                    problems.push(format!("{table} {id}:\n  got  {g}\n  want {row}"))
                }
                _ => {}
            }
        }
        for id in got.keys().filter(|id| !want.contains_key(*id)) {
            problems.push(format!("{table} {id}: unexpected row"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} differences, first ones:\n{}",
        problems.len(),
        problems
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// created / updated / deleted between two expected stores, per table.
fn expected_counts(
    before: &StoreRows,
    after: &StoreRows,
) -> BTreeMap<&'static str, (i64, i64, i64)> {
    let mut out = BTreeMap::new();
    for (table, rows) in after {
        let (mut created, mut updated, mut deleted) = (0, 0, 0);
        let old = before.get(table).cloned().unwrap_or_default();
        for (id, row) in rows {
            match old.get(id) {
                None => created += 1,
                Some(o) if o == row => {}
                Some(o) if o["status"] == "active" && row["status"] == "deleted" => deleted += 1,
                Some(_) => updated += 1,
            }
        }
        out.insert(*table, (created, updated, deleted));
    }
    out
}

fn report_counts(report: &RunReport) -> BTreeMap<&'static str, (i64, i64, i64)> {
    report
        .counts
        .iter()
        .map(|(e, c)| {
            (
                e.as_str(),
                (c.created, c.updated + c.reactivated, c.deleted),
            )
        })
        .collect()
}

async fn updated_at(db: &TestDb) -> Vec<(String, String, chrono::DateTime<chrono::Utc>)> {
    let mut conn = db.connect().await;
    let mut all = Vec::new();
    for entity in Entity::ALL {
        let table = entity.as_str();
        let rows: Vec<(String, String, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT '{table}', sourced_id, updated_at FROM roster.{table} ORDER BY sourced_id"
            )))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        all.extend(rows);
    }
    all
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn full_sync_of_the_s_district_lands_every_record() {
    let h = Harness::new(Counts::tier(Tier::S)).await;
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let ds = h.sim.snapshot();
    let want = expected(&ds, &StoreRows::new());
    assert_store_eq(&store_rows(&h.db, DISTRICT).await, &want);
    assert_eq!(report.counts[&Entity::Users].fetched, ds.users.len() as i64);
    assert_eq!(
        report.counts[&Entity::Enrollments].fetched,
        ds.enrollments.len() as i64
    );
    assert_eq!(report.counts[&Entity::Users].created, ds.users.len() as i64);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[tokio::test]
async fn churn_applies_exactly_the_expected_changes_and_an_unchanged_run_writes_nothing() {
    let counts = Counts {
        students: 400,
        teachers: 30,
        classes: 60,
        ..Counts::tiny()
    };
    let h = Harness::new(counts).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let before = expected(&h.sim.snapshot(), &StoreRows::new());

    let log = h.sim.apply(Scenario::DayOfChurn { seed: 3 });
    let users = log.of(oneroster_sim::Collection::Users);
    assert!(
        !users.created.is_empty()
            && !users.purged.is_empty()
            && !users.marked_tobedeleted.is_empty()
    );
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let after = expected(&h.sim.snapshot(), &before);
    assert_store_eq(&store_rows(&h.db, DISTRICT).await, &after);
    assert_eq!(report_counts(&report), expected_counts(&before, &after));
    let c = report.counts[&Entity::Users];
    assert_eq!(c.created, users.created.len() as i64);
    assert_eq!(
        c.deleted,
        (users.purged.len() + users.marked_tobedeleted.len()) as i64
    );

    // A third run over unchanged data writes nothing.
    let stamps = updated_at(&h.db).await;
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::NothingToDo, "{report:?}");
    assert_eq!(report.changes(), 0);
    assert_eq!(updated_at(&h.db).await, stamps);
}

#[tokio::test]
async fn a_change_only_in_non_imported_demographics_is_no_change() {
    let h = Harness::new(Counts::tiny()).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let stamps = updated_at(&h.db).await;
    h.sim.with_data(|ds| {
        let when = ds.next_timestamp();
        for d in ds.demographics.iter_mut().take(10) {
            d.city_of_birth = "Elsewhere".into();
            d.birth_date = chrono::NaiveDate::from_ymd_opt(2001, 2, 3);
            d.metadata.insert("ext_504".into(), json!("true"));
            d.date_last_modified = when;
        }
    });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::NothingToDo, "{report:?}");
    assert_eq!(updated_at(&h.db).await, stamps);
}

#[tokio::test]
async fn dry_run_reports_changes_and_writes_only_history() {
    let h = Harness::new(Counts::tiny()).await;
    let before = h.db.dump_schemas(&["roster"]);
    let report = h
        .sync_with(RunOptions {
            dry_run: true,
            ..RunOptions::default()
        })
        .await;
    assert_eq!(report.outcome, Outcome::DryRun);
    assert!(report.counts[&Entity::Users].created > 0);
    assert_eq!(h.db.dump_schemas(&["roster"]), before);
    let mut conn = h.db.connect().await;
    let mirrored: i64 = sqlx::query_scalar("SELECT count(*) FROM sync.mirror_users")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mirrored, 0);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM sync.runs WHERE outcome = 'dry_run'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(runs, 1);
}

#[tokio::test]
async fn bad_records_are_skipped_by_id_and_the_rest_lands() {
    let h = Harness::new(Counts::tiny()).await;
    let (bad_role, no_status, orphan) = h.sim.with_data(|ds| {
        let bad_role = ds.users[0].sourced_id.clone();
        set_role(&mut ds.users[0], "wizard");
        // A missing required field: users cannot be used without a role.
        let no_status = ds.users[1].sourced_id.clone();
        set_role(&mut ds.users[1], "");
        let mut orphan = ds.enrollments[0].clone();
        orphan.sourced_id = "zz-orphan-enrollment".into();
        orphan.user = "no-such-user".into();
        ds.enrollments.push(orphan);
        // The same sourcedId twice in one pull: the first copy is kept, the second reported.
        let mut twin = ds.users[5].clone();
        twin.given_name = "Twin".into();
        ds.users.push(twin);
        (bad_role, no_status, "zz-orphan-enrollment".to_string())
    });
    let out = run_binary(&h.config, &["sync", "--district", DISTRICT], &[]).await;
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    for id in [&bad_role, &no_status, &orphan] {
        assert!(
            text.contains(id.as_str()),
            "skipped id {id} not named in the output:\n{text}"
        );
    }
    // Logs: JSON lines on stderr; every line of the run names the district and run; one
    // summary line.
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let skipped_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "record skipped")
        .collect();
    assert_eq!(skipped_lines.len(), 4, "{text}");
    assert!(
        skipped_lines
            .iter()
            .any(|l| l["code"] == "duplicate_sourced_id"),
        "{text}"
    );
    let summaries: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "run summary")
        .collect();
    assert_eq!(summaries.len(), 1, "{text}");
    let run_id = summaries[0]["run_id"]
        .as_str()
        .expect("run_id on the summary line");
    for line in lines.iter().filter(|l| l.get("run_id").is_some()) {
        assert_eq!(line["district"], DISTRICT, "{line}");
        assert_eq!(line["run_id"], run_id, "{line}");
    }
    assert!(skipped_lines.iter().all(|l| l["run_id"] == run_id));
    assert_eq!(summaries[0]["outcome"], "applied");
    assert_eq!(summaries[0]["users_skipped"], 3);
    assert_eq!(summaries[0]["enrollments_skipped"], 1);
    assert!(summaries[0]["duration_ms"].is_u64());
    let rows = store_rows(&h.db, DISTRICT).await;
    assert!(!rows["users"].contains_key(&bad_role));
    assert!(!rows["enrollments"].contains_key(&orphan));
    let ds = h.sim.snapshot();
    let valid_users = ds
        .users
        .iter()
        .filter(|u| u.sourced_id != bad_role && u.sourced_id != no_status)
        .count();
    // The twin is stored once.
    assert_eq!(rows["users"].len(), valid_users - 1);
}

#[tokio::test]
async fn an_outage_or_a_failing_page_leaves_the_store_untouched() {
    let h = Harness::new(Counts::tiny()).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let before = h.db.dump_schemas(&["roster"]);
    let mirror_before = h.db.dump_tables("sync.mirror_*");

    h.sim.apply(Scenario::Outage);
    let out = run_binary(&h.config, &["sync", "--district", DISTRICT], &[]).await;
    assert!(
        !out.status.success(),
        "an empty pull must fail the run:\n{}",
        output_text(&out)
    );
    assert!(
        output_text(&out).contains("came back empty"),
        "{}",
        output_text(&out)
    );
    assert_eq!(h.db.dump_schemas(&["roster"]), before);
    assert_eq!(h.db.dump_tables("sync.mirror_*"), mirror_before);
    h.sim.apply(Scenario::Restore);

    // A change upstream that must not land, and a page that keeps failing.
    h.sim
        .with_data(|ds| ds.users[0].given_name = "Changed".into());
    h.sim.set_faults(Faults {
        fail_path: Some(("enrollments".into(), u32::MAX)),
        ..Faults::default()
    });
    let out = run_binary(&h.config, &["sync", "--district", DISTRICT], &[]).await;
    assert!(!out.status.success(), "{}", output_text(&out));
    assert_eq!(h.db.dump_schemas(&["roster"]), before);
    assert_eq!(h.db.dump_tables("sync.mirror_*"), mirror_before);

    let mut conn = h.db.connect().await;
    let failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sync.runs WHERE outcome = 'failed' AND error IS NOT NULL",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(failed, 2);
}

#[tokio::test]
async fn canaries_in_demographics_and_secrets_reach_neither_database_nor_logs() {
    const BIRTH_CITY: &str = "Canarytown-7f3a";
    const EXTENSION: &str = "canary-ext-91c2";
    const SECRET: &str = "canary-secret-5d8e";
    let mut sim = SimConfig::new(11, Counts::tiny());
    sim.credentials.client_secret = SECRET.into();
    let h = Harness::with(sim, None, "").await;
    h.sim.with_data(|ds| {
        for d in ds.demographics.iter_mut() {
            d.city_of_birth = BIRTH_CITY.into();
            d.birth_date = chrono::NaiveDate::from_ymd_opt(1999, 12, 31);
            d.state_of_birth_abbreviation = "ZQ".into();
            d.metadata
                .insert("ext_economically_disadvantaged".into(), json!(EXTENSION));
            d.metadata.insert("ext_504".into(), json!(EXTENSION));
            d.extra
                .insert("ext_special_education".into(), json!(EXTENSION));
        }
    });
    let out = run_binary(
        &h.config,
        &["sync", "--district", DISTRICT],
        &[("RUST_LOG", "trace")],
    )
    .await;
    let logs = output_text(&out);
    assert!(out.status.success(), "{logs}");
    let dump = h.db.dump();
    for canary in [BIRTH_CITY, EXTENSION, SECRET, "1999-12-31"] {
        assert!(!dump.contains(canary), "{canary} reached the database");
        assert!(!logs.contains(canary), "{canary} reached the logs");
    }
    // The sync did land users with their gender: the canary run was a real one.
    assert!(dump.contains("roster.users"));
    let rows = store_rows(&h.db, DISTRICT).await;
    assert!(rows["users"].values().any(|u| u["gender"] == "female"));
}

#[tokio::test]
async fn a_separate_store_converges_after_a_crash_between_the_two_databases() {
    let store = TestDb::new().await;
    let h = Harness::with(SimConfig::new(5, Counts::tiny()), Some(&store), "").await;
    assert!(h.dbs.store_is_separate);
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let first = expected(&h.sim.snapshot(), &StoreRows::new());
    assert_store_eq(&store_rows(&store, DISTRICT).await, &first);

    // Simulate a crash after the store committed run N's changes but before the mirror
    // advanced: the store is ahead (a user reactivated and one deleted that the mirror does not
    // know of) and the pending mark is still set.
    let mut conn = store.connect().await;
    let some_user = first["users"].keys().next().unwrap().clone();
    sqlx::query("UPDATE roster.users SET given_name = 'Ahead' WHERE sourced_id = $1")
        .bind(&some_user)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO roster.users (district_id, sourced_id, status, role) VALUES ($1, 'ghost-user', 'active', 'student')",
    )
    .bind(DISTRICT)
    .execute(&mut conn)
    .await
    .unwrap();
    let mut state = h.db.connect().await;
    sqlx::query(
        "UPDATE sync.districts SET pending_run_id = gen_random_uuid(), pending_since = now()",
    )
    .execute(&mut state)
    .await
    .unwrap();

    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let mut want = first.clone();
    let mut ghost = json!({
        "sourced_id": "ghost-user", "status": "deleted", "role": "student", "username": null, "email": null,
        "given_name": null, "family_name": null, "middle_name": null, "identifier": null, "enabled": null,
        "grades": [], "org_sourced_ids": [], "gender": null, "hispanic_or_latino": null, "races": null,
        "source_modified_at": null, "preferred_first_name": null, "preferred_middle_name": null,
        "preferred_last_name": null, "pronouns": null, "primary_org_sourced_id": null, "roles": [], "ids": [],
    });
    ghost["status"] = json!("deleted");
    want.get_mut("users")
        .unwrap()
        .insert("ghost-user".into(), ghost);
    assert_store_eq(&store_rows(&store, DISTRICT).await, &want);
    let pending: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT pending_run_id FROM sync.districts")
            .fetch_one(&mut state)
            .await
            .unwrap();
    assert_eq!(pending, None);
    // And from there on the mirror is trusted again: nothing to do.
    assert_eq!(h.sync().await.outcome, Outcome::NothingToDo);
}

#[tokio::test]
async fn districts_never_touch_each_others_rows() {
    // Two districts with the same generated data, hence the same sourcedIds, in one database.
    let h = Harness::new(Counts::tiny()).await;
    let other = oneroster_sim::spawn(SimConfig::new(7, Counts::tiny()))
        .await
        .unwrap();
    let config = write_config(
        h._dir.path(),
        &h.db.url,
        None,
        &format!(
            "{}\n{}",
            district_toml(&h.sim, DISTRICT, ""),
            district_toml(&other, "riverside", "")
        ),
    );
    let settings = Settings::load(&config).unwrap();
    let both = |id: &str| settings.district(id).unwrap().clone();
    assert_eq!(
        run_once(&h.dbs, &both(DISTRICT), RunOptions::default())
            .await
            .outcome,
        Outcome::Applied
    );
    assert_eq!(
        run_once(&h.dbs, &both("riverside"), RunOptions::default())
            .await
            .outcome,
        Outcome::Applied
    );
    let riverside = store_rows(&h.db, "riverside").await;

    // Lakeside loses a quarter of its users (held, then approved) and changes a name.
    h.sim.with_data(|ds| {
        ds.users[0].given_name = "Renamed".into();
        let n = ds.users.len() / 4;
        ds.users.truncate(ds.users.len() - n);
    });
    let report = run_once(&h.dbs, &both(DISTRICT), RunOptions::default()).await;
    assert!(
        matches!(report.outcome, Outcome::Applied | Outcome::Held),
        "{report:?}"
    );
    if report.outcome == Outcome::Held {
        oneroster_sync::history::approve(&h.dbs.state, DISTRICT, None)
            .await
            .unwrap();
        assert_eq!(
            run_once(&h.dbs, &both(DISTRICT), RunOptions::default())
                .await
                .outcome,
            Outcome::Applied
        );
    }
    assert_eq!(
        store_rows(&h.db, "riverside").await,
        riverside,
        "riverside's rows changed"
    );
    assert_eq!(
        run_once(&h.dbs, &both("riverside"), RunOptions::default())
            .await
            .outcome,
        Outcome::NothingToDo,
        "riverside's mirror was disturbed"
    );
    let lakeside = store_rows(&h.db, DISTRICT).await;
    assert!(lakeside["users"].values().any(|u| u["status"] == "deleted"));
}

#[tokio::test]
async fn a_server_refusing_field_selection_still_yields_only_gender_and_ethnicity() {
    const BIRTH_CITY: &str = "Canaryville-0b1e";
    let h = Harness::new(Counts::tiny()).await;
    h.sim.with_data(|ds| {
        for d in ds.demographics.iter_mut() {
            d.city_of_birth = BIRTH_CITY.into();
        }
    });
    h.sim.set_faults(Faults {
        reject_fields: true,
        ..Faults::default()
    });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert_store_eq(
        &store_rows(&h.db, DISTRICT).await,
        &expected(&h.sim.snapshot(), &StoreRows::new()),
    );
    assert!(!h.db.dump().contains(BIRTH_CITY));
    // The demographics were fetched twice: refused with `fields`, then served without.
    assert!(h.sim.stats().per_status.get(&400).copied().unwrap_or(0) >= 1);
}

#[tokio::test]
async fn invalid_records_keep_their_row_deleted_ones_come_back_and_enrollments_follow() {
    let h = Harness::new(Counts::tiny()).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let first = store_rows(&h.db, DISTRICT).await;
    let ds = h.sim.snapshot();
    // A student who is active, with active enrollments.
    let student = ds
        .users
        .iter()
        .find(|u| {
            u.role == "student"
                && u.status == Status::Active
                && first["enrollments"].values().any(|e| {
                    e["user_sourced_id"] == u.sourced_id.as_str() && e["status"] == "active"
                })
        })
        .unwrap()
        .clone();
    let their_enrollments = |rows: &StoreRows| -> Vec<Value> {
        rows["enrollments"]
            .values()
            .filter(|e| e["user_sourced_id"] == student.sourced_id.as_str())
            .cloned()
            .collect()
    };

    // 1. Invalid in this pull (unknown role): the stored row and its enrollments stay as they were.
    h.sim.with_data(|ds| {
        let when = ds.next_timestamp();
        let u = ds
            .users
            .iter_mut()
            .find(|u| u.sourced_id == student.sourced_id)
            .unwrap();
        set_role(u, "wizard");
        u.date_last_modified = when;
    });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::NothingToDo, "{report:?}");
    let skipped = report.findings.entries();
    assert!(
        skipped.iter().any(|f| f.code == Code::UserRoleUnknown
            && f.severity == Severity::Error
            && f.samples.contains(&student.sourced_id)),
        "{skipped:?}"
    );
    let rows = store_rows(&h.db, DISTRICT).await;
    assert_eq!(
        rows["users"][&student.sourced_id],
        first["users"][&student.sourced_id]
    );
    assert_eq!(their_enrollments(&rows), their_enrollments(&first));

    // 2. Gone from the source: deleted, and the cascade deletes their enrollments.
    h.sim
        .with_data(|ds| ds.users.retain(|u| u.sourced_id != student.sourced_id));
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let rows = store_rows(&h.db, DISTRICT).await;
    assert_eq!(rows["users"][&student.sourced_id]["status"], "deleted");
    let enrollments = their_enrollments(&rows);
    assert!(
        !enrollments.is_empty() && enrollments.iter().all(|e| e["status"] == "deleted"),
        "{enrollments:?}"
    );

    // 3. Back again, valid: reactivated (deleted_at cleared) and so are the enrollments.
    h.sim.with_data(|ds| ds.users.push(student.clone()));
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert!(report.counts[&Entity::Users].reactivated >= 1);
    let rows = store_rows(&h.db, DISTRICT).await;
    assert_eq!(
        rows["users"][&student.sourced_id],
        first["users"][&student.sourced_id]
    );
    assert_eq!(their_enrollments(&rows), their_enrollments(&first));
    let mut conn = h.db.connect().await;
    let deleted_at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT deleted_at FROM roster.users WHERE district_id = $1 AND sourced_id = $2",
    )
    .bind(DISTRICT)
    .bind(&student.sourced_id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(deleted_at, None);
}

#[tokio::test]
async fn a_first_load_goes_straight_into_the_store_and_falls_back_when_the_store_has_the_rows() {
    let h = Harness::new(Counts::tiny()).await;
    let first = h.sync().await;
    assert_eq!(first.outcome, Outcome::Applied, "{first:?}");
    let want = expected(&h.sim.snapshot(), &StoreRows::new());
    assert_store_eq(&store_rows(&h.db, DISTRICT).await, &want);
    // Every new row is journaled, and the mirror knows every row with its hash: the next run
    // finds nothing to do.
    let total: i64 = first.counts.values().map(|c| c.created).sum();
    assert_eq!(first.journaled as i64, total);
    let unhashed: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM sync.mirror_users WHERE hash IS NULL)
              + (SELECT count(*) FROM sync.mirror_enrollments WHERE hash IS NULL OR user_sourced_id = '')",
    )
    .fetch_one(&h.dbs.state)
    .await
    .unwrap();
    assert_eq!(unhashed, 0);
    let full = RunOptions {
        full: true,
        ..RunOptions::default()
    };
    assert_eq!(h.sync_with(full).await.outcome, Outcome::NothingToDo);

    // The mirror lost everything, the store kept it: a "first load" again, whose rows the
    // store already holds. The COPY gives way to the upsert, which writes no row.
    let stamps = updated_at(&h.db).await;
    let mut conn = h.db.connect().await;
    for entity in Entity::ALL {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM sync.mirror_{}",
            entity.as_str()
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let again = h.sync_with(full).await;
    assert_eq!(again.outcome, Outcome::Applied, "{again:?}");
    assert_eq!(
        again.counts[&Entity::Users].created,
        first.counts[&Entity::Users].created
    );
    assert_store_eq(&store_rows(&h.db, DISTRICT).await, &want);
    assert_eq!(
        updated_at(&h.db).await,
        stamps,
        "no store row was rewritten"
    );
    assert_eq!(h.sync_with(full).await.outcome, Outcome::NothingToDo);
}
