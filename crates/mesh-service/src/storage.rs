//! The one way a service opens its database: SQLite (the embedded default) or PostgreSQL (shared
//! by replicas), chosen by `MESH_DB`, migrated on start.
//!
//! Both backends run the same SQL. The stores write it in the portable subset: `$1` placeholders
//! (SQLite reads `$N` as the N-th argument too), `ON CONFLICT … DO NOTHING`, `RETURNING`,
//! `TRUE`/`FALSE`, timestamps bound from Rust rather than SQL date functions. What differs is
//! said here once: how a writing transaction begins ([`Db::begin_write`],
//! [`Db::begin_serialized`]) and how rows are locked for update ([`Db::for_update`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use std::borrow::Cow;

use futures_util::future::BoxFuture;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Executor, Transaction};

use crate::error::StartError;

/// Where a service keeps its state: the value of `--db` / `MESH_DB`.
#[derive(Clone, PartialEq, Eq)]
pub enum DbUrl {
    /// A SQLite file (`sqlite:PATH`, `sqlite://PATH` or a bare path), created if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://user:password@host:port/database?sslmode=…`).
    Postgres(String),
}

impl DbUrl {
    /// The backend's name, for logs and errors.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

impl FromStr for DbUrl {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        if value.is_empty() {
            return Err("empty: give a SQLite file or a postgres:// URL".into());
        }
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            let parsed =
                url::Url::parse(value).map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err("a PostgreSQL URL needs a host".into());
            }
            if parsed.path().trim_start_matches('/').is_empty() {
                return Err("a PostgreSQL URL needs a database name (…/DATABASE)".into());
            }
            return Ok(Self::Postgres(value.to_owned()));
        }
        let path = value
            .strip_prefix("sqlite://")
            .or_else(|| value.strip_prefix("sqlite:"))
            .unwrap_or(value);
        if path.is_empty() || path.contains("://") {
            return Err(format!(
                "{value:?} is neither a file path nor a sqlite: or postgres:// URL"
            ));
        }
        Ok(Self::Sqlite(PathBuf::from(path)))
    }
}

/// Shown without the password, so the URL can be logged.
impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Self::Postgres(url) => match url::Url::parse(url) {
                Ok(mut parsed) => {
                    if parsed.password().is_some() {
                        let _ = parsed.set_password(Some("***"));
                    }
                    f.write_str(parsed.as_str())
                }
                Err(_) => f.write_str("postgres://(unparsable)"),
            },
        }
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<PathBuf> for DbUrl {
    fn from(path: PathBuf) -> Self {
        Self::Sqlite(path)
    }
}

impl From<&Path> for DbUrl {
    fn from(path: &Path) -> Self {
        Self::Sqlite(path.to_path_buf())
    }
}

/// The SQL dialect a [`Db`] speaks, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: one writer at a time, so a write transaction takes the lock up front.
    Sqlite,
    /// PostgreSQL: row locks and guarded updates, many writers at once.
    Postgres,
}

/// One migration file, embedded in the binary: its name (`<version>_<description>.sql`) and its
/// SQL.
#[derive(Debug, Clone, Copy)]
pub struct MigrationFile {
    /// The file name, e.g. `0001_items.sql`.
    pub name: &'static str,
    /// Its contents.
    pub sql: &'static str,
}

/// A service's schema for each backend, the same tables in each dialect: the files of the
/// crate's `migrations/sqlite` and `migrations/postgres`, embedded by [`crate::migrations!`]
/// (same names in both). Applied by sqlx's migrator, as its `migrate!` would (same versions,
/// descriptions and checksums); embedded by hand so that no sqlx macro, and so no second,
/// host-side build of sqlx and its drivers, is needed.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// Applied to a SQLite file.
    pub sqlite: &'static [MigrationFile],
    /// Applied to a PostgreSQL database.
    pub postgres: &'static [MigrationFile],
}

/// Embeds the named files of the calling crate's `migrations/sqlite` and `migrations/postgres`
/// as a [`Migrations`]: `mesh_service::migrations!["0001_items.sql", "0002_prices.sql"]`.
#[macro_export]
macro_rules! migrations {
    ($($file:literal),+ $(,)?) => {
        $crate::storage::Migrations {
            sqlite: &[$($crate::storage::MigrationFile {
                name: $file,
                sql: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite/", $file)),
            }),+],
            postgres: &[$($crate::storage::MigrationFile {
                name: $file,
                sql: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres/", $file)),
            }),+],
        }
    };
}

