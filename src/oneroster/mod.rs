//! The OneRoster client: the only code that speaks HTTP. It authenticates, pages through a
//! collection in `sourcedId` order, retries what is transient, and refuses anything that would
//! make a partial pull look complete (short pages, a missing or moving total).

mod auth;
mod error;
mod oauth1;
mod retry;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt, stream};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::value::RawValue;

pub use error::FetchError;
pub use wire::{DEMOGRAPHICS_FIELDS, WireRecord};

use crate::config::{DistrictConfig, OneRosterVersion, V1P1_ROOT, V1P2_ROOT};
use crate::domain::{Code, Finding, MISSING_ID};
use auth::{Auth, retryable_status, transport_detail};

/// A OneRoster collection endpoint (a reference to its definition in the collection registry,
/// see `registry`).
pub type Endpoint = &'static EndpointSpec;

/// What the client and its errors know of a collection endpoint.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    /// Path relative to the base URL; also the collection envelope key (`{"users": [...]}`).
    pub path: &'static str,
    /// The collection's name in findings and logs (`academic_sessions`, `demographics`...).
    pub name: &'static str,
    /// The configuration key that turns the collection off, when there is one.
    pub off_switch: Option<&'static str>,
    /// What the district shares in ClassLink for the app to read it.
    pub permission: &'static str,
}

impl EndpointSpec {
    /// The key of the collection envelope (1.1's keys are the path names).
    pub fn envelope_key(&self) -> &'static str {
        self.path
    }
}

impl std::fmt::Display for EndpointSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.path)
    }
}

/// Optional `filter` and `fields` of a pull. Default: the whole collection, all fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PullQuery {
    /// A OneRoster filter expression, unencoded, e.g. `dateLastModified>'2026-11-20T08:30:00Z'`.
    pub filter: Option<String>,
    pub fields: Option<Vec<&'static str>>,
}

/// One page of a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub offset: usize,
    /// `X-Total-Count` (the same on every page of a pull, or the pull fails).
    pub total: usize,
    /// ClassLink's `x-perm-rev`, when sent.
    pub revision: Option<String>,
    pub records: Vec<T>,
    /// Records that could not be read as `T`, reported by id (`record_unreadable`).
    pub unreadable: Vec<Finding>,
}

/// Counters since the client was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Collection requests sent (retries included, token requests excluded).
    pub requests: u64,
    /// Collection requests that were retries of a transient failure.
    pub retries: u64,
    /// Token endpoint requests (OAuth2 only).
    pub token_requests: u64,
    /// Total time spent on collection requests (sending, waiting, reading and parsing the
    /// page), for the fetch-latency metric (with `requests`, the mean).
    pub request_time: std::time::Duration,
}

pub struct OneRosterClient {
    http: reqwest::Client,
    auth: Arc<Auth>,
    /// Base URL as configured, without a trailing slash, used verbatim (it may hold a
    /// percent-encoded application id that must not be re-encoded).
    base: String,
    page_size: usize,
    concurrency: usize,
    retry: retry::RetryPolicy,
    requests: AtomicU64,
    retries: AtomicU64,
    request_micros: AtomicU64,
}

impl std::fmt::Debug for OneRosterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneRosterClient")
            .field("base", &self.base)
            .field("page_size", &self.page_size)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// One page request.
struct Request<'a> {
    endpoint: Endpoint,
    full_url: &'a str,
    offset: usize,
    known_total: Option<usize>,
    limit: usize,
    /// Which attempt this is (1 for the first).
    attempt: u32,
}

/// What one attempt at a page came to, before retry policy is applied.
enum Attempt<T> {
    Done(Page<T>),
    Transient {
        failure: Transient,
        retry_after: Option<Duration>,
    },
    Unauthorized,
}

enum Transient {
    Status(u16),
    Timeout,
    Connect(String),
    Parse(String),
}

