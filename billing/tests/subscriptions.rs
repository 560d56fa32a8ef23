//! Subscriptions end to end on the real `tollgate-billing` binary over HTTP: every operation and
//! timing through OpenMeter's Python SDK on the simulated clock (`tests/sdk/subscriptions.py`),
//! and on real time the scheduler's runner provisioning a phase change, a scheduled start and a
//! scheduled cancelation within its interval, catching up after a restart, and — on PostgreSQL
//! (`tests/subscriptions_postgres.rs`) — two replicas running it on one subscription without
//! duplicating an entitlement or a step.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};

mod common;

pub use common::Backend;
use common::{Billing, call, get, post};

/// This file is the suite on SQLite; `tests/subscriptions_postgres.rs` runs it with PostgreSQL.
#[allow(dead_code)]
fn backend() -> Backend {
    Backend::Sqlite
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmeter_python_sdk_drives_every_subscription_operation_and_timing() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::simulated(dir.path());
    common::run_sdk(
        &b,
        "subscriptions.py",
        &[],
        "subscriptions: all steps passed",
    );
}

/// A meter, a metered feature and a boolean one, and a customer.
async fn catalog(b: &Billing, customer: &str) {
    let (s, v) = post(
        b,
        "/api/v1/meters",
        json!({"slug": "api_requests", "eventType": "api_request", "aggregation": "COUNT"}),
    )
    .await;
    assert!(s == 201 || s == 409, "{v}");
    let (s, v) = post(
        b,
        "/api/v1/features",
        json!({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"}),
    )
    .await;
    assert!(s == 201 || s == 409, "{v}");
    let (s, v) = post(
        b,
        "/api/v1/customers",
        json!({"name": customer, "key": customer}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

fn calls(n: u32) -> Value {
    json!({"type": "flat_fee", "key": "api_calls", "name": "API calls", "featureKey": "api_calls",
           "billingCadence": "P1M", "price": null,
           "entitlementTemplate": {"type": "metered", "issueAfterReset": n, "usagePeriod": "P1M"}})
}

/// A custom plan whose phases last `seconds` each (custom plans keep warnings such as a phase
/// under an hour: this is how real time is tested), the last one open-ended.
fn short_phases(customer: &str, allowances: &[u32], seconds: u32) -> Value {
    let phases: Vec<Value> = allowances
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let last = i + 1 == allowances.len();
            json!({"key": format!("p{i}"), "name": format!("Phase {i}"),
                   "duration": if last { Value::Null } else { json!(format!("PT{seconds}S")) },
                   "rateCards": [calls(*n)]})
        })
        .collect();
    json!({"customerKey": customer, "customPlan": {"name": "Short", "currency": "USD",
           "billingCadence": "P1M", "phases": phases}})
}

/// The customer's entitlements.
async fn entitlements(b: &Billing, customer: &str) -> Vec<Value> {
    get(b, &format!("/api/v2/customers/{customer}/entitlements")).await["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// Polls until the customer's api_calls allowance is `n` (or panics after `within`).
async fn until_allowance(b: &Billing, customer: &str, n: Option<u64>, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let ents = entitlements(b, customer).await;
        let now = ents
            .iter()
            .find(|e| e["featureKey"] == "api_calls")
            .and_then(|e| e["issueAfterReset"].as_f64())
            .map(|f| f as u64);
        if now == n {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "allowance never became {n:?}: {ents:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_real_time_the_runner_follows_phases_starts_and_cancelations_within_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Billing::start(dir.path(), "scheduler_interval_ms = 200\n", None);
    catalog(&b, "acme").await;
    let (s, sub) = post(
        &b,
        "/api/v1/subscriptions",
        short_phases("acme", &[5, 50], 2),
    )
    .await;
    assert_eq!(s, 201, "{sub}");
    let started = Instant::now();
    until_allowance(&b, "acme", Some(5), Duration::from_secs(1)).await;
    let at = until_allowance(&b, "acme", Some(50), Duration::from_secs(5)).await;
    let took = at - started;
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(3500),
        "the 2 s phase ended within the interval: {took:?}"
    );
    assert_eq!(
        entitlements(&b, "acme").await.len(),
        1,
        "replaced, not added"
    );
    let id = sub["id"].as_str().unwrap();

    // A scheduled subscription starts when its time comes, for a second customer.
    catalog(&b, "globex").await;
    let start = Utc::now() + chrono::Duration::seconds(2);
    let body = json!({"customerKey": "globex", "timing": start.to_rfc3339(), "customPlan": {
        "name": "Later", "currency": "USD", "billingCadence": "P1M",
        "phases": [{"key": "only", "name": "Only", "duration": null, "rateCards": [calls(7)]}]}});
    let (s, later) = post(&b, "/api/v1/subscriptions", body).await;
    assert_eq!(
        (s, later["status"].as_str()),
        (201, Some("scheduled")),
        "{later}"
    );
    assert!(entitlements(&b, "globex").await.is_empty());
    until_allowance(&b, "globex", Some(7), Duration::from_secs(5)).await;
    assert!(Utc::now() >= start, "not before its start");

    // Killed, the runner catches up on restart with what fell due while it was down: a phase
    // that ended while billing was away.
    let (s, v) = post(
        &b,
        "/api/v1/subscriptions",
        short_phases("initech", &[1, 2], 1),
    )
    .await;
    assert_eq!(s, 400, "no such customer yet: {v}");
    catalog(&b, "initech").await;
    let (s, v) = post(
        &b,
        "/api/v1/subscriptions",
        short_phases("initech", &[1, 2], 2),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    until_allowance(&b, "initech", Some(1), Duration::from_secs(1)).await;
    b.kill9();
    std::thread::sleep(Duration::from_millis(2500));
    let b2 = Billing::start(dir.path(), "", None);
    until_allowance(&b2, "initech", Some(2), Duration::from_secs(3)).await;

    // An immediate cancelation ends the entitlement at once.
    let (s, v) = post(
        &b2,
        &format!("/api/v1/subscriptions/{id}/cancel"),
        json!({"timing": "immediate"}),
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("inactive")), "{v}");
    assert!(entitlements(&b2, "acme").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_act_on_one_subscription_without_duplicating_entitlements() {
    let dir = tempfile::tempdir().unwrap();
    let a = Billing::start(dir.path(), "scheduler_interval_ms = 50\n", None);
    // On PostgreSQL a second replica on the same database runs the scheduler too.
    let second = (crate::backend() == Backend::Postgres)
        .then(|| Billing::start(dir.path(), "", Some(tollgate_e2e::stack::free_port())));
    let replicas: Vec<&Billing> = std::iter::once(&a).chain(second.as_ref()).collect();
    catalog(&a, "acme").await;
    let allowances: Vec<u32> = (1..=6).collect();
    let (s, sub) = post(
        &a,
        "/api/v1/subscriptions",
        short_phases("acme", &allowances, 1),
    )
    .await;
    assert_eq!(s, 201, "{sub}");
    let id = sub["id"].as_str().unwrap().to_owned();
    // While the phases roll over, both replicas keep reading and are asked to act on the same
    // subscription at once (a cancelation and its unscheduling racing on both).
    let deadline = Instant::now() + Duration::from_secs(7);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        for b in &replicas {
            let ents = entitlements(b, "acme").await;
            assert!(
                ents.len() <= 1,
                "never two entitlements for one feature: {ents:?}"
            );
            seen.extend(
                ents.iter()
                    .filter_map(|e| e["issueAfterReset"].as_f64())
                    .map(|f| f as u32),
            );
        }
        let racing = replicas.iter().map(|b| {
            let path = format!("/api/v1/subscriptions/{id}/cancel");
            async move { post(b, &path, json!({"timing": "next_billing_cycle"})).await }
        });
        for (s, v) in futures::future::join_all(racing).await {
            assert!(s == 200 || s == 409, "{v}");
        }
        let racing = replicas.iter().map(|b| {
            let path = format!("/api/v1/subscriptions/{id}/unschedule-cancelation");
            async move { post(b, &path, json!({})).await }
        });
        for (s, v) in futures::future::join_all(racing).await {
            assert!(s == 200 || s == 409, "{v}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_allowance(&a, "acme", Some(6), Duration::from_secs(3)).await;

    // Creates for one customer racing on both replicas: one subscription at most, never two, and
    // no entitlement left behind by a create that was taken back.
    catalog(&a, "globex").await;
    for round in 0..5 {
        let racing = (0..4).map(|i| {
            let b = replicas[i % replicas.len()];
            async move { post(b, "/api/v1/subscriptions", short_phases("globex", &[9], 1)).await }
        });
        let answers = futures::future::join_all(racing).await;
        let created: Vec<&Value> = answers
            .iter()
            .filter(|(s, _)| *s == 201)
            .map(|(_, v)| v)
            .collect();
        for (s, v) in &answers {
            assert!(*s == 201 || *s == 409, "{v}");
        }
        assert!(
            created.len() <= 1,
            "round {round}: two subscriptions at once: {created:?}"
        );
        // Both may see each other and step back (safe; the client retries): never two.
        let live = get(&a, "/api/v1/customers/globex/subscriptions?status=active").await;
        assert_eq!(live["totalCount"], created.len(), "round {round}: {live}");
        if let Some(id) = live["items"][0]["id"].as_str() {
            let (s, v) = post(&a, &format!("/api/v1/subscriptions/{id}/cancel"), json!({})).await;
            assert_eq!(s, 200, "{v}");
        }
        // A runner on the other replica may have written from a copy read before the
        // cancelation; it reads the subscription again after writing and ends what it wrote.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let ents = entitlements(&a, "globex").await;
            if ents.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let sid = ents[0]["annotations"]["subscription.id"].as_str().unwrap();
                let (_, _, sub) =
                    call(&a, "GET", &format!("/api/v1/subscriptions/{sid}"), None).await;
                panic!(
                    "round {round}: {answers:?}\nleft behind: {ents:?}\nits subscription: {sub}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    seen.dedup();
    assert_eq!(seen.first(), Some(&1), "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "phases in order, none twice: {seen:?}"
    );
    let expanded = get(&a, &format!("/api/v1/subscriptions/{id}")).await;
    assert_eq!(expanded["status"], "active", "{expanded}");
    for b in &replicas {
        let ents = entitlements(b, "acme").await;
        assert_eq!(ents.len(), 1, "{ents:?}");
        assert_eq!(ents[0]["annotations"]["subscription.id"], id.as_str());
    }
}
