//! `tollgate-billing` ingest and meter-query speed, each beside its raw limit in the same run.
//!
//! * Ingest: the real binary over HTTP (`POST /api/v1/events`, batches of 1000, 4 concurrent
//!   clients, each batch acknowledged only after its flush) beside raw sled inserting and flushing
//!   the same number of records with no dedup, no transaction and no aggregation.
//! * Query: `GET /api/v1/meters/{slug}/query` over the per-minute aggregates (one total; DAY windows
//!   by subject) beside a raw rescan of every stored event — the work pre-aggregation avoids.
//!
//! Events: 100 subjects, 2 models, spread over 30 days. Run:
//! `cargo bench -p tollgate-billing --bench ingest_query [-- EVENTS]` (default 1,000,000).

#![allow(clippy::unwrap_used, missing_docs)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn event(i: usize, t0: i64) -> Value {
    let minute = (i * 7919) % (30 * 24 * 60);
    let time = chrono::DateTime::from_timestamp_millis(t0 + minute as i64 * 60_000).unwrap();
    json!({"id": format!("b-{i}"), "source": "bench", "specversion": "1.0", "type": "kong.llm_request",
           "subject": format!("consumer:{}", i % 100), "time": time,
           "data": {"tokens": (i % 50) + 1, "model": if i.is_multiple_of(2) { "gpt-4o" } else { "claude" }, "type": "request"}})
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let t0 = chrono::Utc::now().timestamp_millis() - 31 * 86_400_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Raw sled: insert + flush the same records in batches of 1000.
    let raw_dir = tempfile::tempdir().unwrap();
    let raw_ingest = rt.block_on(async {
        let db = sled::open(raw_dir.path()).unwrap();
        let tree = db.open_tree("events").unwrap();
        let start = Instant::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let mut batch = sled::Batch::default();
            for &i in chunk {
                batch.insert(
                    &(i as u64).to_be_bytes(),
                    rmp_serde::to_vec(&event(i, t0)).unwrap(),
                );
            }
            tree.apply_batch(batch).unwrap();
            db.flush_async().await.unwrap();
        }
        n as f64 / start.elapsed().as_secs_f64()
    });

    // The real binary.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("billing.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[[meters]]\nslug = \"tokens\"\neventType = \"kong.llm_request\"\naggregation = \"SUM\"\nvalueProperty = \"$.tokens\"\ngroupBy = {{ model = \"$.model\" }}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate-billing"))
        .args(["--config", config.to_str().unwrap()])
        .env("TOLLGATE_LOG", "error")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let base = format!("http://127.0.0.1:{port}");
    let (http_ingest, q_total, q_daily, rows) = rt.block_on(async {
        let client = reqwest::Client::new();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..4 {
            let (client, base) = (client.clone(), base.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = w * 1000;
                while i < n {
                    let batch: Vec<Value> = (i..(i + 1000).min(n)).map(|j| event(j, t0)).collect();
                    let r = client
                        .post(format!("{base}/api/v1/events"))
                        .header("content-type", "application/cloudevents-batch+json")
                        .body(serde_json::to_vec(&batch).unwrap())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 204);
                    i += 4000;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let ingest = n as f64 / start.elapsed().as_secs_f64();
        let timed = |url: String| {
            let client = client.clone();
            async move {
                let start = Instant::now();
                let v: Value = client.get(url).send().await.unwrap().json().await.unwrap();
                (start.elapsed(), v)
            }
        };
        let (total_t, total) = timed(format!("{base}/api/v1/meters/tokens/query")).await;
        let expected: usize = (0..n).map(|i| (i % 50) + 1).sum();
        assert_eq!(
            total["data"][0]["value"].as_f64().unwrap() as usize,
            expected,
            "sum is exact"
        );
        let (daily_t, daily) = timed(format!(
            "{base}/api/v1/meters/tokens/query?windowSize=DAY&groupBy=subject&groupBy=model"
        ))
        .await;
        (
            ingest,
            total_t,
            daily_t,
            daily["data"].as_array().unwrap().len(),
        )
    });
    let _ = child.kill();
    let _ = child.wait();

    // Raw rescan of every stored event, counting tokens: what the aggregates avoid.
    let store = tollgate_billing::store::Store::open(&dir.path().join("data")).unwrap();
    let start = Instant::now();
    let mut sum = 0f64;
    rt.block_on(store.list_events(
        |e| {
            sum += e.event["data"]["tokens"].as_f64().unwrap_or(0.0);
            false
        },
        usize::MAX,
    ))
    .unwrap();
    let rescan = start.elapsed();

    println!("tollgate-billing, {n} events (100 subjects, 2 models, 30 days), 2 cores");
    println!("{:<58} {:>14}", "ingest", "events/s");
    println!(
        "{:<58} {:>14.0}",
        "raw sled: insert + flush batches of 1000", raw_ingest
    );
    println!(
        "{:<58} {:>14.0}",
        "tollgate-billing HTTP, 4 clients, batches of 1000", http_ingest
    );
    println!("{:<58} {:>14}", "query", "ms");
    println!(
        "{:<58} {:>14.1}",
        "meter total from per-minute aggregates",
        q_total.as_secs_f64() * 1000.0
    );
    println!(
        "{:<58} {:>14.1}",
        &format!("DAY windows × subject × model ({rows} rows)"),
        q_daily.as_secs_f64() * 1000.0
    );
    println!(
        "{:<58} {:>14.1}",
        "raw rescan of every stored event (no aggregates)",
        rescan.as_secs_f64() * 1000.0
    );
    println!(
        "ingest / raw sled: {:.2}x   total query / rescan: {:.3}x   (rescan sum {sum})",
        http_ingest / raw_ingest,
        q_total.as_secs_f64() / rescan.as_secs_f64()
    );
}
