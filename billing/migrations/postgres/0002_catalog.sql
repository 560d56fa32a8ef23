-- The product catalog: plans and add-ons (versioned by key) and the add-ons a plan offers.
-- Each row keeps the API's JSON document in `doc`; the columns are what the database must keep
-- unique: one row per (key, version), and at most one live draft (no effectiveFrom, not deleted)
-- per key. Times are RFC 3339 text as in the documents.

CREATE TABLE plans (
    id             TEXT PRIMARY KEY,
    key            TEXT NOT NULL,
    version        BIGINT NOT NULL CHECK (version >= 1),
    effective_from TEXT,
    deleted_at     TEXT,
    doc            TEXT NOT NULL,
    UNIQUE (key, version)
);
CREATE UNIQUE INDEX plans_one_draft_per_key ON plans (key)
    WHERE effective_from IS NULL AND deleted_at IS NULL;

CREATE TABLE addons (
    id             TEXT PRIMARY KEY,
    key            TEXT NOT NULL,
    version        BIGINT NOT NULL CHECK (version >= 1),
    effective_from TEXT,
    deleted_at     TEXT,
    doc            TEXT NOT NULL,
    UNIQUE (key, version)
);
CREATE UNIQUE INDEX addons_one_draft_per_key ON addons (key)
    WHERE effective_from IS NULL AND deleted_at IS NULL;

-- An add-on offered with a plan: once per plan while not deleted.
CREATE TABLE plan_addons (
    id         TEXT PRIMARY KEY,
    plan_id    TEXT NOT NULL REFERENCES plans (id),
    addon_id   TEXT NOT NULL REFERENCES addons (id),
    deleted_at TEXT,
    doc        TEXT NOT NULL
);
CREATE UNIQUE INDEX plan_addons_once_per_plan ON plan_addons (plan_id, addon_id)
    WHERE deleted_at IS NULL;
