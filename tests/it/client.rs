//! The OneRoster client against the simulator over loopback HTTP: paging rules, retries, the
//! three auth modes and how each failure is reported.

use std::time::Duration;

use futures_util::StreamExt;
use oneroster_sim::{Counts, Faults, SimConfig, SimHandle, spawn, spawn_on};
use oneroster_sync::config::{
    AuthConfig, DemographicsMode, DistrictConfig, OneRosterVersion, defaults,
};
use oneroster_sync::oneroster::wire;
use oneroster_sync::oneroster::{
    DEMOGRAPHICS_FIELDS, FetchError, OneRosterClient, Page, PullQuery, WireRecord,
};
use url::Url;

const PAGE: u32 = 7;

async fn sim() -> SimHandle {
    spawn(SimConfig::new(7, Counts::tiny())).await.unwrap()
}

fn oauth2(sim: &SimHandle) -> AuthConfig {
    let c = sim.credentials();
    AuthConfig::OAuth2 {
        token_url: Url::parse(&sim.token_url()).unwrap(),
        client_id: c.client_id,
        client_secret: c.client_secret.into(),
        scope: Some(
            "https://purl.imsglobal.org/spec/or/v1p1/scope/roster-core.readonly \
             https://purl.imsglobal.org/spec/or/v1p1/scope/roster-demographics.readonly"
                .into(),
        ),
    }
}

fn district(sim: &SimHandle, auth: AuthConfig) -> DistrictConfig {
    DistrictConfig {
        id: "lakeside".into(),
        base_url: Url::parse(&sim.base_url()).unwrap(),
        auth,
        interval: Duration::from_secs(3600),
        full_interval: Duration::from_secs(86_400),
        delta_overlap: Duration::from_secs(3600),
        page_size: PAGE,
        dry_run: false,
        enabled: true,
        concurrency: 3,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        max_retries: 3,
        run_timeout: Duration::from_secs(60),
        demographics: DemographicsMode::Required,
        journal_retention: defaults::JOURNAL_RETENTION,
        trust_revision: true,
        demographics_limits: Default::default(),
        limits: Default::default(),
        version: OneRosterVersion::V1p1,
        required_identifier: None,
        scope: None,
    }
}

fn client(sim: &SimHandle, auth: AuthConfig) -> OneRosterClient {
    OneRosterClient::new(&district(sim, auth)).unwrap()
}

/// The whole pull, or its first error.
async fn pull<T: WireRecord>(
    client: &OneRosterClient,
    query: PullQuery,
) -> Result<Vec<Page<T>>, FetchError> {
    let mut pages = Vec::new();
    let mut stream = std::pin::pin!(client.pages::<T>(query));
    while let Some(page) = stream.next().await {
        pages.push(page?);
    }
    Ok(pages)
}

fn ids<T>(pages: &[Page<T>], id: impl Fn(&T) -> Option<String>) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| p.records.iter().map(&id))
        .map(|id| id.unwrap_or_default())
        .collect()
}

fn sim_user_ids(sim: &SimHandle) -> Vec<String> {
    sim.read(|d| d.users.iter().map(|u| u.sourced_id.clone()).collect())
}

#[tokio::test]
async fn oauth2_pull_reads_every_page_in_order_with_one_token() {
    let sim = sim().await;
    let client = client(&sim, oauth2(&sim));
    let pages = pull::<wire::User>(&client, PullQuery::default())
        .await
        .unwrap();

    let expected = sim_user_ids(&sim);
    assert!(
        expected.len() > 3 * PAGE as usize,
        "tiny district too small for this test"
    );
    let offsets: Vec<usize> = pages.iter().map(|p| p.offset).collect();
    let want_offsets: Vec<usize> = (0..expected.len()).step_by(PAGE as usize).collect();
    assert_eq!(offsets, want_offsets);
    assert!(pages.iter().all(|p| p.total == expected.len()));
    assert!(pages.iter().all(|p| p.unreadable.is_empty()));
    assert!(pages.iter().all(|p| p.revision == Some(sim.revision())));
    assert_eq!(ids(&pages, |u| u.sourced_id.clone()), expected);

    let stats = client.stats();
    assert_eq!(stats.requests, pages.len() as u64);
    assert_eq!(stats.retries, 0);
    // Concurrent page fetches share one token.
    assert_eq!(stats.token_requests, 1);
    assert_eq!(sim.stats().token_requests, 1);
}

