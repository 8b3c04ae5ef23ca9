//! Stock in SQLite or PostgreSQL: reads, all-or-nothing reservations that are idempotent on
//! their id (also across replicas sharing one database), releases and restocks.

use mesh_proto::domain::{Line, Sku, lines_key};
use mesh_service::{Db, Migrations, Tx};

/// The schema for each backend, applied in order when the service opens its database.
pub const MIGRATIONS: Migrations = mesh_service::migrations!["0001_items.sql",];

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The reservation id was used before with other lines.
    #[error("reservation id already used with other lines")]
    Conflict,
    /// The item does not exist.
    #[error("unknown sku {0}")]
    UnknownSku(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// An item row.
#[derive(Debug, Clone, PartialEq, Eq)]
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

mesh_service::from_row!(ItemRow {
    sku,
    name,
    available,
    price_cents
});

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
    db: Db,
}

impl Store {
    /// The store over `db`, opened and migrated with [`MIGRATIONS`].
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Items in SKU order after `after`, at most `limit`.
    pub async fn list_items(
        &self,
        after: Option<&Sku>,
        limit: u32,
    ) -> Result<Vec<ItemRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT sku, name, available, price_cents FROM items WHERE sku > $1 ORDER BY sku LIMIT $2",
        )
        .bind(after.map_or("", Sku::as_str))
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?)
    }

    /// One item.
    pub async fn get_item(&self, sku: &Sku) -> Result<Option<ItemRow>, StoreError> {
        Ok(
            sqlx::query_as("SELECT sku, name, available, price_cents FROM items WHERE sku = $1")
                .bind(sku.as_str())
                .fetch_optional(self.db.pool())
                .await?,
        )
    }

    /// Reserves every line or none, in one write transaction. The same id with the same lines
    /// returns the first outcome without touching stock again; with other lines it is a
    /// [`StoreError::Conflict`].
    ///
    /// Safe with replicas on one database: the reservation row is claimed first (the primary key
    /// lets one claim win; a concurrent claim of the same id waits for it and then replays its
    /// outcome), and the item rows are read for update in SKU order, so two reservations of the
    /// same item take turns and never deadlock.
    pub async fn reserve(
        &self,
        reservation_id: &str,
        lines: &[Line],
        subject: &str,
    ) -> Result<ReserveOutcome, StoreError> {
        let lines_key = lines_key(lines);
        let mut lines = lines.to_vec();
        lines.sort_by(|a, b| a.sku.as_str().cmp(b.sku.as_str()));
        let mut tx = self.db.begin_write().await?;
        let claimed = sqlx::query(
            "INSERT INTO reservations (reservation_id, lines_key, reserved, reason, subject, created_at) \
             VALUES ($1, $2, 0, '', $3, $4) ON CONFLICT (reservation_id) DO NOTHING",
        )
        .bind(reservation_id)
        .bind(&lines_key)
        .bind(subject)
        .bind(auth_interceptor::verify::unix_now() as i64)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            let (key, reserved, reason): (String, i64, String) = sqlx::query_as(
                "SELECT lines_key, reserved, reason FROM reservations WHERE reservation_id = $1",
            )
            .bind(reservation_id)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            return if key == lines_key {
                Ok(ReserveOutcome {
                    reserved: reserved != 0,
                    reason,
                    replayed: true,
                })
            } else {
                Err(StoreError::Conflict)
            };
        }
        if let Some(reason) = self.find_shortage(&mut tx, &lines).await? {
            sqlx::query("UPDATE reservations SET reason = $1 WHERE reservation_id = $2")
                .bind(&reason)
                .bind(reservation_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(ReserveOutcome {
                reserved: false,
                reason,
                replayed: false,
            });
        }
        for line in &lines {
            let quantity = i64::from(line.quantity.get());
            let updated = sqlx::query(
                "UPDATE items SET available = available - $1 WHERE sku = $2 AND available >= $1",
            )
            .bind(quantity)
            .bind(line.sku.as_str())
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() != 1 {
                // Cannot happen with the rows locked; refuse rather than go negative.
                return Err(StoreError::Database(sqlx::Error::RowNotFound));
            }
            sqlx::query(
                "INSERT INTO reservation_lines (reservation_id, sku, quantity) VALUES ($1, $2, $3)",
            )
            .bind(reservation_id)
            .bind(line.sku.as_str())
            .bind(quantity)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE reservations SET reserved = 1 WHERE reservation_id = $1")
            .bind(reservation_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ReserveOutcome {
            reserved: true,
            reason: String::new(),
            replayed: false,
        })
    }

    /// Returns a reservation's stock once; `false` when there was nothing (left) to release.
    /// The guarded update marks it released exactly once, whichever replica gets there first.
    pub async fn release(&self, reservation_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let marked = sqlx::query(
            "UPDATE reservations SET released = 1 \
             WHERE reservation_id = $1 AND reserved = 1 AND released = 0",
        )
        .bind(reservation_id)
        .execute(&mut *tx)
        .await?;
        if marked.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE items SET available = available + \
             (SELECT quantity FROM reservation_lines l WHERE l.reservation_id = $1 AND l.sku = items.sku) \
             WHERE sku IN (SELECT sku FROM reservation_lines WHERE reservation_id = $1)",
        )
        .bind(reservation_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The first line that cannot be served, as a reason, or `None` when all can. The rows read
    /// are locked until the transaction ends.
    async fn find_shortage(
        &self,
        tx: &mut Tx,
        lines: &[Line],
    ) -> Result<Option<String>, StoreError> {
        let select = format!(
            "SELECT available FROM items WHERE sku = $1{}",
            self.db.for_update()
        );
        for line in lines {
            let available: Option<i64> = sqlx::query_scalar(&select)
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

    /// Adds `quantity` units to an item.
    pub async fn restock(&self, sku: &Sku, quantity: u32) -> Result<ItemRow, StoreError> {
        sqlx::query_as(
            "UPDATE items SET available = available + $1 WHERE sku = $2 \
             RETURNING sku, name, available, price_cents",
        )
        .bind(i64::from(quantity))
        .bind(sku.as_str())
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| StoreError::UnknownSku(sku.to_string()))
    }
}
