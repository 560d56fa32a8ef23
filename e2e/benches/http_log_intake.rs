//! Metering below the external-plugin floor: the same Kong 3.9 `kong.log.serialize()` payload
//! metered two ways in one run, CPU per event of the process doing the work.
//!
//! * `tollgate` (external plugin): the Kong driver runs the log phase (`HandleEvent`, the
//!   `kong.log.serialize` Step, `ret`) over the plugin socket, 4 Kong workers; the plugin parses,
//!   builds the event and streams it to a real `tollgate-agent` (its CPU is shown too).
//! * http-log + agent: the bodies Kong's bundled http-log plugin posts with queue batching
//!   (`max_batch_size`), a JSON array of serialize objects, POSTed by 4 concurrent clients to a
//!   real `tollgate-agent` with `[sources.kong_http_log]` on, which answers 200 once durable.
//!
//! Both agents deliver to a local receiver that answers 204, so agent figures include delivery.
//! CPU is utime+stime from /proc over the measured part. The target (BRIEF): the agent's CPU per
//! event on http-log ≤ 1/5 of `tollgate`'s.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p tollgate-e2e --bench
//! http_log_intake [-- EVENTS] [--batch N]` (default 100,000 events, batches of 100).

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_e2e::kong::pdk::RequestPdk;
use tollgate_e2e::kong::process::PluginServer;
use tollgate_e2e::kong::serialize::{KongRequest, KongVersion};
use tollgate_e2e::kong::worker::{PluginEntity, Worker};
use tollgate_e2e::stack::{Proc, binary, free_port, wait_tcp};

const CONSUMER: &str = "5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f";
const CLIENTS: usize = 4;

/// utime+stime of `pid` in clock ticks (10 ms).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
}

fn request() -> KongRequest {
    KongRequest::get(KongVersion::V3_9, "/orders/42").with_consumer(CONSUMER, "alice")
}

fn agent(
    dir: &std::path::Path,
    name: &str,
    sink: SocketAddr,
    env: &[(&str, &str)],
) -> (Proc, SocketAddr, SocketAddr) {
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let p = Proc::spawn(
        &binary("tollgate-agent"),
        &[
            "--grpc-listen".into(),
            grpc.to_string(),
            "--http-listen".into(),
            http.to_string(),
            "--data-dir".into(),
            dir.join(name).display().to_string(),
            "--destination-url".into(),
            format!("http://{sink}"),
        ],
        env,
    )
    .unwrap();
    wait_tcp(grpc, Duration::from_secs(20)).unwrap();
    wait_tcp(http, Duration::from_secs(20)).unwrap();
    (p, grpc, http)
}

struct Row {
    events_per_s: f64,
    cpu_us: f64,
    other_cpu_us: Option<f64>,
}

