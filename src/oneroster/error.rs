//! What can go wrong talking to a OneRoster server. Every variant names the endpoint (relative
//! to the district's base URL) and what the operator should check. No variant carries a response
//! body of a successful page, a token, a secret or a signature.

use super::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{endpoint}: credentials rejected by the OneRoster server (HTTP 401); check the district's client id/secret or token"
    )]
    Unauthorized { endpoint: Endpoint },

    #[error(
        "token endpoint rejected the client credentials ({reason}); check client_id, the client secret and scope"
    )]
    CredentialsRejected { reason: String },

    #[error(
        "token endpoint {url} failed after {attempts} attempts: {detail}; {}",
        unreachable_hint(.detail, "token_url")
    )]
    TokenEndpoint {
        url: String,
        detail: String,
        attempts: u32,
    },

    #[error("{endpoint}: forbidden (HTTP 403): {}", forbidden_hint(.endpoint))]
    Forbidden { endpoint: Endpoint },

    #[error("{endpoint}: the endpoint does not exist on this server (HTTP 404 at {url}); {}", not_found_hint(.endpoint))]
    NotFound { endpoint: Endpoint, url: String },

    #[error(
        "{endpoint}: the server answered HTTP {status} with {content_type}, not a OneRoster JSON page (at {url}; it begins: {start}); a login or proxy page: check base_url and the credentials, or the proxy in front of the server"
    )]
    NotJson {
        endpoint: Endpoint,
        url: String,
        status: u16,
        content_type: String,
        start: String,
    },

    #[error(
        "{endpoint}: still rate limited (HTTP 429) after {attempts} attempts at {url}; the server throttles this client: lower concurrency or sync later"
    )]
    RateLimited {
        endpoint: Endpoint,
        url: String,
        attempts: u32,
    },

    #[error("{endpoint}: server error (HTTP {status}) after {attempts} attempts at {url}")]
    Server {
        endpoint: Endpoint,
        url: String,
        status: u16,
        attempts: u32,
    },

    #[error(
        "{endpoint}: request timed out after {attempts} attempts at {url}; check request_timeout"
    )]
    Timeout {
        endpoint: Endpoint,
        url: String,
        attempts: u32,
    },

    #[error(
        "{endpoint}: could not connect after {attempts} attempts to {url}: {detail}; {}",
        unreachable_hint(.detail, "base_url")
    )]
    Connect {
        endpoint: Endpoint,
        url: String,
        detail: String,
        attempts: u32,
    },

    #[error(
        "{endpoint}: page at offset {offset} has {got} records, expected {expected}; the server may clamp `limit` (lower page_size)"
    )]
    IncompletePage {
        endpoint: Endpoint,
        offset: usize,
        expected: usize,
        got: usize,
    },

    #[error(
        "{endpoint}: page at offset {offset} has {got} records, more than the {expected} requested"
    )]
    OversizedPage {
        endpoint: Endpoint,
        offset: usize,
        expected: usize,
        got: usize,
    },

    #[error(
        "{endpoint}: page at offset {offset} announces x-count {announced} but holds {got} records"
    )]
    CountMismatch {
        endpoint: Endpoint,
        offset: usize,
        announced: usize,
        got: usize,
    },

    #[error("{endpoint}: response at offset {offset} has no usable X-Total-Count header")]
    MissingTotal { endpoint: Endpoint, offset: usize },

    #[error(
        "{endpoint}: X-Total-Count moved from {first} to {now} at offset {offset} during the pull"
    )]
    TotalChanged {
        endpoint: Endpoint,
        offset: usize,
        first: usize,
        now: usize,
    },

    #[error("{endpoint}: unreadable page at offset {offset} after {attempts} attempts: {detail}")]
    Parse {
        endpoint: Endpoint,
        offset: usize,
        detail: String,
        attempts: u32,
    },

    #[error("{endpoint}: request refused (HTTP {status}){}", client_detail(.detail))]
    Client {
        endpoint: Endpoint,
        status: u16,
        detail: Option<String>,
    },

    #[error(
        "the run's retry budget is spent ({retries} retries); last failure: {last} at {url}; the server is failing or throttling most requests"
    )]
    RetryBudgetSpent {
        url: String,
        retries: u64,
        last: String,
    },

    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),
}

