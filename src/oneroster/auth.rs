//! The three ways into a OneRoster server: OAuth2 client credentials (token cached, refreshed
//! before expiry and once on a 401), a long-lived bearer token (ClassLink's proxy), and OAuth 1.0a
//! request signing (ClassLink direct).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{AuthType, ClientId, ClientSecret, RequestTokenError, Scope, TokenResponse, TokenUrl};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use super::error::FetchError;
use super::retry::RetryPolicy;
use super::{oauth1, retry};
use crate::config::AuthConfig;

/// Refresh a token this long before it expires, or at 90 % of its lifetime if that is sooner
/// (short-lived tokens would otherwise be refreshed on every request).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

pub(crate) enum Auth {
    OAuth2(Box<OAuth2>),
    Bearer(SecretString),
    OAuth1 {
        client_id: String,
        client_secret: SecretString,
    },
}

pub(crate) struct OAuth2 {
    token_url: Url,
    client_id: String,
    client_secret: SecretString,
    scopes: Vec<String>,
    /// One refresh at a time: concurrent page fetches wait for and share the same token.
    cached: Mutex<Option<CachedToken>>,
    /// Once the token endpoint failed for good, every later request of the run gets the same
    /// answer at once: the run stops within the retries of one request, however many
    /// collections ask.
    failed: std::sync::Mutex<Option<FetchError>>,
    generation: AtomicU64,
    pub(crate) fetches: AtomicU64,
}

struct CachedToken {
    access: SecretString,
    refresh_at: Option<Instant>,
    generation: u64,
}

/// The `Authorization` header for one request and, for OAuth2, which token it used (so a 401
/// discards that token and not a fresher one another task already fetched).
pub(crate) struct Credential {
    pub header: SecretString,
    pub token_generation: Option<u64>,
}

impl Auth {
    pub(crate) fn from_config(auth: &AuthConfig) -> Auth {
        match auth {
            AuthConfig::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope,
            } => Auth::OAuth2(Box::new(OAuth2 {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                scopes: scope
                    .as_deref()
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
                cached: Mutex::new(None),
                failed: std::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
                fetches: AtomicU64::new(0),
            })),
            AuthConfig::Bearer { token } => Auth::Bearer(token.clone()),
            AuthConfig::OAuth1 {
                client_id,
                client_secret,
            } => Auth::OAuth1 {
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
            },
        }
    }

    /// Whether a 401 can be answered by fetching a new token.
    pub(crate) fn refreshable(&self) -> bool {
        matches!(self, Auth::OAuth2(_))
    }

    pub(crate) async fn credential(
        &self,
        http: &reqwest::Client,
        policy: &RetryPolicy,
        url: &str,
        query: &[(&str, String)],
    ) -> Result<Credential, FetchError> {
        match self {
            Auth::Bearer(token) => Ok(Credential {
                header: format!("Bearer {}", token.expose_secret()).into(),
                token_generation: None,
            }),
            Auth::OAuth1 {
                client_id,
                client_secret,
            } => Ok(Credential {
                header: oauth1::authorization(
                    url,
                    query,
                    client_id,
                    client_secret.expose_secret(),
                    chrono::Utc::now().timestamp(),
                    &oauth1::nonce(),
                )
                .into(),
                token_generation: None,
            }),
            Auth::OAuth2(oauth) => oauth.credential(http, policy).await,
        }
    }

    /// Forget the token a request was rejected with (if it is still the cached one).
    pub(crate) async fn invalidate(&self, generation: Option<u64>) {
        if let (Auth::OAuth2(oauth), Some(generation)) = (self, generation) {
            let mut cached = oauth.cached.lock().await;
            if cached.as_ref().is_some_and(|t| t.generation == generation) {
                *cached = None;
            }
        }
    }

    pub(crate) fn token_fetches(&self) -> u64 {
        match self {
            Auth::OAuth2(oauth) => oauth.fetches.load(Ordering::Relaxed),
            _ => 0,
        }
    }
}

/// Why one token request failed, as seen by our HTTP adapter.
#[derive(Debug, thiserror::Error)]
enum TokenHttpError {
    #[error("HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("{0}")]
    Transport(#[source] reqwest::Error),
}

impl OAuth2 {
    async fn credential(
        &self,
        http: &reqwest::Client,
        policy: &RetryPolicy,
    ) -> Result<Credential, FetchError> {
        let mut cached = self.cached.lock().await;
        let fresh = cached
            .as_ref()
            .is_some_and(|t| t.refresh_at.is_none_or(|at| Instant::now() < at));
        if !fresh {
            if let Some(failure) = self.earlier_failure() {
                return Err(failure);
            }
            match self.fetch(http, policy).await {
                Ok(token) => *cached = Some(token),
                Err(e) => {
                    if let Some(copy) = e.token_failure_copy() {
                        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(copy);
                    }
                    return Err(e);
                }
            }
        }
        match cached.as_ref() {
            Some(token) => Ok(Credential {
                header: format!("Bearer {}", token.access.expose_secret()).into(),
                token_generation: Some(token.generation),
            }),
            None => unreachable!("a token was cached just above"),
        }
    }

    fn earlier_failure(&self) -> Option<FetchError> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(FetchError::token_failure_copy)
    }

