//! The roster store (`roster.*`, CONTRACT §5): the only code that reads or writes it.
//!
//! It applies a run's change set (the session's `apply_<entity>` and `del_<entity>` tables, see
//! `changeset`). Every statement is guarded so that a row is written only when something stored
//! in it changes, which also makes applying the same change set twice harmless. It also answers
//! what a run must read of the store: stored users for a delta pull, the enrollments of users
//! and classes a delta deactivates, the rows as stored for the drift check.
//!
//! # Two layouts
//!
//! When the store shares the daemon's database, the caller applies the change set and
//! advances the mirror in one transaction. When it lives in another database, no transaction
//! spans both, so a run goes:
//!
//! 1. mark the district *pending* in the state database (committed);
//! 2. copy the change set into a store session and apply it in one store transaction;
//! 3. advance the mirror and clear the mark in one state transaction.
//!
//! A crash after 2 but before 3 leaves the store ahead of the mirror. The next run sees the mark
//! and reconciles: it applies its whole snapshot (the guards write only real differences) and
//! soft-deletes whatever the store has active that the snapshot lacks ([`reconcile_absent`]),
//! then rebuilds the mirror from what it applied. A crash before 2 commits changes nothing in
//! the store, and the same reconcile is harmless.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{PgConnection, PgPool, Row};

use crate::changeset;
use crate::db::{copy_out_lines, quote_literal};
use crate::domain::{Demo, Entity, Status, User};
use crate::stored::{DEMOGRAPHIC_COLUMNS, column_list, columns, identifiers_from, roles_from};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("roster store error while {doing}: {source}")]
    Database {
        doing: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { doing, source }
}

impl From<sqlx::Error> for StoreError {
    fn from(source: sqlx::Error) -> StoreError {
        StoreError::Database {
            doing: "reading the roster store",
            source,
        }
    }
}

