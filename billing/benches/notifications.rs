//! What notifications cost, each figure beside its floor in the same run (SQLite, the real binary
//! over HTTP, release build, real time):
//!
//! * **Ingest is not slowed by webhooks.** The same events ingested into two fresh billing
//!   processes with the same customers and entitlements: one with no notification rule, one
//!   with a balance-threshold rule (50/80/100 %) whose channel points at a receiver that accepts
//!   connections and never answers (every delivery waits out its 10 s timeout). Ingest rate of
//!   the second over the first (the mean of a process with no rule run before it and one after).
//! * **Evaluation lag.** On the second process: from the last ingest request answered to every
//!   customer's 100 % threshold event recorded in the outbox.
//! * **Delivery.** A third process whose channel points at a fast receiver (answers 204 at once)
//!   that holds every request until the outbox has all its events (a backlog), then opens:
//!   deliveries per second from then until the receiver holds every event, beside the bench
//!   POSTing the same number of signed payloads to the same receiver itself, as many at a time as
//!   billing sends to one channel (`delivery::PER_CHANNEL`) — the raw limit of a signed POST here.
//!
//! Run: `cargo bench -p tollgate-billing --bench notifications [-- [delivery] CUSTOMERS EVENTS]`
//! (default 1000 customers, 200000 events: each customer's 100-call allowance is crossed twice
//! over; `delivery` runs the delivery figure only). `-- backlog N` runs the delivery figure alone
//! on a backlog of N events made without ingest — N test sends of the rule
//! (`POST /api/v1/notification/rules/{id}/test`, one event each) — to show how delivery scales
//! with the backlog's size.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::{Billing, post};

/// Each customer's allowance.
const LIMIT: u32 = 100;
/// Billing's delivery worker sends this many at once to one channel, and so does the raw peer.
const CONCURRENCY: usize = tollgate_billing::notification::delivery::PER_CHANNEL;

struct Scratch {
    billing: Billing,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Scratch {
    type Target = Billing;
    fn deref(&self) -> &Billing {
        &self.billing
    }
}

/// A fresh billing on a scratch directory.
fn start() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    Scratch {
        billing: Billing::start(dir.path(), &[]),
        _dir: dir,
    }
}

