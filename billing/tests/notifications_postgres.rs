//! The notification suite (`notifications.rs`) on PostgreSQL: the outbox, its dedup keys and its
//! delivery leases (claims by conditional update) on a database of a real PostgreSQL cluster.

#![allow(clippy::unwrap_used)]

#[path = "notifications.rs"]
mod suite;

/// The suite in `notifications.rs` runs on PostgreSQL here.
fn backend() -> suite::Backend {
    suite::Backend::Postgres
}

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use suite::common::Replica;
use tollgate_e2e::postgres::Cluster;

/// Two replicas on one database share the outbox: 40 events recorded through both are each sent
/// exactly once (the claim is a conditional row update), all verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_send_each_delivery_once() {
    let url = Cluster::shared().unwrap().database().unwrap();
    let replicas = [Replica::start(&url), Replica::start(&url)];
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let port = tollgate_e2e::stack::free_port();
    let ch: Value = http
        .post(format!("{}/api/v1/notification/channels", replicas[0].base))
        .json(&json!({"type": "WEBHOOK", "name": "shared", "url": format!("http://127.0.0.1:{port}/")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rx = suite::Receiver::start(
        port,
        ch["signingSecret"].as_str().unwrap(),
        &dir.path().join("hooks.jsonl"),
        None,
    );
    let rule: Value = http
        .post(format!("{}/api/v1/notification/rules", replicas[1].base))
        .json(&json!({"type": "invoice.updated", "name": "shared", "channels": [ch["id"]]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rule_id = rule["id"].as_str().unwrap();
    let sends = (0..40).map(|i| {
        let r = http
            .post(format!(
                "{}/api/v1/notification/rules/{rule_id}/test",
                replicas[i % 2].base
            ))
            .send();
        async move { assert_eq!(r.await.unwrap().status().as_u16(), 201) }
    });
    futures::future::join_all(sends).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page: Value = http
            .get(format!(
                "{}/api/v1/notification/events?pageSize=1000",
                replicas[0].base
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 40);
        if items
            .iter()
            .all(|e| e["deliveryStatus"][0]["state"] == "SUCCESS")
        {
            break;
        }
        assert!(Instant::now() < deadline, "not all delivered: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = rx.received();
    let ids: HashSet<&str> = got.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(got.len(), 40, "sent more than once: {}", got.len());
    assert_eq!(ids.len(), 40);
    assert!(got.iter().all(|r| r["verified"] == true));
}
