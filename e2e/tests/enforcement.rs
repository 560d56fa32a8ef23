//! `tollgate-enforcement` in Kong's access phase, with the real billing service, agent and both
//! plugin servers, configured from `kong-config/deck/04-route-limit.yaml`: a COUNT limit of 100
//! lets exactly 100 requests through and answers the 101st with 429, body and headers (with
//! Retry-After up to billing's usage-period end); a grant at
//! billing restores access within a sync interval; a missing boolean feature is a 403; with the
//! agent gone the fail policy decides once the snapshot is stale.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rmpv::Value as Mp;
use serde_json::{Value, json};
use tollgate_e2e::kong::pdk::RequestPdk;
use tollgate_e2e::kong::serialize::{KongRequest, KongVersion};
use tollgate_e2e::kong::worker::{PhaseOutcome, PluginEntity, Worker};
use tollgate_e2e::stack::{Stack, workspace_root};
use tollgate_e2e::traffic::now_ms;

const ACME: &str = "5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f";

async fn post(url: &str, body: Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "{url}: {} {}",
        r.status(),
        r.text().await.unwrap_or_default()
    );
}

fn deck(name: &str) -> Vec<PluginEntity> {
    tollgate_e2e::deck::plugins(
        &workspace_root().join("kong-config/deck/04-route-limit.yaml"),
        name,
    )
    .unwrap()
}

fn request(i: usize) -> KongRequest {
    let mut r =
        KongRequest::get(KongVersion::V3_9, &format!("/reports/{i}")).with_consumer(ACME, "acme");
    r.started_at_ms = now_ms();
    r
}

