//! The agent's Prometheus metrics (`GET /metrics`, text format), all prefixed `tollgate_agent_`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    /// Events received over gRPC.
    pub received: Counter,
    /// Events acked durable.
    pub durable: Counter,
    /// Events delivered (2xx).
    pub sent: Counter,
    /// Events in batches rejected as malformed at ingest.
    pub rejected: Counter,
    /// Events moved to the dead-letter tree.
    pub dead_lettered: Counter,
    /// Events refused because the buffer was full (answered `FULL`).
    pub dropped: Counter,
    /// Kong requests (http-log) skipped because their subject could not be resolved.
    pub no_subject: Counter,
    /// Delivery attempts that failed and will be retried.
    pub delivery_retries: Counter,
    /// Buffer directories moved aside at start-up.
    pub quarantined: Counter,
    /// Events queued on disk.
    pub queue_depth: Gauge,
    /// Bytes queued on disk.
    pub queue_bytes: Gauge,
    /// `buffer.max_bytes`, so alerts can compare `queue_bytes` against it (warn at 80 %).
    pub queue_max_bytes: Gauge,
    /// Age of the oldest queued event.
    pub oldest_event_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Latency of each successful delivery request.
    pub flush_latency_seconds: Histogram,
    /// The pull sources' own counters, labelled `kind` and `name`.
    pub sources: SourceMetrics,
}

/// Labels of a pull source's metrics: `kind` (`prometheus`, `s3`, …) and `name`.
pub type SourceLabels = Vec<(String, String)>;

/// `tollgate_agent_source_*`: what each pull source did.
#[derive(Default, Clone)]
pub struct SourceMetrics {
    /// Ticks (schedule fires, listings) completed.
    pub ticks: Family<SourceLabels, Counter>,
    /// Events made and stored.
    pub events: Family<SourceLabels, Counter>,
    /// Failures: requests, queries, unreadable inputs, skipped ticks.
    pub errors: Family<SourceLabels, Counter>,
    /// Seconds between now and the newest tick fully stored.
    pub lag_seconds: Family<SourceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl SourceMetrics {
    /// The labels of source `name` of `kind`.
    pub fn labels(kind: &str, name: &str) -> SourceLabels {
        vec![
            ("kind".to_owned(), kind.to_owned()),
            ("name".to_owned(), name.to_owned()),
        ]
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tollgate_agent");
        let m = Metrics {
            received: Counter::default(),
            durable: Counter::default(),
            sent: Counter::default(),
            rejected: Counter::default(),
            dead_lettered: Counter::default(),
            dropped: Counter::default(),
            no_subject: Counter::default(),
            delivery_retries: Counter::default(),
            quarantined: Counter::default(),
            queue_depth: Gauge::default(),
            queue_bytes: Gauge::default(),
            queue_max_bytes: Gauge::default(),
            oldest_event_age_seconds: Gauge::default(),
            flush_latency_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            sources: SourceMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_received",
            "Events received from every source",
            m.received.clone(),
        );
        registry.register(
            "events_durable",
            "Events acknowledged durable",
            m.durable.clone(),
        );
        registry.register(
            "events_sent",
            "Events delivered to a destination",
            m.sent.clone(),
        );
        registry.register(
            "events_rejected",
            "Events in batches rejected as malformed",
            m.rejected.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Events moved to the dead-letter tree",
            m.dead_lettered.clone(),
        );
        registry.register(
            "events_dropped",
            "Events refused because the buffer was full",
            m.dropped.clone(),
        );
        registry.register(
            "kong_requests_no_subject",
            "Kong requests from http-log skipped because no subject could be resolved",
            m.no_subject.clone(),
        );
        registry.register(
            "delivery_retries",
            "Failed delivery attempts that will be retried",
            m.delivery_retries.clone(),
        );
        registry.register(
            "buffer_quarantined",
            "Unreadable buffer directories moved aside",
            m.quarantined.clone(),
        );
        registry.register(
            "queue_depth",
            "Events queued on disk",
            m.queue_depth.clone(),
        );
        registry.register("queue_bytes", "Bytes queued on disk", m.queue_bytes.clone());
        registry.register(
            "oldest_event_age_seconds",
            "Age of the oldest queued event",
            m.oldest_event_age_seconds.clone(),
        );
        registry.register(
            "flush_latency_seconds",
            "Latency of successful delivery requests",
            m.flush_latency_seconds.clone(),
        );
        registry.register(
            "source_ticks",
            "Ticks completed by each pull source",
            m.sources.ticks.clone(),
        );
        registry.register(
            "source_events",
            "Events stored by each pull source",
            m.sources.events.clone(),
        );
        registry.register(
            "source_errors",
            "Failed requests, queries, inputs and skipped ticks of each pull source",
            m.sources.errors.clone(),
        );
        registry.register(
            "source_lag_seconds",
            "Seconds since the newest tick a pull source has fully stored",
            m.sources.lag_seconds.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
