//! What subscriptions cost at scale, each figure beside its floor in the same run (SQLite, the
//! real binary over HTTP, release build, real time with the scheduler's runner every second):
//!
//! * Creating: `POST /api/v1/subscriptions` for N customers (each provisions one metered
//!   entitlement from the plan's template) beside `POST /api/v2/customers/{{c}}/entitlements`
//!   creating the same entitlement by hand for N other customers (the peer: the entitlement
//!   alone, through the entitlement API as it is).
//! * A boundary: N subscriptions scheduled to start at one instant — how long after it the
//!   runner has provisioned all N entitlements (from its own log line).
//! * Idle: the billing process's CPU per second with the runner ticking over N subscriptions,
//!   beside the same process's CPU before any subscription existed.
//!
//! Run: `cargo bench -p tollgate-billing --bench subscriptions [-- N]` (default 10000).

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::{Billing, cpu_seconds, post};

fn start(dir: &std::path::Path) -> Billing {
    Billing::start_logging(dir, &[], &dir.join("billing.log"))
}

fn calls(n: u32) -> Value {
    json!({"type": "flat_fee", "key": "api_calls", "name": "API calls", "featureKey": "api_calls",
           "billingCadence": "P1M", "price": null,
           "entitlementTemplate": {"type": "metered", "issueAfterReset": n, "usagePeriod": "P1M"}})
}

/// `f(i)` for i in 0..n over 4 connections; wall seconds.
async fn run<F, Fut>(n: usize, f: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                f(i).await;
                i += 4;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let b = start(&dir.path().join("data"));
    let c = reqwest::Client::new();
    let base = b.base.clone();
    println!("tollgate-billing subscriptions at N = {n}, SQLite, real time, runner every 1 s");
    post(
        &c,
        format!("{base}/api/v1/meters"),
        json!({"slug": "calls", "eventType": "call", "aggregation": "COUNT"}),
    )
    .await;
    post(
        &c,
        format!("{base}/api/v1/features"),
        json!({"key": "api_calls", "name": "API calls", "meterSlug": "calls"}),
    )
    .await;
    let plan = post(&c, format!("{base}/api/v1/plans"), json!({"key": "free", "name": "Free", "currency": "USD",
        "billingCadence": "P1M", "phases": [{"key": "free", "name": "Free", "duration": null, "rateCards": [calls(100)]}]})).await;
    post(
        &c,
        format!(
            "{base}/api/v1/plans/{}/publish",
            plan["id"].as_str().unwrap()
        ),
        json!({}),
    )
    .await;

    // Customers: s{i} get subscriptions, e{i} entitlements by hand, t{i} trials.
    let t = Instant::now();
    for prefix in ["s", "e", "t"] {
        let (c, base) = (c.clone(), base.clone());
        run(n, move |i| {
            let (c, base) = (c.clone(), base.clone());
            async move {
                post(
                    &c,
                    format!("{base}/api/v1/customers"),
                    json!({"name": "c", "key": format!("{prefix}{i}")}),
                )
                .await;
            }
        })
        .await;
    }
    println!(
        "setup: {} customers in {:.1} s",
        3 * n,
        t.elapsed().as_secs_f64()
    );

    let pid = b.child.id();
    let cpu0 = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_empty = (cpu_seconds(pid) - cpu0) / 10.0;

    let (cc, bb) = (c.clone(), base.clone());
    let subs = run(n, move |i| {
        let (c, base) = (cc.clone(), bb.clone());
        async move {
            post(
                &c,
                format!("{base}/api/v1/subscriptions"),
                json!({"customerKey": format!("s{i}"), "plan": {"key": "free"}}),
            )
            .await;
        }
    })
    .await;
    let (cc, bb) = (c.clone(), base.clone());
    let ents = run(n, move |i| {
        let (c, base) = (cc.clone(), bb.clone());
        async move {
            post(&c, format!("{base}/api/v2/customers/e{i}/entitlements"), json!({"type": "metered",
                "featureKey": "api_calls", "usagePeriod": {"interval": "P1M"}, "issueAfterReset": 100})).await;
        }
    })
    .await;
    println!("| create, 4 connections | per second | µs each |");
    println!("|---|---:|---:|");
    println!(
        "| subscription from a plan (provisions 1 entitlement) | {:.0} | {:.0} |",
        n as f64 / subs,
        subs * 1e6 / n as f64
    );
    println!(
        "| peer: the same entitlement by hand, `POST /api/v2/customers/{{c}}/entitlements` | {:.0} | {:.0} |",
        n as f64 / ents,
        ents * 1e6 / n as f64
    );
    println!("ratio subscription / entitlement time: {:.2}x", subs / ents);

    // N subscriptions scheduled to start at one instant, created well before it.
    let start_in = subs * 1.5 + 10.0;
    let t0 = chrono::Utc::now() + chrono::Duration::milliseconds((start_in * 1000.0) as i64);
    let t0_instant = Instant::now() + Duration::from_secs_f64(start_in);
    let (cc, bb) = (c.clone(), base.clone());
    let created = run(n, move |i| {
        let (c, base) = (cc.clone(), bb.clone());
        async move {
            post(
                &c,
                format!("{base}/api/v1/subscriptions"),
                json!({"customerKey": format!("t{i}"),
                "plan": {"key": "free"}, "timing": t0.to_rfc3339()}),
            )
            .await;
        }
    })
    .await;
    assert!(
        Instant::now() < t0_instant,
        "created after the start: raise start_in"
    );
    // Idle with 2N subscriptions and 2N entitlements, before the start.
    let window = ((t0_instant - Instant::now()).as_secs_f64() - 0.5).min(10.0);
    let cpu0 = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs_f64(window)).await;
    let idle_full = (cpu_seconds(pid) - cpu0) / window;
    println!();
    println!("| idle billing (runner ticking), CPU seconds per second | |");
    println!("|---|---:|");
    println!("| no subscriptions (floor) | {idle_empty:.4} |");
    println!(
        "| {} subscriptions ({n} scheduled), {} entitlements | {idle_full:.4} |",
        2 * n,
        2 * n
    );
    tokio::time::sleep(t0_instant.saturating_duration_since(Instant::now())).await;
    // The runner logs each instant it reconciled, with the time it finished: wait for N changes.
    let cpu0 = cpu_seconds(pid);
    let log = dir.path().join("data/billing.log");
    let done = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let runs: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "subscription entitlements reconciled")
            .collect();
        let changes: u64 = runs.iter().filter_map(|v| v["changes"].as_u64()).sum();
        if changes >= n as u64 {
            let last = runs.last().unwrap()["timestamp"]
                .as_str()
                .unwrap()
                .to_owned();
            break chrono::DateTime::parse_from_rfc3339(&last).unwrap();
        }
        assert!(
            Instant::now() < t0_instant + Duration::from_secs(900),
            "never provisioned: {changes}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = (done.with_timezone(&chrono::Utc) - t0).num_milliseconds() as f64 / 1000.0;
    println!();
    println!(
        "{n} subscriptions starting at one instant (created in {created:.1} s): all provisioned {took:.2} s \
         after it, runner tick ≤ 1 s included ({:.1} CPU s)",
        cpu_seconds(pid) - cpu0
    );
}
