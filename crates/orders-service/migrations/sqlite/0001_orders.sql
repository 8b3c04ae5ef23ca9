-- Orders and their lines. (owner, idempotency_key) is unique: a retried PlaceOrder finds the
-- order its first attempt stored, whatever state that attempt reached.
CREATE TABLE orders (
    order_id        TEXT PRIMARY KEY NOT NULL,
    owner           TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    lines_key       TEXT NOT NULL,
    state           INTEGER NOT NULL,
    reason          TEXT NOT NULL DEFAULT '',
    created_at      TEXT NOT NULL,
    UNIQUE (owner, idempotency_key)
);

CREATE TABLE order_lines (
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    sku      TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    PRIMARY KEY (order_id, sku)
);

CREATE INDEX orders_owner ON orders (owner);
