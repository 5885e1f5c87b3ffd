-- A small online shop (SQLite). Example schema for hetagent's text2sql agent.
-- Amounts are in euro cents (integer); timestamps are ISO-8601 text in UTC.

CREATE TABLE customers (
    customer_id   INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    email         TEXT NOT NULL UNIQUE,
    country       TEXT NOT NULL,            -- ISO 3166-1 alpha-2, e.g. 'DE', 'US'
    signed_up_at  TEXT NOT NULL
);

CREATE TABLE categories (
    category_id   INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE      -- e.g. 'Coffee', 'Equipment', 'Accessories'
);

CREATE TABLE products (
    product_id    INTEGER PRIMARY KEY,
    category_id   INTEGER NOT NULL REFERENCES categories(category_id),
    name          TEXT NOT NULL,
    price_cents   INTEGER NOT NULL CHECK (price_cents >= 0),   -- current list price
    in_stock      INTEGER NOT NULL DEFAULT 0                   -- units on hand
);

CREATE TABLE orders (
    order_id      INTEGER PRIMARY KEY,
    customer_id   INTEGER NOT NULL REFERENCES customers(customer_id),
    ordered_at    TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'shipped', 'delivered', 'cancelled'))
);

CREATE TABLE order_items (
    order_id          INTEGER NOT NULL REFERENCES orders(order_id),
    product_id        INTEGER NOT NULL REFERENCES products(product_id),
    quantity          INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents  INTEGER NOT NULL,      -- price paid, which may differ from the list price
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE reviews (
    review_id     INTEGER PRIMARY KEY,
    product_id    INTEGER NOT NULL REFERENCES products(product_id),
    customer_id   INTEGER NOT NULL REFERENCES customers(customer_id),
    rating        INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5),
    body          TEXT,
    created_at    TEXT NOT NULL
);

CREATE INDEX orders_by_customer ON orders(customer_id);
CREATE INDEX items_by_product ON order_items(product_id);
CREATE INDEX reviews_by_product ON reviews(product_id);
