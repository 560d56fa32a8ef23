//! The agent's entitlement cache against the real billing service, with traffic through the real
//! plugin server: read-through for a new subject, local accounting that takes buffered usage off
//! the balance before billing has it, the OpenMeter-shaped path on the sidecar, 404 for unknown
//! features, the Watch stream's snapshot, and a grant at billing restoring access within one sync.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::kong::pdk::RequestPdk;
use tollgate_e2e::kong::serialize::{KongRequest, KongVersion};
use tollgate_e2e::kong::worker::Worker;
use tollgate_e2e::stack::{Stack, workspace_root};
use tollgate_proto::v1::WatchRequest;
use tollgate_proto::v1::entitlements_client::EntitlementsClient;

const ACME: &str = "5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f";

async fn post(url: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.json().await.unwrap_or(Value::Null)
}

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls the agent until `pred` holds for the value (or panics after `within`).
async fn until(url: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, v) = get(url).await;
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "never reached the expected state; last: {v}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_synced_values_minus_local_usage() {
    let dir = tempfile::tempdir().unwrap();
    // A long sync interval: anything that moves faster than it is local accounting.
    let stack = Stack::start_with_agent_env(
        dir.path(),
        &[("TOLLGATE_AGENT__ENTITLEMENTS__SYNC_INTERVAL_MS", "60000")],
    )
    .unwrap();
    let billing = |p: &str| stack.billing_url(p);
    post(
        &billing("/api/v1/features"),
        json!({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"}),
    )
    .await;
    post(
        &billing("/api/v1/features"),
        json!({"key": "sso", "name": "SSO"}),
    )
    .await;
    post(&billing("/api/v1/customers"), json!({"name": "ACME", "key": "acme", "usageAttribution": {"subjectKeys": [format!("consumer:{ACME}")]}})).await;
    post(
        &billing("/api/v2/customers/acme/entitlements"),
        json!({"type": "metered", "featureKey": "api_calls", "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": 100}),
    )
    .await;
    post(
        &billing("/api/v2/customers/acme/entitlements"),
        json!({"type": "boolean", "featureKey": "sso"}),
    )
    .await;

    let agent = |p: &str| format!("http://{}{p}", stack.agent_http);
    let subject = format!("consumer:{ACME}");
    // A subject the agent has never seen: read-through, right away.
    let v = until(
        &agent(&format!("/v1/entitlements/{subject}/api_calls")),
        Duration::from_secs(5),
        |v| v["balance"] == 100.0,
    )
    .await;
    assert_eq!(v["has_access"], true);
    assert_eq!(v["kind"], "metered");
    let (s, sso) = get(&agent(&format!("/v1/entitlements/{subject}/sso"))).await;
    assert_eq!(
        (s, &sso["kind"], &sso["has_access"]),
        (200, &json!("boolean"), &json!(true)),
        "{sso}"
    );
    let (s, missing) = get(&agent(&format!(
        "/v1/entitlements/{subject}/no_such_feature"
    )))
    .await;
    assert_eq!(s, 404, "{missing}");

    // The Watch stream starts with a snapshot that holds the value.
    let mut watch = EntitlementsClient::connect(format!("http://{}", stack.agent_grpc))
        .await
        .unwrap()
        .watch(WatchRequest {
            feature_keys: vec!["api_calls".into()],
            client: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert!(first.snapshot);
    assert!(
        first
            .entries
            .iter()
            .any(|e| e.subject == subject && e.balance == 100.0),
        "{first:?}"
    );

    // 60 requests through Kong: the agent takes them off the balance before billing is asked.
    let plugin = tollgate_e2e::deck::plugins(
        &workspace_root().join("kong-config/deck/01-consumers-key-auth.yaml"),
        "tollgate",
    )
    .unwrap()
    .remove(0);
    let worker = Worker::new(stack.socket());
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    for i in 0..60 {
        let mut req = KongRequest::get(KongVersion::V3_9, &format!("/orders/{i}"))
            .with_consumer(ACME, "acme");
        req.started_at_ms = now_ms();
        worker
            .run_phase(
                &plugin,
                "log",
                &RequestPdk {
                    request: &req,
                    phase: "log",
                },
            )
            .await
            .unwrap();
    }
    let v = until(
        &agent(&format!("/v1/entitlements/{subject}/api_calls")),
        Duration::from_secs(5),
        |v| v["usage"] == 60.0,
    )
    .await;
    assert_eq!(v["balance"], 40.0, "{v}");
    // And the Watch stream carried the change.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let update = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if update
            .entries
            .iter()
            .any(|e| e.subject == subject && e.balance < 100.0)
        {
            break;
        }
        assert!(Instant::now() < deadline);
    }

    // 50 more: over the hard limit, on the sidecar's own OpenMeter-shaped path too.
    for i in 60..110 {
        let mut req = KongRequest::get(KongVersion::V3_8, &format!("/orders/{i}"))
            .with_consumer(ACME, "acme");
        req.started_at_ms = now_ms();
        worker
            .run_phase(
                &plugin,
                "log",
                &RequestPdk {
                    request: &req,
                    phase: "log",
                },
            )
            .await
            .unwrap();
    }
    let om = format!("/api/v1/subjects/{subject}/entitlements/api_calls/value");
    let v = until(&agent(&om), Duration::from_secs(5), |v| v["usage"] == 110.0).await;
    assert_eq!(
        (
            v["hasAccess"].as_bool(),
            v["balance"].as_f64(),
            v["overage"].as_f64()
        ),
        (Some(false), Some(0.0), Some(10.0)),
        "{v}"
    );
    // Billing agrees once the agent delivered.
    let central = until(
        &billing("/api/v2/customers/acme/entitlements/api_calls/value"),
        Duration::from_secs(10),
        |v| v["usage"] == 110.0,
    )
    .await;
    assert_eq!(central["hasAccess"], false);
    // The sidecar's v2 customer path, for OpenMeter's SDKs pointed at it.
    let (s, v2) = get(&agent(
        "/api/v2/customers/acme/entitlements/api_calls/value",
    ))
    .await;
    assert_eq!(s, 200, "{v2}");
    assert_eq!(
        (v2["hasAccess"].as_bool(), v2["usage"].as_f64()),
        (Some(false), Some(110.0)),
        "{v2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_at_billing_restores_access_within_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start_with_agent_env(
        dir.path(),
        &[("TOLLGATE_AGENT__ENTITLEMENTS__SYNC_INTERVAL_MS", "500")],
    )
    .unwrap();
    let billing = |p: &str| stack.billing_url(p);
    post(
        &billing("/api/v1/features"),
        json!({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"}),
    )
    .await;
    post(&billing("/api/v1/customers"), json!({"name": "ACME", "key": "acme", "usageAttribution": {"subjectKeys": [format!("consumer:{ACME}")]}})).await;
    post(
        &billing("/api/v2/customers/acme/entitlements"),
        json!({"type": "metered", "featureKey": "api_calls", "usagePeriod": {"interval": "MONTH"}}),
    )
    .await;
    let agent = |p: &str| format!("http://{}{p}", stack.agent_http);
    let url = agent(&format!("/v1/entitlements/consumer:{ACME}/api_calls"));
    let v = until(&url, Duration::from_secs(5), |v| v["kind"] == "metered").await;
    assert_eq!(v["has_access"], false, "no grant: no access {v}");
    let effective = chrono::Utc::now() - chrono::Duration::minutes(1);
    post(
        &billing("/api/v2/customers/acme/entitlements/api_calls/grants"),
        json!({"amount": 50, "priority": 1, "effectiveAt": effective}),
    )
    .await;
    let started = Instant::now();
    let v = until(&url, Duration::from_secs(5), |v| v["has_access"] == true).await;
    assert_eq!(v["balance"], 50.0);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "within about one sync interval: {:?}",
        started.elapsed()
    );
    assert_eq!(v["stale"], false);
}
