//! The real `tollgate-billing` binary over HTTP: OpenMeter's Python SDK as a third-party client,
//! bad input that must store nothing, kill -9 durability of acknowledged events and of dedup, and
//! balance arithmetic on worked examples written from OpenMeter's documented rules.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

pub mod common;

pub use common::Backend;
use common::{Billing, TOKEN, client, get_any, ingest, post};

/// This file is the suite on SQLite; `tests/api_postgres.rs` runs the same file as a module with
/// its own `backend()` saying PostgreSQL.
#[allow(dead_code)]
fn backend() -> Backend {
    Backend::Sqlite
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmeter_python_sdk_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    common::run_sdk(&b, "conformance.py", &[], "conformance: all steps passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_4xx_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    let (s, _) = post(
        &b,
        "/api/v1/meters",
        json!({"slug": "calls", "eventType": "kong.api_request", "aggregation": "COUNT"}),
    )
    .await;
    assert_eq!(s, 201);
    let good = json!({"id": "g1", "source": "t", "specversion": "1.0", "type": "kong.api_request", "subject": "s"});

    let r = client()
        .post(b.url("/api/v1/events"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(r.text().await.unwrap().contains("malformed JSON"));

    let r = client()
        .post(b.url("/api/v1/events"))
        .header("content-type", "text/plain")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("invalid content type"));

    // One bad event in a batch: the whole request stores nothing.
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("subject");
    let r = client()
        .post(b.url("/api/v1/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(json!([good, missing]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("event 1: subject is required")
    );

    let huge = "x".repeat(9 << 20);
    let r = client()
        .post(b.url("/api/v1/events"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "bodies are limited");

    let (s, body) = post(
        &b,
        "/api/v1/meters",
        json!({"slug": "bad", "eventType": "x", "aggregation": "SUM", "valueProperty": "$[" }),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        body["detail"].as_str().unwrap().contains("valueProperty"),
        "{body}"
    );
    let (s, _) = get_any(&b, "/api/v1/meters/nope/query").await;
    assert_eq!(s, 404);
    let (s, body) = get_any(&b, "/api/v1/meters/calls/query?windowSize=WEEK").await;
    assert_eq!(s, 400);
    assert!(body["detail"].as_str().unwrap().contains("windowSize"));

    let r = reqwest::Client::new()
        .get(b.url("/api/v1/meters"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a token is required when configured");

    let (_, q) = get_any(&b, "/api/v1/meters/calls/query").await;
    assert_eq!(q["data"], json!([]), "nothing was stored: {q}");
    let (_, events) = get_any(&b, "/api/v1/events").await;
    assert_eq!(events, json!([]));
}

async fn put(b: &Billing, path: &str, body: Value) -> (u16, Value) {
    let r = client().put(b.url(path)).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `status` and a problem detail that names `field`.
#[track_caller]
fn refused(got: (u16, Value), status: u16, field: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    let detail = got.1["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(field), "{field:?} not named in {detail:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meter_query_post_update_and_group_filters_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    let (s, _) = post(
        &b,
        "/api/v1/meters",
        json!({"slug": "tokens", "eventType": "llm", "aggregation": "SUM", "valueProperty": "$.tokens",
               "groupBy": {"model": "$.model"}}),
    )
    .await;
    assert_eq!(s, 201);
    let q = "/api/v1/meters/tokens/query";

    let r = client()
        .post(b.url(q))
        .header("content-type", "application/json")
        .body("{\"from\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("invalid request body"));
    refused(
        post(&b, q, json!({"groupby": ["model"]})).await,
        400,
        "groupby",
    );
    refused(post(&b, q, json!({"from": "yesterday"})).await, 400, "from");
    refused(
        post(&b, q, json!({"windowSize": "WEEK"})).await,
        400,
        "windowSize",
    );
    refused(
        post(&b, q, json!({"windowTimeZone": "Mars/Base"})).await,
        400,
        "windowTimeZone",
    );
    refused(post(&b, q, json!({"subject": "one"})).await, 400, "subject");
    refused(
        post(&b, q, json!({"groupBy": ["colour"]})).await,
        400,
        "groupBy",
    );
    refused(
        post(&b, q, json!({"groupBy": ["customer_id"]})).await,
        400,
        "filterCustomerId",
    );
    refused(
        post(&b, q, json!({"filterCustomerId": ["nobody"]})).await,
        400,
        "filterCustomerId",
    );
    refused(
        post(&b, q, json!({"clientId": "x".repeat(37)})).await,
        400,
        "clientId",
    );
    refused(
        post(
            &b,
            q,
            json!({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
        )
        .await,
        400,
        "from",
    );
    refused(
        post(
            &b,
            q,
            json!({"subject": (0..101).map(|i| i.to_string()).collect::<Vec<_>>()}),
        )
        .await,
        400,
        "subject",
    );
    refused(
        post(&b, q, json!({"filterGroupBy": {"colour": ["red"]}})).await,
        400,
        "filterGroupBy.colour",
    );
    refused(
        post(
            &b,
            q,
            json!({"filterGroupBy": {"model": ["a"]},
                           "advancedMeterGroupByFilters": {"model": {"$eq": "a"}}}),
        )
        .await,
        400,
        "cannot be used together",
    );
    for (filter, named) in [
        (
            json!({"model": {"$eq": "a", "$in": ["b"]}}),
            "advancedMeterGroupByFilters.model",
        ),
        (json!({"model": {"$in": ["a", ""]}}), "$in"),
        (json!({"model": {"$regex": "a"}}), "$regex"),
        (json!({"model": {"$or": []}}), "$or"),
        (json!({"model": {"$like": "a\\"}}), "$like"),
        (
            json!({"model": {"$and": [{"$eq": "a"}, {"$gt": "b", "$lt": "c"}]}}),
            "$and[1]",
        ),
        (
            json!({"colour": {"$eq": "red"}}),
            "advancedMeterGroupByFilters.colour",
        ),
        (json!({"model": "gpt"}), "advancedMeterGroupByFilters.model"),
    ] {
        refused(
            post(&b, q, json!({"advancedMeterGroupByFilters": filter})).await,
            400,
            named,
        );
    }
    refused(
        get_any(&b, &format!("{q}?advancedMeterGroupByFilters=model")).await,
        400,
        "advancedMeterGroupByFilters",
    );
    refused(
        post(&b, "/api/v1/meters/nope/query", json!({})).await,
        404,
        "nope",
    );
    let (s, body) = post(&b, q, json!({})).await;
    assert_eq!(
        (s, &body["data"]),
        (200, &json!([])),
        "an empty body is a query of everything"
    );

    let m = "/api/v1/meters/tokens";
    refused(
        put(
            &b,
            m,
            json!({"slug": "other", "groupBy": {"model": "$.model"}}),
        )
        .await,
        400,
        "slug",
    );
    refused(
        put(&b, m, json!({"aggregation": "MAX"})).await,
        400,
        "aggregation",
    );
    refused(
        put(&b, m, json!({"valueProperty": "$.other"})).await,
        400,
        "valueProperty",
    );
    refused(
        put(&b, m, json!({"description": ""})).await,
        400,
        "description",
    );
    refused(put(&b, m, json!({"name": ""})).await, 400, "name");
    refused(put(&b, m, json!({"metadata": [1]})).await, 400, "metadata");
    refused(put(&b, m, json!({"colour": "red"})).await, 400, "colour");
    refused(
        put(&b, m, json!({"groupBy": {"model": "$["}})).await,
        400,
        "groupBy",
    );
    refused(put(&b, "/api/v1/meters/nope", json!({})).await, 404, "nope");
    let values = "/api/v1/meters/tokens/group-by";
    refused(
        get_any(&b, &format!("{values}/colour/values")).await,
        400,
        "groupByKey",
    );
    refused(
        get_any(&b, &format!("{values}/model/values?from=x")).await,
        400,
        "from",
    );
    refused(
        get_any(
            &b,
            &format!("{values}/model/values?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"),
        )
        .await,
        400,
        "from",
    );
    refused(
        get_any(&b, &format!("{values}/model/values?colour=red")).await,
        400,
        "colour",
    );
    refused(
        get_any(&b, "/api/v1/meters/tokens/subjects?search=a").await,
        400,
        "search",
    );
    refused(
        get_any(&b, "/api/v1/meters/nope/group-by/model/values").await,
        404,
        "nope",
    );
    // Sending the meter back as read is fine: unchanged fixed fields, read-only fields ignored.
    let (_, mut shown) = get_any(&b, m).await;
    shown["description"] = json!("LLM tokens");
    let (s, updated) = put(&b, m, shown).await;
    assert_eq!(s, 200, "{updated}");
    assert_eq!(updated["description"], "LLM tokens");
    assert_eq!(updated["groupBy"], json!({"model": "$.model"}));

    let (s, f) = post(
        &b,
        "/api/v1/features",
        json!({"key": "gpt", "name": "GPT", "meterSlug": "tokens",
               "advancedMeterGroupByFilters": {"model": {"$like": "gpt%"}}}),
    )
    .await;
    assert_eq!(s, 201, "{f}");
    refused(
        post(
            &b,
            "/api/v1/features",
            json!({"key": "bad", "name": "x", "meterSlug": "tokens",
                   "advancedMeterGroupByFilters": {"colour": {"$eq": "red"}}}),
        )
        .await,
        400,
        "advancedMeterGroupByFilters.colour",
    );
    refused(
        post(
            &b,
            "/api/v1/features",
            json!({"key": "bad", "name": "x", "advancedMeterGroupByFilters": {"model": {"$eq": "a"}}}),
        )
        .await,
        400,
        "meterSlug",
    );
    refused(
        put(&b, m, json!({"groupBy": {}})).await,
        409,
        "groupBy.model",
    );
    let (_, still) = get_any(&b, m).await;
    assert_eq!(
        still["groupBy"],
        json!({"model": "$.model"}),
        "a refused update changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_grant_listing_pages_and_refuses_bad_paging() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    post(
        &b,
        "/api/v1/meters",
        json!({"slug": "calls", "eventType": "call", "aggregation": "COUNT"}),
    )
    .await;
    post(
        &b,
        "/api/v1/features",
        json!({"key": "calls", "name": "Calls", "meterSlug": "calls"}),
    )
    .await;
    post(&b, "/api/v1/customers", json!({"name": "A", "key": "a"})).await;
    let (s, e) = post(
        &b,
        "/api/v2/customers/a/entitlements",
        json!({"type": "metered", "featureKey": "calls", "usagePeriod": {"interval": "DAY"}}),
    )
    .await;
    assert_eq!(s, 201, "{e}");
    let grants = "/api/v2/customers/a/entitlements/calls/grants";
    for amount in [10, 20, 30] {
        let (s, g) = post(
            &b,
            grants,
            json!({"amount": amount, "effectiveAt": "2026-01-01T00:00:00Z"}),
        )
        .await;
        assert_eq!(s, 201, "{g}");
    }
    let (s, page) = get_any(&b, &format!("{grants}?page=2&pageSize=2")).await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            page["page"].clone(),
            page["pageSize"].clone(),
            page["totalCount"].clone()
        ),
        (json!(2), json!(2), json!(3))
    );
    assert_eq!(page["items"][0]["amount"], 30.0, "{page}");
    let (_, page) = get_any(&b, &format!("{grants}?page=9")).await;
    assert_eq!(page["items"], json!([]), "past the end: an empty page");
    for (query, field) in [
        ("page=0", "page"),
        ("pageSize=1001", "pageSize"),
        ("limit=0", "limit"),
        ("offset=-1", "offset"),
        ("order=UP", "order"),
        ("orderBy=amount", "orderBy"),
        ("includeDeleted=maybe", "includeDeleted"),
        ("colour=red", "colour"),
    ] {
        refused(get_any(&b, &format!("{grants}?{query}")).await, 400, field);
    }
    refused(
        get_any(&b, "/api/v2/customers/a/entitlements/nope/grants").await,
        404,
        "nope",
    );
    for (path, field) in [
        ("/api/v2/grants?customer=nobody", "customer"),
        ("/api/v2/grants?subject=a", "subject"),
        ("/api/v1/grants?customer=a", "customer"),
        ("/api/v1/grants?pageSize=0", "pageSize"),
    ] {
        refused(get_any(&b, path).await, 400, field);
    }
    let (_, all) = get_any(&b, "/api/v1/grants").await;
    let first = all[0]["id"].as_str().unwrap().to_owned();
    let void = |q: &'static str| {
        let url = b.url(&format!("/api/v1/grants/{first}{q}"));
        async move {
            let r = client().delete(url).send().await.unwrap();
            let status = r.status().as_u16();
            (
                status,
                serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap_or_default(),
            )
        }
    };
    refused(void("?at=soon").await, 400, "at");
    refused(void("?at=2999-01-01T00:00:00Z").await, 400, "future");
    refused(void("?at=2020-01-01T00:00:00Z").await, 400, "usage period");
    refused(void("?colour=red").await, 400, "colour");
    let (_, v) = get_any(&b, "/api/v2/customers/a/entitlements/calls/value").await;
    assert_eq!(
        v["grantBalances"].as_object().unwrap().len(),
        3,
        "a refused void changes nothing: {v}"
    );
    assert!(
        v["grantBalances"]
            .as_object()
            .unwrap()
            .values()
            .all(|b| b.is_number())
    );
    let (_, v) = get_any(&b, "/api/v1/customers/a/entitlements/calls/value").await;
    assert!(v.get("grantBalances").is_none(), "v1: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_and_event_filters_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    let subjects = "/api/v1/subjects";
    refused(
        post(&b, subjects, json!({"key": "a"})).await,
        400,
        "invalid request body",
    );
    refused(
        post(&b, subjects, json!([{"displayName": "x"}])).await,
        400,
        "key",
    );
    refused(
        post(&b, subjects, json!([{"key": ""}])).await,
        400,
        "[0].key",
    );
    refused(
        post(&b, subjects, json!([{"key": "a", "colour": "red"}])).await,
        400,
        "colour",
    );
    refused(
        post(&b, subjects, json!([{"key": "a", "metadata": [1]}])).await,
        400,
        "metadata",
    );
    refused(
        post(
            &b,
            subjects,
            json!([{"key": "a"}, {"key": "b", "stripeCustomerId": "acct_1"}]),
        )
        .await,
        400,
        "[1].stripeCustomerId",
    );
    let (_, listed) = get_any(&b, subjects).await;
    assert_eq!(
        listed,
        json!([]),
        "a refused upsert stores nothing, not even its good items"
    );
    refused(get_any(&b, "/api/v1/subjects/nope").await, 404, "nope");
    let r = client()
        .delete(b.url("/api/v1/subjects/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (s, made) = post(&b, subjects, json!([{"key": "a", "displayName": "A"}])).await;
    assert_eq!(s, 200, "{made}");
    let r = client()
        .delete(b.url("/api/v1/subjects/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    let events = "/api/v1/events";
    for (query, field) in [
        ("ingestedAtFrom=yesterday", "ingestedAtFrom"),
        ("ingestedAtTo=2026-13-01T00:00:00Z", "ingestedAtTo"),
        ("customerId=nobody", "customerId"),
        ("limit=101", "limit"),
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        (
            "ingestedAtFrom=2026-01-02T00:00:00Z&ingestedAtTo=2026-01-01T00:00:00Z",
            "ingestedAtFrom",
        ),
        ("customer=a", "customer"),
    ] {
        refused(get_any(&b, &format!("{events}?{query}")).await, 400, field);
    }
    // Comma-separated customer ids (OpenMeter's `explode: false`) and repeated ones both work.
    post(&b, "/api/v1/customers", json!({"name": "A", "key": "a"})).await;
    post(&b, "/api/v1/customers", json!({"name": "B", "key": "b"})).await;
    let now = chrono::Utc::now().to_rfc3339();
    let batch = json!([
        {"id": "1", "source": "t", "type": "x", "subject": "a", "time": now},
        {"id": "2", "source": "t", "type": "x", "subject": "b", "time": now},
        {"id": "3", "source": "t", "type": "x", "subject": "c", "time": now},
    ]);
    assert_eq!(ingest(&b, batch).await, 204);
    for query in ["customerId=a,b", "customerId=a&customerId=b"] {
        let (s, listed) = get_any(&b, &format!("{events}?{query}")).await;
        assert_eq!(s, 200, "{listed}");
        let mut ids: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"]["id"].as_str().unwrap())
            .collect();
        ids.sort();
        assert_eq!(ids, ["1", "2"], "{query}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_by_added_by_update_counts_past_events_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Billing::start(dir.path(), "", None);
    let (s, _) = post(
        &b,
        "/api/v1/meters",
        json!({"slug": "tokens", "eventType": "llm", "aggregation": "SUM", "valueProperty": "$.tokens",
               "groupBy": {"model": "$.model"}}),
    )
    .await;
    assert_eq!(s, 201);
    let now = chrono::Utc::now().to_rfc3339();
    let events: Vec<Value> = (0..10)
        .map(|i| {
            json!({"id": i.to_string(), "source": "t", "type": "llm", "subject": "s", "time": now,
                   "data": {"tokens": i, "model": "m", "provider": if i % 2 == 0 { "even" } else { "odd" }}})
        })
        .collect();
    assert_eq!(ingest(&b, json!(events)).await, 204);
    let (s, m) = put(
        &b,
        "/api/v1/meters/tokens",
        json!({"groupBy": {"model": "$.model", "provider": "$.provider"}}),
    )
    .await;
    assert_eq!(s, 200, "{m}");
    b.kill9();
    let b = Billing::start(dir.path(), "", None);
    let (_, m) = get_any(&b, "/api/v1/meters/tokens").await;
    assert_eq!(
        m["groupBy"]["provider"], "$.provider",
        "the update is durable: {m}"
    );
    let (_, q) = post(
        &b,
        "/api/v1/meters/tokens/query",
        json!({"groupBy": ["provider"]}),
    )
    .await;
    let mut by: Vec<(String, f64)> = q["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["groupBy"]["provider"].as_str().unwrap().to_owned(),
                r["value"].as_f64().unwrap(),
            )
        })
        .collect();
    by.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        by,
        [("even".to_owned(), 20.0), ("odd".to_owned(), 25.0)],
        "recounted once, durably"
    );
    // Events after the update count under the new group-by too.
    let late = json!([{"id": "late", "source": "t", "type": "llm", "subject": "s", "time": now,
                       "data": {"tokens": 100, "model": "m", "provider": "odd"}}]);
    assert_eq!(ingest(&b, late).await, 204);
    let (_, q) = post(
        &b,
        "/api/v1/meters/tokens/query",
        json!({"advancedMeterGroupByFilters": {"provider": {"$eq": "odd"}}}),
    )
    .await;
    assert_eq!(q["data"][0]["value"], 125.0, "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_and_dedup_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Billing::start(dir.path(), "", None);
    let (s, _) = post(
        &b,
        "/api/v1/meters",
        json!({"slug": "calls", "eventType": "kong.api_request", "aggregation": "COUNT"}),
    )
    .await;
    assert_eq!(s, 201);
    let batches: Vec<Value> = (0..20)
        .map(|bi| {
            Value::Array(
                (0..50)
                    .map(|i| json!({"id": format!("e-{bi}-{i}"), "source": "kong", "specversion": "1.0",
                                     "type": "kong.api_request", "subject": "consumer:1", "time": "2026-11-01T10:00:00Z"}))
                    .collect(),
            )
        })
        .collect();
    for batch in &batches {
        assert_eq!(ingest(&b, batch.clone()).await, 204);
    }
    b.kill9();
    let b = Billing::start(b.dir(), "", None);
    let (_, q) = get_any(&b, "/api/v1/meters/calls/query").await;
    assert_eq!(
        q["data"][0]["value"], 1000.0,
        "every acknowledged event survived: {q}"
    );
    // The agent resends after a crash: dedup survived too.
    for batch in &batches {
        assert_eq!(ingest(&b, batch.clone()).await, 204);
    }
    let (_, q) = get_any(&b, "/api/v1/meters/calls/query").await;
    assert_eq!(
        q["data"][0]["value"], 1000.0,
        "resent events are not counted twice: {q}"
    );
}

/// Sets up meter `calls` (COUNT), customer `c` (subject `s`), feature `calls`, and a metered
/// entitlement with `entitlement` fields; returns the base time T0 (a whole day, 10 days ago).
async fn scenario(b: &Billing, entitlement: Value) -> chrono::DateTime<chrono::Utc> {
    use chrono::{Duration as D, Timelike};
    let t0 = (chrono::Utc::now() - D::days(10))
        .with_hour(0)
        .unwrap()
        .with_minute(0)
        .unwrap()
        .with_second(0)
        .unwrap()
        .with_nanosecond(0)
        .unwrap();
    assert_eq!(
        post(
            b,
            "/api/v1/meters",
            json!({"slug": "calls", "eventType": "req", "aggregation": "COUNT"})
        )
        .await
        .0,
        201
    );
    assert_eq!(
        post(
            b,
            "/api/v1/customers",
            json!({"name": "C", "key": "c", "usageAttribution": {"subjectKeys": ["s"]}})
        )
        .await
        .0,
        201
    );
    assert_eq!(
        post(
            b,
            "/api/v1/features",
            json!({"key": "calls", "name": "Calls", "meterSlug": "calls"})
        )
        .await
        .0,
        201
    );
    let mut e = json!({"type": "metered", "featureKey": "calls", "usagePeriod": {"interval": "DAY", "anchor": t0},
                       "measureUsageFrom": t0});
    e.as_object_mut()
        .unwrap()
        .extend(entitlement.as_object().unwrap().clone());
    let (s, body) = post(b, "/api/v2/customers/c/entitlements", e).await;
    assert_eq!(s, 201, "{body}");
    t0
}

async fn grants_of_c(b: &Billing) -> Vec<String> {
    let (_, page) = get_any(b, "/api/v2/customers/c/entitlements/calls/grants").await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn use_n(b: &Billing, at: chrono::DateTime<chrono::Utc>, n: usize) {
    let events: Vec<Value> = (0..n)
        .map(|_| json!({"id": uuid::Uuid::new_v4().to_string(), "source": "t", "specversion": "1.0", "type": "req", "subject": "s", "time": at}))
        .collect();
    assert_eq!(ingest(b, Value::Array(events)).await, 204);
}

async fn grant(b: &Billing, g: Value) {
    let (s, body) = post(b, "/api/v2/customers/c/entitlements/calls/grants", g).await;
    assert_eq!(s, 201, "{body}");
}

async fn value_at(b: &Billing, at: chrono::DateTime<chrono::Utc>) -> Value {
    let t = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (s, v) = get_any(
        b,
        &format!(
            "/api/v2/customers/c/entitlements/calls/value?time={}",
            t.replace('+', "%2B")
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_burns_grants_by_priority_then_expiry_and_overage_denies_hard_limits() {
    use chrono::Duration as D;
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    let t0 = scenario(&b, json!({"isSoftLimit": false})).await;
    // A: 100 at priority 2. B: 50 at priority 1 (burns first). C: 30 at priority 2 expiring
    // after 1 hour (burns before A: same priority, earlier expiry).
    grant(&b, json!({"amount": 100, "priority": 2, "effectiveAt": t0})).await;
    grant(&b, json!({"amount": 50, "priority": 1, "effectiveAt": t0})).await;
    grant(&b, json!({"amount": 30, "priority": 2, "effectiveAt": t0, "expiration": {"duration": "HOUR", "count": 1}})).await;
    use_n(&b, t0 + D::minutes(10), 60).await;
    let v = value_at(&b, t0 + D::minutes(20)).await;
    // 60 = B 50 + C 10 → B 0, C 20, A 100.
    assert_eq!(
        (v["usage"].as_f64(), v["balance"].as_f64()),
        (Some(60.0), Some(120.0)),
        "{v}"
    );
    assert_eq!(v["totalAvailableGrantAmount"].as_f64(), Some(180.0));
    // After C expires its 20 are gone: 100 left (all A).
    let v = value_at(&b, t0 + D::hours(2)).await;
    assert_eq!(v["balance"].as_f64(), Some(100.0), "{v}");
    // 130 more: A burns to 0, 30 overage; a hard limit denies.
    use_n(&b, t0 + D::hours(3), 130).await;
    let v = value_at(&b, t0 + D::hours(4)).await;
    assert_eq!(v["balance"].as_f64(), Some(0.0), "{v}");
    assert_eq!(v["overage"].as_f64(), Some(30.0), "{v}");
    assert_eq!(v["hasAccess"], false);
    // The v1 subject path finds the customer's entitlement through its usage attribution.
    let t = (t0 + D::hours(4))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        .replace('+', "%2B");
    let (s, v1) = get_any(
        &b,
        &format!("/api/v1/subjects/s/entitlements/calls/value?time={t}"),
    )
    .await;
    assert_eq!(s, 200, "{v1}");
    assert_eq!(v1["overage"].as_f64(), Some(30.0), "{v1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_at_reset_is_clamped_and_soft_limits_keep_access() {
    use chrono::Duration as D;
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    let t0 = scenario(&b, json!({"isSoftLimit": true})).await;
    // 100 that rolls over at most 30 and at least 5 each daily reset.
    grant(&b, json!({"amount": 100, "priority": 1, "effectiveAt": t0, "maxRolloverAmount": 30, "minRolloverAmount": 5})).await;
    use_n(&b, t0 + D::hours(1), 60).await;
    let v = value_at(&b, t0 + D::hours(12)).await;
    assert_eq!(v["balance"].as_f64(), Some(40.0), "{v}");
    // Day 2: min(30, max(40, 5)) = 30 rolled over; 10 used → 20.
    use_n(&b, t0 + D::days(1) + D::hours(1), 10).await;
    let v = value_at(&b, t0 + D::days(1) + D::hours(2)).await;
    assert_eq!(
        (v["usage"].as_f64(), v["balance"].as_f64()),
        (Some(10.0), Some(20.0)),
        "{v}"
    );
    // Day 2: 50 more → 0 balance, 30 overage, soft limit keeps access.
    use_n(&b, t0 + D::days(1) + D::hours(3), 50).await;
    let v = value_at(&b, t0 + D::days(1) + D::hours(4)).await;
    assert_eq!(
        (v["balance"].as_f64(), v["overage"].as_f64()),
        (Some(0.0), Some(30.0)),
        "{v}"
    );
    assert_eq!(v["hasAccess"], true, "soft limits never deny");
    // Day 3: min(30, max(0, 5)) = 5; overage not preserved.
    let v = value_at(&b, t0 + D::days(2) + D::hours(1)).await;
    assert_eq!(
        (
            v["balance"].as_f64(),
            v["overage"].as_f64(),
            v["usage"].as_f64()
        ),
        (Some(5.0), Some(0.0), Some(0.0)),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_after_reset_and_manual_reset() {
    use chrono::Duration as D;
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    let t0 = scenario(&b, json!({"issueAfterReset": 10})).await;
    use_n(&b, t0 + D::hours(1), 4).await;
    let v = value_at(&b, t0 + D::hours(2)).await;
    assert_eq!(v["balance"].as_f64(), Some(6.0), "{v}");
    // The next day starts with a fresh 10 (issueAfterReset does not roll over).
    let v = value_at(&b, t0 + D::days(1) + D::hours(1)).await;
    assert_eq!(v["balance"].as_f64(), Some(10.0), "{v}");
    // A manual reset now: usage counts from the reset.
    use_n(&b, chrono::Utc::now() - D::minutes(5), 3).await;
    let v = value_at(&b, chrono::Utc::now()).await;
    assert_eq!(v["usage"].as_f64(), Some(3.0), "{v}");
    let (s, _) = post(
        &b,
        "/api/v2/customers/c/entitlements/calls/reset",
        json!({}),
    )
    .await;
    assert_eq!(s, 204);
    let v = value_at(&b, chrono::Utc::now()).await;
    assert_eq!(
        (v["usage"].as_f64(), v["balance"].as_f64()),
        (Some(0.0), Some(10.0)),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recurring_grants_refill_and_history_shows_each_window() {
    use chrono::Duration as D;
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    // A monthly usage period, and a grant of 10 that refills every day.
    let t0 = scenario(&b, json!({"usagePeriod": {"interval": "MONTH"}})).await;
    grant(&b, json!({"amount": 10, "priority": 1, "effectiveAt": t0, "recurrence": {"interval": "DAY", "anchor": t0}})).await;
    use_n(&b, t0 + D::hours(1), 8).await;
    let v = value_at(&b, t0 + D::hours(2)).await;
    assert_eq!(v["balance"].as_f64(), Some(2.0), "{v}");
    use_n(&b, t0 + D::days(1) + D::hours(1), 3).await;
    let v = value_at(&b, t0 + D::days(1) + D::hours(2)).await;
    assert_eq!(
        (v["usage"].as_f64(), v["balance"].as_f64()),
        (Some(11.0), Some(7.0)),
        "refilled to 10, then 3 used: {v}"
    );

    let q = |t: chrono::DateTime<chrono::Utc>| {
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .replace('+', "%2B")
    };
    let (s, h) = get_any(
        &b,
        &format!(
            "/api/v2/customers/c/entitlements/calls/history?windowSize=DAY&from={}&to={}",
            q(t0),
            q(t0 + D::days(2))
        ),
    )
    .await;
    assert_eq!(s, 200, "{h}");
    let w = h["windowedHistory"].as_array().unwrap();
    assert_eq!(w.len(), 2, "{h}");
    assert_eq!(
        (w[0]["usage"].as_f64(), w[0]["balanceAtStart"].as_f64()),
        (Some(8.0), Some(10.0)),
        "{h}"
    );
    assert_eq!(
        (w[1]["usage"].as_f64(), w[1]["balanceAtStart"].as_f64()),
        (Some(3.0), Some(10.0)),
        "refilled at the day boundary: {h}"
    );
    let burn = &h["burndownHistory"][0];
    let gid = grants_of_c(&b).await[0].clone();
    assert_eq!(
        (
            burn["balanceAtStart"].as_f64(),
            burn["balanceAtEnd"].as_f64()
        ),
        (Some(10.0), Some(7.0)),
        "{h}"
    );
    assert_eq!(
        burn["grantBalancesAtStart"],
        json!({gid.clone(): 10.0}),
        "{h}"
    );
    assert_eq!(burn["grantBalancesAtEnd"], json!({gid: 7.0}), "{h}");
    let (s, _) = get_any(&b, "/api/v2/customers/c/entitlements/calls/history").await;
    assert_eq!(s, 400, "windowSize is required");
}

/// Windows read from day and hour rollups (UTC, whole-hour zones) or minutes (half-hour zones)
/// give exactly what the events say, window by window, across DST-free and DST zones and ranges
/// that start and end mid-hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_in_any_time_zone_match_the_events_exactly() {
    use chrono::{Datelike, TimeZone, Timelike};
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    let (s, body) = post(
        &b,
        "/api/v1/meters",
        json!({"slug": "w", "eventType": "w", "aggregation": "SUM", "valueProperty": "$.v"}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    // 600 events every 7 minutes over ~3 days, each worth its index.
    let t0 = chrono::Utc
        .with_ymd_and_hms(2026, 3, 27, 21, 13, 0)
        .unwrap();
    let times: Vec<chrono::DateTime<chrono::Utc>> = (0..600)
        .map(|i| t0 + chrono::Duration::minutes(7 * i))
        .collect();
    let events: Vec<Value> = times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": format!("w{i}"), "source": "w", "type": "w", "subject": "s",
                   "time": t, "data": {"v": i}})
        })
        .collect();
    assert_eq!(ingest(&b, Value::Array(events)).await, 204);
    let from = t0 + chrono::Duration::minutes(95);
    let to = t0 + chrono::Duration::minutes(7 * 600 - 200);
    for (tz, size) in [
        ("UTC", "DAY"),
        ("Europe/Berlin", "DAY"),
        ("America/New_York", "DAY"),
        ("Asia/Kolkata", "DAY"),
        ("Asia/Kolkata", "HOUR"),
        ("Europe/Berlin", "MONTH"),
        ("UTC", "HOUR"),
    ] {
        let zone: chrono_tz::Tz = tz.parse().unwrap();
        let (s, body) = get_any(
            &b,
            &format!(
                "/api/v1/meters/w/query?windowSize={size}&windowTimeZone={tz}&from={}&to={}",
                from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    .replace('+', "%2B"),
                to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    .replace('+', "%2B")
            ),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        let mut expected: std::collections::BTreeMap<String, f64> = Default::default();
        for (i, t) in times.iter().enumerate() {
            if *t < from || *t >= to {
                continue;
            }
            let local = t.with_timezone(&zone);
            let start = match size {
                "HOUR" => local.with_minute(0).unwrap().with_second(0).unwrap(),
                "DAY" => zone
                    .from_local_datetime(&local.date_naive().and_hms_opt(0, 0, 0).unwrap())
                    .earliest()
                    .unwrap(),
                _ => zone
                    .from_local_datetime(
                        &local
                            .date_naive()
                            .with_day(1)
                            .unwrap()
                            .and_hms_opt(0, 0, 0)
                            .unwrap(),
                    )
                    .earliest()
                    .unwrap(),
            };
            *expected
                .entry(
                    start
                        .with_timezone(&chrono::Utc)
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                )
                .or_default() += i as f64;
        }
        let got: std::collections::BTreeMap<String, f64> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let start: chrono::DateTime<chrono::Utc> =
                    r["windowStart"].as_str().unwrap().parse().unwrap();
                (
                    start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    r["value"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, expected, "{size} windows in {tz}");
    }
}

// ---- The product catalog: plans, add-ons, plan add-ons ----

async fn del(b: &Billing, path: &str) -> u16 {
    client()
        .delete(b.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Meters and features the catalog tests price: `api_requests` (metered), `support` (no meter).
async fn catalog_features(b: &Billing) {
    let (s, _) = post(
        b,
        "/api/v1/meters",
        json!({"slug": "api_requests", "eventType": "kong.api_request", "aggregation": "COUNT"}),
    )
    .await;
    assert_eq!(s, 201);
    for f in [
        json!({"key": "api_requests", "name": "API requests", "meterSlug": "api_requests"}),
        json!({"key": "support", "name": "Support"}),
    ] {
        assert_eq!(post(b, "/api/v1/features", f).await.0, 201);
    }
}

/// A plan with a 14-day trial and a default phase: a flat monthly fee and graduated API calls.
fn pro_plan(name: &str) -> Value {
    let api_card = json!({
        "type": "usage_based", "key": "api_requests", "name": "API requests",
        "featureKey": "api_requests", "billingCadence": "P1M",
        "price": {"type": "tiered", "mode": "graduated", "tiers": [
            {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0.30"}},
            {"upToAmount": "5000", "unitPrice": {"type": "unit", "amount": "0.20"}},
            {"unitPrice": {"type": "unit", "amount": "0.10"}}
        ], "maximumAmount": "5000"},
        "discounts": {"usage": {"quantity": "100"}},
        "entitlementTemplate": {"type": "metered", "issueAfterReset": 10000, "usagePeriod": "P1M"},
        "taxConfig": {"behavior": "exclusive", "stripe": {"code": "txcd_10000000"}}
    });
    json!({
        "key": "pro", "name": name, "currency": "USD", "billingCadence": "P1M",
        "phases": [
            {"key": "trial", "name": "Trial", "duration": "P14D", "rateCards": [
                {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
                 "price": {"type": "flat", "amount": "0", "paymentTerm": "in_advance"}}
            ]},
            {"key": "default", "name": "Default", "duration": null, "rateCards": [
                {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
                 "price": {"type": "flat", "amount": "49", "paymentTerm": "in_advance"},
                 "discounts": {"percentage": {"percentage": 10}}},
                api_card
            ]}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmeter_python_sdk_drives_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    common::run_sdk(&b, "catalog.py", &[], "catalog: all steps passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_are_versioned_one_draft_per_key_and_publishing_archives_the_previous() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    catalog_features(&b).await;

    let (s, v1) = post(&b, "/api/v1/plans", pro_plan("Pro")).await;
    assert_eq!(s, 201, "{v1}");
    assert_eq!(
        (v1["version"].as_i64(), v1["status"].as_str()),
        (Some(1), Some("draft"))
    );
    assert!(v1["validationErrors"].is_null(), "{v1}");
    let card = &v1["phases"][1]["rateCards"][1];
    assert_eq!(card["price"]["tiers"][0]["unitPrice"]["amount"], "0.30");
    assert_eq!(
        v1["phases"][1]["rateCards"][0]["discounts"]["percentage"]["percentage"],
        10.0
    );
    let id1 = v1["id"].as_str().unwrap().to_owned();

    // One draft per key.
    let (s, e) = post(&b, "/api/v1/plans", pro_plan("Pro again")).await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("single draft"),
        "{e}"
    );

    // By key: no active version yet; includeLatest finds the draft.
    assert_eq!(get_any(&b, "/api/v1/plans/pro").await.0, 404);
    assert_eq!(
        get_any(&b, "/api/v1/plans/pro?includeLatest=true").await.1["id"],
        id1.as_str()
    );

    // A draft may be updated; key and currency are fixed.
    let mut update = pro_plan("Pro (renamed)");
    update["currency"] = json!("EUR");
    assert_eq!(
        put(&b, &format!("/api/v1/plans/{id1}"), update).await.0,
        400
    );
    let (s, updated) = put(
        &b,
        &format!("/api/v1/plans/{id1}"),
        pro_plan("Pro (renamed)"),
    )
    .await;
    assert_eq!(
        (s, updated["name"].as_str()),
        (200, Some("Pro (renamed)")),
        "{updated}"
    );

    let (s, p1) = post(&b, &format!("/api/v1/plans/{id1}/publish"), json!({})).await;
    assert_eq!((s, p1["status"].as_str()), (200, Some("active")), "{p1}");
    assert!(p1["effectiveFrom"].is_string() && p1["effectiveTo"].is_null());
    // Published versions are not edited: a new version is.
    assert_eq!(
        put(&b, &format!("/api/v1/plans/{id1}"), pro_plan("x"))
            .await
            .0,
        400
    );

    let (s, v2) = post(&b, "/api/v1/plans", pro_plan("Pro v2")).await;
    assert_eq!((s, v2["version"].as_i64()), (201, Some(2)), "{v2}");
    let id2 = v2["id"].as_str().unwrap().to_owned();
    assert_eq!(get_any(&b, "/api/v1/plans/pro").await.1["id"], id1.as_str());
    assert_eq!(
        get_any(&b, "/api/v1/plans/pro?includeLatest=true").await.1["id"],
        id2.as_str()
    );

    let (s, p2) = post(&b, &format!("/api/v1/plans/{id2}/publish"), json!({})).await;
    assert_eq!((s, p2["status"].as_str()), (200, Some("active")));
    let (_, old) = get_any(&b, &format!("/api/v1/plans/{id1}")).await;
    assert_eq!(old["status"], "archived", "{old}");
    assert_eq!(old["effectiveTo"], p2["effectiveFrom"]);
    assert_eq!(get_any(&b, "/api/v1/plans/pro").await.1["id"], id2.as_str());

    // Filters.
    let (_, list) = get_any(&b, "/api/v1/plans?status=active").await;
    assert_eq!(list["totalCount"], 1, "{list}");
    assert_eq!(list["items"][0]["version"], 2);
    let (_, list) = get_any(&b, "/api/v1/plans?keyVersion[pro]=1").await;
    assert_eq!(list["items"][0]["id"], id1.as_str());
    let (_, list) = get_any(&b, "/api/v1/plans?currency=EUR").await;
    assert_eq!(list["totalCount"], 0);
    assert_eq!(get_any(&b, "/api/v1/plans?status=gone").await.0, 400);

    // Active plans are archived, not deleted; archived ones may be deleted (softly).
    assert_eq!(del(&b, &format!("/api/v1/plans/{id2}")).await, 400);
    assert_eq!(
        post(&b, &format!("/api/v1/plans/{id2}/archive"), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(get_any(&b, "/api/v1/plans/pro").await.0, 404);
    assert_eq!(del(&b, &format!("/api/v1/plans/{id1}")).await, 204);
    assert_eq!(get_any(&b, "/api/v1/plans").await.1["totalCount"], 1);
    assert_eq!(
        get_any(&b, "/api/v1/plans?includeDeleted=true").await.1["totalCount"],
        2
    );

    // Everything survives a restart from the database.
    drop(b);
    let b = Billing::start(dir.path(), "", None);
    let (_, list) = get_any(
        &b,
        "/api/v1/plans?includeDeleted=true&orderBy=version&order=DESC",
    )
    .await;
    assert_eq!(list["items"][0]["id"], id2.as_str(), "{list}");
    assert_eq!(list["items"][0]["status"], "archived");
}

/// The field of the one validation error a 400 carries, and its code.
fn validation_error(got: &(u16, Value)) -> (String, String) {
    assert_eq!(got.0, 400, "{}", got.1);
    let errors = got.1["extensions"]["validationErrors"].as_array().unwrap();
    assert!(!errors.is_empty(), "{}", got.1);
    (
        errors[0]["field"].as_str().unwrap().to_owned(),
        errors[0]["code"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plans_get_a_400_naming_the_field_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    catalog_features(&b).await;
    let api = "$.phases[?(@.key=='default')].rateCards[?(@.key=='api_requests')]";
    type Breaks = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Breaks, String, &str)> = vec![
        ("key differs from featureKey", Box::new(|p: &mut Value| p["phases"][1]["rateCards"][1]["featureKey"] = json!("support")),
         format!("{api}.featureKey"), "rate_card_key_feature_key_mismatch"),
        ("unknown feature", Box::new(|p: &mut Value| {
            let card = &mut p["phases"][1]["rateCards"][1];
            card["key"] = json!("nope");
            card["featureKey"] = json!("nope");
        }), "$.phases[?(@.key=='default')].rateCards[?(@.key=='nope')].featureKey".into(), "rate_card_feature_not_found"),
        ("lower-case currency", Box::new(|p: &mut Value| p["currency"] = json!("usd")), "$.currency".into(), "currency_invalid"),
        ("unknown currency", Box::new(|p: &mut Value| p["currency"] = json!("ABC")), "$.currency".into(), "currency_not_found"),
        ("negative amount", Box::new(|p: &mut Value| p["phases"][1]["rateCards"][0]["price"]["amount"] = json!("-1")),
         "$.phases[?(@.key=='default')].rateCards[?(@.key=='base')].price.amount".into(), "price_amount_negative"),
        ("tiers out of order", Box::new(|p: &mut Value| p["phases"][1]["rateCards"][1]["price"]["tiers"][1]["upToAmount"] = json!("500")),
         format!("{api}.price.tiers[1].upToAmount"), "price_tier_order_invalid"),
        ("cadence off the whitelist", Box::new(|p: &mut Value| p["billingCadence"] = json!("P2M")), "$.billingCadence".into(), "plan_billing_cadence_invalid"),
        ("percentage over 100", Box::new(|p: &mut Value| p["phases"][1]["rateCards"][0]["discounts"]["percentage"]["percentage"] = json!(150)),
         "$.phases[?(@.key=='default')].rateCards[?(@.key=='base')].discounts.percentage.percentage".into(), "percentage_discount_invalid_value"),
        ("amount not a number", Box::new(|p: &mut Value| p["phases"][1]["rateCards"][0]["price"]["amount"] = json!("ten")),
         "$.phases[1].rateCards[0].price".into(), "invalid_value"),
        ("duplicate phase", Box::new(|p: &mut Value| p["phases"][0]["key"] = json!("default")),
         "$.phases[?(@.key=='default')]".into(), "plan_phase_duplicated_key"),
    ];
    for (what, break_it, field, code) in cases {
        let mut plan = pro_plan("Pro");
        break_it(&mut plan);
        let got = post(&b, "/api/v1/plans", plan).await;
        let (f, c) = validation_error(&got);
        assert_eq!(
            (f.as_str(), c.as_str()),
            (field.as_str(), code),
            "{what}: {}",
            got.1
        );
    }
    let (_, list) = get_any(&b, "/api/v1/plans?includeDeleted=true").await;
    assert_eq!(list["totalCount"], 0, "nothing stored: {list}");

    // Warnings are saved on the draft and block publish until fixed.
    let mut plan = pro_plan("Pro");
    plan["phases"][0]["duration"] = Value::Null;
    let (s, draft) = post(&b, "/api/v1/plans", plan).await;
    assert_eq!(s, 201, "{draft}");
    assert_eq!(
        draft["validationErrors"][0]["code"],
        "plan_has_non_last_phase_with_no_duration"
    );
    let id = draft["id"].as_str().unwrap();
    let (f, c) =
        validation_error(&post(&b, &format!("/api/v1/plans/{id}/publish"), json!({})).await);
    assert_eq!(
        (f.as_str(), c.as_str()),
        (
            "$.phases[?(@.key=='trial')].duration",
            "plan_has_non_last_phase_with_no_duration"
        )
    );
    let (s, fixed) = put(&b, &format!("/api/v1/plans/{id}"), pro_plan("Pro")).await;
    assert!(s == 200 && fixed["validationErrors"].is_null(), "{fixed}");
    assert_eq!(
        post(&b, &format!("/api/v1/plans/{id}/publish"), json!({}))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addons_publish_and_attach_to_plans_under_openmeters_rules() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    catalog_features(&b).await;
    let (_, plan) = post(&b, "/api/v1/plans", pro_plan("Pro")).await;
    let plan_id = plan["id"].as_str().unwrap().to_owned();

    let support = json!({"key": "priority_support", "name": "Priority support", "currency": "USD",
        "instanceType": "single", "rateCards": [
            {"type": "flat_fee", "key": "support", "name": "Support", "featureKey": "support",
             "billingCadence": "P1M", "price": {"type": "flat", "amount": "99", "paymentTerm": "in_advance"},
             "entitlementTemplate": {"type": "boolean"}}]});
    let (s, addon) = post(&b, "/api/v1/addons", support.clone()).await;
    assert_eq!(
        (s, addon["status"].as_str(), addon["version"].as_i64()),
        (201, Some("draft"), Some(1)),
        "{addon}"
    );
    let addon_id = addon["id"].as_str().unwrap().to_owned();
    assert_eq!(
        post(&b, "/api/v1/addons", support).await.0,
        400,
        "one draft per key"
    );

    // Only a published add-on can be offered.
    let attach = json!({"addonId": addon_id, "fromPlanPhase": "default"});
    let (_, c) = validation_error(
        &post(
            &b,
            &format!("/api/v1/plans/{plan_id}/addons"),
            attach.clone(),
        )
        .await,
    );
    assert_eq!(c, "plan_addon_invalid_addon_status");
    assert_eq!(
        post(&b, &format!("/api/v1/addons/{addon_id}/publish"), json!({}))
            .await
            .0,
        200
    );

    let (_, c) = validation_error(
        &post(
            &b,
            &format!("/api/v1/plans/{plan_id}/addons"),
            json!({"addonId": addon_id, "fromPlanPhase": "nope"}),
        )
        .await,
    );
    assert_eq!(c, "plan_addon_unknown_plan_phase_key");
    let (_, c) = validation_error(
        &post(
            &b,
            &format!("/api/v1/plans/{plan_id}/addons"),
            json!({"addonId": addon_id, "fromPlanPhase": "default", "maxQuantity": 3}),
        )
        .await,
    );
    assert_eq!(c, "plan_addon_max_quantity_must_not_be_set");

    let (s, pa) = post(
        &b,
        &format!("/api/v1/plans/{plan_id}/addons"),
        attach.clone(),
    )
    .await;
    assert_eq!(s, 201, "{pa}");
    assert_eq!(pa["addon"]["key"], "priority_support");
    assert_eq!(
        post(&b, &format!("/api/v1/plans/{plan_id}/addons"), attach)
            .await
            .0,
        409
    );
    let (_, list) = get_any(&b, &format!("/api/v1/plans/{plan_id}/addons")).await;
    assert_eq!(list["totalCount"], 1, "{list}");
    let (s, one) = get_any(
        &b,
        &format!("/api/v1/plans/{plan_id}/addons/priority_support"),
    )
    .await;
    assert_eq!((s, one["fromPlanPhase"].as_str()), (200, Some("default")));
    assert_eq!(
        del(&b, &format!("/api/v1/plans/{plan_id}/addons/{addon_id}")).await,
        204
    );
    assert_eq!(
        get_any(&b, &format!("/api/v1/plans/{plan_id}/addons"))
            .await
            .1["totalCount"],
        0
    );

    // A plan whose offered add-on was archived meanwhile cannot be published until it is removed.
    let attach = json!({"addonId": addon_id, "fromPlanPhase": "default"});
    assert_eq!(
        post(&b, &format!("/api/v1/plans/{plan_id}/addons"), attach)
            .await
            .0,
        201
    );
    assert_eq!(
        post(&b, &format!("/api/v1/addons/{addon_id}/archive"), json!({}))
            .await
            .0,
        200
    );
    let (_, c) =
        validation_error(&post(&b, &format!("/api/v1/plans/{plan_id}/publish"), json!({})).await);
    assert_eq!(c, "plan_has_incompatible_addon");
    assert_eq!(
        del(&b, &format!("/api/v1/plans/{plan_id}/addons/{addon_id}")).await,
        204
    );
    assert_eq!(
        post(&b, &format!("/api/v1/plans/{plan_id}/publish"), json!({}))
            .await
            .0,
        200
    );

    // A multiple-instance add-on may only carry flat prices.
    let (s, multi) = post(&b, "/api/v1/addons", json!({"key": "extra_calls", "name": "Extra calls",
        "instanceType": "multiple", "rateCards": [
            {"type": "usage_based", "key": "api_requests", "name": "Calls", "featureKey": "api_requests",
             "billingCadence": "P1M", "price": {"type": "unit", "amount": "0.01"}}]})).await;
    assert_eq!(s, 201, "{multi}");
    let (_, c) = validation_error(
        &post(
            &b,
            &format!("/api/v1/addons/{}/publish", multi["id"].as_str().unwrap()),
            json!({}),
        )
        .await,
    );
    assert_eq!(c, "addon_invalid_ratecard_price_for_multi_instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_drafts_of_one_key_leave_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    catalog_features(&b).await;
    let b = &b;
    let results = futures::future::join_all((0..8).map(|i| async move {
        post(b, "/api/v1/plans", pro_plan(&format!("Pro {i}")))
            .await
            .0
    }))
    .await;
    assert_eq!(
        results.iter().filter(|s| **s == 201).count(),
        1,
        "{results:?}"
    );
    assert!(
        results.iter().all(|s| matches!(s, 201 | 400 | 409)),
        "{results:?}"
    );
    assert_eq!(
        get_any(b, "/api/v1/plans?includeDeleted=true").await.1["totalCount"],
        1
    );
}

/// `tollgate-billing catalog ARGS…` against `b`: (success, stdout + stderr).
fn catalog_cli(b: &Billing, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-billing"))
        .arg("catalog")
        .args(args)
        .args(["--url", &b.url(""), "--token", TOKEN])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_as_code_applies_idempotently_publishes_and_dumps() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    for m in [
        json!({"slug": "api_requests", "eventType": "kong.api_request", "aggregation": "COUNT"}),
        json!({"slug": "llm_tokens", "eventType": "kong.llm_request", "aggregation": "SUM", "valueProperty": "$.tokens"}),
    ] {
        assert_eq!(post(&b, "/api/v1/meters", m).await.0, 201);
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kong-config/catalog.yaml");
    let file = dir.path().join("catalog.yaml");
    std::fs::copy(&example, &file).unwrap();
    let file = file.to_str().unwrap();

    let (ok, out) = catalog_cli(&b, &["apply", file]);
    assert!(ok, "{out}");
    assert_eq!(
        lines(&out),
        [
            "feature api_calls: created",
            "feature llm_tokens: created",
            "feature admin_console: created",
            "addon admin_console: created (draft v1)",
            "plan starter: created (draft v1)",
            "plan pro: created (draft v1)",
            "plan starter add-on admin_console: skipped (add-on admin_console has no active version: apply with --publish)",
        ]
    );
    let (ok, out) = catalog_cli(&b, &["apply", file]);
    assert!(ok, "{out}");
    assert!(
        out.contains("plan pro: unchanged (draft v1)") && !out.contains("created"),
        "{out}"
    );

    let (ok, out) = catalog_cli(&b, &["apply", file, "--publish"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("plan pro: published v1") && out.contains("addon admin_console: published v1"),
        "{out}"
    );
    assert!(
        out.contains("plan starter add-on admin_console: offered (plan v1)"),
        "{out}"
    );
    let (ok, out) = catalog_cli(&b, &["apply", file, "--publish"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("plan pro: unchanged (v1 active)") && !out.contains("published"),
        "{out}"
    );
    assert!(
        out.contains("plan starter add-on admin_console: unchanged (plan v1)"),
        "{out}"
    );

    // Today's catalog, dumped and applied again, changes nothing.
    let dumped = dir.path().join("dump.yaml");
    let (ok, out) = catalog_cli(&b, &["dump", "--output", dumped.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = catalog_cli(&b, &["apply", dumped.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with("unchanged") || l.contains(": unchanged ("))
            .count(),
        7,
        "{out}"
    );
    assert!(
        std::fs::read_to_string(&dumped)
            .unwrap()
            .contains("planAddons:")
    );

    // A price change is a new draft beside the active version.
    let text = std::fs::read_to_string(file)
        .unwrap()
        .replace("amount: \"49\"", "amount: \"59\"");
    std::fs::write(file, text).unwrap();
    let (ok, out) = catalog_cli(&b, &["apply", file]);
    assert!(ok, "{out}");
    assert!(
        out.contains("plan pro: new draft v2 (differs from active v1)"),
        "{out}"
    );
    assert!(
        out.contains("    phases[paid].rateCards[platform].price.amount: \"49\" → \"59\""),
        "{out}"
    );
    assert!(out.contains("plan starter: unchanged (v1 active)"), "{out}");
    let (_, pro) = get_any(&b, "/api/v1/plans/pro?includeLatest=true").await;
    assert_eq!(pro["phases"][1]["rateCards"][0]["price"]["amount"], "59");

    // Bad files are refused with the reason, naming the place.
    std::fs::write(file, "plans: []\nmeters: []\n").unwrap();
    let (ok, out) = catalog_cli(&b, &["apply", file]);
    assert!(!ok && out.contains("unknown field `meters`"), "{out}");
    std::fs::write(
        file,
        "plans:\n  - {key: bad, name: Bad, billingCadence: P2M, phases: []}\n",
    )
    .unwrap();
    let (ok, out) = catalog_cli(&b, &["apply", file]);
    assert!(
        !ok && out.contains("$.billingCadence [plan_billing_cadence_invalid]"),
        "{out}"
    );
}
