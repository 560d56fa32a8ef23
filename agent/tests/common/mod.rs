//! Shared pieces of the agent's integration tests: the real `tollgate-agent` binary with its own
//! config and data directory, a gRPC publisher that behaves like the plugin (resends what was
//! not acked), and a real HTTP receiver that records what it is sent and can misbehave on cue.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::batch_ack::Status;
use tollgate_proto::v1::ingest_client::IngestClient;
use tollgate_proto::{BatchAck, EventBatch, UsageEvent};

pub use tollgate_e2e::stack::free_port;

/// How the receiver answers.
#[derive(Default)]
pub struct Behaviour {
    /// Answer 500 to this many requests.
    pub fail_500: usize,
    /// Answer 429 with `Retry-After: 1` to this many requests.
    pub throttle_429: usize,
    /// Refuse (400) any batch containing one of these ids; store nothing of it.
    pub poison: HashSet<String>,
    /// Sleep this long before answering.
    pub delay: Duration,
}

#[derive(Default)]
pub struct Received {
    /// Every event received, in order, duplicates included.
    pub events: Vec<serde_json::Value>,
    pub requests: usize,
    pub times: Vec<Instant>,
    pub auth: Vec<Option<String>>,
    /// Requests that arrived gzip-encoded.
    pub gzipped: usize,
    /// Requests being answered right now, and the most there ever were at once.
    pub in_flight: usize,
    pub max_in_flight: usize,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Received>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
}

async fn ingest(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    // A request that will be failed is answered at once, never delayed: a delayed one could
    // outlive the agent's abandoning it (a failure aborts its pipeline) and then count as in
    // flight beside the agent's next requests.
    let delay = {
        let b = r.behaviour.lock().unwrap();
        if b.fail_500 > 0 {
            Duration::ZERO
        } else {
            b.delay
        }
    };
    {
        let mut rec = r.received.lock().unwrap();
        rec.in_flight += 1;
        rec.max_in_flight = rec.max_in_flight.max(rec.in_flight);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    r.received.lock().unwrap().in_flight -= 1;
    let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .unwrap();
        r.received.lock().unwrap().gzipped += 1;
        Bytes::from(out)
    } else {
        body
    };
    let events: Vec<serde_json::Value> = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                HeaderMap::new(),
                format!("bad json: {e}"),
            );
        }
    };
    let mut b = r.behaviour.lock().unwrap();
    let mut rec = r.received.lock().unwrap();
    rec.requests += 1;
    rec.times.push(Instant::now());
    rec.auth.push(
        headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
    );
    if b.fail_500 > 0 {
        b.fail_500 -= 1;
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            HeaderMap::new(),
            "boom".into(),
        );
    }
    if b.throttle_429 > 0 {
        b.throttle_429 -= 1;
        let mut h = HeaderMap::new();
        h.insert("retry-after", "1".parse().unwrap());
        return (StatusCode::TOO_MANY_REQUESTS, h, "slow down".into());
    }
    if let Some(bad) = events
        .iter()
        .find(|e| b.poison.contains(e["id"].as_str().unwrap_or("")))
    {
        return (
            StatusCode::BAD_REQUEST,
            HeaderMap::new(),
            format!("invalid event {}", bad["id"]),
        );
    }
    rec.events.extend(events);
    (StatusCode::NO_CONTENT, HeaderMap::new(), String::new())
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on(0).await
    }

    pub async fn start_on(port: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            behaviour: Arc::default(),
        };
        let app = Router::new()
            .route("/api/v1/events", post(ingest))
            .with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Distinct ids received.
    pub fn ids(&self) -> HashSet<String> {
        self.received
            .lock()
            .unwrap()
            .events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().events.len()
    }

    /// Waits until every id in `want` arrived (panics after `timeout`).
    pub async fn wait_for_ids(&self, want: &HashSet<String>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.ids();
            let missing = want.difference(&have).count();
            if missing == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{missing} of {} ids never arrived",
                want.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running `tollgate-agent`.
pub struct Agent {
    pub child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
}

/// The agent binary: this build's, or `TOLLGATE_AGENT_BIN` (to compare two builds in one run).
pub fn agent_bin() -> PathBuf {
    std::env::var_os("TOLLGATE_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tollgate-agent")))
}

