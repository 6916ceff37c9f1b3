//! The HTTP surface: OneRoster 1.1 and 1.2 collections and single objects over the same data,
//! the OAuth2 token endpoint and the loopback-only control API.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::json;

use crate::SimConfig;
use crate::auth::{self, IssuedTokens, RequestAuth};
use crate::faults::{FaultState, Faults, Injected, Stats};
use crate::model::{Collection, Dataset};
use crate::scenario::{self, ChangeLog, Scenario};
use crate::wire::{OnWire, PageOnWire, Version, WireCtx, WireRecord};

/// Base path of the OneRoster 1.1 endpoints.
pub const BASE_PATH: &str = "/ims/oneroster/v1p1";
/// Base path of the OneRoster 1.2 Rostering endpoints.
pub const BASE_PATH_V1P2: &str = "/ims/oneroster/rostering/v1p2";
/// Where 1.1 record hrefs point: the district's own host, as ClassLink does even through its
/// proxy. Fixed so that responses are byte-identical whatever port the simulator listens on.
pub const HREF_BASE: &str = "https://lakeview-ny-v2.rosterserver.com/ims/oneroster/v1p1";
/// Where 1.2 record hrefs point.
pub const HREF_BASE_V1P2: &str =
    "https://lakeview-ny-v2.rosterserver.com/ims/oneroster/rostering/v1p2";

impl Version {
    const ALL: [Version; 2] = [Version::V1p1, Version::V1p2];

    fn base_path(self) -> &'static str {
        match self {
            Version::V1p1 => BASE_PATH,
            Version::V1p2 => BASE_PATH_V1P2,
        }
    }

    fn href_base(self) -> &'static str {
        match self {
            Version::V1p1 => HREF_BASE,
            Version::V1p2 => HREF_BASE_V1P2,
        }
    }
}

pub(crate) struct DataState {
    pub dataset: Dataset,
    pub revision: u64,
    pub outage: bool,
}

pub(crate) struct Control {
    pub faults: FaultState,
    pub stats: Stats,
    pub tokens: IssuedTokens,
    pub page_cap: Option<usize>,
}

pub(crate) struct Shared {
    pub config: SimConfig,
    pub data: RwLock<DataState>,
    pub control: Mutex<Control>,
}

impl Shared {
    pub fn new(config: SimConfig, dataset: Dataset) -> Shared {
        let page_cap = config.page_cap;
        Shared {
            config,
            data: RwLock::new(DataState {
                dataset,
                revision: 1,
                outage: false,
            }),
            control: Mutex::new(Control {
                faults: FaultState::default(),
                stats: Stats::default(),
                tokens: IssuedTokens::default(),
                page_cap,
            }),
        }
    }

    // A panic while holding a lock only ever comes from a bug in a test closure; the state
    // itself stays consistent, so keep serving rather than poisoning every later request.
    pub fn read(&self) -> RwLockReadGuard<'_, DataState> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, DataState> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn revision_string(&self, state: &DataState) -> String {
        if let Some(frozen) = self.control().faults.faults.frozen_revision.clone() {
            return frozen;
        }
        if state.outage {
            // A broken upstream does not promise the revision stays put; make it visible.
            format!("{:x}-{}-outage", self.config.seed, state.revision)
        } else {
            format!("{:x}-{}", self.config.seed, state.revision)
        }
    }

    pub fn apply(&self, scenario: &Scenario) -> ChangeLog {
        let mut state = self.write();
        match scenario {
            Scenario::Outage => state.outage = true,
            Scenario::Restore => state.outage = false,
            _ => {}
        }
        let log = scenario::apply(&mut state.dataset, scenario);
        if !log.is_empty() {
            state.revision += 1;
        }
        log
    }

    pub fn set_faults(&self, faults: Faults) {
        self.control().faults.set(faults);
    }

    /// How a response of this version is rendered.
    fn wire_ctx<'a>(&self, version: Version, fields: Option<&'a HashSet<String>>) -> WireCtx<'a> {
        WireCtx {
            version,
            v1p1_roles: self.config.v1p1_roles,
            base_url: version.href_base(),
            fields,
        }
    }
}

pub(crate) type Sim = Arc<Shared>;

