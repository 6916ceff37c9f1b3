//! Configuration loading and validation: every error names the district and the key, and no
//! error, `describe()` or `Debug` output ever contains a secret.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use oneroster_sync::config::{
    AuthConfig, DemographicsMode, EnvSource, LogFormat, OneRosterVersion, Settings,
};
use secrecy::ExposeSecret;

const DB: &str = "[database]\nurl = \"postgres://sync@127.0.0.1:5432/oneroster_sync\"\n";
const CANARY: &str = "CANARY-s3cr3t-7f1d";

/// Serializes the tests that change the process environment.
static PROCESS_ENV: Mutex<()> = Mutex::new(());

fn set_process_var(name: &str, value: &str) {
    // SAFETY: `set_var` is unsafe in edition 2024 because another thread may read the
    // environment at the same time. Callers hold PROCESS_ENV, and the names set here are unique
    // to these tests, so no other test reads them.
    unsafe { std::env::set_var(name, value) }
}

fn no_env() -> EnvSource {
    EnvSource::Fixed(HashMap::new())
}

fn env(pairs: &[(&str, &str)]) -> EnvSource {
    EnvSource::Fixed(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn parse_in(toml: &str, dir: &Path, env: &EnvSource) -> Result<Settings, String> {
    Settings::from_toml_str_with_env(toml, dir, env).map_err(|e| e.to_string())
}

fn parse(toml: &str) -> Result<Settings, String> {
    parse_in(toml, Path::new("."), &no_env())
}

/// A config with [database] and one inline district made of `body`.
fn district(body: &str) -> Result<Settings, String> {
    parse(&format!("{DB}\n[[districts]]\n{body}"))
}

/// A valid lakeside district, with `extra` lines appended (later keys must not repeat these).
fn lakeside(extra: &str) -> String {
    format!(
        "id = \"lakeside\"\n\
         base_url = \"https://lakeside.rosterserver.com/ims/oneroster/v1p1\"\n\
         {extra}\n"
    )
}

fn oauth2_lakeside(extra: &str) -> String {
    lakeside(&format!(
        "token_url = \"https://lakeside.rosterserver.com/oauth2/token\"\n\
         client_id = \"lakeside-client\"\n\
         {extra}"
    ))
}

fn with_inline_secret(extra: &str) -> String {
    oauth2_lakeside(&format!("client_secret = \"{CANARY}\"\n{extra}"))
}

#[track_caller]
fn assert_err(result: Result<Settings, String>, parts: &[&str]) -> String {
    let message = match result {
        Ok(_) => panic!("expected an error containing {parts:?}"),
        Err(message) => message,
    };
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} should contain {part:?}"
        );
    }
    assert!(!message.contains(CANARY), "secret leaked: {message:?}");
    message
}

#[test]
fn a_valid_district_gets_every_default() {
    let settings = district(&with_inline_secret("")).unwrap();
    let d = settings.district("lakeside").unwrap();
    assert_eq!(
        d.base_url.as_str(),
        "https://lakeside.rosterserver.com/ims/oneroster/v1p1"
    );
    match &d.auth {
        AuthConfig::OAuth2 {
            token_url,
            client_id,
            client_secret,
            scope,
        } => {
            assert_eq!(
                token_url.as_str(),
                "https://lakeside.rosterserver.com/oauth2/token"
            );
            assert_eq!(client_id, "lakeside-client");
            assert_eq!(client_secret.expose_secret(), CANARY);
            assert_eq!(scope, &None);
        }
        other => panic!("expected oauth2, got {}", other.mode()),
    }
    assert_eq!(d.interval, Duration::from_secs(3600));
    assert_eq!(d.full_interval, Duration::from_secs(24 * 3600));
    assert_eq!(d.page_size, 1000);
    assert!(!d.dry_run);
    assert!(d.enabled);
    assert_eq!(d.concurrency, 4);
    assert_eq!(d.connect_timeout, Duration::from_secs(10));
    assert_eq!(d.request_timeout, Duration::from_secs(120));
    assert_eq!(d.max_retries, 6);
    assert_eq!(d.run_timeout, Duration::from_secs(4 * 3600));
    assert_eq!(d.demographics, DemographicsMode::Required);
    assert_eq!(settings.log.format, LogFormat::Json);
    assert_eq!(settings.log.level, "info");
    assert!(settings.store.is_none());
}

