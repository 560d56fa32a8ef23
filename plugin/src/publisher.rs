//! Hand-off of metering events to `tollgate-agent` over `tollgate.v1.Ingest/Publish`.
//!
//! [`Publisher::submit`] is what the Kong-facing side calls: it appends to a bounded in-memory
//! queue and returns at once — Kong never waits on the agent. A background task takes batches
//! (bounded by count, bytes and a short delay, one destination per batch), streams them to the
//! agent and keeps each batch until the agent acks it `DURABLE`. When the agent is unreachable,
//! or answers `FULL`, batches go back to the head of the queue and the task reconnects with
//! exponential backoff; when the queue is over capacity the oldest events are dropped, counted,
//! and logged at most once per [`DROP_LOG_EVERY`] drops.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::Destination;
use tollgate_proto::encoded::{self, EncodedEvent};
use tollgate_proto::v1::batch_ack::Status;
use tonic::transport::{Channel, Endpoint, Uri};

/// Log a drop line once per this many dropped events.
pub const DROP_LOG_EVERY: u64 = 1000;

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    /// `http://host:port`.
    Tcp(String),
    /// `unix:/path/to/agent.sock`.
    Unix(PathBuf),
}

impl std::str::FromStr for AgentAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            if path.is_empty() {
                return Err("unix: address needs a socket path".into());
            }
            Ok(AgentAddr::Unix(PathBuf::from(path)))
        } else if s.starts_with("http://") || s.starts_with("https://") {
            s.parse::<Uri>()
                .map_err(|e| format!("bad agent URL {s:?}: {e}"))?;
            Ok(AgentAddr::Tcp(s.to_owned()))
        } else {
            Err(format!(
                "bad agent address {s:?}: expected http://host:port or unix:/path/to/socket"
            ))
        }
    }
}

/// Batching and buffering limits.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// The agent.
    pub agent: AgentAddr,
    /// Events per batch at most.
    pub max_batch_events: usize,
    /// Approximate bytes per batch at most.
    pub max_batch_bytes: usize,
    /// How long a partial batch may wait for more events.
    pub max_delay: Duration,
    /// Events held in memory at most (queued plus in flight); past it the oldest are dropped.
    pub queue_capacity: usize,
    /// Batches sent and not yet acked at most.
    pub max_in_flight: usize,
}

impl PublisherConfig {
    /// Defaults for `agent`.
    pub fn new(agent: AgentAddr) -> Self {
        PublisherConfig {
            agent,
            max_batch_events: 512,
            max_batch_bytes: 1 << 20,
            max_delay: Duration::from_millis(20),
            queue_capacity: 100_000,
            max_in_flight: 8,
        }
    }
}

/// Counters, readable at any time.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// Events accepted by `submit`.
    pub submitted: AtomicU64,
    /// Events the agent acked durable.
    pub acked: AtomicU64,
    /// Events dropped because the queue was over capacity.
    pub dropped: AtomicU64,
    /// Events in batches the agent rejected as malformed.
    pub rejected: AtomicU64,
    /// Connections to the agent that failed or broke.
    pub reconnects: AtomicU64,
}

type Item = (Option<Arc<Destination>>, EncodedEvent);

/// Events of one destination, taken from the queue together.
type Batch = (Option<Arc<Destination>>, Vec<EncodedEvent>);

struct Shared {
    queue: Mutex<VecDeque<Item>>,
    /// Events in batches that are in flight (they count against the capacity).
    in_flight: AtomicU64,
    notify: Notify,
    stats: PublisherStats,
    capacity: usize,
}

/// The hand-off queue; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

impl Publisher {
    /// Starts the background delivery task on the current tokio runtime.
    pub fn start(config: PublisherConfig) -> Publisher {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            in_flight: AtomicU64::new(0),
            notify: Notify::new(),
            stats: PublisherStats::default(),
            capacity: config.queue_capacity,
        });
        tokio::spawn(deliver(shared.clone(), config));
        Publisher { shared }
    }

    /// Queues events for delivery. Never blocks on the agent.
    pub fn submit(&self, events: Vec<EncodedEvent>, destination: Option<Arc<Destination>>) {
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        let dropped = {
            let mut q = lock(&self.shared.queue);
            q.extend(events.into_iter().map(|e| (destination.clone(), e)));
            let held = q.len() + self.shared.in_flight.load(Ordering::Relaxed) as usize;
            let over = held.saturating_sub(self.shared.capacity).min(q.len());
            q.drain(..over);
            over as u64
        };
        self.shared.stats.submitted.fetch_add(n, Ordering::Relaxed);
        if dropped > 0 {
            self.count_drops(dropped);
        }
        self.shared.notify.notify_one();
    }

    fn count_drops(&self, n: u64) {
        let before = self.shared.stats.dropped.fetch_add(n, Ordering::Relaxed);
        if before / DROP_LOG_EVERY != (before + n) / DROP_LOG_EVERY || before == 0 {
            tracing::warn!(
                dropped_total = before + n,
                capacity = self.shared.capacity,
                "agent not keeping up: dropped the oldest queued events"
            );
        }
    }

    /// The counters.
    pub fn stats(&self) -> &PublisherStats {
        &self.shared.stats
    }

    /// Events waiting in memory (queued, not in flight).
    pub fn queued(&self) -> usize {
        lock(&self.shared.queue).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock leaves a consistent VecDeque; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A channel to the agent at `addr`.
pub async fn connect(addr: &AgentAddr) -> Result<Channel, tonic::transport::Error> {
    match addr {
        AgentAddr::Tcp(url) => Endpoint::from_shared(url.clone())?.connect().await,
        AgentAddr::Unix(path) => {
            let path = path.clone();
            // The URI is unused: the connector dials the socket.
            Endpoint::from_static("http://[::]:7070")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
        }
    }
}

/// Takes the next batch from the queue head: same destination, bounded by count and bytes.
fn take_batch(shared: &Shared, config: &PublisherConfig) -> Option<Batch> {
    let mut q = lock(&shared.queue);
    let dest = q.front()?.0.clone();
    let mut events = Vec::new();
    let mut bytes = 0;
    while let Some((d, e)) = q.front() {
        let size = e.len() + 4;
        let same = match (d, &dest) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        };
        if !same
            || events.len() >= config.max_batch_events
            || (bytes + size > config.max_batch_bytes && !events.is_empty())
        {
            break;
        }
        bytes += size;
        if let Some((_, e)) = q.pop_front() {
            events.push(e);
        }
    }
    shared
        .in_flight
        .fetch_add(events.len() as u64, Ordering::Relaxed);
    Some((dest, events))
}