pub(crate) fn router(sim: Sim) -> Router {
    let mut router = Router::new();
    for version in Version::ALL {
        let base = version.base_path();
        router = router
            .route(
                &format!("{base}/{{collection}}"),
                get(
                    move |sim: State<Sim>, segment: Path<String>, headers: HeaderMap, uri: Uri| {
                        list(sim, segment, headers, uri, version)
                    },
                ),
            )
            .route(
                &format!("{base}/{{collection}}/{{id}}"),
                get(
                    move |sim: State<Sim>,
                          path: Path<(String, String)>,
                          headers: HeaderMap,
                          uri: Uri| {
                        single(sim, path, headers, uri, version)
                    },
                ),
            );
    }
    router
        .route("/oauth2/token", post(token))
        .route("/__sim/scenario", post(control_scenario))
        .route(
            "/__sim/faults",
            post(control_faults).get(control_get_faults),
        )
        .route("/__sim/stats", get(control_stats))
        .route("/__sim/reset_stats", post(control_reset_stats))
        .with_state(sim)
}

/// An imsx error, as OneRoster servers report failures.
#[derive(Debug)]
pub(crate) struct ImsxError {
    status: StatusCode,
    code_minor: &'static str,
    description: String,
}

impl ImsxError {
    fn new(status: StatusCode, code_minor: &'static str, description: impl Into<String>) -> Self {
        ImsxError {
            status,
            code_minor,
            description: description.into(),
        }
    }

    fn bad_request(code_minor: &'static str, description: impl Into<String>) -> Self {
        ImsxError::new(StatusCode::BAD_REQUEST, code_minor, description)
    }
}

impl IntoResponse for ImsxError {
    fn into_response(self) -> Response {
        let body = json!({
            "imsx_codeMajor": "failure",
            "imsx_severity": "error",
            "imsx_description": self.description,
            "imsx_CodeMinor": {"imsx_codeMinorField": [{
                "imsx_codeMinorFieldName": "TargetEndSystem",
                "imsx_codeMinorFieldValue": self.code_minor,
            }]},
        });
        (self.status, axum::Json(body)).into_response()
    }
}

fn code_minor_for(status: u16) -> &'static str {
    match status {
        401 => "unauthorisedrequest",
        403 => "forbidden",
        404 => "unknownobject",
        429 => "server_busy",
        _ => "internal_server_error",
    }
}

/// What a login page in front of a OneRoster server answers.
pub const LOGIN_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n<body><form action=\"/login\" method=\"post\"><input name=\"username\"></form></body></html>\n";

fn injected_response(injected: Injected) -> Response {
    match injected {
        Injected::Html => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            LOGIN_PAGE,
        )
            .into_response(),
        Injected::RateLimited { retry_after_secs } => {
            let mut r = ImsxError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "server_busy",
                "rate limit exceeded",
            )
            .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            r
        }
        Injected::Status(code) | Injected::ServerError(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let description = status.canonical_reason().unwrap_or("injected failure");
            ImsxError::new(status, code_minor_for(code), description).into_response()
        }
    }
}

/// Parsed `limit`, `offset`, `sort`, `orderBy`, `fields`, `filter`.
struct ListQuery {
    limit: usize,
    offset: usize,
    descending: bool,
    fields: Option<HashSet<String>>,
    filter: Option<String>,
}

fn parse_list_query(raw: Option<&str>) -> Result<ListQuery, ImsxError> {
    let mut q = ListQuery {
        limit: 100,
        offset: 0,
        descending: false,
        fields: None,
        filter: None,
    };
    let pairs = raw
        .map(|r| url::form_urlencoded::parse(r.as_bytes()).into_owned())
        .into_iter()
        .flatten();
    for (key, value) in pairs {
        match key.as_str() {
            "limit" => {
                q.limit = value
                    .parse()
                    .map_err(|_| ImsxError::bad_request("invalid_data", "limit must be a number"))?
            }
            "offset" => {
                q.offset = value.parse().map_err(|_| {
                    ImsxError::bad_request("invalid_data", "offset must be a number")
                })?
            }
            "sort" if value != "sourcedId" => {
                return Err(ImsxError::bad_request(
                    "invalid_sort_field",
                    "only sort=sourcedId is supported",
                ));
            }
            "orderBy" => match value.as_str() {
                "asc" => q.descending = false,
                "desc" => q.descending = true,
                _ => {
                    return Err(ImsxError::bad_request(
                        "invalid_data",
                        "orderBy must be asc or desc",
                    ));
                }
            },
            "fields" => {
                q.fields = Some(
                    value
                        .split(',')
                        .map(|f| f.trim().to_string())
                        .filter(|f| !f.is_empty())
                        .collect(),
                )
            }
            "filter" => q.filter = Some(value),
            _ => {}
        }
    }
    Ok(q)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Contains,
}