impl OneRosterClient {
    pub fn new(district: &DistrictConfig) -> Result<Self, FetchError> {
        // Another part of the program may have installed it already; either way one is there.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if district.page_size == 0 {
            return Err(FetchError::InvalidConfig(
                "page_size must be at least 1".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .tls_backend_rustls()
            .connect_timeout(district.connect_timeout)
            .timeout(district.request_timeout)
            .user_agent(concat!("oneroster-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::InvalidConfig(format!("HTTP client: {e}")))?;
        Ok(OneRosterClient {
            http,
            auth: Arc::new(Auth::from_config(&district.auth)),
            base: district.base_url.as_str().trim_end_matches('/').to_owned(),
            page_size: district.page_size as usize,
            concurrency: district.concurrency.max(1),
            retry: retry::RetryPolicy::new(district.max_retries),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            request_micros: AtomicU64::new(0),
        })
    }

    /// A client for the district's server at the root of the version it speaks: `base_url` as
    /// configured for `"1.1"` and `"1.2"`; for `"auto"`, the 1.2 root if the server serves it
    /// (a one-record page of orgs), else the 1.1 root on the same host. Returns the version.
    pub async fn connect(
        district: &DistrictConfig,
    ) -> Result<(OneRosterClient, OneRosterVersion), FetchError> {
        let mut client = OneRosterClient::new(district)?;
        let version = match district.version {
            OneRosterVersion::Auto => client.detect_version().await?,
            fixed => fixed,
        };
        Ok((client, version))
    }

    async fn detect_version(&mut self) -> Result<OneRosterVersion, FetchError> {
        let server = self
            .base
            .strip_suffix(V1P1_ROOT)
            .or_else(|| self.base.strip_suffix(V1P2_ROOT))
            .map(str::to_owned)
            .ok_or_else(|| {
                FetchError::InvalidConfig(format!(
                    "oneroster_version = \"auto\" needs a base_url ending in {V1P1_ROOT} or {V1P2_ROOT}"
                ))
            })?;
        self.base = format!("{server}{V1P2_ROOT}");
        let fallback = match self.probe::<wire::Org>().await {
            Ok(_) => {
                tracing::info!(
                    version = "1.2",
                    base_url = %self.base,
                    "OneRoster version detected: the server serves 1.2"
                );
                return Ok(OneRosterVersion::V1p2);
            }
            // Not served there (or not to this app): 1.1 it is. Anything else (credentials,
            // a server that keeps failing) would fail on the 1.1 root too.
            Err(
                e @ (FetchError::NotFound { .. }
                | FetchError::Forbidden { .. }
                | FetchError::NotJson { .. }
                | FetchError::Client { .. }),
            ) => e,
            Err(e) => return Err(e),
        };
        self.base = format!("{server}{V1P1_ROOT}");
        tracing::info!(
            version = "1.1",
            base_url = %self.base,
            reason = %fallback,
            "OneRoster version detected: no 1.2 at the 1.2 root, using 1.1"
        );
        Ok(OneRosterVersion::V1p1)
    }

    /// The root requests go to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// How many page requests this client keeps in flight at most.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    pub fn stats(&self) -> ClientStats {
        ClientStats {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            token_requests: self.auth.token_fetches(),
            request_time: std::time::Duration::from_micros(
                self.request_micros.load(Ordering::Relaxed),
            ),
        }
    }

    /// The pages of one collection, in offset order. The first page learns the total; the rest
    /// are fetched up to `concurrency` at a time and yielded in order. The stream ends after the
    /// first error.
    pub fn pages<T: WireRecord>(
        &self,
        query: PullQuery,
    ) -> impl Stream<Item = Result<Page<T>, FetchError>> + Send + '_ {
        let endpoint = T::ENDPOINT;
        let query = Arc::new(query);
        let first_query = query.clone();
        stream::once(async move { self.fetch_page::<T>(endpoint, &first_query, 0, None).await })
            .flat_map(move |first| {
                let rest = match &first {
                    Ok(page) => {
                        let total = page.total;
                        let query = query.clone();
                        let offsets = (self.page_size..total).step_by(self.page_size);
                        stream::iter(offsets)
                            .map(move |offset| {
                                let query = query.clone();
                                async move {
                                    self.fetch_page::<T>(endpoint, &query, offset, Some(total))
                                        .await
                                }
                            })
                            .buffered(self.concurrency)
                            .left_stream()
                    }
                    Err(_) => stream::empty().right_stream(),
                };
                stream::once(async move { first }).chain(rest)
            })
            .scan(false, |failed, item| {
                let next = if *failed { None } else { Some(item) };
                *failed = matches!(next, Some(Err(_)));
                async move { next }
            })
    }

    fn params(
        &self,
        offset: usize,
        limit: usize,
        query: &PullQuery,
    ) -> Vec<(&'static str, String)> {
        let mut params = vec![
            ("limit", limit.to_string()),
            ("offset", offset.to_string()),
            ("sort", "sourcedId".to_owned()),
            ("orderBy", "asc".to_owned()),
        ];
        if let Some(filter) = &query.filter {
            params.push(("filter", filter.clone()));
        }
        if let Some(fields) = &query.fields {
            params.push(("fields", fields.join(",")));
        }
        params
    }

    /// How many records the server holds in a collection and the data's revision, from a
    /// one-record page, unfiltered (`X-Total-Count`, ClassLink's `x-perm-rev`).
    pub async fn probe<T: WireRecord>(&self) -> Result<(usize, Option<String>), FetchError> {
        self.fetch_sized::<T>(T::ENDPOINT, &PullQuery::default(), 0, None, 1)
            .await
            .map(|page| (page.total, page.revision))
    }

    /// One page, with retries of transient failures and one token refresh on a 401.
    async fn fetch_page<T: WireRecord>(
        &self,
        endpoint: Endpoint,
        query: &PullQuery,
        offset: usize,
        known_total: Option<usize>,
    ) -> Result<Page<T>, FetchError> {
        self.fetch_sized(endpoint, query, offset, known_total, self.page_size)
            .await
    }

    async fn fetch_sized<T: WireRecord>(
        &self,
        endpoint: Endpoint,
        query: &PullQuery,
        offset: usize,
        known_total: Option<usize>,
        limit: usize,
    ) -> Result<Page<T>, FetchError> {
        let url = format!("{}/{}", self.base, endpoint.path);
        let params = self.params(offset, limit, query);
        let full_url = format!("{url}?{}", oauth1::query_string(&params));
        let mut attempt: u32 = 0;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let credential = self
                .auth
                .credential(&self.http, &self.retry, &url, &params)
                .await?;
            let started = std::time::Instant::now();
            let outcome = self
                .attempt::<T>(
                    &Request {
                        endpoint,
                        full_url: &full_url,
                        offset,
                        known_total,
                        limit,
                        attempt,
                    },
                    credential.header,
                )
                .await;
            self.request_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            let outcome = outcome?;
            let (failure, retry_after) = match outcome {
                Attempt::Done(page) => {
                    self.retry.budget.record_success();
                    return Ok(page);
                }
                Attempt::Unauthorized if self.auth.refreshable() && !refreshed => {
                    // The token may have been revoked or expired early: one fresh token, once.
                    refreshed = true;
                    attempt -= 1;
                    self.auth.invalidate(credential.token_generation).await;
                    continue;
                }
                Attempt::Unauthorized => return Err(FetchError::Unauthorized { endpoint }),
                Attempt::Transient {
                    failure,
                    retry_after,
                } => (failure, retry_after),
            };
            let status = match &failure {
                Transient::Status(s) => Some(*s),
                _ => None,
            };
            if attempt > self.retry.max_retries {
                tracing::error!(
                    url = %full_url,
                    status,
                    failure = failure.describe(),
                    attempts = attempt,
                    "giving up on OneRoster request: retries exhausted"
                );
                return Err(exhausted(endpoint, &full_url, offset, failure, attempt));
            }
            if !self.retry.budget.try_spend() {
                let retries = self.retry.budget.spent();
                tracing::error!(
                    url = %full_url,
                    status,
                    failure = failure.describe(),
                    retries,
                    "giving up on OneRoster request: the run's retry budget is spent"
                );
                return Err(FetchError::RetryBudgetSpent {
                    url: full_url,
                    retries,
                    last: failure.describe(),
                });
            }
            let wait = retry::delay(attempt, retry_after);
            tracing::debug!(
                url = %full_url,
                status,
                failure = failure.describe(),
                attempt,
                delay_ms = wait.as_millis() as u64,
                "retrying OneRoster request"
            );
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt<T: WireRecord>(
        &self,
        request: &Request<'_>,
        authorization: secrecy::SecretString,
    ) -> Result<Attempt<T>, FetchError> {
        let &Request {
            endpoint,
            full_url,
            offset,
            known_total,
            limit,
            attempt: attempt_number,
        } = request;
        let mut auth_value = HeaderValue::from_str(authorization.expose_secret())
            .map_err(|_| FetchError::InvalidConfig("credential is not a valid header".into()))?;
        auth_value.set_sensitive(true);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .http
            .get(full_url)
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, auth_value)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                let failure = if e.is_timeout() {
                    Transient::Timeout
                } else {
                    Transient::Connect(transport_detail(&e))
                };
                return Ok(Attempt::Transient {
                    failure,
                    retry_after: None,
                });
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        match status {
            200..=299 => {}
            401 => return Ok(Attempt::Unauthorized),
            403 => return Err(FetchError::Forbidden { endpoint }),
            404 => {
                return Err(FetchError::NotFound {
                    endpoint,
                    url: full_url.to_owned(),
                });
            }
            s if retryable_status(s) => {
                return Ok(Attempt::Transient {
                    failure: Transient::Status(s),
                    retry_after: retry_after(&headers),
                });
            }
            s => {
                // Only the imsx description/code are kept from an error body: they name the
                // problem (e.g. invalid_filter_field) and hold no roster data.
                let detail = response.bytes().await.ok().and_then(|b| imsx_detail(&b));
                return Err(FetchError::Client {
                    endpoint,
                    status: s,
                    detail,
                });
            }
        }
        let content_type = header_str(&headers, "content-type").map(str::to_owned);
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => {
                let failure = if e.is_timeout() {
                    Transient::Timeout
                } else {
                    Transient::Parse("body cut short".into())
                };
                return Ok(Attempt::Transient {
                    failure,
                    retry_after: None,
                });
            }
        };
        // A login or proxy page answering 200: retrying gets the same page. Only a body that
        // is not declared JSON is quoted (a JSON body may hold roster data).
        if !looks_like_json(content_type.as_deref(), &body) {
            return Err(FetchError::NotJson {
                endpoint,
                url: full_url.to_owned(),
                status,
                content_type: content_type.unwrap_or_else(|| "none".into()),
                start: body_start(&body),
            });
        }
        // Parsing a page of thousands of records is CPU work: it runs on the blocking pool, so
        // pages are parsed while the consumer normalizes and stages earlier ones.
        let parsed = tokio::task::spawn_blocking(move || parse_page::<T>(&body, endpoint))
            .await
            .unwrap_or_else(|e| Err(PageShapeError::Shape(format!("page parser failed: {e}"))));
        let (records, unreadable, len) = match parsed {
            Ok(parsed) => parsed,
            Err(PageShapeError::Truncated(detail)) => {
                return Ok(Attempt::Transient {
                    failure: Transient::Parse(detail),
                    retry_after: None,
                });
            }
            Err(PageShapeError::Shape(detail)) => {
                return Err(FetchError::Parse {
                    endpoint,
                    offset,
                    detail,
                    attempts: attempt_number,
                });
            }
        };
        let page = check_page(endpoint, &headers, offset, limit, known_total, len)?;
        Ok(Attempt::Done(Page {
            offset,
            total: page.total,
            revision: page.revision,
            records,
            unreadable,
        }))
    }
}

impl Transient {
    fn describe(&self) -> String {
        match self {
            Transient::Status(429) => "rate limited (HTTP 429)".into(),
            Transient::Status(s) => format!("HTTP {s}"),
            Transient::Timeout => "timed out".into(),
            Transient::Connect(d) | Transient::Parse(d) => d.clone(),
        }
    }
}

fn exhausted(
    endpoint: Endpoint,
    url: &str,
    offset: usize,
    failure: Transient,
    attempts: u32,
) -> FetchError {
    let url = url.to_owned();
    match failure {
        Transient::Status(429) => FetchError::RateLimited {
            endpoint,
            url,
            attempts,
        },
        Transient::Status(408) | Transient::Timeout => FetchError::Timeout {
            endpoint,
            url,
            attempts,
        },
        Transient::Status(status) => FetchError::Server {
            endpoint,
            url,
            status,
            attempts,
        },
        Transient::Connect(detail) => FetchError::Connect {
            endpoint,
            url,
            detail,
            attempts,
        },
        Transient::Parse(detail) => FetchError::Parse {
            endpoint,
            offset,
            detail,
            attempts,
        },
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, chrono::Utc::now()))
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

struct PageMeta {
    total: usize,
    revision: Option<String>,
}

/// The paging rules: a total is required and fixed for the pull; each page holds exactly
/// `min(limit, total - offset)` records (a short page is never "the end of the data").
fn check_page(
    endpoint: Endpoint,
    headers: &HeaderMap,
    offset: usize,
    limit: usize,
    known_total: Option<usize>,
    got: usize,
) -> Result<PageMeta, FetchError> {
    // The first page must announce the total; a later page that omits it is read against the
    // first page's (some servers only send it once), one that announces another is an error.
    let total = header_str(headers, "x-total-count")
        .and_then(|v| v.parse::<usize>().ok())
        .or(known_total)
        .ok_or(FetchError::MissingTotal { endpoint, offset })?;
    if let Some(first) = known_total
        && first != total
    {
        return Err(FetchError::TotalChanged {
            endpoint,
            offset,
            first,
            now: total,
        });
    }
    if let Some(announced) = header_str(headers, "x-count").and_then(|v| v.parse::<usize>().ok())
        && announced != got
    {
        return Err(FetchError::CountMismatch {
            endpoint,
            offset,
            announced,
            got,
        });
    }
    let expected = limit.min(total.saturating_sub(offset));
    if got < expected {
        return Err(FetchError::IncompletePage {
            endpoint,
            offset,
            expected,
            got,
        });
    }
    if got > expected {
        return Err(FetchError::OversizedPage {
            endpoint,
            offset,
            expected,
            got,
        });
    }
    let revision = header_str(headers, "x-perm-rev")
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    Ok(PageMeta { total, revision })
}

/// What a page body came to, for code outside the client that reads page bodies directly (the
/// property tests and the fuzz target): the records, the unreadable ones by id, or why the
/// body is no page (`retryable`: it ends early, as a cut connection leaves it).
pub fn read_page<T: WireRecord>(body: &[u8]) -> Result<(Vec<T>, Vec<Finding>), PageError> {
    match parse_page::<T>(body, T::ENDPOINT) {
        Ok((records, unreadable, _)) => Ok((records, unreadable)),
        Err(PageShapeError::Truncated(detail)) => Err(PageError {
            retryable: true,
            detail,
        }),
        Err(PageShapeError::Shape(detail)) => Err(PageError {
            retryable: false,
            detail,
        }),
    }
}

/// A page body that is not a page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct PageError {
    pub retryable: bool,
    pub detail: String,
}