#[test]
fn explicit_values_are_used() {
    let settings = district(&with_inline_secret(
        "interval = \"15m\"\nfull_interval = \"2h\"\npage_size = 250\ndry_run = true\n\
         concurrency = 8\nconnect_timeout = \"3s\"\nrequest_timeout = \"1m\"\nmax_retries = 0\n\
         run_timeout = \"30m\"\ndemographics = false\nscope = \"roster\"",
    ))
    .unwrap();
    let d = &settings.districts[0];
    assert_eq!(d.interval, Duration::from_secs(900));
    assert_eq!(d.full_interval, Duration::from_secs(7200));
    assert_eq!(d.page_size, 250);
    assert!(d.dry_run);
    assert_eq!(d.concurrency, 8);
    assert_eq!(d.connect_timeout, Duration::from_secs(3));
    assert_eq!(d.request_timeout, Duration::from_secs(60));
    assert_eq!(d.max_retries, 0);
    assert_eq!(d.run_timeout, Duration::from_secs(1800));
    assert_eq!(d.demographics, DemographicsMode::Off);
    assert!(matches!(&d.auth, AuthConfig::OAuth2 { scope: Some(s), .. } if s == "roster"));
}

#[test]
fn unknown_key_in_an_inline_district_names_district_and_key() {
    let message = assert_err(
        district(&with_inline_secret("clent_id = \"x\"")),
        &["district \"lakeside\"", "unknown key \"clent_id\""],
    );
    assert!(!message.contains("expected one of"), "{message}");
}

#[test]
fn unknown_key_in_a_district_file_names_the_file_district_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("districts")).unwrap();
    std::fs::write(
        dir.path().join("districts/foo.toml"),
        format!(
            "base_url = \"https://foo.example.org/v1p1\"\ntoken_url = \"https://foo.example.org/t\"\n\
             client_id = \"c\"\nclient_secret = \"{CANARY}\"\npage_sise = 10\n"
        ),
    )
    .unwrap();
    assert_err(
        parse_in(
            &format!("districts_dir = \"districts\"\n{DB}"),
            dir.path(),
            &no_env(),
        ),
        &[
            "district \"foo\"",
            "districts/foo.toml",
            "unknown key \"page_sise\"",
        ],
    );
}

#[test]
fn unknown_keys_outside_districts_are_named() {
    assert_err(
        parse("[database]\nurl = \"postgres://h/db\"\nuri = \"x\"\n"),
        &["[database]", "unknown key \"uri\""],
    );
    assert_err(
        parse(&format!("{DB}[log]\nlevle = \"debug\"\n")),
        &["[log]", "unknown key \"levle\""],
    );
    assert_err(
        parse(&format!("district_dir = \"d\"\n{DB}")),
        &["config file", "unknown key \"district_dir\""],
    );
    // A top-level key after a [section] header belongs to that section: say so.
    assert_err(
        parse(&format!("{DB}districts_dir = \"d\"\n")),
        &[
            "[database]",
            "unknown key \"districts_dir\"",
            "before the first [section]",
        ],
    );
}

#[test]
fn missing_required_keys_are_named() {
    assert_err(
        district("id = \"lakeside\"\nclient_secret = \"x\"\n"),
        &["district \"lakeside\"", "key \"base_url\"", "required"],
    );
    assert_err(
        district("base_url = \"https://h/v1p1\"\nclient_secret = \"x\"\n"),
        &["district", "key \"id\"", "required"],
    );
    assert_err(
        district(&oauth2_lakeside("")),
        &["district \"lakeside\"", "client_secret_env", "required"],
    );
    assert_err(
        district(&lakeside(
            "token_url = \"https://h/t\"\nclient_secret = \"x\"",
        )),
        &[
            "district \"lakeside\"",
            "key \"client_id\"",
            "required when auth = \"oauth2\"",
        ],
    );
}

#[test]
fn malformed_url_is_refused() {
    assert_err(
        district("id = \"lakeside\"\nbase_url = \"not a url\"\nclient_secret = \"x\"\n"),
        &[
            "district \"lakeside\"",
            "key \"base_url\"",
            "not a valid URL",
        ],
    );
    assert_err(
        district("id = \"lakeside\"\nbase_url = \"ftp://h/x\"\nclient_secret = \"x\"\n"),
        &["key \"base_url\"", "https://"],
    );
}

