//! What the simulated clock costs, each figure beside its floor in the same run (SQLite, the real
//! binary over HTTP, release build):
//!
//! * Reading "now": `GET …/entitlements/{f}/value` on the simulated clock (one more read of the
//!   clock's document per request) beside the same request on real time, same data.
//! * Advancing: `POST /api/tollgate/v1/clock` across many usage-period boundaries (hourly
//!   entitlements over a year: each boundary is a due item run in time order and reported) beside
//!   an advance with nothing due (the floor: the lease and the final compare-and-set).
//!
//! Run: `cargo bench -p tollgate-billing --bench clock [-- ENTITLEMENTS]` (default 40).

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Instant;

use serde_json::{Value, json};

mod common;

use common::{Billing, post};

fn start(dir: &std::path::Path, simulated: bool) -> Billing {
    Billing::start(
        dir,
        if simulated {
            &["--simulated-clock"]
        } else {
            &[]
        },
    )
}

/// A customer with `n` metered entitlements (`interval`) and some usage.
async fn setup(c: &reqwest::Client, b: &Billing, n: usize, interval: &str) {
    post(
        c,
        format!("{}/api/v1/meters", b.base),
        json!({"slug": "calls", "eventType": "call", "aggregation": "COUNT"}),
    )
    .await;
    post(
        c,
        format!("{}/api/v1/customers", b.base),
        json!({"name": "ACME", "key": "acme"}),
    )
    .await;
    for i in 0..n {
        post(
            c,
            format!("{}/api/v1/features", b.base),
            json!({"key": format!("f{i}"), "name": "f", "meterSlug": "calls"}),
        )
        .await;
        post(
            c,
            format!("{}/api/v2/customers/acme/entitlements", b.base),
            json!({"type": "metered", "featureKey": format!("f{i}"),
                   "usagePeriod": {"interval": interval}, "issue": {"amount": 100}}),
        )
        .await;
    }
    let events: Vec<Value> = (0..100)
        .map(|i| json!({"id": format!("e{i}"), "source": "bench", "type": "call", "subject": "acme"}))
        .collect();
    let r = c
        .post(format!("{}/api/v1/events", b.base))
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::Array(events).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

/// Values per second, 2 clients back to back for `secs`.
async fn values_per_s(c: &reqwest::Client, b: &Billing, secs: f64) -> f64 {
    let url = format!("{}/api/v2/customers/acme/entitlements/f0/value", b.base);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                let r = c.get(&url).send().await.unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(40);
    let c = reqwest::Client::new();
    println!("tollgate-billing's simulated clock, SQLite, 2 cores");

    // Reading now: the same requests, alternating real and simulated four times each (the
    // machine is shared: the best round of each).
    let (real_dir, sim_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..8 {
        let simulated = round % 2 == 1;
        let b = start(
            if simulated {
                sim_dir.path()
            } else {
                real_dir.path()
            },
            simulated,
        );
        if round < 2 {
            setup(&c, &b, 1, "MONTH").await;
        }
        rates[usize::from(simulated)].push(values_per_s(&c, &b, 2.0).await);
    }
    let best = |v: &Vec<f64>| v.iter().cloned().fold(0.0, f64::max);
    let (real, sim) = (best(&rates[0]), best(&rates[1]));
    println!("| entitlement value, real time | {real:.0} requests/s | 1.00x |");
    println!(
        "| entitlement value, simulated clock | {sim:.0} requests/s | {:.2}x |",
        sim / real
    );

    // Advancing.
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), true);
    let clock = format!("{}/api/tollgate/v1/clock", b.base);
    let mut floor = f64::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        let v = post(&c, clock.clone(), json!({"advanceBy": "PT1M"})).await;
        assert_eq!(v["happenedCount"], 0);
        floor = floor.min(t.elapsed().as_secs_f64());
    }
    setup(&c, &b, n, "PT1H").await;
    let t = Instant::now();
    let v = post(&c, clock.clone(), json!({"advanceBy": "P1Y"})).await;
    let secs = t.elapsed().as_secs_f64();
    let items = v["happenedCount"].as_u64().unwrap();
    println!(
        "| advance with nothing due (floor) | {:.2} ms | |",
        floor * 1e3
    );
    println!(
        "| advance P1Y, {n} hourly entitlements: {items} resets | {:.0} ms | {:.0} resets/s |",
        secs * 1e3,
        items as f64 / secs
    );
}
