//! `[sources.http]`: OpenMeter's ingest paths on the real agent binary, with reqwest and with
//! OpenMeter's own Python SDK as clients: 204/202 only once durable, every invalid event named
//! with its field and nothing of that request stored, a full buffer answered 503 + Retry-After.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn ids(prefix: &str, n: usize) -> HashSet<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_openmeter_body_shape_is_taken_and_delivered() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&write_config(dir.path(), &receiver.url(), ""));

    let (s, _, body) = post_to(
        agent.http,
        "/api/v1/events",
        "application/cloudevents+json",
        cloudevent("one").to_string(),
    )
    .await;
    assert_eq!((s, body.as_str()), (204, ""));
    let batch: Vec<Value> = (0..50).map(|i| cloudevent(&format!("b-{i}"))).collect();
    let (s, _, _) = post_to(
        agent.http,
        "/api/v1/events",
        "application/cloudevents-batch+json",
        Value::Array(batch).to_string(),
    )
    .await;
    assert_eq!(s, 204);
    let (s, _, _) = post_to(
        agent.http,
        "/api/v1/events",
        "application/json; charset=utf-8",
        cloudevent("plain").to_string(),
    )
    .await;
    assert_eq!(s, 204);
    let (s, _, _) = post_to(
        agent.http,
        "/api/v1/events",
        "application/json",
        json!([cloudevent("arr-0"), cloudevent("arr-1")]).to_string(),
    )
    .await;
    assert_eq!(s, 204);
    let (s, _, _) = post_to(
        agent.http,
        "/api/v3/openmeter/events",
        "application/cloudevents+json",
        cloudevent("v3").to_string(),
    )
    .await;
    assert_eq!(s, 202, "the v3 path answers as OpenMeter v3 / Konnect do");
    // No time: the agent stamps the time it received the event.
    let mut untimed = cloudevent("untimed");
    untimed.as_object_mut().unwrap().remove("time");
    let (s, _, _) = post_to(
        agent.http,
        "/api/v1/events",
        "application/cloudevents+json",
        untimed.to_string(),
    )
    .await;
    assert_eq!(s, 204);

    let mut want = ids("b", 50);
    want.extend(["one", "plain", "arr-0", "arr-1", "v3", "untimed"].map(String::from));
    receiver.wait_for_ids(&want, Duration::from_secs(20)).await;
    let events = receiver.received.lock().unwrap().events.clone();
    let one = events.iter().find(|e| e["id"] == "one").unwrap();
    assert_eq!(one["source"], "app-1");
    assert_eq!(one["type"], "jobs");
    assert_eq!(one["subject"], "customer-1");
    assert_eq!(one["time"], "2026-11-24T10:00:00Z");
    assert_eq!(one["data"], json!({"seconds": 3, "id": "one"}));
    let untimed = events.iter().find(|e| e["id"] == "untimed").unwrap();
    let t = chrono::DateTime::parse_from_rfc3339(untimed["time"].as_str().unwrap()).unwrap();
    assert!((chrono::Utc::now() - t.to_utc()).num_seconds().abs() < 60);
    assert_eq!(events.len(), want.len(), "each event delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_event_names_its_index_and_field_and_nothing_of_the_request_is_stored() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&write_config(dir.path(), &receiver.url(), ""));

    let cases: Vec<(Value, usize, &str)> = vec![
        (json!({"id": ""}), 1, "id"),
        (json!({"id": null}), 1, "id"),
        (json!({"source": 7}), 1, "source"),
        (json!({"type": null}), 1, "type"),
        (json!({"subject": null}), 1, "subject"),
        (json!({"specversion": null}), 1, "specversion"),
        (json!({"specversion": "0.3"}), 1, "specversion"),
        (json!({"time": "24/11/2026"}), 1, "time"),
        (json!({"data": [1, 2]}), 1, "data"),
    ];
    for (k, (patch, index, field)) in cases.into_iter().enumerate() {
        let mut bad = cloudevent(&format!("bad-{k}"));
        for (key, v) in patch.as_object().unwrap() {
            if v.is_null() {
                bad.as_object_mut().unwrap().remove(key);
            } else {
                bad[key] = v.clone();
            }
        }
        let body = json!([cloudevent(&format!("kept-out-{k}")), bad]).to_string();
        let (s, headers, text) = post_to(
            agent.http,
            "/api/v1/events",
            "application/cloudevents-batch+json",
            body,
        )
        .await;
        assert_eq!(s, 400, "{field}: {text}");
        assert_eq!(headers["content-type"], "application/problem+json");
        let problem: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(problem["status"], 400);
        assert_eq!(problem["errors"][0]["event"], index, "{text}");
        assert_eq!(problem["errors"][0]["field"], field, "{text}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("event {index}: {field}")),
            "{detail}"
        );
    }
    for (ct, body, want) in [
        ("application/json", "{\"id\": ".to_owned(), "malformed JSON"),
        ("application/json", "[]".to_owned(), "no events"),
        (
            "application/cloudevents+json",
            json!([cloudevent("x")]).to_string(),
            "one event",
        ),
        (
            "application/cloudevents-batch+json",
            cloudevent("x").to_string(),
            "array",
        ),
    ] {
        let (s, _, text) = post_to(agent.http, "/api/v1/events", ct, body).await;
        assert_eq!(s, 400, "{text}");
        assert!(text.contains(want), "{text}");
    }
    let (s, _, text) = post_to(
        agent.http,
        "/api/v1/events",
        "text/plain",
        cloudevent("x").to_string(),
    )
    .await;
    assert_eq!(s, 415, "{text}");

    // A good request after them arrives; the good events of the refused requests never do.
    let (s, _, _) = post_to(
        agent.http,
        "/api/v1/events",
        "application/cloudevents+json",
        cloudevent("after").to_string(),
    )
    .await;
    assert_eq!(s, 204);
    receiver
        .wait_for_ids(
            &HashSet::from(["after".to_owned()]),
            Duration::from_secs(20),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.ids(), HashSet::from(["after".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_answers_503_with_retry_after_and_a_token_is_enforced_when_set() {
    let receiver = Receiver::start().await;
    receiver.behaviour.lock().unwrap().fail_500 = usize::MAX;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&write_config(
        dir.path(),
        &receiver.url(),
        "[buffer]\nmax_bytes = 1048576\n[sources]\nhttp = { token = \"s3cret\" }\n",
    ));
    let send = |body: String, auth: Option<&'static str>| {
        let mut r = http()
            .post(format!("http://{}/api/v1/events", agent.http))
            .header("content-type", "application/cloudevents-batch+json")
            .body(body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let one = json!([cloudevent("t")]).to_string();
    assert_eq!(send(one.clone(), None).await.unwrap().status(), 401);
    assert_eq!(
        send(one.clone(), Some("Bearer wrong"))
            .await
            .unwrap()
            .status(),
        401
    );
    // The destination refuses everything: the 1 MiB buffer fills.
    let mut accepted = HashSet::new();
    let mut full = None;
    for b in 0..200 {
        let batch: Vec<Value> = (0..100)
            .map(|i| {
                let mut e = cloudevent(&format!("f-{b}-{i}"));
                e["data"]["pad"] = json!("x".repeat(200));
                e
            })
            .collect();
        let r = send(Value::Array(batch).to_string(), Some("Bearer s3cret"))
            .await
            .unwrap();
        match r.status().as_u16() {
            204 => accepted.extend((0..100).map(|i| format!("f-{b}-{i}"))),
            503 => {
                full = Some((
                    r.headers()["retry-after"].to_str().unwrap().to_owned(),
                    r.text().await.unwrap(),
                ));
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let (retry_after, text) = full.expect("the buffer filled");
    assert!(retry_after.parse::<u64>().unwrap() >= 1);
    assert!(text.contains("full"), "{text}");
    assert!(!accepted.is_empty());
    // The destination recovers: everything acknowledged arrives, and room comes back.
    receiver.behaviour.lock().unwrap().fail_500 = 0;
    receiver
        .wait_for_ids(&accepted, Duration::from_secs(60))
        .await;
    let (_, metrics) = agent.get("/metrics").await;
    assert!(
        metrics.contains("tollgate_agent_events_dropped_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmeters_python_sdk_ingests_through_the_agent() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&write_config(dir.path(), &receiver.url(), ""));
    let out = run_python(
        "openmeter_ingest.py",
        &[format!("http://{}", agent.http), "sdk".into()],
    );
    assert!(out.contains("sdk: ok"), "{out}");
    let want = ids("sdk", 21);
    receiver.wait_for_ids(&want, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.ids(), want, "the invalid event was not stored");
    let events = receiver.received.lock().unwrap().events.clone();
    let e = events.iter().find(|e| e["id"] == "sdk-7").unwrap();
    assert_eq!(
        (e["source"].as_str(), e["subject"].as_str()),
        (Some("sdk-app"), Some("customer-sdk"))
    );
    assert_eq!(e["data"]["seconds"], 7);
}