#[test]
fn plain_http_to_a_remote_host_is_refused() {
    assert_err(
        district(
            "id = \"lakeside\"\nbase_url = \"http://example.org/v1p1\"\nclient_secret = \"x\"\n",
        ),
        &[
            "district \"lakeside\": key \"base_url\": plain http:// is only allowed for loopback \
             hosts (got host \"example.org\")",
        ],
    );
    assert_err(
        district(&lakeside(
            "token_url = \"http://10.0.0.1/t\"\nclient_id = \"c\"\nclient_secret = \"x\"",
        )),
        &["key \"token_url\"", "loopback", "10.0.0.1"],
    );
}

#[test]
fn plain_http_to_loopback_is_accepted() {
    for host in [
        "localhost",
        "127.0.0.1",
        "127.9.8.7",
        "[::1]",
        "LOCALHOST:8900",
    ] {
        let body = format!(
            "id = \"sim\"\nbase_url = \"http://{host}/ims/oneroster/v1p1\"\n\
             token_url = \"http://{host}/oauth2/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\n"
        );
        let settings = district(&body).unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(settings.districts[0].base_url.scheme(), "http");
    }
}

#[test]
fn missing_or_empty_secret_env_var_names_the_variable() {
    let body = oauth2_lakeside("client_secret_env = \"LAKESIDE_SECRET_UNSET_4711\"");
    assert_err(
        district(&body),
        &[
            "district \"lakeside\"",
            "key \"client_secret_env\"",
            "\"LAKESIDE_SECRET_UNSET_4711\" is not set",
        ],
    );
    let toml = format!("{DB}[[districts]]\n{body}");
    assert_err(
        parse_in(
            &toml,
            Path::new("."),
            &env(&[("LAKESIDE_SECRET_UNSET_4711", "")]),
        ),
        &[
            "key \"client_secret_env\"",
            "\"LAKESIDE_SECRET_UNSET_4711\" is empty",
        ],
    );
    let settings = parse_in(
        &toml,
        Path::new("."),
        &env(&[("LAKESIDE_SECRET_UNSET_4711", CANARY)]),
    )
    .unwrap();
    assert!(matches!(&settings.districts[0].auth,
        AuthConfig::OAuth2 { client_secret, .. } if client_secret.expose_secret() == CANARY));
}

#[test]
fn secret_env_var_is_read_from_the_process_environment() {
    let _guard = PROCESS_ENV.lock().unwrap_or_else(|e| e.into_inner());
    set_process_var("ONEROSTER_SYNC_TEST_SECRET_8c2e", CANARY);
    let toml = format!(
        "{DB}[[districts]]\n{}",
        oauth2_lakeside("client_secret_env = \"ONEROSTER_SYNC_TEST_SECRET_8c2e\"")
    );
    let settings = Settings::from_toml_str(&toml, Path::new(".")).unwrap();
    assert!(matches!(&settings.districts[0].auth,
        AuthConfig::OAuth2 { client_secret, .. } if client_secret.expose_secret() == CANARY));
}

#[test]
fn secret_file_is_read_relative_to_the_config_dir_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/lakeside"), format!("{CANARY}\n")).unwrap();
    std::fs::write(dir.path().join("secrets/empty"), "\n").unwrap();
    let toml = |file: &str| {
        format!(
            "{DB}[[districts]]\n{}",
            oauth2_lakeside(&format!("client_secret_file = \"{file}\""))
        )
    };
    let settings = parse_in(&toml("secrets/lakeside"), dir.path(), &no_env()).unwrap();
    assert!(matches!(&settings.districts[0].auth,
        AuthConfig::OAuth2 { client_secret, .. } if client_secret.expose_secret() == CANARY));
    assert_err(
        parse_in(&toml("secrets/missing"), dir.path(), &no_env()),
        &[
            "district \"lakeside\"",
            "key \"client_secret_file\"",
            "cannot read",
            "secrets/missing",
        ],
    );
    assert_err(
        parse_in(&toml("secrets/empty"), dir.path(), &no_env()),
        &[
            "district \"lakeside\"",
            "key \"client_secret_file\"",
            "is empty",
        ],
    );
}

