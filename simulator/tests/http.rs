//! The simulator over real HTTP on loopback: paging, auth, filters, faults, scenarios,
//! determinism, and the 1.2 wire beside the 1.1 one. One binary so it links once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use oneroster_sim::{
    ChangeLog, Collection, Counts, Dataset, Faults, HREF_BASE, HREF_BASE_V1P2, Scenario, SimConfig,
    SimHandle, Status, spawn, v1p1_role,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use serde_json::Value;

async fn tiny(seed: u64) -> SimHandle {
    spawn(SimConfig::new(seed, Counts::tiny())).await.unwrap()
}

fn client() -> reqwest::Client {
    // In the workspace, reqwest is built without a default TLS crypto provider (the main crate
    // installs ring itself); plain-http tests still need one installed to build a client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

struct Resp {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("bad json ({e}): {}", self.text))
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
    fn total(&self) -> usize {
        self.header("x-total-count").unwrap().parse().unwrap()
    }
    fn count(&self) -> usize {
        self.header("x-count").unwrap().parse().unwrap()
    }
    fn code_minor(&self) -> String {
        self.json()["imsx_CodeMinor"]["imsx_codeMinorField"][0]["imsx_codeMinorFieldValue"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

async fn send(req: reqwest::RequestBuilder) -> Resp {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    Resp {
        status,
        headers,
        text,
    }
}

/// GET `{base}/{path_and_query}` on the 1.1 endpoints with the static bearer token.
async fn get(sim: &SimHandle, path_and_query: &str) -> Resp {
    get_at(sim, &sim.base_url(), path_and_query).await
}

/// The same on the 1.2 endpoints.
async fn get_v1p2(sim: &SimHandle, path_and_query: &str) -> Resp {
    get_at(sim, &sim.base_url_v1p2(), path_and_query).await
}

async fn get_at(sim: &SimHandle, base: &str, path_and_query: &str) -> Resp {
    let url = format!("{base}/{path_and_query}");
    let token = sim.credentials().bearer_token;
    send(
        client()
            .get(url)
            .header(AUTHORIZATION, format!("Bearer {token}")),
    )
    .await
}

fn ids(page: &Value, key: &str) -> Vec<String> {
    page[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sourcedId"].as_str().unwrap().to_string())
        .collect()
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

// ---------------------------------------------------------------- paging

#[tokio::test]
async fn pages_cover_the_collection_in_sourced_id_order() {
    let sim = tiny(1).await;
    let expected: Vec<String> =
        sim.read(|d| d.users.iter().map(|u| u.sourced_id.clone()).collect());
    assert!(expected.len() > 60);
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let r = get(
            &sim,
            &format!("users?limit=7&offset={offset}&sort=sourcedId&orderBy=asc"),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.total(), expected.len());
        let page = ids(&r.json(), "users");
        assert_eq!(r.count(), page.len());
        assert!(page.len() <= 7);
        if page.is_empty() {
            break;
        }
        seen.extend(page);
        offset += 7;
    }
    assert_eq!(seen, expected);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "byte-wise sourcedId order");
    assert!(r_has_no_link(&get(&sim, "users").await));

    let desc = get(&sim, "users?limit=3&orderBy=desc").await;
    let mut last_three: Vec<String> = expected.iter().rev().take(3).cloned().collect();
    assert_eq!(ids(&desc.json(), "users"), last_three);
    last_three.clear();

    let default_limit = get(&sim, "enrollments").await;
    assert_eq!(default_limit.count(), 100, "spec default limit");
}

fn r_has_no_link(r: &Resp) -> bool {
    r.header("link").is_none()
}

#[tokio::test]
async fn page_cap_clamps_silently_or_refuses() {
    let mut cfg = SimConfig::new(2, Counts::tiny());
    cfg.page_cap = Some(10);
    cfg.clamp_silently = true;
    let sim = spawn(cfg).await.unwrap();
    let r = get(&sim, "users?limit=50").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.count(), 10);
    assert!(r.total() > 10, "the total still tells the truth");

    // Run-time change through the faults, in refusing mode on another server.
    let mut cfg = SimConfig::new(2, Counts::tiny());
    cfg.page_cap = Some(10);
    let strict = spawn(cfg).await.unwrap();
    assert_eq!(get(&strict, "users?limit=50").await.status, 400);
    assert_eq!(get(&strict, "users?limit=10").await.count(), 10);
    strict.set_page_cap(None);
    assert_eq!(get(&strict, "users?limit=50").await.count(), 50);
    strict.set_faults(Faults {
        page_cap: Some(5),
        ..Faults::default()
    });
    assert_eq!(get(&strict, "users?limit=50").await.status, 400);
}

// ---------------------------------------------------------------- auth

#[tokio::test]
async fn requests_without_valid_credentials_are_refused() {
    let sim = tiny(3).await;
    let url = format!("{}/users", sim.base_url());
    let none = send(client().get(&url)).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.code_minor(), "unauthorisedrequest");
    let wrong = send(client().get(&url).header(AUTHORIZATION, "Bearer nope")).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(get(&sim, "users").await.status, 200);
}

async fn fetch_token(sim: &SimHandle, basic: Option<(&str, &str)>, form_extra: &str) -> Resp {
    let mut req = client()
        .post(sim.token_url())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("grant_type=client_credentials{form_extra}"));
    if let Some((id, secret)) = basic {
        let b = STANDARD.encode(format!("{id}:{secret}"));
        req = req.header(AUTHORIZATION, format!("Basic {b}"));
    }
    send(req).await
}

#[tokio::test]
async fn oauth2_tokens_work_until_they_expire() {
    let mut cfg = SimConfig::new(4, Counts::tiny());
    cfg.token_ttl = Duration::from_secs(1);
    let sim = spawn(cfg).await.unwrap();
    let c = sim.credentials();

    let bad = fetch_token(&sim, Some((&c.client_id, "wrong")), "").await;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.json()["error"], "invalid_client");

    let form = fetch_token(
        &sim,
        None,
        &format!(
            "&client_id={}&client_secret={}",
            c.client_id, c.client_secret
        ),
    )
    .await;
    assert_eq!(form.status, 200, "credentials as form fields");

    let ok = fetch_token(&sim, Some((&c.client_id, &c.client_secret)), "&scope=a%20b").await;
    assert_eq!(ok.status, 200);
    let body = ok.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 1);
    assert_eq!(body["scope"], "a b");
    let token = body["access_token"].as_str().unwrap().to_string();
    let url = format!("{}/orgs", sim.base_url());
    let with_token = || {
        client()
            .get(&url)
            .header(AUTHORIZATION, format!("Bearer {token}"))
    };
    assert_eq!(send(with_token()).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let expired = send(with_token()).await;
    assert_eq!(expired.status, 401);
    assert_eq!(expired.code_minor(), "unauthorisedrequest");
    assert_eq!(sim.stats().token_requests, 3);
}

