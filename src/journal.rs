//! The change journal (`sync.journal`): one row per record a run changed, or would have
//! changed (dry runs and held runs journal what they would do, marked as such), so an operator
//! can answer "what happened to this student yesterday?" and "which classes did Tuesday's run
//! change, and how?". The only code that reads or writes the table.
//!
//! Written set-based in the run's session from the change set: creations straight from
//! `apply_*`, updates and deletions from the `journal_rows` the store module computes (old
//! values are the store's), in the apply transaction. Demographic columns are journaled by name
//! only, never with their values.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::Entity;

#[derive(Debug, thiserror::Error)]
#[error("database error while {doing}: {source}")]
pub struct JournalError {
    doing: &'static str,
    #[source]
    source: sqlx::Error,
}

fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> JournalError {
    move |source| JournalError { doing, source }
}

/// Why a run's changes are journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Applied,
    /// What a dry run would have changed.
    DryRun,
    /// What a held change set would change once approved.
    Held,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Applied => "applied",
            Mode::DryRun => "dry_run",
            Mode::Held => "held",
        }
    }
}

/// Journals the session's change set (the `entities` with rows in it) for one run; returns the
/// rows written. `journal_rows` must hold the updates and deletions (see `store::journal`).
pub async fn record(
    conn: &mut PgConnection,
    district: &str,
    run_id: Uuid,
    mode: Mode,
    entities: impl IntoIterator<Item = Entity>,
) -> Result<u64, JournalError> {
    let mut written = 0;
    for entity in entities {
        let done = sqlx::query(sql!(
            "INSERT INTO sync.journal (district_id, run_id, mode, entity, sourced_id, operation)
             SELECT $1, $2, $3, '{e}', sourced_id, 'created' FROM apply_{e}
             WHERE op = 'create' AND counted",
            e = entity.as_str()
        ))
        .bind(district)
        .bind(run_id)
        .bind(mode.as_str())
        .execute(&mut *conn)
        .await
        .map_err(db("journaling created rows"))?;
        written += done.rows_affected();
    }
    let done = sqlx::query(
        "INSERT INTO sync.journal (district_id, run_id, mode, entity, sourced_id, operation, columns, changes)
         SELECT $1, $2, $3, entity, sourced_id, operation, columns, changes FROM journal_rows",
    )
    .bind(district)
    .bind(run_id)
    .bind(mode.as_str())
    .execute(&mut *conn)
    .await
    .map_err(db("journaling changed rows"))?;
    Ok(written + done.rows_affected())
}

/// A first load: journals the counted creations among these change-set lines (see
/// `changeset::Line`) by COPY, in the caller's transaction; returns the rows written.
pub async fn copy_created(
    conn: &mut PgConnection,
    district: &str,
    run_id: Uuid,
    entity: Entity,
    lines: &[u8],
) -> Result<u64, JournalError> {
    let mut prefix = Vec::new();
    crate::stored::copy_escaped(&mut prefix, district);
    prefix.extend_from_slice(
        format!(
            "\t{run_id}\t{}\t{}\t",
            Mode::Applied.as_str(),
            entity.as_str()
        )
        .as_bytes(),
    );
    let mut data = Vec::new();
    let mut written = 0;
    for l in crate::changeset::Line::each(lines) {
        if !l.counted {
            continue;
        }
        data.extend_from_slice(&prefix);
        data.extend_from_slice(l.field(0));
        data.extend_from_slice(b"\tcreated\n");
        written += 1;
    }
    if data.is_empty() {
        return Ok(0);
    }
    let mut copy = conn
        .copy_in_raw(
            "COPY sync.journal (district_id, run_id, mode, entity, sourced_id, operation) FROM STDIN",
        )
        .await
        .map_err(db("journaling created rows"))?;
    copy.send(data)
        .await
        .map_err(db("journaling created rows"))?;
    copy.finish().await.map_err(db("journaling created rows"))?;
    Ok(written)
}

/// The smallest UUIDv7 of a moment: run ids before it are older.
fn v7_floor(t: DateTime<Utc>) -> Uuid {
    let ms = u128::try_from(t.timestamp_millis()).unwrap_or(0);
    Uuid::from_u128(ms << 80)
}

/// Forgets the district's journal older than `retention`; returns the rows removed.
pub async fn prune(
    state: &PgPool,
    district: &str,
    retention: Duration,
) -> Result<u64, JournalError> {
    let keep_from = Utc::now() - chrono::Duration::from_std(retention).unwrap_or_default();
    let done = sqlx::query("DELETE FROM sync.journal WHERE district_id = $1 AND run_id < $2")
        .bind(district)
        .bind(v7_floor(keep_from))
        .execute(state)
        .await
        .map_err(db("pruning the journal"))?;
    Ok(done.rows_affected())
}

/// Which journal rows to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub run: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    pub entity: Option<Entity>,
    pub sourced_id: Option<String>,
    pub limit: i64,
}

/// One journal row, as `changes` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Change {
    pub run_id: Uuid,
    pub run_started_at: Option<DateTime<Utc>>,
    pub mode: String,
    pub entity: String,
    pub sourced_id: String,
    pub operation: String,
    /// Every column an update changed (demographic columns by name only).
    pub columns: Vec<String>,
    /// Old and new values per column, demographics excepted: `{"email": ["old", "new"]}`.
    pub changes: Option<sqlx::types::Json<serde_json::Value>>,
}

/// The district's journal, newest run first (within a run, by entity and `sourcedId`).
pub async fn changes(
    state: &PgPool,
    district: &str,
    filter: &Filter,
) -> Result<Vec<Change>, JournalError> {
    sqlx::query_as(
        "SELECT j.run_id, r.started_at AS run_started_at, j.mode, j.entity, j.sourced_id,
                j.operation, j.columns, j.changes
         FROM sync.journal j LEFT JOIN sync.runs r ON r.run_id = j.run_id
         WHERE j.district_id = $1
           AND ($2::uuid IS NULL OR j.run_id = $2)
           AND ($3::uuid IS NULL OR j.run_id >= $3)
           AND ($4::text IS NULL OR j.entity = $4)
           AND ($5::text IS NULL OR j.sourced_id = $5)
         ORDER BY j.run_id DESC, j.entity, j.sourced_id
         LIMIT $6",
    )
    .bind(district)
    .bind(filter.run)
    .bind(filter.since.map(v7_floor))
    .bind(filter.entity.map(Entity::as_str))
    .bind(filter.sourced_id.as_deref())
    .bind(filter.limit)
    .fetch_all(state)
    .await
    .map_err(db("reading the journal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_orders_before_every_run_id_of_that_moment() {
        let t = Utc::now();
        let floor = v7_floor(t);
        let later = Uuid::now_v7();
        assert!(floor <= later);
        let earlier = v7_floor(t - chrono::Duration::seconds(1));
        assert!(earlier < floor);
    }
}
