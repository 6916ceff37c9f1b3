//! Injected failures, switchable at run time, and the request statistics.
//!
//! All `*_every` counters run over collection requests only (not token or control requests),
//! so a test can predict exactly which request fails.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Every Nth collection request answers `server_error_status` with an imsx body.
    pub server_error_every: Option<u32>,
    /// 500, 502 or 503 (default 500).
    pub server_error_status: u16,
    /// Every Nth collection request answers 429 with `Retry-After: retry_after_secs`.
    pub rate_limit_every: Option<u32>,
    pub retry_after_secs: u32,
    /// Delay before answering (every response, or only every `delay_every`th).
    #[serde(with = "humantime_serde")]
    pub delay: Option<Duration>,
    pub delay_every: Option<u32>,
    /// Every Nth collection request gets a 200 whose JSON body is cut off mid-way.
    pub truncate_body_every: Option<u32>,
    /// The next `count` requests to this collection (path segment, e.g. "users") answer 500;
    /// `u32::MAX` means always.
    pub fail_path: Option<(String, u32)>,
    /// After N more collection requests the revision changes once (data identical).
    pub revision_change_after: Option<u32>,
    /// The revision changes on every collection request (a pull never sees it settle).
    pub revision_never_settles: bool,
    /// This collection always answers this status (e.g. ("demographics", 403)).
    pub status_for: Option<(String, u16)>,
    /// Overrides `SimConfig::page_cap` while set.
    pub page_cap: Option<usize>,
    /// Answer 400 `invalid_selection_field` to any request with `fields=` (servers that do not
    /// support field selection).
    pub reject_fields: bool,
    /// Answer 400 `invalid_filter_field` to any request with `filter=`.
    pub reject_filter: bool,
    /// Accept `filter=` and ignore it: the whole collection, as some servers do.
    pub ignore_filter: bool,
    /// Apply `filter=` to the records but announce the whole collection's size in
    /// `X-Total-Count` (a total counted before the filter).
    pub total_ignores_filter: bool,
    /// The 1.2 root answers 404 to everything (a server that serves only 1.1).
    pub without_v1p2: bool,
    /// This collection answers 200 with an HTML login page (a proxy in front of the server).
    pub html_for: Option<String>,
    /// `x-perm-rev` stays this value whatever the data does (a server whose revision does not
    /// move with its data).
    pub frozen_revision: Option<String>,
    /// The OAuth2 token endpoint answers this status (e.g. 500) instead of a token.
    pub token_status: Option<u16>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            server_error_every: None,
            server_error_status: 500,
            rate_limit_every: None,
            retry_after_secs: 1,
            delay: None,
            delay_every: None,
            truncate_body_every: None,
            fail_path: None,
            revision_change_after: None,
            revision_never_settles: false,
            status_for: None,
            page_cap: None,
            reject_fields: false,
            reject_filter: false,
            ignore_filter: false,
            total_ignores_filter: false,
            without_v1p2: false,
            html_for: None,
            frozen_revision: None,
            token_status: None,
        }
    }
}

/// Request counts since start or the last reset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests to collection and single-object endpoints.
    pub total: u64,
    /// Requests per collection path segment ("users", ...).
    pub per_collection: BTreeMap<String, u64>,
    /// Responses per status code (collection and single-object endpoints).
    pub per_status: BTreeMap<u16, u64>,
    /// Requests to the OAuth2 token endpoint.
    pub token_requests: u64,
}

/// The fault decision for one collection request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Injected {
    Status(u16),
    /// 200 with an HTML page.
    Html,
    RateLimited {
        retry_after_secs: u32,
    },
    ServerError(u16),
}

/// Live fault state: the configured faults plus their running counters.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    pub faults: Faults,
    /// Collection requests seen since the faults were set.
    pub seen: u64,
    fail_path_left: u32,
    revision_countdown: Option<u32>,
}

pub(crate) struct Decision {
    pub injected: Option<Injected>,
    pub truncate: bool,
    pub delay: Option<Duration>,
    pub bump_revision: bool,
}

impl FaultState {
    pub fn set(&mut self, faults: Faults) {
        self.fail_path_left = faults.fail_path.as_ref().map_or(0, |(_, n)| *n);
        self.revision_countdown = faults.revision_change_after;
        self.faults = faults;
        self.seen = 0;
    }

    /// Decides the fate of the next collection request.
    pub fn next(&mut self, collection: &str) -> Decision {
        self.seen += 1;
        let n = self.seen;
        let hits =
            |every: Option<u32>| every.is_some_and(|e| e > 0 && n.is_multiple_of(u64::from(e)));
        let f = &self.faults;

        let mut bump_revision = f.revision_never_settles;
        match self.revision_countdown {
            Some(0) => {
                bump_revision = true;
                self.revision_countdown = None;
            }
            Some(k) => self.revision_countdown = Some(k - 1),
            None => {}
        }

        let mut injected = None;
        if f.html_for.as_deref() == Some(collection) {
            injected = Some(Injected::Html);
        } else if let Some((path, status)) = &f.status_for
            && path == collection
        {
            injected = Some(Injected::Status(*status));
        } else if let Some((path, _)) = &f.fail_path
            && path == collection
            && self.fail_path_left > 0
        {
            if self.fail_path_left != u32::MAX {
                self.fail_path_left -= 1;
            }
            injected = Some(Injected::ServerError(500));
        } else if hits(f.rate_limit_every) {
            injected = Some(Injected::RateLimited {
                retry_after_secs: f.retry_after_secs,
            });
        } else if hits(f.server_error_every) {
            injected = Some(Injected::ServerError(f.server_error_status));
        }
        let delay = match (f.delay, f.delay_every) {
            (Some(d), None) => Some(d),
            (Some(d), every) if hits(every) => Some(d),
            _ => None,
        };
        Decision {
            injected,
            truncate: hits(f.truncate_body_every),
            delay,
            bump_revision,
        }
    }
}
