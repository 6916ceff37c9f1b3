//! OneRoster 1.2 beside 1.1: one store either way, a role per org in `roster.user_roles`,
//! `userIds` in `roster.user_identifiers`, and `oneroster_version = "auto"`. (The whole
//! end-to-end suite also runs on the 1.2 wire: `TEST_ONEROSTER_VERSION=1.2`, see
//! `scripts/test`.)

use std::collections::BTreeMap;

use oneroster_sim::{Counts, Faults, SimConfig, SimHandle};
use oneroster_sync::domain::Entity;
use oneroster_sync::sync::{Outcome, RunOptions};

use crate::support::{DISTRICT, Harness, TestDb, Wire, district_toml_at, root_toml};
use crate::sync::{assert_store_eq, expected_on, store_rows};

async fn harness(wire: Wire, root: impl Fn(&SimHandle) -> String) -> Harness {
    let mut sim = SimConfig::new(7, Counts::tiny());
    sim.v1p1_roles = wire == Wire::V1p1Roles;
    Harness::build(sim, None, move |s| {
        district_toml_at(s, DISTRICT, &root(s), "")
    })
    .await
}

type RoleRow = (String, String, String, Option<chrono::NaiveDate>);

async fn roles_of(db: &TestDb, user: &str) -> Vec<RoleRow> {
    let mut conn = db.connect().await;
    sqlx::query_as(
        "SELECT org_sourced_id, role, role_type, begin_date FROM roster.user_roles
         WHERE district_id = $1 AND user_sourced_id = $2 ORDER BY role_type, org_sourced_id",
    )
    .bind(DISTRICT)
    .bind(user)
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// The district's first teacher teaches at one school and runs the next one for the year.
async fn a_teacher_and_administrator_is_one_user_with_two_role_rows(wire: Wire) {
    let h = harness(wire, |s| root_toml(s, wire)).await;
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let ds = h.sim.with_data(|ds| ds.clone());
    let teacher = ds.users.iter().find(|u| u.identifier == "T000000").unwrap();
    let (school, other) = (&teacher.roles[0].org, &teacher.roles[1].org);
    assert_ne!(school, other);

    let mut conn = h.db.connect().await;
    let (rows, role, orgs): (i64, String, Vec<String>) = sqlx::query_as(
        "SELECT count(*) OVER (), role, org_sourced_ids FROM roster.users
         WHERE district_id = $1 AND identifier = 'T000000'",
    )
    .bind(DISTRICT)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows, 1, "one user, not one per role");
    assert_eq!(role, "teacher", "the primary role");
    let mut both = vec![school.clone(), other.clone()];
    both.sort();
    assert_eq!(orgs, both);
    assert_eq!(
        roles_of(&h.db, &teacher.sourced_id).await,
        vec![
            (school.clone(), "teacher".into(), "primary".into(), None),
            (
                other.clone(),
                "siteAdministrator".into(),
                "secondary".into(),
                chrono::NaiveDate::from_ymd_opt(2026, 8, 17)
            ),
        ]
    );
    // And every other row, as the wire sent it.
    assert_store_eq(
        &store_rows(&h.db, DISTRICT).await,
        &expected_on(&ds, &BTreeMap::new(), wire),
    );
}

#[tokio::test]
async fn a_teacher_and_administrator_on_1_2_is_one_user_with_two_role_rows() {
    a_teacher_and_administrator_is_one_user_with_two_role_rows(Wire::V1p2).await;
}

#[tokio::test]
async fn a_1_1_record_carrying_roles_is_read_like_1_2() {
    a_teacher_and_administrator_is_one_user_with_two_role_rows(Wire::V1p1Roles).await;
}

