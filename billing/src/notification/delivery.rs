//! The delivery worker: claims due deliveries from the outbox, POSTs each event's payload to its
//! channel signed per Standard Webhooks, and records the attempt.
//!
//! * **States:** `PENDING` → `SENDING` (claimed under a lease) → `SUCCESS` on a 2xx, else back to
//!   `PENDING` with `nextAttempt` after a backoff ([`BACKOFF`]), or `FAILED` once the next try
//!   would fall after the deadline ([`super::outbox::DELIVERY_WINDOW`] after the first try) or
//!   the channel is disabled or gone. Each attempt keeps the response's status, body (first
//!   [`BODY_KEPT`] bytes), duration and URL; `reason` says why it is in its state.
//! * **Time:** `nextAttempt`, deadlines and attempt timestamps are on billing's clock, so a
//!   simulated clock drives retries. Two things use the wall clock because they are about real
//!   processes and real receivers: the lease ([`LEASE`]) and `webhook-timestamp` (receivers
//!   reject a signature whose timestamp is far from their own clock).
//! * **Crashes and replicas:** a claim is a committed row update (PostgreSQL: `FOR UPDATE SKIP
//!   LOCKED`), so two replicas never hold one delivery at once; a worker killed mid-send leaves
//!   its rows `SENDING` until the lease ends (on SQLite, the only process, at once on start) and
//!   they are sent again — with the same `webhook-id`, as Standard Webhooks allows.
//! * **Ingest is never slowed:** this runs on its own task, each request bounded by [`TIMEOUT`].
//! * **Nor is one channel by another:** up to [`IN_FLIGHT`] deliveries are sent at once, a freed
//!   slot is refilled at once, and at most [`PER_CHANNEL`] of them go to one channel, so a
//!   receiver that hangs (each request waits out [`TIMEOUT`]) slows only its own deliveries.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::model::Channel;
use super::{CHANNEL, signing};
use crate::clock::Clock;
use crate::store::notifications::Claimed;
use crate::store::{Store, StoreError};

/// One request's time limit (connect included).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claim holds a delivery (wall clock); well above [`TIMEOUT`].
pub const LEASE: Duration = Duration::from_secs(30);
/// Waits between attempts (billing's clock); the last repeats until the deadline.
pub const BACKOFF: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
    Duration::from_secs(3600),
];
/// Bytes of a response body kept in an attempt.
pub const BODY_KEPT: usize = 1024;
/// Deliveries in flight at once (sent concurrently): a slot freed by one that ended is filled at
/// once, not when a whole batch has ended.
pub const IN_FLIGHT: usize = 32;
/// Deliveries in flight at once to one channel (across replicas): a receiver that hangs holds
/// this many slots until its requests time out; the others keep delivering to other channels.
pub const PER_CHANNEL: usize = 8;
/// How often the worker looks for due deliveries without being woken.
const POLL: Duration = Duration::from_millis(500);

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The worker (cheap to clone: each delivery task holds one).
#[derive(Clone)]
pub struct Worker {
    store: Arc<Store>,
    clock: Arc<Clock>,
    wake: Arc<Notify>,
    http: reqwest::Client,
}

/// What one attempt came to.
struct Outcome {
    ok: bool,
    status: Option<u16>,
    body: String,
    error: Option<String>,
    duration_ms: u64,
}

