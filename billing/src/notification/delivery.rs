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
//! * **One transaction per round, not per delivery:** attempts run as tasks that touch no
//!   database (a claim brings each delivery's event and channel documents, read in one query).
//!   Each time the worker comes round it records every attempt that finished meanwhile AND
//!   claims as many due deliveries as slots are free, in one transaction
//!   ([`Store::settle_and_claim`]) — a group commit with no timer: an outcome waits at most for
//!   the transaction under way to end.
//! * **Crashes and replicas:** a claim is a committed conditional row update (each row's due
//!   condition re-checked as it is written), so two replicas never hold one delivery at once,
//!   and an outcome is recorded only under the lease it was claimed with. A worker killed
//!   mid-send — or after a receiver's 2xx but before that round's commit — leaves its rows
//!   `SENDING` until the lease ends (on SQLite, the only process, at once on start), and they
//!   are sent again with the same `webhook-id`: at-least-once, as Standard Webhooks specifies
//!   (receivers deduplicate on `webhook-id`). Batching widens that window only by the
//!   transaction under way, never by a wait for more outcomes.
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
use super::signing;
use crate::clock::Clock;
use crate::store::notifications::{ClaimRequest, Claimed, Outcome};
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

/// What one request came to.
struct Response {
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

    /// Runs until the process ends: keeps up to [`IN_FLIGHT`] deliveries in flight and, each
    /// time it comes round, records every attempt that finished meanwhile and claims as many as
    /// slots are free in one transaction (see the module docs); then waits for an attempt to
    /// finish, a wake-up or [`POLL`].
    pub async fn run(self) {
        match self.store.release_orphaned_deliveries().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deliveries = n,
                "deliveries cut off by a restart: sending again"
            ),
            Err(e) => tracing::warn!(error = %e, "releasing orphaned deliveries"),
        }
        // Each attempt is its own task and touches no database: it runs while this loop waits on
        // a transaction. (Kept as futures polled only by this loop, attempts suspended inside
        // `pool.get()` once held PostgreSQL's pooled connections while the claim waited for one:
        // a 5 s stall until the pool's timeout, then their own reads timed out.)
        let mut in_flight = tokio::task::JoinSet::new();
        let mut finished: Vec<Outcome> = Vec::new();
        loop {
            while let Some(done) = in_flight.try_join_next() {
                finished.extend(joined(done));
            }
            let free = IN_FLIGHT - in_flight.len();
            match self.settle_and_claim(&finished, free).await {
                Ok(claimed) => {
                    finished.clear();
                    for c in claimed {
                        let worker = self.clone();
                        in_flight.spawn(async move { worker.attempt(c).await });
                    }
                }
                // Kept and recorded next time round (with the lease still live, nobody else
                // sends them meanwhile).
                Err(e) => tracing::warn!(
                    error = %e,
                    outcomes = finished.len(),
                    "notification delivery: recording or claiming failed"
                ),
            }
            tokio::select! {
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    finished.extend(joined(done));
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Records `finished` and claims up to `free` due deliveries (one transaction).
    async fn settle_and_claim(
        &self,
        finished: &[Outcome],
        free: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = self.clock.now().await?;
        self.store
            .settle_and_claim(
                finished,
                &ClaimRequest {
                    now_ms: now.timestamp_millis(),
                    wall_ms: wall_ms(),
                    lease_ms: LEASE.as_millis() as i64,
                    limit: free,
                    per_channel: PER_CHANNEL,
                },
            )
            .await
    }

    /// One attempt at a claimed delivery: what to record (`None`: it could not be made — the
    /// lease runs out and the delivery is claimed again).
    async fn attempt(&self, c: Claimed) -> Option<Outcome> {
        match self.try_attempt(&c).await {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(delivery = %c.id, error = %e, "notification delivery failed");
                None
            }
        }
    }

    async fn try_attempt(&self, c: &Claimed) -> Result<Outcome, StoreError> {
        let mut status = c.status.clone();
        let channel_id = status["channel"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let channel = c
            .channel
            .clone()
            .map(serde_json::from_value::<Channel>)
            .transpose();
        let ch = match &channel {
            Err(e) => Err(format!("channel {channel_id} cannot be read: {e}")),
            Ok(None) => Err(format!("channel {channel_id} does not exist")),
            Ok(Some(ch)) if ch.deleted_at.is_some() => {
                Err(format!("channel {channel_id} was deleted"))
            }
            Ok(Some(ch)) if ch.disabled => Err(format!(
                "channel {channel_id} ({}) is disabled: not sent",
                ch.name
            )),
            Ok(Some(ch)) => Ok(ch),
        };
        let ch = match ch {
            Ok(ch) => ch,
            Err(reason) => {
                status["state"] = json!("FAILED");
                status["reason"] = json!(reason);
                status.as_object_mut().map(|s| s.remove("nextAttempt"));
                return Ok(Outcome {
                    id: c.id.clone(),
                    lease: c.lease.clone(),
                    state: "FAILED",
                    next_attempt_ms: None,
                    doc: status,
                });
            }
        };
        let response = self.send(ch, &c.event).await;
        let now = self.clock.now().await?;
        let mut attempt = json!({
            "state": if response.ok { "SUCCESS" } else { "FAILED" },
            "response": {
                "body": response.error.clone().unwrap_or_else(|| response.body.clone()),
                "durationMs": response.duration_ms,
                "url": ch.url,
            },
            "timestamp": now,
        });
        if let Some(s) = response.status {
            attempt["response"]["statusCode"] = json!(s);
        }
        let attempts = status["attempts"].as_array().map_or(0, Vec::len) + 1;
        if let Some(list) = status["attempts"].as_array_mut() {
            list.push(attempt);
        } else {
            status["attempts"] = json!([attempt]);
        }
        status["updatedAt"] = json!(now);
        let what = match (response.status, &response.error) {
            (Some(s), _) => format!("HTTP {s}"),
            (None, Some(e)) => e.clone(),
            (None, None) => "no response".into(),
        };
        let (state, next) = if response.ok {
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
        tracing::debug!(delivery = %c.id, state, duration_ms = response.duration_ms, "notification delivery attempt");
        Ok(Outcome {
            id: c.id.clone(),
            lease: c.lease.clone(),
            state,
            next_attempt_ms: next.map(|n| n.timestamp_millis()),
            doc: status,
        })
    }

    async fn send(&self, ch: &Channel, event: &Value) -> Response {
        let body = event["payload"].to_string();
        let id = event["id"].as_str().unwrap_or_default();
        let started = Instant::now();
        let signed = match signing::sign(&ch.signing_secret, id, wall_ms() / 1000, body.as_bytes())
        {
            Ok(s) => s,
            Err(e) => {
                return Response {
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
        Response {
            ok: status.is_some_and(|s| (200..300).contains(&s)),
            status,
            body: text,
            error,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }
}

/// A finished attempt task's outcome (a panicked one is logged; its lease runs out).
fn joined(done: Result<Option<Outcome>, tokio::task::JoinError>) -> Option<Outcome> {
    done.unwrap_or_else(|e| {
        tracing::error!(error = %e, "notification delivery task failed");
        None
    })
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
