//! The safety gate (CONTRACT §6): change sets larger than a district's limits are held for an
//! operator instead of applied, and applied only once approved, exactly as they were held.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::SafetyLimits;
use crate::domain::Entity;
use crate::mirror::ChangeCounts;

/// One limit a change set goes over.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breach {
    pub entity: Entity,
    /// `delete` or `update`.
    pub operation: &'static str,
    pub count: i64,
    /// Rows of the type active before the run.
    pub active: i64,
    /// The limit, as configured, e.g. `max_delete_percent = 10`.
    pub limit: String,
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let share = if self.active > 0 {
            format!(" ({:.1}%)", 100.0 * self.count as f64 / self.active as f64)
        } else {
            String::new()
        };
        write!(
            f,
            "{} {} {} of {} active{} over {}",
            self.entity,
            self.count,
            past(self.operation),
            self.active,
            share,
            self.limit
        )
    }
}

fn past(operation: &str) -> &'static str {
    if operation == "delete" {
        "deleted"
    } else {
        "updated"
    }
}

/// The limits a change set goes over; empty when it may be applied.
pub fn judge(
    changes: &BTreeMap<Entity, ChangeCounts>,
    active: &BTreeMap<Entity, i64>,
    limits: &BTreeMap<Entity, SafetyLimits>,
) -> Vec<Breach> {
    let mut breaches = Vec::new();
    for (entity, c) in changes {
        let limit = limits.get(entity).copied().unwrap_or_default();
        let active = active.get(entity).copied().unwrap_or(0);
        let percentages_apply = active > 0 && active as u64 >= limit.min_population;
        let share = |n: i64| 100.0 * n as f64 / active.max(1) as f64;
        let mut breach = |operation, count: i64, limit: String| {
            breaches.push(Breach {
                entity: *entity,
                operation,
                count,
                active,
                limit,
            })
        };
        let deleted = c.deleted;
        if deleted as u64 > limit.max_delete_count {
            breach(
                "delete",
                deleted,
                format!("max_delete_count = {}", limit.max_delete_count),
            );
        } else if percentages_apply && share(deleted) > limit.max_delete_percent {
            breach(
                "delete",
                deleted,
                format!("max_delete_percent = {}", limit.max_delete_percent),
            );
        }
        let updated = c.updated + c.reactivated;
        match limit.max_update_count {
            Some(max) if updated as u64 > max => {
                breach("update", updated, format!("max_update_count = {max}"));
            }
            _ if percentages_apply && share(updated) > limit.max_update_percent => {
                breach(
                    "update",
                    updated,
                    format!("max_update_percent = {}", limit.max_update_percent),
                );
            }
            _ => {}
        }
    }
    breaches
}

/// A change set waiting for approval, as `status` and `approve` show it.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    pub fingerprint: String,
    pub run_id: Uuid,
    pub held_at: chrono::DateTime<chrono::Utc>,
    pub approved: bool,
    pub counts: serde_json::Value,
    pub reasons: serde_json::Value,
}

/// Whether this exact change set was approved and not applied yet.
pub async fn is_approved(
    state: &PgPool,
    district: &str,
    fingerprint: &str,
) -> Result<bool, sqlx::Error> {
    let approved: Option<bool> = sqlx::query_scalar(
        "SELECT approved_at IS NOT NULL FROM sync.held_change_sets
         WHERE district_id = $1 AND fingerprint = $2 AND released_at IS NULL",
    )
    .bind(district)
    .bind(fingerprint)
    .fetch_optional(state)
    .await?;
    Ok(approved.unwrap_or(false))
}

/// Keeps a change set as held (again, if the same one was held before) and retires any other
/// pending one of the district: only the newest change set can be approved.
pub async fn hold(
    state: &PgPool,
    district: &str,
    fingerprint: &str,
    run_id: Uuid,
    counts: &serde_json::Value,
    samples: &serde_json::Value,
    reasons: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    let mut tx = state.begin().await?;
    sqlx::query(
        "UPDATE sync.held_change_sets SET released_at = now(), resolution = 'superseded'
         WHERE district_id = $1 AND fingerprint <> $2 AND released_at IS NULL",
    )
    .bind(district)
    .bind(fingerprint)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO sync.held_change_sets (district_id, fingerprint, run_id, counts, samples, reasons)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (district_id, fingerprint) DO UPDATE
         SET run_id = EXCLUDED.run_id, counts = EXCLUDED.counts, samples = EXCLUDED.samples,
             reasons = EXCLUDED.reasons,
             held_at = CASE WHEN sync.held_change_sets.released_at IS NULL THEN sync.held_change_sets.held_at ELSE now() END,
             approved_at = CASE WHEN sync.held_change_sets.released_at IS NULL THEN sync.held_change_sets.approved_at END,
             released_at = NULL, resolution = NULL",
    )
    .bind(district)
    .bind(fingerprint)
    .bind(run_id)
    .bind(counts)
    .bind(samples)
    .bind(reasons)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Marks an approved change set applied, and retires any other pending one.