enum PageShapeError {
    /// Not JSON or cut short: usually a network fault, worth a retry.
    Truncated(String),
    /// Valid JSON of the wrong shape: retrying will not help.
    Shape(String),
}

/// The raw records of a page: the envelope's array, or a bare array. Each record stays raw text
/// (no `Value` tree) until it is read into its wire type.
/// A page's records: the readable ones, the unreadable ones reported by id, and how many the
/// page held.
type ParsedPage<T> = (Vec<T>, Vec<Finding>, usize);

fn parse_page<T: WireRecord>(
    body: &[u8],
    endpoint: Endpoint,
) -> Result<ParsedPage<T>, PageShapeError> {
    let raw = page_records(body, endpoint)?;
    let mut records = Vec::with_capacity(raw.len());
    let mut unreadable = Vec::new();
    for record in &raw {
        match read_record::<T>(record) {
            Ok(r) => records.push(r),
            Err(skip) => unreadable.push(skip),
        }
    }
    Ok((records, unreadable, raw.len()))
}

/// Whether a syntax error at `line`/`column` (1-based, as serde_json counts them) is a number
/// cut short: the error is at the body's last byte (trailing whitespace aside) and that byte
/// is one a number cannot end with (`-`, `+`, `.`, `e`, `E`).
fn at_end(body: &[u8], line: usize, column: usize) -> bool {
    let end = body.len()
        - body
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    if !matches!(body[..end].last(), Some(b'-' | b'+' | b'.' | b'e' | b'E')) {
        return false;
    }
    let start = if line <= 1 {
        0
    } else {
        match body
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line - 2)
        {
            Some((i, _)) => i + 1,
            None => return false,
        }
    };
    start + column >= end
}

