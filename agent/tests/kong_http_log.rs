//! `[sources.kong_http_log]`: bodies as Kong's bundled http-log plugin posts them — one
//! `kong.log.serialize()` object, or an array when its queue batches — built from the Kong
//! driver's serialize fixtures for every Kong shape (3.4–3.9+), taken by the real agent binary.
//! The same requests also go through the real `tollgate` plugin (log phase played by the Kong
//! driver) into the same agent: both paths make the same events, with the same ids wherever
//! Kong gives a request id (3.6+), so billing's (`source`, `id`) dedup collapses them.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tollgate_e2e::kong::pdk::RequestPdk;
use tollgate_e2e::kong::process::PluginServer;
use tollgate_e2e::kong::serialize::{AiCall, KongRequest, KongVersion};
use tollgate_e2e::kong::worker::{PhaseOutcome, PluginEntity, Worker};

const ALICE: &str = "5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f";

/// The same metering config, in the agent's TOML and in the plugin's decK/JSON form.
const AGENT_SOURCE: &str = r#"
[sources.kong_http_log]
enabled = true
source = "kong-test"
meter_api_requests = true
meter_ai_token_usage = true
subject = { look_up_value_in = "consumer" }
attributes = [{ source = "header", look_up_value_in = "x-team", event_property_name = "team" }]
"#;

fn plugin_config() -> Value {
    json!({"meter_api_requests": true, "meter_ai_token_usage": true,
           "subject": {"look_up_value_in": "consumer", "field": null},
           "attributes": [{"source": "header", "look_up_value_in": "x-team", "event_property_name": "team"}]})
}

fn ai_call(plugin: &str) -> AiCall {
    AiCall {
        plugin: plugin.into(),
        provider: "openai".into(),
        request_model: "gpt-4o".into(),
        response_model: "gpt-4o-2024-08-06".into(),
        prompt_tokens: 120,
        completion_tokens: 45,
        cost: Some(0.0012),
    }
}

/// Per Kong shape: a plain request, one with a team header, and an AI Gateway call.
fn requests() -> Vec<KongRequest> {
    let mut out = Vec::new();
    for (v, version) in KongVersion::ALL.into_iter().enumerate() {
        for k in 0..3 {
            let mut r = KongRequest::get(version, &format!("/orders/{v}-{k}"))
                .with_consumer(ALICE, "alice");
            if k == 1 {
                r = r
                    .with_header("X-Team", "blue")
                    .with_query("expand", "items");
            }
            if k == 2 {
                r = r.with_ai(ai_call(if v % 2 == 0 {
                    "ai-proxy"
                } else {
                    "ai-proxy-advanced"
                }));
            }
            out.push(r);
        }
    }
    out
}

/// An event with what only differs between two metering runs on Kong 3.4 (no request id:
/// each run generates one) blanked out.
fn without_generated_id(e: &Value) -> String {
    let mut e = e.clone();
    e["id"] = Value::Null;
    if let Some(d) = e["data"].as_object_mut() {
        d.remove("api_request_id");
    }
    e.to_string()
}

fn sorted(events: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = events.iter().map(without_generated_id).collect();
    v.sort();
    v
}