pub async fn release(state: &PgPool, district: &str, fingerprint: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sync.held_change_sets
         SET released_at = now(), resolution = CASE WHEN fingerprint = $2 THEN 'applied' ELSE 'superseded' END
         WHERE district_id = $1 AND released_at IS NULL",
    )
    .bind(district)
    .bind(fingerprint)
    .execute(state)
    .await?;
    Ok(())
}

/// Retires every pending change set of the district: a run passed the gate without one, so the
/// source moved on from what was held.
pub async fn supersede(state: &PgPool, district: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sync.held_change_sets SET released_at = now(), resolution = 'superseded'
         WHERE district_id = $1 AND released_at IS NULL",
    )
    .bind(district)
    .execute(state)
    .await?;
    Ok(())
}

/// The district's pending held change set, if any.
pub async fn pending(state: &PgPool, district: &str) -> Result<Option<Held>, sqlx::Error> {
    let row: Option<(
        String,
        Uuid,
        chrono::DateTime<chrono::Utc>,
        bool,
        serde_json::Value,
        serde_json::Value,
    )> = sqlx::query_as(
        "SELECT fingerprint, run_id, held_at, approved_at IS NOT NULL, counts, reasons
             FROM sync.held_change_sets WHERE district_id = $1 AND released_at IS NULL
             ORDER BY held_at DESC LIMIT 1",
    )
    .bind(district)
    .fetch_optional(state)
    .await?;
    Ok(row.map(
        |(fingerprint, run_id, held_at, approved, counts, reasons)| Held {
            fingerprint,
            run_id,
            held_at,
            approved,
            counts,
            reasons,
        },
    ))
}

/// Approves the district's pending change set (optionally only if it has this fingerprint);
/// returns it, or `None` when nothing matching is held.
pub async fn approve(
    state: &PgPool,
    district: &str,
    fingerprint: Option<&str>,
) -> Result<Option<Held>, sqlx::Error> {
    let Some(held) = pending(state, district).await? else {
        return Ok(None);
    };
    if fingerprint.is_some_and(|f| f != held.fingerprint) {
        return Ok(None);
    }
    sqlx::query(
        "UPDATE sync.held_change_sets SET approved_at = now()
         WHERE district_id = $1 AND fingerprint = $2 AND released_at IS NULL",
    )
    .bind(district)
    .bind(&held.fingerprint)
    .execute(state)
    .await?;
    Ok(Some(Held {
        approved: true,
        ..held
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BTreeMap<Entity, SafetyLimits> {
        Entity::ALL
            .into_iter()
            .map(|e| (e, SafetyLimits::default()))
            .collect()
    }

    fn one(entity: Entity, c: ChangeCounts, active: i64) -> Vec<Breach> {
        judge(
            &BTreeMap::from([(entity, c)]),
            &BTreeMap::from([(entity, active)]),
            &limits(),
        )
    }

    #[test]
    fn deletions_over_the_percentage_are_held() {
        let c = ChangeCounts {
            deleted: 101,
            ..Default::default()
        };
        let b = one(Entity::Users, c, 1000);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].operation, "delete");
        assert_eq!(b[0].limit, "max_delete_percent = 10");
        let c = ChangeCounts {
            deleted: 100,
            ..Default::default()
        };
        assert!(
            one(Entity::Users, c, 1000).is_empty(),
            "exactly 10 % is allowed"
        );
    }

    #[test]
    fn absolute_deletion_count_applies_at_any_size() {
        let c = ChangeCounts {
            deleted: 501,
            ..Default::default()
        };
        let b = one(Entity::Enrollments, c, 1_000_000);
        assert_eq!(b[0].limit, "max_delete_count = 500");
    }

    #[test]
    fn percentages_do_not_apply_below_the_minimum_population() {
        let c = ChangeCounts {
            deleted: 30,
            updated: 80,
            ..Default::default()
        };
        assert!(one(Entity::Classes, c, 99).is_empty());
        assert_eq!(one(Entity::Classes, c, 100).len(), 2);
    }

    #[test]
    fn updates_over_the_percentage_are_held_and_reactivations_count() {
        let c = ChangeCounts {
            updated: 700,
            reactivated: 60,
            ..Default::default()
        };
        let b = one(Entity::Users, c, 1000);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].operation, "update");
        assert!(
            b[0].to_string()
                .contains("760 updated of 1000 active (76.0%)"),
            "{}",
            b[0]
        );
    }

    #[test]
    fn creations_are_never_held() {
        let c = ChangeCounts {
            created: 1_000_000,
            ..Default::default()
        };
        assert!(one(Entity::Users, c, 0).is_empty());
    }
}
