//! Subscriptions reach the gateway with no restart and no manual step: the real billing service
//! (on real time, its scheduler running every second), agent and both plugin servers, configured
//! from `kong-config/deck/04-route-limit.yaml`. A customer on a free plan of 100 calls a month
//! gets the 101st request answered 429; changed to a paid plan with 10,000 calls, requests are
//! admitted again within one sync interval; canceled immediately, the gateway refuses (403, no
//! access) within one interval. A second customer's trial (3 calls, a 5-second phase of a custom
//! plan) turns into the paid phase at its boundary, and the gateway follows within the
//! scheduler's and the agent's intervals.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::kong::pdk::RequestPdk;
use tollgate_e2e::kong::serialize::{KongRequest, KongVersion};
use tollgate_e2e::kong::worker::{PhaseOutcome, PluginEntity, Worker};
use tollgate_e2e::stack::{Stack, workspace_root};
use tollgate_e2e::traffic::now_ms;

const ACME: &str = "5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f";
const GLOBEX: &str = "8a7b6c5d-4e3f-4a1b-9c2d-0e1f2a3b4c5d";
/// The agent's sync interval in this test.
const SYNC: Duration = Duration::from_millis(500);
/// What "within one interval" allows beyond the interval itself: the request that changes the
/// subscription, the agent's fetch and the Watch push to the plugin, on a loaded test machine.
const SLACK: Duration = Duration::from_millis(700);