/// Reads a row into a struct whose fields are named as its columns (what sqlx's
/// `derive(FromRow)` does, without its macro crate): `from_row!(Item { sku, name })`, with
/// `flatten field: Type` for a field read from the same row by `Type`'s own `FromRow`. A field
/// left out does not compile.
#[macro_export]
macro_rules! from_row {
    ($ty:ident { $($field:ident),+ $(,)? } $(flatten $flat:ident: $flat_ty:ty)?) => {
        impl<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> for $ty {
            fn from_row(row: &'r sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                Ok(Self {
                    $($field: row.try_get(stringify!($field))?,)+
                    $($flat: <$flat_ty as sqlx::FromRow<'r, sqlx::any::AnyRow>>::from_row(row)?,)?
                })
            }
        }
    };
}

/// Embedded migration files as sqlx reads a migrations directory: version and description
/// from the name (`0006_family_grant.sql` is version 6, "family grant"), in version order.
#[derive(Debug)]
struct Embedded(&'static [MigrationFile]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            let mut migrations = Vec::with_capacity(self.0.len());
            for file in self.0 {
                let (version, rest) = file
                    .name
                    .split_once('_')
                    .ok_or_else(|| format!("migration {}: no `<version>_` prefix", file.name))?;
                let version: i64 = version
                    .parse()
                    .map_err(|_| format!("migration {}: the version is not a number", file.name))?;
                let description = rest.trim_end_matches(".sql").replace('_', " ");
                migrations.push(Migration::new(
                    version,
                    Cow::Owned(description),
                    MigrationType::Simple,
                    Cow::Borrowed(file.sql),
                    file.sql.starts_with("-- no-transaction"),
                ));
            }
            migrations.sort_by_key(|migration| migration.version);
            Ok(migrations)
        })
    }
}

/// An open, migrated database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    dialect: Dialect,
}

/// A transaction on a [`Db`].
pub type Tx = Transaction<'static, Any>;

impl Db {
    /// Opens the database `url` names and applies `migrations`.
    ///
    /// SQLite: created if missing, WAL (reads proceed during a write), foreign keys on, a busy
    /// timeout so concurrent writers wait for each other instead of failing with `SQLITE_BUSY`.
    /// PostgreSQL: a pool of 8; sqlx's migrator takes an advisory lock, so replicas starting
    /// together migrate once. A database that cannot be reached or opened is the operator's
    /// configuration (exit 64 naming `--db`); a failed migration is not.
    pub async fn open(url: &DbUrl, migrations: &Migrations) -> Result<Self, StartError> {
        install_default_drivers();
        let (pool, dialect, migrator) = match url {
            DbUrl::Sqlite(path) => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .to_url_lossy();
                let pool = AnyPoolOptions::new()
                    .max_connections(4)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                                 PRAGMA busy_timeout = 10000;",
                            )
                            .await
                            .map(|_| ())
                        })
                    })
                    .connect(options.as_str())
                    .await;
                (pool, Dialect::Sqlite, migrations.sqlite)
            }
            DbUrl::Postgres(raw) => {
                wait_for_postgres(url, raw).await?;
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(raw)
                    .await;
                (pool, Dialect::Postgres, migrations.postgres)
            }
        };
        let pool = pool.map_err(|e| StartError::config("--db", format!("{url}: {e}")))?;
        Migrator::new(Embedded(migrator))
            .await
            .map_err(|e| StartError::runtime(format!("migrations for {url}"), e))?
            .run(&pool)
            .await
            .map_err(|e| StartError::runtime(format!("migrate {url}"), e))?;
        Ok(Self { pool, dialect })
    }

    /// The pool, for single statements.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// A transaction that reads and then writes rows. SQLite takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so two of them queue instead of one failing to upgrade its read
    /// lock; PostgreSQL begins at READ COMMITTED, and the statement that writes must guard
    /// itself: a `WHERE` on the state it expects, a unique constraint, or rows read
    /// [`Db::for_update`].
    pub async fn begin_write(&self) -> Result<Tx, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.pool.begin().await,
        }
    }

    /// A transaction that runs alone among all those with the same `name`, on every replica:
    /// for rare steps that check a whole table and then change it (creating the first signing
    /// key, a key rotation, a CA step). SQLite's write lock gives that already; PostgreSQL takes
    /// a transaction-scoped advisory lock on the name.
    pub async fn begin_serialized(&self, name: &str) -> Result<Tx, sqlx::Error> {
        let mut tx = self.begin_write().await?;
        self.serialize(&mut tx, name).await?;
        Ok(tx)
    }

    /// From here to its commit, `tx` runs alone among the transactions serialized on `name`.
    /// For appends to a log that readers follow by sequence number: PostgreSQL assigns an
    /// identity value at INSERT but shows the row at COMMIT, so two appenders can commit out of
    /// order and a reader whose cursor passed the later number never sees the earlier row.
    /// Serialized appenders commit in sequence order. SQLite's write lock does this already.
    pub async fn serialize(&self, tx: &mut Tx, name: &str) -> Result<(), sqlx::Error> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))::text")
                .bind(name)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// What ends a `SELECT` whose rows the transaction is about to update: `FOR UPDATE` on
    /// PostgreSQL (a row lock other writers wait on); nothing on SQLite, where the transaction
    /// already holds the database's write lock.
    pub fn for_update(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }
}