#[derive(Debug)]
struct Clause {
    field: String,
    op: Op,
    value: String,
    /// Parsed value when the field is `dateLastModified`.
    time: Option<DateTime<Utc>>,
}

#[derive(Debug)]
enum Filter {
    One(Clause),
    And(Clause, Clause),
    Or(Clause, Clause),
}

fn invalid_filter(why: &str) -> ImsxError {
    ImsxError::bad_request("invalid_filter_field", format!("unsupported filter: {why}"))
}

fn parse_filter(text: &str, known: &[&str]) -> Result<Filter, ImsxError> {
    let split = |sep: &str| text.split_once(sep);
    if let Some((a, b)) = split(" AND ") {
        Ok(Filter::And(
            parse_clause(a, known)?,
            parse_clause(b, known)?,
        ))
    } else if let Some((a, b)) = split(" OR ") {
        Ok(Filter::Or(parse_clause(a, known)?, parse_clause(b, known)?))
    } else {
        Ok(Filter::One(parse_clause(text, known)?))
    }
}

fn parse_clause(text: &str, known: &[&str]) -> Result<Clause, ImsxError> {
    let text = text.trim();
    let end = text
        .find(|c: char| !c.is_ascii_alphanumeric() && c != '.')
        .ok_or_else(|| invalid_filter("no operator"))?;
    let (field, rest) = text.split_at(end);
    let rest = rest.trim_start();
    let ops = [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("!=", Op::Ne),
        (">", Op::Gt),
        ("<", Op::Lt),
        ("=", Op::Eq),
        ("~", Op::Contains),
    ];
    let (op, rest) = ops
        .iter()
        .find_map(|(s, op)| rest.strip_prefix(s).map(|r| (*op, r.trim())))
        .ok_or_else(|| invalid_filter("unknown operator"))?;
    let value = rest
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .filter(|v| !v.contains('\''))
        .ok_or_else(|| invalid_filter("value must be one single-quoted string"))?;
    if !known.contains(&field) {
        return Err(invalid_filter("unknown field"));
    }
    let time = if field == "dateLastModified" {
        let t = DateTime::parse_from_rfc3339(value)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| {
                NaiveDate::parse_from_str(value, "%Y-%m-%d")
                    .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
            })
            .map_err(|_| invalid_filter("dateLastModified needs an ISO-8601 time"))?;
        if op == Op::Contains {
            return Err(invalid_filter("~ on dateLastModified"));
        }
        Some(t)
    } else {
        if !matches!(op, Op::Eq | Op::Ne | Op::Contains) {
            return Err(invalid_filter("ordering only on dateLastModified"));
        }
        None
    };
    Ok(Clause {
        field: field.to_string(),
        op,
        value: value.to_string(),
        time,
    })
}

fn clause_matches<R: WireRecord>(clause: &Clause, record: &R, ctx: &WireCtx<'_>) -> bool {
    if let Some(t) = clause.time {
        let v = record.date_last_modified();
        return match clause.op {
            Op::Eq => v == t,
            Op::Ne => v != t,
            Op::Gt => v > t,
            Op::Ge => v >= t,
            Op::Lt => v < t,
            Op::Le => v <= t,
            Op::Contains => false,
        };
    }
    let owned;
    let actual: Option<&str> = match clause.field.as_str() {
        "sourcedId" => Some(record.sourced_id()),
        "status" => Some(record.status().as_str()),
        field => {
            // Rare path: render the record to find a generic field's wire value (a 1.2 boolean
            // compares as its text, `primary='true'`).
            owned = crate::wire::to_value(record, ctx);
            match owned.get(field) {
                Some(serde_json::Value::String(s)) => Some(s.as_str()),
                Some(serde_json::Value::Bool(true)) => Some("true"),
                Some(serde_json::Value::Bool(false)) => Some("false"),
                _ => None,
            }
        }
    };
    let Some(actual) = actual else {
        return false;
    };
    match clause.op {
        Op::Eq => actual == clause.value,
        Op::Ne => actual != clause.value,
        Op::Contains => actual.contains(&clause.value),
        _ => false,
    }
}

fn filter_matches<R: WireRecord>(filter: &Filter, record: &R, ctx: &WireCtx<'_>) -> bool {
    let matches = |c| clause_matches(c, record, ctx);
    match filter {
        Filter::One(c) => matches(c),
        Filter::And(a, b) => matches(a) && matches(b),
        Filter::Or(a, b) => matches(a) || matches(b),
    }
}

