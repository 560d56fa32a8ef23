//! The notification outbox's storage, the same SQL on SQLite and PostgreSQL (text parameters cast
//! where a column is BIGINT): events with their delivery rows written in one transaction (an
//! event's `dedup_key` is unique, so an evaluator that runs twice, or on two replicas, records it
//! once), and the delivery lease: a worker claims due rows by setting them `SENDING` with its token
//! and a lease end, by an update whose condition is checked again on each row as it is written (on
//! PostgreSQL a row another replica changed meanwhile is re-read), so replicas claim disjoint rows
//! — and only the holder of a row's token can record the outcome. A worker records the outcomes
//! of finished attempts (one statement for all of them) in the same transaction as its next claim
//! ([`Store::settle_and_claim`]), and reads a claim's deliveries with their event and channel
//! documents in one query. A claim's cost does not grow with the backlog: it ranks only each
//! channel's first few due deliveries and those in flight, found through indexes (migration 9).

use serde_json::Value;

use super::documents::Stmt;
use super::{Store, StoreError};

/// A BIGINT parameter bound as text (the same SQL on both backends).
fn big(n: usize) -> String {
    format!("CAST(CAST(${n} AS TEXT) AS BIGINT)")
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// Event id (also every delivery's `webhook-id`).
    pub id: String,
    /// Event type.
    pub kind: String,
    /// The rule that made it.
    pub rule_id: String,
    /// Creation time on billing's clock (Unix ms).
    pub created_ms: i64,
    /// What makes it happen once (`None`: never deduplicated, e.g. a test send).
    pub dedup_key: Option<String>,
    /// `{id, type, createdAt, rule, payload, annotations}`.
    pub doc: Value,
    /// One per channel.
    pub deliveries: Vec<NewDelivery>,
}

/// One delivery of a new event.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The channel.
    pub channel_id: String,
    /// `PENDING`, or `FAILED` when it cannot be sent at all (a disabled channel).
    pub state: String,
    /// When to send first (billing's clock); `None` when final.
    pub next_attempt_ms: Option<i64>,
    /// When to give up (billing's clock).
    pub deadline_ms: i64,
    /// The API's `deliveryStatus` object.
    pub doc: Value,
}

/// A delivery this worker holds the lease of.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// `<event id>/<channel id>`.
    pub id: String,
    /// The event's document.
    pub event: Value,
    /// The delivery status document.
    pub status: Value,
    /// The channel's document (`None`: the channel no longer exists).
    pub channel: Option<Value>,
    /// When to give up.
    pub deadline_ms: i64,
    /// The lease token the outcome must be recorded with.
    pub lease: String,
}

/// What one claim may take.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest {
    /// Billing's now (Unix ms): deliveries due by then.
    pub now_ms: i64,
    /// The wall clock (Unix ms): leases that ended before it are taken over.
    pub wall_ms: i64,
    /// How long the claim holds its deliveries (wall clock, ms).
    pub lease_ms: i64,
    /// At most this many (0: record outcomes only).
    pub limit: usize,
    /// At most this many in flight per channel, across replicas.
    pub per_channel: usize,
}

/// A finished attempt to record: the delivery's new state and status document.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The delivery.
    pub id: String,
    /// The lease it was claimed under (recorded only if that still holds it).
    pub lease: String,
    /// `SUCCESS`, `PENDING` (retried at `next_attempt_ms`) or `FAILED`.
    pub state: &'static str,
    /// When to try again (billing's clock).
    pub next_attempt_ms: Option<i64>,
    /// The API's `deliveryStatus` object.
    pub doc: Value,
}

/// The statement recording `outcomes` — each only if its lease still holds the row, releasing
/// the lease — in one `UPDATE … FROM (VALUES …)` (one round trip however many finished; both
/// backends name a `VALUES` list's columns `column1`, `column2`, …); `None` when there are none.
fn outcomes_statement(outcomes: &[Outcome]) -> Option<Stmt> {
    if outcomes.is_empty() {
        return None;
    }
    let rows: Vec<String> = (0..outcomes.len())
        .map(|i| {
            let n = 5 * i;
            format!(
                "(${}, {}, ${}, ${}, ${})",
                n + 1,
                big(n + 2),
                n + 3,
                n + 4,
                n + 5
            )
        })
        .collect();
    Some(Stmt {
        sql: format!(
            "UPDATE notification_deliveries SET state = v.column1, next_attempt_ms = v.column2, \
             doc = v.column3, lease_token = NULL, lease_until_ms = NULL \
             FROM (VALUES {}) AS v \
             WHERE notification_deliveries.id = v.column4 \
               AND notification_deliveries.lease_token = v.column5",
            rows.join(", ")
        ),
        params: outcomes
            .iter()
            .flat_map(|o| {
                [
                    Some(o.state.to_owned()),
                    o.next_attempt_ms.map(|t| t.to_string()),
                    Some(o.doc.to_string()),
                    Some(o.id.clone()),
                    Some(o.lease.clone()),
                ]
            })
            .collect(),
    })
}

