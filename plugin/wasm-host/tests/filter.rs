//! The built filter (`tollgate_wasm.wasm`) in our proxy-wasm host against the real agent and
//! billing: requests metered into billing with the external plugin's shape and ids (and deduped),
//! LLM usage from JSON and SSE bodies (a cut stream counted and flagged), enforcement at exactly
//! the limit from the agent's snapshot with `tollgate-enforcement`'s 429/403, and an agent that
//! is down: traffic never waits, the outbox stays bounded, failures are counted, and what was
//! kept is delivered once the agent is back.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{billing_events, kong_request, ok_json, vm};
use serde_json::{Value, json};
use tollgate_e2e::stack::Stack;
use tollgate_wasm::metrics;
use tollgate_wasm_host::{Flavor, Response};

const ACME: &str = "5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f";

fn config(agent: &str) -> Value {
    json!({
        "agent": {"address": agent},
        "source": "kong-gateway/wasm-test",
        "flush_period_ms": 20,
    })
}

#[test]
fn a_bad_config_is_refused_naming_the_field() {
    let wasm = tollgate_wasm_host::build::filter_wasm().unwrap();
    let err = tollgate_wasm_host::Vm::new(
        &wasm,
        r#"{"agent":{"address":"127.0.0.1:1"},"subject":{"look_up_value_in":"header"}}"#,
        Flavor::Kong,
        Default::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("config.subject.field"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_billing_in_kongs_shape_and_dedupe_on_their_id() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path()).unwrap();
    let billing = format!("http://{}", stack.billing_addr);
    let mut vm = vm(&config(&stack.agent_http.to_string()), Flavor::Kong);
    let prefix = "a1b2c3d4e5f60718293a4b5c6d7e8f";
    for i in 0..5 {
        let req = kong_request(ACME, &format!("{prefix}{i:02}"), "/orders/42?expand=items");
        let out = vm.exchange(&req, &ok_json(r#"{"order":42}"#)).unwrap();
        assert!(out.local_response.is_none());
    }
    assert_eq!(vm.metric(metrics::QUEUED), 5);
    let delivered = vm
        .run_until(Duration::from_secs(10), |vm| {
            vm.metric(metrics::DELIVERED) == 5
        })
        .unwrap();
    assert!(delivered, "logs: {:?}", vm.logs());
    let events = billing_events(&billing, prefix, 5, Duration::from_secs(15)).await;
    assert_eq!(events.len(), 5, "{events:?}");
    let e = events
        .iter()
        .find(|e| e["id"] == format!("{prefix}03"))
        .unwrap();
    assert_eq!(e["type"], "kong.api_request");
    assert_eq!(e["source"], "kong-gateway/wasm-test");
    assert_eq!(e["subject"], format!("consumer:{ACME}"));
    let d = &e["data"];
    assert_eq!(d["request_method"], "GET");
    assert_eq!(d["request_uri"], "/orders/42");
    assert_eq!(d["request_host"], "api.example.com");
    assert_eq!(d["response_http_status"], 200);
    assert_eq!(d["route_id"], "0b0c6f3e-5b7a-4c1e-9f2d-1a2b3c4d5e6f");
    assert_eq!(d["route_name"], "orders");
    assert_eq!(d["service_name"], "orders-svc");
    assert_eq!(d["client_ip"], "10.1.2.3");
    assert_eq!(d["request_user_agent"], "curl/8.5");
    assert_eq!(d["consumer_username"], "acme-app");
    assert_eq!(d["subject_type"], "consumer_id");
    assert!(d["response_size_bytes"].as_i64().unwrap() > 12);
    assert!(d["latency_request_ms"].is_number());

    // The same requests again (another worker, a retry, or the external plugin metering them
    // too): same ids, so billing keeps one of each.
    let mut second = common::vm(&config(&stack.agent_http.to_string()), Flavor::Kong);
    for i in 0..5 {
        let req = kong_request(ACME, &format!("{prefix}{i:02}"), "/orders/42?expand=items");
        second.exchange(&req, &ok_json("{}")).unwrap();
    }
    assert!(
        second
            .run_until(Duration::from_secs(10), |vm| vm.metric(metrics::DELIVERED)
                == 5)
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = billing_events(&billing, prefix, 6, Duration::from_millis(300)).await;
    assert_eq!(events.len(), 5, "duplicates reached billing: {events:?}");
    assert_eq!(vm.refused_calls() + second.refused_calls(), 0);
}

fn sse(chunks: &[&[u8]]) -> Response {
    Response {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        body: chunks.iter().map(|c| c.to_vec()).collect(),
    }
}

const OPENAI_SSE: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\ndata: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":8,\"total_tokens\":29}}\n\ndata: [DONE]\n\n";

const ANTHROPIC_SSE: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4\",\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":12}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_usage_from_json_and_sse_reaches_billing_and_a_cut_stream_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path()).unwrap();
    let billing = format!("http://{}", stack.billing_addr);
    let mut config = config(&stack.agent_http.to_string());
    config["llm"] = json!(true);
    let mut vm = vm(&config, Flavor::Kong);
    let prefix = "11aa22bb33cc44dd55ee66ff7788";

    // OpenAI JSON.
    let mut req = kong_request(ACME, &format!("{prefix}01"), "/v1/chat/completions");
    req.method = "POST".into();
    req.headers.push(("accept-encoding".into(), "gzip".into()));
    let out = vm
        .exchange(
            &req,
            &ok_json(r#"{"id":"c","object":"chat.completion","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#),
        )
        .unwrap();
    assert_eq!(vm.metric(metrics::QUEUED), 3, "{}", common::counters(&vm));
    // Usage must be readable: the upstream is asked for an unencoded body.
    assert!(
        !out.forwarded_headers
            .iter()
            .any(|(k, _)| k == "accept-encoding")
    );
    // OpenAI SSE, split mid-line and mid-JSON.
    let b = OPENAI_SSE.as_bytes();
    let cut = OPENAI_SSE.find("\"usage\":{").unwrap() + 5;
    vm.exchange(
        &kong_request(ACME, &format!("{prefix}02"), "/v1/chat/completions"),
        &sse(&[&b[..7], &b[7..cut], &b[cut..]]),
    )
    .unwrap();
    assert_eq!(vm.metric(metrics::QUEUED), 6, "{}", common::counters(&vm));
    // Anthropic SSE, one byte at a time.
    let bytes: Vec<&[u8]> = ANTHROPIC_SSE.as_bytes().chunks(1).collect();
    vm.exchange(
        &kong_request(ACME, &format!("{prefix}03"), "/v1/messages"),
        &sse(&bytes),
    )
    .unwrap();
    // A stream cut before its usage chunk.
    let cut = OPENAI_SSE.find("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],").unwrap();
    vm.exchange(
        &kong_request(ACME, &format!("{prefix}04"), "/v1/chat/completions"),
        &sse(&[&b[..cut]]),
    )
    .unwrap();
    assert_eq!(vm.metric(metrics::USAGE_MISSING), 1);

    // 4 API events, 2 LLM events for each of the 3 with usage.
    assert!(
        vm.run_until(Duration::from_secs(10), |vm| vm.metric(metrics::DELIVERED)
            == 10)
            .unwrap(),
        "{}",
        common::counters(&vm)
    );
    let events = billing_events(&billing, prefix, 10, Duration::from_secs(15)).await;
    assert_eq!(events.len(), 10);
    let by_id = |id: String| events.iter().find(|e| e["id"] == id).unwrap().clone();
    let tokens = |n: u32, kind: &str| {
        let e = by_id(format!("{prefix}{n:02}:{kind}"));
        assert_eq!(e["type"], "kong.llm_request");
        assert_eq!(e["data"]["type"], kind);
        assert_eq!(e["data"]["api_request_id"], format!("{prefix}{n:02}"));
        (
            e["data"]["tokens"].as_i64().unwrap(),
            e["data"]["model"].as_str().unwrap_or("").to_owned(),
            e["data"]["provider"].as_str().unwrap_or("").to_owned(),
            e["data"].get("usage_complete").cloned(),
        )
    };
    assert_eq!(
        tokens(1, "request"),
        (10, "gpt-4o".into(), "openai".into(), None)
    );
    assert_eq!(tokens(1, "response").0, 5);
    assert_eq!(tokens(2, "request").0, 21);
    assert_eq!(
        tokens(2, "response"),
        (8, "gpt-4o-mini".into(), "openai".into(), None)
    );
    assert_eq!(
        tokens(3, "request"),
        (30, "claude-sonnet-4".into(), "anthropic".into(), None)
    );
    assert_eq!(tokens(3, "response").0, 12);
    // The cut stream: counted, its request's event flagged, no tokens guessed.
    assert!(
        !events
            .iter()
            .any(|e| e["id"] == format!("{prefix}04:response"))
    );
    let api = by_id(format!("{prefix}04"));
    assert_eq!(api["data"]["usage_complete"], false);
    assert!(
        by_id(format!("{prefix}03"))["data"]
            .get("usage_complete")
            .is_none()
    );
    assert_eq!(vm.refused_calls(), 0);
}

async fn post(url: &str, body: Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcement_denies_at_exactly_the_limit_from_the_agents_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path()).unwrap();
    let billing = |p: &str| stack.billing_url(p);
    post(
        &billing("/api/v1/features"),
        json!({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"}),
    )
    .await;
    post(&billing("/api/v1/customers"), json!({"name": "ACME", "key": "acme", "usageAttribution": {"subjectKeys": [format!("consumer:{ACME}")]}})).await;
    post(
        &billing("/api/v2/customers/acme/entitlements"),
        json!({"type": "metered", "featureKey": "api_calls", "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": 3}),
    )
    .await;
    let mut config = config(&stack.agent_http.to_string());
    config["enforcement"] = json!({"feature": {"key": "api_calls"}, "fail_policy": "deny"});
    let mut vm = vm(&config, Flavor::Kong);
    let upstream = ok_json("{}");

    // Before the agent has answered, the fail policy decides (no call on the request path).
    let out = vm
        .exchange(
            &kong_request(ACME, "e0000000000000000000000000000001", "/a"),
            &upstream,
        )
        .unwrap();
    let deny = out.local_response.unwrap();
    assert_eq!(deny.status, 503);
    assert_eq!(
        deny.header("X-Tollgate-Reason"),
        Some("entitlements_unavailable")
    );
    // The next ticks ask the agent about the subject; its value lands in shared data.
    let shared_value = |vm: &mut tollgate_wasm_host::Vm| {
        vm.tick().unwrap();
        vm.poll_calls(Duration::from_millis(200)).unwrap();
        vm.poll_calls(Duration::from_millis(200)).unwrap() == 0
    };
    assert!(vm.run_until(Duration::from_secs(10), shared_value).unwrap());

    // Balance 3: three requests pass, the fourth is refused — exactly at the limit.
    let mut statuses = Vec::new();
    let mut last = None;
    for i in 2..=5 {
        let out = vm
            .exchange(
                &kong_request(ACME, &format!("e00000000000000000000000000000{i:02}"), "/a"),
                &upstream,
            )
            .unwrap();
        statuses.push(out.local_response.as_ref().map_or(200, |r| r.status));
        last = out.local_response;
    }
    assert_eq!(statuses, [200, 200, 200, 429], "{:?}", vm.logs());
    let deny = last.unwrap();
    assert_eq!(
        deny.header("X-Tollgate-Reason"),
        Some("usage_limit_reached")
    );
    assert_eq!(deny.header("X-Tollgate-Feature"), Some("api_calls"));
    assert_eq!(deny.header("X-Tollgate-Balance"), Some("0"));
    assert!(
        deny.header("Content-Type")
            .unwrap()
            .starts_with("application/json")
    );
    let retry_after: i64 = deny.header("Retry-After").unwrap().parse().unwrap();
    assert!(retry_after > 0);
    let body: Value = serde_json::from_slice(&deny.body).unwrap();
    assert_eq!(body["reason"], "usage_limit_reached");
    assert_eq!(body["message"], "Usage limit reached for this feature");
    assert_eq!(body["feature"], "api_calls");
    assert_eq!(body["reset_at"].as_str(), deny.header("X-Tollgate-Reset"));
    assert_eq!(vm.metric(metrics::DENIED), 2);

    // The admitted requests reach the agent; after the next refresh the agent's own value says
    // the balance is spent, and the filter still refuses.
    assert!(
        vm.run_until(Duration::from_secs(10), |vm| vm.metric(metrics::DELIVERED)
            == 3)
            .unwrap()
    );
    let agent_value = format!(
        "http://{}/v1/entitlements?feature=api_calls",
        stack.agent_http
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = reqwest::get(&agent_value)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v[0]["balance"] == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    vm.tick().unwrap();
    while vm.calls_in_flight() > 0 {
        vm.poll_calls(Duration::from_millis(100)).unwrap();
    }
    let out = vm
        .exchange(
            &kong_request(ACME, "e0000000000000000000000000000009", "/a"),
            &upstream,
        )
        .unwrap();
    assert_eq!(out.local_response.map(|r| r.status), Some(429));

    // A customer billing does not know: 403 once the agent has said so.
    let stranger = "99999999-0000-4000-8000-000000000000";
    vm.exchange(
        &kong_request(stranger, "e0000000000000000000000000000010", "/a"),
        &upstream,
    )
    .unwrap();
    vm.tick().unwrap();
    while vm.calls_in_flight() > 0 {
        vm.poll_calls(Duration::from_millis(100)).unwrap();
    }
    let out = vm
        .exchange(
            &kong_request(stranger, "e0000000000000000000000000000011", "/a"),
            &upstream,
        )
        .unwrap();
    let deny = out.local_response.unwrap();
    assert_eq!(
        (deny.status, deny.header("X-Tollgate-Reason")),
        (403, Some("unknown_customer"))
    );
    assert_eq!(vm.refused_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_agent_down_traffic_never_waits_the_outbox_is_bounded_and_failures_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut stack = Stack::start(dir.path()).unwrap();
    let billing = format!("http://{}", stack.billing_addr);
    stack.agent.kill9();
    let mut config = config(&stack.agent_http.to_string());
    config["queue_max"] = json!(20);
    config["batch_max"] = json!(10);
    let mut vm = vm(&config, Flavor::Kong);
    let prefix = "d0d0d0d0d0d0d0d0d0d0d0d0d0";
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let started = Instant::now();
        vm.exchange(
            &kong_request(ACME, &format!("{prefix}{i:03}"), "/x"),
            &ok_json("{}"),
        )
        .unwrap();
        slowest = slowest.max(started.elapsed());
        if i % 10 == 9 {
            // The proxy's timer and event loop between requests.
            vm.tick().unwrap();
            vm.poll_calls(Duration::ZERO).unwrap();
        }
    }
    // Failed calls come back as the agent refuses connections.
    assert!(
        vm.run_until(Duration::from_secs(10), |vm| vm
            .metric(metrics::DELIVERY_FAILURES)
            >= 3)
            .unwrap()
    );
    assert!(
        slowest < Duration::from_millis(50),
        "a request waited {slowest:?}"
    );
    assert_eq!(vm.metric(metrics::DELIVERED), 0);
    // 20 kept, 80 dropped and counted (when they arrived at a full queue, or when a failed batch
    // came back to one).
    assert_eq!(vm.metric(metrics::DROPPED), 80, "{}", common::counters(&vm));
    assert!((20..=100).contains(&vm.metric(metrics::QUEUED)));
    assert!(vm.logs().iter().any(|l| l.contains("delivery of")));

    // The agent is back: what was kept is delivered.
    stack.agent.restart().unwrap();
    tollgate_e2e::stack::wait_tcp(stack.agent_http, Duration::from_secs(20)).unwrap();
    assert!(
        vm.run_until(Duration::from_secs(15), |vm| vm.metric(metrics::DELIVERED)
            == 20)
            .unwrap(),
        "{}",
        common::counters(&vm)
    );
    let events = billing_events(&billing, prefix, 20, Duration::from_secs(30)).await;
    assert_eq!(events.len(), 20);
    assert_eq!(vm.refused_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_keeps_up_with_traffic_faster_than_one_batch_per_tick() {
    // One batch per tick would cap delivery at batch_max / flush_period_ms: 100 events per
    // 500 ms = 200 events/s here, while requests come at up to 1,000/s for 2 s: the outbox
    // (1,000) would fill and drop. A tick's worth of traffic (500) fits in the outbox, and the
    // agent takes a batch of 100 in far less than 100 ms, so nothing may be dropped: after each
    // answer the next full batch goes at once.
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path()).unwrap();
    let billing = format!("http://{}", stack.billing_addr);
    let mut config = config(&stack.agent_http.to_string());
    config["flush_period_ms"] = json!(500);
    config["batch_max"] = json!(100);
    config["queue_max"] = json!(1000);
    let mut vm = vm(&config, Flavor::Kong);
    let prefix = "f2f2f2f2f2f2f2f2f2f2f2f2f2";
    let n = 2_000u32;
    let started = Instant::now();
    for i in 0..n {
        vm.exchange(
            &kong_request(ACME, &format!("{prefix}{i:04}"), "/orders/42"),
            &ok_json("{}"),
        )
        .unwrap();
        // The proxy's timer and event loop between requests.
        vm.tick_if_due().unwrap();
        vm.poll_calls(Duration::ZERO).unwrap();
        let due = started + Duration::from_millis(u64::from(i));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let elapsed = started.elapsed();
    assert!(
        vm.run_until(Duration::from_secs(10), |vm| vm.metric(metrics::DELIVERED)
            + vm.metric(metrics::DROPPED)
            == i64::from(n))
            .unwrap(),
        "{}",
        common::counters(&vm)
    );
    assert_eq!(
        vm.metric(metrics::DROPPED),
        0,
        "{n} requests in {elapsed:?}: {}",
        common::counters(&vm)
    );
    assert_eq!(vm.metric(metrics::DELIVERED), i64::from(n));
    for last in [format!("{prefix}0000"), format!("{prefix}{:04}", n - 1)] {
        let events = billing_events(&billing, &last, 1, Duration::from_secs(15)).await;
        assert_eq!(events.len(), 1, "{last} not in billing");
    }
    assert_eq!(vm.refused_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_agents_intake_takes_goes_through_in_smaller_ones() {
    // The agent's intake refuses bodies over `[sources.http] max_body_bytes` with 413. A filter
    // that retried the refused batch whole would never deliver again (and drop everything once
    // its queue filled): it must split it, and drop only an event that alone is too large.
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start_with_agent_env(
        dir.path(),
        &[("TOLLGATE_AGENT__SOURCES__HTTP__MAX_BODY_BYTES", "4096")],
    )
    .unwrap();
    let billing = format!("http://{}", stack.billing_addr);
    let mut config = config(&stack.agent_http.to_string());
    config["batch_max"] = json!(500);
    let mut vm = vm(&config, Flavor::Kong);
    let prefix = "e1e1e1e1e1e1e1e1e1e1e1e1e1";
    for i in 0..40 {
        vm.exchange(
            &kong_request(ACME, &format!("{prefix}{i:03}"), "/orders/42"),
            &ok_json("{}"),
        )
        .unwrap();
    }
    assert!(
        vm.run_until(Duration::from_secs(20), |vm| vm.metric(metrics::DELIVERED)
            == 40)
            .unwrap(),
        "{} {:?}",
        common::counters(&vm),
        vm.logs()
    );
    assert_eq!(vm.metric(metrics::DROPPED), 0);
    assert!(vm.metric(metrics::DELIVERY_FAILURES) >= 1);
    assert!(
        vm.logs().iter().any(|l| l.contains("as too large (413)")),
        "{:?}",
        vm.logs()
    );
    let events = billing_events(&billing, prefix, 40, Duration::from_secs(15)).await;
    assert_eq!(events.len(), 40);

    // An event that alone exceeds the limit is dropped and counted, and the next ones still go.
    let mut big = kong_request(ACME, &format!("{prefix}big"), "/orders/42");
    big.headers.push(("user-agent".into(), "x".repeat(5000)));
    big.headers
        .retain(|(k, v)| k != "user-agent" || v.len() > 100);
    vm.exchange(&big, &ok_json("{}")).unwrap();
    vm.exchange(
        &kong_request(ACME, &format!("{prefix}after"), "/orders/42"),
        &ok_json("{}"),
    )
    .unwrap();
    assert!(
        vm.run_until(Duration::from_secs(20), |vm| vm.metric(metrics::DELIVERED)
            == 41)
            .unwrap(),
        "{} {:?}",
        common::counters(&vm),
        vm.logs()
    );
    assert_eq!(vm.metric(metrics::DROPPED), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_envoy_ids_come_from_x_request_id_and_integer_properties_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path()).unwrap();
    let billing = format!("http://{}", stack.billing_addr);
    let mut vm = vm(&config(&stack.agent_http.to_string()), Flavor::Envoy);
    let id = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a";
    let req = tollgate_wasm_host::Request {
        method: "PUT".into(),
        path: "/orders/7".into(),
        authority: "edge.example.com".into(),
        headers: vec![
            ("x-request-id".into(), id.into()),
            ("x-consumer-id".into(), ACME.into()),
        ],
        body: vec![b"{\"qty\":2}".to_vec()],
        properties: vec![
            ("xds.route_name".into(), b"orders".to_vec()),
            ("xds.cluster_name".into(), b"orders-backend".to_vec()),
        ],
        client: "[2001:db8::7]:40000".into(),
    };
    vm.exchange(&req, &ok_json("{\"ok\":true}")).unwrap();
    assert!(
        vm.run_until(Duration::from_secs(10), |vm| vm.metric(metrics::DELIVERED)
            == 1)
            .unwrap(),
        "{}",
        common::counters(&vm)
    );
    let events = billing_events(&billing, id, 1, Duration::from_secs(15)).await;
    assert_eq!(events.len(), 1);
    let d = &events[0]["data"];
    assert_eq!(events[0]["id"], id);
    assert_eq!(d["request_method"], "PUT");
    assert_eq!(d["route_name"], "orders");
    assert_eq!(d["service_name"], "orders-backend");
    assert_eq!(d["client_ip"], "2001:db8::7");
    // Envoy's sizes are 8-byte integers: read as numbers, not text.
    assert!(d["request_size_bytes"].as_i64().unwrap() > 9);
    assert!(d["response_size_bytes"].as_i64().unwrap() > 11);
}
