//! The mirror (`sync.mirror_*`): what the daemon last applied to the roster store, one row per
//! record with the status and the hash of its stored form (enrollments also keep their user and
//! class, for the cascade). The only code that reads or writes these tables.
//!
//! A run loads the district's mirror into an in-memory [`Index`] (a delta pull only the entries
//! its pages need), classifies the pull against it, and after the apply moves the mirror on
//! from the change set ([`advance`]).

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgConnection;

use crate::changeset;
use crate::db::{copy_out_lines, quote_literal};
use crate::diff::Index;
use crate::domain::Entity;
use crate::stored::unescape;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("database error while {doing}: {source}")]
    Database {
        doing: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("the mirror is corrupt: {0}")]
    Corrupt(String),
}

fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> MirrorError {
    move |source| MirrorError::Database { doing, source }
}

/// A mirror entry as COPY prints `sourced_id, status = 'active', hash`.
fn parse_line(line: &[u8]) -> Result<(String, bool, Option<i64>), MirrorError> {
    let bad = || MirrorError::Corrupt("unreadable mirror row".into());
    let mut fields = line.split(|b| *b == b'\t');
    let id = unescape(fields.next().ok_or_else(bad)?);
    let active = fields.next().ok_or_else(bad)? == b"t";
    let hash = match fields.next().ok_or_else(bad)? {
        b"\\N" => None,
        text => Some(
            std::str::from_utf8(text)
                .ok()
                .and_then(|h| h.parse().ok())
                .ok_or_else(bad)?,
        ),
    };
    Ok((id, active, hash))
}

/// Loads one entity of the district's mirror into a complete pull's index (a delta pull loads
/// only the entries its pages need, see [`ensure`]). `trust_hashes` is false when the hashes
/// are of another row-hash version: rows are then written again, as no change.
pub async fn load_entity(
    conn: &mut PgConnection,
    index: &mut Index,
    district: &str,
    entity: Entity,
    trust_hashes: bool,
) -> Result<(), MirrorError> {
    let sql = format!(
        "COPY (SELECT sourced_id, status = 'active', {} FROM sync.mirror_{} WHERE district_id = {}) TO STDOUT",
        if trust_hashes { "hash" } else { "NULL" },
        entity.as_str(),
        quote_literal(district)
    );
    copy_out_lines(conn, sql, |line| {
        let (id, active, hash) = parse_line(line)?;
        index.insert_mirrored(entity, &id, active, hash);
        Ok::<(), MirrorError>(())
    })
    .await
}

/// Delta pulls: loads the mirror entries of these ids that are not loaded yet.
pub async fn ensure(
    conn: &mut PgConnection,
    index: &mut Index,
    district: &str,
    entity: Entity,
    ids: &[String],
    trust_hashes: bool,
) -> Result<(), MirrorError> {
    if !index.is_delta() {
        return Ok(());
    }
    let missing = index.unloaded(entity, ids);
    if missing.is_empty() {
        return Ok(());
    }
    let rows: Vec<(String, bool, Option<i64>)> = sqlx::query_as(sql!(
        "SELECT sourced_id, status = 'active', hash FROM sync.mirror_{}
         WHERE district_id = $1 AND sourced_id = ANY($2)",
        entity.as_str()
    ))
    .bind(district)
    .bind(&missing)
    .fetch_all(&mut *conn)
    .await
    .map_err(db("reading the mirror"))?;
    let rows = rows
        .into_iter()
        .map(|(id, active, hash)| (id, active, hash.filter(|_| trust_hashes)))
        .collect();
    index.load(entity, &missing, rows);
    Ok(())
}

/// Active rows per entity in the district's mirror.
pub async fn active_counts(
    state: sqlx::PgPool,
    district: String,
) -> Result<BTreeMap<Entity, i64>, MirrorError> {
    let mut counts = BTreeMap::new();
    for entity in Entity::ALL {
        let n: i64 = sqlx::query_scalar(sql!(
            "SELECT count(*) FROM sync.mirror_{} WHERE district_id = $1 AND status = 'active'",
            entity.as_str()
        ))
        .bind(&district)
        .fetch_one(&state)
        .await
        .map_err(db("counting mirrored rows"))?;
        counts.insert(entity, n);
    }
    Ok(counts)
}