const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Signs like ClassLink's request libraries (written here independently of the simulator).
fn oauth1_header(
    url: &str,
    query: &[(&str, &str)],
    key: &str,
    secret: &str,
    method: &str,
    timestamp: i64,
) -> String {
    let mut oauth = vec![
        ("oauth_consumer_key".to_string(), key.to_string()),
        ("oauth_signature_method".to_string(), method.to_string()),
        ("oauth_timestamp".to_string(), timestamp.to_string()),
        ("oauth_nonce".to_string(), "k3Jd9aQ0pZ".to_string()),
    ];
    if method == "HMAC-SHA1" {
        oauth.push(("oauth_version".to_string(), "1.0".to_string()));
    }
    let mut params: Vec<String> = query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(oauth.iter().cloned())
        .map(|(k, v)| format!("{}={}", enc(&k), enc(&v)))
        .collect();
    params.sort();
    let base = format!("GET&{}&{}", enc(url), enc(&params.join("&")));
    let signing_key = format!("{}&", enc(secret));
    let sig = if method == "HMAC-SHA1" {
        let mut mac =
            <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(signing_key.as_bytes()).unwrap();
        mac.update(base.as_bytes());
        STANDARD.encode(mac.finalize().into_bytes())
    } else {
        let mut mac =
            <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(signing_key.as_bytes()).unwrap();
        mac.update(base.as_bytes());
        STANDARD.encode(mac.finalize().into_bytes())
    };
    oauth.push(("oauth_signature".to_string(), sig));
    let fields: Vec<String> = oauth
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", enc(v)))
        .collect();
    format!("OAuth {}", fields.join(","))
}

#[tokio::test]
async fn oauth1_signatures_are_verified() {
    let sim = tiny(5).await;
    let c = sim.credentials();
    let url = format!("{}/users", sim.base_url());
    let query = [
        ("limit", "5"),
        ("offset", "0"),
        ("filter", "status='active'"),
    ];
    let qs = format!("limit=5&offset=0&filter={}", enc("status='active'"));
    let now = chrono::Utc::now().timestamp();
    let signed = |method: &str, ts: i64| {
        oauth1_header(&url, &query, &c.client_id, &c.client_secret, method, ts)
    };
    let call = |header: String, qs: String| {
        client()
            .get(format!("{url}?{qs}"))
            .header(AUTHORIZATION, header)
    };

    let ok = send(call(signed("HMAC-SHA256", now), qs.clone())).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.count(), 5);
    let sha1 = send(call(signed("HMAC-SHA1", now), qs.clone())).await;
    assert_eq!(sha1.status, 200, "{}", sha1.text);

    let tampered = send(call(
        signed("HMAC-SHA256", now),
        qs.replace("limit=5", "limit=6"),
    ))
    .await;
    assert_eq!(tampered.status, 401);
    let stale = send(call(signed("HMAC-SHA256", now - 600), qs.clone())).await;
    assert_eq!(stale.status, 401);
    let wrong_secret = oauth1_header(&url, &query, &c.client_id, "other", "HMAC-SHA256", now);
    assert_eq!(send(call(wrong_secret, qs)).await.status, 401);
}

// ---------------------------------------------------------------- filter, fields, objects

#[tokio::test]
async fn filters_and_fields() {
    let sim = tiny(6).await;
    let cut = sim.read(|d| d.clock);
    let log = sim.apply(Scenario::DayOfChurn { seed: 9 });
    let changed_users: BTreeSet<String> = {
        let u = log.of(Collection::Users);
        u.created
            .into_iter()
            .chain(u.updated)
            .chain(u.marked_tobedeleted)
            .collect()
    };
    let stamp = oneroster_sim::format_timestamp(cut).to_string();
    let filter = enc(&format!("dateLastModified>'{stamp}'"));
    let r = get(&sim, &format!("users?limit=1000&filter={filter}")).await;
    assert_eq!(r.status, 200);
    let got: BTreeSet<String> = ids(&r.json(), "users").into_iter().collect();
    assert_eq!(got, changed_users);
    assert_eq!(r.total(), changed_users.len());

    let tbd = get(
        &sim,
        &format!("users?limit=1000&filter={}", enc("status='tobedeleted'")),
    )
    .await;
    let expected = sim.read(|d| {
        d.users
            .iter()
            .filter(|u| u.status == Status::ToBeDeleted)
            .count()
    });
    assert_eq!(tbd.total(), expected);
    assert!(expected > 0);

    let two = enc(&format!("dateLastModified>='{stamp}' AND role='student'"));
    assert_eq!(
        get(&sim, &format!("users?limit=1000&filter={two}"))
            .await
            .total(),
        changed_users.len()
    );

    for bad in [
        "nosuchfield='x'",
        "dateLastModified>'yesterday'",
        "status=active",
        "a='1' AND b='2' AND c='3'",
    ] {
        let r = get(&sim, &format!("users?filter={}", enc(bad))).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["imsx_codeMajor"], "failure");
    }

    let proj = get(&sim, "demographics?limit=3&fields=sourcedId,sex,white").await;
    for rec in proj.json()["demographics"].as_array().unwrap() {
        let keys: BTreeSet<&str> = rec
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, BTreeSet::from(["sourcedId", "sex", "white"]));
    }
    assert_eq!(
        get(&sim, "users?fields=sourcedId,shoeSize").await.status,
        400
    );
}

