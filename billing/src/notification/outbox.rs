//! Recording events: every producer (the threshold evaluator, usage-period resets, a rule's test
//! send, and invoices) turns "this happened" into a [`NewNotification`] — the event with the rule
//! as it stands and one delivery row per channel — and writes it through the store in one
//! transaction, so an event is never half-recorded, and one with a dedup key is recorded once.
//!
//! Invoices: the invoice state machine (`crate::invoice::lifecycle::commit`) runs
//! [`invoice_event_statements`] in the transaction that stores the invoice change, so the event
//! commits with it; [`record_invoice_event`] records one on its own.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::model::{Channel, Rule};
use super::{CHANNEL, RULE, kinds, payload};
use crate::store::documents::Stmt;
use crate::store::notifications::{NewDelivery, NewNotification, notification_statements};
use crate::store::{Store, StoreError};

/// How long a delivery is retried before it is FAILED (OpenMeter: PENDING fails after 3 h).
pub const DELIVERY_WINDOW: Duration = Duration::hours(3);

/// The initial `deliveryStatus` of a delivery.
pub fn status(
    channel_id: &str,
    state: &str,
    reason: &str,
    now: DateTime<Utc>,
    next: Option<DateTime<Utc>>,
) -> Value {
    let mut s = json!({
        "state": state,
        "reason": reason,
        "updatedAt": now,
        "channel": {"id": channel_id, "type": "WEBHOOK"},
        "annotations": {},
        "attempts": [],
    });
    if let Some(n) = next {
        s["nextAttempt"] = json!(n);
    }
    s
}

/// The event `rule` makes now with `data`, delivered to each of its channels as they stand in
/// `channels` (a disabled or deleted channel gets a FAILED delivery that says so).
pub fn new_event(
    rule: &Rule,
    channels: &[Channel],
    now: DateTime<Utc>,
    data: Value,
    dedup_key: Option<String>,
    annotations: Value,
) -> NewNotification {
    let id = crate::api::new_id();
    let payload = payload::payload(&id, &rule.kind, now, data);
    let deliveries = rule
        .channels
        .iter()
        .map(|meta| {
            let channel = channels.iter().find(|c| c.id == meta.id);
            let refusal = match channel {
                None => Some(format!("channel {} does not exist", meta.id)),
                Some(c) if c.deleted_at.is_some() => {
                    Some(format!("channel {} was deleted", meta.id))
                }
                Some(c) if c.disabled => Some(format!(
                    "channel {} ({}) is disabled: not sent",
                    meta.id, c.name
                )),
                Some(_) => None,
            };
            let (state, next) = match &refusal {
                Some(_) => ("FAILED", None),
                None => ("PENDING", Some(now)),
            };
            NewDelivery {
                channel_id: meta.id.clone(),
                state: state.into(),
                next_attempt_ms: next.map(|t| t.timestamp_millis()),
                deadline_ms: (now + DELIVERY_WINDOW).timestamp_millis(),
                doc: status(&meta.id, state, refusal.as_deref().unwrap_or(""), now, next),
            }
        })
        .collect();
    let doc = json!({
        "id": id,
        "type": rule.kind,
        "createdAt": now,
        "rule": rule,
        "payload": payload,
        "annotations": annotations,
    });
    NewNotification {
        id,
        kind: rule.kind.clone(),
        rule_id: rule.id.clone(),
        created_ms: now.timestamp_millis(),
        dedup_key,
        doc,
        deliveries,
    }
}

/// Live rules of a type, and every channel.
pub async fn rules_and_channels(
    store: &Store,
    kind: &str,
) -> Result<(Vec<Rule>, Vec<Channel>), StoreError> {
    let rules: Vec<Rule> = store
        .list_entities::<Rule>(RULE)
        .await?
        .into_iter()
        .filter(|r| r.live() && r.kind == kind)
        .collect();
    let channels = if rules.is_empty() {
        Vec::new()
    } else {
        store.list_entities::<Channel>(CHANNEL).await?
    };
    Ok((rules, channels))
}

