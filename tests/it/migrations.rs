//! Migrations on an empty database, on a second run, and in the separate-store layout.

use oneroster_sync::config::Settings;
use oneroster_sync::db::Databases;

use crate::support::{TestDb, write_config};

/// CONTRACT §5: every table and the columns it must have at least.
const CONTRACT_COLUMNS: &[(&str, &[&str])] = &[
    ("orgs", &["name", "type", "identifier", "parent_sourced_id"]),
    (
        "academic_sessions",
        &[
            "title",
            "type",
            "start_date",
            "end_date",
            "parent_sourced_id",
            "school_year",
        ],
    ),
    ("courses", &["title", "course_code", "org_sourced_id"]),
    (
        "users",
        &[
            "role",
            "username",
            "email",
            "given_name",
            "family_name",
            "middle_name",
            "identifier",
            "enabled",
            "grades",
            "org_sourced_ids",
            "gender",
            "hispanic_or_latino",
            "races",
        ],
    ),
    (
        "classes",
        &[
            "title",
            "class_code",
            "class_type",
            "school_sourced_id",
            "course_sourced_id",
            "term_sourced_ids",
            "grades",
            "subjects",
            "periods",
        ],
    ),
    (
        "enrollments",
        &[
            "user_sourced_id",
            "class_sourced_id",
            "school_sourced_id",
            "role",
            "is_primary",
            "begin_date",
            "end_date",
        ],
    ),
];
const COMMON_COLUMNS: &[&str] = &[
    "district_id",
    "sourced_id",
    "status",
    "source_modified_at",
    "updated_at",
    "deleted_at",
];

async fn columns_of(db: &TestDb, schema: &str, table: &str) -> Vec<String> {
    let mut conn = db.connect().await;
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

async fn primary_key_of(db: &TestDb, table: &str) -> Vec<String> {
    let mut conn = db.connect().await;
    sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
         WHERE i.indrelid = ('roster.' || $1)::regclass AND i.indisprimary ORDER BY a.attnum",
    )
    .bind(table)
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn migrations_create_the_contract_schema_and_run_twice() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::load(&write_config(dir.path(), &db.url, None, "")).unwrap();
    let dbs = Databases::connect(&settings).await.unwrap();
    dbs.migrate().await.unwrap();
    let first = db.dump();
    dbs.migrate().await.expect("second migrate is a no-op");
    assert_eq!(first, db.dump(), "a second migrate changed the database");

    for (table, specific) in CONTRACT_COLUMNS {
        let cols = columns_of(&db, "roster", table).await;
        for col in COMMON_COLUMNS.iter().chain(specific.iter()) {
            assert!(
                cols.iter().any(|c| c == col),
                "roster.{table} lacks column {col}"
            );
        }
        assert_eq!(
            primary_key_of(&db, table).await,
            vec!["district_id", "sourced_id"],
            "roster.{table} key"
        );
    }
    for table in [
        "runs",
        "districts",
        "held_change_sets",
        "mirror_users",
        "mirror_enrollments",
    ] {
        assert!(
            !columns_of(&db, "sync", table).await.is_empty(),
            "sync.{table} missing"
        );
    }
}

#[tokio::test]
async fn separate_store_gets_only_the_roster_schema() {
    let state = TestDb::new().await;
    let store = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let settings =
        Settings::load(&write_config(dir.path(), &state.url, Some(&store.url), "")).unwrap();
    let dbs = Databases::connect(&settings).await.unwrap();
    assert!(dbs.store_is_separate);
    dbs.migrate().await.unwrap();
    dbs.migrate().await.unwrap();
    assert!(!columns_of(&store, "roster", "users").await.is_empty());
    assert!(
        columns_of(&store, "sync", "runs").await.is_empty(),
        "state tables leaked into the store database"
    );
    assert!(!columns_of(&state, "sync", "runs").await.is_empty());
    assert!(
        columns_of(&state, "roster", "users").await.is_empty(),
        "store tables leaked into the state database"
    );
}
