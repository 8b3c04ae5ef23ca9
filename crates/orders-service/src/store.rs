//! Orders in SQLite or PostgreSQL: created once per idempotency key, moved from PENDING to their
//! outcome exactly once, also across replicas sharing one database.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh_proto::domain::{Line, Quantity, RequestKey, Sku, lines_key};
use mesh_proto::orders::v1::OrderState;
use mesh_service::{Db, Migrations};
use rand::RngCore;

/// A new order id: 128 random bits, base64url, never starting with `-` or `_`. An id that
/// starts with `-` reads as a flag on every command line (`meshctl orders cancel -Ox…` fails
/// to parse), so the first character is redrawn until it is a letter or a digit.
pub fn new_order_id() -> String {
    loop {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let order_id = URL_SAFE_NO_PAD.encode(id);
        if order_id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return order_id;
        }
    }
}

/// The schema for each backend, applied in order when the service opens its database.
pub const MIGRATIONS: Migrations = mesh_service::migrations!["0001_orders.sql",];

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The idempotency key was used before with other lines.
    #[error("idempotency key already used with other lines")]
    KeyReused,
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOrder {
    /// Server-assigned id.
    pub order_id: String,
    /// The user who placed it.
    pub owner: String,
    /// Its lines, sorted by SKU.
    pub lines: Vec<Line>,
    /// Where it is.
    pub state: OrderState,
    /// Why it was rejected.
    pub reason: String,
    /// RFC 3339.
    pub created_at: String,
    /// Position for pagination (newest first).
    pub seq: i64,
}

impl StoredOrder {
    /// The reservation id used in inventory: derived from the order, so every retry reuses it.
    pub fn reservation_id(&self) -> String {
        format!("res_{}", self.order_id)
    }
}

/// The orders database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

struct OrderRow {
    seq: i64,
    order_id: String,
    owner: String,
    state: i32,
    reason: String,
    created_at: String,
}

mesh_service::from_row!(OrderRow {
    seq,
    order_id,
    owner,
    state,
    reason,
    created_at
});

const SELECT: &str = "SELECT rowid AS seq, order_id, owner, state, reason, created_at FROM orders";

impl Store {
    /// The store over `db`, opened and migrated with [`MIGRATIONS`].
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The order of `owner` under `key`: the existing one if the key was used before with the
    /// same lines, a new PENDING one if it was not.
    pub async fn create_or_get(
        &self,
        owner: &str,
        key: &RequestKey,
        lines: &[Line],
    ) -> Result<StoredOrder, StoreError> {
        let lines_key = lines_key(lines);
        let mut tx = self.db.begin_write().await?;
        // The unique (owner, idempotency_key) lets one insert win; a concurrent one with the same
        // key waits for it and then finds its order.
        let order_id = new_order_id();
        let created = sqlx::query(
            "INSERT INTO orders (order_id, owner, idempotency_key, lines_key, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (owner, idempotency_key) DO NOTHING",
        )
        .bind(&order_id)
        .bind(owner)
        .bind(key.as_str())
        .bind(&lines_key)
        .bind(OrderState::Pending as i32)
        .bind(rfc3339_now())
        .execute(&mut *tx)
        .await?;
        let order_id = if created.rows_affected() == 1 {
            for line in lines {
                sqlx::query(
                    "INSERT INTO order_lines (order_id, sku, quantity) VALUES ($1, $2, $3)",
                )
                .bind(&order_id)
                .bind(line.sku.as_str())
                .bind(i64::from(line.quantity.get()))
                .execute(&mut *tx)
                .await?;
            }
            order_id
        } else {
            let (existing, stored): (String, String) = sqlx::query_as(
                "SELECT order_id, lines_key FROM orders WHERE owner = $1 AND idempotency_key = $2",
            )
            .bind(owner)
            .bind(key.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if stored != lines_key {
                return Err(StoreError::KeyReused);
            }
            existing
        };
        tx.commit().await?;
        self.get(&order_id)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }

    /// Moves an order from `from` to `to` (with `reason`); returns the order as it now is. Only
    /// one caller wins a transition; the others see the winner's result.
    pub async fn transition(
        &self,
        order_id: &str,
        from: &[OrderState],
        to: OrderState,
        reason: &str,
    ) -> Result<Option<StoredOrder>, StoreError> {
        // One guarded statement: the order moves only from a state in `from`.
        let states: Vec<String> = (0..from.len()).map(|i| format!("${}", i + 4)).collect();
        let sql = format!(
            "UPDATE orders SET state = $1, reason = $2 WHERE order_id = $3 AND state IN ({})",
            states.join(", ")
        );
        let mut update = sqlx::query(&sql)
            .bind(to as i32)
            .bind(reason)
            .bind(order_id);
        for state in from {
            update = update.bind(*state as i32);
        }
        update.execute(self.db.pool()).await?;
        self.get(order_id).await
    }

    /// One order.
    pub async fn get(&self, order_id: &str) -> Result<Option<StoredOrder>, StoreError> {
        let row: Option<OrderRow> = sqlx::query_as(&format!("{SELECT} WHERE order_id = $1"))
            .bind(order_id)
            .fetch_optional(self.db.pool())
            .await?;
        match row {
            Some(row) => Ok(Some(self.with_lines(row).await?)),
            None => Ok(None),
        }
    }

    /// Orders newest first, of `owner` (or everyone's when `None`), before position `before`.
    pub async fn list(
        &self,
        owner: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        let rows: Vec<OrderRow> = sqlx::query_as(&format!(
            "{SELECT} WHERE ($1 IS NULL OR owner = $1) AND rowid < $2 ORDER BY rowid DESC LIMIT $3"
        ))
        .bind(owner)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        let mut orders = Vec::with_capacity(rows.len());
        for row in rows {
            orders.push(self.with_lines(row).await?);
        }
        Ok(orders)
    }

    async fn with_lines(&self, row: OrderRow) -> Result<StoredOrder, StoreError> {
        let lines: Vec<(String, i64)> = sqlx::query_as(
            "SELECT sku, quantity FROM order_lines WHERE order_id = $1 ORDER BY sku",
        )
        .bind(&row.order_id)
        .fetch_all(self.db.pool())
        .await?;
        let lines = lines
            .into_iter()
            .filter_map(|(sku, quantity)| {
                Some(Line {
                    sku: Sku::parse("sku", &sku).ok()?,
                    quantity: Quantity::parse("quantity", u32::try_from(quantity).ok()?).ok()?,
                })
            })
            .collect();
        Ok(StoredOrder {
            order_id: row.order_id,
            owner: row.owner,
            lines,
            state: OrderState::try_from(row.state).unwrap_or(OrderState::Unspecified),
            reason: row.reason,
            created_at: row.created_at,
            seq: row.seq,
        })
    }
}

/// Now as RFC 3339 in UTC to the second, the `created_at` of an order.
fn rfc3339_now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn order_ids_never_start_like_a_flag() {
        for _ in 0..10_000 {
            let id = super::new_order_id();
            assert_eq!(id.len(), 22);
            assert!(id.starts_with(|c: char| c.is_ascii_alphanumeric()), "{id}");
        }
    }
}
