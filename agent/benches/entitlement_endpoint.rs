//! Latency of the agent's local entitlement endpoint at a fixed 5,000 requests/s (p50/p99), beside
//! the same server's `/healthz` at the same rate in the same run (the floor of its HTTP stack).
//! The central service is a small in-bench HTTP server answering OpenMeter's value path once per
//! subject; every measured request is answered from the agent's cache.
//!
//! Run: `cargo bench -p tollgate-agent --bench entitlement_endpoint`.

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::*;
use serde_json::json;

const RATE: u64 = 5_000;
const SECONDS: u64 = 5;
const SUBJECTS: usize = 1_000;

async fn central() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/api/v1/features", get(|| async { axum::Json(json!([{"key": "api_calls", "meterSlug": "calls"}])) }))
        .route(
            "/api/v1/meters/{slug}",
            get(|| async { axum::Json(json!({"slug": "calls", "eventType": "kong.api_request", "aggregation": "COUNT", "groupBy": {}})) }),
        )
        .route(
            "/api/v1/subjects/{s}/entitlements/{f}/value",
            get(|| async { axum::Json(json!({"hasAccess": true, "balance": 900.0, "usage": 100.0, "overage": 0.0})) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// Paced requests from 8 tasks; returns sorted latencies in µs.
async fn paced(urls: Vec<String>) -> Vec<u64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()
        .unwrap();
    let tasks = 8u64;
    let per_task = RATE * SECONDS / tasks;
    let interval = Duration::from_micros(1_000_000 * tasks / RATE);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (client, urls) = (client.clone(), urls.clone());
        handles.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut lat = Vec::with_capacity(per_task as usize);
            for i in 0..per_task {
                tick.tick().await;
                let url = &urls[((t * per_task + i) as usize) % urls.len()];
                let started = Instant::now();
                let resp = client.get(url).send().await.unwrap();
                assert!(resp.status().is_success());
                let _ = resp.bytes().await.unwrap();
                lat.push(started.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort_unstable();
    all
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let central = central().await;
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::start(&write_config(dir.path(), &central, "[entitlements]\nsync_interval_ms = 60000\nfeatures = [\"api_calls\"]\n"));
        let urls: Vec<String> = (0..SUBJECTS).map(|i| format!("http://{}/v1/entitlements/consumer:{i}/api_calls", agent.http)).collect();
        // Warm the cache: one read-through per subject.
        let client = reqwest::Client::new();
        for u in &urls {
            assert!(client.get(u).send().await.unwrap().status().is_success());
        }
        let floor = paced(vec![format!("http://{}/healthz", agent.http)]).await;
        let ent = paced(urls).await;
        println!("tollgate-agent local entitlement endpoint at {RATE} req/s for {SECONDS} s, {SUBJECTS} subjects cached, 2 cores");
        println!("{:<44} {:>9} {:>9} {:>9}", "run", "p50 µs", "p99 µs", "max µs");
        println!("{:<44} {:>9} {:>9} {:>9}", "GET /healthz (HTTP floor)", pct(&floor, 0.5), pct(&floor, 0.99), floor[floor.len() - 1]);
        println!("{:<44} {:>9} {:>9} {:>9}", "GET /v1/entitlements/{subject}/{feature}", pct(&ent, 0.5), pct(&ent, 0.99), ent[ent.len() - 1]);
        println!("p99 entitlement / p99 floor: {:.2}x", pct(&ent, 0.99) as f64 / pct(&floor, 0.99).max(1) as f64);
    });
}