/// A meter and feature, and `customers` customers each subscribed to a custom plan giving a
/// metered allowance of [`LIMIT`] calls a month (subscriptions provision entitlements fastest).
async fn setup(b: &Billing, customers: usize) {
    let c = reqwest::Client::new();
    post(
        &c,
        format!("{}/api/v1/meters", b.base),
        json!({"slug": "calls", "eventType": "call", "aggregation": "COUNT"}),
    )
    .await;
    post(
        &c,
        format!("{}/api/v1/features", b.base),
        json!({"key": "calls", "name": "Calls", "meterSlug": "calls"}),
    )
    .await;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (c, base) = (c.clone(), b.base.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..customers).step_by(4) {
                let key = format!("c{i}");
                post(
                    &c,
                    format!("{base}/api/v1/customers"),
                    json!({"name": key, "key": key, "usageAttribution": {"subjectKeys": [key]}}),
                )
                .await;
                post(
                    &c,
                    format!("{base}/api/v1/subscriptions"),
                    json!({
                    "customerKey": key,
                    "customPlan": {"name": "Calls", "currency": "USD", "billingCadence": "P1M",
                        "phases": [{"key": "only", "name": "Only", "duration": null, "rateCards": [
                            {"type": "flat_fee", "key": "calls", "name": "Calls",
                             "featureKey": "calls", "billingCadence": "P1M", "price": null,
                             "entitlementTemplate": {"type": "metered",
                                 "issueAfterReset": LIMIT, "usagePeriod": "P1M"}}]}]}}),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A webhook channel to `url` and a threshold rule at 50/80/100 % on it; the channel's secret.
async fn rule(b: &Billing, url: &str) -> String {
    rule_and_id(b, url).await.0
}

/// [`rule`], with the rule's id.
async fn rule_and_id(b: &Billing, url: &str) -> (String, String) {
    let c = reqwest::Client::new();
    let channel = post(
        &c,
        format!("{}/api/v1/notification/channels", b.base),
        json!({"type": "WEBHOOK", "name": "bench", "url": url}),
    )
    .await;
    let rule = post(
        &c,
        format!("{}/api/v1/notification/rules", b.base),
        json!({"type": "entitlements.balance.threshold", "name": "limits",
               "channels": [channel["id"]],
               "thresholds": [{"type": "PERCENT", "value": 50}, {"type": "PERCENT", "value": 80},
                              {"type": "PERCENT", "value": 100}]}),
    )
    .await;
    (
        channel["signingSecret"].as_str().unwrap().to_owned(),
        rule["id"].as_str().unwrap().to_owned(),
    )
}

/// `n` test sends of rule `id` (one event each, one delivery to its channel), 8 at a time.
async fn test_sends(b: &Billing, id: &str, n: usize) {
    let c = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, next) = (c.clone(), next.clone());
        let url = format!("{}/api/v1/notification/rules/{id}/test", b.base);
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                post(&c, url.clone(), json!({})).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Request bodies of 500 events each, round-robin over the customers, time-stamped now.
fn bodies(events: usize, customers: usize) -> Vec<bytes::Bytes> {
    let now = chrono::Utc::now();
    (0..events)
        .step_by(500)
        .map(|i| {
            let batch: Vec<Value> = (i..(i + 500).min(events))
                .map(|j| {
                    json!({"specversion": "1.0", "id": format!("e{j}"), "source": "bench",
                           "type": "call", "subject": format!("c{}", j % customers), "time": now})
                })
                .collect();
            bytes::Bytes::from(serde_json::to_vec(&batch).unwrap())
        })
        .collect()
}

async fn ingest(b: &Billing, bodies: &[bytes::Bytes], events: usize) -> f64 {
    common::ingest(&b.base, bodies, events).await
}

/// How many customers have their 100 % threshold event recorded.
async fn customers_at_limit(b: &Billing) -> usize {
    let c = reqwest::Client::new();
    let mut subjects = std::collections::HashSet::new();
    let mut page = 1;
    loop {
        let v: Value = c
            .get(format!(
                "{}/api/v1/notification/events?page={page}&pageSize=1000",
                b.base
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = v["items"].as_array().cloned().unwrap_or_default();
        for e in &items {
            let data = &e["payload"]["data"];
            if data["threshold"]["value"].as_f64() == Some(100.0) {
                subjects.insert(data["subject"]["key"].as_str().unwrap_or("").to_owned());
            }
        }
        if items.len() < 1000 {
            return subjects.len();
        }
        page += 1;
    }
}

/// A receiver that accepts connections and never reads or answers them.
async fn hanging_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}

/// A receiver that answers 204 at once once its gate is open (it holds requests until then),
/// counting distinct `webhook-id`s.
async fn fast_receiver() -> (String, Arc<AtomicUsize>, tokio::sync::watch::Sender<bool>) {
    let seen = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<String>::new(),
    ));
    let count = Arc::new(AtomicUsize::new(0));
    let (gate, open) = tokio::sync::watch::channel(false);
    let (s, n) = (seen.clone(), count.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, _body: bytes::Bytes| {
            let (s, n, mut open) = (s.clone(), n.clone(), open.clone());
            async move {
                let _ = open.wait_for(|o| *o).await;
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                if s.lock().unwrap().insert(id) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, count, gate)
}

/// The raw limit: `n` signed POSTs of a threshold-sized payload to `url`, [`CONCURRENCY`] at a
/// time; requests per second.
async fn raw_signed_posts(url: &str, secret: &str, n: usize) -> f64 {
    let client = reqwest::Client::new();
    let body = serde_json::to_vec(&json!({"id": "x", "type": "entitlements.balance.threshold",
        "timestamp": chrono::Utc::now(), "data": {"entitlement": {"id": "e", "featureKey": "calls",
        "usagePeriod": {"interval": "P1M"}}, "feature": {"key": "calls"},
        "subject": {"id": "c1", "key": "c1"}, "value": {"balance": 0, "usage": 100},
        "threshold": {"type": "PERCENT", "value": 100}}}))
    .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, url, secret, body, next) = (
            client.clone(),
            url.to_owned(),
            secret.to_owned(),
            body.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let id = format!("raw-{i}");
                let ts = chrono::Utc::now().timestamp();
                let s =
                    tollgate_billing::notification::signing::sign(&secret, &id, ts, &body).unwrap();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", s.id)
                    .header("webhook-timestamp", s.timestamp.to_string())
                    .header("webhook-signature", s.signature)
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backlog = args.windows(2).find(|w| w[0] == "backlog").map(|w| {
        w[1].parse::<usize>()
            .expect("backlog N: N must be a number")
    });
    let only_delivery = backlog.is_some() || args.iter().any(|a| a == "delivery");
    let mut numbers = args
        .iter()
        .filter_map(|a| a.parse::<usize>().ok())
        .filter(|n| Some(*n) != backlog);
    let customers = numbers.next().unwrap_or(1000);
    let events = numbers.next().unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "tollgate-billing notifications, SQLite, {customers} customers x {LIMIT}-call \
             allowance, {events} events in requests of 500 from 4 senders, {} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        if let Some(n) = backlog {
            println!("delivery only, backlog of {n} test sends to one channel");
        }

        if !only_delivery {
            let plain = start();
            setup(&plain, customers).await;
            let floor = ingest(&plain, &bodies(events, customers), events).await;
            drop(plain);

            let hanging = start();
            setup(&hanging, customers).await;
            rule(&hanging, &hanging_receiver().await).await;
            let with_rules = ingest(&hanging, &bodies(events, customers), events).await;
            let answered = Instant::now();
            let deadline = answered + Duration::from_secs(300);
            while customers_at_limit(&hanging).await < customers && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let lag = answered.elapsed();
            let at_limit = customers_at_limit(&hanging).await;
            drop(hanging);
            // No rule again, after: the floor is the mean of the runs before and after.
            let plain = start();
            setup(&plain, customers).await;
            let floor_after = ingest(&plain, &bodies(events, customers), events).await;
            drop(plain);
            let floor = (floor + floor_after) / 2.0;

            println!("| figure | value | beside |");
            println!("|---|---|---|");
            println!(
                "| ingest, threshold rule + receiver that never answers | {with_rules:.0} events/s | \
                 no rule: {floor:.0} events/s (before {:.0}, after {floor_after:.0}) ({:.2}x) |",
                2.0 * floor - floor_after,
                with_rules / floor
            );
            println!(
                "| evaluation lag: last ingest answered → every customer's 100 % event recorded | \
                 {:.2} s ({at_limit}/{customers} customers) | — |",
                lag.as_secs_f64()
            );
        }

        let fast = start();
        let (url, received, gate) = fast_receiver().await;
        let secret = if let Some(n) = backlog {
            let (secret, id) = rule_and_id(&fast, &url).await;
            test_sends(&fast, &id, n).await;
            secret
        } else {
            setup(&fast, customers).await;
            let secret = rule(&fast, &url).await;
            ingest(&fast, &bodies(events, customers), events).await;
            let deadline = Instant::now() + Duration::from_secs(300);
            while customers_at_limit(&fast).await < customers && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            secret
        };
        let total = event_count(&fast).await;
        let opened = Instant::now();
        gate.send(true).unwrap();
        let deadline = opened + Duration::from_secs(600);
        while received.load(Ordering::Relaxed) < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = opened.elapsed().as_secs_f64();
        let delivered = received.load(Ordering::Relaxed);
        drop(fast);
        let raw = raw_signed_posts(&url, &secret, delivered.max(1)).await;
        println!(
            "| delivery of a backlog: {delivered} of {total} events to a receiver answering 204 \
             | {:.0}/s ({took:.2} s) | the bench's own signed POSTs, {CONCURRENCY} at a time: \
             {raw:.0}/s ({:.2}x) |",
            delivered as f64 / took,
            delivered as f64 / took / raw
        );
    });
}

/// How many notification events the outbox holds.
async fn event_count(b: &Billing) -> usize {
    let v: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/notification/events?pageSize=1", b.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["totalCount"].as_u64().unwrap_or(0) as usize
}
