-- Notifications (issue #16): webhook channels, rules, and the durable outbox of events with one
-- delivery row per (event, channel). Channels and rules keep the API's JSON document in `doc`.
-- Times ending in _ms are Unix milliseconds: next_attempt_ms and deadline_ms on billing's clock
-- (a simulated clock drives retries), lease_until_ms on the wall clock (a lease is about a live
-- process, not billing time).

CREATE TABLE notification_channels (
    id         TEXT PRIMARY KEY,
    deleted_at TEXT,
    doc        TEXT NOT NULL
);

CREATE TABLE notification_rules (
    id         TEXT PRIMARY KEY,
    deleted_at TEXT,
    doc        TEXT NOT NULL
);

-- One event: the rule and payload as they were when it was created. dedup_key (NULL for test
-- sends and invoice events) is what makes a threshold or reset fire once: the evaluator inserts
-- with ON CONFLICT DO NOTHING, in the same transaction as the event's delivery rows.
CREATE TABLE notification_events (
    id         TEXT PRIMARY KEY,
    type       TEXT NOT NULL,
    rule_id    TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    dedup_key  TEXT UNIQUE,
    doc        TEXT NOT NULL
);
CREATE INDEX notification_events_by_time ON notification_events (created_ms);

-- One event's delivery to one channel. state: PENDING, SENDING, SUCCESS, FAILED, RESENDING.
-- A worker claims due rows by setting state SENDING with its lease token and lease_until_ms;
-- a SENDING row whose lease ran out (its worker died) is claimed again. doc is the API's
-- deliveryStatus object (attempts, last response).
CREATE TABLE notification_deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL REFERENCES notification_events (id),
    channel_id      TEXT NOT NULL,
    state           TEXT NOT NULL,
    next_attempt_ms INTEGER,
    deadline_ms     INTEGER NOT NULL,
    lease_token     TEXT,
    lease_until_ms  INTEGER,
    doc             TEXT NOT NULL
);
CREATE INDEX notification_deliveries_by_event ON notification_deliveries (event_id);
CREATE INDEX notification_deliveries_due ON notification_deliveries (next_attempt_ms)
    WHERE state IN ('PENDING', 'RESENDING', 'SENDING');