/// A delivery row's id.
pub fn delivery_id(event_id: &str, channel_id: &str) -> String {
    format!("{event_id}/{channel_id}")
}

/// The statements that record `n` (the event, then its deliveries only if the event was new),
/// for a caller that runs them in its own transaction with the change that caused the event.
pub fn notification_statements(n: &NewNotification) -> Vec<Stmt> {
    let mut out = vec![Stmt {
        sql: format!(
            "INSERT INTO notification_events (id, type, rule_id, created_ms, dedup_key, doc) \
             VALUES ($1, $2, $3, {}, $5, $6) ON CONFLICT DO NOTHING",
            big(4)
        ),
        params: vec![
            Some(n.id.clone()),
            Some(n.kind.clone()),
            Some(n.rule_id.clone()),
            Some(n.created_ms.to_string()),
            n.dedup_key.clone(),
            Some(n.doc.to_string()),
        ],
    }];
    for d in &n.deliveries {
        out.push(Stmt {
            sql: format!(
                "INSERT INTO notification_deliveries \
                 (id, event_id, channel_id, state, next_attempt_ms, deadline_ms, doc) \
                 SELECT $1, $2, $3, $4, {}, {}, $7 \
                 WHERE EXISTS (SELECT 1 FROM notification_events WHERE id = $8)",
                big(5),
                big(6)
            ),
            params: vec![
                Some(delivery_id(&n.id, &d.channel_id)),
                Some(n.id.clone()),
                Some(d.channel_id.clone()),
                Some(d.state.clone()),
                d.next_attempt_ms.map(|t| t.to_string()),
                Some(d.deadline_ms.to_string()),
                Some(d.doc.to_string()),
                Some(n.id.clone()),
            ],
        });
    }
    out
}

fn decode(s: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Decode(e.to_string()))
}

impl Store {
    /// Runs statements in one transaction (e.g. a document write plus
    /// [`notification_statements`]); the last statement's row count.
    pub async fn execute_statements(&self, stmts: Vec<Stmt>) -> Result<usize, StoreError> {
        match &self.db {
            super::Db::Sqlite(db) => db.execute(stmts).await,
            super::Db::Postgres(db) => db.execute(stmts).await,
        }
    }

    async fn docs(&self, stmt: Stmt) -> Result<Vec<String>, StoreError> {
        match &self.db {
            super::Db::Sqlite(db) => db.query_docs(stmt).await,
            super::Db::Postgres(db) => db.query_docs(stmt).await,
        }
    }

    /// Records an event with its deliveries in one transaction; whether it was new (an event
    /// whose `dedup_key` is taken is not recorded again).
    pub async fn record_notification(&self, n: &NewNotification) -> Result<bool, StoreError> {
        self.execute_statements(notification_statements(n)).await?;
        let found = self
            .docs(Stmt {
                sql: "SELECT id FROM notification_events WHERE id = $1".into(),
                params: vec![Some(n.id.clone())],
            })
            .await?;
        Ok(!found.is_empty())
    }

    /// Whether an event with this dedup key exists.
    pub async fn notification_deduped(&self, key: &str) -> Result<bool, StoreError> {
        Ok(!self
            .docs(Stmt {
                sql: "SELECT id FROM notification_events WHERE dedup_key = $1".into(),
                params: vec![Some(key.into())],
            })
            .await?
            .is_empty())
    }

