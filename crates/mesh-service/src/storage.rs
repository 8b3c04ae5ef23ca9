//! The one way a service opens its SQLite database.

use std::path::Path;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::error::StartError;

/// Opens (creating if needed) the SQLite file at `path` (the `--db` flag) in WAL mode with
/// foreign keys on, and applies `migrations` (each crate's `sqlx::migrate!()`).
///
/// WAL lets reads proceed during a write; the busy timeout makes concurrent writers wait for
/// each other instead of failing with `SQLITE_BUSY`. An unusable path is the operator's
/// configuration (exit 64); a failed migration is not.
pub async fn open_sqlite(path: &Path, migrations: &Migrator) -> Result<SqlitePool, StartError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|e| StartError::config("--db", format!("{}: {e}", path.display())))?;
    migrations
        .run(&pool)
        .await
        .map_err(|e| StartError::runtime(format!("migrate {}", path.display()), e))?;
    Ok(pool)
}