struct Page {
    body: Vec<u8>,
    total: usize,
    count: usize,
}

fn check_fields<R: WireRecord>(ctx: &WireCtx<'_>) -> Result<(), ImsxError> {
    let known = R::fields(ctx);
    if let Some(unknown) = ctx
        .fields
        .and_then(|f| f.iter().find(|f| !known.contains(&f.as_str())))
    {
        return Err(ImsxError::bad_request(
            "invalid_selection_field",
            format!("unknown field {unknown:?}"),
        ));
    }
    Ok(())
}

fn render_page<R: WireRecord>(
    records: &[R],
    q: &ListQuery,
    limit: usize,
    key: &str,
    ctx: &WireCtx<'_>,
) -> Result<Page, ImsxError> {
    check_fields::<R>(ctx)?;
    let filter = q
        .filter
        .as_deref()
        .map(|f| parse_filter(f, R::fields(ctx)))
        .transpose()?;
    let ordered = |i: usize| {
        if q.descending {
            &records[records.len() - 1 - i]
        } else {
            &records[i]
        }
    };
    let (total, page): (usize, Vec<&R>) = match &filter {
        None => {
            let page = (q.offset..records.len().min(q.offset.saturating_add(limit)))
                .map(ordered)
                .collect();
            (records.len(), page)
        }
        Some(filter) => {
            let matching: Vec<&R> = (0..records.len())
                .map(ordered)
                .filter(|r| filter_matches(filter, *r, ctx))
                .collect();
            let page = matching
                .iter()
                .skip(q.offset)
                .take(limit)
                .copied()
                .collect();
            (matching.len(), page)
        }
    };
    let count = page.len();
    let envelope = Envelope {
        key,
        page: PageOnWire { records: page, ctx },
    };
    let body = serde_json::to_vec(&envelope).map_err(|e| {
        ImsxError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            e.to_string(),
        )
    })?;
    Ok(Page { body, total, count })
}

struct Envelope<'a, R> {
    key: &'a str,
    page: PageOnWire<'a, R>,
}

impl<R: WireRecord> serde::Serialize for Envelope<'_, R> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(self.key, &self.page)?;
        m.end()
    }
}

fn render_one<R: WireRecord>(
    records: &[R],
    id: &str,
    key: &str,
    ctx: &WireCtx<'_>,
) -> Result<Vec<u8>, ImsxError> {
    check_fields::<R>(ctx)?;
    let record = crate::model::find(records, id).ok_or_else(|| {
        ImsxError::new(
            StatusCode::NOT_FOUND,
            "unknownobject",
            format!("no {key} with sourcedId {id:?}"),
        )
    })?;
    let mut m = serde_json::Map::new();
    let value = serde_json::to_value(OnWire { record, ctx }).map_err(|e| {
        ImsxError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            e.to_string(),
        )
    })?;
    m.insert(key.to_string(), value);
    serde_json::to_vec(&m).map_err(|e| {
        ImsxError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            e.to_string(),
        )
    })
}

/// Dispatches over the typed collections.
macro_rules! with_records {
    ($data:expr, $collection:expr, |$records:ident| $body:expr) => {
        match $collection {
            Collection::Orgs => {
                let $records = &$data.orgs[..];
                $body
            }
            Collection::AcademicSessions => {
                let $records = &$data.academic_sessions[..];
                $body
            }
            Collection::Courses => {
                let $records = &$data.courses[..];
                $body
            }
            Collection::Classes => {
                let $records = &$data.classes[..];
                $body
            }
            Collection::Users => {
                let $records = &$data.users[..];
                $body
            }
            Collection::Enrollments => {
                let $records = &$data.enrollments[..];
                $body
            }
            Collection::Demographics => {
                let $records = &$data.demographics[..];
                $body
            }
        }
    };
}

/// Why a data request was turned away before rendering.
enum Rejection {
    Unauthorized(auth::AuthError),
    Injected(Injected),
}

/// A turned-away request still honours the configured delay.
struct Rejected {
    why: Rejection,
    delay: Option<std::time::Duration>,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Rejection::Unauthorized(e) => ImsxError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorisedrequest",
                e.to_string(),
            )
            .into_response(),
            Rejection::Injected(injected) => injected_response(injected),
        }
    }
}

/// What every data request goes through before rendering: counting, auth and faults.
struct Admission {
    truncate: bool,
    delay: Option<std::time::Duration>,
}

