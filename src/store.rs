//! The roster store (`roster.*`): the only code that writes it.
//!
//! It applies a diff prepared by the mirror module: the session it runs on holds the temporary
//! tables `apply_<entity>` (rows to insert or update, as stored) and `del_<entity>` (ids to
//! soft-delete). Every statement is guarded so that a row is written only when something stored
//! in it changes, which also makes applying the same diff twice harmless.
//!
//! # Two layouts
//!
//! When the store shares the daemon's database, the caller applies the diff and advances the
//! mirror in one transaction. When it lives in another database ([`transfer`]), no transaction
//! spans both, so a run goes:
//!
//! 1. mark the district *pending* in the state database (committed);
//! 2. copy the diff tables into a store session and apply them in one store transaction;
//! 3. advance the mirror and clear the mark in one state transaction.
//!
//! A crash after 2 but before 3 leaves the store ahead of the mirror. The next run sees the mark
//! and reconciles: it applies its whole snapshot (the guards write only real differences) and
//! soft-deletes whatever the store has active that the snapshot lacks ([`reconcile_absent`]),
//! then rebuilds the mirror from what it applied. A crash before 2 commits changes nothing in
//! the store, and the same reconcile is harmless.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Executor, PgConnection};

use crate::domain::Entity;
use crate::mirror::{column_defs, column_list, columns, write_change_set};

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
            .map(|(name, _)| format!("{name} = EXCLUDED.{name}"))
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
        write_change_set(conn, district, &insert, &upsert)
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
    }
    Ok(())
}

/// Reconcile only: soft-deletes the district's active store rows that are neither in this
/// run's snapshot (`apply_*` holds all of it in reconcile mode) nor skipped as invalid, and
/// records their ids in `del_*` so the mirror learns of them.
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
               AND NOT EXISTS (SELECT 1 FROM stage_skipped k WHERE k.entity = '{e}' AND k.sourced_id = t.sourced_id)
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

/// Copies the diff tables (`apply_*`, `del_*`, `stage_skipped`) from the state session into
/// temporary tables of the same names in a store session (separate-database layout). The store
/// session must be inside a transaction; the tables are dropped at its end.
pub async fn transfer(
    state: &mut PgConnection,
    store: &mut PgConnection,
) -> Result<(), StoreError> {
    let mut ddl = String::from(
        "CREATE TEMP TABLE stage_skipped (entity text NOT NULL, sourced_id text NOT NULL, reason text NOT NULL) ON COMMIT DROP;\n",
    );
    for entity in Entity::ALL {
        let e = entity.as_str();
        let defs = column_defs(entity);
        ddl.push_str(&format!(
            "CREATE TEMP TABLE apply_{e} (sourced_id text NOT NULL, {defs}, hash bigint, op text NOT NULL) ON COMMIT DROP;
             CREATE TEMP TABLE del_{e} (sourced_id text PRIMARY KEY) ON COMMIT DROP;\n"
        ));
    }
    store
        .execute(sqlx::AssertSqlSafe(ddl))
        .await
        .map_err(db("creating transfer tables"))?;
    let mut tables = vec!["stage_skipped".to_string()];
    for entity in Entity::ALL {
        tables.push(format!("apply_{}", entity.as_str()));
        tables.push(format!("del_{}", entity.as_str()));
    }
    for table in tables {
        copy_table(state, store, &table).await?;
    }
    store
        .execute("CREATE INDEX ON stage_skipped (entity, sourced_id)")
        .await
        .map_err(db("indexing transfer tables"))?;
    Ok(())
}

async fn copy_table(
    from: &mut PgConnection,
    to: &mut PgConnection,
    table: &str,
) -> Result<(), StoreError> {
    use futures_util::TryStreamExt;
    let mut sink = to
        .copy_in_raw(&format!("COPY {table} FROM STDIN"))
        .await
        .map_err(db("starting the copy into the store"))?;
    {
        let mut source = from
            .copy_out_raw(&format!("COPY {table} TO STDOUT"))
            .await
            .map_err(db("starting the copy out of the state database"))?;
        while let Some(chunk) = source.try_next().await.map_err(db("reading the diff"))? {
            sink.send(chunk)
                .await
                .map_err(db("copying the diff into the store"))?;
        }
    }
    sink.finish()
        .await
        .map_err(db("finishing the copy into the store"))?;
    Ok(())
}
