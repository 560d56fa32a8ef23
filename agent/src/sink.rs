//! The HTTP sink: one flusher per destination queue, delivering CloudEvents batches
//! (`application/cloudevents-batch+json`) to OpenMeter v1, OpenMeter v3 or Konnect.
//!
//! A flusher reads its queue in order and keeps up to `flush.max_in_flight` bounded batches in
//! flight; answers are taken in order, and a batch is let go only on 2xx once every batch before it
//! was (so the queue's cursor never passes an undelivered event).
//! Transient failures (connection errors, timeouts, 408, 429, 5xx) are retried forever with
//! exponential backoff and jitter, honouring `Retry-After` — the disk is the buffer. Any other
//! 4xx means a poison event: the batch is bisected until the refused events are found; those move
//! to the dead-letter tree with the response and the rest keep flowing (a refused batch may have
//! been partly ingested; `(source, id)` dedup makes resending safe).
//!
//! The request body is built by splicing each event's stored `data` JSON into the envelope: no
//! re-parse on the way out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;

use crate::buffer::{BufferError, DEFAULT_QUEUE, DiskBuffer, StoredEvent};
use crate::config::{Api, Config};
use crate::metrics::Metrics;

/// Where one queue is delivered.
#[derive(Clone)]
pub struct Target {
    /// Full events URL.
    pub url: String,
    /// Bearer token.
    pub token: Option<String>,
}

impl Target {
    /// The default destination from config.
    pub fn from_config(config: &Config) -> Target {
        let base = config.destination.url.trim_end_matches('/');
        let url = if base.ends_with("/events") {
            base.to_owned()
        } else {
            match config.destination.api {
                Api::OpenmeterV1 => format!("{base}/api/v1/events"),
                Api::OpenmeterV3 => format!("{base}/api/v3/openmeter/events"),
                Api::Konnect => format!("{base}/v3/openmeter/events"),
            }
        };
        Target {
            url,
            token: config.destination.token.clone(),
        }
    }
}

