//! The agent's sources, one module each (as Vector lays them out), all feeding the same sled
//! buffer with the same promise: a source acknowledges events only once they are durable on
//! disk, and leaves dedup to billing on (`source`, `id`), so a client that retries after a lost
//! answer causes no double count.
//!
//! * [`grpc`]: `tollgate.v1.Ingest/Publish`, the `tollgate` plugin's stream.
//! * [`http`]: OpenMeter's ingest paths (`POST /api/v1/events`, `/api/v3/openmeter/events`), so
//!   any OpenMeter SDK or collector can point at the sidecar.
//! * [`kong_http_log`]: `POST /kong/http-log`, bodies from Kong's bundled http-log plugin, made
//!   into exactly the events the `tollgate` plugin makes (crate `tollgate-events`).
//! * [`otlp_logs`]: OTLP/gRPC `LogsService/Export`, one event per log record.
//!
//! Pull sources, each a task of its own that asks a system on a schedule, with ids derived from
//! what it measures (a repeated or retried tick dedupes) and progress kept in sled where the
//! system can answer for the past:
//! * [`prometheus`]: PromQL instant queries, one event per series per tick, catching up.
//! * [`s3`]: CloudEvents in S3 objects, each object read once.
//! * [`kubernetes`]: pod execution time with requests and limits, per interval.
//! * [`runai`]: NVIDIA Run:ai workload or pod metrics.
//!
//! [`Intake`] is what all sources share: append, group commit, account, answer; [`pull`] is
//! what the pull sources add to it, [`schedule`] when they tick.

pub mod grpc;
pub mod http;
pub mod kong_http_log;
pub mod otlp_logs;

pub mod kubernetes;
pub mod prometheus;
pub mod pull;
pub mod quantity;
pub mod runai;
pub mod s3;
pub mod schedule;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::buffer::{Append, DEFAULT_QUEUE, DiskBuffer, StoredEvent};
use crate::entitlements::Cache;
use crate::metrics::Metrics;

/// Where the push sources put events: the default destination's queue.
#[derive(Clone)]
pub struct Intake {
    /// The buffer.
    pub buffer: Arc<DiskBuffer>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Told which subjects send traffic and what usage is buffered, when enabled.
    pub entitlements: Option<Arc<Cache>>,
}

/// Why events were not taken; nothing of them was acknowledged.
#[derive(Debug)]
pub enum Refusal {
    /// The buffer is at `buffer.max_bytes` (the documented full policy: refuse, keep nothing).
    Full,
    /// The buffer could not store or commit them.
    Unavailable(String),
}

impl Intake {
    /// Appends `events` atomically to the default queue and returns once they are on disk.
    pub async fn store(&self, events: &[StoredEvent]) -> Result<(), Refusal> {
        let n = events.len() as u64;
        self.metrics.received.inc_by(n);
        if events.is_empty() {
            return Ok(());
        }
        match self.buffer.append_events(DEFAULT_QUEUE, events) {
            Ok(Append::Stored) => {}
            Ok(Append::Full) => {
                self.metrics.dropped.inc_by(n);
                full_warning(&self.buffer);
                return Err(Refusal::Full);
            }
            Err(e) => {
                tracing::error!(error = %e, "append failed");
                return Err(Refusal::Unavailable(e.to_string()));
            }
        }
        high_water_warning(&self.buffer);
        if let Some(cache) = &self.entitlements {
            for e in events {
                cache.observe(&e.subject);
            }
            cache.account(
                events
                    .iter()
                    .map(|e| (e.subject.as_str(), e.ty.as_str(), e.data.as_bytes())),
                false,
            );
        }
        self.buffer.commit().await.map_err(|e| {
            tracing::error!(error = %e, "commit failed");
            Refusal::Unavailable(e.to_string())
        })?;
        self.metrics.durable.inc_by(n);
        Ok(())
    }
}