#[tokio::test]
async fn wire_format_is_classlink_1_1() {
    let sim = tiny(7).await;
    let (uid, cid) = sim.read(|d| {
        let s = d.users.iter().find(|u| u.role == "student").unwrap();
        (s.sourced_id.clone(), d.classes[0].sourced_id.clone())
    });
    sim.with_data(|d| {
        let u = d.users.iter_mut().find(|u| u.sourced_id == uid).unwrap();
        u.extra
            .insert("canary".into(), Value::String("tweet".into()));
    });
    let r = get(&sim, &format!("users/{uid}")).await;
    assert_eq!(r.status, 200);
    let user = &r.json()["user"];
    assert_eq!(user["sourcedId"], uid.as_str());
    assert_eq!(user["enabledUser"], "true");
    assert_eq!(user["password"], "");
    assert_eq!(user["role"], "student");
    assert_eq!(user["canary"], "tweet", "extra fields flattened");
    assert_eq!(user["orgs"][0]["type"], "org");
    assert!(
        user["orgs"][0]["href"]
            .as_str()
            .unwrap()
            .ends_with(user["orgs"][0]["sourcedId"].as_str().unwrap())
    );
    assert!(user["dateLastModified"].as_str().unwrap().ends_with('Z'));
    assert!(user["metadata"].is_object());

    let demo = get(&sim, &format!("demographics/{uid}")).await.json();
    let d = &demo["demographics"];
    assert!(["true", "false"].contains(&d["white"].as_str().unwrap()));
    assert!(d["metadata"]["ext_504"].is_string());

    let class = get(&sim, &format!("classes/{cid}")).await.json();
    assert!(class["class"]["terms"][0]["sourcedId"].is_string());
    assert_eq!(class["class"]["course"]["type"], "course");

    let e = get(&sim, "enrollments?limit=1").await.json();
    let e = &e["enrollments"][0];
    assert!(["true", "false"].contains(&e["primary"].as_str().unwrap()));
    assert_eq!(e["class"]["type"], "class");

    let missing = get(&sim, "users/does-not-exist").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.code_minor(), "unknownobject");
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn every_nth_faults_hit_the_predicted_requests() {
    let sim = tiny(8).await;
    sim.set_faults(Faults {
        server_error_every: Some(3),
        server_error_status: 503,
        ..Faults::default()
    });
    let statuses: Vec<u16> = futures_statuses(&sim, 6).await;
    assert_eq!(statuses, [200, 200, 503, 200, 200, 503]);

    sim.set_faults(Faults {
        rate_limit_every: Some(2),
        retry_after_secs: 0,
        ..Faults::default()
    });
    let a = get(&sim, "orgs").await;
    let b = get(&sim, "orgs").await;
    assert_eq!((a.status, b.status), (200, 429));
    assert_eq!(b.header("retry-after").as_deref(), Some("0"));

    sim.set_faults(Faults {
        truncate_body_every: Some(1),
        ..Faults::default()
    });
    let t = get(&sim, "users").await;
    assert_eq!(t.status, 200);
    assert!(serde_json::from_str::<Value>(&t.text).is_err());

    sim.set_faults(Faults {
        delay: Some(Duration::from_millis(300)),
        ..Faults::default()
    });
    let started = Instant::now();
    assert_eq!(get(&sim, "orgs").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    sim.set_faults(Faults::default());
    let stats = sim.stats();
    assert_eq!(stats.per_status.get(&503), Some(&2));
    assert_eq!(stats.per_status.get(&429), Some(&1));
    assert_eq!(stats.per_collection.get("orgs"), Some(&9));
    sim.reset_stats();
    assert_eq!(sim.stats().total, 0);
}

async fn futures_statuses(sim: &SimHandle, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(sim, "orgs").await.status);
    }
    out
}

#[tokio::test]
async fn path_faults_and_forced_statuses() {
    let sim = tiny(9).await;
    sim.set_faults(Faults {
        fail_path: Some(("users".into(), 2)),
        status_for: Some(("demographics".into(), 403)),
        ..Faults::default()
    });
    assert_eq!(get(&sim, "users").await.status, 500);
    assert_eq!(get(&sim, "orgs").await.status, 200);
    assert_eq!(get(&sim, "users").await.status, 500);
    assert_eq!(get(&sim, "users").await.status, 200);
    let d = get(&sim, "demographics").await;
    assert_eq!(d.status, 403);
    assert_eq!(d.code_minor(), "forbidden");
    assert_eq!(get(&sim, "demographics").await.status, 403);
}

#[tokio::test]
async fn revision_changes_on_demand() {
    let sim = tiny(10).await;
    let rev = |r: &Resp| r.header("x-perm-rev").unwrap();
    let r0 = rev(&get(&sim, "orgs").await);
    assert_eq!(
        rev(&get(&sim, "orgs").await),
        r0,
        "stable while nothing changes"
    );

    sim.set_faults(Faults {
        revision_change_after: Some(2),
        ..Faults::default()
    });
    let a = rev(&get(&sim, "orgs").await);
    let b = rev(&get(&sim, "orgs").await);
    let c = rev(&get(&sim, "orgs").await);
    let d = rev(&get(&sim, "orgs").await);
    assert_eq!((a.as_str(), b.as_str()), (r0.as_str(), r0.as_str()));
    assert_ne!(c, r0);
    assert_eq!(d, c, "changes once");

    sim.set_faults(Faults {
        revision_never_settles: true,
        ..Faults::default()
    });
    let e = rev(&get(&sim, "orgs").await);
    let f = rev(&get(&sim, "orgs").await);
    assert_ne!(e, f);

    sim.set_faults(Faults::default());
    let before = sim.revision();
    sim.with_data(|d| d.users[0].given_name = "Renamed".into());
    assert_ne!(sim.revision(), before, "data edits move the revision");
}

// ---------------------------------------------------------------- scenarios

