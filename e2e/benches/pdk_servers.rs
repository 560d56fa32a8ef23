//! `tollgate` beside Kong's official external plugin servers — npm `kong-pdk` (JS) and PyPI
//! `kong-pdk` (Python) — each doing the same work in the log phase (call `kong.log.serialize`,
//! parse it, build the `kong.api_request` CloudEvent, queue it), all driven by the same Kong-side
//! driver at the same concurrency and event count, in the same run.
//!
//! `tollgate` runs with a real `tollgate-agent` behind it (which delivers to a local receiver that
//! answers 204). The official servers keep their events in a bounded in-memory list, as Kong's own
//! plugin does. Reported per server: events/s, server CPU µs per event (utime+stime from /proc,
//! children included), p50/p99 of the log-phase exchange as the driver sees it, peak RSS and RSS at
//! the end.
//!
//! Each run is made at two concurrencies: 4 events in flight (one per Kong worker, a quiet
//! gateway) and 32 (a busy one), beside the floor: the same two round trips answered at once,
//! which is what Kong's protocol and the kernel cost any external plugin server. `--soak N` then
//! drives N more events through `tollgate` printing its RSS and the agent's every N/10, and a long
//! run of every server (N events; N/10 for Python, ten times slower) with RSS before and after.
//!
//! Installs the two SDKs under `target/pdk-bench/` on first use (npm and pip from the registries).
//! Run: `cargo bench -p tollgate-e2e --bench pdk_servers [-- EVENTS] [--concurrency 4,32]
//! [--soak N]` (default 20,000 events; build the workspace binaries first with
//! `cargo build --release --workspace --bins`).

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_e2e::kong::pdk::RequestPdk;
use tollgate_e2e::kong::process::PluginServer;
use tollgate_e2e::kong::serialize::{KongRequest, KongVersion};
use tollgate_e2e::kong::worker::{PluginEntity, Worker};
use tollgate_e2e::stack::{Proc, binary, free_port, wait_tcp, workspace_root};

const JS_PLUGIN: &str = r#"
// The same work as tollgate's log handler: serialize, parse, build the CloudEvent, queue it.
// The queue keeps the newest 100,000 events in a ring (O(1) per event, like Python's deque).
const CAPACITY = 100000
const queue = new Array(CAPACITY)
let queued = 0
class Plugin {
  constructor(config) { this.config = config }
  async log(kong) {
    const entry = JSON.parse(await kong.log.serialize())
    const req = entry.request || {}
    const consumer = entry.consumer
    if (!consumer || !consumer.id) return
    const event = {
      specversion: "1.0", id: req.id, source: "kong", type: "kong.api_request",
      subject: "consumer:" + consumer.id, time: new Date(entry.started_at).toISOString(),
      data: {
        request_method: req.method, request_uri: (req.uri || "").split("?")[0],
        request_size_bytes: req.size, response_http_status: (entry.response || {}).status,
        response_size_bytes: (entry.response || {}).size, client_ip: entry.client_ip,
        route_id: (entry.route || {}).id, route_name: (entry.route || {}).name,
        service_id: (entry.service || {}).id, service_name: (entry.service || {}).name,
        consumer_username: consumer.username, subject_type: "consumer_id",
      },
    }
    queue[queued % CAPACITY] = JSON.stringify(event)
    queued++
  }
}
module.exports = { Plugin, Schema: [], Version: "0.1.0", Priority: 16 }
"#;

const PY_PLUGIN: &str = r#"
# The same work as tollgate's log handler: serialize, parse, build the CloudEvent, queue it.
import collections, datetime, json
version = "0.1.0"
priority = 16
Schema = []
queue = collections.deque(maxlen=100000)