async fn wait_count(receiver: &Receiver, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = receiver.received.lock().unwrap().events.clone();
        if got.len() >= n {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let got = receiver.received.lock().unwrap().events.clone();
            assert_eq!(got.len(), n, "no more than expected");
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} events arrived",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_log_bodies_make_the_plugins_events_with_the_plugins_ids() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&write_config(dir.path(), &receiver.url(), AGENT_SOURCE));
    let reqs = requests();

    // Path 1: the `tollgate` plugin, Kong's log phase played by the driver.
    let kong = dir.path().join("kong");
    std::fs::create_dir_all(&kong).unwrap();
    let mut plugin_server = PluginServer::spawn(
        &tollgate_e2e::stack::binary("tollgate"),
        &[
            "-kong-prefix".into(),
            kong.display().to_string(),
            "--agent".into(),
            agent.grpc_url(),
            "--source".into(),
            "kong-test".into(),
        ],
        &kong.join("tollgate.socket"),
        Duration::from_secs(20),
    )
    .unwrap();
    let worker = Worker::new(kong.join("tollgate.socket"));
    let plugin = PluginEntity {
        name: "tollgate".into(),
        id: uuid::Uuid::new_v4().to_string(),
        config: plugin_config(),
        route_id: None,
        service_id: None,
        seq: 1,
    };
    for r in &reqs {
        let outcome = worker
            .run_phase(
                &plugin,
                "log",
                &RequestPdk {
                    request: r,
                    phase: "log",
                },
            )
            .await
            .unwrap();
        assert_eq!(outcome, PhaseOutcome::Returned);
    }
    // One API event per request, two token events per AI call (3.4 has no AI Gateway analytics).
    let per_path = reqs.len()
        + 2 * reqs
            .iter()
            .filter(|r| r.ai.is_some() && r.version != KongVersion::V3_4)
            .count();
    let from_plugin = wait_count(&receiver, per_path).await;
    plugin_server.kill();

    // Path 2: http-log, the first half one entry per request, the rest in one queue batch.
    let half = reqs.len() / 2;
    for r in &reqs[..half] {
        let (s, _, text) = post_to(
            agent.http,
            "/kong/http-log",
            "application/json",
            r.serialize(),
        )
        .await;
        assert_eq!(s, 200, "{text}");
    }
    let batch = format!(
        "[{}]",
        reqs[half..]
            .iter()
            .map(KongRequest::serialize)
            .collect::<Vec<_>>()
            .join(",")
    );
    let (s, _, text) = post_to(agent.http, "/kong/http-log", "application/json", batch).await;
    assert_eq!(s, 200, "{text}");
    let all = wait_count(&receiver, 2 * per_path).await;
    let from_http_log = &all[per_path..];

    // Same events, field for field; the same ids wherever Kong serializes a request id.
    assert_eq!(sorted(&from_plugin), sorted(from_http_log));
    let ids = |events: &[Value]| -> HashSet<String> {
        events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut with_kong_id = HashSet::new();
    for r in reqs.iter().filter(|r| r.version != KongVersion::V3_4) {
        with_kong_id.insert(r.request_id.clone());
        if let Some(ai) = &r.ai {
            // 3.6's flat shape and 3.9's `ai.proxy` name no plugin; 3.7/3.8 key by plugin.
            let infix = if matches!(r.version, KongVersion::V3_6 | KongVersion::V3_9) {
                String::new()
            } else {
                format!(":{}", ai.plugin)
            };
            for kind in ["request", "response"] {
                with_kong_id.insert(format!("{}{infix}:{kind}", r.request_id));
            }
        }
    }
    let shared: HashSet<String> = ids(&from_plugin)
        .intersection(&ids(from_http_log))
        .cloned()
        .collect();
    assert_eq!(
        shared, with_kong_id,
        "every event of a 3.6+ request has the plugin's id; 3.4 has no request id to share"
    );
    assert!(from_http_log.iter().all(|e| e["source"] == "kong-test"));
    // Spot checks: Kong's field names, our attribute, the token events.
    let by_type: BTreeMap<String, usize> =
        from_http_log.iter().fold(BTreeMap::new(), |mut m, e| {
            *m.entry(e["type"].as_str().unwrap().to_owned()).or_default() += 1;
            m
        });
    assert_eq!(by_type["kong.api_request"], reqs.len());
    assert_eq!(
        by_type["kong.llm_request"],
        2 * (KongVersion::ALL.len() - 1)
    );
    let teamed = from_http_log
        .iter()
        .filter(|e| e["data"]["team"] == "blue")
        .count();
    assert_eq!(teamed, KongVersion::ALL.len());
    assert!(
        from_http_log
            .iter()
            .any(|e| e["data"]["type"] == "request" && e["data"]["tokens"] == 120)
    );
    assert!(
        from_http_log
            .iter()
            .all(|e| e["subject"] == format!("consumer:{ALICE}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_log_bodies_are_400_and_store_nothing_and_subjectless_requests_are_skipped() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&write_config(dir.path(), &receiver.url(), AGENT_SOURCE));
    let good = KongRequest::get(KongVersion::V3_9, "/kept-out")
        .with_consumer(ALICE, "alice")
        .serialize();
    for (body, want) in [
        ("{\"request\": ".to_owned(), "malformed JSON"),
        (format!("[{good}, 42]"), "entry 1"),
        (format!("[{good}, {{\"request\": 5}}]"), "entry 1"),
        ("\u{0}".to_owned(), "malformed JSON"),
    ] {
        let (s, headers, text) =
            post_to(agent.http, "/kong/http-log", "application/json", body).await;
        assert_eq!(s, 400, "{text}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(text.contains(want), "{want}: {text}");
    }
    // Anonymous (no consumer): skipped and counted, as the plugin does; the rest is stored.
    let anonymous = KongRequest::get(KongVersion::V3_9, "/anon").serialize();
    let counted = KongRequest::get(KongVersion::V3_9, "/counted").with_consumer(ALICE, "alice");
    let body = format!("[{anonymous},{}]", counted.serialize());
    let (s, _, _) = post_to(agent.http, "/kong/http-log", "application/json", body).await;
    assert_eq!(s, 200);
    receiver
        .wait_for_ids(
            &HashSet::from([counted.request_id.clone()]),
            Duration::from_secs(20),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.ids(), HashSet::from([counted.request_id.clone()]));
    let (_, metrics) = agent.get("/metrics").await;
    assert!(
        metrics.contains("tollgate_agent_kong_requests_no_subject_total 1"),
        "{metrics}"
    );
}
