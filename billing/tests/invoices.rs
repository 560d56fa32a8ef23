//! Invoicing against the real `tollgate-billing` binary on its simulated clock: OpenMeter's
//! Python SDK driving profiles, overrides, pending lines, invoices and apps; each pricing model's
//! invoice checked against amounts worked out by hand from OpenMeter's rules; progressive billing
//! that bills nothing twice; late events inside the collection interval; the custom invoicing
//! app's hooks; the printable page; and a kill -9 while the scheduler advances invoices.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

const CLOCK: &str = "/api/tollgate/v1/clock";

pub mod common;

pub use common::Backend;
use common::{Billing, client};

/// This file is the suite on SQLite; `tests/invoices_postgres.rs` runs it on PostgreSQL.
#[allow(dead_code)]
fn backend() -> Backend {
    Backend::Sqlite
}

async fn call(b: &Billing, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = client().request(method.parse().unwrap(), b.url(path));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post(b: &Billing, path: &str, body: Value) -> (u16, Value) {
    call(b, "POST", path, Some(body)).await
}

async fn get(b: &Billing, path: &str) -> (u16, Value) {
    call(b, "GET", path, None).await
}

async fn ingest(b: &Billing, events: Value) {
    let s = common::ingest(b, events).await;
    assert!(s < 300, "ingest: {s}");
}

fn ev(id: &str, subject: &str, time: DateTime<Utc>, n: i64) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "invoice-test", "type": "request",
           "subject": subject, "time": iso(time), "data": {"n": n}})
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn now(b: &Billing) -> DateTime<Utc> {
    let (_, c) = get(b, CLOCK).await;
    c["now"].as_str().unwrap().parse().unwrap()
}

async fn advance_to(b: &Billing, to: DateTime<Utc>) -> Value {
    let (s, r) = post(b, CLOCK, json!({"to": iso(to)})).await;
    assert_eq!(s, 200, "{r}");
    r
}

