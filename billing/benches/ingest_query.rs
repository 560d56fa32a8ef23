//! `tollgate-billing` ingest and meter-query speed, each beside its raw limit in the same run.
//!
//! * Ingest on SQLite: the real binary over HTTP (`POST /api/v1/events`, batches of 1000, 4
//!   concurrent clients, each answered only after its commit) beside a raw bulk insert of the same
//!   rows into SQLite (same file settings: WAL, synchronous FULL; one prepared INSERT per row, one
//!   transaction and commit per 1000 rows; no dedup, no usage, no HTTP).
//! * Ingest on PostgreSQL (`--postgres`, a throwaway cluster from Debian's packages): the binary
//!   beside a raw `INSERT … SELECT FROM UNNEST` of the same rows, 1000 per transaction, 4 clients;
//!   then the same events into a fresh database through two replicas at once (2 senders each),
//!   which contend for the same usage rows, the totals across subjects most.
//! * Query: `GET /api/v1/meters/{slug}/query` over the per-minute aggregates (one total; DAY
//!   windows by subject and model; a total per subject) beside a raw rescan of every stored event —
//!   the work pre-aggregation avoids.
//!
//! Run: `cargo bench -p tollgate-billing --bench ingest_query [-- EVENTS [SUBJECTS] [--postgres]
//! [--shuffled | --live]]` (default 1,000,000 events over 100 subjects and 30 days, arriving in
//! time order; `--shuffled` scatters each request's events over the 30 days, the worst case for
//! the aggregates; `--live` puts them all in the last 10 minutes, as live ingest at this rate is). CPU per event (user + system, from /proc) is printed beside
//! throughput: on a shared machine it is the steadier figure.

#![allow(clippy::unwrap_used, missing_docs)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::cpu_seconds;

/// How the events' times spread.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Spread {
    /// Over 30 days, in time order (a month of traffic replayed).
    Month,
    /// Over 30 days, each request's events scattered: the worst case for the aggregates.
    Shuffled,
    /// Over the last 10 minutes: what live ingest at this rate looks like.
    Live,
}

/// (events in the run, their spread).
static SPREAD: std::sync::OnceLock<(usize, Spread)> = std::sync::OnceLock::new();

fn event(i: usize, t0: i64, subjects: usize) -> Value {
    let (n, spread) = *SPREAD.get().unwrap();
    let ms = match spread {
        Spread::Shuffled => ((i * 7919) % (30 * 24 * 60)) as i64 * 60_000,
        Spread::Month => (i * (30 * 24 * 60) / n.max(1)) as i64 * 60_000,
        Spread::Live => 30 * 86_400_000 - 600_000 + (i as i64 * 600_000) / n.max(1) as i64,
    };
    let time = chrono::DateTime::from_timestamp_millis(t0 + ms).unwrap();
    json!({"id": format!("b-{i}"), "source": "bench", "specversion": "1.0", "type": "kong.llm_request",
           "subject": format!("consumer:{}", i % subjects), "time": time,
           "data": {"tokens": (i % 50) + 1, "model": if i.is_multiple_of(2) { "gpt-4o" } else { "claude" }, "type": "request"}})
}

/// The columns billing stores for one event.
fn row(i: usize, t0: i64, subjects: usize) -> (String, String, String, i64, String) {
    let e = event(i, t0, subjects);
    let time = chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    (
        e["id"].as_str().unwrap().to_owned(),
        e["type"].as_str().unwrap().to_owned(),
        e["subject"].as_str().unwrap().to_owned(),
        time,
        e.to_string(),
    )
}

