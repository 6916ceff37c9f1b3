//! The three ways in: a static bearer token, OAuth2 client-credentials tokens, and ClassLink's
//! two-legged OAuth 1.0a signature (HMAC-SHA256, or HMAC-SHA1 with `oauth_version=1.0`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};

/// Credentials the simulated district accepts. Test values, not secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: String,
    pub bearer_token: String,
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials {
            client_id: "sim-client".into(),
            client_secret: "sim-secret".into(),
            bearer_token: "sim-bearer-token".into(),
        }
    }
}

/// RFC 3986 unreserved characters stay as they are; everything else is percent-encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn pct(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// How far a request's `oauth_timestamp` may be from our clock.
const MAX_CLOCK_SKEW_SECS: i64 = 300;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no credentials presented")]
    Missing,
    #[error("bearer token unknown")]
    UnknownToken,
    #[error("bearer token expired")]
    ExpiredToken,
    #[error("malformed OAuth 1.0a header")]
    MalformedOAuth,
    #[error("OAuth 1.0a parameter {0} missing")]
    MissingOAuthParam(&'static str),
    #[error("unknown OAuth consumer key")]
    UnknownConsumer,
    #[error("unsupported OAuth signature method")]
    UnsupportedMethod,
    #[error("OAuth timestamp outside the accepted window")]
    StaleTimestamp,
    #[error("OAuth signature does not match")]
    BadSignature,
}

/// Access tokens issued by the token endpoint, with their expiry.
#[derive(Default)]
pub struct IssuedTokens {
    tokens: HashMap<String, Instant>,
    issued: u64,
}

impl IssuedTokens {
    pub fn issue(&mut self, ttl: Duration) -> String {
        self.issued += 1;
        let nonce: u64 = rand::random();
        let token = format!("sim-oauth2-{}-{nonce:016x}", self.issued);
        let now = Instant::now();
        // Forget long-expired tokens so a long benchmark does not grow the map forever.
        self.tokens
            .retain(|_, exp| *exp + Duration::from_secs(3600) > now);
        self.tokens.insert(token.clone(), now + ttl);
        token
    }

    fn check(&self, token: &str) -> Result<(), AuthError> {
        match self.tokens.get(token) {
            Some(exp) if *exp > Instant::now() => Ok(()),
            Some(_) => Err(AuthError::ExpiredToken),
            None => Err(AuthError::UnknownToken),
        }
    }
}

/// What the server knows about one request, for authentication.
pub struct RequestAuth<'a> {
    pub authorization: Option<&'a str>,
    /// `scheme://host:port/path` as the client requested it.
    pub url_without_query: String,
    pub raw_query: Option<&'a str>,
    pub now_unix: i64,
}

pub fn authenticate(
    req: &RequestAuth<'_>,
    creds: &Credentials,
    tokens: &IssuedTokens,
) -> Result<(), AuthError> {
    let header = req.authorization.ok_or(AuthError::Missing)?.trim();
    if let Some(token) = strip_scheme(header, "Bearer") {
        let token = token.trim();
        if token == creds.bearer_token {
            return Ok(());
        }
        return tokens.check(token);
    }
    if let Some(params) = strip_scheme(header, "OAuth") {
        return verify_oauth1(req, params, creds);
    }
    Err(AuthError::Missing)
}

fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (head, rest) = header.split_once(' ')?;
    head.eq_ignore_ascii_case(scheme).then_some(rest)
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Parses `k="v", k2="v2"` (values percent-encoded) into decoded pairs.
fn parse_oauth_header(params: &str) -> Result<Vec<(String, String)>, AuthError> {
    params
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or(AuthError::MalformedOAuth)?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Ok((decode(k.trim()), decode(v)))
        })
        .filter(|p| !matches!(p, Ok((k, _)) if k == "realm"))
        .collect()
}

/// The OAuth 1.0a signature base string, as ClassLink's request libraries build it.
pub fn signature_base_string(
    url_without_query: &str,
    query_pairs: &[(String, String)],
    oauth_pairs: &[(String, String)],
) -> String {
    let mut all: Vec<(String, String)> = query_pairs
        .iter()
        .chain(oauth_pairs)
        .filter(|(k, _)| k != "oauth_signature")
        .map(|(k, v)| (pct(k), pct(v)))
        .collect();
    all.sort();
    let joined = all
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!("GET&{}&{}", pct(url_without_query), pct(&joined))
}

fn verify_oauth1(
    req: &RequestAuth<'_>,
    params: &str,
    creds: &Credentials,
) -> Result<(), AuthError> {
    let oauth = parse_oauth_header(params)?;
    let get = |name: &'static str| {
        oauth
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or(AuthError::MissingOAuthParam(name))
    };
    if get("oauth_consumer_key")? != creds.client_id {
        return Err(AuthError::UnknownConsumer);
    }
    let method = get("oauth_signature_method")?;
    let timestamp: i64 = get("oauth_timestamp")?
        .parse()
        .map_err(|_| AuthError::StaleTimestamp)?;
    if (timestamp - req.now_unix).abs() > MAX_CLOCK_SKEW_SECS {
        return Err(AuthError::StaleTimestamp);
    }
    get("oauth_nonce")?;
    let signature = STANDARD
        .decode(get("oauth_signature")?)
        .map_err(|_| AuthError::BadSignature)?;

    let query: Vec<(String, String)> = req
        .raw_query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let base = signature_base_string(&req.url_without_query, &query, &oauth);
    let key = format!("{}&", pct(&creds.client_secret));
    let verified = match method {
        "HMAC-SHA256" => verify::<Hmac<sha2::Sha256>>(key.as_bytes(), base.as_bytes(), &signature),
        "HMAC-SHA1" => verify::<Hmac<sha1::Sha1>>(key.as_bytes(), base.as_bytes(), &signature),
        _ => return Err(AuthError::UnsupportedMethod),
    };
    if verified {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

fn verify<M: Mac + KeyInit>(key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(key) else {
        return false;
    };
    mac.update(message);
    // Constant-time comparison.
    mac.verify_slice(signature).is_ok()
}

/// Client id and secret from an HTTP Basic header (each form-urlencoded, per RFC 6749 2.3.1).
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    let encoded = strip_scheme(header.trim(), "Basic")?.trim();
    let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unform = |s: &str| decode(&s.replace('+', " "));
    Some((unform(id), unform(secret)))
}
