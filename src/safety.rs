//! The safety gate (CONTRACT §6): change sets larger than a district's limits are held for an
//! operator instead of applied, and applied only once approved, exactly as they were held.
//! Pure: the held change sets themselves are kept by the history module.

use std::collections::BTreeMap;
use std::future::Future;

use serde::Serialize;

use crate::config::{DemographicsLimits, SafetyLimits};
use crate::diff::ChangeCounts;
use crate::domain::Entity;

/// One limit a change set goes over.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breach {
    pub entity: Entity,
    /// `delete`, `update` or `clear_demographics`.
    pub operation: &'static str,
    pub count: i64,
    /// Rows of the type active before the run (for `clear_demographics`: users holding
    /// demographics).
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
        let (what, of) = match self.operation {
            "delete" => ("deleted", "active"),
            "clear_demographics" => ("would lose their demographics", "holding demographics"),
            _ => ("updated", "active"),
        };
        write!(
            f,
            "{} {} {what} of {} {of}{share} over {}",
            self.entity, self.count, self.active, self.limit
        )
    }
}

/// What a run's change set comes to, for the gate.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub counts: BTreeMap<Entity, ChangeCounts>,
    /// Rows per type active before the run.
    pub active: BTreeMap<Entity, i64>,
    /// Users whose stored demographics this change set clears, of those holding any.
    pub demographics_cleared: i64,
    pub users_with_demographics: i64,
}

/// The limits a change set goes over; empty when it may be applied.
pub fn judge(
    changes: &Changes,
    limits: &BTreeMap<Entity, SafetyLimits>,
    demographics: &DemographicsLimits,
) -> Vec<Breach> {
    let mut breaches = Vec::new();
    for (entity, c) in &changes.counts {
        let limit = limits.get(entity).copied().unwrap_or_default();
        let active = changes.active.get(entity).copied().unwrap_or(0);
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
        // A reactivated row is judged like a created one (never held): it loses nothing, and
        // widening a district's `schools` brings rows back that way.
        let updated = c.updated;
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
    // Demographics going away is a change of sharing more often than of the roster (the app's
    // demographics permission switched off, an endpoint answering empty): judged like
    // deletions, with its own limit and reason.
    let cleared = changes.demographics_cleared;
    let holding = changes.users_with_demographics;
    let min_population = limits
        .get(&Entity::Users)
        .copied()
        .unwrap_or_default()
        .min_population;
    let breach = |limit: String| Breach {
        entity: Entity::Users,
        operation: "clear_demographics",
        count: cleared,
        active: holding,
        limit,
    };
    if cleared as u64 > demographics.max_clear_count {
        breaches.push(breach(format!(
            "max_demographics_clear_count = {}",
            demographics.max_clear_count
        )));
    } else if holding > 0
        && holding as u64 >= min_population
        && 100.0 * cleared as f64 / holding as f64 > demographics.max_clear_percent
    {
        breaches.push(breach(format!(
            "max_demographics_clear_percent = {}",
            demographics.max_clear_percent
        )));
    }
    breaches
}

/// Why a change set was (or would be) held, and how it is identified for `approve`.
#[derive(Debug, Clone, Serialize)]
pub struct Hold {
    pub fingerprint: String,
    pub breaches: Vec<Breach>,
    /// The operator approved exactly this change set, so it was applied.
    pub approved: bool,
}

/// What happens to a change set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limits.
    Apply,
    /// Over a limit, but exactly this change set was approved.
    ApplyApproved,
    /// Over a limit: kept for approval, nothing applied.
    Hold,
    /// Nothing is applied either way (the hold, if any, says what would happen).
    DryRun,
}

/// The gate, in one call: judges the change set and, only when it goes over a limit, asks
/// `approval` for its fingerprint and whether that exact change set was approved.
pub async fn gate<E, F, Fut>(
    changes: &Changes,
    limits: &BTreeMap<Entity, SafetyLimits>,
    demographics: &DemographicsLimits,
    dry_run: bool,
    approval: F,
) -> Result<(Verdict, Option<Hold>), E>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(String, bool), E>>,
{
    let breaches = judge(changes, limits, demographics);
    if breaches.is_empty() {
        let verdict = if dry_run {
            Verdict::DryRun
        } else {
            Verdict::Apply
        };
        return Ok((verdict, None));
    }
    let (fingerprint, approved) = approval().await?;
    let verdict = match (dry_run, approved) {
        (true, _) => Verdict::DryRun,
        (false, true) => Verdict::ApplyApproved,
        (false, false) => Verdict::Hold,
    };
    Ok((
        verdict,
        Some(Hold {
            fingerprint,
            breaches,
            approved,
        }),
    ))
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
        let changes = Changes {
            counts: BTreeMap::from([(entity, c)]),
            active: BTreeMap::from([(entity, active)]),
            ..Changes::default()
        };
        judge(&changes, &limits(), &DemographicsLimits::default())
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
    fn updates_over_the_percentage_are_held_and_reactivations_are_not_updates() {
        let c = ChangeCounts {
            updated: 760,
            reactivated: 600,
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
        let c = ChangeCounts {
            updated: 700,
            reactivated: 600,
            ..Default::default()
        };
        assert!(one(Entity::Users, c, 1000).is_empty());
    }

    #[test]
    fn creations_are_never_held() {
        let c = ChangeCounts {
            created: 1_000_000,
            ..Default::default()
        };
        assert!(one(Entity::Users, c, 0).is_empty());
    }

    #[test]
    fn demographics_cleared_have_their_own_limit() {
        let changes = |cleared| Changes {
            demographics_cleared: cleared,
            users_with_demographics: 1000,
            ..Changes::default()
        };
        let d = DemographicsLimits::default();
        assert!(judge(&changes(100), &limits(), &d).is_empty());
        let b = judge(&changes(101), &limits(), &d);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].operation, "clear_demographics");
        assert_eq!(b[0].limit, "max_demographics_clear_percent = 10");
        assert!(b[0].to_string().contains("would lose their demographics"));
    }

    #[tokio::test]
    async fn the_gate_asks_for_approval_only_over_a_limit() {
        let d = DemographicsLimits::default();
        let calm = Changes::default();
        let (v, hold) = safety_gate(&calm, false, || async {
            panic!("no fingerprint within the limits")
        })
        .await;
        assert_eq!((v, hold.is_none()), (Verdict::Apply, true));
        let big = Changes {
            counts: BTreeMap::from([(
                Entity::Users,
                ChangeCounts {
                    deleted: 600,
                    ..Default::default()
                },
            )]),
            active: BTreeMap::from([(Entity::Users, 1000)]),
            ..Changes::default()
        };
        for (dry_run, approved, want) in [
            (false, false, Verdict::Hold),
            (false, true, Verdict::ApplyApproved),
            (true, false, Verdict::DryRun),
        ] {
            let (v, hold) = gate::<(), _, _>(&big, &limits(), &d, dry_run, || async move {
                Ok(("fp".to_owned(), approved))
            })
            .await
            .unwrap();
            assert_eq!(v, want);
            assert_eq!(hold.unwrap().fingerprint, "fp");
        }
    }

    async fn safety_gate<F, Fut>(changes: &Changes, dry_run: bool, f: F) -> (Verdict, Option<Hold>)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(String, bool), ()>>,
    {
        gate(
            changes,
            &limits(),
            &DemographicsLimits::default(),
            dry_run,
            f,
        )
        .await
        .unwrap()
    }
}
