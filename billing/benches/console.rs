//! The web console's page times at scale, each beside the API call that reads the same data, in
//! the same run.
//!
//! Data: CUSTOMERS customers (one subject each) with a metered entitlement and a grant each, and
//! EVENTS events of a SUM meter grouped by model over the last 30 days across their subjects,
//! written through billing's own store ([`Store::put_entities`], [`Store::ingest`]: the ingest
//! path minus HTTP, to keep the set-up short). Then the real binary (release profile) serves it
//! with an API token, and each page is fetched with the console's cookie: 3 warm-up requests,
//! then 20 timed, one at a time; p50 and p95 of the whole HTTP exchange. First the overview's
//! month-wide snapshot (every entitlement's value) is timed: it is computed in the background.
//!
//! Run: `cargo bench -p tollgate-billing --bench console [-- EVENTS [CUSTOMERS]]` (default
//! 1,000,000 events and 10,000 customers).

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_billing::meter::{CompiledMeter, Meter};
use tollgate_billing::store::{Location, Store};

const TOKEN: &str = "om_bench";

struct Billing(Child);

impl Drop for Billing {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn seed(dir: &Path, events: usize, customers: usize) {
    let store = Store::open(&Location::Sqlite(dir.to_owned()))
        .await
        .unwrap();
    let meter: Meter = serde_json::from_value(json!({"id": "m_tokens", "slug": "tokens",
        "eventType": "kong.llm_request", "aggregation": "SUM", "valueProperty": "$.tokens",
        "groupBy": {"model": "$.model"}}))
    .unwrap();
    store
        .add_meter(CompiledMeter::new(meter).unwrap())
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let start = now - chrono::Duration::days(30);
    let feature = json!({"id": "f_calls", "key": "tokens", "name": "Tokens", "meterSlug": "tokens",
        "createdAt": start, "updatedAt": start});
    store
        .put_entity("feature", "f_calls", &feature)
        .await
        .unwrap();
    let t = Instant::now();
    for chunk in (0..customers).collect::<Vec<_>>().chunks(1000) {
        let mut docs: Vec<(&str, String, Value)> = Vec::new();
        for &i in chunk {
            let id = format!("c{i:06}");
            docs.push(("customer", id.clone(), json!({"id": id, "name": format!("Customer {i}"),
                "key": format!("cust-{i}"), "usageAttribution": {"subjectKeys": [format!("consumer:{i}")]},
                "createdAt": start, "updatedAt": start})));
            docs.push(("entitlement", format!("e{i:06}"), json!({"type": "metered", "id": format!("e{i:06}"),
                "featureId": "f_calls", "featureKey": "tokens", "customerId": id, "customerKey": format!("cust-{i}"),
                "usagePeriod": {"interval": "MONTH", "anchor": start}, "createdAt": start, "updatedAt": start})));
            docs.push(("grant", format!("g{i:06}"), json!({"id": format!("g{i:06}"), "entitlementId": format!("e{i:06}"),
                "amount": 5000 + (i % 7) * 1000, "priority": 1, "effectiveAt": start, "createdAt": start,
                "minRolloverAmount": 0})));
        }
        let refs: Vec<(&str, &str, Value)> = docs
            .iter()
            .map(|(k, id, d)| (*k, id.as_str(), d.clone()))
            .collect();
        store.put_entities(&refs).await.unwrap();
    }
    eprintln!(
        "{customers} customers, entitlements and grants written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let span_ms = (now - start).num_milliseconds();
    let batch = 5000;
    let mut i = 0;
    while i < events {
        let n = batch.min(events - i);
        let evs: Vec<(Value, i64)> = (i..i + n)
            .map(|j| {
                let ms = start.timestamp_millis() + (j as i64 * span_ms) / events as i64;
                let time = chrono::DateTime::from_timestamp_millis(ms).unwrap();
                (
                    json!({"specversion": "1.0", "id": format!("e-{j}"), "source": "bench",
                        "type": "kong.llm_request", "subject": format!("consumer:{}", (j * 7919) % customers),
                        "time": time, "data": {"tokens": (j % 50) + 1, "model": if j % 2 == 0 { "gpt-4o" } else { "claude" }}}),
                    ms,
                )
            })
            .collect();
        store.ingest(evs, now.timestamp_millis()).await.unwrap();
        i += n;
        if i % 500_000 < batch {
            eprintln!(
                "  {i} events ({:.0}/s)",
                i as f64 / t.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "{events} events written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn time(client: &reqwest::Client, url: &str, auth: (&str, String)) -> (f64, f64, usize) {
    let mut samples = Vec::new();
    let mut bytes = 0;
    for k in 0..23 {
        let t = Instant::now();
        let r = client
            .get(url)
            .header(auth.0, &auth.1)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{url}: {}", r.status());
        bytes = r.bytes().await.unwrap().len();
        if k >= 3 {
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.95), bytes)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let events: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let customers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    seed(&data, events, customers).await;
    let port = tollgate_e2e::stack::free_port();
    let config = dir.path().join("billing.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\napi_tokens = [\"{TOKEN}\"]\n",
            data.display()
        ),
    )
    .unwrap();
    let _billing = Billing(
        Command::new(env!("CARGO_BIN_EXE_tollgate-billing"))
            .args(["--config", config.to_str().unwrap()])
            .env("TOLLGATE_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "billing never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let cookie = ("cookie", format!("tollgate_console={TOKEN}"));
    let bearer = ("authorization", format!("Bearer {TOKEN}"));
    // The overview's first load starts its month-wide snapshot in the background.
    let t = Instant::now();
    let first = client
        .get(format!("{base}/"))
        .header(cookie.0, &cookie.1)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    println!(
        "overview, first load (month figures started in the background): {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    assert!(first.contains("Being computed"), "{first}");
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let body = client
            .get(format!("{base}/"))
            .header(cookie.0, &cookie.1)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.contains("Top consumers this month") {
            println!(
                "overview's month snapshot ({customers} entitlement values, top consumers): ready after {:.1} s",
                t.elapsed().as_secs_f64()
            );
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            println!(
                "overview's month snapshot ({customers} entitlement values, top consumers): not ready after 300 s; pages timed while it is computed"
            );
            break;
        }
    }
    let now = chrono::Utc::now();
    let to = chrono::DateTime::from_timestamp_millis(
        (now.timestamp_millis().div_euclid(60_000) + 1) * 60_000,
    )
    .unwrap();
    let iso =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let day_q = format!(
        "from={}&to={}&windowSize=HOUR",
        iso(to - chrono::Duration::hours(24)),
        iso(to)
    );
    let hour_q = format!(
        "from={}&to={}&windowSize=MINUTE&groupBy=model",
        iso(to - chrono::Duration::hours(1)),
        iso(to)
    );
    let cases: Vec<(&str, String, String)> = vec![
        (
            "overview (snapshot kept)",
            "/".into(),
            "/api/tollgate/v1/clock".into(),
        ),
        ("meters", "/meters".into(), "/api/v1/meters".into()),
        (
            "meter, last hour by minute and model",
            "/meters/tokens?range=1h&groupBy=model".into(),
            format!("/api/v1/meters/tokens/query?{hour_q}"),
        ),
        (
            "meter, last 24 h by hour (default)",
            "/meters/tokens".into(),
            format!("/api/v1/meters/tokens/query?{day_q}"),
        ),
        (
            "customers, page 1 of 200",
            "/customers".into(),
            "/api/v1/customers".into(),
        ),
        (
            "customers, search",
            "/customers?q=Customer%209999".into(),
            "/api/v1/customers".into(),
        ),
        (
            "customer (entitlement value, month usage)",
            "/customers/c000042".into(),
            "/api/v1/customers/cust-42/entitlements/tokens/value".into(),
        ),
        ("features", "/features".into(), "/api/v1/features".into()),
        ("plans", "/plans".into(), "/api/v1/plans".into()),
    ];
    println!(
        "\n{events} events, {customers} customers (SQLite, release):\n\n| page | p50 ms | p95 ms | KiB | API call beside it | API p50 ms | ratio |\n|---|---:|---:|---:|---|---:|---:|"
    );
    for (name, page, api) in cases {
        let (p50, p95, bytes) = time(&client, &format!("{base}{page}"), cookie.clone()).await;
        let (a50, _, _) = time(&client, &format!("{base}{api}"), bearer.clone()).await;
        let api_short = api.split('?').next().unwrap_or(&api);
        println!(
            "| {name} `{}` | {p50:.1} | {p95:.1} | {} | `{api_short}` | {a50:.1} | {:.2}x |",
            page.split('?').next().unwrap_or(&page),
            bytes / 1024,
            p50 / a50.max(0.001)
        );
    }
}