/// Diffs two data sets per collection: (created, changed, marked tobedeleted, purged).
fn diff<R: oneroster_sim::Record + PartialEq>(
    before: &[R],
    after: &[R],
) -> (
    BTreeSet<String>,
    BTreeSet<String>,
    BTreeSet<String>,
    BTreeSet<String>,
) {
    let b: BTreeMap<&str, &R> = before.iter().map(|r| (r.sourced_id(), r)).collect();
    let a: BTreeMap<&str, &R> = after.iter().map(|r| (r.sourced_id(), r)).collect();
    let mut created = BTreeSet::new();
    let mut changed = BTreeSet::new();
    let mut marked = BTreeSet::new();
    for (id, r) in &a {
        match b.get(id) {
            None => {
                created.insert(id.to_string());
            }
            Some(old) if *old != *r => {
                if r.status() == Status::ToBeDeleted && old.status() == Status::Active {
                    marked.insert(id.to_string());
                } else {
                    changed.insert(id.to_string());
                }
                assert!(
                    r.date_last_modified() > old.date_last_modified(),
                    "{id} dlm bumped"
                );
            }
            _ => {}
        }
    }
    let purged = b
        .keys()
        .filter(|id| !a.contains_key(*id))
        .map(|s| s.to_string())
        .collect();
    (created, changed, marked, purged)
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

fn check_log(before: &Dataset, after: &Dataset, log: &ChangeLog) {
    macro_rules! check {
        ($field:ident, $c:expr) => {{
            let (created, changed, marked, purged) = diff(&before.$field, &after.$field);
            let l = log.of($c);
            assert_eq!(set(&l.created), created, "{:?} created", $c);
            assert_eq!(set(&l.marked_tobedeleted), marked, "{:?} marked", $c);
            assert_eq!(set(&l.purged), purged, "{:?} purged", $c);
            changed
        }};
    }
    assert_eq!(
        set(&log.of(Collection::Users).updated),
        check!(users, Collection::Users)
    );
    assert_eq!(
        set(&log.of(Collection::Classes).updated),
        check!(classes, Collection::Classes)
    );
    assert!(check!(enrollments, Collection::Enrollments).is_empty());
    let demo_changed = check!(demographics, Collection::Demographics);
    let imported = set(&log.of(Collection::Demographics).updated);
    let nonimported = set(&log.demographics_nonimported_only);
    assert!(imported.is_disjoint(&nonimported));
    assert_eq!(&imported | &nonimported, demo_changed);
    for id in &imported {
        let (o, n) = (
            before.demographics_of(id).unwrap(),
            after.demographics_of(id).unwrap(),
        );
        assert!(
            o.sex != n.sex || o.asian != n.asian,
            "{id}: imported field changed"
        );
    }
    for id in &nonimported {
        let (o, n) = (
            before.demographics_of(id).unwrap(),
            after.demographics_of(id).unwrap(),
        );
        assert_eq!(
            (&o.sex, o.asian, o.white, o.hispanic_or_latino_ethnicity),
            (&n.sex, n.asian, n.white, n.hispanic_or_latino_ethnicity)
        );
    }
}

#[tokio::test]
async fn day_of_churn_log_matches_the_data() {
    let mut counts = Counts::tiny();
    counts.students = 400;
    counts.classes = 30;
    let sim = spawn(SimConfig::new(11, counts)).await.unwrap();
    let before = sim.snapshot();
    let rev = sim.revision();
    let log = sim.apply(Scenario::DayOfChurn { seed: 1 });
    let after = sim.snapshot();
    check_log(&before, &after, &log);
    assert_ne!(sim.revision(), rev);
    for c in [
        Collection::Users,
        Collection::Enrollments,
        Collection::Demographics,
    ] {
        assert!(!log.of(c).created.is_empty(), "{c:?}");
        assert!(!log.of(c).purged.is_empty(), "{c:?}");
    }
    assert!(!log.of(Collection::Users).updated.is_empty());
    assert!(!log.of(Collection::Users).marked_tobedeleted.is_empty());
    assert!(!log.demographics_nonimported_only.is_empty());
    assert_eq!(log.of(Collection::Classes).updated.len(), 1);
    // A second day builds on the first without id clashes.
    let log2 = sim.apply(Scenario::DayOfChurn { seed: 2 });
    check_log(&after, &sim.snapshot(), &log2);
}

#[tokio::test]
async fn a_day_of_edits_purges_nothing_and_dates_every_change() {
    let mut counts = Counts::tiny();
    counts.students = 400;
    let sim = spawn(SimConfig::new(11, counts)).await.unwrap();
    let before = sim.snapshot();
    let log = sim.apply(Scenario::DayOfEdits { seed: 1 });
    let after = sim.snapshot();
    check_log(&before, &after, &log);
    for c in [Collection::Users, Collection::Enrollments] {
        assert!(log.of(c).purged.is_empty(), "{c:?}");
        assert!(!log.of(c).marked_tobedeleted.is_empty(), "{c:?}");
        assert!(!log.of(c).created.is_empty(), "{c:?}");
    }
    // Every changed record carries a dateLastModified after everything that was there before.
    let newest = before
        .enrollments
        .iter()
        .map(|e| e.date_last_modified)
        .chain(before.users.iter().map(|u| u.date_last_modified))
        .max()
        .unwrap();
    for id in log.of(Collection::Enrollments).marked_tobedeleted {
        let e = after
            .enrollments
            .iter()
            .find(|e| e.sourced_id == id)
            .unwrap();
        assert!(e.date_last_modified > newest);
    }
}

#[tokio::test]
async fn term_rollover_purges_semester_one() {
    let sim = tiny(12).await;
    let before = sim.snapshot();
    let log = sim.apply(Scenario::TermRollover);
    let after = sim.snapshot();
    check_log(&before, &after, &log);
    let purged = log.of(Collection::Enrollments).purged;
    assert!(
        purged.len() > before.enrollments.len() / 5,
        "legitimately large"
    );
    for e in &after.enrollments {
        let class = after.class(&e.class).unwrap();
        assert!(
            !log.of(Collection::Classes)
                .marked_tobedeleted
                .contains(&class.sourced_id)
        );
    }
    assert!(sim.apply(Scenario::TermRollover).is_empty(), "only once");
}

#[tokio::test]
async fn outage_serves_empty_collections_until_restore() {
    let sim = tiny(13).await;
    let ok = get(&sim, "users").await;
    let log = sim.apply(Scenario::Outage);
    assert!(log.is_empty());
    let empty = get(&sim, "users?limit=10").await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.text, r#"{"users":[]}"#);
    assert_eq!(empty.total(), 0);
    sim.apply(Scenario::Restore);
    let back = get(&sim, "users").await;
    assert_eq!(back.text, ok.text);
    assert_eq!(back.header("x-perm-rev"), ok.header("x-perm-rev"));
}

#[tokio::test]
async fn control_api_over_http() {
    let sim = tiny(14).await;
    let base = format!("http://{}/__sim", sim.addr());
    let post = |path: &str, body: &str| {
        client()
            .post(format!("{base}/{path}"))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
    };
    let log = send(post("scenario", r#"{"name":"day_of_churn","seed":3}"#)).await;
    assert_eq!(log.status, 200, "{}", log.text);
    let parsed: ChangeLog = serde_json::from_str(&log.text).unwrap();
    assert!(!parsed.is_empty());
    assert_eq!(
        send(post("scenario", r#"{"name":"outage","seed":1}"#))
            .await
            .status,
        200
    );
    assert_eq!(get(&sim, "orgs").await.total(), 0);
    assert_eq!(
        send(post("scenario", r#"{"name":"restore"}"#)).await.status,
        200
    );
    assert!(get(&sim, "orgs").await.total() > 0);
    let rollover = send(post("scenario", r#"{"name":"term_rollover","seed":0}"#)).await;
    assert_eq!(rollover.status, 200, "{}", rollover.text);
    assert_eq!(
        send(post("scenario", r#"{"name":"flood"}"#)).await.status,
        400
    );
    let f = send(post(
        "faults",
        r#"{"status_for":["users",401],"delay":"10ms"}"#,
    ))
    .await;
    assert_eq!(f.status, 200, "{}", f.text);
    assert_eq!(get(&sim, "users").await.status, 401);
    assert_eq!(send(post("faults", r#"{"bogus":1}"#)).await.status, 400);
    let stats = send(client().get(format!("{base}/stats"))).await.json();
    assert_eq!(stats["per_collection"]["users"], 1);
    assert_eq!(stats["per_collection"]["orgs"], 2);
    assert_eq!(send(post("reset_stats", "")).await.status, 204);
    assert_eq!(sim.stats().total, 0);
    sim.shutdown().await;
}

// ---------------------------------------------------------------- determinism

async fn all_bodies(sim: &SimHandle) -> Vec<String> {
    let mut out = v1p1_bodies(sim).await;
    for c in Collection::ALL {
        out.push(
            get_v1p2(sim, &format!("{}?limit=10000", c.path()))
                .await
                .text,
        );
    }
    out
}

async fn v1p1_bodies(sim: &SimHandle) -> Vec<String> {
    let mut out = Vec::new();
    for c in Collection::ALL {
        out.push(get(sim, &format!("{}?limit=10000", c.path())).await.text);
    }
    out
}

#[tokio::test]
async fn same_seed_same_bytes() {
    let a = tiny(42).await;
    let b = tiny(42).await;
    let c = tiny(43).await;
    let (ba, bb, bc) = (
        all_bodies(&a).await,
        all_bodies(&b).await,
        all_bodies(&c).await,
    );
    assert_eq!(ba, bb);
    assert_ne!(ba, bc);
    assert_eq!(
        a.apply(Scenario::DayOfChurn { seed: 5 }),
        b.apply(Scenario::DayOfChurn { seed: 5 })
    );
    assert_eq!(all_bodies(&a).await, all_bodies(&b).await);
    let r = get(&a, "users").await;
    assert_eq!(
        r.header("x-perm-rev"),
        get(&b, "users").await.header("x-perm-rev")
    );
}

#[test]
fn generated_district_has_the_requested_shape() {
    let counts = Counts::tiny();
    let d = oneroster_sim::generate(1, &counts);
    let students = d.users.iter().filter(|u| u.role == "student").count();
    let teachers = d.users.iter().filter(|u| u.role == "teacher").count();
    assert_eq!((students, teachers), (counts.students, counts.teachers));
    assert_eq!(d.orgs.len(), counts.schools + 1);
    assert_eq!(d.classes.len(), counts.classes);
    assert!(d.demographics.len() >= counts.students);
    // Every class has exactly one primary teacher.
    for c in &d.classes {
        let primaries = d
            .enrollments
            .iter()
            .filter(|e| e.class == c.sourced_id && e.role == "teacher" && e.primary)
            .count();
        assert_eq!(primaries, 1, "{}", c.sourced_id);
    }
    let student_enrollments = d.enrollments.iter().filter(|e| e.role == "student").count();
    assert_eq!(
        student_enrollments,
        counts.students * counts.enrollments_per_student
    );
    assert!(
        d.users
            .windows(2)
            .all(|w| w[0].sourced_id < w[1].sourced_id)
    );
}

// ---------------------------------------------------------------- 1.1 unchanged by 1.2

/// FNV-1a over the bodies, each followed by a newline: a fingerprint small enough to pin.
fn fingerprint(bodies: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bodies.iter().flat_map(|b| b.bytes().chain([b'\n'])) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Two users of seed 42 exactly as the 1.1 wire sent them before the 1.2 fields existed: a
/// teacher at two schools (1.2: teacher at one, siteAdministrator at the other) and an
/// administrator (1.2: siteAdministrator, and districtAdministrator at the district).
const SEED_42_TEACHER_V1P1: &str = r#"{"sourcedId":"2ddbe23b-4ee7-b7a4-ba92-89a0e52717aa","status":"active","dateLastModified":"2026-10-08T05:40:16.980Z","metadata":{},"username":"øivanova0","userIds":[{"identifier":"T000000","type":"SIS"}],"enabledUser":"true","givenName":"Øystein","familyName":"Ivanova","middleName":"","role":"teacher","identifier":"T000000","email":"øivanova0@example.org","sms":"","phone":"","agents":[],"orgs":[{"href":"https://lakeview-ny-v2.rosterserver.com/ims/oneroster/v1p1/orgs/7_1000","sourcedId":"7_1000","type":"org"},{"href":"https://lakeview-ny-v2.rosterserver.com/ims/oneroster/v1p1/orgs/7_1001","sourcedId":"7_1001","type":"org"}],"grades":[],"password":""}"#;
const SEED_42_ADMIN_V1P1: &str = r#"{"sourcedId":"adm-0","status":"active","dateLastModified":"2026-09-21T21:45:08.189Z","metadata":{},"username":"nsøndergaard0","userIds":[],"enabledUser":"true","givenName":"Ngọc","familyName":"Søndergaard","middleName":"","role":"administrator","identifier":"A0000","email":"nsøndergaard0@example.org","sms":"","phone":"","agents":[],"orgs":[{"href":"https://lakeview-ny-v2.rosterserver.com/ims/oneroster/v1p1/orgs/7_1000","sourcedId":"7_1000","type":"org"}],"grades":[],"password":""}"#;

#[tokio::test]
async fn v1p1_bytes_are_what_they_were_before_1_2() {
    // Fingerprints taken from the simulator as it was before it served 1.2: the whole tiny
    // district of seed 42, then the same after a day of churn (seed 3) and the term rollover.
    let sim = tiny(42).await;
    let bodies = v1p1_bodies(&sim).await;
    assert_eq!(fingerprint(&bodies), 0x4ffe_447a_f39f_a2dc);
    assert!(bodies[4].contains(SEED_42_TEACHER_V1P1), "{}", bodies[4]);
    assert!(bodies[4].contains(SEED_42_ADMIN_V1P1));
    sim.apply(Scenario::DayOfChurn { seed: 3 });
    sim.apply(Scenario::TermRollover);
    assert_eq!(fingerprint(&v1p1_bodies(&sim).await), 0x9c90_0a68_ba23_8023);
}

// ---------------------------------------------------------------- 1.2

fn keys(record: &Value) -> BTreeSet<&str> {
    record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

fn assert_ref(r: &Value, collection: &str, ref_type: &str) {
    let id = r["sourcedId"].as_str().unwrap();
    assert_eq!(
        r["href"].as_str().unwrap(),
        format!("{HREF_BASE_V1P2}/{collection}/{id}")
    );
    assert_eq!(r["type"], ref_type);
}

#[tokio::test]
async fn v1p2_speaks_1_2() {
    let sim = tiny(42).await;
    let data = sim.snapshot();

    let users = get_v1p2(&sim, "users?limit=1000").await;
    assert_eq!(users.status, 200);
    let users = users.json();
    let users = users["users"].as_array().unwrap();
    assert_eq!(users.len(), data.users.len());
    for (u, model) in users.iter().zip(&data.users) {
        assert_eq!(u["sourcedId"], model.sourced_id.as_str());
        assert_eq!(u["enabledUser"], true, "a JSON boolean");
        for gone in ["role", "orgs", "sms", "phone", "password"] {
            assert!(u.get(gone).is_none(), "{gone} in {u}");
        }
        for present in ["userIds", "agents", "grades", "userProfiles", "roles"] {
            assert!(u[present].is_array(), "{present} in {u}");
        }
        let roles = u["roles"].as_array().unwrap();
        let primary: Vec<&Value> = roles
            .iter()
            .filter(|r| r["roleType"] == "primary")
            .collect();
        assert_eq!(primary.len(), 1, "{u}");
        assert!(
            roles
                .iter()
                .all(|r| r["roleType"] == "secondary" || r == primary[0])
        );
        for r in roles {
            assert_ref(&r["org"], "orgs", "org");
        }
        // The primary role is the 1.1 role and first org, in 1.2 words.
        let role = primary[0]["role"].as_str().unwrap();
        assert_eq!(v1p1_role(role), model.role);
        assert_ne!(role, "administrator", "not a 1.2 role");
        assert_eq!(primary[0]["org"]["sourcedId"], model.orgs[0].as_str());
        assert_eq!(u["primaryOrg"], primary[0]["org"]);
        // Absent values are left out, not sent as "".
        assert_eq!(u.get("middleName").is_some(), !model.middle_name.is_empty());
        assert_eq!(u.get("email").is_some(), !model.email.is_empty());
        assert!(!u.as_object().unwrap().values().any(|v| v == ""), "{u}");
    }
    let student = users
        .iter()
        .find(|u| u["roles"][0]["role"] == "student")
        .unwrap();
    assert!(
        student["userMasterIdentifier"]
            .as_str()
            .unwrap()
            .starts_with("NY")
    );
    assert_eq!(student["grades"].as_array().unwrap().len(), 1);
    let preferred = users
        .iter()
        .filter(|u| u.get("preferredFirstName").is_some());
    assert!(preferred.count() >= 5);
    assert!(users.iter().any(|u| u.get("preferredMiddleName").is_some()));
    assert!(users.iter().any(|u| u.get("preferredLastName").is_some()));
    assert!(users.iter().any(|u| u["pronouns"] == "they/them"));
    // A profile is referenced by the role it serves.
    let with_profile = users
        .iter()
        .find(|u| !u["userProfiles"].as_array().unwrap().is_empty())
        .unwrap();
    let profile = &with_profile["userProfiles"][0];
    assert_eq!(
        with_profile["roles"][0]["userProfile"],
        profile["profileId"]
    );
    assert_eq!(profile["profileType"], "lms");
    assert!(profile["credentials"][0]["username"].is_string());

    let demo = get_v1p2(&sim, "demographics?limit=1000").await.json();
    for d in demo["demographics"].as_array().unwrap() {
        for flag in [
            "americanIndianOrAlaskaNative",
            "asian",
            "blackOrAfricanAmerican",
            "nativeHawaiianOrOtherPacificIslander",
            "white",
            "demographicRaceTwoOrMoreRaces",
            "hispanicOrLatinoEthnicity",
        ] {
            assert!(d[flag].is_boolean(), "{flag} in {d}");
        }
        let sex = d["sex"].as_str().unwrap();
        assert!(
            ["female", "male", "other", "unspecified"].contains(&sex),
            "{sex}"
        );
        assert!(d["birthDate"].as_str().unwrap().len() == 10);
        assert!(!d.as_object().unwrap().values().any(|v| v == ""), "{d}");
    }
    // 1.1-era spellings (the generator plants M, Female, X...) go out in 1.2's words; a value
    // nobody knows goes out as it is, an empty one not at all.
    let planted = [
        ("M", Some("male")),
        ("Female", Some("female")),
        ("X", Some("other")),
    ];
    let planted = planted
        .into_iter()
        .chain([("wizard", Some("wizard")), ("", None)]);
    for (i, (stored, sent)) in planted.enumerate() {
        let id = data.demographics[i].sourced_id.clone();
        sim.with_data(|d| d.demographics[i].sex = stored.into());
        let one = get_v1p2(&sim, &format!("demographics/{id}")).await.json();
        assert_eq!(one["demographics"].get("sex").and_then(Value::as_str), sent);
        let old = get(&sim, &format!("demographics/{id}")).await.json();
        assert_eq!(
            old["demographics"]["sex"], stored,
            "1.1 sends what is stored"
        );
    }

    let sessions = get_v1p2(&sim, "academicSessions").await.json();
    for s in sessions["academicSessions"].as_array().unwrap() {
        assert_eq!(s["schoolYear"], "2027");
        assert!(s["startDate"].is_string() && s["endDate"].is_string());
    }
    let year = get_v1p2(&sim, "academicSessions/sy-2026-2027").await.json();
    assert!(
        year["academicSession"].get("parent").is_none(),
        "absent, not \"\""
    );
    assert_ref(
        &year["academicSession"]["children"][0],
        "academicSessions",
        "academicSession",
    );

    let orgs = get_v1p2(&sim, "orgs").await.json();
    let district = orgs["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "district")
        .unwrap();
    assert!(district.get("parent").is_none());
    assert_ref(&district["children"][0], "orgs", "org");

    let course = get_v1p2(&sim, "courses?limit=1").await.json();
    assert_ref(
        &course["courses"][0]["schoolYear"],
        "academicSessions",
        "academicSession",
    );
    assert_ref(&course["courses"][0]["org"], "orgs", "org");

    let classes = get_v1p2(&sim, "classes?limit=1000").await.json();
    for c in classes["classes"].as_array().unwrap() {
        assert!(
            c["periods"].is_array(),
            "1.2 periods are always an array: {c}"
        );
        assert_ref(&c["course"], "courses", "course");
        assert_ref(&c["school"], "orgs", "org");
        assert_ref(&c["terms"][0], "academicSessions", "academicSession");
        assert!(!c.as_object().unwrap().values().any(|v| v == ""), "{c}");
    }

    let enrollments = get_v1p2(&sim, "enrollments?limit=10000").await.json();
    let enrollments = enrollments["enrollments"].as_array().unwrap();
    assert!(enrollments.iter().any(|e| e["primary"] == true));
    for e in enrollments {
        assert!(e["primary"].is_boolean());
        assert!(["student", "teacher"].contains(&e["role"].as_str().unwrap()));
        assert!(e["beginDate"].is_string() && e["endDate"].is_string());
        assert_ref(&e["user"], "users", "user");
        assert_ref(&e["class"], "classes", "class");
        assert_ref(&e["school"], "orgs", "org");
    }

    // Single objects, with the same envelopes as 1.1.
    let id = &data.users[0].sourced_id;
    let one = get_v1p2(&sim, &format!("users/{id}")).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["user"], users[0]);
    let did = &data.demographics[0].sourced_id;
    let d = get_v1p2(&sim, &format!("demographics/{did}")).await.json();
    assert_eq!(d["demographics"]["sourcedId"], did.as_str());
    let missing = get_v1p2(&sim, "users/does-not-exist").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.code_minor(), "unknownobject");
    assert_eq!(get_v1p2(&sim, "widgets").await.status, 404);
}

#[tokio::test]
async fn users_hold_several_roles_at_several_orgs() {
    let sim = tiny(42).await;
    let data = sim.snapshot();

    // Every generated user: one primary assignment, mirroring the 1.1 role and first org.
    for u in &data.users {
        let primaries: Vec<_> = u.roles.iter().filter(|r| r.is_primary()).collect();
        assert_eq!(primaries.len(), 1, "{}", u.sourced_id);
        assert_eq!(v1p1_role(&primaries[0].role), u.role, "{}", u.sourced_id);
        assert_eq!(primaries[0].org, u.orgs[0]);
        assert_eq!(u.primary_org.as_ref(), u.orgs.first());
    }

    // A teacher at one school who is the site administrator of another.
    let teacher = data
        .users
        .iter()
        .find(|u| {
            u.roles
                .iter()
                .any(|r| r.role == "siteAdministrator" && !r.is_primary())
        })
        .unwrap();
    assert_eq!(teacher.role, "teacher");
    assert_eq!(teacher.identifier, "T000000");
    let r = get_v1p2(&sim, &format!("users/{}", teacher.sourced_id))
        .await
        .json();
    let roles = r["user"]["roles"].as_array().unwrap();
    assert_eq!(roles.len(), 2);
    assert_eq!(
        (
            &roles[0]["roleType"],
            &roles[0]["role"],
            &roles[0]["org"]["sourcedId"]
        ),
        (
            &"primary".into(),
            &"teacher".into(),
            &teacher.orgs[0].as_str().into()
        )
    );
    assert_eq!(
        (
            &roles[1]["roleType"],
            &roles[1]["role"],
            &roles[1]["org"]["sourcedId"]
        ),
        (
            &"secondary".into(),
            &"siteAdministrator".into(),
            &teacher.orgs[1].as_str().into()
        )
    );
    assert_ne!(teacher.orgs[0], teacher.orgs[1]);
    assert_eq!(roles[1]["beginDate"], "2026-08-17");
    assert_eq!(roles[1]["endDate"], "2027-06-19");
    // The 1.1 wire still sees one teacher at two schools.
    let old = get(&sim, &format!("users/{}", teacher.sourced_id))
        .await
        .json();
    assert_eq!(old["user"]["role"], "teacher");
    assert_eq!(old["user"]["orgs"].as_array().unwrap().len(), 2);
    assert!(old["user"].get("roles").is_none());

    // Staff with roles only 1.2 has, sent as `administrator` on the 1.1 wire.
    let roles_of = |id: &str| -> Vec<(String, String, String)> {
        data.user(id)
            .unwrap()
            .roles
            .iter()
            .map(|r| (r.role_type.to_string(), r.role.to_string(), r.org.clone()))
            .collect()
    };
    let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        roles_of("adm-0"),
        [
            t("primary", "siteAdministrator", "7_1000"),
            t("secondary", "districtAdministrator", "district-0001")
        ]
    );
    assert_eq!(
        roles_of("adm-1"),
        [
            t("primary", "principal", "7_1001"),
            t("secondary", "counselor", "7_1001")
        ]
    );
    assert_eq!(
        roles_of("adm-2"),
        [
            t("primary", "aide", "7_1002"),
            t("secondary", "ext:paraprofessional", "7_1002")
        ]
    );
    for (id, role) in [
        ("adm-0", "administrator"),
        ("adm-1", "administrator"),
        ("adm-2", "aide"),
    ] {
        assert_eq!(
            get(&sim, &format!("users/{id}")).await.json()["user"]["role"],
            role
        );
    }
    let ext = get_v1p2(&sim, "users/adm-2").await.json();
    assert_eq!(ext["user"]["roles"][1]["role"], "ext:paraprofessional");

    // A user a test builds without role assignments still gets a 1.2 primary role.
    sim.with_data(|d| {
        let u = d
            .users
            .iter_mut()
            .find(|u| u.sourced_id == "adm-1")
            .unwrap();
        u.roles.clear();
    });
    let derived = get_v1p2(&sim, "users/adm-1").await.json();
    assert_eq!(
        derived["user"]["roles"],
        serde_json::json!([{"roleType": "primary", "role": "siteAdministrator", "org": {
            "href": format!("{HREF_BASE_V1P2}/orgs/7_1001"), "sourcedId": "7_1001", "type": "org"}}])
    );
}

#[tokio::test]
async fn v1p2_pages_filters_and_fields_work_as_on_1_1() {
    let sim = tiny(6).await;
    let expected: Vec<String> =
        sim.read(|d| d.users.iter().map(|u| u.sourced_id.clone()).collect());
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let r = get_v1p2(
            &sim,
            &format!("users?limit=7&offset={offset}&sort=sourcedId&orderBy=asc"),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.total(), expected.len());
        let page = ids(&r.json(), "users");
        assert_eq!(r.count(), page.len());
        if page.is_empty() {
            break;
        }
        seen.extend(page);
        offset += 7;
    }
    assert_eq!(seen, expected);
    let desc = get_v1p2(&sim, "users?limit=3&orderBy=desc").await;
    let last_three: Vec<String> = expected.iter().rev().take(3).cloned().collect();
    assert_eq!(ids(&desc.json(), "users"), last_three);
    assert_eq!(
        get_v1p2(&sim, "enrollments").await.count(),
        100,
        "spec default limit"
    );
    let rev = |r: &Resp| r.header("x-perm-rev").unwrap();
    assert_eq!(
        rev(&get_v1p2(&sim, "orgs").await),
        rev(&get(&sim, "orgs").await),
        "one data set, one revision"
    );

    // The delta filter finds the same records on both wires.
    let cut = sim.read(|d| d.clock);
    sim.apply(Scenario::DayOfChurn { seed: 9 });
    let stamp = oneroster_sim::format_timestamp(cut).to_string();
    let delta = enc(&format!("dateLastModified>'{stamp}'"));
    let path = format!("users?limit=1000&filter={delta}");
    let (new, old) = (get_v1p2(&sim, &path).await, get(&sim, &path).await);
    assert_eq!(ids(&new.json(), "users"), ids(&old.json(), "users"));
    assert_eq!(new.total(), old.total());
    assert!(new.total() > 0);
    let tbd = get_v1p2(
        &sim,
        &format!("users?limit=1000&filter={}", enc("status='tobedeleted'")),
    )
    .await;
    assert_eq!(
        tbd.total(),
        sim.read(|d| d
            .users
            .iter()
            .filter(|u| u.status == Status::ToBeDeleted)
            .count())
    );
    // A JSON boolean compares as its text; 1.2 users have no `role` field to filter on.
    let primary = get_v1p2(
        &sim,
        &format!("enrollments?limit=10000&filter={}", enc("primary='true'")),
    )
    .await;
    assert_eq!(primary.status, 200);
    assert_eq!(
        primary.total(),
        sim.read(|d| d.enrollments.iter().filter(|e| e.primary).count())
    );
    let by_role = format!("users?filter={}", enc("role='student'"));
    assert_eq!(get_v1p2(&sim, &by_role).await.status, 400);
    assert_eq!(get(&sim, &by_role).await.status, 200);

    let proj = get_v1p2(
        &sim,
        "users?limit=20&fields=sourcedId,roles,preferredFirstName",
    )
    .await;
    assert_eq!(proj.status, 200);
    for u in proj.json()["users"].as_array().unwrap() {
        let k = keys(u);
        assert!(k.contains("sourcedId") && k.contains("roles"));
        assert!(k.is_subset(&BTreeSet::from([
            "sourcedId",
            "roles",
            "preferredFirstName"
        ])));
    }
    let demo = get_v1p2(&sim, "demographics?limit=3&fields=sourcedId,sex,white").await;
    for d in demo.json()["demographics"].as_array().unwrap() {
        assert_eq!(keys(d), BTreeSet::from(["sourcedId", "sex", "white"]));
        assert!(d["white"].is_boolean());
    }
    assert_eq!(
        get_v1p2(&sim, "users?fields=sourcedId,role").await.status,
        400
    );
    assert_eq!(get(&sim, "users?fields=sourcedId,roles").await.status, 400);
}

#[tokio::test]
async fn v1p2_shares_auth_faults_and_scenarios_with_1_1() {
    let sim = tiny(13).await;
    let url = format!("{}/users", sim.base_url_v1p2());
    assert_eq!(send(client().get(&url)).await.status, 401);
    assert_eq!(
        send(client().get(&url).header(AUTHORIZATION, "Bearer nope"))
            .await
            .status,
        401
    );

    sim.set_faults(Faults {
        status_for: Some(("demographics".into(), 403)),
        rate_limit_every: Some(3),
        retry_after_secs: 0,
        ..Faults::default()
    });
    assert_eq!(get_v1p2(&sim, "demographics").await.status, 403);
    assert_eq!(get(&sim, "orgs").await.status, 200);
    assert_eq!(
        get_v1p2(&sim, "orgs").await.status,
        429,
        "one counter for both"
    );
    sim.set_faults(Faults::default());
    assert_eq!(sim.stats().per_collection.get("orgs"), Some(&2));

    sim.apply(Scenario::Outage);
    let empty = get_v1p2(&sim, "users").await;
    assert_eq!(
        (empty.status, empty.text.as_str()),
        (200, r#"{"users":[]}"#)
    );
    sim.apply(Scenario::Restore);
    assert!(get_v1p2(&sim, "users").await.total() > 0);
}

#[tokio::test]
async fn the_v1p1_roles_switch_adds_roles_to_1_1_users_and_nothing_else() {
    let plain = tiny(42).await;
    let mut cfg = SimConfig::new(42, Counts::tiny());
    cfg.v1p1_roles = true;
    let with_roles = spawn(cfg).await.unwrap();

    let a = get(&plain, "users?limit=1000").await.json();
    let mut b = get(&with_roles, "users?limit=1000").await.json();
    let users = b["users"].as_array_mut().unwrap();
    for u in users.iter_mut() {
        let roles = u.as_object_mut().unwrap().remove("roles").unwrap();
        let roles = roles.as_array().unwrap();
        assert_eq!(roles[0]["roleType"], "primary");
        assert!(
            roles[0]["org"]["href"]
                .as_str()
                .unwrap()
                .starts_with(HREF_BASE),
            "1.1 hrefs"
        );
        assert!(
            u["role"].is_string() && u["orgs"].is_array(),
            "1.1 fields stay"
        );
    }
    assert_eq!(a, b, "users without roles[] are the plain 1.1 users");
    let teacher = get(&with_roles, "users/2ddbe23b-4ee7-b7a4-ba92-89a0e52717aa")
        .await
        .json();
    assert_eq!(teacher["user"]["role"], "teacher");
    assert_eq!(teacher["user"]["roles"][1]["role"], "siteAdministrator");
    let proj = get(&with_roles, "users?limit=2&fields=sourcedId,roles").await;
    assert_eq!(proj.status, 200);
    assert_eq!(
        keys(&proj.json()["users"][0]),
        BTreeSet::from(["sourcedId", "roles"])
    );
    // Other collections are untouched.
    for c in ["orgs", "classes", "enrollments", "demographics"] {
        let path = format!("{c}?limit=10000");
        assert_eq!(
            get(&plain, &path).await.text,
            get(&with_roles, &path).await.text
        );
    }
}