#[test]
fn two_secret_keys_at_once_are_refused() {
    assert_err(
        district(&with_inline_secret(
            "client_secret_env = \"LAKESIDE_SECRET\"",
        )),
        &[
            "district \"lakeside\"",
            "client_secret_env and client_secret",
            "exactly one",
        ],
    );
}

#[test]
fn bad_id_is_refused() {
    for id in ["Lakeside", "lake side", "lake.side", ""] {
        let body = format!(
            "id = \"{id}\"\nbase_url = \"https://h/v1p1\"\ntoken_url = \"https://h/t\"\n\
             client_id = \"c\"\nclient_secret = \"s\"\n"
        );
        assert_err(district(&body), &["key \"id\"", "[a-z0-9_-]+"]);
    }
}

#[test]
fn duplicate_id_across_inline_and_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("districts")).unwrap();
    std::fs::write(
        dir.path().join("districts/lakeside.toml"),
        "base_url = \"https://h/v1p1\"\ntoken_url = \"https://h/t\"\nclient_id = \"c\"\n\
         client_secret = \"s\"\n",
    )
    .unwrap();
    let toml = format!(
        "districts_dir = \"districts\"\n{DB}[[districts]]\n{}",
        with_inline_secret("")
    );
    assert_err(
        parse_in(&toml, dir.path(), &no_env()),
        &[
            "district \"lakeside\"",
            "key \"id\"",
            "duplicate",
            "districts/lakeside.toml",
        ],
    );
    // Two inline ones too.
    let toml = format!(
        "{DB}[[districts]]\n{}[[districts]]\n{}",
        with_inline_secret(""),
        with_inline_secret("")
    );
    assert_err(parse(&toml), &["district \"lakeside\"", "duplicate"]);
}

#[test]
fn district_files_are_sorted_and_named_by_their_stem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    for name in ["zeta", "alpha", "mid"] {
        std::fs::write(
            dir.path().join(format!("d/{name}.toml")),
            "base_url = \"https://h/v1p1\"\nauth = \"bearer\"\nclient_secret = \"t\"\n",
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("d/notes.txt"), "ignored").unwrap();
    let settings = parse_in(
        &format!("districts_dir = \"d\"\n{DB}"),
        dir.path(),
        &no_env(),
    )
    .unwrap();
    let ids: Vec<&str> = settings.districts.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["alpha", "mid", "zeta"]);
    assert!(matches!(
        settings.districts[0].auth,
        AuthConfig::Bearer { .. }
    ));
}

#[test]
fn a_district_file_with_a_syntax_error_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("districts")).unwrap();
    std::fs::write(
        dir.path().join("districts/foo.toml"),
        format!("base_url = \"https://h/v1p1\"\nclient_secret = \"{CANARY}\n"),
    )
    .unwrap();
    assert_err(
        parse_in(
            &format!("districts_dir = \"districts\"\n{DB}"),
            dir.path(),
            &no_env(),
        ),
        &["district file \"districts/foo.toml\"", "line 2"],
    );
}

#[test]
fn missing_districts_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_err(
        parse_in(
            &format!("districts_dir = \"nope\"\n{DB}"),
            dir.path(),
            &no_env(),
        ),
        &["key \"districts_dir\"", "cannot read directory"],
    );
}

#[test]
fn bad_durations_are_refused() {
    assert_err(
        district(&with_inline_secret("interval = \"often\"")),
        &[
            "district \"lakeside\"",
            "key \"interval\"",
            "not a duration",
        ],
    );
    assert_err(
        district(&with_inline_secret("interval = \"0s\"")),
        &["key \"interval\"", "greater than zero"],
    );
    assert_err(
        district(&with_inline_secret("request_timeout = \"soon\"")),
        &["key \"request_timeout\""],
    );
}

#[test]
fn full_interval_shorter_than_interval_is_refused() {
    assert_err(
        district(&with_inline_secret(
            "interval = \"2h\"\nfull_interval = \"1h\"",
        )),
        &[
            "district \"lakeside\"",
            "key \"full_interval\"",
            "at least interval",
        ],
    );
    // Equal is fine.
    district(&with_inline_secret(
        "interval = \"2h\"\nfull_interval = \"2h\"",
    ))
    .unwrap();
}

