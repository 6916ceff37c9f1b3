//! A run's change set, in temporary tables of the run's own database session:
//!
//! - `apply_<entity>`: rows to insert or update, in their stored form, with the row hash, the
//!   operation (`create`, `update`, `reactivate`, `delete`) and whether it counts as a change
//!   (a reconcile or a new row-hash version rewrites rows that are none);
//! - `del_<entity>`: ids deleted by absence or by the enrollment cascade;
//! - `skipped`: records skipped as invalid, by entity (a reconcile must leave their rows alone);
//! - `journal_rows`: the updates and deletions with what changed in each row, for the journal
//!   (computed where the store is, see `store::journal`).
//!
//! The store module applies these tables, the mirror advances from them, the journal
//! reads them; the session's end drops them. Their definition is here once, for the state
//! session and for the store session of a separate-database layout ([`transfer`]).

use futures_util::TryStreamExt;
use sqlx::{Executor, PgConnection};

use crate::domain::Entity;
use crate::stored::{self, columns};

#[derive(Debug, thiserror::Error)]
#[error("database error while {doing}: {source}")]
pub struct ChangeSetError {
    doing: &'static str,
    #[source]
    source: sqlx::Error,
}

fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> ChangeSetError {
    move |source| ChangeSetError { doing, source }
}

/// The tables' definition; `ON COMMIT DROP` when they live only for one transaction.
fn ddl(on_commit_drop: bool) -> String {
    let end = if on_commit_drop {
        " ON COMMIT DROP"
    } else {
        ""
    };
    let mut sql = format!(
        "CREATE TEMP TABLE skipped (entity text NOT NULL, sourced_id text NOT NULL){end};\n\
         CREATE TEMP TABLE journal_rows (entity text NOT NULL, sourced_id text NOT NULL, \
         operation text NOT NULL, columns text[] NOT NULL, changes jsonb){end};\n"
    );
    for entity in Entity::ALL {
        let defs = columns(entity)
            .iter()
            .map(|c| format!("{} {}", c.name, c.ty.sql()))
            .collect::<Vec<_>>()
            .join(", ");
        sql.push_str(&format!(
            "CREATE TEMP TABLE apply_{e} (sourced_id text NOT NULL, {defs}, hash bigint, op text NOT NULL, counted boolean NOT NULL){end};\n\
             CREATE TEMP TABLE del_{e} (sourced_id text PRIMARY KEY){end};\n",
            e = entity.as_str(),
        ));
    }
    sql
}

fn tables() -> Vec<String> {
    let mut tables = vec!["skipped".to_owned()];
    for entity in Entity::ALL {
        tables.push(format!("apply_{}", entity.as_str()));
        tables.push(format!("del_{}", entity.as_str()));
    }
    tables
}

/// Creates (or empties, when the pull starts over) the session's change-set tables.
pub async fn create(conn: &mut PgConnection) -> Result<(), ChangeSetError> {
    let sql = format!("DISCARD TEMP;\n{}", ddl(false));
    conn.execute(sqlx::AssertSqlSafe(sql))
        .await
        .map_err(db("creating the change-set tables"))?;
    Ok(())
}

/// Analyzes the deletion tables once the pull is complete (the apply joins them to the store).
pub async fn seal(conn: &mut PgConnection) -> Result<(), ChangeSetError> {
    let sql: String = Entity::ALL
        .iter()
        .map(|e| format!("ANALYZE del_{};\n", e.as_str()))
        .collect();
    conn.execute(sqlx::AssertSqlSafe(sql))
        .await
        .map_err(db("indexing the change set"))?;
    Ok(())
}

/// One line of the change set as the snapshot writes it: the stored row (`sourced_id`, then
/// the columns), its hash, its operation and whether it counts as a change.
pub struct Line<'a> {
    pub row: &'a [u8],
    pub hash: &'a [u8],
    pub op: &'a [u8],
    pub counted: bool,
}