#[tokio::test]
async fn user_ids_land_in_user_identifiers_follow_their_changes_and_are_indexed() {
    let h = harness(Wire::V1p2, |s| root_toml(s, Wire::V1p2)).await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let mut conn = h.db.connect().await;
    let (pairs, user) = h.sim.with_data(|ds| {
        let pairs: usize = ds.users.iter().map(|u| u.user_ids.len()).sum();
        let user = ds.users.iter().find(|u| !u.user_ids.is_empty()).unwrap();
        (pairs, user.clone())
    });
    assert!(pairs > 0);
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM roster.user_identifiers WHERE district_id = $1")
            .bind(DISTRICT)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(stored as usize, pairs);
    let old = user.user_ids[0].clone();
    assert_eq!(
        count(&mut conn, &old.id_type, old.identifier.clone()).await,
        1,
        "{old:?}"
    );

    // A new LDAP identifier replaces the old one; the next run's rows follow.
    h.sim.with_data(|ds| {
        let when = ds.next_timestamp();
        let u = ds
            .users
            .iter_mut()
            .find(|u| u.sourced_id == user.sourced_id)
            .unwrap();
        u.user_ids = vec![oneroster_sim::UserId {
            id_type: "LDAP".into(),
            identifier: "ana.lopez@lakeview".into(),
        }];
        u.date_last_modified = when;
    });
    let report = h
        .sync_with(RunOptions {
            full: true,
            ..RunOptions::default()
        })
        .await;
    assert_eq!(report.counts[&Entity::Users].updated, 1, "{report:?}");
    assert_eq!(
        count(&mut conn, &old.id_type, old.identifier.clone()).await,
        0
    );
    assert_eq!(
        count(&mut conn, "LDAP", "ana.lopez@lakeview".into()).await,
        1
    );

    // The application's sign-in lookup is an index scan.
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT user_sourced_id FROM roster.user_identifiers
         WHERE district_id = 'lakeside' AND type = 'LDAP' AND identifier = 'ana.lopez@lakeview'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        plan.iter()
            .any(|l| l.contains("user_identifiers_lookup_idx")),
        "{plan:?}"
    );
}

async fn count(conn: &mut sqlx::PgConnection, t: &str, id: String) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM roster.user_identifiers
         WHERE district_id = $1 AND type = $2 AND identifier = $3",
    )
    .bind(DISTRICT)
    .bind(t)
    .bind(id)
    .fetch_one(conn)
    .await
    .unwrap()
}

async fn stored_role(db: &TestDb, user: &str) -> String {
    let mut conn = db.connect().await;
    sqlx::query_scalar("SELECT role FROM roster.users WHERE district_id = $1 AND sourced_id = $2")
        .bind(DISTRICT)
        .bind(user)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn auto_uses_1_2_where_served_falls_back_to_1_1_and_switching_deletes_nothing() {
    // The 1.1 root configured; the server serves both.
    let h = harness(Wire::V1p2, |s| {
        format!(
            "base_url = \"{}\"\noneroster_version = \"auto\"\n",
            s.base_url()
        )
    })
    .await;
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    // adm-0 runs a school (and the district): 1.2 says which kind of administrator.
    assert_eq!(stored_role(&h.db, "adm-0").await, "siteAdministrator");
    let ds = h.sim.with_data(|ds| ds.clone());
    let on_1_2 = store_rows(&h.db, DISTRICT).await;
    assert_store_eq(&on_1_2, &expected_on(&ds, &BTreeMap::new(), Wire::V1p2));

    // The server stops serving 1.2: the next run reads 1.1 from the same host, and the same
    // users are the same rows (updated where 1.1 says less), nothing deleted.
    h.sim.set_faults(Faults {
        without_v1p2: true,
        ..Faults::default()
    });
    let report = h
        .sync_with(RunOptions {
            full: true,
            ..RunOptions::default()
        })
        .await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    for (entity, counts) in &report.counts {
        assert_eq!(counts.deleted, 0, "{entity}: {report:?}");
        assert_eq!(counts.created, 0, "{entity}: {report:?}");
    }
    assert!(report.counts[&Entity::Users].updated > 0);
    assert_eq!(stored_role(&h.db, "adm-0").await, "administrator");
    assert_store_eq(
        &store_rows(&h.db, DISTRICT).await,
        &expected_on(&ds, &on_1_2, Wire::V1p1),
    );
}

#[tokio::test]
async fn auto_from_the_1_2_root_reads_1_2() {
    let h = harness(Wire::V1p2, |s| {
        format!(
            "base_url = \"{}\"\noneroster_version = \"auto\"\n",
            s.base_url_v1p2()
        )
    })
    .await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    assert_eq!(stored_role(&h.db, "adm-0").await, "siteAdministrator");
}