#[test]
fn auth_mode_rules() {
    assert_err(
        district(&lakeside("client_id = \"c\"\nclient_secret = \"s\"")),
        &["district \"lakeside\": key \"token_url\": required when auth = \"oauth2\""],
    );
    assert_err(
        district(&lakeside(
            "auth = \"bearer\"\ntoken_url = \"https://h/t\"\nclient_secret = \"s\"",
        )),
        &["key \"token_url\"", "only used with auth = \"oauth2\""],
    );
    assert_err(
        district(&lakeside("auth = \"oauth1\"\nclient_secret = \"s\"")),
        &["key \"client_id\"", "required when auth = \"oauth1\""],
    );
    assert_err(
        district(&lakeside("auth = \"saml\"\nclient_secret = \"s\"")),
        &["key \"auth\"", "\"saml\""],
    );
    let settings = district(&lakeside(
        "auth = \"oauth1\"\nclient_id = \"c\"\nclient_secret = \"s\"",
    ))
    .unwrap();
    assert!(
        matches!(&settings.districts[0].auth, AuthConfig::OAuth1 { client_id, .. } if client_id == "c")
    );
    let settings = district(&lakeside("auth = \"bearer\"\nclient_secret = \"tok\"")).unwrap();
    assert!(matches!(&settings.districts[0].auth,
        AuthConfig::Bearer { token } if token.expose_secret() == "tok"));
}

#[test]
fn numeric_keys_out_of_range_are_refused() {
    for value in ["0", "10001", "-5"] {
        assert_err(
            district(&with_inline_secret(&format!("page_size = {value}"))),
            &[
                "district \"lakeside\"",
                "key \"page_size\"",
                "between 1 and 10000",
            ],
        );
    }
    district(&with_inline_secret("page_size = 10000")).unwrap();
    assert_err(
        district(&with_inline_secret("concurrency = 33")),
        &["key \"concurrency\"", "between 1 and 32"],
    );
    assert_err(
        district(&with_inline_secret("page_size = \"lots\"")),
        &["district \"lakeside\"", "key \"page_size\""],
    );
}

#[test]
fn database_url_env_precedence() {
    let file_only = parse_in(DB, Path::new("."), &no_env()).unwrap();
    assert!(file_only.database.redacted().contains("127.0.0.1:5432"));

    let settings = parse_in(
        DB,
        Path::new("."),
        &env(&[("DATABASE_URL", "postgres://a@from-database-url/x")]),
    )
    .unwrap();
    assert!(settings.database.redacted().contains("from-database-url"));

    let both = env(&[
        ("DATABASE_URL", "postgres://a@from-database-url/x"),
        (
            "ONEROSTER_SYNC__DATABASE__URL",
            "postgresql://a@from-prefixed/x",
        ),
    ]);
    let settings = parse_in(DB, Path::new("."), &both).unwrap();
    assert!(
        settings.database.redacted().contains("from-prefixed"),
        "{}",
        settings.database.redacted()
    );

    // No file value at all: the environment alone is enough.
    let settings = parse_in(
        "",
        Path::new("."),
        &env(&[("DATABASE_URL", "postgres://h/db")]),
    )
    .unwrap();
    assert_eq!(settings.database.redacted(), "postgres://h/db");
}

#[test]
fn other_sections_can_be_overridden_from_the_environment() {
    let vars = env(&[
        ("ONEROSTER_SYNC__LOG__FORMAT", "pretty"),
        ("ONEROSTER_SYNC__LOG__LEVEL", "debug"),
        ("ONEROSTER_SYNC__STORE__URL", "postgres://store-host/roster"),
        ("ONEROSTER_SYNC_CONFIG", "ignored: not an override"),
    ]);
    let settings = parse_in(
        &format!("{DB}[log]\nformat = \"json\"\n"),
        Path::new("."),
        &vars,
    )
    .unwrap();
    assert_eq!(settings.log.format, LogFormat::Pretty);
    assert_eq!(settings.log.level, "debug");
    assert!(settings.store_settings().redacted().contains("store-host"));

    assert_err(
        parse_in(
            DB,
            Path::new("."),
            &env(&[("ONEROSTER_SYNC__DISTRICTS__ID", "x")]),
        ),
        &[
            "ONEROSTER_SYNC__DISTRICTS__ID",
            "only [database], [store] and [log]",
        ],
    );
}