impl<'a> Line<'a> {
    pub fn parse(line: &'a [u8]) -> Option<Line<'a>> {
        let mut parts = line.rsplitn(4, |b| *b == b'\t');
        let counted = parts.next()? == b"t";
        let op = parts.next()?;
        let hash = parts.next()?;
        let row = parts.next()?;
        Some(Line {
            row,
            hash,
            op,
            counted,
        })
    }

    /// Every line of a buffer of change-set lines (what [`crate::snapshot::Snapshot`] buffers).
    pub fn each(lines: &'a [u8]) -> impl Iterator<Item = Line<'a>> + 'a {
        lines
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(Line::parse)
    }

    /// The `i`-th field of the row (0: `sourced_id`, 1: `status`, ...), COPY-escaped.
    pub fn field(&self, i: usize) -> &'a [u8] {
        self.row.split(|b| *b == b'\t').nth(i).unwrap_or_default()
    }
}

/// Splits buffered lines into rows new to the mirror (`op = create`) and the rest.
pub fn split_new(lines: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut new, mut rest) = (Vec::new(), Vec::new());
    for line in lines.split_inclusive(|b| *b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let target = match Line::parse(body) {
            Some(l) if l.op == b"create" => &mut new,
            _ => &mut rest,
        };
        target.extend_from_slice(line);
    }
    (new, rest)
}

/// Copies complete COPY lines (a stored row, its hash, its operation) into `apply_<entity>`.
pub async fn copy_rows(
    conn: &mut PgConnection,
    entity: Entity,
    lines: Vec<u8>,
) -> Result<(), ChangeSetError> {
    copy_in(
        conn,
        &format!("COPY apply_{} FROM STDIN", entity.as_str()),
        lines,
    )
    .await
}

/// Copies ids into `del_<entity>`.
pub async fn copy_deleted(
    conn: &mut PgConnection,
    entity: Entity,
    ids: &[String],
) -> Result<(), ChangeSetError> {
    if ids.is_empty() {
        return Ok(());
    }
    let statement = format!("COPY del_{} FROM STDIN", entity.as_str());
    copy_in(conn, &statement, stored::id_lines(ids)).await
}

/// Adds ids to `del_<entity>` that may be there already (a reconcile's deletions).
pub async fn add_deleted(
    conn: &mut PgConnection,
    entity: Entity,
    ids: &[String],
) -> Result<(), ChangeSetError> {
    sqlx::query(sql!(
        "INSERT INTO del_{} SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
        entity.as_str()
    ))
    .bind(ids)
    .execute(&mut *conn)
    .await
    .map_err(db("recording reconciled deletions"))?;
    Ok(())
}

/// Records skipped as invalid, so a reconcile can tell "invalid in this pull" (leave the stored
/// row alone) from "absent" (delete it).
pub async fn copy_skipped(
    conn: &mut PgConnection,
    skipped: &[(Entity, String)],
) -> Result<(), ChangeSetError> {
    if skipped.is_empty() {
        return Ok(());
    }
    let mut lines = Vec::new();
    for (entity, id) in skipped {
        lines.extend_from_slice(entity.as_str().as_bytes());
        lines.push(b'\t');
        lines.extend(stored::id_lines(&[id]));
    }
    copy_in(conn, "COPY skipped FROM STDIN", lines).await
}

async fn copy_in(
    conn: &mut PgConnection,
    statement: &str,
    data: Vec<u8>,
) -> Result<(), ChangeSetError> {
    if data.is_empty() {
        return Ok(());
    }
    let mut copy = conn
        .copy_in_raw(statement)
        .await
        .map_err(db("starting COPY into the change set"))?;
    copy.send(data).await.map_err(db("sending COPY data"))?;
    copy.finish()
        .await
        .map_err(db("finishing COPY into the change set"))?;
    Ok(())
}

/// Users updated (or deleted) without demographics: those that held some in the store lose
/// them (the gate counts them).
pub async fn users_losing_demographics(
    conn: &mut PgConnection,
) -> Result<Vec<String>, ChangeSetError> {
    sqlx::query_scalar("SELECT sourced_id FROM apply_users WHERE op <> 'create' AND races IS NULL")
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading the change set"))
}

