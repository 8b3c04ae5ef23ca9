-- The PostgreSQL twin of migrations/sqlite/0001_orders.sql. `rowid` stands in for SQLite's
-- implicit row id: the insertion order that GetOrders pages by.
CREATE TABLE orders (
    rowid           BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    order_id        TEXT PRIMARY KEY NOT NULL,
    owner           TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    lines_key       TEXT NOT NULL,
    state           BIGINT NOT NULL,
    reason          TEXT NOT NULL DEFAULT '',
    created_at      TEXT NOT NULL,
    UNIQUE (owner, idempotency_key)
);

CREATE TABLE order_lines (
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    sku      TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    PRIMARY KEY (order_id, sku)
);

CREATE INDEX orders_owner ON orders (owner);
