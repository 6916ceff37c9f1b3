//! Database connections and migrations for the two layouts: the roster store in the daemon's
//! own database (the default), or in a database of its own (`[store].url`).

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgConnection, PgPool};

use crate::config::Settings;

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
}

impl Databases {
    pub async fn connect(settings: &Settings) -> Result<Databases, DbError> {
        let state_options =
            quiet(
                settings
                    .database
                    .connect_options()
                    .map_err(|e| DbError::Settings {
                        which: "state",
                        message: e.to_string(),
                    })?,
            );
        let state_target = settings.database.redacted();
        let (store_options, store_target, store_is_separate) = match &settings.store {
            Some(store) => {
                let options = quiet(store.connect_options().map_err(|e| DbError::Settings {
                    which: "store",
                    message: e.to_string(),
                })?);
                let separate = !same_database(&state_options, &options);
                (options, store.redacted(), separate)
            }
            None => (state_options.clone(), state_target.clone(), false),
        };
        let state = pool(&state_options, "state", &state_target).await?;
        let store = if store_is_separate {
            pool(&store_options, "store", &store_target).await?
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
        })
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
        self.state_options
            .connect()
            .await
            .map_err(|source| DbError::Connect {
                which: "state",
                target: self.state_target.clone(),
                source,
            })
    }

    /// A dedicated connection to the store database (only used when it is separate).
    pub async fn store_session(&self) -> Result<PgConnection, DbError> {
        self.store_options
            .connect()
            .await
            .map_err(|source| DbError::Connect {
                which: "store",
                target: self.store_target.clone(),
                source,
            })
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

async fn pool(
    options: &PgConnectOptions,
    which: &'static str,
    target: &str,
) -> Result<PgPool, DbError> {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(30))
        .connect_with(options.clone())
        .await
        .map_err(|source| DbError::Connect {
            which,
            target: target.to_string(),
            source,
        })
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