fn forbidden_hint(endpoint: Endpoint) -> String {
    let off = endpoint
        .off_switch
        .map(|key| {
            format!(", or set `{key}` in the district's configuration if the app does without it")
        })
        .unwrap_or_default();
    format!(
        "the app may not read {}: in ClassLink, share {} with the app{off}",
        endpoint.name, endpoint.permission
    )
}

fn not_found_hint(endpoint: Endpoint) -> String {
    match endpoint.off_switch {
        Some(key) => format!(
            "this provider does not serve {}: set `{key}` in the district's configuration (or check base_url)",
            endpoint.name
        ),
        None => "check base_url (it should end in the OneRoster root, /ims/oneroster/v1p1 for 1.1 or /ims/oneroster/rostering/v1p2 for 1.2) and oneroster_version"
            .to_owned(),
    }
}

/// What a transport failure (or, for the token endpoint, a failing status) tells the operator.
fn unreachable_hint(detail: &str, key: &str) -> String {
    match detail {
        "connection refused" => format!(
            "the district's server is down or unreachable (nothing listens at that address; check {key})"
        ),
        "HTTP 429" => "the server throttles this client: sync later".to_owned(),
        d if d.starts_with("HTTP 5") => "the district's server keeps failing".to_owned(),
        d if d.starts_with("HTTP ") => format!("check {key}"),
        _ => format!(
            "the district's server may be down or unreachable (check {key} and the network)"
        ),
    }
}

fn client_detail(detail: &Option<String>) -> String {
    match detail {
        Some(d) => format!(": {d}"),
        None => String::new(),
    }
}

impl FetchError {
    /// Whether the failure is about permissions or credentials (the audit reports these apart).
    pub fn is_permission(&self) -> bool {
        matches!(
            self,
            FetchError::Unauthorized { .. }
                | FetchError::CredentialsRejected { .. }
                | FetchError::Forbidden { .. }
        )
    }

    /// Whether the failure is about the whole server (its credentials, its token endpoint,
    /// its address, the run's retry budget), so that no other collection can be read either.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            FetchError::Unauthorized { .. }
                | FetchError::CredentialsRejected { .. }
                | FetchError::TokenEndpoint { .. }
                | FetchError::Connect { .. }
                | FetchError::RetryBudgetSpent { .. }
                | FetchError::InvalidConfig(_)
        )
    }

    /// A copy of a token endpoint's failure (the variants that can be one), for the requests
    /// after it.
    pub(crate) fn token_failure_copy(&self) -> Option<FetchError> {
        Some(match self {
            FetchError::CredentialsRejected { reason } => FetchError::CredentialsRejected {
                reason: reason.clone(),
            },
            FetchError::TokenEndpoint {
                url,
                detail,
                attempts,
            } => FetchError::TokenEndpoint {
                url: url.clone(),
                detail: detail.clone(),
                attempts: *attempts,
            },
            FetchError::RetryBudgetSpent { url, retries, last } => FetchError::RetryBudgetSpent {
                url: url.clone(),
                retries: *retries,
                last: last.clone(),
            },
            FetchError::InvalidConfig(m) => FetchError::InvalidConfig(m.clone()),
            _ => return None,
        })
    }

    /// The collection the failure is about, if it is about one.
    pub fn endpoint(&self) -> Option<Endpoint> {
        match self {
            FetchError::Unauthorized { endpoint }
            | FetchError::Forbidden { endpoint }
            | FetchError::NotFound { endpoint, .. }
            | FetchError::NotJson { endpoint, .. }
            | FetchError::RateLimited { endpoint, .. }
            | FetchError::Server { endpoint, .. }
            | FetchError::Timeout { endpoint, .. }
            | FetchError::Connect { endpoint, .. }
            | FetchError::IncompletePage { endpoint, .. }
            | FetchError::OversizedPage { endpoint, .. }
            | FetchError::CountMismatch { endpoint, .. }
            | FetchError::MissingTotal { endpoint, .. }
            | FetchError::TotalChanged { endpoint, .. }
            | FetchError::Parse { endpoint, .. }
            | FetchError::Client { endpoint, .. } => Some(*endpoint),
            _ => None,
        }
    }
}