fn admit(sim: &Sim, segment: &str, headers: &HeaderMap, uri: &Uri) -> Result<Admission, Rejected> {
    let mut control = sim.control();
    control.stats.total += 1;
    *control
        .stats
        .per_collection
        .entry(segment.to_string())
        .or_default() += 1;
    let decision = control.faults.next(segment);

    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let request = RequestAuth {
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
        url_without_query: format!("http://{host}{}", uri.path()),
        raw_query: uri.query(),
        now_unix: Utc::now().timestamp(),
    };
    if let Err(e) = auth::authenticate(&request, &sim.config.credentials, &control.tokens) {
        return Err(Rejected {
            why: Rejection::Unauthorized(e),
            delay: decision.delay,
        });
    }
    drop(control);
    if decision.bump_revision {
        sim.write().revision += 1;
    }
    if let Some(injected) = decision.injected {
        return Err(Rejected {
            why: Rejection::Injected(injected),
            delay: decision.delay,
        });
    }
    Ok(Admission {
        truncate: decision.truncate,
        delay: decision.delay,
    })
}

async fn finish(sim: &Sim, response: Response, delay: Option<std::time::Duration>) -> Response {
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    *sim.control()
        .stats
        .per_status
        .entry(response.status().as_u16())
        .or_default() += 1;
    response
}

fn json_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn list(
    State(sim): State<Sim>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    version: Version,
) -> Response {
    let Some(collection) = Collection::from_path(&segment) else {
        let e = ImsxError::new(StatusCode::NOT_FOUND, "unknownobject", "unknown collection");
        return e.into_response();
    };
    if version == Version::V1p2 && sim.control().faults.faults.without_v1p2 {
        return ImsxError::new(StatusCode::NOT_FOUND, "unknownobject", "no such endpoint")
            .into_response();
    }
    let admission = match admit(&sim, &segment, &headers, &uri) {
        Ok(a) => a,
        Err(r) => return finish(&sim, r.why.into_response(), r.delay).await,
    };
    let response = match list_page(&sim, collection, uri.query(), admission.truncate, version) {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    finish(&sim, response, admission.delay).await
}

fn list_page(
    sim: &Sim,
    collection: Collection,
    raw_query: Option<&str>,
    truncate: bool,
    version: Version,
) -> Result<Response, ImsxError> {
    let mut q = parse_list_query(raw_query)?;
    let (reject_filter, ignore_filter, total_ignores_filter) = {
        let faults = &sim.control().faults.faults;
        (
            faults.reject_filter,
            faults.ignore_filter,
            faults.total_ignores_filter,
        )
    };
    if q.filter.is_some() && reject_filter {
        return Err(ImsxError::bad_request(
            "invalid_filter_field",
            "filtering is not supported".to_string(),
        ));
    }
    if ignore_filter {
        q.filter = None;
    }
    if q.fields.is_some() && sim.control().faults.faults.reject_fields {
        return Err(ImsxError::bad_request(
            "invalid_selection_field",
            "field selection is not supported".to_string(),
        ));
    }
    let limit = {
        let cap = {
            let control = sim.control();
            control.faults.faults.page_cap.or(control.page_cap)
        };
        match cap {
            Some(cap) if q.limit > cap && sim.config.clamp_silently => cap,
            Some(cap) if q.limit > cap => {
                return Err(ImsxError::bad_request(
                    "invalid_data",
                    format!("limit exceeds the maximum of {cap}"),
                ));
            }
            _ => q.limit,
        }
    };
    let state = sim.read();
    let key = collection.path();
    let page = if state.outage {
        Page {
            body: format!("{{\"{key}\":[]}}").into_bytes(),
            total: 0,
            count: 0,
        }
    } else {
        let ctx = sim.wire_ctx(version, q.fields.as_ref());
        with_records!(state.dataset, collection, |records| render_page(
            records, &q, limit, key, &ctx
        ))?
    };
    let total = if total_ignores_filter && q.filter.is_some() {
        state.dataset.len(collection)
    } else {
        page.total
    };
    let revision = sim.revision_string(&state);
    drop(state);
    let mut body = page.body;
    if truncate {
        // Cut mid-way: a 200 whose JSON never closes, as a dropped proxy connection looks.
        body.truncate(body.len() / 2);
    }
    let mut response = json_response(body);
    let h = response.headers_mut();
    h.insert("x-total-count", HeaderValue::from(total));
    h.insert("x-count", HeaderValue::from(page.count));
    if let Ok(v) = HeaderValue::from_str(&revision) {
        h.insert("x-perm-rev", v);
    }
    Ok(response)
}

async fn single(
    State(sim): State<Sim>,
    Path((segment, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    version: Version,
) -> Response {
    let Some(collection) = Collection::from_path(&segment) else {
        let e = ImsxError::new(StatusCode::NOT_FOUND, "unknownobject", "unknown collection");
        return e.into_response();
    };
    if version == Version::V1p2 && sim.control().faults.faults.without_v1p2 {
        return ImsxError::new(StatusCode::NOT_FOUND, "unknownobject", "no such endpoint")
            .into_response();
    }
    let admission = match admit(&sim, &segment, &headers, &uri) {
        Ok(a) => a,
        Err(r) => return finish(&sim, r.why.into_response(), r.delay).await,
    };
    let response = (|| {
        let q = parse_list_query(uri.query())?;
        let state = sim.read();
        if state.outage {
            return Err(ImsxError::new(
                StatusCode::NOT_FOUND,
                "unknownobject",
                "no such object",
            ));
        }
        let key = collection.singular();
        let ctx = sim.wire_ctx(version, q.fields.as_ref());
        let body = with_records!(state.dataset, collection, |records| render_one(
            records, &id, key, &ctx
        ))?;
        let revision = sim.revision_string(&state);
        let mut response = json_response(body);
        if let Ok(v) = HeaderValue::from_str(&revision) {
            response.headers_mut().insert("x-perm-rev", v);
        }
        Ok(response)
    })();
    let response = response.unwrap_or_else(IntoResponse::into_response);
    finish(&sim, response, admission.delay).await
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, axum::Json(json!({ "error": error }))).into_response()
}

async fn token(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    let injected = {
        let mut control = sim.control();
        control.stats.token_requests += 1;
        control.faults.faults.token_status
    };
    if let Some(status) = injected {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return oauth_error(status, "temporarily_unavailable");
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if field("grant_type").as_deref() != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(auth::basic_credentials)
        .or_else(|| Some((field("client_id")?, field("client_secret")?)));
    let creds = &sim.config.credentials;
    let valid = presented
        .is_some_and(|(id, secret)| id == creds.client_id && secret == creds.client_secret);
    if !valid {
        let mut r = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"oneroster\""),
        );
        return r;
    }
    let ttl = sim.config.token_ttl;
    let access_token = sim.control().tokens.issue(ttl);
    let scope = field("scope").unwrap_or_else(|| {
        "https://purl.imsglobal.org/spec/or/v1p1/scope/roster-core.readonly \
         https://purl.imsglobal.org/spec/or/v1p1/scope/roster-demographics.readonly"
            .into()
    });
    let mut r = axum::Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "scope": scope,
    }))
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn loopback_only(peer: SocketAddr) -> Result<(), ImsxError> {
    if peer.ip().is_loopback() {
        Ok(())
    } else {
        Err(ImsxError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "control API is loopback only",
        ))
    }
}

