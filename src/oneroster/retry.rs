//! Backoff for transient failures: capped exponential with full jitter (what ClassLink asks for on
//! 429 and 5xx), and `Retry-After` parsing.

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