/// Puts unacknowledged batches back at the head of the queue, oldest first.
fn requeue(shared: &Shared, batches: BTreeMap<u64, Batch>) {
    let mut q = lock(&shared.queue);
    for (_, (dest, events)) in batches.into_iter().rev() {
        shared
            .in_flight
            .fetch_sub(events.len() as u64, Ordering::Relaxed);
        for e in events.into_iter().rev() {
            q.push_front((dest.clone(), e));
        }
    }
}

async fn deliver(shared: Arc<Shared>, config: PublisherConfig) {
    let mut backoff = Duration::from_millis(50);
    let mut sequence = 0u64;
    loop {
        let outcome = session(&shared, &config, &mut sequence).await;
        shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        match outcome {
            SessionEnd::Healthy => backoff = Duration::from_millis(50),
            SessionEnd::Failed(why) => {
                tracing::warn!(agent = ?config.agent, error = %why, retry_in_ms = backoff.as_millis() as u64, "agent unreachable; events stay queued");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

enum SessionEnd {
    /// The stream was up and ended; reconnect soon.
    Healthy,
    /// Connecting failed or the agent refused work.
    Failed(String),
}

/// One connection's life: stream batches until the connection breaks.
async fn session(shared: &Shared, config: &PublisherConfig, sequence: &mut u64) -> SessionEnd {
    let channel = match connect(&config.agent).await {
        Ok(c) => c,
        Err(e) => return SessionEnd::Failed(e.to_string()),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(config.max_in_flight);
    let mut acks = match encoded::publish(channel, ReceiverStream::new(rx)).await {
        Ok(acks) => acks,
        Err(e) => return SessionEnd::Failed(e.to_string()),
    };
    // Each batch's events stay here until acked: a reconnect re-encodes them into new batches
    // (the encoded events are shared, not copied).
    let mut in_flight: BTreeMap<u64, Batch> = BTreeMap::new();
    let end = loop {
        let can_send = in_flight.len() < config.max_in_flight;
        tokio::select! {
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    let Some((dest, events)) = in_flight.remove(&ack.sequence) else { continue };
                    let n = events.len() as u64;
                    match ack.status() {
                        Status::Durable => {
                            shared.in_flight.fetch_sub(n, Ordering::Relaxed);
                            shared.stats.acked.fetch_add(n, Ordering::Relaxed);
                        }
                        Status::Full => {
                            in_flight.insert(ack.sequence, (dest, events));
                            break SessionEnd::Failed("agent buffer is full".into());
                        }
                        Status::Rejected | Status::Unspecified => {
                            shared.in_flight.fetch_sub(n, Ordering::Relaxed);
                            shared.stats.rejected.fetch_add(n, Ordering::Relaxed);
                            tracing::error!(events = n, reason = %ack.reason, "agent rejected a batch; its events are dropped");
                        }
                    }
                }
                Ok(None) => break SessionEnd::Healthy,
                Err(e) => break SessionEnd::Failed(e.to_string()),
            },
            _ = wait_for_batch(shared, config), if can_send => {
                let Some((dest, events)) = take_batch(shared, config) else { continue };
                *sequence += 1;
                let batch = encoded::encode_batch(*sequence, &events, dest.as_deref());
                in_flight.insert(*sequence, (dest, events));
                if tx.send(batch).await.is_err() {
                    break SessionEnd::Failed("agent stream closed".into());
                }
            }
        }
    };
    requeue(shared, in_flight);
    end
}

/// Resolves when a batch should be taken: a full batch is waiting, or a partial one has waited
/// `max_delay`.
async fn wait_for_batch(shared: &Shared, config: &PublisherConfig) {
    loop {
        let queued = lock(&shared.queue).len();
        if queued >= config.max_batch_events {
            return;
        }
        if queued > 0 {
            tokio::time::sleep(config.max_delay).await;
            return;
        }
        shared.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_addresses_parse() {
        assert_eq!(
            "unix:/run/a.sock".parse(),
            Ok(AgentAddr::Unix("/run/a.sock".into()))
        );
        assert_eq!(
            "unix:///run/a.sock".parse(),
            Ok(AgentAddr::Unix("/run/a.sock".into()))
        );
        assert_eq!(
            "http://127.0.0.1:7070".parse(),
            Ok(AgentAddr::Tcp("http://127.0.0.1:7070".into()))
        );
        assert!(
            "127.0.0.1:7070"
                .parse::<AgentAddr>()
                .unwrap_err()
                .contains("expected")
        );
    }
}