async fn post(url: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(status.is_success(), "{url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn deck(name: &str) -> Vec<PluginEntity> {
    tollgate_e2e::deck::plugins(
        &workspace_root().join("kong-config/deck/04-route-limit.yaml"),
        name,
    )
    .unwrap()
}

fn request(consumer: &str, username: &str, i: usize) -> KongRequest {
    let mut r = KongRequest::get(KongVersion::V3_9, &format!("/reports/{i}"))
        .with_consumer(consumer, username);
    r.started_at_ms = now_ms();
    r
}

fn calls_card(n: u32) -> Value {
    json!({"type": "flat_fee", "key": "api_calls", "name": "API calls", "featureKey": "api_calls",
           "billingCadence": "P1M", "price": null,
           "entitlementTemplate": {"type": "metered", "issueAfterReset": n, "usagePeriod": "P1M"}})
}

struct Gate {
    access: Worker,
    log: Worker,
    limit: PluginEntity,
    meter: PluginEntity,
}

impl Gate {
    /// One request through Kong's access phase and, when admitted, its log phase.
    async fn request(&self, consumer: &str, username: &str, i: usize) -> PhaseOutcome {
        let req = request(consumer, username, i);
        let pdk = |phase| RequestPdk {
            request: &req,
            phase,
        };
        let out = self
            .access
            .run_phase(&self.limit, "access", &pdk("access"))
            .await
            .unwrap();
        if out == PhaseOutcome::Returned {
            self.log
                .run_phase(&self.meter, "log", &pdk("log"))
                .await
                .unwrap();
        }
        out
    }

    /// Sends requests until `want` holds for the outcome; how long that took (panics after
    /// `within`).
    async fn until(
        &self,
        consumer: &str,
        username: &str,
        within: Duration,
        want: impl Fn(&PhaseOutcome) -> bool,
    ) -> Duration {
        let started = Instant::now();
        let mut i = 10_000;
        loop {
            i += 1;
            let out = self.request(consumer, username, i).await;
            if want(&out) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "the gateway never followed within {within:?}: last {out:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn status(out: &PhaseOutcome) -> Option<i64> {
    match out {
        PhaseOutcome::Exited { status, .. } => Some(*status),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_a_subscription_through_change_cancel_and_a_trial_ending() {
    let dir = tempfile::tempdir().unwrap();
    let sync_ms = SYNC.as_millis().to_string();
    let stack = Stack::start_with_agent_env(
        dir.path(),
        &[(
            "TOLLGATE_AGENT__ENTITLEMENTS__SYNC_INTERVAL_MS",
            sync_ms.as_str(),
        )],
    )
    .unwrap();
    let _enforcement = stack.start_enforcement().unwrap();
    let billing = |p: &str| stack.billing_url(p);
    post(
        &billing("/api/v1/features"),
        json!({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"}),
    )
    .await;
    for (key, consumer) in [("acme", ACME), ("globex", GLOBEX)] {
        post(
            &billing("/api/v1/customers"),
            json!({"name": key, "key": key,
            "usageAttribution": {"subjectKeys": [format!("consumer:{consumer}")]}}),
        )
        .await;
    }
    for (key, calls) in [("free", 100), ("paid", 10_000)] {
        let plan = post(&billing("/api/v1/plans"), json!({"key": key, "name": key, "currency": "USD",
            "billingCadence": "P1M",
            "phases": [{"key": key, "name": key, "duration": null, "rateCards": [calls_card(calls)]}]}))
        .await;
        post(
            &billing(&format!(
                "/api/v1/plans/{}/publish",
                plan["id"].as_str().unwrap()
            )),
            json!({}),
        )
        .await;
    }
    let gate = Gate {
        access: Worker::new(stack.enforcement_socket()),
        log: Worker::new(stack.socket()),
        limit: deck("tollgate-enforcement").remove(0),
        meter: deck("tollgate").remove(0),
    };

    // The free plan: exactly 100 requests pass, the 101st is answered 429.
    let sub = post(
        &billing("/api/v1/subscriptions"),
        json!({"customerKey": "acme", "plan": {"key": "free"}}),
    )
    .await;
    let mut passed = 0;
    let mut first_blocked = None;
    for i in 0..101 {
        match gate.request(ACME, "acme", i).await {
            PhaseOutcome::Returned => passed += 1,
            out => {
                first_blocked.get_or_insert((i, status(&out)));
            }
        }
    }
    assert_eq!(passed, 100, "the free plan's 100 calls pass");
    assert_eq!(
        first_blocked,
        Some((100, Some(429))),
        "the 101st request is a 429"
    );

    // Changed to the paid plan: admitted again within one sync interval.
    let id = sub["id"].as_str().unwrap();
    let changed = post(
        &billing(&format!("/api/v1/subscriptions/{id}/change")),
        json!({"timing": "immediate", "plan": {"key": "paid"}}),
    )
    .await;
    let took = gate
        .until(ACME, "acme", SYNC * 4, |o| *o == PhaseOutcome::Returned)
        .await;
    assert!(took <= SYNC + SLACK, "admitted after {took:?}");

    // Canceled immediately: no access (403) within one interval.
    let next = changed["next"]["id"].as_str().unwrap();
    let canceled = post(
        &billing(&format!("/api/v1/subscriptions/{next}/cancel")),
        json!({"timing": "immediate"}),
    )
    .await;
    assert_eq!(canceled["status"], "inactive", "{canceled}");
    let took = gate
        .until(ACME, "acme", SYNC * 4, |o| status(o) == Some(403))
        .await;
    assert!(took <= SYNC + SLACK, "refused after {took:?}");

    // A trial of 3 calls for 5 seconds, then the paid phase: the 4th trial call is a 429, and
    // once the trial ends the gateway admits again within the scheduler's and agent's intervals.
    let trial = post(&billing("/api/v1/subscriptions"), json!({"customerKey": "globex", "customPlan": {
        "name": "Trial then paid", "currency": "USD", "billingCadence": "P1M",
        "phases": [
            {"key": "trial", "name": "Trial", "duration": "PT5S", "rateCards": [calls_card(3)]},
            {"key": "paid", "name": "Paid", "duration": null, "rateCards": [calls_card(10_000)]}]}}))
    .await;
    let trial_end = chrono::DateTime::parse_from_rfc3339(trial["activeFrom"].as_str().unwrap())
        .unwrap()
        + chrono::Duration::seconds(5);
    let outcomes: Vec<Option<i64>> = futures_outcomes(&gate, 4).await;
    assert_eq!(
        outcomes,
        [None, None, None, Some(429)],
        "3 trial calls, then 429"
    );
    gate.until(GLOBEX, "globex", Duration::from_secs(10), |o| {
        *o == PhaseOutcome::Returned
    })
    .await;
    let late = chrono::Utc::now().signed_duration_since(trial_end);
    assert!(
        late >= chrono::Duration::zero(),
        "admitted before the trial ended ({late})"
    );
    assert!(
        late <= chrono::Duration::milliseconds(1000 + (SYNC + SLACK).as_millis() as i64),
        "the paid phase reached the gateway {late} after the trial ended"
    );
}

/// `n` sequential GLOBEX requests' outcomes (None = admitted, else the status).
async fn futures_outcomes(gate: &Gate, n: usize) -> Vec<Option<i64>> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(status(&gate.request(GLOBEX, "globex", 500 + i).await));
    }
    out
}