/// Raw SQLite: the same rows into a table of the same shape as billing's `events` (with or
/// without its (source, id) unique key), same file settings, one prepared INSERT per row and one
/// transaction per 1000 rows.
fn raw_sqlite(n: usize, t0: i64, subjects: usize, unique_key: bool) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = rusqlite::Connection::open(dir.path().join("raw.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.pragma_update(None, "cache_size", -65_536).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, source TEXT NOT NULL, id TEXT NOT NULL, \
         type TEXT NOT NULL, subject TEXT NOT NULL, time_ms INTEGER NOT NULL, \
         ingested_ms INTEGER NOT NULL, body TEXT NOT NULL{})",
        if unique_key {
            ", UNIQUE (source, id)"
        } else {
            ""
        }
    ))
    .unwrap();
    let rows: Vec<_> = (0..n).map(|i| row(i, t0, subjects)).collect();
    let cpu = cpu_seconds(std::process::id());
    let start = Instant::now();
    for chunk in rows.chunks(1000) {
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO events (source, id, type, subject, time_ms, ingested_ms, body) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .unwrap();
            for (id, kind, subject, time, body) in chunk {
                stmt.execute(rusqlite::params!["bench", id, kind, subject, time, 0, body])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let us = (cpu_seconds(std::process::id()) - cpu) * 1e6 / n as f64;
    (rate, us)
}

async fn raw_postgres(url: String, n: usize, t0: i64, subjects: usize) -> f64 {
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE raw_events (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             source TEXT, id TEXT, type TEXT, subject TEXT, time_ms BIGINT, ingested_ms BIGINT, body TEXT)",
        )
        .await
        .unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut i = w * 1000;
            while i < n {
                let rows: Vec<_> = (i..(i + 1000).min(n)).map(|j| row(j, t0, subjects)).collect();
                let tx = client.transaction().await.unwrap();
                let col = |f: fn(&(String, String, String, i64, String)) -> String| {
                    rows.iter().map(f).collect::<Vec<_>>()
                };
                let times: Vec<i64> = rows.iter().map(|r| r.3).collect();
                let zeros = vec![0i64; rows.len()];
                let source = vec!["bench".to_owned(); rows.len()];
                tx.execute(
                    "INSERT INTO raw_events (source, id, type, subject, time_ms, ingested_ms, body) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::text[])",
                    &[&source, &col(|r| r.0.clone()), &col(|r| r.1.clone()), &col(|r| r.2.clone()), &times, &zeros, &col(|r| r.4.clone())],
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
                i += 4000;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

struct Billing {
    child: Child,
    base: String,
}

impl Drop for Billing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_billing(dir: &std::path::Path, database_url: Option<&str>) -> Billing {
    let port = tollgate_e2e::stack::free_port();
    let config = dir.join("billing.toml");
    let database = database_url
        .map(|u| format!("database_url = \"{u}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{database}[[meters]]\nslug = \"tokens\"\neventType = \"kong.llm_request\"\naggregation = \"SUM\"\nvalueProperty = \"$.tokens\"\ngroupBy = {{ model = \"$.model\" }}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate-billing"))
        .args(["--config", config.to_str().unwrap()])
        .env("TOLLGATE_LOG", "error")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    Billing {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// Request bodies of 1000 events each, made before the clock starts (as the raw peers' rows are).
fn bodies(n: usize, t0: i64, subjects: usize) -> Vec<bytes::Bytes> {
    (0..n)
        .step_by(1000)
        .map(|i| {
            let batch: Vec<Value> = (i..(i + 1000).min(n))
                .map(|j| event(j, t0, subjects))
                .collect();
            bytes::Bytes::from(serde_json::to_vec(&batch).unwrap())
        })
        .collect()
}

async fn http_ingest(base: &str, bodies: &[bytes::Bytes], n: usize) -> f64 {
    common::ingest(base, bodies, n).await
}

async fn timed(client: &reqwest::Client, url: String) -> (Duration, Value) {
    // Best of three: the first request also warms the database's page cache.
    let mut best = Duration::MAX;
    let mut value = Value::Null;
    for _ in 0..3 {
        let start = Instant::now();
        value = client.get(&url).send().await.unwrap().json().await.unwrap();
        best = best.min(start.elapsed());
    }
    (best, value)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut numbers = args.iter().filter_map(|a| a.parse::<usize>().ok());
    let n = numbers.next().unwrap_or(1_000_000);
    let subjects = numbers.next().unwrap_or(100);
    let postgres = args.iter().any(|a| a == "--postgres");
    let spread = if args.iter().any(|a| a == "--shuffled") {
        Spread::Shuffled
    } else if args.iter().any(|a| a == "--live") {
        Spread::Live
    } else {
        Spread::Month
    };
    SPREAD.set((n, spread)).unwrap();
    let t0 = chrono::Utc::now().timestamp_millis() - 31 * 86_400_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let bodies = bodies(n, t0, subjects);
    let raw_plain = raw_sqlite(n, t0, subjects, false);
    let raw = raw_sqlite(n, t0, subjects, true);
    let dir = tempfile::tempdir().unwrap();
    let billing = start_billing(dir.path(), None);
    let expected: usize = (0..n).map(|i| (i % 50) + 1).sum();
    let (ingest, q_total, q_daily, daily_rows, q_subjects, subject_rows) = rt.block_on(async {
        let cpu = cpu_seconds(billing.child.id());
        let ingest = http_ingest(&billing.base, &bodies, n).await;
        let ingest = (
            ingest,
            (cpu_seconds(billing.child.id()) - cpu) * 1e6 / n as f64,
        );
        let client = reqwest::Client::new();
        let base = &billing.base;
        let (total_t, total) = timed(&client, format!("{base}/api/v1/meters/tokens/query")).await;
        assert_eq!(
            total["data"][0]["value"].as_f64().unwrap() as usize,
            expected,
            "sum is exact"
        );
        let (daily_t, daily) = timed(
            &client,
            format!(
                "{base}/api/v1/meters/tokens/query?windowSize=DAY&groupBy=subject&groupBy=model"
            ),
        )
        .await;
        let (subj_t, subj) = timed(
            &client,
            format!("{base}/api/v1/meters/tokens/query?groupBy=subject"),
        )
        .await;
        (
            ingest,
            total_t,
            daily_t,
            daily["data"].as_array().unwrap().len(),
            subj_t,
            subj["data"].as_array().unwrap().len(),
        )
    });
    drop(billing);

    // Raw rescan of every stored event, counting tokens: what the aggregates avoid.
    let rescan = rt.block_on(async {
        let store = tollgate_billing::store::Store::open(
            &tollgate_billing::store::Location::Sqlite(dir.path().join("data")),
        )
        .await
        .unwrap();
        let start = Instant::now();
        let sum = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let s = sum.clone();
        store
            .list_events(
                move |e| {
                    s.fetch_add(
                        e.event["data"]["tokens"].as_u64().unwrap_or(0),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    false
                },
                usize::MAX,
            )
            .await
            .unwrap();
        assert_eq!(
            sum.load(std::sync::atomic::Ordering::Relaxed) as usize,
            expected
        );
        start.elapsed()
    });

    let pg = postgres.then(|| {
        let cluster = tollgate_e2e::postgres::Cluster::create().unwrap();
        cluster.start().unwrap();
        let raw_url = cluster.database().unwrap();
        let raw = rt.block_on(raw_postgres(raw_url, n, t0, subjects));
        let url = cluster.database().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let billing = start_billing(dir.path(), Some(&url));
        let ingest = rt.block_on(http_ingest(&billing.base, &bodies, n));
        let q = rt.block_on(async {
            timed(
                &reqwest::Client::new(),
                format!("{}/api/v1/meters/tokens/query", billing.base),
            )
            .await
            .0
        });
        drop(billing);
        // Two replicas of a fresh database, the senders split between them.
        let url = cluster.database().unwrap();
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let replicas: Vec<Billing> = dirs
            .iter()
            .map(|d| start_billing(d.path(), Some(&url)))
            .collect();
        let bases: Vec<String> = replicas.iter().map(|b| b.base.clone()).collect();
        let two = rt.block_on(common::ingest_spread(&bases, &bodies, n));
        let total = rt.block_on(async {
            timed(
                &reqwest::Client::new(),
                format!("{}/api/v1/meters/tokens/query", bases[1]),
            )
            .await
            .1
        });
        assert_eq!(
            total["data"][0]["value"].as_f64().unwrap() as usize,
            expected,
            "two replicas: the sum is exact"
        );
        (raw, ingest, q, two)
    });

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "tollgate-billing, {n} events ({subjects} subjects, 2 models, {}), 2 cores",
        match spread {
            Spread::Shuffled => "30 days, times shuffled",
            Spread::Month => "30 days in time order",
            Spread::Live => "the last 10 minutes",
        }
    );
    println!("{:<62} {:>12}", "ingest", "events/s");
    println!(
        "{:<62} {:>12.0}",
        "raw SQLite: INSERT rows, commit per 1000 (WAL, FULL)", raw_plain.0
    );
    println!(
        "{:<62} {:>12.0}",
        "raw SQLite, same with billing's (source, id) unique key", raw.0
    );
    println!(
        "{:<62} {:>12.0}",
        "tollgate-billing on SQLite, HTTP, 4 clients × 1000", ingest.0
    );
    println!("{:<62} {:>12}", "CPU per event (user + system)", "µs");
    println!("{:<62} {:>12.2}", "raw SQLite, plain table", raw_plain.1);
    println!("{:<62} {:>12.2}", "raw SQLite, with the unique key", raw.1);
    println!(
        "{:<62} {:>12.2}",
        "tollgate-billing process (HTTP, JSON, dedup, usage, commit)", ingest.1
    );
    if let Some((raw, ingest, _, two)) = pg {
        println!(
            "{:<62} {:>12.0}",
            "raw PostgreSQL: UNNEST insert, 4 clients × 1000", raw
        );
        println!(
            "{:<62} {:>12.0}",
            "tollgate-billing on PostgreSQL, HTTP, 4 clients × 1000", ingest
        );
        println!(
            "{:<62} {:>12.0}",
            "two tollgate-billing replicas, one database, 2 clients each", two
        );
    }
    println!("{:<62} {:>12}", "query (best of 3)", "ms");
    println!(
        "{:<62} {:>12.1}",
        "meter total from per-minute aggregates",
        ms(q_total)
    );
    println!(
        "{:<62} {:>12.1}",
        &format!("DAY windows × subject × model ({daily_rows} rows)"),
        ms(q_daily)
    );
    println!(
        "{:<62} {:>12.1}",
        &format!("group by subject ({subject_rows} rows)"),
        ms(q_subjects)
    );
    if let Some((_, _, q, _)) = pg {
        println!("{:<62} {:>12.1}", "meter total on PostgreSQL", ms(q));
    }
    println!(
        "{:<62} {:>12.1}",
        "raw rescan of every stored event (no aggregates)",
        ms(rescan)
    );
    println!(
        "SQLite ingest / raw with key: {:.2}x (/ plain table: {:.2}x); CPU per event raw with key / billing: {:.2}x   total query / rescan: {:.3}x",
        ingest.0 / raw.0,
        ingest.0 / raw_plain.0,
        raw.1 / ingest.1,
        q_total.as_secs_f64() / rescan.as_secs_f64()
    );
    if let Some((raw, ingest, _, two)) = pg {
        println!(
            "PostgreSQL ingest / raw: {:.2}x; two replicas / one: {:.2}x",
            ingest / raw,
            two / ingest
        );
    }
}