fn page_records(body: &[u8], endpoint: Endpoint) -> Result<Vec<&RawValue>, PageShapeError> {
    // Only a body that ends too early is worth another try (a connection cut mid-page); JSON
    // that is wrong is wrong again on the next request.
    let classify = |e: serde_json::Error| match e.classify() {
        serde_json::error::Category::Eof | serde_json::error::Category::Io => {
            PageShapeError::Truncated(format!(
                "the page ends early (line {} column {})",
                e.line(),
                e.column()
            ))
        }
        // A body cut inside a number (`1.`, `-`, `2e`) is a syntax error at its last byte to
        // serde_json, but cut short all the same.
        serde_json::error::Category::Syntax if at_end(body, e.line(), e.column()) => {
            PageShapeError::Truncated(format!(
                "the page ends early, inside a value (line {} column {})",
                e.line(),
                e.column()
            ))
        }
        serde_json::error::Category::Syntax => PageShapeError::Shape(format!(
            "not valid JSON at line {} column {}",
            e.line(),
            e.column()
        )),
        // The wrong shape is seen before the end: a cut body says so only when scanned whole
        // (on this error path only).
        serde_json::error::Category::Data
            if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err_and(|scan| {
                scan.is_eof() || (scan.is_syntax() && at_end(body, scan.line(), scan.column()))
            }) =>
        {
            PageShapeError::Truncated("the page ends early".to_owned())
        }
        serde_json::error::Category::Data => PageShapeError::Shape(format!(
            "expected a `{}` array: {}",
            endpoint.envelope_key(),
            sanitize(&e.to_string())
        )),
    };
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return serde_json::from_slice::<Vec<&RawValue>>(body).map_err(classify);
    }
    // One pass: the collection's array split into raw records, every other member skipped
    // (a member repeated: the last one counts, as a map would keep it).
    let key = endpoint.envelope_key();
    let mut de = serde_json::Deserializer::from_slice(body);
    let records = serde::de::DeserializeSeed::deserialize(Envelope(key), &mut de)
        .and_then(|records| de.end().map(|()| records))
        .map_err(classify)?;
    records.ok_or_else(|| PageShapeError::Shape(format!("the response has no `{key}` collection")))
}

