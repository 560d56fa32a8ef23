//! Shared pieces of the plugin's integration tests: the real `tollgate` binary on a real socket,
//! and a recording `tollgate.v1.Ingest` server standing in for the agent's gRPC side.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tollgate_e2e::kong::process::PluginServer;
use tollgate_e2e::kong::worker::PluginEntity;
use tollgate_proto::v1::batch_ack::Status;
use tollgate_proto::v1::ingest_server::{Ingest, IngestServer};
use tollgate_proto::{BatchAck, EventBatch, UsageEvent};
use tonic::{Request, Response, Status as RpcStatus, Streaming};

/// What the recording agent answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AgentMode {
    /// Ack every batch durable.
    Durable,
    /// Answer FULL (nothing stored).
    Full,
    /// Ack every batch durable and keep nothing (benchmarks).
    AckOnly,
}

/// Batches received, in order.
#[derive(Default)]
pub struct Recorded {
    pub batches: Vec<EventBatch>,
}

/// A real tonic Ingest server that records what it is sent.
pub struct RecordingAgent {
    pub addr: std::net::SocketAddr,
    pub recorded: Arc<Mutex<Recorded>>,
    pub mode: Arc<Mutex<AgentMode>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

struct Svc {
    recorded: Arc<Mutex<Recorded>>,
    mode: Arc<Mutex<AgentMode>>,
}

#[tonic::async_trait]
impl Ingest for Svc {
    type PublishStream = Pin<Box<dyn Stream<Item = Result<BatchAck, RpcStatus>> + Send>>;

    async fn publish(
        &self,
        request: Request<Streaming<EventBatch>>,
    ) -> Result<Response<Self::PublishStream>, RpcStatus> {
        let recorded = self.recorded.clone();
        let mode = self.mode.clone();
        let acks = request.into_inner().map(move |batch| {
            let batch = batch?;
            let sequence = batch.sequence;
            let status = *mode.lock().unwrap();
            if status != AgentMode::Full {
                if status == AgentMode::Durable {
                    recorded.lock().unwrap().batches.push(batch);
                }
                Ok(BatchAck {
                    sequence,
                    status: Status::Durable.into(),
                    reason: String::new(),
                })
            } else {
                Ok(BatchAck {
                    sequence,
                    status: Status::Full.into(),
                    reason: "full".into(),
                })
            }
        });
        Ok(Response::new(Box::pin(acks)))
    }
}

impl RecordingAgent {
    /// Starts on `addr` (use port 0 for any).
    pub async fn start_on(addr: &str) -> RecordingAgent {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorded: Arc<Mutex<Recorded>> = Arc::default();
        let mode = Arc::new(Mutex::new(AgentMode::Durable));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let svc = Svc {
            recorded: recorded.clone(),
            mode: mode.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(IngestServer::new(svc))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                }),
        );
        RecordingAgent {
            addr,
            recorded,
            mode,
            shutdown: Some(tx),
        }
    }

    pub async fn start() -> RecordingAgent {
        Self::start_on("127.0.0.1:0").await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn events(&self) -> Vec<UsageEvent> {
        self.recorded
            .lock()
            .unwrap()
            .batches
            .iter()
            .flat_map(|b| b.events.clone())
            .collect()
    }

    pub fn batches(&self) -> Vec<EventBatch> {
        self.recorded.lock().unwrap().batches.clone()
    }

    /// Waits until at least `n` events arrived (or panics after 10 s).
    pub async fn wait_for(&self, n: usize) -> Vec<UsageEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events();
            if events.len() >= n {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} events arrived",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// This build's `tollgate`, or another build of it named by `TOLLGATE_BIN` (to compare two builds
/// in one run, e.g. the static musl one from `scripts/package`).
pub fn tollgate_bin() -> PathBuf {
    std::env::var_os("TOLLGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tollgate")))
}

/// Starts the real `tollgate` serving `<dir>/tollgate.socket`, delivering to `agent`.
pub fn start_tollgate(dir: &Path, agent: &str, extra: &[&str]) -> PluginServer {
    let mut args = vec![
        "-kong-prefix".to_owned(),
        dir.display().to_string(),
        "--agent".to_owned(),
        agent.to_owned(),
        "--source".to_owned(),
        "kong-test".to_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    PluginServer::spawn(
        &tollgate_bin(),
        &args,
        &dir.join("tollgate.socket"),
        Duration::from_secs(10),
    )
    .unwrap()
}

/// A `tollgate` plugin entity with `config`.
pub fn metering_plugin(config: serde_json::Value) -> PluginEntity {
    PluginEntity {
        name: "tollgate".into(),
        id: uuid::Uuid::new_v4().to_string(),
        config,
        route_id: None,
        service_id: None,
        seq: 1,
    }
}

pub fn data(event: &UsageEvent) -> serde_json::Value {
    serde_json::from_slice(&event.data).unwrap()
}
