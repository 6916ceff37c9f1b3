//! Surviving the network and every way into ClassLink (issue 5): the three auth modes, retries
//! under injected 5xx/429 and short-lived tokens, timeouts, bounded concurrency, and error
//! messages an operator can act on. Real HTTP against the simulator, a real PostgreSQL.

use std::time::Duration;

use oneroster_sim::{Counts, Faults, SimConfig, SimHandle, Tier};
use oneroster_sync::sync::{Outcome, RunReport};

use crate::support::{DISTRICT, Harness, output_text, run_binary, version_toml};
use crate::sync::{StoreRows, assert_store_eq, expected, store_rows};

#[derive(Clone, Copy)]
enum Mode {
    OAuth2,
    Bearer,
    OAuth1,
}

/// One district entry for `mode`, with the simulator's credentials unless `secret` overrides
/// them, and `extra` keys (page_size, timeouts...) appended.
fn district(sim: &SimHandle, mode: Mode, secret: Option<&str>, extra: &str) -> String {
    district_at(sim, &version_toml(sim), mode, secret, extra)
}

/// `root`: the `base_url` line (and any `oneroster_version`).
fn district_at(
    sim: &SimHandle,
    root: &str,
    mode: Mode,
    secret: Option<&str>,
    extra: &str,
) -> String {
    let c = sim.credentials();
    let auth = match mode {
        Mode::OAuth2 => format!(
            "token_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n",
            sim.token_url(),
            c.client_id,
            secret.unwrap_or(&c.client_secret)
        ),
        Mode::Bearer => format!(
            "auth = \"bearer\"\nclient_secret = \"{}\"\n",
            secret.unwrap_or(&c.bearer_token)
        ),
        Mode::OAuth1 => format!(
            "auth = \"oauth1\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n",
            c.client_id,
            secret.unwrap_or(&c.client_secret)
        ),
    };
    format!("[[districts]]\nid = \"{DISTRICT}\"\n{root}{auth}{extra}\n")
}

async fn harness(sim: SimConfig, entry: impl FnOnce(&SimHandle) -> String) -> Harness {
    Harness::build(sim, None, entry).await
}

fn s_district() -> SimConfig {
    SimConfig::new(7, Counts::tier(Tier::S))
}

async fn assert_synced_as_expected(h: &Harness, report: &RunReport) {
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let want = expected(&h.sim.snapshot(), &StoreRows::new());
    assert_store_eq(&store_rows(&h.db, DISTRICT).await, &want);
}

fn failed_with(report: &RunReport) -> String {
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    report.error.clone().expect("a failed run has an error")
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    port
}

// ---------------------------------------------------------------------------------------------
// 1. Every way in syncs the S district.

#[tokio::test]
async fn oauth2_with_two_second_tokens_syncs_the_s_district() {
    let mut sim = s_district();
    sim.token_ttl = Duration::from_secs(2);
    let h = harness(sim, |s| district(s, Mode::OAuth2, None, "")).await;
    let report = h.sync().await;
    // Whether each token was replaced before expiry or once on a 401 depends on timing; either
    // way the run completes with every record.
    assert_synced_as_expected(&h, &report).await;
}

#[tokio::test]
async fn bearer_syncs_the_s_district() {
    let h = harness(s_district(), |s| district(s, Mode::Bearer, None, "")).await;
    let report = h.sync().await;
    assert_synced_as_expected(&h, &report).await;
    assert_eq!(h.sim.stats().token_requests, 0);
}

#[tokio::test]
async fn oauth1_syncs_the_s_district() {
    let h = harness(s_district(), |s| district(s, Mode::OAuth1, None, "")).await;
    let report = h.sync().await;
    assert_synced_as_expected(&h, &report).await;
    assert_eq!(h.sim.stats().token_requests, 0);
}

