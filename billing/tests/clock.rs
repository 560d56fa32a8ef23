//! Billing's simulated clock end to end, on the real `tollgate-billing` binary over HTTP: a month
//! of an entitlement's life through OpenMeter's Python SDK (one big advance and many small ones
//! agree), forward only (409), refused without the flag (403, saying how to turn it on), persisted
//! across restarts, concurrent advances serialised (across two replicas on PostgreSQL), and a
//! kill -9 in the middle of an advance. `tests/clock_postgres.rs` runs this file on PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

const CLOCK: &str = "/api/tollgate/v1/clock";

mod common;

pub use common::Backend;
use common::{Billing, call, client, get, post};

/// This file is the suite on SQLite; `tests/clock_postgres.rs` runs it with PostgreSQL.
#[allow(dead_code)]
fn backend() -> Backend {
    Backend::Sqlite
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// Runs `tests/sdk/clock.py` in `mode` against a fresh simulated billing; its RESULT line.
fn sdk_month(mode: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::simulated(dir.path());
    let stdout = common::run_sdk(&b, "clock.py", &[mode], "clock: all steps passed");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap();
    serde_json::from_str(line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_through_the_sdk_resets_usage_and_small_steps_agree_with_one_big_one() {
    let big = tokio::task::spawn_blocking(|| sdk_month("big"));
    let small = tokio::task::spawn_blocking(|| sdk_month("small"));
    let (big, small) = (big.await.unwrap(), small.await.unwrap());
    assert_eq!(
        big, small,
        "one advance of P1M and many small ones disagree"
    );
    assert_eq!(
        big["final"],
        json!({"usage": 5.0, "balance": 95.0, "hasAccess": true})
    );
}

/// A meter, a feature and a customer with a metered entitlement (`interval`, `issue` per period)
/// for each of `features`.
async fn entitlements(b: &Billing, features: &[&str], interval: &str, issue: u32) {
    let (s, v) = post(
        b,
        "/api/v1/meters",
        json!({"slug": "calls", "eventType": "call", "aggregation": "COUNT"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = post(
        b,
        "/api/v1/customers",
        json!({"name": "ACME", "key": "acme"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    for f in features {
        let (s, v) = post(
            b,
            "/api/v1/features",
            json!({"key": f, "name": f, "meterSlug": "calls"}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = post(
            b,
            "/api/v2/customers/acme/entitlements",
            json!({"type": "metered", "featureKey": f, "usagePeriod": {"interval": interval},
                   "issue": {"amount": issue}}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
}

async fn ingest(b: &Billing, ids: std::ops::Range<usize>) {
    let events: Vec<Value> = ids
        .map(|i| json!({"id": format!("c-{i}"), "source": "clock", "type": "call", "subject": "acme"}))
        .collect();
    let r = client()
        .post(b.url("/api/v1/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::Array(events).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_moves_only_forward_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Billing::simulated(dir.path());
    let before = Utc::now();
    let c = get(&b, CLOCK).await;
    assert_eq!(c["simulated"], true, "{c}");
    let t0 = time(&c["now"]);
    assert!(
        (before - t0).num_seconds().abs() < 60,
        "starts at the real time of the first start: {t0} vs {before}"
    );
    entitlements(&b, &["api"], "DAY", 10).await;
    ingest(&b, 0..3).await;
    // Ingest stamps events with the simulated now; records are dated by it.
    let events = get(&b, "/api/v1/events").await;
    assert_eq!(events.as_array().unwrap().len(), 3, "{events}");
    for e in events.as_array().unwrap() {
        assert_eq!(time(&e["event"]["time"]), t0, "{e}");
        assert_eq!(time(&e["ingestedAt"]), t0, "{e}");
    }
    let ent = get(&b, "/api/v2/customers/acme/entitlements/api").await;
    assert_eq!(time(&ent["createdAt"]), t0, "{ent}");
    // The catalog is on the same clock.
    let (s, plan) = post(
        &b,
        "/api/v1/plans",
        json!({"key": "starter", "name": "Starter", "currency": "USD", "billingCadence": "P1M",
               "phases": [{"key": "main", "name": "Main", "rateCards": []}]}),
    )
    .await;
    assert_eq!(s, 201, "{plan}");
    assert_eq!(time(&plan["createdAt"]), t0, "{plan}");

    // Bad requests name what is wrong and move nothing.
    for (body, wanted) in [
        (json!({}), "advanceBy"),
        (json!({"advanceBy": "one month"}), "advanceBy"),
        (
            json!({"advanceBy": "P1M", "to": "2030-01-01T00:00:00Z"}),
            "not both",
        ),
        (json!({"to": "tomorrow"}), "to"),
        (json!({"advanceBy": "P1M", "extra": 1}), "extra"),
        (json!({"advanceBy": "P999999Y"}), "representable"),
    ] {
        let (s, kind, v) = call(&b, "POST", CLOCK, Some(body.clone())).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert_eq!(kind, "application/problem+json");
        assert!(
            v["detail"].as_str().unwrap().contains(wanted),
            "{body}: {v}"
        );
    }
    assert_eq!(time(&get(&b, CLOCK).await["now"]), t0);

    let (s, v) = post(&b, CLOCK, json!({"advanceBy": "P2DT1H"})).await;
    assert_eq!(s, 200, "{v}");
    let t1 = time(&v["now"]);
    assert_eq!(t1, t0 + chrono::Duration::hours(49), "{v}");
    assert_eq!(time(&v["previous"]), t0);
    // Two daily boundaries crossed: two resets of the entitlement, in order.
    let resets: Vec<DateTime<Utc>> = v["happened"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["type"] == "entitlement.reset")
        .map(|h| time(&h["at"]))
        .collect();
    assert_eq!(resets.len(), 2, "{v}");
    assert!(resets[0] < resets[1] && resets[1] <= t1, "{v}");
    let value = get(&b, "/api/v2/customers/acme/entitlements/api/value").await;
    assert_eq!(
        (value["usage"].as_f64(), value["balance"].as_f64()),
        (Some(0.0), Some(10.0))
    );

    // Backwards is a conflict, and leaves the clock where it is.
    let (s, kind, v) = call(&b, "POST", CLOCK, Some(json!({"to": t0.to_rfc3339()}))).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(kind, "application/problem+json");
    assert!(
        v["detail"].as_str().unwrap().contains("only moves forward"),
        "{v}"
    );
    // Advancing to where it stands does nothing.
    let (s, v) = post(&b, CLOCK, json!({"to": t1.to_rfc3339()})).await;
    assert_eq!((s, v["happenedCount"].as_u64()), (200, Some(0)), "{v}");

    // Persisted: after a kill -9 and a restart (a minute later in real time for all it
    // matters), the clock stands where it was.
    b.kill9();
    let b = Billing::simulated(dir.path());
    let c = get(&b, CLOCK).await;
    assert_eq!(
        (c["simulated"].clone(), time(&c["now"])),
        (json!(true), t1),
        "{c}"
    );
    assert!(c.get("advancingTo").is_none(), "{c}");
    ingest(&b, 3..7).await;
    let value = get(&b, "/api/v2/customers/acme/entitlements/api/value").await;
    assert_eq!(
        (value["usage"].as_f64(), value["balance"].as_f64()),
        (Some(4.0), Some(6.0))
    );
    drop(b);

    // The same database started without the flag runs on real time again.
    let config = dir.path().join("billing.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("simulated_clock = true\n", "")).unwrap();
    let b = Billing::start(dir.path(), "", None);
    let c = get(&b, CLOCK).await;
    assert_eq!(c["simulated"], false, "{c}");
    assert!(
        (time(&c["now"]) - Utc::now()).num_seconds().abs() < 60,
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_the_clock_is_real_time_and_cannot_be_moved() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    let c = get(&b, CLOCK).await;
    assert_eq!(c["simulated"], false, "{c}");
    let now = time(&c["now"]);
    assert!((now - Utc::now()).num_seconds().abs() < 5, "{c}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(time(&get(&b, CLOCK).await["now"]) > now, "real time moves");
    for body in [
        json!({"advanceBy": "P1M"}),
        json!({"to": "2100-01-01T00:00:00Z"}),
    ] {
        let (s, kind, v) = call(&b, "POST", CLOCK, Some(body)).await;
        assert_eq!(s, 403, "{v}");
        assert_eq!(kind, "application/problem+json");
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.contains("--simulated-clock") && detail.contains("simulated_clock = true"),
            "says how to turn it on: {detail}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_advances_serialise_and_each_reset_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = Billing::simulated(dir.path());
    // On PostgreSQL a second replica on the same database advances too.
    let second = (crate::backend() == Backend::Postgres)
        .then(|| Billing::start(dir.path(), "", Some(tollgate_e2e::stack::free_port())));
    let t0 = time(&get(&a, CLOCK).await["now"]);
    entitlements(&a, &["api"], "PT1H", 5).await;
    let replicas: Vec<&Billing> = std::iter::once(&a).chain(second.as_ref()).collect();
    let calls = (0..8).map(|i| {
        let b = replicas[i % replicas.len()];
        async move { post(b, CLOCK, json!({"advanceBy": "PT1H"})).await }
    });
    let answers = futures::future::join_all(calls).await;
    let mut resets = Vec::new();
    for (s, v) in &answers {
        assert_eq!(*s, 200, "{v}");
        // Each advance moved the clock by exactly an hour from where it found it.
        assert_eq!(
            time(&v["now"]) - time(&v["previous"]),
            chrono::Duration::hours(1),
            "{v}"
        );
        resets.extend(
            v["happened"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| time(&h["at"])),
        );
    }
    for b in &replicas {
        assert_eq!(
            time(&get(b, CLOCK).await["now"]),
            t0 + chrono::Duration::hours(8)
        );
    }
    resets.sort();
    let before = resets.len();
    resets.dedup();
    assert_eq!(
        (before, resets.len()),
        (8, 8),
        "each hourly reset reported once: {resets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_an_advance_leaves_a_consistent_clock_and_the_advance_can_be_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Billing::simulated(dir.path());
    let t0 = time(&get(&b, CLOCK).await["now"]);
    let features: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
    let names: Vec<&str> = features.iter().map(String::as_str).collect();
    entitlements(&b, &names, "PT1H", 7).await;
    ingest(&b, 0..3).await;
    let target = t0 + chrono::Duration::days(3 * 365);
    let url = b.url(CLOCK);
    let started = Instant::now();
    let advance = tokio::spawn(async move {
        client()
            .post(url)
            .json(&json!({"to": target.to_rfc3339()}))
            .send()
            .await
    });
    // Until the advance has taken its lease (it shows as advancingTo), then kill -9.
    loop {
        let c = get(&b, CLOCK).await;
        if c.get("advancingTo").is_some() {
            assert_eq!(time(&c["advancingTo"]), target, "{c}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the advance never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.kill9();
    let answered = advance.await.unwrap();
    assert!(
        answered.is_err(),
        "the advance must still be running when billing is killed (make it longer): {answered:?}"
    );

    // Restarted: the clock stands at an instant whose work is done, and says where the
    // interrupted advance was going.
    let b = Billing::simulated(dir.path());
    let c = get(&b, CLOCK).await;
    let stood = time(&c["now"]);
    assert!(stood >= t0 && stood < target, "{c}");
    assert_eq!(time(&c["advancingTo"]), target, "{c}");
    let value = get(&b, "/api/v2/customers/acme/entitlements/f0/value").await;
    assert_eq!(value["usage"].as_f64(), Some(3.0), "nothing moved: {value}");

    // Repeating it finishes it (once the killed process's lease ran out) and reports every
    // hourly reset from where the clock stood, for every entitlement: nothing lost, none twice.
    let (s, v) = post(&b, CLOCK, json!({"to": target.to_rfc3339()})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(time(&v["now"]), target);
    let hours = (target - stood).num_hours() as u64;
    assert_eq!(v["happenedCount"].as_u64(), Some(hours * 40), "{v}");
    assert_eq!(v["truncated"], true);
    assert_eq!(v["happened"].as_array().unwrap().len(), 1000);
    let c = get(&b, CLOCK).await;
    assert!(c.get("advancingTo").is_none(), "{c}");
    let value = get(&b, "/api/v2/customers/acme/entitlements/f0/value").await;
    assert_eq!(
        (value["usage"].as_f64(), value["balance"].as_f64()),
        (Some(0.0), Some(7.0)),
        "{value}"
    );
}