#[tokio::test]
async fn bearer_pull_works_and_empty_base_path_slash_is_tolerated() {
    let sim = sim().await;
    let mut d = district(
        &sim,
        AuthConfig::Bearer {
            token: sim.credentials().bearer_token.into(),
        },
    );
    d.base_url = Url::parse(&format!("{}/", sim.base_url())).unwrap();
    let client = OneRosterClient::new(&d).unwrap();
    let pages = pull::<wire::Org>(&client, PullQuery::default())
        .await
        .unwrap();
    let want: Vec<String> = sim.read(|d| d.orgs.iter().map(|o| o.sourced_id.clone()).collect());
    assert_eq!(ids(&pages, |o| o.sourced_id.clone()), want);
    assert_eq!(client.stats().token_requests, 0);
}

#[tokio::test]
async fn oauth1_signature_is_accepted_with_filter_and_fields() {
    let sim = sim().await;
    let c = sim.credentials();
    let client = client(
        &sim,
        AuthConfig::OAuth1 {
            client_id: c.client_id,
            client_secret: c.client_secret.into(),
        },
    );
    // A filter with quotes, `>` and `:` exercises the encoding the signature must agree on.
    let query = PullQuery {
        filter: Some("dateLastModified>'2000-01-01T00:00:00Z'".into()),
        fields: Some(vec!["sourcedId", "status", "dateLastModified", "role"]),
    };
    let pages = pull::<wire::User>(&client, query).await.unwrap();
    assert_eq!(ids(&pages, |u| u.sourced_id.clone()), sim_user_ids(&sim));
    // `fields` was honoured: names were not sent.
    assert!(
        pages
            .iter()
            .flat_map(|p| &p.records)
            .all(|u| u.given_name.is_none())
    );
    assert!(
        pages
            .iter()
            .flat_map(|p| &p.records)
            .all(|u| u.role.is_some())
    );
}

#[tokio::test]
async fn demographics_are_pulled_with_the_projection() {
    let sim = sim().await;
    let client = client(&sim, oauth2(&sim));
    let query = PullQuery {
        filter: None,
        fields: Some(DEMOGRAPHICS_FIELDS.to_vec()),
    };
    let pages = pull::<wire::Demographics>(&client, query).await.unwrap();
    let want: Vec<String> = sim.read(|d| {
        d.demographics
            .iter()
            .map(|x| x.sourced_id.clone())
            .collect()
    });
    assert_eq!(ids(&pages, |x| x.sourced_id.clone()), want);
    assert!(pages.iter().all(|p| p.unreadable.is_empty()));
}

