//! Usage totals across subjects, on the real `tollgate-billing` binary over HTTP: a meter query
//! that neither filters nor groups by subject reads the store's totals, one filtered by a customer
//! owning every subject reads the per-subject rows — and both answer the same, for every
//! aggregation (UNIQUE_COUNT across subjects included, LATEST with ties across subjects), with
//! and without group-by, every window size, three time zones (one with a half-hour offset), with
//! and without a range. Then kept right: a group-by added by a meter update counts past events,
//! a meter deleted and created again starts from its events, and the `0006_usage_totals`
//! migration backfills totals from rollups already stored. `tests/usage_totals_postgres.rs` runs
//! this file on PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Value, json};

mod common;

pub use common::Backend;
use common::{Billing, call, client, post};

/// This file is the suite on SQLite; `tests/usage_totals_postgres.rs` runs it on PostgreSQL.
#[allow(dead_code)]
fn backend() -> Backend {
    Backend::Sqlite
}

const SUBJECTS: usize = 12;
const AGGREGATIONS: [&str; 7] = [
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "LATEST",
    "UNIQUE_COUNT",
];

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn t0() -> DateTime<Utc> {
    // Crosses a month end and three UTC midnights.
    Utc.with_ymd_and_hms(2026, 1, 30, 22, 13, 17).unwrap()
}

/// 720 events over ~3.5 days on 12 subjects; every tenth shares its instant with the one before
/// on another subject (LATEST ties across subjects, the larger value second half the time);
/// some carry no value.
fn events(batch: usize) -> Vec<Value> {
    (batch * 60..(batch + 1) * 60)
        .map(|i| {
            let k = if i % 10 == 1 { i - 1 } else { i };
            let time = t0() + Duration::seconds(k as i64 * 421);
            let route = ["a", "b", "c"][i % 3];
            let plan = ["free", "pro"][(i / 5) % 2];
            let mut data = json!({
                "route": route,
                "plan": plan,
                "user": format!("u-{}", (i * 7) % 23),
            });
            if !i.is_multiple_of(13) {
                let n = if i % 20 == 1 { 1000 + i } else { i % 17 };
                data["n"] = json!(format!("{n}.{}", i % 4));
            }
            json!({"specversion": "1.0", "id": format!("e-{i}"), "source": "totals",
                   "type": "work", "subject": format!("s-{}", i % SUBJECTS),
                   "time": iso(time), "data": data})
        })
        .collect()
}

