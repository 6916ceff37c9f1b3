//! Backoff for transient failures: capped exponential with full jitter (what ClassLink asks for on
//! 429 and 5xx), and `Retry-After` parsing.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

pub const BASE: Duration = Duration::from_millis(500);
pub const CAP: Duration = Duration::from_secs(30);

/// The upper bound of the jittered delay before retry number `attempt` (1-based):
/// `min(CAP, BASE * 2^(attempt-1))`.
pub fn ceiling(attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    BASE.saturating_mul(factor).min(CAP)
}

/// Full jitter: uniform in `[0, ceiling(attempt)]`; a server's `Retry-After` is a floor (capped,
/// so a hostile or confused header cannot park the run for hours).
pub fn delay(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling = ceiling(attempt);
    let jittered = Duration::from_millis(rand::rng().random_range(0..=ceiling.as_millis() as u64));
    match retry_after {
        Some(after) => jittered.max(after.min(CAP * 4)),
        None => jittered,
    }
}

/// How transient failures are retried: per request up to `max_retries` times, per run within
/// the budget.
#[derive(Debug)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub budget: RetryBudget,
}

impl RetryPolicy {
    pub fn new(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            budget: RetryBudget::new(max_retries),
        }
    }
}

/// Retries allowed per run without any success to earn them: `max_retries` times this.
const BUDGET_FLOOR_FACTOR: u32 = 20;
/// Successful requests that earn one more retry beyond the floor.
const SUCCESSES_PER_EARNED_RETRY: u64 = 2;

/// The retries one run (one `OneRosterClient`) may spend across all its requests, token requests
/// included. There is no configuration key: the floor is `max_retries * 20`, and every two
/// successful requests earn one more, so a large district under steady light throttling still
/// completes while a server failing most requests stops the run instead of being hammered
/// `max_retries` times per page.
#[derive(Debug)]
pub struct RetryBudget {
    floor: u64,
    state: Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    spent: u64,
    successes: u64,
}

impl RetryBudget {
    pub fn new(max_retries: u32) -> RetryBudget {
        RetryBudget {
            floor: u64::from(max_retries.saturating_mul(BUDGET_FLOOR_FACTOR)),
            state: Mutex::new(BudgetState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        // The state is two counters updated in one statement each: a panic cannot leave it torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record_success(&self) {
        self.lock().successes += 1;
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_spend(&self) -> bool {
        let mut state = self.lock();
        let allowed = self.floor + state.successes / SUCCESSES_PER_EARNED_RETRY;
        if state.spent < allowed {
            state.spent += 1;
            true
        } else {
            false
        }
    }

    /// Retries spent so far.
    pub fn spent(&self) -> u64 {
        self.lock().spent
    }
}

/// `Retry-After`: delta-seconds or an HTTP-date (relative to `now`; a past date means now).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is RFC 2822 with the GMT zone.
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        assert_eq!(ceiling(1), Duration::from_millis(500));
        assert_eq!(ceiling(2), Duration::from_secs(1));
        assert_eq!(ceiling(4), Duration::from_secs(4));
        assert_eq!(ceiling(7), Duration::from_secs(30));
        assert_eq!(ceiling(1000), Duration::from_secs(30));
    }

    #[test]
    fn delay_stays_within_bounds() {
        for attempt in 1..12 {
            for _ in 0..50 {
                assert!(delay(attempt, None) <= ceiling(attempt));
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor_but_capped() {
        for _ in 0..20 {
            assert!(delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        }
        assert_eq!(delay(1, Some(Duration::from_secs(86_400))), CAP * 4);
    }

    #[test]
    fn budget_has_a_floor_and_grows_with_successes() {
        let budget = RetryBudget::new(2);
        for _ in 0..40 {
            assert!(budget.try_spend());
        }
        assert!(!budget.try_spend());
        budget.record_success();
        assert!(!budget.try_spend(), "one success does not earn a retry yet");
        budget.record_success();
        assert!(budget.try_spend());
        assert!(!budget.try_spend());
        assert_eq!(budget.spent(), 41);
        let none = RetryBudget::new(0);
        assert!(!none.try_spend());
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = DateTime::parse_from_rfc3339("1994-11-06T08:49:30Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }
}