/// Starts every configured pull source as its own task; they stop when `stop` turns true.
/// A source that cannot start (an S3 client that cannot be built…) is an error naming its key.
pub fn spawn_pull_sources(
    config: &crate::config::Sources,
    intake: &Intake,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    use anyhow::Context;
    let mut tasks = tokio::task::JoinSet::new();
    let handle = |kind, name: &str| pull::Pull::new(intake.clone(), kind, name, stop.clone());
    for (i, p) in config.prometheus.iter().enumerate() {
        let source = prometheus::Prometheus::new(p.clone(), handle("prometheus", p.label()))
            .with_context(|| format!("sources.prometheus[{i}]"))?;
        tasks.spawn(source.run());
    }
    for (i, c) in config.s3.iter().enumerate() {
        let source = s3::S3::new(c.clone(), handle("s3", &c.label()))
            .with_context(|| format!("sources.s3[{i}]"))?;
        tasks.spawn(source.run());
    }
    if config.kubernetes.enabled {
        let source =
            kubernetes::Kubernetes::new(config.kubernetes.clone(), handle("kubernetes", "pods"))
                .context("sources.kubernetes")?;
        tasks.spawn(source.run());
    }
    if config.runai.enabled {
        let source = runai::Runai::new(config.runai.clone(), handle("runai", &config.runai.url))
            .context("sources.runai")?;
        tasks.spawn(source.run());
    }
    Ok(tasks)
}

/// An RFC 9457 problem answer.
pub fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    problem_with(status, detail, serde_json::Map::new())
}

/// A problem answer with extra members (`errors`, …).
pub fn problem_with(
    status: StatusCode,
    detail: impl Into<String>,
    mut extra: serde_json::Map<String, serde_json::Value>,
) -> Response {
    extra.insert("type".into(), "about:blank".into());
    extra.insert(
        "title".into(),
        status.canonical_reason().unwrap_or("Error").into(),
    );
    extra.insert("status".into(), status.as_u16().into());
    extra.insert("detail".into(), detail.into().into());
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        serde_json::Value::Object(extra).to_string(),
    )
        .into_response()
}

/// How an HTTP source answers a refusal: 503 with `Retry-After`, which every HTTP client with a
/// retry policy (Kong's plugin queues, OpenMeter's SDKs, collectors) treats as "try again".
pub fn refusal_response(r: Refusal) -> Response {
    let (detail, after) = match r {
        Refusal::Full => (
            "agent disk buffer is full (is the destination down?); nothing of this request was stored"
                .to_owned(),
            "5",
        ),
        Refusal::Unavailable(e) => (
            format!("agent buffer unavailable: {e}; nothing of this request was acknowledged"),
            "1",
        ),
    };
    let mut resp = problem(StatusCode::SERVICE_UNAVAILABLE, detail);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
    resp
}

/// Whether the request carries `Authorization: Bearer <token>` when a source has a token
/// configured (always true without one).
pub fn authorized(expected: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    given == Some(expected)
}

/// The 401 for a request without the configured token.
pub fn unauthorized() -> Response {
    problem(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (this source has a token configured)",
    )
}

/// The media type of a request, lowercase, without parameters.
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// At most one "80 % full" log line per minute.
pub(crate) fn high_water_warning(buffer: &DiskBuffer) {
    static LAST: AtomicI64 = AtomicI64::new(0);
    if buffer.bytes() * 5 < buffer.max_bytes() * 4 {
        return;
    }
    let now = chrono::Utc::now().timestamp();
    if LAST.swap(now, Ordering::Relaxed) + 60 <= now {
        tracing::warn!(
            bytes = buffer.bytes(),
            max_bytes = buffer.max_bytes(),
            "disk buffer is over 80 % full: is the destination down?"
        );
    }
}

/// At most one "full" log line per 10 s.
pub(crate) fn full_warning(buffer: &DiskBuffer) {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = chrono::Utc::now().timestamp();
    if LAST.swap(now, Ordering::Relaxed) + 10 <= now {
        tracing::error!(
            bytes = buffer.bytes(),
            max_bytes = buffer.max_bytes(),
            "disk buffer full: refusing new events (plugins keep them in memory and drop their oldest when that fills; HTTP sources answer 503 with Retry-After; OTLP answers UNAVAILABLE)"
        );
    }
}
