//! CPU per request of the proxy-wasm filter in our wasmtime host, beside the external plugin's
//! floor measured in the same run: one `HandleEvent` round trip to the real `tollgate` binary
//! over its Unix socket, answered `ret` at once (no PDK call, no metering) — the least any
//! external plugin costs a request, which the filter, running inside the proxy, does not pay.
//!
//! Filter runs (release build of the filter, `--profile wasm`; Kong flavor; each request goes
//! through request headers, a response header and body chunk, `on_log`; the root context ticks
//! every 20 ms and delivers batches over loopback to an HTTP receiver answering 204):
//! * `metering`: one `kong.api_request` per request;
//! * `metering + enforcement`: also the entitlement decision from shared data (a metered value
//!   with a large balance, refreshed from the receiver playing the agent's local endpoint);
//! * `LLM SSE`: an OpenAI stream of 3 chunks read for usage, three events per request;
//! * and, to show what is the host's: the same callbacks with metering switched off.
//!
//! CPU is the driving thread's on-CPU time (`/proc/thread-self/schedstat`: every callback, tick
//! and batch the filter runs; the HTTP I/O of its calls is the host's, on another thread, as it
//! is nginx's) and, beside it, the whole process's (utime+stime). The floor is the `tollgate`
//! process's CPU per round trip (utime+stime from /proc), with 4 driver workers as in
//! `plugin/benches/log_phase.rs`.
//!
//! Run: `cargo bench -p tollgate-wasm-host --bench filter [-- REQUESTS]` (default 100,000).

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rmpv::Value;
use serde_json::json;
use tollgate_e2e::kong::process::PluginServer;
use tollgate_e2e::kong::worker::{PluginEntity, Worker};
use tollgate_e2e::stack::binary;
use tollgate_wasm_host::shared::SharedStore;
use tollgate_wasm_host::{Flavor, Request, Response, Vm};

fn thread_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Events the receiver took (every event of every batch it answered 204).
static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// An HTTP receiver: reads each batch, counts its events and answers 204 (as the agent's intake
/// does once they are durable), and a metered value with a large balance for every entitlement
/// question (the agent's local endpoint, answered at once).
async fn receiver() -> SocketAddr {
    use axum::routing::{get, post};
    let value = |subject: &str| {
        json!({"subject": subject, "feature": "api_calls", "kind": "metered", "has_access": true,
               "balance": 1e12, "soft_limit": false,
               "synced_at_ms": chrono_ms(), "reset_at_ms": 0})
    };
    let app = axum::Router::new()
        .route(
            "/api/v1/events",
            post(|body: axum::body::Bytes| async move {
                match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(&body) {
                    Ok(events) => {
                        RECEIVED.fetch_add(events.len() as u64, Ordering::Relaxed);
                        axum::http::StatusCode::NO_CONTENT
                    }
                    Err(_) => axum::http::StatusCode::BAD_REQUEST,
                }
            }),
        )
        .route(
            "/v1/entitlements",
            get(move || async move { axum::Json(json!([value("consumer:bench")])) }),
        )
        .route(
            "/v1/entitlements/{subject}/{feature}",
            get(
                move |axum::extract::Path((s, _f)): axum::extract::Path<(String, String)>| async move {
                    axum::Json(value(&s))
                },
            ),
        );
    // The agent's `[sources.http] max_body_bytes` default.
    let app = app.layer(axum::extract::DefaultBodyLimit::max(16 << 20));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn request(i: usize) -> Request {
    Request {
        method: "GET".into(),
        path: "/orders/42?expand=items".into(),
        authority: "api.example.com".into(),
        headers: vec![
            ("user-agent".into(), "curl/8.5".into()),
            ("accept".into(), "application/json".into()),
            ("x-consumer-id".into(), "bench".into()),
            ("x-consumer-username".into(), "bench-app".into()),
        ],
        body: vec![],
        properties: vec![
            (
                "ngx.kong_request_id".into(),
                format!("{i:032x}").into_bytes(),
            ),
            (
                "kong.route_id".into(),
                b"0b0c6f3e-5b7a-4c1e-9f2d-1a2b3c4d5e6f".to_vec(),
            ),
            ("kong.route_name".into(), b"orders".to_vec()),
            (
                "kong.service_id".into(),
                b"7e1d2c3b-4a59-4f68-8e7d-6c5b4a392817".to_vec(),
            ),
            ("kong.service_name".into(), b"orders-svc".to_vec()),
        ],
        client: "10.1.2.3:51234".into(),
    }
}

const SSE: [&str; 3] = [
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":8,\"total_tokens\":29}}\n\ndata: [DONE]\n\n",
];

use tollgate_wasm::metrics as m;

/// The filter's counters at one tick of a run.
struct Sample {
    ms: u128,
    requests: usize,
    queued: i64,
    delivered: i64,
    dropped: i64,
    failures: i64,
    in_flight: usize,
}

impl Sample {
    fn of(vm: &Vm, t0: Instant, requests: usize) -> Sample {
        Sample {
            ms: t0.elapsed().as_millis(),
            requests,
            queued: vm.metric(m::QUEUED),
            delivered: vm.metric(m::DELIVERED),
            dropped: vm.metric(m::DROPPED),
            failures: vm.metric(m::DELIVERY_FAILURES),
            in_flight: vm.calls_in_flight(),
        }
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<7} {:<9} {:<8} {:<9} {:<7} {:<8} {}",
            self.ms,
            self.requests,
            self.queued,
            self.delivered,
            self.dropped,
            self.failures,
            self.in_flight
        )
    }
}