    /// Records the outcomes of finished attempts and claims more due deliveries, in ONE
    /// transaction (a worker's group commit: whatever finished while the previous one committed),
    /// then reads what it claimed — each delivery with its event's and its channel's documents —
    /// in one query. With nothing to record, a read first checks that anything is due, so an
    /// idle outbox costs no write transaction.
    ///
    /// An outcome is recorded only while its lease still holds the row (a resend or, after the
    /// lease ran out, another worker may have taken it over). The claim takes up to
    /// `claim.limit` deliveries due at `claim.now_ms` (billing's clock) — pending, resending, or
    /// sending under a lease that ended before `claim.wall_ms` (its worker died) — for
    /// `claim.lease_ms` of wall-clock time, at most `claim.per_channel` in flight per channel
    /// (counting those sending under a live lease on any replica, once this transaction's own
    /// outcomes freed theirs): a receiver that hangs holds that many deliveries, never every
    /// worker slot, so other channels' deliveries go on.
    pub async fn settle_and_claim(
        &self,
        outcomes: &[Outcome],
        claim: &ClaimRequest,
    ) -> Result<Vec<Claimed>, StoreError> {
        if outcomes.is_empty() {
            if claim.limit == 0 {
                return Ok(Vec::new());
            }
            let due = self
                .docs(Stmt {
                    sql: format!(
                        "SELECT id FROM notification_deliveries \
                         WHERE (state IN ('PENDING', 'RESENDING') AND next_attempt_ms <= {}) \
                            OR (state = 'SENDING' AND lease_until_ms < {}) LIMIT 1",
                        big(1),
                        big(2)
                    ),
                    params: vec![
                        Some(claim.now_ms.to_string()),
                        Some(claim.wall_ms.to_string()),
                    ],
                })
                .await?;
            if due.is_empty() {
                return Ok(Vec::new());
            }
        }
        let mut stmts: Vec<Stmt> = outcomes_statement(outcomes).into_iter().collect();
        let lease = uuid::Uuid::new_v4().simple().to_string();
        if claim.limit > 0 {
            stmts.push(self.claim_statement(claim, &lease));
        }
        let last = self.execute_statements(stmts).await?;
        if claim.limit == 0 || last == 0 {
            return Ok(Vec::new());
        }
        self.claimed(&lease).await
    }