/// The CloudEvents batch body for `events`.
pub fn batch_body(events: &[(u64, StoredEvent)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.iter().map(|(_, e)| e.size() as usize + 64).sum());
    out.push(b'[');
    for (i, (_, e)) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"specversion":"1.0","id":"#);
        write_json_str(&mut out, &e.id);
        out.extend_from_slice(br#","source":"#);
        write_json_str(&mut out, &e.source);
        out.extend_from_slice(br#","type":"#);
        write_json_str(&mut out, &e.ty);
        out.extend_from_slice(br#","subject":"#);
        write_json_str(&mut out, &e.subject);
        if !e.time.is_empty() {
            out.extend_from_slice(br#","time":"#);
            write_json_str(&mut out, &e.time);
        }
        if !e.data.is_empty() {
            out.extend_from_slice(br#","datacontenttype":"application/json","data":"#);
            out.extend_from_slice(e.data.as_bytes());
        }
        out.push(b'}');
    }
    out.push(b']');
    out
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a str cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// How one delivery attempt ended.
enum Attempt {
    Delivered,
    /// Retry later (after at least this long, when the server said so).
    Transient(String, Option<Duration>),
    /// The destination refused the content.
    Refused(u16, String),
}

/// Delivers one queue forever.
pub struct Flusher {
    /// Queue id.
    pub queue: u32,
    /// Destination.
    pub target: Target,
    /// Shared HTTP client (connection reuse).
    pub client: reqwest::Client,
    /// Settings.
    pub config: Arc<Config>,
    /// Buffer.
    pub buffer: Arc<DiskBuffer>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Told what was delivered, for local entitlement accounting.
    pub entitlements: Option<Arc<crate::entitlements::Cache>>,
}

impl Flusher {
    /// The flusher for queue `id`, or `None` if the queue has no destination.
    pub fn for_queue(
        id: u32,
        client: reqwest::Client,
        config: Arc<Config>,
        buffer: Arc<DiskBuffer>,
        metrics: Arc<Metrics>,
    ) -> Option<Flusher> {
        let target = if id == DEFAULT_QUEUE {
            Target::from_config(&config)
        } else {
            let d = buffer.destination(id)?;
            Target {
                url: d.endpoint,
                token: Some(d.token).filter(|t| !t.is_empty()),
            }
        };
        Some(Flusher {
            queue: id,
            target,
            client,
            config,
            buffer,
            metrics,
            entitlements: None,
        })
    }

    /// Runs until `stop` resolves; then keeps delivering for up to `grace`, and returns.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let notify = self.buffer.notifier(self.queue);
        let mut backoff = Duration::from_millis(self.config.flush.retry_initial_ms);
        let mut stopping_since: Option<Instant> = None;
        // Batches sent and not yet answered, oldest first.
        let mut pipeline: VecDeque<InFlight> = VecDeque::new();
        loop {
            if *stop.borrow() && stopping_since.is_none() {
                stopping_since = Some(Instant::now());
            }
            if let Some(since) = stopping_since
                && since.elapsed() > Duration::from_millis(self.config.flush.shutdown_grace_ms)
            {
                abort(&mut pipeline);
                return;
            }
            if let Err(e) = self.fill(&mut pipeline) {
                tracing::error!(error = %e, "reading the buffer failed");
                abort(&mut pipeline);
                tokio::time::sleep(backoff).await;
                continue;
            }
            let Some(head) = pipeline.pop_front() else {
                if stopping_since.is_some() {
                    return;
                }
                let idle = Duration::from_millis(self.config.flush.interval_ms);
                tokio::select! {
                    _ = async { if let Some(n) = &notify { n.notified().await } else { std::future::pending().await } } => {}
                    _ = tokio::time::sleep(idle) => {}
                    _ = stop.changed() => {}
                }
                continue;
            };
            let attempt = head
                .answer
                .await
                .unwrap_or_else(|e| Attempt::Transient(format!("send task: {e}"), None));
            let outcome = match attempt {
                Attempt::Delivered => self
                    .delivered(&head.batch)
                    .map_err(|e| (e.to_string(), None)),
                // Refused content: stop the pipeline and find the refused events one batch at
                // a time (what was sent after it is sent again; dedup makes that safe).
                refused @ Attempt::Refused(..) => {
                    abort(&mut pipeline);
                    self.deliver(&head.batch, Some(refused)).await
                }
                Attempt::Transient(why, after) => {
                    abort(&mut pipeline);
                    Err((why, after))
                }
            };
            match outcome {
                Ok(()) => backoff = Duration::from_millis(self.config.flush.retry_initial_ms),
                Err((why, retry_after)) => {
                    self.metrics.delivery_retries.inc();
                    let jitter = rand::rng().random_range(0.5..1.0);
                    let wait = retry_after.unwrap_or(backoff.mul_f64(jitter));
                    tracing::warn!(error = %why, retry_in_ms = wait.as_millis() as u64, "delivery failed; events stay on disk");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => {}
                    }
                    backoff =
                        (backoff * 2).min(Duration::from_millis(self.config.flush.retry_max_ms));
                }
            }
        }
    }

    /// Sends further batches until `flush.max_in_flight` are in flight or the queue has no more.
    fn fill(&self, pipeline: &mut VecDeque<InFlight>) -> Result<(), BufferError> {
        while pipeline.len() < self.config.flush.max_in_flight {
            let after = pipeline
                .back()
                .and_then(|f| f.batch.last())
                .map_or(0, |(k, _)| *k);
            let batch = self.buffer.peek_after(
                self.queue,
                after,
                self.config.flush.max_events,
                self.config.flush.max_bytes,
            )?;
            if batch.is_empty() {
                break;
            }
            let request = self.request(&batch);
            let metrics = self.metrics.clone();
            let answer = tokio::spawn(attempt(request, metrics));
            pipeline.push_back(InFlight { batch, answer });
        }
        Ok(())
    }

    /// What follows a 2xx: metrics, local entitlement accounting, and letting the events go.
    fn delivered(&self, part: &[(u64, StoredEvent)]) -> Result<(), BufferError> {
        self.metrics.sent.inc_by(part.len() as u64);
        if let Some(cache) = &self.entitlements {
            cache.account(
                part.iter()
                    .map(|(_, e)| (e.subject.as_str(), e.ty.as_str(), e.data.as_bytes())),
                true,
            );
        }
        self.buffer.remove(self.queue, part)?;
        self.metrics.queue_depth.set(self.buffer.depth() as i64);
        self.metrics.queue_bytes.set(self.buffer.bytes() as i64);
        Ok(())
    }

    /// Delivers `batch`, bisecting around refused events. Everything delivered or dead-lettered
    /// is removed from the queue; on a transient failure the rest stays for the next round.
    /// `answered` is the answer the whole batch already got, if it was sent.
    async fn deliver(
        &self,
        batch: &[(u64, StoredEvent)],
        mut answered: Option<Attempt>,
    ) -> Result<(), (String, Option<Duration>)> {
        // An explicit stack of slices instead of recursion (async recursion needs boxing).
        let mut pending: Vec<&[(u64, StoredEvent)]> = vec![batch];
        while let Some(part) = pending.pop() {
            let answer = match answered.take() {
                Some(a) => a,
                None => attempt(self.request(part), self.metrics.clone()).await,
            };
            match answer {
                Attempt::Delivered => {
                    self.delivered(part).map_err(|e| (e.to_string(), None))?;
                }
                Attempt::Transient(why, after) => return Err((why, after)),
                Attempt::Refused(status, body) if part.len() == 1 => {
                    let (key, event) = &part[0];
                    tracing::error!(status, id = %event.id, response = %body, "destination refused an event: moved to the dead-letter tree");
                    self.metrics.dead_lettered.inc();
                    self.buffer
                        .dead_letter(self.queue, *key, event, status, &body)
                        .await
                        .map_err(|e| (e.to_string(), None))?;
                }
                Attempt::Refused(..) => {
                    let (left, right) = part.split_at(part.len() / 2);
                    // Left first: keep delivery in order.
                    pending.push(right);
                    pending.push(left);
                }
            }
        }
        self.metrics.queue_depth.set(self.buffer.depth() as i64);
        self.metrics.queue_bytes.set(self.buffer.bytes() as i64);
        Ok(())
    }

    /// The request delivering `part`.
    fn request(&self, part: &[(u64, StoredEvent)]) -> reqwest::RequestBuilder {
        let body = batch_body(part);
        let mut req = self.client.post(&self.target.url).header(
            reqwest::header::CONTENT_TYPE,
            "application/cloudevents-batch+json",
        );
        if let Some(token) = &self.target.token {
            req = req.bearer_auth(token);
        }
        if self.config.destination.gzip {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = gz.write_all(&body);
            req.header(reqwest::header::CONTENT_ENCODING, "gzip")
                .body(gz.finish().unwrap_or_default())
        } else {
            req.body(body)
        }
    }
}

/// A batch sent and not yet answered.
struct InFlight {
    batch: Vec<(u64, StoredEvent)>,
    answer: tokio::task::JoinHandle<Attempt>,
}

/// Gives up on every batch in flight (they are read and sent again from the queue).
fn abort(pipeline: &mut VecDeque<InFlight>) {
    for f in pipeline.drain(..) {
        f.answer.abort();
    }
}

/// Sends one request and classifies the answer.
async fn attempt(req: reqwest::RequestBuilder, metrics: Arc<Metrics>) -> Attempt {
    let started = Instant::now();
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Attempt::Transient(describe(&e), None),
    };
    let status = resp.status();
    if status.is_success() {
        metrics
            .flush_latency_seconds
            .observe(started.elapsed().as_secs_f64());
        return Attempt::Delivered;
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = resp.text().await.unwrap_or_default();
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        return Attempt::Transient(
            format!("HTTP {status}"),
            retry_after.filter(|_| {
                status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
            }),
        );
    }
    if status.is_client_error() {
        return Attempt::Refused(status.as_u16(), text);
    }
    Attempt::Transient(format!("unexpected HTTP {status}"), None)
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// The HTTP client every flusher shares.
pub fn client(config: &Config) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(config.destination.timeout_ms))
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .danger_accept_invalid_certs(!config.destination.tls_verify)
        .user_agent(concat!("tollgate-agent/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_body_is_a_cloudevents_array_with_data_spliced_in() {
        let e = StoredEvent {
            id: "a\"1".into(),
            source: "kong".into(),
            ty: "kong.api_request".into(),
            subject: "consumer:1".into(),
            time: "2026-11-24T10:00:00.000Z".into(),
            data: r#"{"request_method":"GET","n":1.5}"#.into(),
            received_ms: 0,
        };
        let body = batch_body(&[(1, e.clone()), (2, e)]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(v[0]["id"], "a\"1");
        assert_eq!(v[0]["specversion"], "1.0");
        assert_eq!(v[1]["data"]["n"], 1.5);
    }
}