    async fn fetch(
        &self,
        http: &reqwest::Client,
        policy: &RetryPolicy,
    ) -> Result<CachedToken, FetchError> {
        let token_url = TokenUrl::new(self.token_url.to_string())
            .map_err(|e| FetchError::InvalidConfig(format!("token_url: {e}")))?;
        let client = BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_client_secret(ClientSecret::new(
                self.client_secret.expose_secret().to_owned(),
            ))
            .set_auth_type(AuthType::BasicAuth)
            .set_token_uri(token_url);
        let send = |request: oauth2::HttpRequest| send_token_request(http.clone(), request);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.fetches.fetch_add(1, Ordering::Relaxed);
            let mut exchange = client.exchange_client_credentials();
            for scope in &self.scopes {
                exchange = exchange.add_scope(Scope::new(scope.clone()));
            }
            let (detail, retry_after) = match exchange.request_async(&send).await {
                Ok(token) => {
                    let now = Instant::now();
                    let refresh_at = token
                        .expires_in()
                        .map(|lifetime| now + usable_for(lifetime));
                    let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                    policy.budget.record_success();
                    return Ok(CachedToken {
                        access: token.access_token().secret().clone().into(),
                        refresh_at,
                        generation,
                    });
                }
                Err(RequestTokenError::ServerResponse(response)) => {
                    // An OAuth error code (invalid_client, invalid_scope...) is a configuration
                    // problem: retrying would only hammer the token endpoint.
                    let reason = match response.error() {
                        BasicErrorResponseType::InvalidClient => "invalid_client".to_owned(),
                        other => other.to_string(),
                    };
                    return Err(FetchError::CredentialsRejected { reason });
                }
                Err(RequestTokenError::Request(TokenHttpError::Status {
                    status: status @ (400 | 401 | 403),
                    ..
                })) => {
                    return Err(FetchError::CredentialsRejected {
                        reason: format!("HTTP {status}"),
                    });
                }
                Err(RequestTokenError::Request(TokenHttpError::Status {
                    status,
                    retry_after,
                })) if retryable_status(status) => (format!("HTTP {status}"), retry_after),
                Err(RequestTokenError::Request(TokenHttpError::Status { status, .. })) => {
                    return Err(FetchError::TokenEndpoint {
                        url: self.token_url.to_string(),
                        detail: format!("HTTP {status}"),
                        attempts: attempt,
                    });
                }
                Err(RequestTokenError::Request(TokenHttpError::Transport(e))) => {
                    (transport_detail(&e), None)
                }
                Err(RequestTokenError::Parse(_, _)) => ("unreadable token response".into(), None),
                Err(RequestTokenError::Other(_)) => ("unexpected token response".into(), None),
            };
            if attempt > policy.max_retries {
                tracing::error!(url = %self.token_url, %detail, attempts = attempt, "giving up on token request: retries exhausted");
                return Err(FetchError::TokenEndpoint {
                    url: self.token_url.to_string(),
                    detail,
                    attempts: attempt,
                });
            }
            if !policy.budget.try_spend() {
                let retries = policy.budget.spent();
                tracing::error!(url = %self.token_url, %detail, retries, "giving up on token request: the run's retry budget is spent");
                return Err(FetchError::RetryBudgetSpent {
                    url: self.token_url.to_string(),
                    retries,
                    last: detail,
                });
            }
            let wait = retry::delay(attempt, retry_after);
            tracing::debug!(url = %self.token_url, %detail, attempt, delay_ms = wait.as_millis() as u64, "retrying token request");
            tokio::time::sleep(wait).await;
        }
    }
}

/// How long a token of `lifetime` is used before it is refreshed.
fn usable_for(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(REFRESH_MARGIN.min(lifetime / 10))
}

pub(crate) fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

pub(crate) fn transport_detail(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() && io_kind(e) == Some(std::io::ErrorKind::ConnectionRefused) {
        // Nothing listens there: the server is down (or base_url names the wrong host/port).
        "connection refused".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        "transport error".into()
    }
}

/// The I/O error kind somewhere in an error's causes, if any. Only the kind is kept: the
/// messages may name hosts a resolver returned, which is noise in an operator's log.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cause = c.source();
    }
    None
}

/// Our reqwest client as the oauth2 crate's HTTP client. Statuses the token request should not
/// be parsed for (401, throttling, server errors) come back as errors we can classify.
async fn send_token_request(
    http: reqwest::Client,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, TokenHttpError> {
    let (parts, body) = request.into_parts();
    let response = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(TokenHttpError::Transport)?;
    let status = response.status().as_u16();
    if status == 401 || status == 403 || retryable_status(status) || status >= 500 {
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, chrono::Utc::now()));
        return Err(TokenHttpError::Status {
            status,
            retry_after,
        });
    }
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(TokenHttpError::Transport)?;
    let mut out = http::Response::new(body.to_vec());
    *out.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    *out.headers_mut() = headers;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_before_expiry() {
        // ClassLink-style 6 h token: refreshed a minute early.
        assert_eq!(
            usable_for(Duration::from_secs(21_600)),
            Duration::from_secs(21_540)
        );
        // Short tokens: at 90 % of their life, not on every request.
        assert_eq!(
            usable_for(Duration::from_secs(100)),
            Duration::from_secs(90)
        );
        assert_eq!(usable_for(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn scope_is_a_space_separated_list() {
        let auth = Auth::from_config(&AuthConfig::OAuth2 {
            token_url: Url::parse("https://example.test/token").unwrap(),
            client_id: "id".into(),
            client_secret: "secret".to_owned().into(),
            scope: Some(" a  b ".into()),
        });
        let Auth::OAuth2(oauth) = auth else {
            panic!("expected OAuth2")
        };
        assert_eq!(oauth.scopes, vec!["a", "b"]);
    }
}
