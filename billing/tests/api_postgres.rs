//! The billing suite on PostgreSQL: every test of `api.rs` (OpenMeter's Python SDK, bad input,
//! kill -9 durability, the balance engine) again on a database of a real PostgreSQL cluster
//! started for this test process, plus what only a shared database has: two billing processes
//! ingesting the same events at once, the database going away for 30 s during ingest, and the
//! errors an operator sees for a bad or unreachable `database_url`.

#![allow(clippy::unwrap_used)]

#[path = "api.rs"]
mod suite;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use suite::common::Replica;
use tollgate_e2e::postgres::Cluster;

/// The suite in `api.rs` runs on PostgreSQL here.
fn backend() -> suite::Backend {
    suite::Backend::Postgres
}

fn events(from: usize, to: usize, t0: chrono::DateTime<chrono::Utc>) -> Value {
    Value::Array(
        (from..to)
            .map(|i| {
                json!({"id": format!("e-{i}"), "source": "replicas", "specversion": "1.0",
                       "type": "api_call", "subject": format!("s-{}", i % 7),
                       "time": t0 + chrono::Duration::seconds((i % 600) as i64),
                       "data": {"n": (i % 5) + 1, "route": if i % 2 == 0 { "a" } else { "b" }}})
            })
            .collect(),
    )
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    let r = client.get(url).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_ingesting_the_same_events_store_each_once_and_agree() {
    let url = Cluster::shared().unwrap().database().unwrap();
    let a = Replica::start(&url);
    let b = Replica::start(&url);
    let client = reqwest::Client::new();
    // A meter created on one replica is used by the other (its cache follows the database).
    let r = post(
        &client,
        format!("{}/api/v1/meters", a.base),
        json!({"slug": "calls", "eventType": "api_call", "aggregation": "SUM",
               "valueProperty": "$.n", "groupBy": {"route": "$.route"}}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client
        .get(format!("{}/api/v1/meters/calls", b.base))
        .send()
        .await
        .unwrap()
        .status()
        .is_success()
    {
        assert!(Instant::now() < deadline, "replica b never saw the meter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A customer with a metered entitlement, made on replica b.
    for (path, body) in [
        (
            "/api/v1/features",
            json!({"key": "calls_f", "name": "Calls", "meterSlug": "calls"}),
        ),
        (
            "/api/v1/customers",
            json!({"name": "Acme", "key": "acme", "usageAttribution": {"subjectKeys": ["s-1"]}}),
        ),
        (
            "/api/v2/customers/acme/entitlements",
            json!({"type": "metered", "featureKey": "calls_f", "usagePeriod": {"interval": "MONTH"},
                   "measureUsageFrom": chrono::Utc::now() - chrono::Duration::days(1),
                   "issueAfterReset": 100000}),
        ),
    ] {
        let r = post(&client, format!("{}{path}", b.base), body).await;
        assert_eq!(r.status(), 201, "{path}: {}", r.text().await.unwrap());
    }
    let t0 = chrono::Utc::now() - chrono::Duration::hours(1);
    // Both replicas get all 4,000 events, in overlapping batches, at once.
    let mut tasks = Vec::new();
    for (k, base) in [
        a.base.clone(),
        b.base.clone(),
        a.base.clone(),
        b.base.clone(),
    ]
    .into_iter()
    .enumerate()
    {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let order: Vec<usize> = if k % 2 == 0 {
                (0..40).collect()
            } else {
                (0..40).rev().collect()
            };
            for chunk in order {
                let r = post(
                    &client,
                    format!("{base}/api/v1/events"),
                    events(chunk * 100, chunk * 100 + 100, t0),
                )
                .await;
                assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected: usize = (0..4000).map(|i| (i % 5) + 1).sum();
    for base in [&a.base, &b.base] {
        let total = get(&client, format!("{base}/api/v1/meters/calls/query")).await;
        assert_eq!(total["data"][0]["value"], json!(expected as f64), "{base}");
        let by = get(
            &client,
            format!("{base}/api/v1/meters/calls/query?groupBy=subject&groupBy=route"),
        )
        .await;
        let mut rows: Vec<String> = by["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{} {} {}", r["subject"], r["groupBy"]["route"], r["value"]))
            .collect();
        rows.sort();
        assert_eq!(rows.len(), 14, "{rows:?}");
    }
    let value = |base: &String| {
        get(
            &client,
            format!("{base}/api/v2/customers/acme/entitlements/calls_f/value"),
        )
    };
    let (va, vb) = (value(&a.base).await, value(&b.base).await);
    assert_eq!(va, vb, "entitlement values agree");
    let used: usize = (0..4000).filter(|i| i % 7 == 1).map(|i| (i % 5) + 1).sum();
    assert_eq!(va["usage"], json!(used as f64), "{va}");
    let count = Cluster::shared()
        .unwrap()
        .psql(
            url.rsplit('/').next().unwrap(),
            "SELECT count(*) FROM events",
        )
        .unwrap();
    assert_eq!(count, "4000", "every event stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_away_for_a_while_means_503_with_retry_after_then_recovery_without_restart() {
    // Its own cluster: stopping the shared one would break the other tests.
    let cluster = Cluster::create().unwrap();
    cluster.start().unwrap();
    let url = cluster.database().unwrap();
    let billing = Replica::start(&url);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let r = post(
        &client,
        format!("{}/api/v1/meters", billing.base),
        json!({"slug": "calls", "eventType": "api_call", "aggregation": "COUNT"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let t0 = chrono::Utc::now() - chrono::Duration::hours(1);
    // A client that retries on 503 as the agent does (Retry-After), sending 60 batches while
    // the database goes away for the 30 seconds and comes back.
    let sender = {
        let (client, base) = (client.clone(), billing.base.clone());
        tokio::spawn(async move {
            let mut unavailable = 0;
            let mut retry_after_seen = true;
            for chunk in 0..60 {
                loop {
                    let r = post(
                        &client,
                        format!("{base}/api/v1/events"),
                        events(chunk * 50, chunk * 50 + 50, t0),
                    )
                    .await;
                    match r.status().as_u16() {
                        204 => break,
                        503 => {
                            unavailable += 1;
                            retry_after_seen &= r.headers().contains_key("retry-after");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (unavailable, retry_after_seen)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.stop();
    tokio::time::sleep(Duration::from_secs(30)).await;
    cluster.start().unwrap();
    let (unavailable, retry_after) = sender.await.unwrap();
    assert!(unavailable > 0, "the outage was seen as 503");
    assert!(retry_after, "every 503 says Retry-After");
    let total = get(
        &client,
        format!("{}/api/v1/meters/calls/query", billing.base),
    )
    .await;
    assert_eq!(total["data"][0]["value"], json!(3000.0), "nothing lost");
}

fn start_error(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-billing"))
        .args(args)
        .env("TOLLGATE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_or_unreachable_database_url_is_a_clear_error_without_the_password() {
    let port = tollgate_e2e::stack::free_port().to_string();
    let listen = format!("127.0.0.1:{}", tollgate_e2e::stack::free_port());
    let err = start_error(&[
        "--listen",
        &listen,
        "--database-url",
        "postgres://u:pw@[nope",
    ]);
    assert!(
        err.contains("database_url") && err.contains("not a PostgreSQL URL"),
        "{err}"
    );
    let url = format!("postgres://billing:hunter2@127.0.0.1:{port}/tollgate");
    let err = start_error(&["--listen", &listen, "--database-url", &url]);
    assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
    assert!(
        err.contains(&format!("billing:***@127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_schema_newer_than_the_binary_is_refused() {
    let cluster = Cluster::shared().unwrap();
    let url = cluster.database().unwrap();
    let name = url.rsplit('/').next().unwrap().to_owned();
    drop(Replica::start(&url));
    cluster
        .psql(
            &name,
            "INSERT INTO tollgate_schema (version, name, applied_ms) VALUES (999, 'future', 0)",
        )
        .unwrap();
    let listen = format!("127.0.0.1:{}", tollgate_e2e::stack::free_port());
    let err = start_error(&["--listen", &listen, "--database-url", &url]);
    assert!(
        err.contains("schema version 999") && err.contains("newer"),
        "{err}"
    );
}