/// The log phase through `tollgate`, `events` events over 4 workers.
async fn drive_plugin(socket: &std::path::Path, pid: u32, agent_pid: u32, events: usize) -> Row {
    let entity = PluginEntity {
        name: "tollgate".into(),
        id: uuid::Uuid::new_v4().to_string(),
        config: serde_json::json!({}),
        route_id: None,
        service_id: None,
        seq: 1,
    };
    let req = Arc::new(request());
    let workers: Vec<Arc<Worker>> = (0..CLIENTS)
        .map(|_| Arc::new(Worker::new(socket)))
        .collect();
    let (c0, a0, t0) = (cpu_ticks(pid), cpu_ticks(agent_pid), Instant::now());
    let mut tasks = Vec::new();
    for w in workers {
        let (entity, req) = (entity.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..events / CLIENTS {
                let pdk = RequestPdk {
                    request: &req,
                    phase: "log",
                };
                w.run_phase(&entity, "log", &pdk).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    // Let the plugin's stream to the agent drain before reading the agent's CPU.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = (events / CLIENTS * CLIENTS) as f64;
    Row {
        events_per_s: n / secs,
        cpu_us: ((cpu_ticks(pid) - c0) * 10_000) as f64 / n,
        other_cpu_us: Some(((cpu_ticks(agent_pid) - a0) * 10_000) as f64 / n),
    }
}

/// http-log bodies of `batch` entries, each request with its own id.
fn bodies(events: usize, batch: usize) -> Vec<String> {
    (0..events / batch)
        .map(|_| {
            let entries: Vec<String> = (0..batch).map(|_| request().serialize()).collect();
            format!("[{}]", entries.join(","))
        })
        .collect()
}

async fn drive_http_log(http: SocketAddr, pid: u32, bodies: Vec<String>, batch: usize) -> Row {
    let client = reqwest::Client::new();
    let url = format!("http://{http}/kong/http-log");
    let n = (bodies.len() * batch) as f64;
    let mut shares: Vec<Vec<String>> = (0..CLIENTS).map(|_| Vec::new()).collect();
    for (i, b) in bodies.into_iter().enumerate() {
        shares[i % CLIENTS].push(b);
    }
    let (c0, t0) = (cpu_ticks(pid), Instant::now());
    let mut tasks = Vec::new();
    for share in shares {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for body in share {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    // Delivery of the last batches to the receiver is part of the agent's work per event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Row {
        events_per_s: n / secs,
        cpu_us: ((cpu_ticks(pid) - c0) * 10_000) as f64 / n,
        other_cpu_us: None,
    }
}

fn main() {
    let mut events = 100_000;
    let mut batch = 100;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--batch" => batch = it.next().and_then(|b| b.parse().ok()).expect("--batch N"),
            n => {
                if let Ok(n) = n.parse() {
                    events = n;
                }
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink_addr = sink.local_addr().unwrap();
        let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::NO_CONTENT });
        tokio::spawn(async move { axum::serve(sink, app).await });

        let (agent_a, grpc_a, _) = agent(dir.path(), "agent-grpc", sink_addr, &[]);
        let prefix = dir.path().join("kong");
        std::fs::create_dir_all(&prefix).unwrap();
        let plugin = PluginServer::spawn(
            &binary("tollgate"),
            &[
                "-kong-prefix".into(),
                prefix.display().to_string(),
                "--agent".into(),
                format!("http://{grpc_a}"),
            ],
            &prefix.join("tollgate.socket"),
            Duration::from_secs(20),
        )
        .unwrap();
        let (agent_b, _, http_b) = agent(
            dir.path(),
            "agent-http-log",
            sink_addr,
            &[("TOLLGATE_AGENT__SOURCES__KONG_HTTP_LOG__ENABLED", "true")],
        );

        println!("{events} events of the same Kong 3.9 serialize payload (consumer-authenticated GET)");
        // Warm-up: connections, allocator, sled.
        drive_plugin(&prefix.join("tollgate.socket"), plugin.pid(), agent_a.child.id(), 2_000).await;
        drive_http_log(http_b, agent_b.child.id(), bodies(2_000, batch), batch).await;

        let plugin_row = drive_plugin(
            &prefix.join("tollgate.socket"),
            plugin.pid(),
            agent_a.child.id(),
            events,
        )
        .await;
        let bodies = bodies(events, batch);
        let log_row = drive_http_log(http_b, agent_b.child.id(), bodies, batch).await;

        println!(
            "{:<52} {:>10} {:>12} {:>16}",
            "path", "events/s", "CPU µs/ev", "its agent µs/ev"
        );
        println!(
            "{:<52} {:>10.0} {:>12.2} {:>16.2}",
            "tollgate external plugin (log phase), 4 workers",
            plugin_row.events_per_s,
            plugin_row.cpu_us,
            plugin_row.other_cpu_us.unwrap_or(0.0)
        );
        println!(
            "{:<52} {:>10.0} {:>12.2} {:>16}",
            format!("http-log batches of {batch} → tollgate-agent, {CLIENTS} clients"),
            log_row.events_per_s,
            log_row.cpu_us,
            "(is the agent)"
        );
        println!(
            "agent CPU per event on http-log / tollgate's: 1/{:.1} (target ≤ 1/5); / tollgate + its agent: 1/{:.1}",
            plugin_row.cpu_us / log_row.cpu_us,
            (plugin_row.cpu_us + plugin_row.other_cpu_us.unwrap_or(0.0)) / log_row.cpu_us
        );
    });
}
