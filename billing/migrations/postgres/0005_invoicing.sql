-- Invoicing: billing profiles, customer overrides, installed apps and invoices. Each row keeps the
-- API's JSON document in `doc`; the columns are what the database must index or keep unique:
-- one default profile, at most one gathering invoice per customer and currency (`gathering_key`
-- is set only while an invoice gathers), and the next time the scheduler must act on an invoice
-- (RFC 3339 with milliseconds, UTC, so text order is time order).

CREATE TABLE billing_profiles (
    id         TEXT PRIMARY KEY,
    is_default TEXT,
    deleted_at TEXT,
    doc        TEXT NOT NULL
);
CREATE UNIQUE INDEX billing_profiles_one_default ON billing_profiles (is_default)
    WHERE is_default = 'true' AND deleted_at IS NULL;

CREATE TABLE billing_customer_overrides (
    id         TEXT PRIMARY KEY,
    profile_id TEXT,
    doc        TEXT NOT NULL
);

CREATE TABLE apps (
    id         TEXT PRIMARY KEY,
    type       TEXT NOT NULL,
    deleted_at TEXT,
    doc        TEXT NOT NULL
);

CREATE TABLE invoices (
    id             TEXT PRIMARY KEY,
    customer_id    TEXT NOT NULL,
    currency       TEXT NOT NULL,
    status         TEXT NOT NULL,
    gathering_key  TEXT UNIQUE,
    next_action_at TEXT,
    doc            TEXT NOT NULL
);
CREATE INDEX invoices_by_customer ON invoices (customer_id);
CREATE INDEX invoices_by_next_action ON invoices (next_action_at)
    WHERE next_action_at IS NOT NULL;