/// A page's envelope object: the records under `.0` as raw values.
struct Envelope<'k>(&'k str);

impl<'de> serde::de::DeserializeSeed<'de> for Envelope<'_> {
    type Value = Option<Vec<&'de RawValue>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Envelope<'_> {
    type Value = Option<Vec<&'de RawValue>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a page object with a `{}` array", self.0)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut records = None;
        while let Some(member) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if member == self.0 {
                records = Some(map.next_value::<Vec<&'de RawValue>>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(records)
    }
}

/// One record read leniently: failure skips the record, reported by id, never the page.
fn read_record<T: WireRecord>(raw: &RawValue) -> Result<T, Finding> {
    // Fast path; the path-tracking second read runs only for the rare bad record.
    if let Ok(record) = serde_json::from_str::<T>(raw.get()) {
        return Ok(record);
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
        #[derive(Deserialize)]
        struct IdProbe {
            #[serde(rename = "sourcedId")]
            sourced_id: Option<String>,
        }
        let sourced_id = serde_json::from_str::<IdProbe>(raw.get())
            .ok()
            .and_then(|p| p.sourced_id)
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| MISSING_ID.to_owned());
        let path = e.path().to_string();
        let reason = if path.is_empty() || path == "." {
            format!("record: {}", sanitize(&e.inner().to_string()))
        } else {
            format!("field `{path}`: {}", sanitize(&e.inner().to_string()))
        };
        Finding::new(Code::RecordUnreadable, T::ENDPOINT.name, sourced_id, reason)
    })
}