/// A SUM meter on `request` events' `n`, feature `api` on it, and customers with these keys.
async fn setup(b: &Billing, customers: &[&str]) -> Vec<String> {
    let (s, m) = post(
        b,
        "/api/v1/meters",
        json!({"slug": "api_calls", "eventType": "request", "aggregation": "SUM", "valueProperty": "$.n"}),
    )
    .await;
    assert_eq!(s, 201, "{m}");
    let (s, f) = post(
        b,
        "/api/v1/features",
        json!({"key": "api", "name": "API calls", "meterSlug": "api_calls"}),
    )
    .await;
    assert_eq!(s, 201, "{f}");
    let mut ids = Vec::new();
    for c in customers {
        let (s, v) = post(
            b,
            "/api/v1/customers",
            json!({"name": format!("Customer {c}"), "key": c, "usageAttribution": {"subjectKeys": [c]}}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    ids
}

fn graduated() -> Value {
    // 0–1,000 free, 1,000–10,000 at 0.01, above at 0.005 plus a 5.00 flat fee on entering tier 3.
    json!({"type": "tiered", "mode": "graduated", "tiers": [
        {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0"}},
        {"upToAmount": "10000", "unitPrice": {"type": "unit", "amount": "0.01"}},
        {"flatPrice": {"type": "flat", "amount": "5"}, "unitPrice": {"type": "unit", "amount": "0.005"}}
    ]})
}

/// Pending lines for a month: a 49.00 fee in advance and the graduated API usage in arrears.
async fn month_lines(b: &Billing, customer: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Value {
    let (s, r) = post(
        b,
        &format!("/api/v1/billing/customers/{customer}/invoices/pending-lines"),
        json!({"currency": "USD", "lines": [
            {"name": "Platform fee", "period": {"from": iso(from), "to": iso(to)}, "invoiceAt": iso(from),
             "rateCard": {"price": {"type": "flat", "amount": "49", "paymentTerm": "in_advance"}}},
            {"name": "API calls", "period": {"from": iso(from), "to": iso(to)}, "invoiceAt": iso(to),
             "rateCard": {"featureKey": "api", "price": graduated()}}
        ]}),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    r
}

async fn invoices(b: &Billing, customer: &str) -> Vec<Value> {
    let (s, r) = get(
        b,
        &format!("/api/v1/billing/invoices?customers={customer}&expand=lines&pageSize=1000"),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    r["items"].as_array().unwrap().clone()
}

fn total(inv: &Value) -> &str {
    inv["totals"]["total"].as_str().unwrap()
}

fn assert_totals_add_up(inv: &Value) {
    let t = &inv["totals"];
    let d = |k: &str| {
        t[k].as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap()
    };
    assert_eq!(
        d("total"),
        d("amount") + d("chargesTotal") + d("taxesExclusiveTotal")
            - d("discountsTotal")
            - d("creditsTotal"),
        "{t}"
    );
    let lines: rust_decimal::Decimal = inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["totals"]["total"]
                .as_str()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        })
        .sum();
    assert_eq!(lines, d("total"), "lines sum to the invoice total");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmeter_python_sdk_drives_invoicing() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::simulated(dir.path());
    setup(&b, &["acme", "globex", "initech"]).await;
    common::run_sdk(&b, "invoices.py", &[], "invoices: all steps passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_profile_and_sandbox_are_made_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Billing::simulated(dir.path());
    b.kill9();
    let b = Billing::simulated(dir.path());
    let (_, apps) = get(&b, "/api/v1/apps").await;
    assert_eq!(apps["totalCount"], 1, "{apps}");
    assert_eq!(apps["items"][0]["type"], "sandbox");
    let (_, profiles) = get(&b, "/api/v1/billing/profiles?expand=apps").await;
    assert_eq!(profiles["totalCount"], 1, "{profiles}");
    let p = &profiles["items"][0];
    assert_eq!(p["default"], true);
    assert_eq!(p["apps"]["invoicing"]["type"], "sandbox");
    // OpenMeter's defaults.
    assert_eq!(p["workflow"]["collection"]["interval"], "PT1H");
    assert_eq!(p["workflow"]["invoicing"]["draftPeriod"], "P0D");
    assert_eq!(p["workflow"]["invoicing"]["dueAfter"], "P30D");
    assert_eq!(p["workflow"]["invoicing"]["progressiveBilling"], true);
    assert_eq!(
        p["workflow"]["payment"]["collectionMethod"],
        "charge_automatically"
    );
    // The default can be neither unset nor deleted.
    let id = p["id"].as_str().unwrap();
    let (s, e) = call(
        &b,
        "DELETE",
        &format!("/api/v1/billing/profiles/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 409, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("default"), "{e}");
}

/// name, price, discounts, quantity, then the expected amount, charges, discounts and total.
type Case = (
    &'static str,
    Value,
    Option<Value>,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// Each price model, rated by `simulate` with the quantity given, against amounts worked out by
/// hand from OpenMeter's rules (reference §3.9–§3.10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pricing_model_matches_hand_worked_amounts() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::simulated(dir.path());
    setup(&b, &["acme"]).await;
    let t0 = now(&b).await;
    let t1 = t0 + chrono::Duration::days(30);
    let period = json!({"from": iso(t0), "to": iso(t1)});
    let cases: Vec<Case> = vec![
        // name, price, discounts, quantity, amount, charges, discounts, total
        (
            "flat",
            json!({"type": "flat", "amount": "49.99", "paymentTerm": "in_advance"}),
            None,
            "0",
            "49.99",
            "0",
            "0",
            "49.99",
        ),
        // 1,234 × 0.015 = 18.51
        (
            "unit",
            json!({"type": "unit", "amount": "0.015"}),
            None,
            "1234",
            "18.51",
            "0",
            "0",
            "18.51",
        ),
        // 1,000 × 0 + 9,000 × 0.01 + 5 + 2,500 × 0.005 = 0 + 90 + 5 + 12.50 = 107.50
        (
            "graduated",
            graduated(),
            None,
            "12500",
            "107.5",
            "0",
            "0",
            "107.5",
        ),
        // Volume: 12,500 reaches tier 3 → 12,500 × 0.005 + 5 = 67.50
        (
            "volume",
            json!({"type": "tiered", "mode": "volume", "tiers": [
            {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0.02"}},
            {"upToAmount": "10000", "unitPrice": {"type": "unit", "amount": "0.01"}},
            {"flatPrice": {"type": "flat", "amount": "5"}, "unitPrice": {"type": "unit", "amount": "0.005"}}]}),
            None,
            "12500",
            "67.5",
            "0",
            "0",
            "67.5",
        ),
        // Package: 2,501 units in packages of 1,000 → 3 packages × 2.00 = 6.00
        (
            "package",
            json!({"type": "package", "amount": "2", "quantityPerPackage": "1000"}),
            None,
            "2501",
            "6",
            "0",
            "0",
            "6",
        ),
        // Dynamic: cost 10.333 × 1.2 = 12.3996 → 12.40
        (
            "dynamic",
            json!({"type": "dynamic", "multiplier": "1.2"}),
            None,
            "10.333",
            "12.4",
            "0",
            "0",
            "12.4",
        ),
        // Usage discount first (100 free → 900 × 0.10 = 90.00), then 10 % off → 9.00 off: 81.00
        (
            "unit + discounts",
            json!({"type": "unit", "amount": "0.10"}),
            Some(json!({"usage": {"quantity": "100"}, "percentage": {"percentage": 10}})),
            "1000",
            "90",
            "0",
            "9",
            "81",
        ),
        // Maximum spend 50: 1,000 × 0.10 = 100.00, 50.00 discounted as maximum_spend
        (
            "unit max",
            json!({"type": "unit", "amount": "0.10", "maximumAmount": "50"}),
            None,
            "1000",
            "100",
            "0",
            "50",
            "50",
        ),
        // Minimum spend 25 on 10 × 0.10 = 1.00: a 24.00 commitment charge
        (
            "unit min",
            json!({"type": "unit", "amount": "0.10", "minimumAmount": "25"}),
            None,
            "10",
            "1",
            "24",
            "0",
            "25",
        ),
    ];
    for (name, price, discounts, quantity, amount, charges, disc, tot) in cases {
        let mut rate_card = json!({"price": price});
        if price["type"] != "flat" {
            rate_card["featureKey"] = json!("api");
        }
        if let Some(d) = discounts {
            rate_card["discounts"] = d;
        }
        let (s, inv) = post(
            &b,
            "/api/v1/billing/customers/acme/invoices/simulate",
            json!({"currency": "USD", "lines": [{"name": name, "period": period, "invoiceAt": iso(t1),
                   "rateCard": rate_card, "quantity": quantity}]}),
        )
        .await;
        assert_eq!(s, 200, "{name}: {inv}");
        let t = &inv["totals"];
        assert_eq!(
            (
                t["amount"].as_str().unwrap(),
                t["chargesTotal"].as_str().unwrap(),
                t["discountsTotal"].as_str().unwrap(),
                t["total"].as_str().unwrap()
            ),
            (amount, charges, disc, tot),
            "{name}: {}",
            serde_json::to_string_pretty(&inv["lines"]).unwrap()
        );
        assert_totals_add_up(&inv);
    }
    // The graduated line's detailed lines, one per tier touched and the tier-3 flat fee.
    let (_, inv) = post(
        &b,
        "/api/v1/billing/customers/acme/invoices/simulate",
        json!({"currency": "USD", "lines": [{"name": "API", "period": period, "invoiceAt": iso(t1),
               "rateCard": {"featureKey": "api", "price": graduated()}, "quantity": "12500"}]}),
    )
    .await;
    let children: Vec<(String, String)> = inv["lines"][0]["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["childUniqueReferenceId"].as_str().unwrap().to_owned(),
                c["totals"]["total"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        children,
        [
            ("graduated-tiered-1-price-usage".to_owned(), "0".to_owned()),
            ("graduated-tiered-2-price-usage".to_owned(), "90".to_owned()),
            (
                "graduated-tiered-3-price-usage".to_owned(),
                "12.5".to_owned()
            ),
            ("graduated-tiered-3-flat-price".to_owned(), "5".to_owned()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_refused_by_name_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::simulated(dir.path());
    setup(&b, &["acme"]).await;
    let t0 = now(&b).await;
    let t1 = t0 + chrono::Duration::days(30);
    let line = |rate_card: Value| {
        json!({"currency": "USD", "lines": [{"name": "x", "period": {"from": iso(t0), "to": iso(t1)},
               "invoiceAt": iso(t1), "rateCard": rate_card}]})
    };
    let path = "/api/v1/billing/customers/acme/invoices/pending-lines";
    for (body, needle) in [
        (
            line(json!({"price": {"type": "unit", "amount": "0.1"}})),
            "lines[0].rateCard.featureKey",
        ),
        (
            line(json!({"featureKey": "nope", "price": {"type": "unit", "amount": "0.1"}})),
            "feature nope not found",
        ),
        (
            line(json!({"featureKey": "api", "price": {"type": "unit", "amount": "-1"}})),
            "lines[0].rateCard.price",
        ),
        (json!({"currency": "XXX", "lines": []}), "lines"),
        (
            json!({"currency": "EURO", "lines": [{"name": "x", "period": {"from": iso(t0), "to": iso(t1)}, "invoiceAt": iso(t1)}]}),
            "currency",
        ),
        (
            json!({"currency": "USD", "lines": [{"name": "x", "period": {"from": iso(t1), "to": iso(t0)}, "invoiceAt": iso(t1)}]}),
            "lines[0].period",
        ),
    ] {
        let (s, e) = post(&b, path, body.clone()).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert!(
            e["detail"].as_str().unwrap().contains(needle),
            "{needle}: {e}"
        );
    }
    let (s, e) = post(
        &b,
        "/api/v1/billing/customers/nobody/invoices/pending-lines",
        line(json!({})),
    )
    .await;
    assert_eq!(s, 404, "{e}");
    assert!(invoices(&b, "acme").await.is_empty());
    let (s, e) = post(&b, "/api/v1/billing/profiles", json!({"name": "x", "supplier": {"name": "S"},
        "workflow": {"invoicing": {"draftPeriod": "two days"}},
        "apps": {"tax": "01900000000070008000000000000001", "invoicing": "01900000000070008000000000000001", "payment": "01900000000070008000000000000001"}})).await;
    assert_eq!(s, 400, "{e}");
    let d = e["detail"].as_str().unwrap();
    assert!(
        d.contains("supplier.addresses[0].country") && d.contains("workflow.invoicing.draftPeriod"),
        "{d}"
    );
}

/// A month: the fee in advance at the start, the usage at the end (plus the collection
/// interval), each issued and paid by the sandbox; the printable page escapes what it shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_lines_becomes_issued_paid_invoices_and_a_printable_page() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::simulated(dir.path());
    setup(&b, &["acme"]).await;
    let (s, _) = post(&b, "/api/v1/customers", json!({"name": "<script>alert(1)</script> & Co", "key": "evil", "usageAttribution": {"subjectKeys": ["evil"]}})).await;
    assert_eq!(s, 201);
    let t0 = now(&b).await;
    let t1 = t0 + chrono::Duration::days(30);
    month_lines(&b, "acme", t0, t1).await;
    month_lines(&b, "evil", t0, t1).await;
    ingest(
        &b,
        json!([
            ev("a1", "acme", t0 + chrono::Duration::days(1), 7000),
            ev("a2", "acme", t0 + chrono::Duration::days(20), 5500)
        ]),
    )
    .await;

    // The fee falls due at once.
    advance_to(&b, t0 + chrono::Duration::minutes(1)).await;
    let list = invoices(&b, "acme").await;
    let fee: Vec<&Value> = list.iter().filter(|i| i["status"] == "paid").collect();
    assert_eq!(fee.len(), 1, "{list:?}");
    assert_eq!(total(fee[0]), "49");
    assert!(
        fee[0]["number"]
            .as_str()
            .unwrap()
            .starts_with("OM-SANDBOX-ACME-"),
        "{}",
        fee[0]
    );
    let gathering: Vec<&Value> = list.iter().filter(|i| i["status"] == "gathering").collect();
    assert_eq!(gathering.len(), 1);
    // Live usage on the gathering invoice: 12,500 → 107.50.
    assert_eq!(total(gathering[0]), "107.5", "{}", gathering[0]);

    // The period ends; within the collection interval the invoice waits for late events.
    let r = advance_to(&b, t1 + chrono::Duration::minutes(30)).await;
    assert!(
        r["happened"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["type"] == "invoice.created"),
        "{r}"
    );
    let waiting: Vec<Value> = invoices(&b, "acme")
        .await
        .into_iter()
        .filter(|i| i["status"] == "draft")
        .collect();
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        waiting[0]["statusDetails"]["extendedStatus"],
        "draft.waiting_for_collection"
    );
    // A late event, time-stamped inside the period, arrives within the interval.
    ingest(
        &b,
        json!([ev("late", "acme", t1 - chrono::Duration::minutes(5), 1000)]),
    )
    .await;
    advance_to(&b, t1 + chrono::Duration::hours(2)).await;
    let list = invoices(&b, "acme").await;
    let paid: Vec<&Value> = list.iter().filter(|i| i["status"] == "paid").collect();
    assert_eq!(paid.len(), 2, "{list:?}");
    let usage = paid.iter().find(|i| total(i) != "49").unwrap();
    // 13,500: 90 + 5 + 3,500 × 0.005 = 112.50 — the late event is on it.
    assert_eq!(total(usage), "112.5", "{usage}");
    assert_eq!(usage["lines"][0]["quantity"], "13500");
    assert_totals_add_up(usage);
    assert!(
        list.iter().all(|i| i["status"] != "gathering"),
        "no lines left to gather"
    );
    assert!(usage["dueAt"].is_string() && usage["issuedAt"].is_string());

    // The printable page.
    let evil = invoices(&b, "evil").await;
    let id = evil[0]["id"].as_str().unwrap();
    let r = client()
        .get(b.url(&format!("/api/tollgate/v1/invoices/{id}/html")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = r.text().await.unwrap();
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co"),
        "{page}"
    );
    assert!(!page.contains("<script>"), "{page}");
    assert!(
        page.contains("Tollgate") && page.contains("Total due") && page.contains("49 USD"),
        "{page}"
    );
}

/// Progressive billing: invoicing usage mid-period, then the rest at the end, bills exactly what
/// one invoice for the whole period would (the graduated tiers continue where the first stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progressive_billing_bills_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::simulated(dir.path());
    setup(&b, &["acme"]).await;
    let t0 = now(&b).await;
    let t1 = t0 + chrono::Duration::days(30);
    let (s, r) = post(
        &b,
        "/api/v1/billing/customers/acme/invoices/pending-lines",
        json!({"currency": "USD", "lines": [{"name": "API calls", "period": {"from": iso(t0), "to": iso(t1)},
               "invoiceAt": iso(t1), "rateCard": {"featureKey": "api", "price": graduated()}}]}),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    ingest(
        &b,
        json!([ev("p1", "acme", t0 + chrono::Duration::days(2), 6000)]),
    )
    .await;
    advance_to(&b, t0 + chrono::Duration::days(10)).await;
    ingest(
        &b,
        json!([ev("p2", "acme", t0 + chrono::Duration::days(12), 6500)]),
    )
    .await;

    let (s, made) = post(
        &b,
        "/api/v1/billing/invoices/invoice",
        json!({"customerId": "acme"}),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    let first = &made[0];
    // 6,000 so far: 5,000 × 0.01 = 50.00; usage after asOf is not on it.
    assert_eq!(first["lines"][0]["quantity"], "6000", "{first}");
    assert_eq!(
        first["statusDetails"]["extendedStatus"],
        "draft.waiting_for_collection"
    );
    let id = first["id"].as_str().unwrap();
    let (s, snap) = post(
        &b,
        &format!("/api/v1/billing/invoices/{id}/snapshot-quantities"),
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{snap}");
    assert_eq!(snap["status"], "paid", "{snap}");
    assert_eq!(total(&snap), "50");

    advance_to(&b, t1 + chrono::Duration::hours(2)).await;
    let list = invoices(&b, "acme").await;
    let paid: Vec<&Value> = list.iter().filter(|i| i["status"] == "paid").collect();
    assert_eq!(paid.len(), 2, "{list:?}");
    let second = paid.iter().find(|i| i["id"] != id).unwrap();
    let line = &second["lines"][0];
    // The rest: 6,500 more, starting at 6,000: 4,000 × 0.01 + 5 + 2,500 × 0.005 = 57.50.
    assert_eq!(line["quantity"], "6500", "{line}");
    assert_eq!(line["preLinePeriodQuantity"], "6000", "{line}");
    assert_eq!(total(second), "57.5", "{second}");
    // Together: the whole period's 12,500 → 107.50, as one invoice would have billed.
    assert_eq!(
        total(first).parse::<rust_decimal::Decimal>().unwrap()
            + total(second).parse::<rust_decimal::Decimal>().unwrap(),
        "107.5".parse::<rust_decimal::Decimal>().unwrap()
    );
}

/// The custom invoicing app: the invoice waits at draft.syncing and issuing.syncing until the
/// integration calls back, then at payment_processing.pending until it reports a payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_invoicing_waits_for_the_integration() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::simulated(dir.path());
    let ids = setup(&b, &["acme"]).await;
    let (s, inst) = post(
        &b,
        "/api/v1/marketplace/listings/custom_invoicing/install",
        json!({"name": "Our ERP"}),
    )
    .await;
    assert_eq!(s, 200, "{inst}");
    let app_id = inst["app"]["id"].as_str().unwrap();
    let (_, profiles) = get(&b, "/api/v1/billing/profiles").await;
    let profile = profiles["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["apps"]["invoicing"]["id"] == app_id)
        .unwrap();
    let (s, o) = call(
        &b,
        "PUT",
        &format!("/api/v1/billing/customers/{}", ids[0]),
        Some(json!({"billingProfileId": profile["id"]})),
    )
    .await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["customerOverride"]["billingProfileId"], profile["id"]);
    let t0 = now(&b).await;
    let t1 = t0 + chrono::Duration::days(30);
    month_lines(&b, "acme", t0, t1).await;
    advance_to(&b, t0 + chrono::Duration::minutes(1)).await;
    let inv = invoices(&b, "acme")
        .await
        .into_iter()
        .find(|i| i["status"] == "draft")
        .unwrap();
    assert_eq!(
        inv["statusDetails"]["extendedStatus"], "draft.syncing",
        "{inv}"
    );
    let id = inv["id"].as_str().unwrap();
    let base = format!("/api/v1/apps/custom-invoicing/{id}");
    // Out of order: refused, naming the status.
    let (s, e) = post(&b, &format!("{base}/issuing/synchronized"), json!({})).await;
    assert_eq!(s, 409, "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("draft.syncing"),
        "{e}"
    );
    let (s, _) = post(
        &b,
        &format!("{base}/draft/synchronized"),
        json!({"invoicing": {"externalId": "erp-1"}}),
    )
    .await;
    assert_eq!(s, 204);
    let (_, inv) = get(&b, &format!("/api/v1/billing/invoices/{id}")).await;
    assert_eq!(
        inv["statusDetails"]["extendedStatus"], "issuing.syncing",
        "{inv}"
    );
    let (s, _) = post(
        &b,
        &format!("{base}/issuing/synchronized"),
        json!({"invoicing": {"invoiceNumber": "ERP-2026-001"}}),
    )
    .await;
    assert_eq!(s, 204);
    let (_, inv) = get(&b, &format!("/api/v1/billing/invoices/{id}")).await;
    assert_eq!(
        inv["statusDetails"]["extendedStatus"], "payment_processing.pending",
        "{inv}"
    );
    assert_eq!(inv["number"], "ERP-2026-001");
    let (s, e) = post(
        &b,
        &format!("{base}/payment/status"),
        json!({"trigger": "teleported"}),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    let (s, _) = post(
        &b,
        &format!("{base}/payment/status"),
        json!({"trigger": "paid"}),
    )
    .await;
    assert_eq!(s, 204);
    let (_, inv) = get(&b, &format!("/api/v1/billing/invoices/{id}")).await;
    assert_eq!(inv["status"], "paid");
    // The app is in use by a profile: it cannot be uninstalled.
    let (s, e) = call(&b, "DELETE", &format!("/api/v1/apps/{app_id}"), None).await;
    assert_eq!(s, 409, "{e}");
}

/// kill -9 while the clock's advance has the scheduler turning many gathering invoices into
/// issued ones; after a restart the advance is repeated and every customer ends with exactly
/// one invoice for its usage — none made twice, none lost — and, with a rule on
/// `invoice.created`, every invoice has exactly one `invoice.created` event: the event is
/// recorded in the invoice's own transaction, so the kill cannot fall between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_advancing_invoices_makes_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Billing::simulated(dir.path());
    // Enough that the usage invoices are still being made at the kill.
    let n = 300;
    let keys: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    setup(&b, &key_refs).await;
    // A disabled channel: events are recorded (their delivery FAILED, saying so), none sent.
    let (s, channel) = post(
        &b,
        "/api/v1/notification/channels",
        json!({"type": "WEBHOOK", "name": "finance", "url": "http://127.0.0.1:9/", "disabled": true}),
    )
    .await;
    assert_eq!(s, 201, "{channel}");
    let (s, rule) = post(
        &b,
        "/api/v1/notification/rules",
        json!({"type": "invoice.created", "name": "new invoices", "channels": [channel["id"]]}),
    )
    .await;
    assert_eq!(s, 201, "{rule}");
    let t0 = now(&b).await;
    let t1 = t0 + chrono::Duration::days(30);
    let mut events = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        // Ten customers' periods end each minute: the advance collects them at 30 instants and
        // issues them at 30 more, ten invoices per transaction, so the kill lands while it runs
        // (at one instant all 300 were stored in a few transactions, too fast to catch).
        let end = t1 + chrono::Duration::minutes(i as i64 / 10);
        month_lines(&b, k, t0, end).await;
        events.push(ev(
            &format!("e{i}"),
            k,
            t0 + chrono::Duration::days(3),
            2000 + i as i64,
        ));
    }
    ingest(&b, Value::Array(events)).await;
    advance_to(&b, t0 + chrono::Duration::minutes(1)).await;
    let target = t1 + chrono::Duration::hours(2);
    let url = b.url(CLOCK);
    let advance = tokio::spawn(async move {
        let _ = client()
            .post(url)
            .json(&json!({"to": iso(target)}))
            .send()
            .await;
    });
    // Kill it once the first usage invoices exist, while the rest are still being made.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, made) = get(
            &b,
            "/api/v1/billing/invoices?statuses=draft&statuses=paid&pageSize=1000",
        )
        .await;
        if made["totalCount"].as_u64().unwrap_or(0) > n as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "no usage invoice was made");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.kill9();
    let _ = advance.await;
    let b = Billing::simulated(dir.path());
    let (_, c) = get(&b, CLOCK).await;
    assert!(
        c["advancingTo"].is_string(),
        "the kill came after the advance finished: {c}"
    );
    let (_, mid) = get(
        &b,
        "/api/v1/billing/invoices?statuses=draft&statuses=paid&pageSize=1000",
    )
    .await;
    let mid = mid["totalCount"].as_u64().unwrap();
    // Usually some usage invoices are still to be made; on a fast PostgreSQL all may be made
    // already while the advance (cut short above) had not finished its instant.
    assert!(
        mid > n as u64 && mid <= 2 * n as u64,
        "killed mid-way: {mid} of {} invoices made",
        2 * n
    );
    advance_to(&b, target).await;
    let (_, all) = get(&b, "/api/v1/billing/invoices?expand=lines&pageSize=1000").await;
    let all = all["items"].as_array().unwrap();
    for (i, k) in keys.iter().enumerate() {
        let mine: Vec<&Value> = all
            .iter()
            .filter(|inv| inv["customer"]["key"] == k.as_str())
            .collect();
        let usage: Vec<&&Value> = mine
            .iter()
            .filter(|inv| inv["lines"][0]["name"] == "API calls")
            .collect();
        let fees: Vec<&&Value> = mine
            .iter()
            .filter(|inv| inv["lines"][0]["name"] == "Platform fee")
            .collect();
        assert_eq!((usage.len(), fees.len()), (1, 1), "{k}: {mine:?}");
        assert_eq!(usage[0]["status"], "paid", "{k}");
        // (2,000 + i − 1,000) × 0.01
        let expected =
            rust_decimal::Decimal::from(1000 + i as i64) / rust_decimal::Decimal::from(100);
        assert_eq!(
            total(usage[0]).parse::<rust_decimal::Decimal>().unwrap(),
            expected,
            "{k}"
        );
    }
    // Exactly one invoice.created per invoice made, none for another id.
    let (s, events) = get(&b, "/api/v1/notification/events?pageSize=1000").await;
    assert_eq!(s, 200, "{events}");
    let mut created: std::collections::BTreeMap<String, usize> = all
        .iter()
        .filter(|inv| inv["status"] != "gathering" && inv["status"] != "deleted")
        .map(|inv| (inv["id"].as_str().unwrap().to_owned(), 0))
        .collect();
    assert_eq!(created.len(), 2 * n, "a fee and a usage invoice each");
    for e in events["items"].as_array().unwrap() {
        assert_eq!(e["type"], "invoice.created", "{e}");
        let id = e["payload"]["data"]["id"].as_str().unwrap();
        *created
            .get_mut(id)
            .unwrap_or_else(|| panic!("an event for no invoice made: {e}")) += 1;
    }
    let wrong: Vec<_> = created.iter().filter(|(_, c)| **c != 1).collect();
    assert!(
        wrong.is_empty(),
        "invoice.created count per invoice: {wrong:?}"
    );
}

/// The plan of issue #22's test: monthly, a 49.00 fee in advance and graduated API usage.
fn monthly_plan(customer: &str) -> Value {
    json!({"customerKey": customer, "customPlan": {"name": "Pro", "currency": "USD", "billingCadence": "P1M",
    "phases": [{"key": "default", "name": "Default", "duration": null, "rateCards": [
        {"type": "flat_fee", "key": "platform", "name": "Platform fee", "billingCadence": "P1M",
         "price": {"type": "flat", "amount": "49", "paymentTerm": "in_advance"}},
        {"type": "usage_based", "key": "api", "name": "API calls", "featureKey": "api", "billingCadence": "P1M",
         "price": graduated()}
    ]}]}})
}

/// What an invoice amounts to, for comparing two runs: status, lines (name, quantity, total) and
/// totals, with periods relative to the subscription's start.
fn summary(inv: &Value, t0: DateTime<Utc>) -> Value {
    let rel = |v: &Value| {
        v.as_str()
            .map(|s| (s.parse::<DateTime<Utc>>().unwrap() - t0).num_seconds())
    };
    let mut lines: Vec<Value> = inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            json!([
                l["name"],
                l["quantity"],
                l["totals"]["total"],
                rel(&l["period"]["from"]),
                rel(&l["period"]["to"])
            ])
        })
        .collect();
    lines.sort_by_key(|l| l.to_string());
    json!({"status": inv["status"], "total": inv["totals"]["total"], "lines": lines})
}

/// Issue #22's test: a subscription to a monthly plan started now, usage ingested, the clock
/// advanced a month (plus the collection interval) → one issued, paid invoice per period with the
/// expected lines and totals, and the next period's gathering invoice in place; advancing in
/// small steps gives the same invoices as one big step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_subscription_is_invoiced_once_per_period_in_big_or_small_steps() {
    let mut runs = Vec::new();
    for small in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let b = Billing::simulated(dir.path());
        setup(&b, &["acme"]).await;
        let (s, sub) = post(&b, "/api/v1/subscriptions", monthly_plan("acme")).await;
        assert_eq!(s, 201, "{sub}");
        let t0: DateTime<Utc> = sub["activeFrom"].as_str().unwrap().parse().unwrap();
        let t1 = t0.checked_add_months(chrono::Months::new(1)).unwrap();
        ingest(
            &b,
            json!([
                ev("u1", "acme", t0 + chrono::Duration::days(3), 8000),
                ev("u2", "acme", t0 + chrono::Duration::days(17), 4500)
            ]),
        )
        .await;
        let end = t1 + chrono::Duration::hours(2);
        if small {
            let mut t = t0;
            while t < end {
                t = (t + chrono::Duration::hours(13)).min(end);
                advance_to(&b, t).await;
            }
        } else {
            advance_to(&b, end).await;
        }
        let list = invoices(&b, "acme").await;
        let paid: Vec<&Value> = list.iter().filter(|i| i["status"] == "paid").collect();
        assert_eq!(paid.len(), 2, "{list:#?}");
        for inv in &paid {
            assert_totals_add_up(inv);
            assert!(
                inv["lines"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|l| l["subscription"]["subscription"]["id"] == sub["id"])
            );
        }
        let mut totals: Vec<&str> = paid.iter().map(|i| total(i)).collect();
        totals.sort();
        // Period 1's fee at its start: 49. At its end: period 1's usage (12,500 → 107.50) and
        // period 2's fee in advance (49) on one invoice: 156.50.
        assert_eq!(totals, ["156.5", "49"], "{paid:#?}");
        let gathering: Vec<&Value> = list.iter().filter(|i| i["status"] == "gathering").collect();
        assert_eq!(gathering.len(), 1, "the next period's gathering invoice");
        let g_lines = gathering[0]["lines"].as_array().unwrap();
        assert_eq!(g_lines.len(), 1, "{g_lines:?}");
        assert_eq!(g_lines[0]["name"], "API calls");
        assert_eq!(
            g_lines[0]["period"]["from"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap(),
            t1
        );
        let mut s: Vec<Value> = paid.iter().map(|i| summary(i, t0)).collect();
        s.sort_by_key(|v| v.to_string());
        runs.push(s);
    }
    assert_eq!(
        runs[0], runs[1],
        "small steps and one big step make the same invoices"
    );
}

/// Cancelling mid-period prorates the flat fee still gathering by exact time, and the usage line
/// ends at the cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_mid_period_prorates_the_fee() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::simulated(dir.path());
    setup(&b, &["acme"]).await;
    let mut plan = monthly_plan("acme");
    plan["customPlan"]["phases"][0]["rateCards"][0]["price"] =
        json!({"type": "flat", "amount": "30", "paymentTerm": "in_arrears"});
    let (s, sub) = post(&b, "/api/v1/subscriptions", plan).await;
    assert_eq!(s, 201, "{sub}");
    let t0: DateTime<Utc> = sub["activeFrom"].as_str().unwrap().parse().unwrap();
    let t1 = t0.checked_add_months(chrono::Months::new(1)).unwrap();
    let cancel_at = t0 + (t1 - t0) / 3;
    advance_to(&b, cancel_at).await;
    let id = sub["id"].as_str().unwrap();
    let (s, c) = post(
        &b,
        &format!("/api/v1/subscriptions/{id}/cancel"),
        json!({"timing": "immediate"}),
    )
    .await;
    assert_eq!(s, 200, "{c}");
    advance_to(&b, cancel_at + chrono::Duration::minutes(1)).await;
    let list = invoices(&b, "acme").await;
    let fee = list
        .iter()
        .flat_map(|i| i["lines"].as_array().unwrap().iter())
        .find(|l| l["name"] == "Platform fee")
        .unwrap();
    // 30 × (a third of the period) / (the period), exact time: 10.00 (rounded to cents).
    let expected = (rust_decimal::Decimal::from(30)
        * rust_decimal::Decimal::from((cancel_at - t0).num_milliseconds())
        / rust_decimal::Decimal::from((t1 - t0).num_milliseconds()))
    .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    assert_eq!(
        fee["totals"]["total"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        expected,
        "{fee}"
    );
    assert_eq!(
        fee["period"]["to"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        cancel_at
    );
}

/// kill -9 while an advance has the scheduler invoicing subscriptions' period ends: after a
/// restart the advance is repeated and each customer has exactly its two invoices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_invoicing_subscriptions_makes_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Billing::simulated(dir.path());
    let n = 60;
    let keys: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    setup(&b, &key_refs).await;
    let mut t0 = None;
    for k in &keys {
        let (s, sub) = post(&b, "/api/v1/subscriptions", monthly_plan(k)).await;
        assert_eq!(s, 201, "{sub}");
        t0.get_or_insert(
            sub["activeFrom"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap(),
        );
    }
    let t0 = t0.unwrap();
    let t1 = t0.checked_add_months(chrono::Months::new(1)).unwrap();
    let events: Vec<Value> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| ev(&format!("k{i}"), k, t0 + chrono::Duration::days(2), 2000))
        .collect();
    ingest(&b, Value::Array(events)).await;
    advance_to(&b, t0 + chrono::Duration::minutes(1)).await;
    let target = t1 + chrono::Duration::hours(2);
    let url = b.url(CLOCK);
    let advance = tokio::spawn(async move {
        let _ = client()
            .post(url)
            .json(&json!({"to": iso(target)}))
            .send()
            .await;
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, made) = get(
            &b,
            "/api/v1/billing/invoices?statuses=draft&statuses=paid&pageSize=1000",
        )
        .await;
        if made["totalCount"].as_u64().unwrap_or(0) > n as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "no period-end invoice was made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.kill9();
    let _ = advance.await;
    let b = Billing::simulated(dir.path());
    advance_to(&b, target).await;
    for k in &keys {
        let list = invoices(&b, k).await;
        let mut totals: Vec<&str> = list
            .iter()
            .filter(|i| i["status"] == "paid")
            .map(total)
            .collect();
        totals.sort();
        // 49 at the start; at the end period 1's usage (1,000 × 0.01 = 10) + period 2's 49.
        assert_eq!(totals, ["49", "59"], "{k}: {list:#?}");
        assert_eq!(
            list.iter().filter(|i| i["status"] == "gathering").count(),
            1,
            "{k}"
        );
    }
}

/// An add-on bought mid-period on a subscription, its quantity raised, then removed: billed on
/// the stretches it was active, prorated by exact time, by OpenMeter's merge rules — a rate card
/// of its own (seats) is an item of its own, one with the key of the plan's flat fee (platform)
/// adds its amount on the fee's payment term — each line naming the add-on it comes from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_ons_are_invoiced_on_the_stretches_they_are_active() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::simulated(dir.path());
    setup(&b, &["acme"]).await;
    let mut plan = monthly_plan("acme");
    plan["customPlan"]["phases"][0]["rateCards"][0]["price"] =
        json!({"type": "flat", "amount": "30", "paymentTerm": "in_arrears"});
    let (s, sub) = post(&b, "/api/v1/subscriptions", plan).await;
    assert_eq!(s, 201, "{sub}");
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let t0: DateTime<Utc> = sub["activeFrom"].as_str().unwrap().parse().unwrap();
    let t1 = t0.checked_add_months(chrono::Months::new(1)).unwrap();
    let quarter = (t1 - t0) / 4;
    let (s, addon) = post(
        &b,
        "/api/v1/addons",
        json!({"key": "boost", "name": "Boost", "currency": "USD", "instanceType": "multiple",
        "rateCards": [
            {"type": "flat_fee", "key": "seats", "name": "Seats", "billingCadence": "P1M",
             "price": {"type": "flat", "amount": "10", "paymentTerm": "in_arrears"}},
            {"type": "flat_fee", "key": "platform", "name": "Platform boost", "billingCadence": "P1M",
             "price": {"type": "flat", "amount": "5", "paymentTerm": "in_arrears"}}
        ]}),
    )
    .await;
    assert_eq!(s, 201, "{addon}");
    let addon_id = addon["id"].as_str().unwrap().to_owned();
    let (s, p) = post(&b, &format!("/api/v1/addons/{addon_id}/publish"), json!({})).await;
    assert_eq!(s, 200, "{p}");
    ingest(
        &b,
        json!([ev("u1", "acme", t0 + chrono::Duration::days(2), 8000)]),
    )
    .await;

    // A quarter in: 2 bought. Half-way: 3. Three quarters in: removed (0).
    advance_to(&b, t0 + quarter).await;
    let (s, bought) = post(
        &b,
        &format!("/api/v1/subscriptions/{sub_id}/addons"),
        json!({"addon": {"id": addon_id}, "quantity": 2, "timing": "immediate"}),
    )
    .await;
    assert_eq!(s, 201, "{bought}");
    let bought_id = bought["id"].as_str().unwrap().to_owned();
    for (at, q) in [(t0 + quarter * 2, 3), (t0 + quarter * 3, 0)] {
        advance_to(&b, at).await;
        let (s, r) = call(
            &b,
            "PATCH",
            &format!("/api/v1/subscriptions/{sub_id}/addons/{bought_id}"),
            Some(json!({"quantity": q, "timing": "immediate"})),
        )
        .await;
        assert_eq!(s, 200, "{r}");
    }
    advance_to(&b, t1 + chrono::Duration::hours(2)).await;

    let list = invoices(&b, "acme").await;
    let paid: Vec<&Value> = list.iter().filter(|i| i["status"] == "paid").collect();
    assert_eq!(paid.len(), 1, "one invoice for the period: {list:#?}");
    let inv = paid[0];
    assert_totals_add_up(inv);
    let mut lines: Vec<(String, String, Option<String>, i64, i64)> = inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let rel = |v: &Value| {
                (v.as_str().unwrap().parse::<DateTime<Utc>>().unwrap() - t0).num_milliseconds()
                    / quarter.num_milliseconds()
            };
            (
                l["name"].as_str().unwrap().to_owned(),
                l["totals"]["total"].as_str().unwrap().to_owned(),
                l["metadata"]["addon.key"].as_str().map(str::to_owned),
                rel(&l["period"]["from"]),
                rel(&l["period"]["to"]),
            )
        })
        .collect();
    lines.sort();
    let line = |name: &str, total: &str, addon: bool, from: i64, to: i64| {
        (
            name.to_owned(),
            total.to_owned(),
            addon.then(|| "boost".to_owned()),
            from,
            to,
        )
    };
    // Worked by hand (periods in quarters of the month, flat prices prorated by exact time):
    // the plan's fee 30 in arrears; API usage 8,000 → 7,000 × 0.01 = 70 (first 1,000 free);
    // seats 10 per instance: 2 × 10 × ¼ = 5, then 3 × 10 × ¼ = 7.50;
    // platform boost 5 per instance added to the fee: 2 × 5 × ¼ = 2.50, then 3 × 5 × ¼ = 3.75.
    // Total 30 + 70 + 5 + 7.50 + 2.50 + 3.75 = 118.75.
    assert_eq!(
        lines,
        vec![
            line("API calls", "70", false, 0, 4),
            line("Platform boost (add-on Boost × 2)", "2.5", true, 1, 2),
            line("Platform boost (add-on Boost × 3)", "3.75", true, 2, 3),
            line("Platform fee", "30", false, 0, 4),
            line("Seats (add-on Boost × 2)", "5", true, 1, 2),
            line("Seats (add-on Boost × 3)", "7.5", true, 2, 3),
        ],
        "{inv:#}"
    );
    assert_eq!(total(inv), "118.75");
    for l in inv["lines"].as_array().unwrap() {
        if l["metadata"]["addon.key"].is_string() {
            assert_eq!(l["subscription"]["addon"]["id"], bought_id.as_str(), "{l}");
            assert_eq!(l["metadata"]["addon.id"], bought_id.as_str(), "{l}");
        }
    }
    // The next period has no add-on: its gathering invoice holds the plan's lines only.
    let gathering: Vec<&Value> = list.iter().filter(|i| i["status"] == "gathering").collect();
    assert_eq!(gathering.len(), 1);
    assert!(
        gathering[0]["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["metadata"]["addon.key"].is_null()),
        "{:#}",
        gathering[0]
    );
}

/// Many invoices' changes in one transaction (`Store::swap_entities_each`, what the scheduler
/// stores an instant's invoices with): a unit whose compare-and-set finds another text is stored
/// not at all — neither its documents nor its statements — and the rest are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stores_each_unit_whole_or_not_at_all() {
    use tollgate_billing::store::Store;
    let dir = tempfile::tempdir().unwrap();
    drop(Billing::simulated(dir.path())); // the library opens the database itself
    let location = common::store_location(dir.path());
    let store = Store::open(&location).await.unwrap();
    let doc = |id: &str, v: u32| json!({"id": id, "v": v}).to_string();
    for id in ["a", "b", "c"] {
        store
            .put_entity("batchtest", id, &json!({"id": id, "v": 0}))
            .await
            .unwrap();
    }
    let stored: Vec<String> = {
        let mut out = Vec::new();
        for id in ["a", "b", "c"] {
            out.push(
                store
                    .get_entity_raw("batchtest", id)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        out
    };
    // A statement riding with each unit: a marker document per unit.
    let marker = |id: &str| {
        let mut stmts =
            tollgate_billing::store::documents::put("batchmark", id, &json!({"id": id}));
        stmts.truncate(1);
        stmts
    };
    let units = vec![
        (
            vec![
                ("batchtest", "a", Some(stored[0].as_str()), doc("a", 1)),
                ("batchtest", "a2", None, doc("a2", 1)),
            ],
            marker("a"),
        ),
        // Lost: "b" is not what it says it was.
        (
            vec![(
                "batchtest",
                "b",
                Some("{\"id\":\"b\",\"v\":9}"),
                doc("b", 1),
            )],
            marker("b"),
        ),
        (
            vec![("batchtest", "c", Some(stored[2].as_str()), doc("c", 1))],
            marker("c"),
        ),
    ];
    let answers = store.swap_entities_each(units).await.unwrap();
    assert_eq!(answers, vec![true, false, true]);
    let v = |id: &'static str| {
        let store = &store;
        async move {
            store
                .get_entity::<Value>("batchtest", id)
                .await
                .unwrap()
                .map(|d| d["v"].clone())
        }
    };
    assert_eq!(v("a").await, Some(json!(1)));
    assert_eq!(v("a2").await, Some(json!(1)));
    assert_eq!(
        v("b").await,
        Some(json!(0)),
        "the lost unit changed nothing"
    );
    assert_eq!(v("c").await, Some(json!(1)));
    let marks: Vec<Value> = store.list_entities("batchmark").await.unwrap();
    let mut ids: Vec<&str> = marks.iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["a", "c"], "the lost unit's statements were not run");
}