/// How long a service waits at start for a PostgreSQL server that does not answer yet (one
/// starting beside it, in compose or a cluster).
const POSTGRES_WAIT: Duration = Duration::from_secs(10);

/// Connects once to `raw` to see that the server is there and lets us in, retrying for
/// [`POSTGRES_WAIT`] while the server cannot be reached. A refusal that waiting cannot mend (a
/// wrong password, an unknown database or role) ends the wait at once; either way the error is
/// the server's own, not a pool timeout. Each attempt is bounded by what is left of the wait:
/// a server that accepts the connection and never answers (sqlx sets no timeout of its own)
/// ends the start within the wait too.
async fn wait_for_postgres(url: &DbUrl, raw: &str) -> Result<(), StartError> {
    let deadline = tokio::time::Instant::now() + POSTGRES_WAIT;
    loop {
        let attempt = tokio::time::timeout_at(deadline, sqlx::AnyConnection::connect(raw)).await;
        match attempt {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                return Ok(());
            }
            Ok(Err(error)) if unreachable(&error) && tokio::time::Instant::now() < deadline => {
                tracing::warn!(db = %url, %error, "database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Err(error)) => {
                return Err(StartError::config("--db", format!("{url}: {error}")));
            }
            Err(_) => {
                return Err(StartError::config(
                    "--db",
                    format!(
                        "{url}: no answer within {} s (the server accepted the connection but \
                         did not speak)",
                        POSTGRES_WAIT.as_secs()
                    ),
                ));
            }
        }
    }
}

/// Whether `error` says the server is not there yet (refused, reset, unreachable, a name that
/// does not resolve yet), which waiting can mend. A TLS failure (a certificate another CA
/// signed, a name that does not match) is an I/O error too, but of kind `InvalidData`: waiting
/// would only delay the operator's message.
fn unreachable(error: &sqlx::Error) -> bool {
    use std::io::ErrorKind::{InvalidData, InvalidInput, PermissionDenied, Unsupported};
    match error {
        sqlx::Error::Io(io) => !matches!(
            io.kind(),
            InvalidData | InvalidInput | PermissionDenied | Unsupported
        ),
        sqlx::Error::PoolTimedOut => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::DbUrl;
    use std::path::PathBuf;

    #[test]
    fn the_db_flag_takes_a_path_a_sqlite_url_or_a_postgres_url() {
        assert_eq!(
            "data/orders.db".parse::<DbUrl>(),
            Ok(DbUrl::Sqlite(PathBuf::from("data/orders.db")))
        );
        assert_eq!(
            "sqlite:///var/lib/x.db".parse::<DbUrl>(),
            Ok(DbUrl::Sqlite(PathBuf::from("/var/lib/x.db")))
        );
        assert_eq!(
            "sqlite:x.db".parse::<DbUrl>(),
            Ok(DbUrl::Sqlite(PathBuf::from("x.db")))
        );
        let pg: DbUrl = "postgres://mesh:s3cret@db:5432/orders".parse().expect("pg");
        assert_eq!(pg.backend(), "postgres");
        assert_eq!(pg.to_string(), "postgres://mesh:***@db:5432/orders");
        for bad in [
            "",
            "postgres://db:5432/",
            "postgres:///orders",
            "mysql://db/x",
        ] {
            assert!(bad.parse::<DbUrl>().is_err(), "{bad:?} accepted");
        }
    }
}