struct Run {
    us_thread: f64,
    us_process: f64,
    per_sec: f64,
}

fn run_filter(
    engine: &wasmtime::Engine,
    module: &wasmtime::Module,
    config: serde_json::Value,
    n: usize,
    llm: bool,
) -> Run {
    let mut vm = Vm::from_module(
        engine,
        module,
        &config.to_string(),
        Flavor::Kong,
        SharedStore::default(),
    )
    .unwrap();
    let response = if llm {
        Response {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: SSE.iter().map(|c| c.as_bytes().to_vec()).collect(),
        }
    } else {
        Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: vec![br#"{"order":42,"items":[1,2,3]}"#.to_vec()],
        }
    };
    // Warm-up, and the entitlement value in shared data.
    for i in 0..1_000 {
        vm.exchange(&request(i), &response).unwrap();
    }
    vm.tick().unwrap();
    vm.run_until(Duration::from_secs(5), |vm| vm.calls_in_flight() == 0)
        .unwrap();
    let received0 = RECEIVED.load(Ordering::Relaxed) as i64;
    let delivered0 = vm.metric(m::DELIVERED);
    let pid = std::process::id();
    let mut trace = Vec::new();
    let (t0, p0, w0) = (thread_cpu_ns(), cpu_ticks(pid), Instant::now());
    for i in 0..n {
        // The request is the proxy's: handed over, not copied (as nginx/Envoy own theirs).
        vm.exchange_owned(request(1_000 + i), &response).unwrap();
        if i % 64 == 63 {
            if vm.tick_if_due().unwrap() {
                trace.push(Sample::of(&vm, w0, i + 1));
            }
            vm.poll_calls(Duration::ZERO).unwrap();
        }
    }
    let drained = vm
        .run_until(Duration::from_secs(30), |vm| {
            vm.metric(m::QUEUED) == vm.metric(m::DELIVERED) + vm.metric(m::DROPPED)
        })
        .unwrap();
    let thread_ns = thread_cpu_ns() - t0;
    let ticks = cpu_ticks(pid) - p0;
    let secs = w0.elapsed().as_secs_f64();
    trace.push(Sample::of(&vm, w0, n));
    let received = RECEIVED.load(Ordering::Relaxed) as i64 - received0;
    let delivered = vm.metric(m::DELIVERED) - delivered0;
    if !drained || vm.metric(m::DROPPED) != 0 || received != delivered {
        eprintln!("ms      requests  queued   delivered dropped failures in-flight");
        let step = (trace.len() / 40).max(1);
        for (k, t) in trace.iter().enumerate() {
            if k % step == 0 || k + 1 == trace.len() {
                eprintln!("{t}");
            }
        }
        eprintln!(
            "receiver took {received} events, the filter counts {delivered} delivered; logs: {:?}",
            vm.logs().iter().rev().take(5).collect::<Vec<_>>()
        );
    }
    assert!(drained, "the outbox did not drain within 30 s");
    assert_eq!(vm.metric(m::DROPPED), 0, "events dropped");
    assert_eq!(received, delivered, "receiver's count vs the filter's");
    assert_eq!(vm.metric(m::DENIED), 0);
    Run {
        us_thread: thread_ns as f64 / 1_000.0 / n as f64,
        us_process: ticks as f64 * 10_000.0 / n as f64,
        per_sec: n as f64 / secs,
    }
}

