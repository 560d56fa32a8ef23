//! Balances read once per feature (`tollgate_billing::balances`) equal the balance engine one
//! entitlement at a time. The data is made by the real `tollgate-billing` binary over HTTP (40
//! customers of one or two subjects, two features — one with a group-by filter —, entitlements
//! with different periods, anchors, measure-from minutes, issue-after-reset, soft limits,
//! overage carried or not, grants with priorities, expiries, recurrences and rollovers, 3 days of
//! events); then the process is stopped and its database opened by the library, and every
//! feature's entitlements are evaluated both ways at several instants (mid-minute, on a period
//! boundary, after everything). `tests/balances_postgres.rs` runs this file on PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Value, json};
use tollgate_billing::balances::{self, Evaluation};
use tollgate_billing::entitlement::{self, Customer, Entitlement, Feature, Grant};
use tollgate_billing::store::Store;

mod common;

pub use common::Backend;
use common::{Billing, client, post};

/// This file is the suite on SQLite; `tests/balances_postgres.rs` runs it on PostgreSQL.
#[allow(dead_code)]
fn backend() -> Backend {
    Backend::Sqlite
}

const CUSTOMERS: usize = 40;

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 30, 21, 0, 0).unwrap()
}

async fn ingest(b: &Billing, events: Vec<Value>) {
    let r = client()
        .post(b.url("/api/v1/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::Array(events).to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert!(s < 300, "ingest: {s} {}", r.text().await.unwrap());
}

async fn created(b: &Billing, path: &str, body: Value) -> Value {
    let (s, v) = post(b, path, body).await;
    assert_eq!(s, 201, "POST {path}: {v}");
    v
}

/// Customers, features, entitlements, grants and events, through the API.
async fn populate(b: &Billing) {
    created(
        b,
        "/api/v1/meters",
        json!({"slug": "calls", "eventType": "call", "aggregation": "COUNT"}),
    )
    .await;
    created(
        b,
        "/api/v1/meters",
        json!({"slug": "tokens", "eventType": "call", "aggregation": "SUM",
               "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}}),
    )
    .await;
    created(
        b,
        "/api/v1/features",
        json!({"key": "calls", "name": "Calls", "meterSlug": "calls"}),
    )
    .await;
    created(
        b,
        "/api/v1/features",
        json!({"key": "gpt", "name": "GPT tokens", "meterSlug": "tokens",
               "meterGroupByFilters": {"model": "gpt"}}),
    )
    .await;
    let intervals = ["DAY", "PT6H", "MONTH", "PT1H", "WEEK"];
    for c in 0..CUSTOMERS {
        let mut subjects = vec![format!("s-{c}")];
        if c.is_multiple_of(3) {
            subjects.push(format!("s-{c}-b"));
        }
        created(
            b,
            "/api/v1/customers",
            json!({"name": format!("C{c}"), "key": format!("c-{c}"),
                   "usageAttribution": {"subjectKeys": subjects}}),
        )
        .await;
        for (f, feature) in ["calls", "gpt"].iter().enumerate() {
            let i = c + f;
            let anchor = t0() + Duration::minutes((i * 37 % 300) as i64);
            let from = t0() + Duration::minutes((i * 11 % 90) as i64) + Duration::seconds(17);
            let mut e = json!({"type": "metered", "featureKey": feature,
                               "usagePeriod": {"interval": intervals[i % 5], "anchor": iso(anchor)},
                               "measureUsageFrom": iso(from),
                               "isSoftLimit": i % 4 == 1,
                               "preserveOverageAtReset": i % 3 == 1});
            if i.is_multiple_of(2) {
                e["issueAfterReset"] = json!(20 + i % 7);
            }
            created(b, &format!("/api/v2/customers/c-{c}/entitlements"), e).await;
            let grants = format!("/api/v2/customers/c-{c}/entitlements/{feature}/grants");
            if i % 5 != 4 {
                let start = t0() + Duration::minutes((i * 53 % 2000) as i64);
                // Small grants run out (overage), large ones show every unit burnt.
                let amount = if i.is_multiple_of(2) {
                    15 + i % 40
                } else {
                    2000 + i
                };
                let mut g = json!({"amount": amount, "priority": 1 + i % 3,
                                   "effectiveAt": iso(start)});
                match i % 4 {
                    0 => g["expiration"] = json!({"duration": "HOUR", "count": 5 + i % 20}),
                    1 => g["recurrence"] = json!({"interval": "DAY", "anchor": iso(start)}),
                    2 => {
                        g["maxRolloverAmount"] = json!(10);
                        g["minRolloverAmount"] = json!(2);
                    }
                    _ => {}
                }
                created(b, &grants, g).await;
            }
            if i.is_multiple_of(3) {
                let g = json!({"amount": 50, "priority": 2,
                               "effectiveAt": iso(t0() + Duration::hours(30)),
                               "expiration": {"duration": "DAY", "count": 1}});
                created(b, &grants, g).await;
            }
        }
    }
    // 3 days of calls: every subject, more for some; a third of the tokens on another model.
    let mut events = Vec::new();
    for k in 0..3000usize {
        let c = k * 7 % CUSTOMERS;
        let subject = if c.is_multiple_of(3) && k.is_multiple_of(2) {
            format!("s-{c}-b")
        } else {
            format!("s-{c}")
        };
        let time = t0() + Duration::seconds((k * 86) as i64);
        events.push(
            json!({"specversion": "1.0", "id": format!("e-{k}"), "source": "balances",
                           "type": "call", "subject": subject, "time": iso(time),
                           "data": {"tokens": (k % 9) + 1,
                                    "model": if k.is_multiple_of(3) { "other" } else { "gpt" }}}),
        );
        if events.len() == 500 {
            ingest(b, std::mem::take(&mut events)).await;
        }
    }
    if !events.is_empty() {
        ingest(b, events).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_features_balances_read_together_equal_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    populate(&b).await;
    drop(b); // the library opens the database itself (SQLite takes one process)

    let location = common::store_location(dir.path());
    let store = Store::open(&location).await.unwrap();
    let customers: HashMap<String, Customer> = store
        .list_entities::<Customer>("customer")
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
    let features: Vec<Feature> = store.list_entities("feature").await.unwrap();
    let entitlements: Vec<Entitlement> = store.list_entities("entitlement").await.unwrap();
    let grants: Vec<Grant> = store.list_entities("grant").await.unwrap();
    assert_eq!(entitlements.len(), 2 * CUSTOMERS);

    let mut compared = 0;
    let (mut used, mut over) = (0, 0);
    for at in [
        t0() + Duration::hours(27) + Duration::minutes(13) + Duration::seconds(41),
        t0() + Duration::days(2),
        t0() + Duration::days(4) + Duration::minutes(1),
        Utc::now(),
    ] {
        for feature in &features {
            let items: Vec<(Entitlement, Vec<String>, Vec<Grant>)> = entitlements
                .iter()
                .filter(|e| e.feature_id == feature.id)
                .map(|e| {
                    let c = &customers[e.customer_id.as_ref().unwrap()];
                    let gs = grants
                        .iter()
                        .filter(|g| g.entitlement_id == e.id)
                        .cloned()
                        .collect();
                    (e.clone(), c.subjects(), gs)
                })
                .collect();
            assert_eq!(items.len(), CUSTOMERS);
            let batch: Vec<Evaluation<'_>> = items
                .iter()
                .map(|(e, subjects, gs)| Evaluation {
                    entitlement: e,
                    subjects,
                    grants: gs,
                })
                .collect();
            let together = balances::values(&store, feature, &batch, at).await.unwrap();
            assert_eq!(together.len(), items.len());
            for ((e, subjects, gs), v) in items.iter().zip(&together) {
                let alone = entitlement::value(&store, e, feature, subjects, gs, at)
                    .await
                    .unwrap();
                assert_eq!(
                    serde_json::to_value(v).unwrap(),
                    serde_json::to_value(&alone).unwrap(),
                    "{} of {:?} at {at}",
                    feature.key,
                    e.customer_id
                );
                compared += 1;
                used += usize::from(alone.usage.unwrap_or_default() > 0.into());
                over += usize::from(alone.overage.unwrap_or_default() > 0.into());
            }
        }
    }
    assert_eq!(compared, 4 * 2 * CUSTOMERS);
    // Not vacuous: usage counted, some over their grants.
    assert!(used > compared / 2, "{used} of {compared} with usage");
    assert!(over > 0, "none over");
}