/// Streams the ids of the district's active mirror rows of one entity to `each`.
pub async fn active_ids(
    conn: &mut PgConnection,
    district: &str,
    entity: Entity,
    mut each: impl FnMut(String),
) -> Result<(), MirrorError> {
    let sql = format!(
        "COPY (SELECT sourced_id FROM sync.mirror_{} WHERE district_id = {} AND status = 'active') TO STDOUT",
        entity.as_str(),
        quote_literal(district)
    );
    copy_out_lines(conn, sql, |line| {
        each(unescape(line));
        Ok::<(), MirrorError>(())
    })
    .await
}

/// The user and class of these mirrored active enrollments: (enrollment, user, class).
pub async fn active_enrollments(
    conn: &mut PgConnection,
    district: &str,
    ids: &[String],
) -> Result<Vec<(String, String, String)>, MirrorError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT sourced_id, user_sourced_id, class_sourced_id FROM sync.mirror_enrollments
         WHERE district_id = $1 AND status = 'active' AND sourced_id = ANY($2)",
    )
    .bind(district)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(db("reading skipped enrollments"))
}

/// Moves the mirror to what was just applied (for the `touched` entities): `apply_*` rows as
/// they were stored, `del_*` rows as deleted (content unknown, so no hash: if the record comes
/// back it is applied).
pub async fn advance(
    conn: &mut PgConnection,
    district: &str,
    touched: &BTreeSet<Entity>,
) -> Result<(), MirrorError> {
    for &entity in touched {
        let e = entity.as_str();
        let (extra_cols, extra_set) = if entity == Entity::Enrollments {
            (
                ", user_sourced_id, class_sourced_id",
                ", user_sourced_id = EXCLUDED.user_sourced_id, class_sourced_id = EXCLUDED.class_sourced_id",
            )
        } else {
            ("", "")
        };
        let insert = format!(
            "INSERT INTO sync.mirror_{e} AS t (district_id, sourced_id, status, hash{extra_cols})
             SELECT $1, a.sourced_id, a.status, a.hash{extra_cols} FROM apply_{e} a"
        );
        let upsert = format!(
            "ON CONFLICT (district_id, sourced_id) DO UPDATE
             SET status = EXCLUDED.status, hash = EXCLUDED.hash{extra_set}"
        );
        changeset::write_rows(conn, district, &insert, &upsert)
            .await
            .map_err(db("advancing the mirror"))?;
        sqlx::query(sql!(
            "UPDATE sync.mirror_{e} m SET status = 'deleted', hash = NULL
             FROM del_{e} d WHERE m.district_id = $1 AND m.sourced_id = d.sourced_id"
        ))
        .bind(district)
        .execute(&mut *conn)
        .await
        .map_err(db("advancing the mirror"))?;
    }
    Ok(())
}

/// A first load: rows new to the mirror (change-set lines, see `changeset::Line`) go straight
/// into `sync.mirror_<entity>` by COPY, in the caller's transaction (with the store's).
pub async fn copy_new(
    conn: &mut PgConnection,
    district: &str,
    entity: Entity,
    lines: &[u8],
) -> Result<(), MirrorError> {
    let enrollments = entity == Entity::Enrollments;
    let mut data = Vec::with_capacity(lines.len() / 4);
    let mut district_field = Vec::new();
    crate::stored::copy_escaped(&mut district_field, district);
    for l in changeset::Line::each(lines) {
        data.extend_from_slice(&district_field);
        for part in [l.field(0), l.field(1), l.hash] {
            data.push(b'\t');
            data.extend_from_slice(part);
        }
        if enrollments {
            // user_sourced_id and class_sourced_id follow status in the stored form.
            for i in [2, 3] {
                data.push(b'\t');
                data.extend_from_slice(l.field(i));
            }
        }
        data.push(b'\n');
    }
    if data.is_empty() {
        return Ok(());
    }
    let columns = if enrollments {
        "district_id, sourced_id, status, hash, user_sourced_id, class_sourced_id"
    } else {
        "district_id, sourced_id, status, hash"
    };
    let statement = format!(
        "COPY sync.mirror_{} ({columns}) FROM STDIN",
        entity.as_str()
    );
    let mut copy = conn
        .copy_in_raw(&statement)
        .await
        .map_err(db("writing new mirror rows"))?;
    copy.send(data)
        .await
        .map_err(db("writing new mirror rows"))?;
    copy.finish().await.map_err(db("writing new mirror rows"))?;
    Ok(())
}