async fn floor(n: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let server = PluginServer::spawn(
        &binary("tollgate"),
        &[
            "-kong-prefix".to_owned(),
            dir.path().display().to_string(),
            "--agent".to_owned(),
            "http://127.0.0.1:9".to_owned(),
        ],
        &dir.path().join("tollgate.socket"),
        Duration::from_secs(20),
    )
    .unwrap();
    let pid = server.pid();
    let plugin = Arc::new(PluginEntity {
        name: "tollgate".into(),
        id: "4b3c2d1e-0000-4000-8000-000000000001".into(),
        config: json!({}),
        route_id: None,
        service_id: None,
        seq: 1,
    });
    let workers: Vec<Arc<Worker>> = (0..4)
        .map(|_| Arc::new(Worker::new(dir.path().join("tollgate.socket"))))
        .collect();
    for w in &workers {
        w.instance_id(&plugin).await.unwrap();
    }
    let per_worker = n / workers.len();
    let ticks0 = cpu_ticks(pid);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in &workers {
        let (w, plugin) = (w.clone(), plugin.clone());
        tasks.push(tokio::spawn(async move {
            let id = w.instance_id(&plugin).await.unwrap();
            for _ in 0..per_worker {
                w.rpc()
                    .call(
                        "plugin.HandleEvent",
                        vec![Value::Map(vec![
                            (Value::from("InstanceId"), Value::from(id)),
                            (Value::from("EventName"), Value::from("access")),
                        ])],
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let events = per_worker * workers.len();
    let ticks = cpu_ticks(pid) - ticks0;
    (
        ticks as f64 * 10_000.0 / events as f64,
        events as f64 / secs,
    )
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(receiver());
    let wasm = tollgate_wasm_host::build::filter_wasm().unwrap();
    let size = std::fs::metadata(&wasm).unwrap().len();
    let (engine, module) = tollgate_wasm_host::vm::compile(&wasm).unwrap();
    let base = json!({"agent": {"address": addr.to_string()}, "flush_period_ms": 20, "queue_max": 100000, "batch_max": 1000});
    let mut enforce = base.clone();
    enforce["enforcement"] = json!({"feature": {"key": "api_calls"}});
    // The host driving the callbacks while the filter builds no event: what is the host's and
    // the ABI's, not the filter's.
    let mut idle = base.clone();
    idle["meter_api_requests"] = json!(false);
    idle["meter_ai_token_usage"] = json!(false);
    let mut llm = base.clone();
    llm["llm"] = json!(true);

    let (floor_us, floor_rate) = rt.block_on(floor(n));
    let idle = run_filter(&engine, &module, idle, n, false);
    let metering = run_filter(&engine, &module, base, n, false);
    let enforcing = run_filter(&engine, &module, enforce, n, false);
    let sse = run_filter(&engine, &module, llm, n, true);
    let (floor_us2, _) = rt.block_on(floor(n));

    println!("tollgate_wasm.wasm: {size} bytes; {n} requests per run");
    println!(
        "{:<52} {:>10} {:>14} {:>15} {:>9}",
        "run", "req/s", "CPU µs/req", "process µs/req", "vs floor"
    );
    let floor_avg = (floor_us + floor_us2) / 2.0;
    println!(
        "{:<52} {:>10.0} {:>14.2} {:>15} {:>9}",
        "external plugin floor: 1 HandleEvent round trip", floor_rate, floor_avg, "-", "1.00x"
    );
    for (name, r) in [
        ("wasm host + filter callbacks, nothing metered", &idle),
        ("wasm filter: metering", &metering),
        ("wasm filter: metering + enforcement", &enforcing),
        ("wasm filter: LLM SSE (3 chunks, 3 events)", &sse),
    ] {
        println!(
            "{:<52} {:>10.0} {:>14.2} {:>15.2} {:>8.2}x",
            name,
            r.per_sec,
            r.us_thread,
            r.us_process,
            r.us_thread / floor_avg
        );
    }
    println!("floor before/after the filter runs: {floor_us:.2} / {floor_us2:.2} µs");
    // Included in every filter run's CPU: the bench building each request (what the proxy's
    // own parsing stands for), measured alone on the same thread.
    let t0 = thread_cpu_ns();
    for i in 0..n {
        std::hint::black_box(request(i));
    }
    println!(
        "of which building a request in the bench: {:.2} µs",
        (thread_cpu_ns() - t0) as f64 / 1_000.0 / n as f64
    );
}
