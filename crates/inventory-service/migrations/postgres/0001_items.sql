-- The PostgreSQL twin of migrations/sqlite/0001_items.sql: the same tables, columns and
-- constraints, so the store's SQL runs unchanged on either. Flags are 0/1 integers as in SQLite.
CREATE TABLE items (
    sku         TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    available   BIGINT NOT NULL CHECK (available >= 0),
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0)
);

CREATE TABLE reservations (
    reservation_id TEXT PRIMARY KEY NOT NULL,
    lines_key      TEXT NOT NULL,
    reserved       BIGINT NOT NULL CHECK (reserved IN (0, 1)),
    reason         TEXT NOT NULL,
    released       BIGINT NOT NULL DEFAULT 0 CHECK (released IN (0, 1)),
    subject        TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);

CREATE TABLE reservation_lines (
    reservation_id TEXT NOT NULL REFERENCES reservations (reservation_id),
    sku            TEXT NOT NULL REFERENCES items (sku),
    quantity       BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku)
);

INSERT INTO items (sku, name, available, price_cents) VALUES
    ('SKU-001', 'Espresso beans, 1 kg', 100, 2400),
    ('SKU-002', 'Milk frother', 25, 3999),
    ('SKU-003', 'Ceramic cup', 200, 899),
    ('SKU-004', 'Burr grinder', 10, 12900);
