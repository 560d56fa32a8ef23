//! The invoicing suite (`invoices.rs`) on PostgreSQL: the same tests on a database of the shared
//! test cluster (the gathering invoice's uniqueness, compare-and-set moves of lines into drafts,
//! and the kill -9 during an advance).

#![allow(clippy::unwrap_used)]

#[path = "invoices.rs"]
mod suite;

/// The suite in `invoices.rs` runs on PostgreSQL here.
fn backend() -> suite::Backend {
    suite::Backend::Postgres
}

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use suite::common::Replica;

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Two replicas started at once provision one sandbox and one default profile; both run the
/// invoice scheduler on real time, and each due invoice is still made and issued once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_real_time_invoice_each_customer_once() {
    let url = tollgate_e2e::postgres::Cluster::shared()
        .unwrap()
        .database()
        .unwrap();
    let (u1, u2) = (url.clone(), url.clone());
    let (a, b) = tokio::join!(
        tokio::task::spawn_blocking(move || Replica::start(&u1)),
        tokio::task::spawn_blocking(move || Replica::start(&u2))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let apps: Value = reqwest::get(format!("{}/api/v1/apps", b.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(apps["totalCount"], 1, "{apps}");
    let profiles: Value = reqwest::get(format!("{}/api/v1/billing/profiles", a.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(profiles["totalCount"], 1, "{profiles}");

    let n = 40;
    let from = chrono::Utc::now() - chrono::Duration::days(30);
    let to = chrono::Utc::now() - chrono::Duration::hours(2);
    let iso =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for i in 0..n {
        let key = format!("r{i}");
        let (s, c) = post(
            &a.base,
            "/api/v1/customers",
            json!({"name": key, "key": key, "usageAttribution": {"subjectKeys": [key]}}),
        )
        .await;
        assert_eq!(s, 201, "{c}");
        // Alternate replicas so both write.
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let (s, r) = post(base, &format!("/api/v1/billing/customers/{key}/invoices/pending-lines"), json!({"currency": "USD", "lines": [
            {"name": "Fee", "period": {"from": iso(from), "to": iso(to)}, "invoiceAt": iso(to),
             "rateCard": {"price": {"type": "flat", "amount": "10", "paymentTerm": "in_arrears"}}}]})).await;
        assert_eq!(s, 201, "{r}");
    }
    // Both replicas run the scheduler every second (one at a time, on the clock's lease).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list: Value = reqwest::get(format!(
            "{}/api/v1/billing/invoices?pageSize=1000&includeDeleted=true",
            a.base
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let items = list["items"].as_array().unwrap();
        let paid = items.iter().filter(|i| i["status"] == "paid").count();
        if paid >= n {
            let issued: Vec<&Value> = items.iter().filter(|i| i["issuedAt"].is_string()).collect();
            assert_eq!(
                issued.len(),
                n,
                "one issued invoice per customer: {items:?}"
            );
            let mut numbers: Vec<&str> = issued
                .iter()
                .map(|i| i["customer"]["key"].as_str().unwrap())
                .collect();
            numbers.sort();
            numbers.dedup();
            assert_eq!(numbers.len(), n);
            break;
        }
        assert!(Instant::now() < deadline, "only {paid} of {n} paid");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
