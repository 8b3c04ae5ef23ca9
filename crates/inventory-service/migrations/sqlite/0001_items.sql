-- Items and their stock. `available` can never go negative: the CHECK is the last line of defence
-- behind the guarded UPDATE in `Store::reserve`.
CREATE TABLE items (
    sku         TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    available   INTEGER NOT NULL CHECK (available >= 0),
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0)
);

-- One row per reservation id, also for refused reservations, so a replay gets the same answer.
CREATE TABLE reservations (
    reservation_id TEXT PRIMARY KEY NOT NULL,
    lines_key      TEXT NOT NULL,
    reserved       INTEGER NOT NULL,
    reason         TEXT NOT NULL,
    released       INTEGER NOT NULL DEFAULT 0,
    subject        TEXT NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE reservation_lines (
    reservation_id TEXT NOT NULL REFERENCES reservations (reservation_id),
    sku            TEXT NOT NULL REFERENCES items (sku),
    quantity       INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku)
);

-- The demo catalogue.
INSERT INTO items (sku, name, available, price_cents) VALUES
    ('SKU-001', 'Espresso beans, 1 kg', 100, 2400),
    ('SKU-002', 'Milk frother', 25, 3999),
    ('SKU-003', 'Ceramic cup', 200, 899),
    ('SKU-004', 'Burr grinder', 10, 12900);