/// Applies `apply_*` and `del_*` of the `touched` entities (those with rows in them) to
/// `roster.*` for one district, on the caller's transaction.
pub async fn apply(
    conn: &mut PgConnection,
    district: &str,
    touched: &BTreeSet<Entity>,
) -> Result<(), StoreError> {
    for &entity in touched {
        let e = entity.as_str();
        let cols = column_list(entity, "");
        let from_apply = column_list(entity, "a.");
        let set = columns(entity)
            .iter()
            .map(|c| format!("{0} = EXCLUDED.{0}", c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let old = column_list(entity, "t.");
        let new = column_list(entity, "EXCLUDED.");
        let insert = format!(
            "INSERT INTO roster.{e} AS t (district_id, sourced_id, {cols}, updated_at, deleted_at)
             SELECT $1, a.sourced_id, {from_apply}, now(), CASE WHEN a.status = 'deleted' THEN now() END
             FROM apply_{e} a"
        );
        let upsert = format!(
            "ON CONFLICT (district_id, sourced_id) DO UPDATE
             SET {set}, updated_at = now(),
                 deleted_at = CASE WHEN EXCLUDED.status = 'deleted' THEN COALESCE(t.deleted_at, now()) END
             WHERE ({old}) IS DISTINCT FROM ({new})"
        );
        changeset::write_rows(conn, district, &insert, &upsert)
            .await
            .map_err(db("writing created and updated rows"))?;
        sqlx::query(sql!(
            "UPDATE roster.{e} t SET status = 'deleted', deleted_at = now(), updated_at = now()
             FROM del_{e} d
             WHERE t.district_id = $1 AND t.sourced_id = d.sourced_id AND t.status <> 'deleted'"
        ))
        .bind(district)
        .execute(&mut *conn)
        .await
        .map_err(db("soft-deleting rows"))?;
        if entity == Entity::Users {
            derive_user_tables(conn, district, Some("apply_users")).await?;
        }
    }
    Ok(())
}

/// `roster.user_roles` and `roster.user_identifiers` of the users in `changed` (a table with a
/// `sourced_id` column: the change set's users), or of all the district's users (`None`, after
/// a first load), derived again from their rows' `role_assignments` and `identifiers`.
/// (`OFFSET 0` keeps each element's JSON parsed once, not once per field.)
async fn derive_user_tables(
    conn: &mut PgConnection,
    district: &str,
    changed: Option<&str>,
) -> Result<(), StoreError> {
    let (source, scope, gone) = match changed {
        None => (
            "roster.users u".to_owned(),
            "WHERE u.district_id = $1",
            "DELETE FROM roster.{t} WHERE district_id = $1".to_owned(),
        ),
        Some(c) => (
            format!(
                "roster.users u JOIN {c} c ON u.district_id = $1 AND u.sourced_id = c.sourced_id"
            ),
            "",
            format!(
                "DELETE FROM roster.{{t}} r USING {c} c WHERE r.district_id = $1 AND r.user_sourced_id = c.sourced_id"
            ),
        ),
    };
    for (table, insert) in [
        (
            "user_roles",
            format!(
                "INSERT INTO roster.user_roles (district_id, user_sourced_id, org_sourced_id, role, role_type, begin_date, end_date)
                 SELECT $1, u.sourced_id, x ->> 0, x ->> 1, x ->> 2, (x ->> 3)::date, (x ->> 4)::date
                 FROM {source} CROSS JOIN LATERAL unnest(u.role_assignments) AS e(v)
                      CROSS JOIN LATERAL (SELECT e.v::jsonb AS x OFFSET 0) j {scope}
                 ON CONFLICT DO NOTHING"
            ),
        ),
        (
            "user_identifiers",
            format!(
                "INSERT INTO roster.user_identifiers (district_id, user_sourced_id, type, identifier)
                 SELECT $1, u.sourced_id, x ->> 0, x ->> 1
                 FROM {source} CROSS JOIN LATERAL unnest(u.identifiers) AS e(v)
                      CROSS JOIN LATERAL (SELECT e.v::jsonb AS x OFFSET 0) j {scope}
                 ON CONFLICT DO NOTHING"
            ),
        ),
    ] {
        for sql in [gone.replace("{t}", table), insert] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(district)
                .execute(&mut *conn)
                .await
                .map_err(db("deriving the users' roles and identifiers"))?;
        }
    }
    Ok(())
}

/// After a first load (rows copied straight into `roster.users`): the district's user roles
/// and identifiers.
pub async fn derive_all_user_tables(
    conn: &mut PgConnection,
    district: &str,
) -> Result<(), StoreError> {
    derive_user_tables(conn, district, None).await
}

/// A first load: rows new to the mirror (change-set lines, see `changeset::Line`) go straight
/// into `roster.<entity>` by COPY, inside the caller's transaction. `deleted_at` is the time
/// written for rows that arrive deleted. Returns false, having written nothing, when the store
/// holds one of them already (it drifted from the mirror): the caller applies those through
/// the change set's upsert instead.
pub async fn copy_new(
    conn: &mut PgConnection,
    district: &str,
    entity: Entity,
    lines: &[u8],
    deleted_at: &str,
) -> Result<bool, StoreError> {
    use sqlx::Executor as _;
    let mut data = Vec::with_capacity(lines.len() + lines.len() / 8);
    let mut district_field = Vec::new();
    crate::stored::copy_escaped(&mut district_field, district);
    for l in changeset::Line::each(lines) {
        data.extend_from_slice(&district_field);
        data.push(b'\t');
        data.extend_from_slice(l.row);
        data.push(b'\t');
        if l.field(1) == b"deleted" {
            data.extend_from_slice(deleted_at.as_bytes());
        } else {
            data.extend_from_slice(b"\\N");
        }
        data.push(b'\n');
    }
    if data.is_empty() {
        return Ok(true);
    }
    conn.execute("SAVEPOINT copy_new")
        .await
        .map_err(db("writing new rows"))?;
    let statement = format!(
        "COPY roster.{} (district_id, sourced_id, {}, deleted_at) FROM STDIN",
        entity.as_str(),
        column_list(entity, "")
    );
    let copied = async {
        let mut copy = conn.copy_in_raw(&statement).await?;
        copy.send(data).await?;
        copy.finish().await
    }
    .await;
    match copied {
        Ok(_) => {
            conn.execute("RELEASE SAVEPOINT copy_new")
                .await
                .map_err(db("writing new rows"))?;
            Ok(true)
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            conn.execute("ROLLBACK TO SAVEPOINT copy_new")
                .await
                .map_err(db("writing new rows"))?;
            Ok(false)
        }
        Err(e) => Err(db("writing new rows")(e)),
    }
}

/// Fills the change set's `journal_rows` with its updates and deletions (`touched` entities)
/// and what changed in each row: the names of the changed columns and, demographics excepted,
/// their old (as stored) and new values. Runs before [`apply`], on the same session.
pub async fn journal(
    conn: &mut PgConnection,
    district: &str,
    touched: &BTreeSet<Entity>,
) -> Result<(), StoreError> {
    for &entity in touched {
        let e = entity.as_str();
        let changed = |name: &str| format!("t.{name} IS DISTINCT FROM a.{name}");
        let names = columns(entity)
            .iter()
            .map(|c| format!("CASE WHEN {} THEN '{}' END", changed(c.name), c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let values = columns(entity)
            .iter()
            .filter(|c| !DEMOGRAPHIC_COLUMNS.contains(&c.name))
            .map(|c| {
                format!(
                    "'{0}', CASE WHEN {1} THEN jsonb_build_array(t.{0}, a.{0}) END",
                    c.name,
                    changed(c.name)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(sql!(
            "INSERT INTO journal_rows (entity, sourced_id, operation, columns, changes)
             SELECT '{e}', a.sourced_id,
                    CASE a.op WHEN 'update' THEN 'updated' WHEN 'delete' THEN 'deleted' ELSE 'reactivated' END,
                    array_remove(ARRAY[{names}]::text[], NULL),
                    jsonb_strip_nulls(jsonb_build_object({values}))
             FROM apply_{e} a LEFT JOIN roster.{e} t ON t.district_id = $1 AND t.sourced_id = a.sourced_id
             WHERE a.counted AND a.op <> 'create'
             UNION ALL
             SELECT '{e}', d.sourced_id, 'deleted', ARRAY['status'],
                    jsonb_build_object('status', jsonb_build_array(t.status, 'deleted'))
             FROM del_{e} d LEFT JOIN roster.{e} t ON t.district_id = $1 AND t.sourced_id = d.sourced_id"
        ))
        .bind(district)
        .execute(&mut *conn)
        .await
        .map_err(db("journaling the change set"))?;
    }
    Ok(())
}

/// Reconcile only: soft-deletes the district's active store rows that are neither in this
/// run's snapshot (`apply_*` holds all of it in reconcile mode) nor skipped as invalid, and
/// returns their ids so the mirror learns of them.
pub async fn reconcile_absent(
    conn: &mut PgConnection,
    district: &str,
) -> Result<BTreeMap<Entity, Vec<String>>, StoreError> {
    let mut gone = BTreeMap::new();
    for entity in Entity::ALL {
        let e = entity.as_str();
        let ids: Vec<String> = sqlx::query_scalar(sql!(
            "UPDATE roster.{e} t SET status = 'deleted', deleted_at = now(), updated_at = now()
             WHERE t.district_id = $1 AND t.status = 'active'
               AND NOT EXISTS (SELECT 1 FROM apply_{e} a WHERE a.sourced_id = t.sourced_id)
               AND NOT EXISTS (SELECT 1 FROM skipped k WHERE k.entity = '{e}' AND k.sourced_id = t.sourced_id)
             RETURNING t.sourced_id"
        ))
        .bind(district)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reconciling absent rows"))?;
        gone.insert(entity, ids);
    }
    Ok(gone)
}

/// Users as the store holds them, demographics included (a delta pull completes users with
/// them).
pub async fn users(store: &PgPool, district: &str, ids: &[&str]) -> Result<Vec<User>, StoreError> {
    let rows = sqlx::query(
        "SELECT sourced_id, status, role, username, email, given_name, family_name, middle_name,
                identifier, enabled, grades, org_sourced_ids, gender, hispanic_or_latino, races,
                source_modified_at, preferred_first_name, preferred_middle_name,
                preferred_last_name, pronouns, primary_org_sourced_id, role_assignments,
                identifiers
         FROM roster.users WHERE district_id = $1 AND sourced_id = ANY($2)",
    )
    .bind(district)
    .bind(ids)
    .fetch_all(store)
    .await
    .map_err(db("reading stored users for a delta pull"))?;
    rows.iter()
        .map(|r| -> Result<User, sqlx::Error> {
            let gender: Option<String> = r.try_get("gender")?;
            let races: Option<Vec<String>> = r.try_get("races")?;
            Ok(User {
                sourced_id: r.try_get("sourced_id")?,
                status: if r.try_get::<&str, _>("status")? == "active" {
                    Status::Active
                } else {
                    Status::Deleted
                },
                source_modified_at: r.try_get("source_modified_at")?,
                role: r.try_get("role")?,
                username: r.try_get("username")?,
                email: r.try_get("email")?,
                given_name: r.try_get("given_name")?,
                family_name: r.try_get("family_name")?,
                middle_name: r.try_get("middle_name")?,
                identifier: r.try_get("identifier")?,
                enabled: r.try_get("enabled")?,
                grades: r.try_get("grades")?,
                org_sourced_ids: r.try_get("org_sourced_ids")?,
                demographics: Demo::stored(
                    gender.as_deref(),
                    r.try_get("hispanic_or_latino")?,
                    races.as_deref(),
                ),
                preferred_first_name: r.try_get("preferred_first_name")?,
                preferred_middle_name: r.try_get("preferred_middle_name")?,
                preferred_last_name: r.try_get("preferred_last_name")?,
                pronouns: r.try_get("pronouns")?,
                primary_org_sourced_id: r.try_get("primary_org_sourced_id")?,
                roles: roles_from(&r.try_get::<Vec<String>, _>("role_assignments")?),
                identifiers: identifiers_from(&r.try_get::<Vec<String>, _>("identifiers")?),
            })
        })
        .collect::<Result<_, _>>()
        .map_err(db("reading stored users for a delta pull"))
}

/// The active enrollments of these users and classes: (enrollment, user, class). The store's
/// indexes find them; a delta runs only when the store and the mirror agree.
pub async fn enrollments_of(
    store: &PgPool,
    district: &str,
    users: &[String],
    classes: &[String],
) -> Result<Vec<(String, String, String)>, StoreError> {
    if users.is_empty() && classes.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT sourced_id, user_sourced_id, class_sourced_id FROM roster.enrollments
         WHERE district_id = $1 AND status = 'active'
           AND (user_sourced_id = ANY($2) OR class_sourced_id = ANY($3))",
    )
    .bind(district)
    .bind(users)
    .bind(classes)
    .fetch_all(store)
    .await
    .map_err(db("finding the enrollments of deleted users and classes"))
}

/// Of these users (ids), how many hold demographics in the store.
pub async fn users_with_demographics(
    store: &PgPool,
    district: &str,
    ids: &[String],
) -> Result<i64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    sqlx::query_scalar(
        "SELECT count(*) FROM roster.users
         WHERE district_id = $1 AND sourced_id = ANY($2) AND races IS NOT NULL",
    )
    .bind(district)
    .bind(ids)
    .fetch_one(store)
    .await
    .map_err(db("counting stored demographics"))
}

/// How many active users of the district hold demographics.
pub async fn count_with_demographics(store: &PgPool, district: &str) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM roster.users
         WHERE district_id = $1 AND status = 'active' AND races IS NOT NULL",
    )
    .bind(district)
    .fetch_one(store)
    .await
    .map_err(db("counting stored demographics"))
}

/// Streams every row of one entity of the district as `COPY` prints it (`sourced_id`, then the
/// stored columns): the line the `stored` module encodes, for the drift check.
pub async fn rows(
    conn: &mut PgConnection,
    district: &str,
    entity: Entity,
    mut each: impl FnMut(&[u8]),
) -> Result<(), StoreError> {
    let sql = format!(
        "COPY (SELECT sourced_id, {} FROM roster.{} WHERE district_id = {}) TO STDOUT",
        column_list(entity, ""),
        entity.as_str(),
        quote_literal(district)
    );
    copy_out_lines(conn, sql, |line| {
        each(line);
        Ok::<(), StoreError>(())
    })
    .await
}