/// The statements that record `kind` (`invoice.created` or `invoice.updated`) for `invoice`
/// (its API document, snapshotted into the payload) for every live rule of that type, given
/// `rules_and_channels(store, kind)`. Run them in the transaction that writes the invoice change.
/// Gathering invoices notify nothing (OpenMeter). `invoice.created` is recorded once per rule
/// and invoice even if called again; each `invoice.updated` call is a new event.
pub fn invoice_event_statements(
    rules: &[Rule],
    channels: &[Channel],
    kind: &str,
    invoice: &Value,
    now: DateTime<Utc>,
) -> Vec<Stmt> {
    if invoice["status"].as_str() == Some("gathering")
        || !matches!(kind, kinds::INVOICE_CREATED | kinds::INVOICE_UPDATED)
    {
        return Vec::new();
    }
    let invoice_id = invoice["id"].as_str().unwrap_or_default();
    rules
        .iter()
        .filter(|r| r.live() && r.kind == kind)
        .flat_map(|r| {
            let dedup =
                (kind == kinds::INVOICE_CREATED).then(|| format!("{kind}:{}:{invoice_id}", r.id));
            notification_statements(&new_event(
                r,
                channels,
                now,
                invoice.clone(),
                dedup,
                json!({}),
            ))
        })
        .collect()
}

/// Records `kind` for `invoice` now (see [`invoice_event_statements`]); how many events were
/// recorded. Call it with billing's time (`api.now()`).
pub async fn record_invoice_event(
    store: &Store,
    kind: &str,
    invoice: &Value,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let (rules, channels) = rules_and_channels(store, kind).await?;
    let stmts = invoice_event_statements(&rules, &channels, kind, invoice, now);
    if stmts.is_empty() {
        return Ok(0);
    }
    store.execute_statements(stmts).await?;
    Ok(rules.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::Location;

    #[tokio::test]
    async fn invoice_events_once_per_creation_none_for_gathering() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Location::Sqlite(dir.path().to_owned()))
            .await
            .unwrap();
        let now: DateTime<Utc> = "2026-11-26T00:00:00Z".parse().unwrap();
        let channel = json!({"id": "ch", "type": "WEBHOOK", "name": "c", "url": "http://127.0.0.1:9/",
                             "signingSecret": super::super::model::new_secret(),
                             "createdAt": now, "updatedAt": now});
        store.put_entity(CHANNEL, "ch", &channel).await.unwrap();
        for (id, kind) in [
            ("r1", kinds::INVOICE_CREATED),
            ("r2", kinds::INVOICE_UPDATED),
        ] {
            let rule = json!({"id": id, "type": kind, "name": id, "channels": [{"id": "ch", "type": "WEBHOOK"}],
                              "createdAt": now, "updatedAt": now});
            store.put_entity(RULE, id, &rule).await.unwrap();
        }
        let invoice = json!({"id": "inv-1", "status": "issued", "currency": "USD"});
        let count = async || {
            store
                .notification_event_docs(i64::MIN, i64::MAX)
                .await
                .unwrap()
        };
        // Created twice (a retried state-machine step): one event.
        for _ in 0..2 {
            record_invoice_event(&store, kinds::INVOICE_CREATED, &invoice, now)
                .await
                .unwrap();
        }
        assert_eq!(count().await.len(), 1);
        // Each update is an event; a gathering invoice notifies nothing.
        record_invoice_event(&store, kinds::INVOICE_UPDATED, &invoice, now)
            .await
            .unwrap();
        let gathering = json!({"id": "inv-2", "status": "gathering"});
        record_invoice_event(&store, kinds::INVOICE_UPDATED, &gathering, now)
            .await
            .unwrap();
        let events = count().await;
        assert_eq!(events.len(), 2);
        let updated = events
            .iter()
            .find(|e| e["type"] == kinds::INVOICE_UPDATED)
            .unwrap();
        assert_eq!(updated["payload"]["data"], invoice);
        assert_eq!(updated["rule"]["id"], "r2");
        let deliveries = store
            .notification_deliveries(updated["id"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0]["state"], "PENDING");
    }
}