    /// The claim: one UPDATE over a bounded set of candidates, never the whole backlog. The
    /// channels with queued deliveries are found by a skip scan of the queue index (one index
    /// probe per channel); of each, at most `per_channel` due deliveries in order (a range of
    /// that index); with them, every delivery being sent (a few per channel). Over those, per
    /// channel, how many are in flight under a live lease (`busy`) and each due one's rank; the
    /// ones that fit under the cap, oldest first. The top `per_channel` queued ones plus every
    /// lease that ran out are all a channel's due deliveries could rank within the cap, so the
    /// choice is the same as ranking every open delivery. The outer condition is checked again
    /// on each row as it is updated, so two replicas claiming at once never both take one
    /// (PostgreSQL re-reads a row changed meanwhile). The status document says SENDING from the
    /// claim on.
    fn claim_statement(&self, claim: &ClaimRequest, lease: &str) -> Stmt {
        let is_due = |now: &str, wall: &str| {
            format!(
                "((state IN ('PENDING', 'RESENDING') AND next_attempt_ms <= {now}) \
                  OR (state = 'SENDING' AND lease_until_ms < {wall}))"
            )
        };
        let per_channel = claim.per_channel;
        let now = big(4);
        let queued_of = |columns: &str, channel: &str| {
            format!(
                "SELECT {columns} FROM notification_deliveries x WHERE x.channel_id = {channel} \
                   AND x.state IN ('PENDING', 'RESENDING') AND x.next_attempt_ms <= {now} \
                 ORDER BY x.next_attempt_ms, x.id LIMIT {per_channel}"
            )
        };
        // SQLite has no LATERAL: there each channel's rows are looked up by id from a correlated
        // `IN` (a primary-key probe per id); PostgreSQL would run that `IN` per row of the table.
        let (sending, queued) = if self.is_exclusive() {
            (
                "json_set(doc, '$.state', 'SENDING', '$.updatedAt', $3)",
                format!(
                    "SELECT q.id, q.channel_id, q.state, q.next_attempt_ms, q.lease_until_ms \
                     FROM channels JOIN notification_deliveries q ON q.id IN ({})",
                    queued_of("x.id", "channels.c")
                ),
            )
        } else {
            (
                "jsonb_set(jsonb_set(doc::jsonb, '{state}', '\"SENDING\"'), '{updatedAt}', \
                 to_jsonb(CAST($3 AS TEXT)))::text",
                format!(
                    "SELECT q.* FROM channels CROSS JOIN LATERAL ({}) q",
                    queued_of(
                        "x.id, x.channel_id, x.state, x.next_attempt_ms, x.lease_until_ms",
                        "channels.c"
                    )
                ),
            )
        };
        let updated_at = chrono::DateTime::from_timestamp_millis(claim.now_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        let first_channel = |after: &str| {
            format!(
                "(SELECT channel_id FROM notification_deliveries \
                  WHERE state IN ('PENDING', 'RESENDING'){after} ORDER BY channel_id LIMIT 1)"
            )
        };
        Stmt {
            sql: format!(
                "UPDATE notification_deliveries SET state = 'SENDING', lease_token = $1, \
                 lease_until_ms = {lease_until}, doc = {sending} WHERE id IN (\
                   WITH RECURSIVE channels(c) AS (\
                     SELECT {first} \
                     UNION ALL SELECT {next} FROM channels WHERE c IS NOT NULL), \
                   open AS ({queued} \
                     UNION ALL \
                     SELECT id, channel_id, state, next_attempt_ms, lease_until_ms \
                     FROM notification_deliveries WHERE state = 'SENDING') \
                   SELECT id FROM (\
                     SELECT id, next_attempt_ms, {due_now} AS due, \
                       SUM(CASE WHEN state = 'SENDING' AND lease_until_ms >= {wall} \
                                THEN 1 ELSE 0 END) OVER (PARTITION BY channel_id) AS busy, \
                       ROW_NUMBER() OVER (PARTITION BY channel_id, {due_now} \
                                          ORDER BY next_attempt_ms, id) AS nth \
                     FROM open) candidates \
                   WHERE due AND busy + nth <= {per_channel} \
                   ORDER BY next_attempt_ms, id LIMIT {limit}) \
                 AND {due_now}",
                lease_until = big(2),
                first = first_channel(""),
                next = first_channel(" AND channel_id > c"),
                wall = big(5),
                due_now = is_due(&now, &big(5)),
                limit = claim.limit,
            ),
            // Numbered in the order they first appear: SQLite binds `$n` by appearance ($4, in
            // the queued ranges, before $5).
            params: vec![
                Some(lease.to_owned()),
                Some((claim.wall_ms + claim.lease_ms).to_string()),
                Some(updated_at),
                Some(claim.now_ms.to_string()),
                Some(claim.wall_ms.to_string()),
            ],
        }
    }

    /// The deliveries `lease` holds, each with its event's and channel's documents: one query
    /// (through the index of deliveries being sent, whatever the backlog).
    async fn claimed(&self, lease: &str) -> Result<Vec<Claimed>, StoreError> {
        let row = if self.is_exclusive() {
            "json_object('id', d.id, 'deadline', d.deadline_ms, 'status', json(d.doc), \
             'event', json(e.doc), 'channel', json(c.doc))"
        } else {
            "json_build_object('id', d.id, 'deadline', d.deadline_ms, 'status', d.doc::json, \
             'event', e.doc::json, 'channel', c.doc::json)::text"
        };
        let rows = self
            .docs(Stmt {
                sql: format!(
                    "SELECT {row} FROM notification_deliveries d \
                     JOIN notification_events e ON e.id = d.event_id \
                     LEFT JOIN notification_channels c ON c.id = d.channel_id \
                     WHERE d.lease_token = $1 AND d.state = 'SENDING' ORDER BY d.id"
                ),
                params: vec![Some(lease.to_owned())],
            })
            .await?;
        rows.iter()
            .map(|r| {
                let mut v = decode(r)?;
                Ok(Claimed {
                    id: v["id"].as_str().unwrap_or_default().to_owned(),
                    event: v["event"].take(),
                    status: v["status"].take(),
                    channel: Some(v["channel"].take()).filter(|c| !c.is_null()),
                    deadline_ms: v["deadline"].as_i64().unwrap_or(0),
                    lease: lease.to_owned(),
                })
            })
            .collect()
    }

    /// Puts a delivery back in the queue as `RESENDING`, due at `now_ms` and given up at
    /// `deadline_ms`, whatever its state (a sending worker's outcome is then dropped).
    pub async fn resend_delivery(
        &self,
        id: &str,
        now_ms: i64,
        deadline_ms: i64,
        doc: &Value,
    ) -> Result<bool, StoreError> {
        let n = self
            .execute_statements(vec![Stmt {
                sql: format!(
                    "UPDATE notification_deliveries SET state = 'RESENDING', next_attempt_ms = {}, \
                     deadline_ms = {}, doc = $3, lease_token = NULL, lease_until_ms = NULL \
                     WHERE id = $4",
                    big(1),
                    big(2)
                ),
                params: vec![
                    Some(now_ms.to_string()),
                    Some(deadline_ms.to_string()),
                    Some(doc.to_string()),
                    Some(id.into()),
                ],
            }])
            .await?;
        Ok(n == 1)
    }

    /// Deliveries left `SENDING` by a process that died, back to `PENDING` — only when this
    /// process is the database's only user (SQLite); on PostgreSQL their leases run out instead.
    pub async fn release_orphaned_deliveries(&self) -> Result<usize, StoreError> {
        if !self.is_exclusive() {
            return Ok(0);
        }
        self.execute_statements(vec![Stmt {
            sql: "UPDATE notification_deliveries SET state = 'PENDING', lease_token = NULL, \
                  lease_until_ms = NULL, next_attempt_ms = COALESCE(next_attempt_ms, 0) \
                  WHERE state = 'SENDING'"
                .into(),
            params: vec![],
        }])
        .await
    }

    /// One event's document (without its delivery statuses).
    pub async fn notification_event_doc(&self, id: &str) -> Result<Option<Value>, StoreError> {
        self.docs(Stmt {
            sql: "SELECT doc FROM notification_events WHERE id = $1".into(),
            params: vec![Some(id.into())],
        })
        .await?
        .first()
        .map(|d| decode(d))
        .transpose()
    }

    /// Event documents created in `[from_ms, to_ms]`, newest first.
    pub async fn notification_event_docs(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<Value>, StoreError> {
        self.docs(Stmt {
            sql: format!(
                "SELECT doc FROM notification_events WHERE created_ms >= {} AND created_ms <= {} \
                 ORDER BY created_ms DESC, id DESC",
                big(1),
                big(2)
            ),
            params: vec![Some(from_ms.to_string()), Some(to_ms.to_string())],
        })
        .await?
        .iter()
        .map(|d| decode(d))
        .collect()
    }

    /// An event's delivery status documents, by channel id.
    pub async fn notification_deliveries(&self, event_id: &str) -> Result<Vec<Value>, StoreError> {
        self.docs(Stmt {
            sql: "SELECT doc FROM notification_deliveries WHERE event_id = $1 ORDER BY channel_id"
                .into(),
            params: vec![Some(event_id.into())],
        })
        .await?
        .iter()
        .map(|d| decode(d))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use serde_json::json;

    use super::*;
    use crate::store::Location;

    const DAY: i64 = 86_400_000;

    /// `n` events for `channel`, each with one delivery due at 0.
    async fn backlog(store: &Store, channel: &str, n: usize) {
        backlog_due(store, channel, n, 0).await;
    }

    /// `n` events for `channel`, each with one delivery due at `due_ms`.
    async fn backlog_due(store: &Store, channel: &str, n: usize, due_ms: i64) {
        let doc = json!({"id": channel, "type": "WEBHOOK", "name": channel,
                         "url": "http://127.0.0.1:9/", "signingSecret": "x"});
        store
            .put_entity(crate::notification::CHANNEL, channel, &doc)
            .await
            .unwrap();
        for i in 0..n {
            let id = format!("{channel}-{i:03}");
            let recorded = store
                .record_notification(&NewNotification {
                    id: id.clone(),
                    kind: "test".into(),
                    rule_id: "r".into(),
                    created_ms: 0,
                    dedup_key: None,
                    doc: json!({"id": id, "payload": {"n": i}}),
                    deliveries: vec![NewDelivery {
                        channel_id: channel.into(),
                        state: "PENDING".into(),
                        next_attempt_ms: Some(due_ms),
                        deadline_ms: DAY,
                        doc: json!({"channel": {"id": channel}, "state": "PENDING"}),
                    }],
                })
                .await
                .unwrap();
            assert!(recorded);
        }
    }

    fn request(limit: usize) -> ClaimRequest {
        ClaimRequest {
            now_ms: 1_000,
            wall_ms: 1_000,
            lease_ms: 30_000,
            limit,
            per_channel: 8,
        }
    }

    fn per_channel(claimed: &[Claimed]) -> (usize, usize) {
        let a = claimed.iter().filter(|c| c.id.ends_with("/a")).count();
        (a, claimed.len() - a)
    }

    fn done(c: &Claimed, state: &'static str, next_attempt_ms: Option<i64>) -> Outcome {
        let mut doc = c.status.clone();
        doc["state"] = json!(state);
        Outcome {
            id: c.id.clone(),
            lease: c.lease.clone(),
            state,
            next_attempt_ms,
            doc,
        }
    }

    async fn state(store: &Store, id: &str) -> String {
        let event = id.split_once('/').unwrap().0;
        store.notification_deliveries(event).await.unwrap()[0]["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// One claim takes every free slot it may (with each delivery's event and channel read in
    /// the same query), at most 8 per channel; outcomes recorded in the claim's transaction free
    /// their slots for it; an outcome under a lease that no longer holds the row is dropped.
    async fn batches_and_caps(store: &Store) {
        backlog(store, "a", 20).await;
        backlog(store, "b", 3).await;
        let first = store.settle_and_claim(&[], &request(32)).await.unwrap();
        assert_eq!(per_channel(&first), (8, 3));
        for c in &first {
            let event = c.id.split_once('/').unwrap().0;
            assert_eq!(c.event["id"], event, "{c:?}");
            assert_eq!(c.status["state"], "SENDING", "{c:?}");
            assert_eq!(
                &c.channel.as_ref().unwrap()["id"],
                c.id.split_once('/').unwrap().1
            );
            assert_eq!(c.deadline_ms, DAY);
        }
        // Channel a is at its cap, b has nothing left.
        assert!(
            store
                .settle_and_claim(&[], &request(32))
                .await
                .unwrap()
                .is_empty()
        );
        // Three of a's succeed, one of b's is retried later, one of b's was taken over (stale
        // lease): the same transaction claims exactly three more of a's.
        let a: Vec<&Claimed> = first.iter().filter(|c| c.id.ends_with("/a")).collect();
        let b: Vec<&Claimed> = first.iter().filter(|c| c.id.ends_with("/b")).collect();
        let mut stale = done(b[1], "SUCCESS", None);
        stale.lease = "someone else".into();
        let outcomes = vec![
            done(a[0], "SUCCESS", None),
            done(a[1], "SUCCESS", None),
            done(a[2], "FAILED", None),
            done(b[0], "PENDING", Some(5_000)),
            stale,
        ];
        let second = store
            .settle_and_claim(&outcomes, &request(32))
            .await
            .unwrap();
        assert_eq!(per_channel(&second), (3, 0), "{second:?}");
        let ids: HashSet<&str> = first.iter().map(|c| c.id.as_str()).collect();
        assert!(second.iter().all(|c| !ids.contains(c.id.as_str())));
        assert_eq!(state(store, &a[0].id).await, "SUCCESS");
        assert_eq!(state(store, &a[2].id).await, "FAILED");
        assert_eq!(state(store, &b[0].id).await, "PENDING");
        assert_eq!(state(store, &b[1].id).await, "SENDING");
        // Outcomes only (no free slot): recorded, nothing claimed.
        let third = store
            .settle_and_claim(&[done(&second[0], "SUCCESS", None)], &request(0))
            .await
            .unwrap();
        assert!(third.is_empty());
        assert_eq!(state(store, &second[0].id).await, "SUCCESS");
        // The retry comes due at its time (and b's stale one when its lease ends).
        let later = ClaimRequest {
            now_ms: 5_000,
            ..request(32)
        };
        let due = store.settle_and_claim(&[], &later).await.unwrap();
        assert_eq!(per_channel(&due), (1, 1), "{due:?}");
        let expired = ClaimRequest {
            now_ms: 5_000,
            wall_ms: 40_000,
            ..request(32)
        };
        let taken_over = store.settle_and_claim(&[], &expired).await.unwrap();
        assert!(taken_over.iter().any(|c| c.id == b[1].id), "{taken_over:?}");
    }

    /// The claim looks at each channel's first due deliveries only: a channel whose queue is all
    /// scheduled later (retries) neither takes a slot nor hides the channels after it; within a
    /// channel the oldest go first; a lease that ran out is taken over even when its delivery's
    /// due time is later than billing's now (the clock went back), as when every open delivery
    /// was ranked.
    async fn ranks_only_what_is_due(store: &Store) {
        backlog_due(store, "a", 12, 0).await;
        backlog_due(store, "b", 30, 9_000).await;
        backlog_due(store, "c", 3, 500).await;
        let first = store.settle_and_claim(&[], &request(32)).await.unwrap();
        let of = |claimed: &[Claimed], ch: &str| -> Vec<String> {
            let mut ids: Vec<String> = claimed
                .iter()
                .filter(|c| c.id.ends_with(&format!("/{ch}")))
                .map(|c| c.id.clone())
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(of(&first, "b"), Vec::<String>::new(), "{first:?}");
        assert_eq!(of(&first, "c").len(), 3, "{first:?}");
        let a: Vec<String> = (0..8).map(|i| format!("a-{i:03}/a")).collect();
        assert_eq!(of(&first, "a"), a, "the oldest first");
        assert_eq!(first.len(), 11);
        // b comes due: 8 of it (a is still at its cap).
        let later = ClaimRequest {
            now_ms: 9_000,
            ..request(32)
        };
        let second = store.settle_and_claim(&[], &later).await.unwrap();
        assert_eq!(second.len(), 8, "{second:?}");
        assert_eq!(of(&second, "b").len(), 8, "{second:?}");
        // billing's clock back at 1,000, every lease over: b's 8 (due at 9,000) are taken over,
        // with a's 8 expired ones; b's other 22 are not due.
        let expired = ClaimRequest {
            wall_ms: 40_000,
            ..request(32)
        };
        let third = store.settle_and_claim(&[], &expired).await.unwrap();
        assert_eq!(of(&third, "b"), of(&second, "b"), "{third:?}");
        assert_eq!(of(&third, "a"), a, "{third:?}");
        assert_eq!(third.len(), 16 + 3, "c's expired too: {third:?}");
    }

    #[tokio::test]
    async fn ranks_only_what_is_due_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Location::Sqlite(dir.path().to_owned()))
            .await
            .unwrap();
        ranks_only_what_is_due(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranks_only_what_is_due_on_postgres() {
        let url = tollgate_e2e::postgres::Cluster::shared()
            .unwrap()
            .database()
            .unwrap();
        let store = Store::open(&Location::Postgres(url)).await.unwrap();
        ranks_only_what_is_due(&store).await;
    }

    #[tokio::test]
    async fn claims_batch_and_cap_per_channel_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Location::Sqlite(dir.path().to_owned()))
            .await
            .unwrap();
        batches_and_caps(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_batch_and_cap_per_channel_on_postgres() {
        let url = tollgate_e2e::postgres::Cluster::shared()
            .unwrap()
            .database()
            .unwrap();
        let store = Store::open(&Location::Postgres(url)).await.unwrap();
        batches_and_caps(&store).await;
    }

    /// Two replicas claiming at once from one PostgreSQL database take disjoint deliveries and,
    /// together, never more than the cap for one channel.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_claim_disjoint_deliveries_within_the_cap() {
        let url = tollgate_e2e::postgres::Cluster::shared()
            .unwrap()
            .database()
            .unwrap();
        let one = Store::open(&Location::Postgres(url.clone())).await.unwrap();
        let two = Store::open(&Location::Postgres(url)).await.unwrap();
        backlog(&one, "a", 40).await;
        let mut held: Vec<Claimed> = Vec::new();
        let mut seen = HashSet::new();
        for _ in 0..10 {
            let (r1, r2) = (request(32), request(32));
            let (x, y) = tokio::join!(
                one.settle_and_claim(&[], &r1),
                two.settle_and_claim(&[], &r2)
            );
            let (x, y) = (x.unwrap(), y.unwrap());
            for c in x.iter().chain(&y) {
                assert!(seen.insert(c.id.clone()), "{} claimed twice", c.id);
            }
            held.extend(x.into_iter().chain(y));
            assert!(held.len() <= 8, "{} in flight to one channel", held.len());
            // Both record what they held and claim again at once.
            let outcomes: Vec<Outcome> =
                held.drain(..).map(|c| done(&c, "SUCCESS", None)).collect();
            let (half_one, half_two) = outcomes.split_at(outcomes.len() / 2);
            let (x, y) = tokio::join!(
                one.settle_and_claim(half_one, &r1),
                two.settle_and_claim(half_two, &r2)
            );
            let (x, y) = (x.unwrap(), y.unwrap());
            for c in x.iter().chain(&y) {
                assert!(seen.insert(c.id.clone()), "{} claimed twice", c.id);
            }
            held.extend(x.into_iter().chain(y));
            assert!(held.len() <= 8, "{} in flight to one channel", held.len());
        }
        assert_eq!(seen.len(), 40, "every delivery claimed once");
    }
}