class Plugin(object):
    def __init__(self, config):
        self.config = config

    def log(self, kong):
        # Lua-style PDK calls return (value, error).
        entry = json.loads(kong.log.serialize()[0])
        req = entry.get("request") or {}
        consumer = entry.get("consumer")
        if not consumer or not consumer.get("id"):
            return
        resp = entry.get("response") or {}
        route = entry.get("route") or {}
        service = entry.get("service") or {}
        event = {
            "specversion": "1.0", "id": req.get("id"), "source": "kong", "type": "kong.api_request",
            "subject": "consumer:" + consumer["id"],
            "time": datetime.datetime.fromtimestamp(entry["started_at"] / 1000, datetime.timezone.utc).isoformat(),
            "data": {
                "request_method": req.get("method"), "request_uri": (req.get("uri") or "").split("?")[0],
                "request_size_bytes": req.get("size"), "response_http_status": resp.get("status"),
                "response_size_bytes": resp.get("size"), "client_ip": entry.get("client_ip"),
                "route_id": route.get("id"), "route_name": route.get("name"),
                "service_id": service.get("id"), "service_name": service.get("name"),
                "consumer_username": consumer.get("username"), "subject_type": "consumer_id",
            },
        }
        queue.append(json.dumps(event))
"#;

fn install(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let js = dir.join("node_modules/.bin/kong-js-pluginserver");
    if !js.exists() {
        let ok = Command::new("npm")
            .args(["install", "--silent", "--prefix"])
            .arg(dir)
            .arg("kong-pdk@0.6.0")
            .status()
            .unwrap();
        assert!(ok.success(), "npm install kong-pdk failed");
    }
    let py = dir.join("venv/bin/kong-python-pluginserver");
    if !py.exists() {
        assert!(
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(dir.join("venv"))
                .status()
                .unwrap()
                .success()
        );
        let ok = Command::new(dir.join("venv/bin/pip"))
            .args(["install", "-q", "kong-pdk==0.36"])
            .status()
            .unwrap();
        assert!(ok.success(), "pip install kong-pdk failed");
    }
    (js, py)
}

/// The processes whose CPU counts for a server: `pid` and its direct children (the Python
/// server forks a worker per plugin).
fn family(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    pids
}

/// (utime, stime) of `pid` and its children in clock ticks (10 ms). The kernel scales the two so
/// that their sum is the exact on-CPU time (`cputime_adjust`), and they include threads that have
/// exited (which per-thread `schedstat` would miss): run enough events for many ticks.
fn user_sys_ticks(pid: u32) -> (u64, u64) {
    let (mut user, mut sys) = (0, 0);
    for p in family(pid) {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat"))
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            let f: Vec<&str> = rest.split_whitespace().collect();
            user += f[11].parse::<u64>().unwrap_or(0);
            sys += f[12].parse::<u64>().unwrap_or(0);
        }
    }
    (user, sys)
}

fn rss_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        .unwrap_or(0)
}

struct Row {
    name: &'static str,
    events_per_s: f64,
    cpu_us: f64,
    sys_share: f64,
    p50_us: u64,
    p99_us: u64,
    peak_rss: u64,
    end_rss: u64,
}

/// What the driver asks of a server for each event.
#[derive(Clone, Copy, PartialEq)]
enum Work {
    /// The log phase: `HandleEvent`, the `kong.log.serialize` Step, `ret`.
    Log,
    /// The same two round trips with no work behind them: `HandleEvent` for a phase the plugin
    /// does not list, answered `ret` at once, twice per event.
    Floor,
}

/// A server under test: where it listens, what it is, and its plugin's name.
struct Server {
    name: &'static str,
    socket: PathBuf,
    pid: u32,
    plugin: &'static str,
}

