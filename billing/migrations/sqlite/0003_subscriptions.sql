-- Subscriptions: customers on plans over time, and the add-ons bought on them. Each row keeps the
-- API's JSON document in `doc`; the columns are what is looked up (a customer's subscriptions, a
-- subscription's add-ons) and what the database must keep unique: an add-on is bought once per
-- subscription (its quantity changes over time instead). Times are RFC 3339 text as in the
-- documents.

CREATE TABLE subscriptions (
    id          TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    active_from TEXT NOT NULL,
    active_to   TEXT,
    deleted_at  TEXT,
    doc         TEXT NOT NULL
);
CREATE INDEX subscriptions_by_customer ON subscriptions (customer_id);

CREATE TABLE subscription_addons (
    id              TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id),
    addon_id        TEXT NOT NULL,
    doc             TEXT NOT NULL
);
CREATE UNIQUE INDEX subscription_addons_once ON subscription_addons (subscription_id, addon_id);

-- When something may change for a subscription (it starts or ends, a phase starts, an edit takes
-- effect, an add-on's quantity changes), as Unix milliseconds, written with the subscription or
-- add-on document (`owner_id`) in the same transaction: the scheduler asks for a window of time
-- through the index instead of reading every subscription.
CREATE TABLE subscription_due (
    owner_id        TEXT   NOT NULL,
    subscription_id TEXT   NOT NULL,
    at_ms           BIGINT NOT NULL,
    PRIMARY KEY (owner_id, at_ms)
);
CREATE INDEX subscription_due_by_time ON subscription_due (at_ms);