fn header(headers: &Mp, name: &str) -> Option<String> {
    headers
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .and_then(|(_, v)| v.as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_limit_passes_then_429_until_a_grant_restores_access() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start_with_agent_env(
        dir.path(),
        &[("TOLLGATE_AGENT__ENTITLEMENTS__SYNC_INTERVAL_MS", "500")],
    )
    .unwrap();
    let _enforcement = stack.start_enforcement().unwrap();
    let billing = |p: &str| stack.billing_url(p);
    post(
        &billing("/api/v1/features"),
        json!({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"}),
    )
    .await;
    post(
        &billing("/api/v1/features"),
        json!({"key": "admin_console", "name": "Admin console"}),
    )
    .await;
    post(&billing("/api/v1/customers"), json!({"name": "ACME", "key": "acme", "usageAttribution": {"subjectKeys": [format!("consumer:{ACME}")]}})).await;
    post(
        &billing("/api/v2/customers/acme/entitlements"),
        json!({"type": "metered", "featureKey": "api_calls", "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": 100}),
    )
    .await;

    let meter = deck("tollgate").remove(0);
    let enforce = deck("tollgate-enforcement");
    let (limit, admin) = (&enforce[0], &enforce[1]);
    let access = Worker::new(stack.enforcement_socket());
    let log = Worker::new(stack.socket());

    // A customer's very first request is decided right (the agent is asked once, not treated as
    // unknown), then every admitted request is metered in the log phase as Kong would.
    let mut passed = 0;
    let mut blocked = None;
    for i in 0..130 {
        let req = request(i);
        match access
            .run_phase(
                limit,
                "access",
                &RequestPdk {
                    request: &req,
                    phase: "access",
                },
            )
            .await
            .unwrap()
        {
            PhaseOutcome::Returned => {
                passed += 1;
                log.run_phase(
                    &meter,
                    "log",
                    &RequestPdk {
                        request: &req,
                        phase: "log",
                    },
                )
                .await
                .unwrap();
            }
            exited => {
                blocked.get_or_insert((i, exited));
            }
        }
    }
    assert_eq!(passed, 100, "exactly the limit passes on one gateway");
    let (first_blocked, exited) = blocked.unwrap();
    assert_eq!(
        first_blocked, 100,
        "the 101st request is the first one blocked"
    );
    let PhaseOutcome::Exited {
        status,
        body,
        headers,
    } = exited
    else {
        unreachable!()
    };
    assert_eq!(status, 429);
    let body_reason = body
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str() == Some("reason"))
        .map(|(_, v)| v.as_str().unwrap().to_owned());
    assert_eq!(body_reason.as_deref(), Some("usage_limit_reached"));
    assert_eq!(
        header(&headers, "X-Tollgate-Feature").as_deref(),
        Some("api_calls")
    );
    assert_eq!(header(&headers, "X-Tollgate-Balance").as_deref(), Some("0"));
    // When usage resets: billing's current usage period end, as Retry-After and a timestamp.
    let entitlement: Value = reqwest::get(billing("/api/v2/customers/acme/entitlements/api_calls"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let period_end = chrono::DateTime::parse_from_rfc3339(
        entitlement["currentUsagePeriod"]["to"].as_str().unwrap(),
    )
    .unwrap();
    let reset = header(&headers, "X-Tollgate-Reset").expect("X-Tollgate-Reset on a 429");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(&reset)
            .unwrap()
            .timestamp_millis(),
        period_end.timestamp_millis()
    );
    let retry_after: i64 = header(&headers, "Retry-After")
        .expect("Retry-After on a 429")
        .parse()
        .unwrap();
    let expected = (period_end.timestamp_millis() - chrono::Utc::now().timestamp_millis()) / 1000;
    assert!(
        retry_after > 0 && (retry_after - expected).abs() <= 5,
        "Retry-After {retry_after} s, period ends in {expected} s"
    );

    // Billing sees exactly the 100 admitted requests.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = reqwest::get(billing(
            "/api/v2/customers/acme/entitlements/api_calls/value",
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        if v["usage"] == 100.0 {
            assert_eq!(v["hasAccess"], false);
            break;
        }
        assert!(Instant::now() < deadline, "billing: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A grant at billing: access is back within about one sync interval.
    let effective = chrono::Utc::now() - chrono::Duration::minutes(1);
    post(
        &billing("/api/v2/customers/acme/entitlements/api_calls/grants"),
        json!({"amount": 20, "priority": 1, "effectiveAt": effective}),
    )
    .await;
    let started = Instant::now();
    loop {
        let req = request(1000);
        let out = access
            .run_phase(
                limit,
                "access",
                &RequestPdk {
                    request: &req,
                    phase: "access",
                },
            )
            .await
            .unwrap();
        if out == PhaseOutcome::Returned {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "access not restored after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A boolean feature the customer does not have: 403.
    let req = request(2000);
    let out = access
        .run_phase(
            admin,
            "access",
            &RequestPdk {
                request: &req,
                phase: "access",
            },
        )
        .await
        .unwrap();
    let PhaseOutcome::Exited { status, .. } = out else {
        panic!("admin console must be denied: {out:?}")
    };
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_agent_gone_the_fail_policy_decides_once_the_snapshot_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let mut stack = Stack::start_with_agent_env(
        dir.path(),
        &[("TOLLGATE_AGENT__ENTITLEMENTS__SYNC_INTERVAL_MS", "500")],
    )
    .unwrap();
    let _enforcement = stack.start_enforcement().unwrap();
    let billing = |p: &str| stack.billing_url(p);
    post(
        &billing("/api/v1/features"),
        json!({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"}),
    )
    .await;
    post(&billing("/api/v1/customers"), json!({"name": "ACME", "key": "acme", "usageAttribution": {"subjectKeys": [format!("consumer:{ACME}")]}})).await;
    post(&billing("/api/v2/customers/acme/entitlements"), json!({"type": "metered", "featureKey": "api_calls", "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": 1000})).await;
    let mut deny = deck("tollgate-enforcement").remove(0);
    deny.config["fail_policy"] = json!("deny");
    deny.config["max_stale_seconds"] = json!(1);
    let mut allow = deny.clone();
    allow.id = uuid::Uuid::new_v4().to_string();
    allow.config["fail_policy"] = json!("allow");
    let access = Worker::new(stack.enforcement_socket());
    let req = request(1);
    assert_eq!(
        access
            .run_phase(
                &deny,
                "access",
                &RequestPdk {
                    request: &req,
                    phase: "access"
                }
            )
            .await
            .unwrap(),
        PhaseOutcome::Returned
    );

    stack.agent.kill9();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let out = access
        .run_phase(
            &deny,
            "access",
            &RequestPdk {
                request: &req,
                phase: "access",
            },
        )
        .await
        .unwrap();
    let PhaseOutcome::Exited { status, .. } = out else {
        panic!("fail_policy deny must deny: {out:?}")
    };
    assert_eq!(status, 503);
    assert_eq!(
        access
            .run_phase(
                &allow,
                "access",
                &RequestPdk {
                    request: &req,
                    phase: "access"
                }
            )
            .await
            .unwrap(),
        PhaseOutcome::Returned,
        "fail_policy allow lets it through"
    );

    // The agent comes back: decisions from fresh values again.
    stack.agent.restart().unwrap();
    tollgate_e2e::stack::wait_tcp(stack.agent_grpc, Duration::from_secs(20)).unwrap();
    let started = Instant::now();
    loop {
        let out = access
            .run_phase(
                &deny,
                "access",
                &RequestPdk {
                    request: &req,
                    phase: "access",
                },
            )
            .await
            .unwrap();
        if out == PhaseOutcome::Returned {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no recovery: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Admits requests on one gateway until `stop`, metering each admitted one; returns how many.
async fn gateway_traffic(
    access_socket: std::path::PathBuf,
    log_socket: std::path::PathBuf,
    limit: PluginEntity,
    meter: PluginEntity,
    offset: usize,
    stop: Arc<AtomicBool>,
) -> (usize, usize) {
    let (access, log) = (Worker::new(access_socket), Worker::new(log_socket));
    let (mut admitted, mut sent) = (0, 0);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let req = request(offset + i);
        i += 1;
        sent += 1;
        if access
            .run_phase(
                &limit,
                "access",
                &RequestPdk {
                    request: &req,
                    phase: "access",
                },
            )
            .await
            .unwrap()
            == PhaseOutcome::Returned
        {
            admitted += 1;
            log.run_phase(
                &meter,
                "log",
                &RequestPdk {
                    request: &req,
                    phase: "log",
                },
            )
            .await
            .unwrap();
        }
    }
    (admitted, sent)
}

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_overshoot_within_the_stated_bound() {
    const LIMIT: usize = 300;
    const SYNC_MS: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let sync = SYNC_MS.to_string();
    let env = [(
        "TOLLGATE_AGENT__ENTITLEMENTS__SYNC_INTERVAL_MS",
        sync.as_str(),
    )];
    let stack = Stack::start_with_agent_env(&dir.path().join("a"), &env).unwrap();
    let _enforcement = stack.start_enforcement().unwrap();
    let second = stack.add_gateway(&dir.path().join("b"), &env).unwrap();
    let billing = |p: &str| stack.billing_url(p);
    post(
        &billing("/api/v1/features"),
        json!({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"}),
    )
    .await;
    post(&billing("/api/v1/customers"), json!({"name": "ACME", "key": "acme", "usageAttribution": {"subjectKeys": [format!("consumer:{ACME}")]}})).await;
    post(
        &billing("/api/v2/customers/acme/entitlements"),
        json!({"type": "metered", "featureKey": "api_calls", "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": LIMIT}),
    )
    .await;
    let meter = deck("tollgate").remove(0);
    let limit = deck("tollgate-enforcement").remove(0);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let a = tokio::spawn(gateway_traffic(
        stack.enforcement_socket(),
        stack.socket(),
        limit.clone(),
        meter.clone(),
        0,
        stop.clone(),
    ));
    let b = tokio::spawn(gateway_traffic(
        second.kong_prefix.join("tollgate-enforcement.socket"),
        second.kong_prefix.join("tollgate.socket"),
        limit,
        meter,
        1_000_000,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let ((admitted_a, sent_a), (admitted_b, sent_b)) = (a.await.unwrap(), b.await.unwrap());
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = admitted_a + admitted_b;
    let rate = (sent_a + sent_b) as f64 / elapsed;
    // The README's bound: (N−1) × total request rate × (sync interval + flush interval).
    let flush_ms = 100.0;
    let bound = (2.0 - 1.0) * rate * (SYNC_MS as f64 + flush_ms) / 1000.0;
    let overshoot = admitted.saturating_sub(LIMIT) as f64;
    eprintln!(
        "admitted {admitted} ({admitted_a} + {admitted_b}) of limit {LIMIT}; rate {rate:.0} req/s; overshoot {overshoot} ≤ bound {bound:.0}"
    );
    assert!(
        admitted >= LIMIT,
        "the limit itself is reachable: {admitted}"
    );
    assert!(
        overshoot <= bound,
        "overshoot {overshoot} over the bound {bound:.0}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_billing_down_the_fail_policy_decides_once_values_are_stale_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut stack = Stack::start_with_agent_env(
        dir.path(),
        &[("TOLLGATE_AGENT__ENTITLEMENTS__SYNC_INTERVAL_MS", "300")],
    )
    .unwrap();
    let _enforcement = stack.start_enforcement().unwrap();
    let billing = |p: &str| stack.billing_url(p);
    post(
        &billing("/api/v1/features"),
        json!({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"}),
    )
    .await;
    post(&billing("/api/v1/customers"), json!({"name": "ACME", "key": "acme", "usageAttribution": {"subjectKeys": [format!("consumer:{ACME}")]}})).await;
    post(&billing("/api/v2/customers/acme/entitlements"), json!({"type": "metered", "featureKey": "api_calls", "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": 1000})).await;
    let mut deny = deck("tollgate-enforcement").remove(0);
    deny.config["fail_policy"] = json!("deny");
    deny.config["max_stale_seconds"] = json!(1);
    let access = Worker::new(stack.enforcement_socket());
    let req = request(1);
    assert_eq!(
        access
            .run_phase(
                &deny,
                "access",
                &RequestPdk {
                    request: &req,
                    phase: "access"
                }
            )
            .await
            .unwrap(),
        PhaseOutcome::Returned
    );

    // The agent is up but cannot refresh: its values age past max_stale_seconds.
    stack.billing.kill9();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let out = access
        .run_phase(
            &deny,
            "access",
            &RequestPdk {
                request: &req,
                phase: "access",
            },
        )
        .await
        .unwrap();
    let PhaseOutcome::Exited { status, .. } = out else {
        panic!("stale values with fail_policy deny must deny: {out:?}")
    };
    assert_eq!(status, 503);

    stack.billing.restart().unwrap();
    tollgate_e2e::stack::wait_tcp(stack.billing_addr, Duration::from_secs(20)).unwrap();
    let started = Instant::now();
    loop {
        if access
            .run_phase(
                &deny,
                "access",
                &RequestPdk {
                    request: &req,
                    phase: "access",
                },
            )
            .await
            .unwrap()
            == PhaseOutcome::Returned
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no recovery after billing came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_limit_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start_with_agent_env(
        dir.path(),
        &[("TOLLGATE_AGENT__ENTITLEMENTS__SYNC_INTERVAL_MS", "300")],
    )
    .unwrap();
    let _enforcement = stack.start_enforcement().unwrap();
    let billing = |p: &str| stack.billing_url(p);
    post(
        &billing("/api/v1/features"),
        json!({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"}),
    )
    .await;
    post(&billing("/api/v1/customers"), json!({"name": "ACME", "key": "acme", "usageAttribution": {"subjectKeys": [format!("consumer:{ACME}")]}})).await;
    post(
        &billing("/api/v2/customers/acme/entitlements"),
        json!({"type": "metered", "featureKey": "api_calls", "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": 5, "isSoftLimit": true}),
    )
    .await;
    let meter = deck("tollgate").remove(0);
    let limit = deck("tollgate-enforcement").remove(0);
    let (access, log) = (
        Worker::new(stack.enforcement_socket()),
        Worker::new(stack.socket()),
    );
    for i in 0..20 {
        let req = request(i);
        let out = access
            .run_phase(
                &limit,
                "access",
                &RequestPdk {
                    request: &req,
                    phase: "access",
                },
            )
            .await
            .unwrap();
        assert_eq!(
            out,
            PhaseOutcome::Returned,
            "request {i} of a soft limit of 5 was blocked"
        );
        log.run_phase(
            &meter,
            "log",
            &RequestPdk {
                request: &req,
                phase: "log",
            },
        )
        .await
        .unwrap();
    }
}