/// A digest of the whole change set (every row to write, with its operation and stored
/// content hash, and every deletion): what an approval refers to.
pub async fn fingerprint(conn: &mut PgConnection) -> Result<String, ChangeSetError> {
    let parts = Entity::ALL
        .iter()
        .map(|entity| {
            let e = entity.as_str();
            format!(
                "SELECT '{e}' AS part, md5(coalesce(string_agg(sourced_id || '/' || op || '/' || coalesce(hash::text, ''), ',' ORDER BY sourced_id), '')) AS h FROM apply_{e}
                 UNION ALL
                 SELECT '{e}-deleted', md5(coalesce(string_agg(sourced_id, ',' ORDER BY sourced_id), '')) FROM del_{e}"
            )
        })
        .collect::<Vec<_>>()
        .join("\nUNION ALL\n");
    sqlx::query_scalar(sql!(
        "SELECT md5(string_agg(part || '=' || h, ';' ORDER BY part)) FROM ({parts}) p"
    ))
    .fetch_one(&mut *conn)
    .await
    .map_err(db("fingerprinting the change set"))
}

/// Writes the rows of `apply_<entity>` into a table, given its `insert` (`INSERT … SELECT …
/// FROM apply_* a`, bound to the district as `$1`) and `upsert` (its `ON CONFLICT` clause).
/// Rows new to the mirror (`op = 'create'`) are new to the target too unless the two drifted
/// apart, so they go in with a plain `INSERT` (a first load of a large district costs a third
/// less than through `ON CONFLICT`); if a row is there after all, that insert is rolled back to
/// a savepoint and done again as an upsert. The other rows are upserted.
pub async fn write_rows(
    conn: &mut PgConnection,
    district: &str,
    insert: &str,
    upsert: &str,
) -> Result<(), sqlx::Error> {
    conn.execute("SAVEPOINT new_rows").await?;
    let plain = sqlx::query(sql!("{insert} WHERE a.op = 'create'"))
        .bind(district)
        .execute(&mut *conn)
        .await;
    match plain {
        Ok(_) => {
            conn.execute("RELEASE SAVEPOINT new_rows").await?;
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            conn.execute("ROLLBACK TO SAVEPOINT new_rows").await?;
            sqlx::query(sql!("{insert} WHERE a.op = 'create' {upsert}"))
                .bind(district)
                .execute(&mut *conn)
                .await?;
        }
        Err(e) => return Err(e),
    }
    sqlx::query(sql!("{insert} WHERE a.op <> 'create' {upsert}"))
        .bind(district)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Copies `journal_rows` back from a store session into the state session (separate-database
/// layout: the store computes them, the journal lives with the state).
pub async fn journal_back(
    store: &mut PgConnection,
    state: &mut PgConnection,
) -> Result<(), ChangeSetError> {
    copy_table(store, state, "journal_rows").await
}

async fn copy_table(
    from: &mut PgConnection,
    to: &mut PgConnection,
    table: &str,
) -> Result<(), ChangeSetError> {
    let mut sink = to
        .copy_in_raw(&format!("COPY {table} FROM STDIN"))
        .await
        .map_err(db("starting a copy between the databases"))?;
    {
        let mut source = from
            .copy_out_raw(&format!("COPY {table} TO STDOUT"))
            .await
            .map_err(db("starting a copy between the databases"))?;
        while let Some(chunk) = source
            .try_next()
            .await
            .map_err(db("reading the change set"))?
        {
            sink.send(chunk)
                .await
                .map_err(db("copying the change set between the databases"))?;
        }
    }
    sink.finish()
        .await
        .map_err(db("finishing a copy between the databases"))?;
    Ok(())
}

/// Copies the change set from the state session into the same tables, created for one
/// transaction, in a store session (separate-database layout). The store session must be
/// inside a transaction.
pub async fn transfer(
    state: &mut PgConnection,
    store: &mut PgConnection,
) -> Result<(), ChangeSetError> {
    store
        .execute(sqlx::AssertSqlSafe(ddl(true)))
        .await
        .map_err(db("creating the change-set tables in the store session"))?;
    for table in tables() {
        copy_table(state, store, &table).await?;
    }
    store
        .execute("CREATE INDEX ON skipped (entity, sourced_id)")
        .await
        .map_err(db("indexing the change set in the store session"))?;
    Ok(())
}