#[tokio::test]
async fn a_wrong_secret_fails_fast_with_a_credential_error() {
    let h = harness(SimConfig::new(7, Counts::tiny()), |s| {
        district(s, Mode::OAuth2, Some("not-the-secret"), "max_retries = 3\n")
    })
    .await;
    let error = failed_with(&h.sync().await);
    assert!(error.contains("credentials"), "{error}");
    assert!(!error.contains("not-the-secret"), "{error}");
    let stats = h.sim.stats();
    assert!(stats.token_requests <= 2, "{stats:?}");
    assert_eq!(stats.total, 0, "no collection request without a token");
}

#[tokio::test]
async fn a_credential_rejected_with_a_fresh_token_is_told_from_an_expired_one() {
    // The server turns every orgs request away with 401: one fresh token, once, then a
    // credential error, without retries.
    let h = harness(SimConfig::new(7, Counts::tiny()), |s| {
        district(s, Mode::OAuth2, None, "max_retries = 3\n")
    })
    .await;
    h.sim.set_faults(Faults {
        status_for: Some(("orgs".into(), 401)),
        ..Faults::default()
    });
    let error = failed_with(&h.sync().await);
    assert!(error.contains("credentials rejected"), "{error}");
    assert!(error.contains("HTTP 401"), "{error}");
    let stats = h.sim.stats();
    assert_eq!(stats.token_requests, 2, "{stats:?}");
    assert_eq!(stats.per_collection.get("orgs"), Some(&2), "{stats:?}");
}

#[tokio::test]
async fn a_wrong_bearer_token_is_a_credential_error_at_once() {
    let h = harness(SimConfig::new(7, Counts::tiny()), |s| {
        district(s, Mode::Bearer, Some("not-the-token"), "max_retries = 3\n")
    })
    .await;
    let error = failed_with(&h.sync().await);
    assert!(error.contains("credentials rejected"), "{error}");
    assert!(!error.contains("not-the-token"), "{error}");
    assert_eq!(h.sim.stats().total, 1);
}

// ---------------------------------------------------------------------------------------------
// 2. Retries.

#[tokio::test]
async fn s_sync_completes_through_5xx_429_and_two_second_tokens() {
    let mut sim = s_district();
    sim.token_ttl = Duration::from_secs(2);
    // Serial, so the fault counters (every 10th / 7th collection request) fall on predictable
    // requests: no three consecutive requests fail, so max_retries = 2 always suffices.
    let h = harness(sim, |s| {
        district(s, Mode::OAuth2, None, "concurrency = 1\nmax_retries = 2\n")
    })
    .await;
    h.sim.set_faults(Faults {
        server_error_every: Some(10),
        server_error_status: 503,
        rate_limit_every: Some(7),
        retry_after_secs: 0,
        ..Faults::default()
    });
    let report = h.sync().await;
    assert_synced_as_expected(&h, &report).await;
    let stats = h.sim.stats();
    assert!(
        stats.per_status.get(&503).copied().unwrap_or(0) > 0
            && stats.per_status.get(&429).copied().unwrap_or(0) > 0,
        "the faults were injected: {stats:?}"
    );
}

#[tokio::test]
async fn rate_limiting_that_never_lets_up_is_named_in_the_error() {
    let h = harness(SimConfig::new(7, Counts::tiny()), |s| {
        district(s, Mode::Bearer, None, "max_retries = 2\n")
    })
    .await;
    h.sim.set_faults(Faults {
        rate_limit_every: Some(1),
        retry_after_secs: 0,
        ..Faults::default()
    });
    let error = failed_with(&h.sync().await);
    assert!(error.contains("rate limited (HTTP 429)"), "{error}");
    assert!(error.contains("after 3 attempts"), "{error}");
    assert_eq!(h.sim.stats().total, 3);
}

#[tokio::test]
async fn client_errors_other_than_401_408_429_are_not_retried() {
    let h = harness(SimConfig::new(7, Counts::tiny()), |s| {
        district(s, Mode::Bearer, None, "max_retries = 3\n")
    })
    .await;
    h.sim.set_faults(Faults {
        status_for: Some(("orgs".into(), 400)),
        ..Faults::default()
    });
    let error = failed_with(&h.sync().await);
    assert!(error.contains("HTTP 400"), "{error}");
    assert_eq!(h.sim.stats().total, 1);
}