impl Worker {
    /// A worker woken by `wake` (and every [`POLL`]).
    pub fn new(
        store: Arc<Store>,
        clock: Arc<Clock>,
        wake: Arc<Notify>,
    ) -> Result<Worker, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tollgate-billing/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Worker {
            store,
            clock,
            wake,
            http,
        })
    }

    /// Runs until the process ends: keeps up to [`IN_FLIGHT`] deliveries in flight, claiming
    /// more as slots free, and waits for a wake-up (or [`POLL`]) when nothing is due.
    pub async fn run(self) {
        match self.store.release_orphaned_deliveries().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deliveries = n,
                "deliveries cut off by a restart: sending again"
            ),
            Err(e) => tracing::warn!(error = %e, "releasing orphaned deliveries"),
        }
        // Each delivery is its own task: it runs while this loop waits on a claim. (Kept as
        // futures polled only by this loop, a delivery suspended mid-`pool.get()` held one of
        // PostgreSQL's pooled connections while the claim waited for one: with every slot held
        // that way the claim stalled for the pool's 5 s timeout and the deliveries' connects
        // timed out, leaving them to their 30 s lease.)
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            let free = IN_FLIGHT - in_flight.len();
            let mut claimed = 0;
            if free > 0 {
                match self.claim(free).await {
                    Ok(list) => {
                        claimed = list.len();
                        for c in list {
                            let worker = self.clone();
                            in_flight.spawn(async move { worker.deliver(c).await });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "notification delivery: claiming failed")
                    }
                }
            }
            if claimed > 0 && in_flight.len() < IN_FLIGHT {
                continue; // more may be due
            }
            tokio::select! {
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Claims up to `n` due deliveries.
    async fn claim(&self, n: usize) -> Result<Vec<Claimed>, StoreError> {
        let now = self.clock.now().await?;
        self.store
            .claim_deliveries(
                now.timestamp_millis(),
                wall_ms(),
                LEASE.as_millis() as i64,
                n,
                PER_CHANNEL,
            )
            .await
    }

    async fn deliver(&self, c: Claimed) {
        if let Err(e) = self.try_deliver(&c).await {
            // The lease runs out and the delivery is claimed again.
            tracing::warn!(delivery = %c.id, error = %e, "notification delivery: recording failed");
        }
    }

    async fn try_deliver(&self, c: &Claimed) -> Result<(), StoreError> {
        let mut status = c.status.clone();
        let channel_id = status["channel"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let channel = self
            .store
            .get_entity::<Channel>(CHANNEL, &channel_id)
            .await?;
        let ch = match &channel {
            None => Err(format!("channel {channel_id} does not exist")),
            Some(ch) if ch.deleted_at.is_some() => Err(format!("channel {channel_id} was deleted")),
            Some(ch) if ch.disabled => Err(format!(
                "channel {channel_id} ({}) is disabled: not sent",
                ch.name
            )),
            Some(ch) => Ok(ch),
        };
        let ch = match ch {
            Ok(ch) => ch,
            Err(reason) => {
                status["state"] = json!("FAILED");
                status["reason"] = json!(reason);
                status.as_object_mut().map(|s| s.remove("nextAttempt"));
                self.store
                    .update_delivery(&c.id, &c.lease, "FAILED", None, &status, false)
                    .await?;
                return Ok(());
            }
        };
        let outcome = self.send(ch, &c.event).await;
        let now = self.clock.now().await?;
        let mut attempt = json!({
            "state": if outcome.ok { "SUCCESS" } else { "FAILED" },
            "response": {
                "body": outcome.error.clone().unwrap_or_else(|| outcome.body.clone()),
                "durationMs": outcome.duration_ms,
                "url": ch.url,
            },
            "timestamp": now,
        });
        if let Some(s) = outcome.status {
            attempt["response"]["statusCode"] = json!(s);
        }
        let attempts = status["attempts"].as_array().map_or(0, Vec::len) + 1;
        if let Some(list) = status["attempts"].as_array_mut() {
            list.push(attempt);
        } else {
            status["attempts"] = json!([attempt]);
        }
        status["updatedAt"] = json!(now);
        let what = match (outcome.status, &outcome.error) {
            (Some(s), _) => format!("HTTP {s}"),
            (None, Some(e)) => e.clone(),
            (None, None) => "no response".into(),
        };
        let (state, next) = if outcome.ok {
            ("SUCCESS", None)
        } else {
            let wait = BACKOFF[(attempts - 1).min(BACKOFF.len() - 1)];
            let next = now + chrono::Duration::from_std(wait).unwrap_or_default();
            // Retried for the delivery window from the first attempt (an event recorded at an
            // instant a simulated clock jumped over still gets its window).
            let first = status["attempts"][0]["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                .unwrap_or(now);
            let deadline = c
                .deadline_ms
                .max((first + super::outbox::DELIVERY_WINDOW).timestamp_millis());
            if next.timestamp_millis() > deadline {
                ("FAILED", None)
            } else {
                ("PENDING", Some(next))
            }
        };
        status["state"] = json!(state);
        status["reason"] = json!(match (state, next) {
            ("SUCCESS", _) => String::new(),
            (_, Some(n)) => format!("attempt {attempts} failed ({what}); retrying at {}", fmt(n)),
            _ => format!(
                "gave up after {attempts} attempt{}; last: {what}",
                if attempts == 1 { "" } else { "s" }
            ),
        });
        match next {
            Some(n) => status["nextAttempt"] = json!(n),
            None => {
                status.as_object_mut().map(|s| s.remove("nextAttempt"));
            }
        }
        self.store
            .update_delivery(
                &c.id,
                &c.lease,
                state,
                next.map(|n| n.timestamp_millis()),
                &status,
                false,
            )
            .await?;
        tracing::debug!(delivery = %c.id, state, duration_ms = outcome.duration_ms, "notification delivery attempt");
        Ok(())
    }

    async fn send(&self, ch: &Channel, event: &Value) -> Outcome {
        let body = event["payload"].to_string();
        let id = event["id"].as_str().unwrap_or_default();
        let started = Instant::now();
        let signed = match signing::sign(&ch.signing_secret, id, wall_ms() / 1000, body.as_bytes())
        {
            Ok(s) => s,
            Err(e) => {
                return Outcome {
                    ok: false,
                    status: None,
                    body: String::new(),
                    error: Some(e),
                    duration_ms: 0,
                };
            }
        };
        let mut req = self
            .http
            .post(&ch.url)
            .header("content-type", "application/json")
            .header("webhook-id", &signed.id)
            .header("webhook-timestamp", signed.timestamp.to_string())
            .header("webhook-signature", &signed.signature);
        for (k, v) in &ch.custom_headers {
            req = req.header(k, v);
        }
        let result = req.body(body).send().await;
        let (status, text, error) = match result {
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                (Some(status.as_u16()), text, None)
            }
            Err(e) => (None, String::new(), Some(describe(&e))),
        };
        let mut text = text;
        if text.len() > BODY_KEPT {
            let mut cut = BODY_KEPT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        Outcome {
            ok: status.is_some_and(|s| (200..300).contains(&s)),
            status,
            body: text,
            error,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }
}

fn fmt(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A request error in words an operator acts on.
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = if e.is_timeout() {
        format!("timed out after {}s", TIMEOUT.as_secs())
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
