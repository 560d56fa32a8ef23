//! Invoicing at scale: CUSTOMERS customers (default 10,000), each with 4 rate cards (a flat fee in
//! advance, a unit price, a graduated price and a package price on three SUM meters) and a month
//! of usage (10 events per meter per customer), invoiced by the real binary (SQLite, release
//! build) on its simulated clock:
//!
//! 1. advancing to just after the period's start issues every customer's fee invoice;
//! 2. advancing past the period's end plus the collection interval collects, rates, issues and
//!    pays every customer's usage invoice (3 lines each, quantities read from the meters).
//!
//! Each phase's time is printed with billing's peak resident memory (`VmHWM`), beside two floors
//! measured in the same run: the rating engine alone on the same lines (in process, no I/O) and
//! the meter reads alone (the same usage queries on the same database, in process, after billing
//! stopped).
//!
//! Run: `cargo bench -p tollgate-billing --bench invoicing [-- CUSTOMERS]`; with
//! `TOLLGATE_INVOICING_CONCURRENCY=1` in the environment billing settles invoices one at a time
//! with each line's usage read on its own (the behaviour before settling in groups).

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};
use rust_decimal::Decimal;
use serde_json::{Value, json};

mod common;

use common::{Billing, post};
use tollgate_billing::invoice::usage::UsageReader;
use tollgate_billing::pricing::{Currency, Price, RatingInput, Tier, TierMode, rate};
use tollgate_billing::store::{Location, Store};

