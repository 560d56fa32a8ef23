//! `[sources.otlp_logs]`: the OpenTelemetry Python SDK's OTLP/gRPC log exporter (PyPI) sends log
//! records to the real agent binary; each record with a subject becomes one event, with its id
//! attribute or, without one, an id derived from the record; a record without a subject is
//! refused (partial success) and the rest are stored.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

/// The source's settings under test (the port is added per test).
const OTLP: &str = r#"
[sources.otlp_logs]
enabled = true
type_attribute = "event.type"
event_type = "otel-usage"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opentelemetry_sdk_exports_usage_events_through_the_agent() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = format!("{OTLP}listen = \"127.0.0.1:{port}\"\n");
    let agent = Agent::start(&write_config(dir.path(), &receiver.url(), &extra));
    let out = run_python(
        "otlp_export.py",
        &[format!("127.0.0.1:{port}"), "otel".into(), "30".into()],
    );
    assert!(out.contains("otlp: ok"), "{out}");

    let want: HashSet<String> = (0..30)
        .filter(|i| i % 10 != 0)
        .map(|i| format!("otel-{i}"))
        .collect();
    receiver.wait_for_ids(&want, Duration::from_secs(20)).await;
    // Every record twice (the export and its retry), the one without a subject never.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while receiver.count() < 60 {
        assert!(std::time::Instant::now() < deadline, "{}", receiver.count());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = receiver.received.lock().unwrap().events.clone();
    assert_eq!(
        events.len(),
        60,
        "the records without a subject were refused"
    );
    assert_eq!(
        receiver.ids().len(),
        30,
        "a retried export carries the same ids, derived ones included: billing dedupes it"
    );
    let derived: HashSet<&str> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .filter(|id| !id.starts_with("otel-"))
        .collect();
    assert_eq!(derived.len(), 3, "records without an id got a derived one");
    assert!(derived.iter().all(|id| uuid::Uuid::parse_str(id).is_ok()));
    let e = events.iter().find(|e| e["id"] == "otel-7").unwrap();
    assert_eq!(e["type"], "jobs", "type_attribute wins over event_type");
    assert_eq!(e["subject"], "customer-otel");
    assert_eq!(e["source"], "otlp-logs");
    assert_eq!(e["time"], "2025-11-24T16:00:00.007Z");
    assert_eq!(
        e["data"],
        serde_json::json!({"duration_ms": 17, "region": "eu"})
    );
    let (_, metrics) = agent.get("/metrics").await;
    assert!(
        metrics.contains("tollgate_agent_events_rejected_total 2"),
        "the record without a subject, in the export and in its retry: {metrics}"
    );
}
