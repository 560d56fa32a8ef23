-- Tollgate billing schema, version 1 (PostgreSQL). Quantities and money are NUMERIC (exact
-- decimals, rust_decimal in Rust), never floats; times are Unix milliseconds; documents are the API's JSON.

-- Every accepted event. (source, id) is the dedup key, decided by this unique constraint in the
-- same transaction as the event's usage.
CREATE TABLE events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    time_ms     BIGINT NOT NULL,
    ingested_ms BIGINT NOT NULL,
    body        TEXT    NOT NULL,
    UNIQUE (source, id)
);

-- Usage pre-aggregated per meter, subject and group-by values, at three grains: per minute, hour
-- and day (UTC-aligned; `grain_ms` 60000, 3600000, 86400000), each row holding the partial
-- aggregates every aggregation needs. Ingest writes all three in its transaction; a query reads
-- the coarsest rows that fit its range and windows, and minutes only at the edges.
CREATE TABLE usage_rollups (
    meter_id  TEXT    NOT NULL,
    grain_ms  BIGINT NOT NULL,
    subject   TEXT    NOT NULL,
    group_key TEXT    NOT NULL,
    start_ms  BIGINT NOT NULL,
    count     BIGINT NOT NULL,
    sum       NUMERIC NOT NULL,
    min       NUMERIC,
    max       NUMERIC,
    latest_ms BIGINT,
    latest    NUMERIC,
    PRIMARY KEY (meter_id, grain_ms, subject, group_key, start_ms)
);

-- Distinct values per usage row, for UNIQUE_COUNT meters.
CREATE TABLE usage_uniques (
    meter_id  TEXT    NOT NULL,
    grain_ms  BIGINT NOT NULL,
    subject   TEXT    NOT NULL,
    group_key TEXT    NOT NULL,
    start_ms  BIGINT NOT NULL,
    value     TEXT    NOT NULL,
    PRIMARY KEY (meter_id, grain_ms, subject, group_key, start_ms, value)
);

CREATE TABLE meters (
    id   TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    doc  TEXT NOT NULL
);

CREATE TABLE customers (
    id  TEXT PRIMARY KEY,
    key TEXT UNIQUE,
    doc TEXT NOT NULL
);

-- usageAttribution.subjectKeys (and the customer's key): a subject belongs to one customer.
CREATE TABLE customer_subjects (
    subject     TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers (id) ON DELETE CASCADE
);
CREATE INDEX customer_subjects_by_customer ON customer_subjects (customer_id);

CREATE TABLE features (
    id          TEXT PRIMARY KEY,
    key         TEXT NOT NULL,
    archived_at TEXT,
    doc         TEXT NOT NULL
);
CREATE UNIQUE INDEX features_live_key ON features (key) WHERE archived_at IS NULL;

CREATE TABLE entitlements (
    id          TEXT PRIMARY KEY,
    feature_id  TEXT NOT NULL,
    customer_id TEXT,
    subject_key TEXT,
    doc         TEXT NOT NULL
);
CREATE INDEX entitlements_by_customer ON entitlements (customer_id);
CREATE INDEX entitlements_by_subject ON entitlements (subject_key);

CREATE TABLE grants (
    id             TEXT PRIMARY KEY,
    entitlement_id TEXT NOT NULL,
    doc            TEXT NOT NULL
);
CREATE INDEX grants_by_entitlement ON grants (entitlement_id);

-- Any other kind of API document, by kind and id.
CREATE TABLE documents (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    doc  TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);

-- Counters other replicas poll to learn that a cached table changed (meters).
CREATE TABLE change_counters (
    name    TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO change_counters (name, version) VALUES ('meters', 0);
