//! Stock in SQLite: reads, all-or-nothing reservations that are idempotent on their id, releases
//! and restocks.

use mesh_proto::domain::{Line, Sku, lines_key};
use sqlx::{Sqlite, SqlitePool, Transaction};

/// The schema, applied in order when the service opens its database.
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The reservation id was used before with other lines.
    #[error("reservation id already used with other lines")]
    Conflict,
    /// The item does not exist.
    #[error("unknown sku {0}")]
    UnknownSku(String),
    /// SQLite failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// An item row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ItemRow {
    /// SKU.
    pub sku: String,
    /// Name.
    pub name: String,
    /// Units available.
    pub available: i64,
    /// Unit price in cents.
    pub price_cents: i64,
}

/// What a reservation attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveOutcome {
    /// Whether the stock was reserved.
    pub reserved: bool,
    /// Why not, when it was not.
    pub reason: String,
    /// Whether this was a replay of an earlier request with the same id and lines.
    pub replayed: bool,
}

/// The inventory database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// The store over `pool`, opened and migrated with [`MIGRATIONS`] by
    /// `mesh_service::open_sqlite`.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// Items in SKU order after `after`, at most `limit`.
    pub async fn list_items(
        &self,
        after: Option<&Sku>,
        limit: u32,
    ) -> Result<Vec<ItemRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT sku, name, available, price_cents FROM items WHERE sku > ? ORDER BY sku LIMIT ?",
        )
        .bind(after.map_or("", Sku::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// One item.
    pub async fn get_item(&self, sku: &Sku) -> Result<Option<ItemRow>, StoreError> {
        Ok(
            sqlx::query_as("SELECT sku, name, available, price_cents FROM items WHERE sku = ?")
                .bind(sku.as_str())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Reserves every line or none, in one write transaction. The same id with the same lines
    /// returns the first outcome without touching stock again; with other lines it is a
    /// [`StoreError::Conflict`].
    pub async fn reserve(
        &self,
        reservation_id: &str,
        lines: &[Line],
        subject: &str,
    ) -> Result<ReserveOutcome, StoreError> {
        let lines_key = lines_key(lines);
        // IMMEDIATE takes the write lock up front, so concurrent reservations queue instead of
        // failing to upgrade a read lock.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let existing: Option<(String, bool, String)> = sqlx::query_as(
            "SELECT lines_key, reserved, reason FROM reservations WHERE reservation_id = ?",
        )
        .bind(reservation_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((key, reserved, reason)) = existing {
            return if key == lines_key {
                Ok(ReserveOutcome {
                    reserved,
                    reason,
                    replayed: true,
                })
            } else {
                Err(StoreError::Conflict)
            };
        }
        let shortage = find_shortage(&mut tx, lines).await?;
        let reason = shortage.clone().unwrap_or_default();
        sqlx::query(
            "INSERT INTO reservations (reservation_id, lines_key, reserved, reason, subject, created_at) \
             VALUES (?, ?, ?, ?, ?, unixepoch())",
        )
        .bind(reservation_id)
        .bind(&lines_key)
        .bind(shortage.is_none())
        .bind(&reason)
        .bind(subject)
        .execute(&mut *tx)
        .await?;
        if shortage.is_none() {
            for line in lines {
                let quantity = i64::from(line.quantity.get());
                let updated = sqlx::query(
                    "UPDATE items SET available = available - ? WHERE sku = ? AND available >= ?",
                )
                .bind(quantity)
                .bind(line.sku.as_str())
                .bind(quantity)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() != 1 {
                    // Cannot happen under the write lock; refuse rather than go negative.
                    return Err(StoreError::Database(sqlx::Error::RowNotFound));
                }
                sqlx::query(
                    "INSERT INTO reservation_lines (reservation_id, sku, quantity) VALUES (?, ?, ?)",
                )
                .bind(reservation_id)
                .bind(line.sku.as_str())
                .bind(quantity)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(ReserveOutcome {
            reserved: shortage.is_none(),
            reason,
            replayed: false,
        })
    }

    /// Returns a reservation's stock once; `false` when there was nothing (left) to release.
    pub async fn release(&self, reservation_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let marked = sqlx::query(
            "UPDATE reservations SET released = 1 \
             WHERE reservation_id = ? AND reserved = 1 AND released = 0",
        )
        .bind(reservation_id)
        .execute(&mut *tx)
        .await?;
        if marked.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE items SET available = available + \
             (SELECT quantity FROM reservation_lines l WHERE l.reservation_id = ? AND l.sku = items.sku) \
             WHERE sku IN (SELECT sku FROM reservation_lines WHERE reservation_id = ?)",
        )
        .bind(reservation_id)
        .bind(reservation_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Adds `quantity` units to an item.
    pub async fn restock(&self, sku: &Sku, quantity: u32) -> Result<ItemRow, StoreError> {
        sqlx::query_as(
            "UPDATE items SET available = available + ? WHERE sku = ? \
             RETURNING sku, name, available, price_cents",
        )
        .bind(i64::from(quantity))
        .bind(sku.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::UnknownSku(sku.to_string()))
    }
}

/// The first line that cannot be served, as a reason, or `None` when all can.
async fn find_shortage(
    tx: &mut Transaction<'_, Sqlite>,
    lines: &[Line],
) -> Result<Option<String>, StoreError> {
    for line in lines {
        let available: Option<i64> =
            sqlx::query_scalar("SELECT available FROM items WHERE sku = ?")
                .bind(line.sku.as_str())
                .fetch_optional(&mut **tx)
                .await?;
        match available {
            None => return Ok(Some(format!("unknown sku {}", line.sku))),
            Some(n) if n < i64::from(line.quantity.get()) => {
                return Ok(Some(format!(
                    "insufficient stock for {}: {n} available, {} requested",
                    line.sku,
                    line.quantity.get()
                )));
            }
            Some(_) => {}
        }
    }
    Ok(None)
}