#[test]
fn database_url_is_required_and_must_be_postgres() {
    assert_err(parse(""), &["[database]", "key \"url\"", "required"]);
    assert_err(
        parse(&format!("[database]\nurl = \"mysql://u:{CANARY}@h/db\"\n")),
        &["[database]", "key \"url\"", "postgres://"],
    );
    assert_err(
        parse(&format!("[database]\nurl = \"u:{CANARY} not a url\"\n")),
        &["[database]", "key \"url\""],
    );
    assert_err(
        parse(&format!("{DB}[log]\nlevel = \"info,=[\"\n")),
        &["[log]", "key \"level\""],
    );
    assert_err(
        parse(&format!("{DB}[log]\nformat = \"xml\"\n")),
        &["[log]", "key \"format\""],
    );
}

#[test]
fn store_falls_back_to_database() {
    let settings = parse(&format!("{DB}[store]\n")).unwrap();
    assert!(settings.store.is_none());
    assert!(
        settings
            .store_settings()
            .redacted()
            .contains("oneroster_sync")
    );
    let settings = parse(&format!(
        "{DB}[store]\nurl = \"postgres://u:{CANARY}@store/roster\"\n"
    ))
    .unwrap();
    assert_eq!(
        settings.store_settings().redacted(),
        "postgres://u:***@store/roster"
    );
}

#[test]
fn connect_options_and_redaction() {
    let settings = parse(&format!(
        "[database]\nurl = \"postgres://sync:{CANARY}@db.internal:6543/state?sslmode=disable&password={CANARY}\"\n"
    ))
    .unwrap();
    let redacted = settings.database.redacted();
    assert!(!redacted.contains(CANARY), "{redacted}");
    assert!(
        redacted.starts_with("postgres://sync:***@db.internal:6543/state"),
        "{redacted}"
    );
    let options = settings.database.connect_options().unwrap();
    assert_eq!(options.get_host(), "db.internal");
    assert_eq!(options.get_port(), 6543);
    assert_eq!(options.get_database(), Some("state"));
}

#[test]
fn no_error_message_contains_a_secret() {
    let malformed = [
        // Syntax error on the secret's own line: the parser would quote the line.
        format!("{DB}[[districts]]\nid = \"lakeside\"\nclient_secret = \"{CANARY}\nbase_url = 1\n"),
        format!("{DB}[[districts]]\nid = \"lakeside\"\nclient_secret = {CANARY}\n"),
        format!("{DB}[[districts]]\n{}", with_inline_secret("clent_id = 1")),
        format!(
            "{DB}[[districts]]\n{}",
            oauth2_lakeside(&format!("client_secret = [\"{CANARY}\"]"))
        ),
        format!(
            "{DB}[[districts]]\n{}",
            oauth2_lakeside(&format!("client_secret = {{ v = \"{CANARY}\" }}"))
        ),
        format!(
            "{DB}[[districts]]\n{}",
            with_inline_secret(&format!("client_secret_file = \"{CANARY}\""))
        ),
        format!(
            "{DB}[[districts]]\n{}",
            with_inline_secret(&format!("dry_run = \"{CANARY}\""))
        ),
        format!(
            "{DB}[[districts]]\n{}",
            oauth2_lakeside(&format!(
                "client_secret = \"{CANARY}\"\nclient_secret = \"{CANARY}\""
            ))
        ),
        format!("[database]\nurl = \"postgres://u:{CANARY}@h:notaport/db\"\n"),
        format!("[database]\nurl = \"postgres://u:{CANARY}@h/db\"\nextra = 1\n"),
    ];
    for toml in &malformed {
        // assert_err checks the canary is absent.
        assert_err(parse(toml), &[]);
    }
}