// ---------------------------------------------------------------------------------------------
// 3. Timeouts.

#[tokio::test]
async fn a_stalling_server_is_retried_then_fails_the_run_with_nothing_written() {
    let h = harness(SimConfig::new(7, Counts::tiny()), |s| {
        district(
            s,
            Mode::OAuth2,
            None,
            "request_timeout = \"1s\"\nmax_retries = 2\n",
        )
    })
    .await;
    assert_eq!(h.sync().await.outcome, Outcome::Applied);
    let before = h.db.dump_schemas(&["roster"]);

    h.sim
        .with_data(|ds| ds.users[0].given_name = "Changed".into());
    h.sim.set_faults(Faults {
        delay: Some(Duration::from_secs(3)),
        ..Faults::default()
    });
    h.sim.reset_stats();
    let out = run_binary(&h.config, &["sync", "--district", DISTRICT], &[]).await;
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("timed out after 3 attempts"), "{text}");
    assert!(text.contains("retries exhausted"), "{text}");
    assert!(!text.contains(&h.sim.credentials().client_secret), "{text}");
    // The last attempt may reach the server's handler only after the client gave up on it.
    for _ in 0..20 {
        if h.sim.stats().per_collection.get("orgs") == Some(&3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h.sim.stats().per_collection.get("orgs"), Some(&3));
    assert_eq!(h.db.dump_schemas(&["roster"]), before);
}

// ---------------------------------------------------------------------------------------------
// 4. Bounded concurrency.

#[tokio::test]
async fn concurrency_1_and_8_produce_identical_stores() {
    let counts = Counts {
        students: 600,
        teachers: 40,
        classes: 120,
        enrollments_per_student: 4,
        ..Counts::tiny()
    };
    let mut stores = Vec::new();
    for concurrency in [1, 8] {
        let h = harness(SimConfig::new(13, counts.clone()), |s| {
            district(
                s,
                Mode::OAuth2,
                None,
                &format!("page_size = 37\nconcurrency = {concurrency}\n"),
            )
        })
        .await;
        let report = h.sync().await;
        assert_synced_as_expected(&h, &report).await;
        stores.push(store_rows(&h.db, DISTRICT).await);
    }
    assert!(stores[0]["enrollments"].len() > 37 * 8, "many pages");
    assert_store_eq(&stores[1], &stores[0]);
}

// ---------------------------------------------------------------------------------------------
// 5. Errors an operator can act on.

#[tokio::test]
async fn forbidden_demographics_asks_to_enable_demographics() {
    let h = harness(SimConfig::new(7, Counts::tiny()), |s| {
        district(s, Mode::Bearer, None, "")
    })
    .await;
    h.sim.set_faults(Faults {
        status_for: Some(("demographics".into(), 403)),
        ..Faults::default()
    });
    let error = failed_with(&h.sync().await);
    assert!(
        error.contains("demographics: forbidden (HTTP 403)"),
        "{error}"
    );
    assert!(
        error.contains("enable \"Demographics\" for the app"),
        "{error}"
    );
    assert!(error.contains("demographics = \"off\""), "{error}");
    assert_eq!(h.sim.stats().per_collection.get("demographics"), Some(&1));
}

#[tokio::test]
async fn forbidden_collection_asks_to_share_full_permissions() {
    let h = harness(SimConfig::new(7, Counts::tiny()), |s| {
        district(s, Mode::Bearer, None, "")
    })
    .await;
    h.sim.set_faults(Faults {
        status_for: Some(("users".into(), 403)),
        ..Faults::default()
    });
    let error = failed_with(&h.sync().await);
    assert!(error.contains("users: forbidden (HTTP 403)"), "{error}");
    assert!(
        error.contains("in ClassLink, share users") && error.contains("\"Full Permissions\""),
        "{error}"
    );
}