async fn ingest(b: &Billing, events: Vec<Value>) {
    let s = client()
        .post(b.url("/api/v1/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::Array(events).to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!(s < 300, "ingest: {s}");
}

fn meter(aggregation: &str) -> Value {
    let mut m = json!({"slug": aggregation.to_lowercase(), "eventType": "work",
                       "aggregation": aggregation, "groupBy": {"route": "$.route"}});
    match aggregation {
        "COUNT" => {}
        "UNIQUE_COUNT" => m["valueProperty"] = json!("$.user"),
        _ => m["valueProperty"] = json!("$.n"),
    }
    m
}

async fn get(b: &Billing, path: &str) -> Value {
    let (s, _, v) = call(b, "GET", path, None).await;
    assert_eq!(s, 200, "GET {path}: {v}");
    v
}

/// The query `params` on `slug` answered from the totals and from the per-subject rows (a
/// customer owning every subject), equal; how many rows.
async fn same_both_ways(b: &Billing, slug: &str, params: &str) -> usize {
    let path = format!("/api/v1/meters/{slug}/query?{params}");
    let totals = get(b, &path).await;
    let per_subject = get(b, &format!("{path}&filterCustomerId=everyone")).await;
    let mut rows = per_subject["data"].as_array().unwrap().clone();
    for r in &mut rows {
        assert!(r["customerId"].is_string(), "{path}: {r}");
        r.as_object_mut().unwrap().remove("customerId");
    }
    assert_eq!(
        totals["data"].as_array().unwrap(),
        &rows,
        "{path}: totals vs per-subject"
    );
    rows.len()
}

/// Every aggregation × window size × time zone × group-by × range, both ways.
async fn all_queries_agree(b: &Billing) {
    let from = t0() + Duration::minutes(47) + Duration::seconds(0);
    let to = t0() + Duration::days(3) + Duration::minutes(5);
    for aggregation in AGGREGATIONS {
        let slug = aggregation.to_lowercase();
        let mut seen = 0;
        for window in ["", "MINUTE", "HOUR", "DAY", "MONTH"] {
            for tz in ["UTC", "Asia/Kolkata", "America/New_York"] {
                if window.is_empty() && tz != "UTC" {
                    continue;
                }
                for group in ["", "&groupBy=route"] {
                    for range in [String::new(), format!("&from={}&to={}", iso(from), iso(to))] {
                        let mut p = format!("windowTimeZone={tz}{group}{range}");
                        if !window.is_empty() {
                            p.push_str(&format!("&windowSize={window}"));
                        }
                        seen += same_both_ways(b, &slug, &p).await;
                    }
                }
            }
        }
        assert!(seen > 1000, "{slug}: only {seen} rows compared");
    }
}

fn reset_totals_sqlite(dir: &Path) {
    let conn = rusqlite::Connection::open(dir.join("data/billing.db")).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM usage_totals", [], |r| r.get(0))
        .unwrap();
    assert!(n > 0);
    conn.execute_batch(
        "DROP TABLE usage_totals; DROP TABLE usage_total_uniques; \
         DELETE FROM tollgate_schema WHERE version = 6;",
    )
    .unwrap();
}

async fn reset_totals_postgres(dir: &Path) {
    let config = std::fs::read_to_string(dir.join("billing.toml")).unwrap();
    let url = config
        .lines()
        .find_map(|l| l.strip_prefix("database_url = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let n: i64 = pg
        .query_one("SELECT COUNT(*) FROM usage_totals", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 0);
    pg.batch_execute(
        "DROP TABLE usage_totals; DROP TABLE usage_total_uniques; \
         DELETE FROM tollgate_schema WHERE version = 6;",
    )
    .await
    .unwrap();
    drop(pg);
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_over_all_subjects_read_totals_equal_to_the_per_subject_rows() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    for a in AGGREGATIONS {
        let (s, v) = post(&b, "/api/v1/meters", meter(a)).await;
        assert_eq!(s, 201, "{v}");
    }
    let subjects: Vec<String> = (0..SUBJECTS).map(|i| format!("s-{i}")).collect();
    let (s, v) = post(
        &b,
        "/api/v1/customers",
        json!({"name": "Everyone", "key": "everyone",
               "usageAttribution": {"subjectKeys": subjects}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["key"], "everyone");
    for batch in 0..12 {
        ingest(&b, events(batch)).await;
    }
    // One event again (a retry): counted once either way.
    ingest(&b, events(3)[..5].to_vec()).await;
    all_queries_agree(&b).await;

    // Exact across subjects: the distinct users of the whole range, not a sum of per-subject
    // counts.
    let u = get(&b, "/api/v1/meters/unique_count/query").await;
    assert_eq!(u["data"][0]["value"], 23.0, "{u}");
    let by_subject = get(&b, "/api/v1/meters/unique_count/query?groupBy=subject").await;
    let summed: f64 = by_subject["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_f64().unwrap())
        .sum();
    assert!(summed > 23.0, "{by_subject}");

    // A group-by added by an update counts past events, in the totals too.
    let mut m = meter("SUM");
    m["groupBy"] = json!({"route": "$.route", "plan": "$.plan"});
    m.as_object_mut().unwrap().remove("slug");
    let (s, _, v) = call(&b, "PUT", "/api/v1/meters/sum", Some(m)).await;
    assert_eq!(s, 200, "{v}");
    for p in ["groupBy=plan", "groupBy=plan&groupBy=route&windowSize=DAY"] {
        assert!(same_both_ways(&b, "sum", p).await >= 2);
    }
    let plans = get(&b, "/api/v1/meters/sum/query?groupBy=plan").await;
    assert_eq!(plans["data"].as_array().unwrap().len(), 2, "{plans}");

    // Deleted and created again: its totals are its events', not twice them.
    let before = get(&b, "/api/v1/meters/max/query?windowSize=DAY").await;
    let (s, _, _) = call(&b, "DELETE", "/api/v1/meters/max", None).await;
    assert_eq!(s, 204);
    let (s, v) = post(&b, "/api/v1/meters", meter("MAX")).await;
    assert_eq!(s, 201, "{v}");
    let after = get(&b, "/api/v1/meters/max/query?windowSize=DAY").await;
    assert_eq!(before["data"], after["data"]);
    let count = get(&b, "/api/v1/meters/count/query").await;
    let (s, _, _) = call(&b, "DELETE", "/api/v1/meters/count", None).await;
    assert_eq!(s, 204);
    let (s, v) = post(&b, "/api/v1/meters", meter("COUNT")).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        get(&b, "/api/v1/meters/count/query").await["data"],
        count["data"]
    );
    assert_eq!(count["data"][0]["value"], 720.0, "{count}");
    all_queries_agree(&b).await;

    // A database from before the totals: the migration backfills them from the rollups.
    let reference: Vec<Value> = {
        let mut v = Vec::new();
        for a in AGGREGATIONS {
            let slug = a.to_lowercase();
            v.push(
                get(
                    &b,
                    &format!("/api/v1/meters/{slug}/query?windowSize=HOUR&groupBy=route"),
                )
                .await,
            );
        }
        v
    };
    drop(b);
    match crate::backend() {
        Backend::Sqlite => reset_totals_sqlite(dir.path()),
        Backend::Postgres => reset_totals_postgres(dir.path()).await,
    }
    let b = Billing::start(dir.path(), "", None);
    for (a, expected) in AGGREGATIONS.iter().zip(&reference) {
        let slug = a.to_lowercase();
        let got = get(
            &b,
            &format!("/api/v1/meters/{slug}/query?windowSize=HOUR&groupBy=route"),
        )
        .await;
        assert_eq!(got["data"], expected["data"], "{slug} after the backfill");
    }
    all_queries_agree(&b).await;
    // And ingest goes on writing both.
    ingest(&b, events(12)).await;
    all_queries_agree(&b).await;
}