#[test]
fn describe_shows_every_setting_but_no_secret() {
    let toml = format!(
        "[database]\nurl = \"postgres://sync:{CANARY}@db/state\"\n\
         [store]\nurl = \"postgres://w:{CANARY}@store/roster\"\n\
         [[districts]]\n{}\
         [[districts]]\nid = \"riverside\"\nbase_url = \"https://r/v1p1\"\nauth = \"bearer\"\n\
         client_secret_env = \"RIVERSIDE_TOKEN\"\nenabled = false\n",
        with_inline_secret("interval = \"30m\"")
    );
    let settings = parse(&toml).unwrap();
    let text = settings.describe();
    assert!(!text.contains(CANARY), "{text}");
    for part in [
        "postgres://sync:***@db/state",
        "postgres://w:***@store/roster",
        "district \"lakeside\"",
        "auth: oauth2",
        "client_id: lakeside-client",
        "client_secret: inline",
        "interval: 30m",
        "full_interval: 1day",
        "page_size: 1000",
        "district \"riverside\"",
        "auth: bearer",
        "token: env RIVERSIDE_TOKEN",
        "enabled: false",
        "level = info",
    ] {
        assert!(text.contains(part), "describe() lacks {part:?}:\n{text}");
    }
}

#[test]
fn debug_output_contains_no_secret_and_no_database_password() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), CANARY).unwrap();
    let toml = format!(
        "[database]\nurl = \"postgres://sync:{CANARY}@db/state\"\n\
         [store]\nurl = \"postgres://w:{CANARY}@store/roster\"\n\
         [[districts]]\n{}\
         [[districts]]\nid = \"riverside\"\nbase_url = \"https://r/v1p1\"\nauth = \"bearer\"\n\
         client_secret_file = \"secret\"\n",
        with_inline_secret("")
    );
    let settings = parse_in(&toml, dir.path(), &no_env()).unwrap();
    let debug = format!("{settings:?} {:#?}", settings);
    assert!(!debug.contains(CANARY), "{debug}");
    assert!(
        debug.contains("lakeside"),
        "the Debug output should still be useful"
    );
}

#[test]
fn disabled_district_secret_is_not_read_until_asked() {
    let toml = format!(
        "{DB}[[districts]]\n{}",
        oauth2_lakeside(
            "client_secret_env = \"ONEROSTER_SYNC_TEST_DISABLED_91f3\"\nenabled = false"
        )
    );
    let settings = parse_in(&toml, Path::new("."), &no_env()).unwrap();
    assert!(!settings.districts[0].enabled);
    assert_err(
        settings
            .with_resolved_secret("lakeside")
            .map(|_| settings.clone())
            .map_err(|e| e.to_string()),
        &[
            "district \"lakeside\"",
            "ONEROSTER_SYNC_TEST_DISABLED_91f3",
            "is not set",
        ],
    );

    let _guard = PROCESS_ENV.lock().unwrap_or_else(|e| e.into_inner());
    set_process_var("ONEROSTER_SYNC_TEST_DISABLED_91f3", CANARY);
    let district = settings.with_resolved_secret("lakeside").unwrap();
    assert!(matches!(&district.auth,
        AuthConfig::OAuth2 { client_secret, .. } if client_secret.expose_secret() == CANARY));
}

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/oneroster-sync.toml")
}

#[test]
fn the_shipped_example_config_loads_without_any_environment() {
    let settings = Settings::load_with_env(&example_config(), &no_env()).unwrap();
    assert_eq!(settings.source, example_config());
    let ids: Vec<&str> = settings.districts.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["demo", "example-district"]);

    let demo = settings.district("demo").unwrap();
    assert!(demo.enabled);
    assert_eq!(
        demo.base_url.as_str(),
        "http://127.0.0.1:8900/ims/oneroster/v1p1"
    );
    assert!(matches!(&demo.auth,
        AuthConfig::OAuth2 { client_id, client_secret, token_url, .. }
            if client_id == "sim-client"
                && client_secret.expose_secret() == "sim-secret"
                && token_url.as_str() == "http://127.0.0.1:8900/oauth2/token"));
    assert_eq!(
        settings.database.redacted(),
        "postgres://postgres@127.0.0.1:55432/oneroster_sync"
    );
    let example = settings.district("example-district").unwrap();
    assert!(!example.enabled);
    let text = settings.describe();
    assert!(
        text.contains("env EXAMPLE_DISTRICT_CLIENT_SECRET"),
        "{text}"
    );
    assert!(!text.contains("sim-secret"), "{text}");
}

