//! Database connections and migrations for the two layouts: the roster store in the daemon's
//! own database (the default), or in a database of its own (`[store].url`).

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgConnection, PgPool};

use crate::config::{DatabaseSettings, Settings};

/// Migrations of the daemon's own state (schema `sync`).
static STATE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/state");
/// Migrations of the roster store (schema `roster`).
static STORE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/store");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid {which} database settings: {message}")]
    Settings {
        which: &'static str,
        message: String,
    },
    #[error("cannot connect to the {which} database ({target}): {source}")]
    Connect {
        which: &'static str,
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "cannot connect to the {which} database ({target}): no answer within {timeout:?} (connect_timeout); is it up and reachable?"
    )]
    ConnectTimeout {
        which: &'static str,
        target: String,
        timeout: Duration,
    },
    #[error("migrating the {which} database failed: {source}")]
    Migrate {
        which: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

/// The daemon's databases. `store_is_separate` tells whether the roster store lives in another
/// database than the mirror (then store and mirror cannot share a transaction).
#[derive(Debug, Clone)]
pub struct Databases {
    pub state: PgPool,
    pub store: PgPool,
    state_options: PgConnectOptions,
    store_options: PgConnectOptions,
    pub store_is_separate: bool,
    state_target: String,
    store_target: String,
    state_timeout: Duration,
    store_timeout: Duration,
}

impl Databases {
    /// Connects to the databases: one real connection to each first, so that a database that
    /// refuses, does not resolve, rejects the credentials or does not exist fails at once
    /// (within `connect_timeout`) with the driver's cause rather than a pool timeout.
    pub async fn connect(settings: &Settings) -> Result<Databases, DbError> {
        let dbs = Databases::lazy(settings)?;
        dbs.check().await?;
        Ok(dbs)
    }

    /// The databases without connecting yet (the daemon starts before its database is up).
    pub fn lazy(settings: &Settings) -> Result<Databases, DbError> {
        let options = |db: &DatabaseSettings, which| {
            db.connect_options()
                .map(quiet)
                .map_err(|e| DbError::Settings {
                    which,
                    message: e.to_string(),
                })
        };
        let state_options = options(&settings.database, "state")?;
        let state_target = settings.database.redacted();
        let state_timeout = settings.database.connect_timeout;
        let (store_options, store_target, store_timeout, store_is_separate) = match &settings.store
        {
            Some(store) => {
                let o = options(store, "store")?;
                let separate = !same_database(&state_options, &o);
                (o, store.redacted(), store.connect_timeout, separate)
            }
            None => (
                state_options.clone(),
                state_target.clone(),
                state_timeout,
                false,
            ),
        };
        let state = pool(&state_options, state_timeout);
        let store = if store_is_separate {
            pool(&store_options, store_timeout)
        } else {
            state.clone()
        };
        Ok(Databases {
            state,
            store,
            state_options,
            store_options,
            store_is_separate,
            state_target,
            store_target,
            state_timeout,
            store_timeout,
        })
    }

    /// One connection to each database, closed again: `Ok` when both answer.
    pub async fn check(&self) -> Result<(), DbError> {
        let state = self.state_session().await?;
        let _ = state.close().await;
        if self.store_is_separate {
            let store = self.store_session().await?;
            let _ = store.close().await;
        }
        Ok(())
    }

    /// Applies the embedded migrations: the state set to the daemon's database and the store
    /// set to the store's (both to one database in the shared layout).
    pub async fn migrate(&self) -> Result<(), DbError> {
        run_migrator(&STATE_MIGRATIONS, "sync", &self.state, "state").await?;
        run_migrator(&STORE_MIGRATIONS, "roster", &self.store, "store").await?;
        Ok(())
    }

    /// A dedicated connection to the state database, outside the pool: a run keeps its session
    /// (temporary staging tables) for its whole length and closes it at the end.
    pub async fn state_session(&self) -> Result<PgConnection, DbError> {
        session(
            &self.state_options,
            self.state_timeout,
            "state",
            &self.state_target,
        )
        .await
    }

    /// A dedicated connection to the store database (only used when it is separate).
    pub async fn store_session(&self) -> Result<PgConnection, DbError> {
        session(
            &self.store_options,
            self.store_timeout,
            "store",
            &self.store_target,
        )
        .await
    }
}

async fn session(
    options: &PgConnectOptions,
    timeout: Duration,
    which: &'static str,
    target: &str,
) -> Result<PgConnection, DbError> {
    let failed = |source| DbError::Connect {
        which,
        target: target.to_owned(),
        source,
    };
    match tokio::time::timeout(timeout, options.connect()).await {
        Ok(connected) => connected.map_err(failed),
        Err(_) => Err(DbError::ConnectTimeout {
            which,
            target: target.to_owned(),
            timeout,
        }),
    }
}

/// Runs one migration set, tracked in its own schema (`sync._sqlx_migrations`,
/// `roster._sqlx_migrations`) so the two sets can share a database without seeing each other.
async fn run_migrator(
    embedded: &Migrator,
    schema: &'static str,
    pool: &PgPool,
    which: &'static str,
) -> Result<(), DbError> {
    let mut migrator = Migrator::with_migrations(embedded.iter().cloned().collect());
    migrator.create_schema(schema);
    migrator.dangerous_set_table_name(format!("{schema}._sqlx_migrations"));
    migrator
        .run(pool)
        .await
        .map_err(|source| DbError::Migrate { which, source })
}

/// A pool that connects when first used; an acquire fails after `timeout` plus a little (a
/// refused database fails at once, an unreachable one within the connect timeout).
fn pool(options: &PgConnectOptions, timeout: Duration) -> PgPool {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(timeout + Duration::from_secs(1))
        .connect_lazy_with(options.clone())
}

/// Every session: Postgres notices ("schema already exists, skipping") are noise in the
/// daemon's logs; UTC and ISO dates make `COPY ... TO STDOUT` print rows exactly as the
/// `stored` module encodes them.
fn quiet(options: PgConnectOptions) -> PgConnectOptions {
    options.options([
        ("client_min_messages", "warning"),
        ("TimeZone", "UTC"),
        ("DateStyle", "ISO"),
    ])
}

/// Streams the lines of a `COPY (query) TO STDOUT` to `each`, without holding the output.
pub async fn copy_out_lines<E: From<sqlx::Error>>(
    conn: &mut PgConnection,
    sql: String,
    mut each: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    use futures_util::TryStreamExt;
    let mut rows = conn.copy_out_raw(&sql).await?;
    let mut rest: Vec<u8> = Vec::new();
    while let Some(chunk) = rows.try_next().await? {
        rest.extend_from_slice(&chunk);
        let complete = rest.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in rest[..complete].split(|b| *b == b'\n') {
            if !line.is_empty() {
                each(line)?;
            }
        }
        rest.drain(..complete);
    }
    Ok(())
}

/// A string as an SQL literal (for `COPY (query)`, which takes no parameters).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn same_database(a: &PgConnectOptions, b: &PgConnectOptions) -> bool {
    a.get_host() == b.get_host()
        && a.get_port() == b.get_port()
        && a.get_database() == b.get_database()
}