fn start(dir: &std::path::Path) -> Billing {
    Billing::start(dir, &["--simulated-clock"])
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

const METERS: [&str; 3] = ["api", "tokens", "storage"];

fn graduated() -> Value {
    json!({"type": "tiered", "mode": "graduated", "tiers": [
        {"upToAmount": "10000", "unitPrice": {"type": "unit", "amount": "0.001"}},
        {"upToAmount": "100000", "unitPrice": {"type": "unit", "amount": "0.0005"}},
        {"flatPrice": {"type": "flat", "amount": "10"}, "unitPrice": {"type": "unit", "amount": "0.0001"}}]})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let customers: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path());
    let c = reqwest::Client::new();
    let clock: Value = c
        .get(format!("{}/api/tollgate/v1/clock", b.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let t0: DateTime<Utc> = clock["now"].as_str().unwrap().parse().unwrap();
    let t1 = t0 + chrono::Duration::days(30);

    let setup = Instant::now();
    for m in METERS {
        post(
            &c,
            format!("{}/api/v1/meters", b.base),
            json!({"slug": m, "eventType": m, "aggregation": "SUM", "valueProperty": "$.n"}),
        )
        .await;
        post(
            &c,
            format!("{}/api/v1/features", b.base),
            json!({"key": m, "name": m, "meterSlug": m}),
        )
        .await;
    }
    let prices = [
        json!({"type": "unit", "amount": "0.002"}),
        graduated(),
        json!({"type": "package", "amount": "5", "quantityPerPackage": "100"}),
    ];
    stream::iter(0..customers)
        .for_each_concurrent(16, |i| {
            let (c, base, prices) = (&c, &b.base, &prices);
            async move {
                let key = format!("cust{i}");
                post(c, format!("{base}/api/v1/customers"), json!({"name": key, "key": key, "usageAttribution": {"subjectKeys": [key]}})).await;
                let period = json!({"from": iso(t0), "to": iso(t1)});
                let mut lines = vec![json!({"name": "Platform fee", "period": period, "invoiceAt": iso(t0),
                    "rateCard": {"price": {"type": "flat", "amount": "29", "paymentTerm": "in_advance"}}})];
                for (m, p) in METERS.iter().zip(prices) {
                    lines.push(json!({"name": m, "period": period, "invoiceAt": iso(t1), "rateCard": {"featureKey": m, "price": p}}));
                }
                post(c, format!("{base}/api/v1/billing/customers/{key}/invoices/pending-lines"), json!({"currency": "USD", "lines": lines})).await;
            }
        })
        .await;
    // A month of usage: 10 events per meter per customer, spread over the month.
    let mut events = Vec::new();
    for i in 0..customers {
        for (mi, m) in METERS.iter().enumerate() {
            for d in 0..10 {
                events.push(json!({"specversion": "1.0", "id": format!("{i}-{m}-{d}"), "source": "bench", "type": m,
                    "subject": format!("cust{i}"), "time": iso(t0 + chrono::Duration::days(3 * d) + chrono::Duration::minutes(1)),
                    "data": {"n": (i % 97 + 1) * (mi + 1) * 137}}));
            }
        }
    }
    let n_events = events.len();
    stream::iter(events.chunks(1000).map(|c| c.to_vec()))
        .for_each_concurrent(4, |chunk| {
            let (c, base) = (&c, &b.base);
            async move {
                let r = c
                    .post(format!("{base}/api/v1/events"))
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(Value::Array(chunk).to_string())
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
            }
        })
        .await;
    println!(
        "setup: {customers} customers × 4 rate cards, {n_events} events in {:.1} s (not timed below)",
        setup.elapsed().as_secs_f64()
    );
    let rss_setup = b.peak_rss_mib();

    let advance = |to: DateTime<Utc>| {
        let (c, base) = (&c, &b.base);
        async move {
            let t = Instant::now();
            let r = c
                .post(format!("{base}/api/tollgate/v1/clock"))
                .json(&json!({"to": iso(to)}))
                .timeout(Duration::from_secs(3600))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            let v: Value = r.json().await.unwrap();
            (t.elapsed(), v["happenedCount"].as_u64().unwrap_or(0))
        }
    };
    let (fees, fee_events) = advance(t0 + chrono::Duration::minutes(1)).await;
    let rss_fees = b.peak_rss_mib();
    let (usage, usage_events) = advance(t1 + chrono::Duration::hours(2)).await;
    let rss_usage = b.peak_rss_mib();
    let list: Value = c
        .get(format!(
            "{}/api/v1/billing/invoices?statuses=paid&pageSize=1",
            b.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paid = list["totalCount"].as_u64().unwrap();
    assert_eq!(
        paid as usize,
        2 * customers,
        "every fee and usage invoice paid"
    );
    drop(b);

    // Floor 1: the rating engine alone on the same lines.
    let tiers = vec![
        Tier {
            up_to: Some(Decimal::from(10_000)),
            flat: None,
            unit: Some("0.001".parse().unwrap()),
        },
        Tier {
            up_to: Some(Decimal::from(100_000)),
            flat: None,
            unit: Some("0.0005".parse().unwrap()),
        },
        Tier {
            up_to: None,
            flat: Some(Decimal::from(10)),
            unit: Some("0.0001".parse().unwrap()),
        },
    ];
    let engine_prices = [
        Price::Unit {
            amount: "0.002".parse().unwrap(),
        },
        Price::Tiered {
            mode: TierMode::Graduated,
            tiers,
        },
        Price::Package {
            amount: Decimal::from(5),
            quantity_per_package: Decimal::from(100),
        },
    ];
    let t = Instant::now();
    let mut sum = Decimal::ZERO;
    for i in 0..customers {
        for (mi, p) in engine_prices.iter().enumerate() {
            let q = Decimal::from((i % 97 + 1) * (mi + 1) * 137 * 10);
            sum += rate(&RatingInput::whole_period(Currency::USD, p, q))
                .unwrap()
                .total();
        }
    }
    let engine = t.elapsed();

    // Floor 2: the meter reads alone, on the same database.
    let store = Store::open(&Location::Sqlite(dir.path().to_owned()))
        .await
        .unwrap();
    let t = Instant::now();
    let mut reader = UsageReader::new(&store);
    for i in 0..customers {
        let subjects = vec![format!("cust{i}")];
        for m in METERS {
            reader.usage(m, &subjects, t0, t1).await.unwrap();
        }
    }
    let reads = t.elapsed();

    let per = |d: Duration| d.as_secs_f64() / customers as f64 * 1e6;
    println!("| step | time | per customer | peak RSS |");
    println!("|---|---|---|---|");
    println!(
        "| fees: {customers} invoices made, issued, paid ({fee_events} happenings) | {:.2} s | {:.0} µs | {:.0} MiB |",
        fees.as_secs_f64(),
        per(fees),
        rss_fees
    );
    println!(
        "| usage: {customers} invoices × 3 metered lines collected, rated, issued, paid ({usage_events} happenings) | {:.2} s | {:.0} µs | {:.0} MiB |",
        usage.as_secs_f64(),
        per(usage),
        rss_usage
    );
    println!(
        "| floor: meter reads alone ({} queries, in process) | {:.2} s | {:.0} µs | |",
        3 * customers,
        reads.as_secs_f64(),
        per(reads)
    );
    println!(
        "| floor: rating engine alone ({} lines) | {:.4} s | {:.1} µs | |",
        3 * customers,
        engine.as_secs_f64(),
        per(engine)
    );
    println!(
        "peak RSS after setup: {rss_setup:.0} MiB; usage phase / meter reads = {:.1}x; fee phase / meter reads = {:.1}x; \
         TOLLGATE_INVOICING_CONCURRENCY={}; (engine checksum {sum})",
        usage.as_secs_f64() / reads.as_secs_f64(),
        fees.as_secs_f64() / reads.as_secs_f64(),
        std::env::var("TOLLGATE_INVOICING_CONCURRENCY").unwrap_or_else(|_| "unset (32)".into())
    );
}