/// Whether the district's mirror holds no row at all (a first load).
pub async fn is_empty(conn: &mut PgConnection, district: &str) -> Result<bool, MirrorError> {
    let tables = Entity::ALL
        .iter()
        .map(|e| {
            format!(
                "SELECT 1 FROM sync.mirror_{} WHERE district_id = $1",
                e.as_str()
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let any: Option<i32> = sqlx::query_scalar(sql!("{tables} LIMIT 1"))
        .bind(district)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading the mirror"))?;
    Ok(any.is_none())
}

/// Streams `(sourced_id, active, hash)` of every mirror row of one entity (the drift check).
pub async fn rows(
    conn: &mut PgConnection,
    district: &str,
    entity: Entity,
    mut each: impl FnMut(String, bool, Option<i64>),
) -> Result<(), MirrorError> {
    let sql = format!(
        "COPY (SELECT sourced_id, status = 'active', hash FROM sync.mirror_{} WHERE district_id = {}) TO STDOUT",
        entity.as_str(),
        quote_literal(district)
    );
    copy_out_lines(conn, sql, |line| {
        let (id, active, hash) = parse_line(line)?;
        each(id, active, hash);
        Ok::<(), MirrorError>(())
    })
    .await
}

/// Repair: the mirror rows of these ids no longer match anything the source will send (a
/// hash no row has), so the next full pull writes them again and counts them as changes. Each
/// takes the status the store holds (`Some`), so the change is judged against what the store
/// shows; a row the store lacks (`None`) keeps the mirror's. Ids the mirror lacks (rows someone
/// added to the store) are entered, so that pull either updates them or deletes them by
/// absence.
pub async fn mark_drifted(
    conn: &mut PgConnection,
    district: &str,
    entity: Entity,
    rows: &[(&str, Option<&str>)],
) -> Result<u64, MirrorError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = rows.iter().map(|(id, _)| *id).collect();
    let statuses: Vec<Option<&str>> = rows.iter().map(|(_, s)| *s).collect();
    let (cols, vals) = if entity == Entity::Enrollments {
        (", user_sourced_id, class_sourced_id", ", '', ''")
    } else {
        ("", "")
    };
    let done = sqlx::query(sql!(
        "INSERT INTO sync.mirror_{e} AS m (district_id, sourced_id, status, hash{cols})
         SELECT $1, r.id, coalesce(r.status, 'active'), {DRIFTED}{vals}
         FROM unnest($2::text[], $3::text[]) AS r(id, status)
         ON CONFLICT (district_id, sourced_id) DO UPDATE
         SET hash = {DRIFTED}, status = coalesce(EXCLUDED.status, m.status)",
        e = entity.as_str()
    ))
    .bind(district)
    .bind(&ids)
    .bind(&statuses)
    .execute(&mut *conn)
    .await
    .map_err(db("marking drifted rows in the mirror"))?;
    Ok(done.rows_affected())
}

/// The hash of a mirror row marked drifted: no stored form hashes to it (the chance of an
/// xxh3 hash hitting one value is 2^-64).
pub const DRIFTED: i64 = i64::MIN;

/// Database errors of the streaming reads (`COPY ... TO STDOUT`).
impl From<sqlx::Error> for MirrorError {
    fn from(source: sqlx::Error) -> MirrorError {
        MirrorError::Database {
            doing: "reading the mirror",
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_lines_are_read_with_escapes_and_nulls() {
        assert_eq!(
            parse_line(b"x\\ty\tt\t12").unwrap(),
            ("x\ty".to_owned(), true, Some(12))
        );
        assert_eq!(
            parse_line(b"a\tf\t\\N").unwrap(),
            ("a".to_owned(), false, None)
        );
        assert!(parse_line(b"a").is_err());
        assert!(parse_line(b"a\tt\tnot-a-number").is_err());
    }
}
