//! The notification outbox's storage, the same SQL on SQLite and PostgreSQL (text parameters cast
//! where a column is BIGINT): events with their delivery rows written in one transaction (an
//! event's `dedup_key` is unique, so an evaluator that runs twice, or on two replicas, records it
//! once), and the delivery lease: a worker claims due rows by setting them `SENDING` with its token
//! and a lease end, by an update whose condition is checked again on each row as it is written (on
//! PostgreSQL a row another replica changed meanwhile is re-read), so replicas claim disjoint rows
//! — and only the holder of a row's token can record the outcome.

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
    /// When to give up.
    pub deadline_ms: i64,
    /// The lease token the outcome must be recorded with.
    pub lease: String,
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

    /// Claims up to `limit` deliveries due at `now_ms` (billing's clock) — pending, resending, or
    /// sending under a lease that ended before `wall_ms` (its worker died) — for `lease_ms` of
    /// wall-clock time, at most `per_channel` in flight per channel (counting those already
    /// sending under a live lease, on any replica): a receiver that hangs holds that many
    /// deliveries, never every worker slot, so other channels' deliveries go on.
    pub async fn claim_deliveries(
        &self,
        now_ms: i64,
        wall_ms: i64,
        lease_ms: i64,
        limit: usize,
        per_channel: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        // A read first: an idle outbox costs no write transaction (nor the writer's time).
        let due = self
            .docs(Stmt {
                sql: format!(
                    "SELECT id FROM notification_deliveries \
                     WHERE (state IN ('PENDING', 'RESENDING') AND next_attempt_ms <= {}) \
                        OR (state = 'SENDING' AND lease_until_ms < {}) LIMIT 1",
                    big(1),
                    big(2)
                ),
                params: vec![Some(now_ms.to_string()), Some(wall_ms.to_string())],
            })
            .await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let lease = uuid::Uuid::new_v4().simple().to_string();
        // Candidates: every open delivery with, per channel, how many are in flight (`busy`) and
        // its rank among the channel's due ones; those that fit under the cap, oldest first.
        // The outer condition is checked again on each row as it is updated, so two replicas
        // claiming at once never both take one (PostgreSQL re-reads a row changed meanwhile).
        let is_due = |now: &str, wall: &str| {
            format!(
                "((state IN ('PENDING', 'RESENDING') AND next_attempt_ms <= {now}) \
                  OR (state = 'SENDING' AND lease_until_ms < {wall}))"
            )
        };
        // The status document says SENDING from the claim on (one write per claim, not one more
        // per delivery).
        let sending = if self.is_exclusive() {
            "json_set(doc, '$.state', 'SENDING', '$.updatedAt', $3)"
        } else {
            "jsonb_set(jsonb_set(doc::jsonb, '{state}', '\"SENDING\"'), '{updatedAt}', \
             to_jsonb(CAST($3 AS TEXT)))::text"
        };
        let updated_at = chrono::DateTime::from_timestamp_millis(now_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        let claimed = self
            .execute_statements(vec![Stmt {
                sql: format!(
                    "UPDATE notification_deliveries SET state = 'SENDING', lease_token = $1, \
                     lease_until_ms = {lease_until}, doc = {sending} WHERE id IN (\
                       SELECT id FROM (\
                         SELECT id, next_attempt_ms, {due_now} AS due, \
                           SUM(CASE WHEN state = 'SENDING' AND lease_until_ms >= {wall} \
                                    THEN 1 ELSE 0 END) OVER (PARTITION BY channel_id) AS busy, \
                           ROW_NUMBER() OVER (PARTITION BY channel_id, {due_now} \
                                              ORDER BY next_attempt_ms, id) AS nth \
                         FROM notification_deliveries \
                         WHERE state IN ('PENDING', 'RESENDING', 'SENDING')) candidates \
                       WHERE due AND busy + nth <= {per_channel} \
                       ORDER BY next_attempt_ms, id LIMIT {limit}) \
                     AND {due_now}",
                    lease_until = big(2),
                    wall = big(5),
                    due_now = is_due(&big(4), &big(5)),
                ),
                // Numbered in the order they first appear: SQLite binds `$n` by appearance.
                params: vec![
                    Some(lease.clone()),
                    Some((wall_ms + lease_ms).to_string()),
                    Some(updated_at),
                    Some(now_ms.to_string()),
                    Some(wall_ms.to_string()),
                ],
            }])
            .await?;
        if claimed == 0 {
            return Ok(Vec::new());
        }
        let ids = self
            .docs(Stmt {
                sql: "SELECT id FROM notification_deliveries WHERE lease_token = $1 ORDER BY id"
                    .into(),
                params: vec![Some(lease.clone())],
            })
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some((event_id, _)) = id.split_once('/') else {
                continue;
            };
            let Some(event) = self.notification_event_doc(event_id).await? else {
                continue;
            };
            let row = |col: &str| Stmt {
                sql: format!("SELECT {col} FROM notification_deliveries WHERE id = $1"),
                params: vec![Some(id.clone())],
            };
            let status = self.docs(row("doc")).await?;
            let deadline = self.docs(row("CAST(deadline_ms AS TEXT)")).await?;
            let (Some(status), Some(deadline)) = (status.first(), deadline.first()) else {
                continue;
            };
            out.push(Claimed {
                id,
                event,
                status: decode(status)?,
                deadline_ms: deadline.parse().unwrap_or(0),
                lease: lease.clone(),
            });
        }
        Ok(out)
    }

    /// Records a claimed delivery's state (and status document) if `lease` still holds it —
    /// releasing the lease unless `keep_lease` (the send is still under way); whether it did (a
    /// resend or another worker may have taken it over).
    pub async fn update_delivery(
        &self,
        id: &str,
        lease: &str,
        state: &str,
        next_attempt_ms: Option<i64>,
        doc: &Value,
        keep_lease: bool,
    ) -> Result<bool, StoreError> {
        let release = if keep_lease {
            ""
        } else {
            ", lease_token = NULL, lease_until_ms = NULL"
        };
        let n = self
            .execute_statements(vec![Stmt {
                sql: format!(
                    "UPDATE notification_deliveries SET state = $1, next_attempt_ms = {}, \
                     doc = $3{release} WHERE id = $4 AND lease_token = $5",
                    big(2)
                ),
                params: vec![
                    Some(state.into()),
                    next_attempt_ms.map(|t| t.to_string()),
                    Some(doc.to_string()),
                    Some(id.into()),
                    Some(lease.into()),
                ],
            }])
            .await?;
        Ok(n == 1)
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