#[tokio::test]
async fn silently_clamped_page_is_an_error_not_the_end() {
    let mut cfg = SimConfig::new(7, Counts::tiny());
    cfg.page_cap = Some(5);
    cfg.clamp_silently = true;
    let sim = spawn(cfg).await.unwrap();
    let client = client(&sim, oauth2(&sim));
    let err = pull::<wire::User>(&client, PullQuery::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::IncompletePage {
                endpoint: <wire::User as WireRecord>::ENDPOINT,
                offset: 0,
                expected: 7,
                got: 5
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn total_moving_mid_pull_is_an_error() {
    let sim = sim().await;
    let client = client(&sim, oauth2(&sim));
    let mut stream = std::pin::pin!(client.pages::<wire::User>(PullQuery::default()));
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.offset, 0);
    sim.with_data(|d| d.users.pop());
    let err = loop {
        match stream.next().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the pull ended without noticing the total moved"),
        }
    };
    assert!(matches!(err, FetchError::TotalChanged { .. }), "{err:?}");
    // The stream ends after its first error.
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn transient_server_errors_and_truncated_bodies_are_retried() {
    let sim = sim().await;
    // Serial requests make the fault slots deterministic: with every 5th and every 7th request
    // failing, no page fails more than twice in a row (fewer than max_retries).
    let mut d = district(&sim, oauth2(&sim));
    d.concurrency = 1;
    let client = OneRosterClient::new(&d).unwrap();
    sim.set_faults(Faults {
        server_error_every: Some(5),
        truncate_body_every: Some(7),
        ..Default::default()
    });
    let pages = pull::<wire::User>(&client, PullQuery::default())
        .await
        .unwrap();
    assert_eq!(ids(&pages, |u| u.sourced_id.clone()), sim_user_ids(&sim));
    let stats = client.stats();
    assert!(stats.retries >= 2, "{stats:?}");
    assert_eq!(stats.requests, pages.len() as u64 + stats.retries);
}

#[tokio::test]
async fn rate_limit_is_retried_after_retry_after() {
    let sim = sim().await;
    // Serial: request 2 (the second page of classes) is the one rate limited.
    let mut d = district(&sim, oauth2(&sim));
    d.concurrency = 1;
    let client = OneRosterClient::new(&d).unwrap();
    sim.set_faults(Faults {
        rate_limit_every: Some(2),
        retry_after_secs: 1,
        ..Default::default()
    });
    let started = std::time::Instant::now();
    let pages = pull::<wire::Class>(&client, PullQuery::default())
        .await
        .unwrap();
    let want: Vec<String> = sim.read(|d| d.classes.iter().map(|c| c.sourced_id.clone()).collect());
    assert!(want.len() > PAGE as usize);
    assert_eq!(ids(&pages, |c| c.sourced_id.clone()), want);
    assert_eq!(client.stats().retries, 1);
    assert_eq!(sim.stats().per_status.get(&429), Some(&1));
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn exhausted_retries_report_the_last_status_and_attempts() {
    let sim = sim().await;
    let mut d = district(&sim, oauth2(&sim));
    d.max_retries = 1;
    let client = OneRosterClient::new(&d).unwrap();
    sim.set_faults(Faults {
        fail_path: Some(("users".into(), u32::MAX)),
        ..Default::default()
    });
    let err = pull::<wire::User>(&client, PullQuery::default())
        .await
        .unwrap_err();
    match &err {
        FetchError::Server {
            endpoint: <wire::User as WireRecord>::ENDPOINT,
            status: 500,
            attempts: 2,
            url,
        } => assert!(url.contains("/users?limit=7&offset=0")),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.stats().per_collection.get("users"), Some(&2));
}

#[tokio::test]
async fn forbidden_not_found_and_other_client_errors_are_not_retried() {
    let sim = sim().await;
    let client = client(&sim, oauth2(&sim));

    sim.set_faults(Faults {
        status_for: Some(("demographics".into(), 403)),
        ..Default::default()
    });
    let err = pull::<wire::Demographics>(&client, PullQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        FetchError::Forbidden {
            endpoint: <wire::Demographics as WireRecord>::ENDPOINT
        }
    ));
    assert!(err.to_string().contains("enable \"Demographics\""), "{err}");

    sim.set_faults(Faults {
        status_for: Some(("users".into(), 404)),
        ..Default::default()
    });
    let err = pull::<wire::User>(&client, PullQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        FetchError::NotFound {
            endpoint: <wire::User as WireRecord>::ENDPOINT,
            ..
        }
    ));

    sim.set_faults(Faults::default());
    let bad_fields = PullQuery {
        filter: None,
        fields: Some(vec!["sourcedId", "shoeSize"]),
    };
    let err = pull::<wire::User>(&client, bad_fields).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Client { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(client.stats().retries, 0);
}

#[tokio::test]
async fn rejected_client_secret_fails_fast() {
    let sim = sim().await;
    let AuthConfig::OAuth2 {
        token_url,
        client_id,
        scope,
        ..
    } = oauth2(&sim)
    else {
        unreachable!()
    };
    let client = client(
        &sim,
        AuthConfig::OAuth2 {
            token_url,
            client_id,
            client_secret: "wrong".to_owned().into(),
            scope,
        },
    );
    let err = pull::<wire::Org>(&client, PullQuery::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::CredentialsRejected { .. }),
        "{err:?}"
    );
    assert!(!err.to_string().contains("wrong"));
    assert_eq!(sim.stats().token_requests, 1);
    assert_eq!(sim.stats().total, 0);
}

#[tokio::test]
async fn bearer_401_is_unauthorized_at_once() {
    let sim = sim().await;
    let client = client(
        &sim,
        AuthConfig::Bearer {
            token: "not-the-token".to_owned().into(),
        },
    );
    let err = pull::<wire::Org>(&client, PullQuery::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::Unauthorized {
                endpoint: <wire::Org as WireRecord>::ENDPOINT
            }
        ),
        "{err:?}"
    );
    assert_eq!(client.stats().requests, 1);
}