// ---- safety limits ------------------------------------------------------------------------------

#[test]
fn safety_limits_default_then_district_then_per_entity() {
    use oneroster_sync::config::SafetyLimits;
    use oneroster_sync::domain::Entity;
    let s = district(&with_inline_secret(
        "max_delete_count = 50\nmin_population = 10\n[districts.limits.enrollments]\nmax_delete_count = 5000\nmax_update_count = 7\n",
    ))
    .unwrap();
    let d = s.district("lakeside").unwrap();
    assert_eq!(d.limits.len(), Entity::ALL.len());
    let users = d.limits[&Entity::Users];
    assert_eq!(
        users,
        SafetyLimits {
            max_delete_count: 50,
            min_population: 10,
            ..SafetyLimits::default()
        }
    );
    let enrollments = d.limits[&Entity::Enrollments];
    assert_eq!(enrollments.max_delete_count, 5000);
    assert_eq!(enrollments.max_update_count, Some(7));
    assert_eq!(
        enrollments.min_population, 10,
        "district-wide keys apply under overrides"
    );
    assert_eq!(enrollments.max_delete_percent, 10.0);
}

#[test]
fn safety_limit_errors_name_the_district_and_key() {
    assert_err(
        district(&with_inline_secret("max_delete_percent = 150")),
        &["lakeside", "max_delete_percent", "percentage"],
    );
    assert_err(
        district(&with_inline_secret("max_delete_count = -1")),
        &["lakeside", "max_delete_count"],
    );
    assert_err(
        district(&with_inline_secret(
            "[districts.limits.students]\nmax_delete_count = 1",
        )),
        &["lakeside", "limits.students", "entity type"],
    );
    assert_err(
        district(&with_inline_secret(
            "[districts.limits.users]\nmax_delete_cuont = 1",
        )),
        &["lakeside", "max_delete_cuont"],
    );
}

#[test]
fn the_oneroster_version_must_match_the_root_base_url_names() {
    let d = district(&with_inline_secret("")).unwrap();
    assert_eq!(d.districts[0].version, OneRosterVersion::V1p1);
    assert_err(
        district(&with_inline_secret("oneroster_version = \"1.2\"")),
        &[
            "district \"lakeside\"",
            "base_url",
            "/ims/oneroster/v1p1",
            "oneroster_version = \"auto\"",
        ],
    );
    assert_err(
        district(&with_inline_secret("oneroster_version = \"2.0\"")),
        &["oneroster_version", "\"1.1\", \"1.2\" or \"auto\""],
    );
    let auto = district(&with_inline_secret("oneroster_version = \"auto\"")).unwrap();
    assert_eq!(auto.districts[0].version, OneRosterVersion::Auto);
    // "auto" needs a standard root to derive the other one from.
    let odd = district(&format!(
        "id = \"lakeside\"\nbase_url = \"https://sis.example.org/api\"\n\
         token_url = \"https://sis.example.org/token\"\nclient_id = \"c\"\nclient_secret = \"{CANARY}\"\n\
         oneroster_version = \"auto\"\n"
    ));
    assert_err(odd, &["oneroster_version", "/ims/oneroster/rostering/v1p2"]);
}

#[test]
fn schools_and_required_identifier_are_read_clean() {
    let d = district(&with_inline_secret(
        "schools = [\" 7_1000 \", \"7_1001\", \"7_1000\"]\nschool_identifiers = [\"1002\"]\nrequired_identifier = \"LDAP\"",
    ))
    .unwrap();
    let d = &d.districts[0];
    let scope = d.scope.as_ref().unwrap();
    assert_eq!(scope.sourced_ids, ["7_1000", "7_1001"]);
    assert_eq!(scope.identifiers, ["1002"]);
    assert_eq!(d.required_identifier.as_deref(), Some("LDAP"));
    assert!(
        district(&with_inline_secret("schools = []"))
            .unwrap()
            .districts[0]
            .scope
            .is_none()
    );
    assert_err(
        district(&with_inline_secret("schools = [\"\"]")),
        &["schools", "empty entry"],
    );
    assert_err(
        district(&with_inline_secret("required_identifier = \" \"")),
        &["required_identifier", "must not be empty"],
    );
}