/// Drives `events` events through `server`, `concurrency` at a time (spread over 4 Kong workers,
/// each with its own connection pool, as Kong's worker processes are).
async fn drive(server: &Server, events: usize, concurrency: usize, work: Work) -> Row {
    let entity = PluginEntity {
        name: server.plugin.into(),
        id: uuid::Uuid::new_v4().to_string(),
        config: serde_json::json!({}),
        route_id: None,
        service_id: None,
        seq: 1,
    };
    let req = Arc::new(
        KongRequest::get(KongVersion::V3_9, "/orders/42")
            .with_consumer("5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f", "alice"),
    );
    let workers: Vec<Arc<Worker>> = (0..4)
        .map(|_| Arc::new(Worker::new(&server.socket)))
        .collect();
    for w in &workers {
        w.run_phase(
            &entity,
            "log",
            &RequestPdk {
                request: &req,
                phase: "log",
            },
        )
        .await
        .unwrap();
    }
    let pid = server.pid;
    let ticks0 = user_sys_ticks(pid);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (w, entity, req) = (
            workers[i % workers.len()].clone(),
            entity.clone(),
            req.clone(),
        );
        let n = events / concurrency;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            let (phase, round_trips) = match work {
                Work::Log => ("log", 1),
                Work::Floor => ("access", 2),
            };
            for _ in 0..n {
                let s = Instant::now();
                for _ in 0..round_trips {
                    w.run_phase(
                        &entity,
                        phase,
                        &RequestPdk {
                            request: &req,
                            phase,
                        },
                    )
                    .await
                    .unwrap();
                }
                lat.push(s.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = t0.elapsed().as_secs_f64();
    let ticks = user_sys_ticks(pid);
    let (user, sys) = (ticks.0 - ticks0.0, ticks.1 - ticks0.1);
    lat.sort_unstable();
    Row {
        name: server.name,
        events_per_s: lat.len() as f64 / secs,
        cpu_us: ((user + sys) * 10_000) as f64 / lat.len() as f64,
        sys_share: sys as f64 / (user + sys).max(1) as f64,
        p50_us: lat[lat.len() / 2],
        p99_us: lat[lat.len() * 99 / 100],
        peak_rss: rss_kib(pid, "VmHWM:"),
        end_rss: rss_kib(pid, "VmRSS:"),
    }
}

/// Command line: `[EVENTS] [--concurrency 4,32] [--soak EVENTS]`.
struct Args {
    events: usize,
    concurrency: Vec<usize>,
    soak: usize,
}

fn args() -> Args {
    let mut args = Args {
        events: 20_000,
        concurrency: vec![4, 32],
        soak: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--concurrency" => {
                args.concurrency = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|c| c.parse().expect("--concurrency 4,32"))
                    .collect();
            }
            "--soak" => args.soak = it.next().and_then(|n| n.parse().ok()).expect("--soak N"),
            n => {
                if let Ok(n) = n.parse() {
                    args.events = n;
                }
            }
        }
    }
    args
}