#[tokio::test]
async fn a_wrong_base_path_is_reported_as_a_bad_base_url() {
    let h = harness(SimConfig::new(7, Counts::tiny()), |s| {
        let base = s.base_url().replace("/v1p1", "/v1p9");
        district_at(
            s,
            &format!("base_url = \"{base}\"\n"),
            Mode::Bearer,
            None,
            "max_retries = 3\n",
        )
    })
    .await;
    let error = failed_with(&h.sync().await);
    assert!(
        error.contains("orgs: the endpoint does not exist on this server (HTTP 404"),
        "{error}"
    );
    assert!(error.contains("check base_url"), "{error}");
    assert!(error.contains("/v1p9/orgs"), "{error}");
}

#[tokio::test]
async fn a_district_that_is_down_is_reported_as_unreachable() {
    let port = closed_port();
    let h = harness(SimConfig::new(7, Counts::tiny()), |s| {
        let base = format!("http://127.0.0.1:{port}/ims/oneroster/v1p1");
        district_at(
            s,
            &format!("base_url = \"{base}\"\n"),
            Mode::Bearer,
            None,
            "max_retries = 1\n",
        )
    })
    .await;
    let error = failed_with(&h.sync().await);
    assert!(error.contains("connection refused"), "{error}");
    assert!(error.contains("down or unreachable"), "{error}");
    assert!(error.contains("after 2 attempts"), "{error}");
}

#[tokio::test]
async fn a_token_endpoint_that_is_down_is_reported_as_unreachable() {
    let port = closed_port();
    let h = harness(SimConfig::new(7, Counts::tiny()), |s| {
        let c = s.credentials();
        format!(
            "[[districts]]\nid = \"{DISTRICT}\"\nbase_url = \"{}\"\ntoken_url = \"http://127.0.0.1:{port}/oauth2/token\"\n\
             client_id = \"{}\"\nclient_secret = \"{}\"\nmax_retries = 1\n",
            s.base_url(),
            c.client_id,
            c.client_secret
        )
    })
    .await;
    let error = failed_with(&h.sync().await);
    assert!(error.contains("token endpoint"), "{error}");
    assert!(error.contains("connection refused"), "{error}");
    assert!(error.contains("down or unreachable"), "{error}");
    assert_eq!(h.sim.stats().total, 0);
}

#[tokio::test]
async fn a_run_past_its_deadline_fails_with_nothing_written() {
    // Every request answers after 400 ms, well within request_timeout, but the whole run may
    // take only 1 s.
    let h = Harness::with(
        SimConfig::new(7, Counts::tiny()),
        None,
        "run_timeout = \"1s\"",
    )
    .await;
    let store = h.db.dump_schemas(&["roster"]);
    h.sim.set_faults(Faults {
        delay: Some(Duration::from_millis(400)),
        ..Faults::default()
    });
    let report = h.sync().await;
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    assert!(
        report
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("run_timeout"),
        "{report:?}"
    );
    assert_eq!(h.db.dump_schemas(&["roster"]), store);
}

#[tokio::test]
async fn a_failing_token_endpoint_stops_audit_and_sync_within_one_requests_retries() {
    let h = harness(SimConfig::new(7, Counts::tiny()), |s| {
        district(s, Mode::OAuth2, None, "max_retries = 2\n")
    })
    .await;
    h.sim.set_faults(Faults {
        token_status: Some(500),
        ..Faults::default()
    });
    for args in [
        vec!["audit", "--district", DISTRICT, "--format", "json"],
        vec!["sync", "--district", DISTRICT],
    ] {
        h.sim.reset_stats();
        let started = std::time::Instant::now();
        let out = run_binary(&h.config, &args, &[]).await;
        let took = started.elapsed();
        assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
        // One request's retries (1 + max_retries), however many collections ask for a token.
        assert_eq!(h.sim.stats().token_requests, 3, "{args:?}");
        assert_eq!(
            h.sim.stats().total,
            0,
            "no collection request without a token"
        );
        assert!(took < Duration::from_secs(15), "{args:?} took {took:?}");
        assert!(
            output_text(&out).contains("token endpoint"),
            "{}",
            output_text(&out)
        );
    }
}