#[tokio::test]
async fn oauth2_401_refreshes_the_token_once_then_gives_up() {
    // Tokens from one simulator mean nothing to another: every request is a 401.
    let issuer = sim().await;
    let server = sim().await;
    let client = client(&server, oauth2(&issuer));
    let err = pull::<wire::Org>(&client, PullQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Unauthorized { .. }), "{err:?}");
    assert_eq!(issuer.stats().token_requests, 2);
    assert_eq!(server.stats().total, 2);
}

#[tokio::test]
async fn token_revoked_by_a_server_restart_is_replaced() {
    let sim = sim().await;
    let addr = sim.addr();
    let client = client(&sim, oauth2(&sim));
    pull::<wire::Org>(&client, PullQuery::default())
        .await
        .unwrap();
    assert_eq!(client.stats().token_requests, 1);

    // Same district, same address, but the issued tokens are forgotten.
    sim.shutdown().await;
    let sim = spawn_on(SimConfig::new(7, Counts::tiny()), addr)
        .await
        .unwrap();
    let pages = pull::<wire::Org>(&client, PullQuery::default())
        .await
        .unwrap();
    let want: Vec<String> = sim.read(|d| d.orgs.iter().map(|o| o.sourced_id.clone()).collect());
    assert_eq!(ids(&pages, |o| o.sourced_id.clone()), want);
    assert_eq!(client.stats().token_requests, 2);
}

#[tokio::test]
async fn whole_district_reads_and_normalizes() {
    use oneroster_sync::normalize;
    let sim = sim().await;
    let client = client(&sim, oauth2(&sim));
    let mut skipped = Vec::new();
    let mut kept = 0;
    macro_rules! run {
        ($wire:ty, $norm:path) => {
            for page in pull::<$wire>(&client, PullQuery::default()).await.unwrap() {
                skipped.extend(page.unreadable);
                for record in page.records {
                    match $norm(record) {
                        Ok(_) => kept += 1,
                        Err(skip) => skipped.push(skip),
                    }
                }
            }
        };
    }
    run!(wire::Org, normalize::org);
    run!(wire::AcademicSession, normalize::academic_session);
    run!(wire::Course, normalize::course);
    run!(wire::Class, normalize::class);
    run!(wire::User, normalize::user);
    run!(wire::Enrollment, normalize::enrollment);
    run!(wire::Demographics, normalize::demographics);
    let total: usize = sim.read(|d| {
        d.orgs.len()
            + d.academic_sessions.len()
            + d.courses.len()
            + d.classes.len()
            + d.users.len()
            + d.enrollments.len()
            + d.demographics.len()
    });
    eprintln!("skipped: {skipped:?}");
    assert_eq!(kept + skipped.len(), total);
    assert!(skipped.is_empty(), "{skipped:?}");
}

#[tokio::test]
async fn bodies_that_stay_truncated_fail_as_parse_errors() {
    let sim = sim().await;
    let mut d = district(&sim, oauth2(&sim));
    d.max_retries = 1;
    let client = OneRosterClient::new(&d).unwrap();
    sim.set_faults(Faults {
        truncate_body_every: Some(1),
        ..Default::default()
    });
    let err = pull::<wire::User>(&client, PullQuery::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::Parse {
                endpoint: <wire::User as WireRecord>::ENDPOINT,
                offset: 0,
                attempts: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn each_page_reports_the_revision_it_was_served_at() {
    let sim = sim().await;
    let mut d = district(&sim, oauth2(&sim));
    d.concurrency = 1;
    let client = OneRosterClient::new(&d).unwrap();
    let before = sim.revision();
    sim.set_faults(Faults {
        revision_change_after: Some(1),
        ..Default::default()
    });
    let pages = pull::<wire::User>(&client, PullQuery::default())
        .await
        .unwrap();
    assert_eq!(pages[0].revision.as_deref(), Some(before.as_str()));
    let last = pages.last().unwrap().revision.clone().unwrap();
    assert_ne!(
        last, before,
        "the revision move must be visible to the sync layer"
    );
}