fn main() {
    let Args {
        events,
        concurrency,
        soak,
    } = args();
    let root = workspace_root();
    let (js_bin, py_bin) = install(&root.join("target/pdk-bench"));
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join("meter.js"), JS_PLUGIN).unwrap();
    std::fs::write(plugins.join("meter.py"), PY_PLUGIN).unwrap();
    let prefix = dir.path().join("kong");
    std::fs::create_dir_all(&prefix).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A receiver for the agent: 204 to everything.
        let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink_addr = sink.local_addr().unwrap();
        let app = axum_like_sink();
        tokio::spawn(async move { hyper_serve(sink, app).await });

        // tollgate with a real agent.
        let agent_grpc: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let agent_http: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let agent = Proc::spawn(
            &binary("tollgate-agent"),
            &[
                "--grpc-listen".into(),
                agent_grpc.to_string(),
                "--http-listen".into(),
                agent_http.to_string(),
                "--data-dir".into(),
                dir.path().join("agent-data").display().to_string(),
                "--destination-url".into(),
                format!("http://{sink_addr}"),
            ],
            &[],
        )
        .unwrap();
        wait_tcp(agent_grpc, Duration::from_secs(20)).unwrap();
        let tollgate_proc = PluginServer::spawn(
            &binary("tollgate"),
            &[
                "-kong-prefix".into(),
                prefix.display().to_string(),
                "--agent".into(),
                format!("http://{agent_grpc}"),
            ],
            &prefix.join("tollgate.socket"),
            Duration::from_secs(20),
        )
        .unwrap();
        let js_proc = PluginServer::spawn(
            &js_bin,
            &[
                "-d".into(),
                plugins.display().to_string(),
                "--sock-name".into(),
                "js.sock".into(),
                "--kong-prefix".into(),
                prefix.display().to_string(),
            ],
            &prefix.join("js.sock"),
            Duration::from_secs(30),
        )
        .unwrap();
        let py_proc = PluginServer::spawn(
            &py_bin,
            &[
                "-d".into(),
                plugins.display().to_string(),
                "--socket-name".into(),
                "py.sock".into(),
                "-p".into(),
                prefix.display().to_string(),
            ],
            &prefix.join("py.sock"),
            Duration::from_secs(30),
        )
        .unwrap();
        let tollgate = Server {
            name: "tollgate (Rust, + tollgate-agent)",
            socket: prefix.join("tollgate.socket"),
            pid: tollgate_proc.pid(),
            plugin: "tollgate",
        };
        // The least any external plugin server can cost for this event: the same two round
        // trips, each `HandleEvent` (for a phase the plugin does not list) answered at once.
        let floor = Server {
            name: "floor: 2 round trips answered at once",
            socket: tollgate.socket.clone(),
            pid: tollgate.pid,
            plugin: tollgate.plugin,
        };
        let js = Server {
            name: "kong-pdk JS 0.6.0 (node 20)",
            socket: prefix.join("js.sock"),
            pid: js_proc.pid(),
            plugin: "meter",
        };
        let py = Server {
            name: "kong-pdk Python 0.36 (CPython 3.11)",
            socket: prefix.join("py.sock"),
            pid: py_proc.pid(),
            plugin: "meter",
        };

        for &c in &concurrency {
            let rows = [
                drive(&tollgate, events, c, Work::Log).await,
                drive(&js, events, c, Work::Log).await,
                drive(&py, events, c, Work::Log).await,
            ];
            let floor = drive(&floor, events, c, Work::Floor).await;
            report(events, c, &rows, &floor);
        }
        if soak > 0 {
            println!();
            println!("soak: {soak} more events through tollgate at concurrency 32");
            println!(
                "{:>10} {:>9} {:>10} {:>14} {:>14}",
                "events", "events/s", "CPU µs/ev", "tollgate KiB", "agent KiB"
            );
            let chunk = soak / 10;
            for i in 1..=10 {
                let r = drive(&tollgate, chunk, 32, Work::Log).await;
                println!(
                    "{:>10} {:>9.0} {:>10.1} {:>14} {:>14}",
                    i * chunk,
                    r.events_per_s,
                    r.cpu_us,
                    r.end_rss,
                    rss_kib(agent.child.id(), "VmRSS:")
                );
            }
            // The official servers over a long run too (Python a tenth as many: it is ~10x
            // slower), RSS before and after.
            println!();
            println!("long run of every server at concurrency 32 (RSS in KiB)");
            println!(
                "{:<38} {:>10} {:>12} {:>12} {:>12}",
                "server", "events", "RSS before", "RSS after", "peak"
            );
            for (server, n) in [(&tollgate, soak), (&js, soak), (&py, soak / 10)] {
                let before = rss_kib(server.pid, "VmRSS:");
                let r = drive(server, n, 32, Work::Log).await;
                println!(
                    "{:<38} {:>10} {:>12} {:>12} {:>12}",
                    server.name, n, before, r.end_rss, r.peak_rss
                );
            }
        }
    });
}

fn report(events: usize, concurrency: usize, rows: &[Row], floor: &Row) {
    println!();
    println!(
        "log phase side by side: {events} events, {concurrency} in flight over 4 Kong workers, 2 cores"
    );
    println!(
        "{:<38} {:>9} {:>10} {:>6} {:>8} {:>8} {:>10} {:>10}",
        "server", "events/s", "CPU µs/ev", "sys %", "p50 µs", "p99 µs", "peak KiB", "end KiB"
    );
    for r in rows.iter().chain([floor]) {
        println!(
            "{:<38} {:>9.0} {:>10.1} {:>6.0} {:>8} {:>8} {:>10} {:>10}",
            r.name,
            r.events_per_s,
            r.cpu_us,
            r.sys_share * 100.0,
            r.p50_us,
            r.p99_us,
            r.peak_rss,
            r.end_rss
        );
    }
    let best = rows[1..]
        .iter()
        .map(|r| r.cpu_us)
        .fold(f64::INFINITY, f64::min);
    println!(
        "CPU per event, the better official server / tollgate: {:.1}x; above the floor: {:.1}x",
        best / rows[0].cpu_us,
        (best - floor.cpu_us) / (rows[0].cpu_us - floor.cpu_us).max(0.1)
    );
}

/// A 204-to-everything HTTP service (the agent's destination).
fn axum_like_sink() -> axum::Router {
    axum::Router::new().fallback(|| async { axum::http::StatusCode::NO_CONTENT })
}

async fn hyper_serve(listener: tokio::net::TcpListener, app: axum::Router) {
    let _ = axum::serve(listener, app).await;
}