async fn control_scenario(
    State(sim): State<Sim>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    if let Err(e) = loopback_only(peer) {
        return e.into_response();
    }
    let scenario: Scenario = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return ImsxError::bad_request("invalid_data", e.to_string()).into_response(),
    };
    // Scenarios on a big data set take a while; keep them off the async workers.
    match tokio::task::spawn_blocking(move || sim.apply(&scenario)).await {
        Ok(log) => axum::Json(log).into_response(),
        Err(_) => ImsxError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            "scenario failed",
        )
        .into_response(),
    }
}

async fn control_faults(
    State(sim): State<Sim>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    if let Err(e) = loopback_only(peer) {
        return e.into_response();
    }
    match serde_json::from_slice::<Faults>(&body) {
        Ok(faults) => {
            sim.set_faults(faults.clone());
            axum::Json(faults).into_response()
        }
        Err(e) => ImsxError::bad_request("invalid_data", e.to_string()).into_response(),
    }
}

async fn control_get_faults(
    State(sim): State<Sim>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Err(e) = loopback_only(peer) {
        return e.into_response();
    }
    let faults = sim.control().faults.faults.clone();
    axum::Json(faults).into_response()
}

async fn control_stats(
    State(sim): State<Sim>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Err(e) = loopback_only(peer) {
        return e.into_response();
    }
    let stats = sim.control().stats.clone();
    axum::Json(stats).into_response()
}

async fn control_reset_stats(
    State(sim): State<Sim>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Err(e) = loopback_only(peer) {
        return e.into_response();
    }
    sim.control().stats = Stats::default();
    StatusCode::NO_CONTENT.into_response()
}