/// Whether a 200 answer can be a OneRoster page: declared JSON, or undeclared and starting
/// like JSON.
fn looks_like_json(content_type: Option<&str>, body: &[u8]) -> bool {
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    match content_type.map(|c| c.to_ascii_lowercase()) {
        Some(c) if c.contains("json") => true,
        // text/plain and the like: trust the body when it starts like JSON.
        Some(c) if c.starts_with("text/html") || c.contains("xml") => false,
        _ => matches!(first, Some(b'{') | Some(b'[')),
    }
}

/// The start of a body that is not JSON, safe to log: printable ASCII only, white space
/// folded, at most 80 characters.
fn body_start(body: &[u8]) -> String {
    let mut out = String::new();
    let mut space = false;
    for &b in body.iter().take(400) {
        let c = b as char;
        if c.is_ascii_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if !c.is_ascii_graphic() {
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
        if out.len() >= 80 {
            out.push_str("...");
            break;
        }
    }
    out
}

/// A serde error message without the offending value (it may be personal data):
/// `invalid type: string "x", expected a boolean at line 1 column 9` -> `invalid type, expected
/// a boolean`.
fn sanitize(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    let kind = message.split(':').next().unwrap_or(message);
    match message.rfind(", expected ") {
        Some(i) if message.contains(':') => format!("{kind}{}", &message[i..]),
        _ if message.contains(':') => kind.to_owned(),
        _ => message.to_owned(),
    }
}

/// `imsx_description` / `imsx_CodeMinor` of an error body, when it has them.
fn imsx_detail(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let status = value.get("imsx_statusInfo").unwrap_or(&value);
    let status = match status {
        serde_json::Value::Array(items) => items.first()?,
        other => other,
    };
    let description = status.get("imsx_description").and_then(|v| v.as_str());
    let minor = status
        .get("imsx_CodeMinor")
        .or_else(|| status.get("imsx_codeMinor"))
        .and_then(|m| {
            m.as_str().map(str::to_owned).or_else(|| {
                // 1.1 nests it: {"imsx_codeMinorField": [{"imsx_codeMinorFieldValue": ".."}]}
                m.get("imsx_codeMinorField")?
                    .get(0)?
                    .get("imsx_codeMinorFieldValue")?
                    .as_str()
                    .map(str::to_owned)
            })
        });
    match (description, minor) {
        (Some(d), Some(m)) => Some(format!("{d} ({m})")),
        (Some(d), None) => Some(d.to_owned()),
        (None, Some(m)) => Some(m),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USERS: Endpoint = <wire::User as WireRecord>::ENDPOINT;
    const ORGS: Endpoint = <wire::Org as WireRecord>::ENDPOINT;
    const DEMOGRAPHICS: Endpoint = <wire::Demographics as WireRecord>::ENDPOINT;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn envelope_and_bare_array_are_both_pages() {
        let body = br#"{"users":[{"sourcedId":"a"},{"sourcedId":"b"}],"other":1}"#;
        assert_eq!(page_records(body, USERS).ok().unwrap().len(), 2);
        let bare = br#" [{"sourcedId":"a"}]"#;
        assert_eq!(page_records(bare, USERS).ok().unwrap().len(), 1);
    }

    #[test]
    fn html_or_undeclared_non_json_is_not_a_page_and_its_start_is_quoted_safely() {
        assert!(looks_like_json(
            Some("application/json; charset=utf-8"),
            b"<html>"
        ));
        assert!(!looks_like_json(Some("text/html; charset=utf-8"), b"{}"));
        assert!(looks_like_json(Some("text/plain"), b" {\"users\":[]}"));
        assert!(looks_like_json(None, b"[]"));
        assert!(!looks_like_json(None, b"<!doctype html>"));
        let page = b"<!DOCTYPE html>\n<html>\n  <head><title>Sign in</title>\x01</head>";
        assert_eq!(
            body_start(page),
            "<!DOCTYPE html> <html> <head><title>Sign in</title></head>"
        );
        assert!(body_start(&[b'x'; 500]).ends_with("..."));
    }

    #[test]
    fn truncated_body_is_transient_and_wrong_shape_is_not() {
        let cut: &[&[u8]] = &[
            br#"{"users":[{"sourcedId":"a"},{"sourc"#,
            // Cut inside a number: a syntax error to serde_json, a cut page all the same.
            br#"{"users":[{"sourcedId":"a","n":1."#,
            br#"{"users":[{"sourcedId":"a","n":-"#,
            b"{\"users\":[{\"sourcedId\":\"a\",\n\"n\":2e  ",
            // The wrong shape, cut: a cut page.
            br#"{"users":{"sourcedId":"a","n":1."#,
        ];
        for body in cut {
            let read = page_records(body, USERS);
            assert!(
                matches!(read, Err(PageShapeError::Truncated(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let wrong: &[&[u8]] = &[
            br#"{"users":[{"sourcedId":"a"}}"#,
            br#"{"users":[{"sourcedId":"a"} x]}"#,
            br#"{"classes":[]}"#,
            br#"{"users":{"sourcedId":"a"}}"#,
        ];
        for body in wrong {
            let read = page_records(body, USERS);
            assert!(
                matches!(read, Err(PageShapeError::Shape(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn unreadable_record_is_skipped_by_id_without_its_value() {
        let body = br#"{"users":[{"sourcedId":"u1","role":"student"},
            {"sourcedId":"u2","role":{"secret":"Jane Doe"}},{"enabledUser":"perhaps"}]}"#;
        let raw = page_records(body, USERS).ok().unwrap();
        let read: Vec<Result<wire::User, Finding>> = raw.into_iter().map(read_record).collect();
        assert!(read[0].is_ok());
        let skip = read[1].as_ref().unwrap_err();
        assert_eq!((skip.code, skip.entity), (Code::RecordUnreadable, "users"));
        assert_eq!(skip.sourced_id, "u2");
        assert!(skip.message.starts_with("field `role`"), "{}", skip.message);
        assert!(!skip.message.contains("Jane"));
        let skip = read[2].as_ref().unwrap_err();
        assert_eq!(skip.sourced_id, "<missing>");
        assert!(skip.message.contains("enabledUser"), "{}", skip.message);
        assert!(!skip.message.contains("perhaps"));
    }

    #[test]
    fn sanitize_drops_values() {
        assert_eq!(
            sanitize("invalid type: string \"Jane\", expected a boolean at line 1 column 9"),
            "invalid type, expected a boolean"
        );
        assert_eq!(sanitize("expected a boolean"), "expected a boolean");
    }

    #[test]
    fn page_rules() {
        let ok = check_page(
            USERS,
            &headers(&[
                ("x-total-count", "5"),
                ("x-count", "2"),
                ("x-perm-rev", "r1"),
            ]),
            4,
            2,
            Some(5),
            1,
        );
        assert!(matches!(
            ok,
            Err(FetchError::CountMismatch {
                announced: 2,
                got: 1,
                ..
            })
        ));
        let last = check_page(
            USERS,
            &headers(&[("x-total-count", "5"), ("x-perm-rev", "r1")]),
            4,
            2,
            Some(5),
            1,
        )
        .unwrap();
        assert_eq!(last.total, 5);
        assert_eq!(last.revision.as_deref(), Some("r1"));
        assert!(matches!(
            check_page(USERS, &headers(&[("x-total-count", "5")]), 2, 2, Some(5), 1),
            Err(FetchError::IncompletePage {
                expected: 2,
                got: 1,
                offset: 2,
                ..
            })
        ));
        assert!(matches!(
            check_page(USERS, &headers(&[("x-total-count", "5")]), 2, 2, Some(5), 0),
            Err(FetchError::IncompletePage {
                expected: 2,
                got: 0,
                ..
            })
        ));
        assert!(matches!(
            check_page(USERS, &headers(&[]), 2, 2, Some(4), 2),
            Ok(PageMeta { total: 4, .. })
        ));
        assert!(matches!(
            check_page(USERS, &headers(&[]), 0, 2, None, 2),
            Err(FetchError::MissingTotal { .. })
        ));
        assert!(matches!(
            check_page(USERS, &headers(&[("x-total-count", "6")]), 2, 2, Some(5), 2),
            Err(FetchError::TotalChanged {
                first: 5,
                now: 6,
                ..
            })
        ));
        assert!(matches!(
            check_page(USERS, &headers(&[("x-total-count", "5")]), 0, 2, None, 5),
            Err(FetchError::OversizedPage { .. })
        ));
        let empty = check_page(USERS, &headers(&[("x-total-count", "0")]), 0, 2, None, 0);
        assert_eq!(empty.unwrap().total, 0);
    }

    #[test]
    fn imsx_error_detail() {
        let body = br#"{"imsx_codeMajor":"failure","imsx_severity":"error",
            "imsx_description":"Invalid filter field","imsx_CodeMinor":"invalid_filter_field"}"#;
        assert_eq!(
            imsx_detail(body).as_deref(),
            Some("Invalid filter field (invalid_filter_field)")
        );
        assert_eq!(imsx_detail(b"<html>"), None);
    }

    #[test]
    fn unreachable_and_token_failures_say_what_to_check() {
        let refused = FetchError::Connect {
            endpoint: ORGS,
            url: "http://127.0.0.1:9/x/orgs".into(),
            detail: "connection refused".into(),
            attempts: 3,
        };
        assert!(refused.to_string().contains("down or unreachable"));
        let token = |detail: &str| FetchError::TokenEndpoint {
            url: "http://127.0.0.1:9/token".into(),
            detail: detail.into(),
            attempts: 1,
        };
        assert!(token("HTTP 404").to_string().ends_with("check token_url"));
        assert!(token("HTTP 503").to_string().contains("keeps failing"));
        assert!(token("HTTP 429").to_string().contains("throttles"));
        assert!(token("timed out").to_string().contains("may be down"));
    }

    #[test]
    fn forbidden_and_not_found_name_the_permission_and_the_key() {
        let e = FetchError::Forbidden {
            endpoint: DEMOGRAPHICS,
        };
        assert!(e.to_string().contains("enable \"Demographics\""), "{e}");
        assert!(e.to_string().contains("demographics = \"off\""), "{e}");
        let e = FetchError::Forbidden { endpoint: USERS };
        assert!(e.to_string().contains("Full Permissions"), "{e}");
        let e = FetchError::NotFound {
            endpoint: DEMOGRAPHICS,
            url: "http://x/demographics".into(),
        };
        assert!(
            e.to_string().contains("does not exist on this server"),
            "{e}"
        );
        assert!(e.to_string().contains("demographics = \"off\""), "{e}");
        let e = FetchError::NotFound {
            endpoint: USERS,
            url: "http://x/users".into(),
        };
        assert!(e.to_string().contains("check base_url"), "{e}");
    }
}
