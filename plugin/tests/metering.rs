//! Metering through the real `tollgate` binary: Kong's log phase, played by the protocol driver
//! for every Kong version's serialize shape, produces the CloudEvents Kong's own plugin would,
//! and they reach the agent's gRPC side.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use tollgate_e2e::kong::pdk::RequestPdk;
use tollgate_e2e::kong::serialize::{AiCall, KongRequest, KongVersion};
use tollgate_e2e::kong::worker::{PhaseOutcome, Worker};

const ALICE: &str = "5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f";

fn ai_call() -> AiCall {
    AiCall {
        plugin: "ai-proxy".into(),
        provider: "openai".into(),
        request_model: "gpt-4o".into(),
        response_model: "gpt-4o-2024-08-06".into(),
        prompt_tokens: 120,
        completion_tokens: 45,
        cost: Some(0.0012),
    }
}

async fn log(
    worker: &Worker,
    plugin: &tollgate_e2e::kong::worker::PluginEntity,
    req: &KongRequest,
) {
    let outcome = worker
        .run_phase(
            plugin,
            "log",
            &RequestPdk {
                request: req,
                phase: "log",
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome, PhaseOutcome::Returned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_request_events_match_kongs_plugin_for_every_kong_version() {
    let agent = RecordingAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _server = start_tollgate(dir.path(), &agent.url(), &[]);
    let worker = Worker::new(dir.path().join("tollgate.socket"));
    let plugin = metering_plugin(
        json!({"meter_api_requests": true, "meter_ai_token_usage": true,
        "subject": {"look_up_value_in": "consumer", "field": null}, "attributes": null}),
    );

    let mut sent = Vec::new();
    for version in KongVersion::ALL {
        let req = KongRequest::get(version, "/orders/42")
            .with_query("expand", "items")
            .with_consumer(ALICE, "alice");
        log(&worker, &plugin, &req).await;
        sent.push(req);
    }
    let events = agent.wait_for(sent.len()).await;
    assert_eq!(
        events.len(),
        sent.len(),
        "one event per request, no LLM events without ai"
    );
    for (req, e) in sent.iter().zip(&events) {
        assert_eq!(e.r#type, "kong.api_request");
        assert_eq!(e.subject, format!("consumer:{ALICE}"));
        assert_eq!(e.source, "kong-test");
        assert_eq!(e.time, "2025-11-24T10:26:40.123Z", "time is started_at");
        if req.version == KongVersion::V3_4 {
            assert_eq!(e.id.len(), 32, "3.4 has no request id: a generated one");
            assert_ne!(e.id, req.request_id);
        } else {
            assert_eq!(e.id, req.request_id, "Kong's request id is the event id");
        }
        let d = data(e);
        assert_eq!(d["request_method"], "GET");
        assert_eq!(d["request_uri"], "/orders/42", "path without the query");
        assert_eq!(d["request_host"], "api.example.com");
        assert_eq!(
            d["request_user_agent"], "curl/8.5.0",
            "escaped slashes read back"
        );
        assert_eq!(d["response_http_status"], 200);
        assert_eq!(d["upstream_status"], 200);
        assert_eq!(d["response_size_bytes"], 512);
        assert_eq!(d["route_name"], "orders-api");
        assert_eq!(d["service_name"], "orders");
        assert_eq!(d["service_port"], 8080);
        assert_eq!(d["service_protocol"], "http");
        assert_eq!(d["client_ip"], "203.0.113.7");
        assert_eq!(d["subject_type"], "consumer_id");
        assert_eq!(d["consumer_username"], "alice");
        assert_eq!(d["latency_upstream_ms"], 27.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_requests_give_two_llm_events_in_every_ai_shape() {
    let agent = RecordingAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _server = start_tollgate(dir.path(), &agent.url(), &[]);
    let worker = Worker::new(dir.path().join("tollgate.socket"));
    let plugin =
        metering_plugin(json!({"meter_api_requests": false, "meter_ai_token_usage": true}));

    let versions = [
        KongVersion::V3_6,
        KongVersion::V3_7,
        KongVersion::V3_8,
        KongVersion::V3_9,
    ];
    for version in versions {
        let req = KongRequest::get(version, "/chat")
            .with_consumer(ALICE, "alice")
            .with_ai(ai_call());
        log(&worker, &plugin, &req).await;
    }
    let events = agent.wait_for(versions.len() * 2).await;
    assert_eq!(events.len(), versions.len() * 2);
    for pair in events.chunks(2) {
        let (req, resp) = (data(&pair[0]), data(&pair[1]));
        assert!(pair.iter().all(|e| e.r#type == "kong.llm_request"));
        assert_eq!(req["type"], "request");
        assert_eq!(req["tokens"], 120);
        assert_eq!(req["model"], "gpt-4o");
        assert_eq!(resp["type"], "response");
        assert_eq!(resp["tokens"], 45);
        assert_eq!(resp["model"], "gpt-4o-2024-08-06");
        assert_eq!(req["provider"], "openai");
        assert_eq!(req["total_tokens"], 165);
        assert_eq!(req["api_request_id"], resp["api_request_id"]);
        assert_ne!(pair[0].id, pair[1].id, "distinct ids");
    }
    // 3.4 has no ai tree at all: nothing to meter.
    let req = KongRequest::get(KongVersion::V3_4, "/chat")
        .with_consumer(ALICE, "alice")
        .with_ai(ai_call());
    log(&worker, &plugin, &req).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(agent.events().len(), versions.len() * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_subject_attributes_and_dropped_requests() {
    let agent = RecordingAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _server = start_tollgate(dir.path(), &agent.url(), &[]);
    let worker = Worker::new(dir.path().join("tollgate.socket"));
    let plugin = metering_plugin(json!({
        "subject": {"look_up_value_in": "header", "field": "X-Tenant-Id"},
        "attributes": [
            {"source": "header", "look_up_value_in": "x-department", "event_property_name": "department"},
            {"source": "query", "look_up_value_in": "project", "event_property_name": "project"}
        ]
    }));
    let with_all = KongRequest::get(KongVersion::V3_9, "/search")
        .with_header("x-tenant-id", "tenant-7")
        .with_header("x-department", "engineering")
        .with_query("project", "apollo");
    let no_attrs =
        KongRequest::get(KongVersion::V3_9, "/search").with_header("x-tenant-id", "tenant-8");
    let no_subject =
        KongRequest::get(KongVersion::V3_9, "/search").with_header("x-department", "sales");
    for r in [&with_all, &no_subject, &no_attrs] {
        log(&worker, &plugin, r).await;
    }
    let events = agent.wait_for(2).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        agent.events().len(),
        2,
        "the request without a subject is dropped"
    );
    assert_eq!(events[0].subject, "tenant-7");
    let d = data(&events[0]);
    assert_eq!(d["department"], "engineering");
    assert_eq!(d["project"], "apollo");
    assert_eq!(d["subject_type"], "header");
    assert_eq!(events[1].subject, "tenant-8");
    let d = data(&events[1]);
    assert!(
        d.get("department").is_none(),
        "a missing attribute is left out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_destination_travels_with_the_batch() {
    let agent = RecordingAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _server = start_tollgate(dir.path(), &agent.url(), &[]);
    let worker = Worker::new(dir.path().join("tollgate.socket"));
    let own = metering_plugin(
        json!({"ingest_endpoint": "https://eu.api.example.com/v3/openmeter/events",
                                     "api_token": "spat_secret"}),
    );
    let default = metering_plugin(json!({}));
    log(
        &worker,
        &own,
        &KongRequest::get(KongVersion::V3_9, "/a").with_consumer(ALICE, "alice"),
    )
    .await;
    log(
        &worker,
        &default,
        &KongRequest::get(KongVersion::V3_9, "/b").with_consumer(ALICE, "alice"),
    )
    .await;
    agent.wait_for(2).await;
    let batches = agent.batches();
    let with_dest: Vec<_> = batches.iter().filter(|b| b.destination.is_some()).collect();
    assert_eq!(with_dest.len(), 1, "never mixed in one batch: {batches:?}");
    let d = with_dest[0].destination.as_ref().unwrap();
    assert_eq!(
        d.ingest_endpoint,
        "https://eu.api.example.com/v3/openmeter/events"
    );
    assert_eq!(d.api_token, "spat_secret");
    assert_eq!(with_dest[0].events.len(), 1);
}