/// Writes a config for `dir` delivering to `destination`, with extra TOML appended.
pub fn write_config(dir: &Path, destination: &str, extra: &str) -> PathBuf {
    let grpc = free_port();
    let http = free_port();
    let path = dir.join("agent.toml");
    let mut table: toml::Table = format!(
        "[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
         [buffer]\npath = \"{}\"\n[destination]\nurl = \"{destination}\"\n\
         [flush]\ninterval_ms = 20\nretry_initial_ms = 20\nretry_max_ms = 200\n",
        dir.join("data").display()
    )
    .parse()
    .unwrap();
    let extra: toml::Table = extra.parse().unwrap();
    for (section, values) in extra {
        let target = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        target
            .as_table_mut()
            .unwrap()
            .extend(values.as_table().unwrap().clone());
    }
    std::fs::write(&path, table.to_string()).unwrap();
    path
}

impl Agent {
    pub fn start(config: &Path) -> Agent {
        Self::start_with_env(config, &[])
    }

    /// Starts the agent with extra environment variables (`AWS_ACCESS_KEY_ID`, …).
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Agent {
        let text = std::fs::read_to_string(config).unwrap();
        let table: toml::Table = text.parse().unwrap();
        let grpc: SocketAddr = table["grpc"]["listen"].as_str().unwrap().parse().unwrap();
        let http: SocketAddr = table["http"]["listen"].as_str().unwrap().parse().unwrap();
        let child = Command::new(agent_bin())
            .args(["--config", config.to_str().unwrap()])
            .env("TOLLGATE_LOG", "error")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent {
            child,
            grpc,
            http,
            dir: config.parent().unwrap().to_owned(),
            config: config.to_owned(),
        };
        agent.wait_ready();
        agent
    }

    /// Waits until both the gRPC and the admin HTTP listeners accept (the agent binds the admin
    /// port after gRPC is up).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in [self.grpc, self.http] {
            while std::net::TcpStream::connect(addr).is_err() {
                assert!(Instant::now() < deadline, "agent never listened on {addr}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{path}", self.http))
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn event(id: &str) -> UsageEvent {
    UsageEvent {
        id: id.into(),
        source: "kong-test".into(),
        r#type: "kong.api_request".into(),
        subject: "consumer:7".into(),
        time: "2026-11-24T10:00:00.000Z".into(),
        data: format!(r#"{{"request_method":"GET","n":"{id}"}}"#).into_bytes(),
    }
}

/// Publishes `batches` on one stream; returns the acks (by sequence).
pub async fn publish(
    url: &str,
    batches: Vec<EventBatch>,
) -> Result<HashMap<u64, BatchAck>, String> {
    let mut client = IngestClient::connect(url.to_owned())
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(batches.len().max(1));
    let n = batches.len();
    for b in batches {
        tx.send(b).await.unwrap();
    }
    drop(tx);
    let mut acks = client
        .publish(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut out = HashMap::new();
    while out.len() < n {
        match acks.message().await {
            Ok(Some(a)) => {
                out.insert(a.sequence, a);
            }
            Ok(None) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out)
}

pub fn batch(sequence: u64, ids: impl IntoIterator<Item = String>) -> EventBatch {
    EventBatch {
        sequence,
        events: ids.into_iter().map(|i| event(&i)).collect(),
        destination: None,
    }
}

pub fn durable(acks: &HashMap<u64, BatchAck>) -> usize {
    acks.values()
        .filter(|a| a.status() == Status::Durable)
        .count()
}

/// The Python of `target/py-venv` with the test peers installed (OpenMeter's SDK, the
/// OpenTelemetry SDK and its OTLP exporter): made by `scripts/install-test-deps` when missing.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("TOLLGATE_PYTHON") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = root.join("target/py-venv/bin/python");
    let ready = py.exists()
        && Command::new(&py)
            .args([
                "-c",
                "import openmeter, opentelemetry.exporter.otlp.proto.grpc._log_exporter",
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !ready {
        let status = Command::new("bash")
            .arg(root.join("scripts/install-test-deps"))
            .status()
            .unwrap();
        assert!(status.success(), "scripts/install-test-deps failed");
    }
    py
}

/// Runs `script` (under `agent/tests/py/`) with `args`; panics with its output on failure.
pub fn run_python(script: &str, args: &[String]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = Command::new(python())
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// An HTTP client for the push sources.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// POSTs `body` with `content_type` to the agent's `path`; returns status, headers and body.
pub async fn post_to(
    agent_http: SocketAddr,
    path: &str,
    content_type: &str,
    body: String,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = http()
        .post(format!("http://{agent_http}{path}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// A CloudEvent for the HTTP intake.
pub fn cloudevent(id: &str) -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0", "id": id, "source": "app-1", "type": "jobs",
        "subject": "customer-1", "time": "2026-11-24T10:00:00Z", "data": {"seconds": 3, "id": id}
    })
}
