//! The durable event queue on disk: sled trees, one queue per destination, a dead-letter tree,
//! and group commit.
//!
//! * [`DiskBuffer::append`] stores a batch in its destination's queue under increasing keys
//!   (arrival order) and returns once it is in sled's memory; [`DiskBuffer::commit`] returns once
//!   everything appended before it is on disk. Concurrent commits share one `fsync` (a committer
//!   task drains every waiting request and flushes once for all of them).
//! * The flusher reads a queue in order with [`DiskBuffer::peek`] and deletes what the
//!   destination accepted with [`DiskBuffer::remove`]. Deletes need no fsync: after a crash an
//!   undeleted event is sent again, and (`source`, `id`) dedup makes that safe.
//! * Events the destination refuses as malformed move to the dead-letter tree with the response
//!   ([`DiskBuffer::dead_letter`]) and can be replayed or dropped by an operator.
//! * A directory sled cannot open is moved aside to a quarantine folder and a fresh one is
//!   started: never a crash loop, never a deleted byte.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tollgate_proto::UsageEvent;

/// Queue id of the agent's configured destination.
pub const DEFAULT_QUEUE: u32 = 0;

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// CloudEvent `id`.
    pub id: String,
    /// CloudEvent `source`.
    pub source: String,
    /// CloudEvent `type`.
    pub ty: String,
    /// CloudEvent `subject`.
    pub subject: String,
    /// CloudEvent `time` (RFC 3339), possibly empty.
    pub time: String,
    /// The `data` object, JSON text.
    pub data: String,
    /// When the agent received it (Unix ms).
    pub received_ms: i64,
}

impl StoredEvent {
    /// Approximate bytes it takes, for limits.
    pub fn size(&self) -> u64 {
        (self.id.len()
            + self.source.len()
            + self.ty.len()
            + self.subject.len()
            + self.time.len()
            + self.data.len()
            + 32) as u64
    }
}

/// A destination named by a plugin config (`ingest_endpoint` + `api_token`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PluginDestination {
    /// Full events URL.
    pub endpoint: String,
    /// Bearer token (never logged).
    pub token: String,
}

/// An event the destination refused, with its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its key in the dead-letter tree.
    pub key: u64,
    /// The queue it came from.
    pub queue: u32,
    /// The event.
    pub event: StoredEvent,
    /// HTTP status of the refusal.
    pub status: u16,
    /// Response body (truncated to 4 KiB).
    pub response: String,
    /// When (Unix ms).
    pub at_ms: i64,
}

/// Buffer errors.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// sled failed.
    #[error("disk buffer: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value did not decode.
    #[error("disk buffer: undecodable record: {0}")]
    Decode(String),
    /// The commit task is gone (shutting down).
    #[error("disk buffer: committer stopped")]
    Closed,
}

/// Result of an append.
#[derive(Debug, PartialEq, Eq)]
pub enum Append {
    /// Stored (not yet committed).
    Stored,
    /// Refused: the buffer would pass `max_bytes`.
    Full,
}

/// What opening found.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// Where an unreadable directory was moved.
    pub quarantined: Option<PathBuf>,
    /// Events found queued.
    pub resumed_events: u64,
}

type CommitWaiter = oneshot::Sender<Result<(), String>>;

/// The disk buffer.
pub struct DiskBuffer {
    db: sled::Db,
    destinations: sled::Tree,
    dead: sled::Tree,
    queues: Mutex<HashMap<u32, (sled::Tree, Arc<Notify>)>>,
    destination_ids: Mutex<HashMap<PluginDestination, u32>>,
    next_key: AtomicU64,
    bytes: AtomicU64,
    events: AtomicU64,
    max_bytes: u64,
    commit_tx: mpsc::UnboundedSender<CommitWaiter>,
    new_queue_tx: mpsc::UnboundedSender<u32>,
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, BufferError> {
    rmp_serde::from_slice(bytes).map_err(|e| BufferError::Decode(e.to_string()))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Encoding plain structs into a Vec cannot fail.
    rmp_serde::to_vec_named(v).unwrap_or_default()
}

fn queue_tree_name(id: u32) -> String {
    format!("queue/{id}")
}

impl DiskBuffer {
    /// Opens (or creates) the buffer at `path`. Must run inside a tokio runtime (it starts the
    /// committer task). The receiver yields ids of queues created from now on.
    pub fn open(
        path: &Path,
        max_bytes: u64,
    ) -> Result<(Arc<DiskBuffer>, OpenReport, mpsc::UnboundedReceiver<u32>), BufferError> {
        let mut report = OpenReport::default();
        let db = match sled::Config::new().path(path).open() {
            Ok(db) => db,
            Err(e) => {
                let aside = quarantine_path(path);
                tracing::error!(
                    path = %path.display(), quarantine = %aside.display(), error = %e,
                    "DISK BUFFER UNREADABLE: moved aside untouched and starting with an empty buffer; inspect or replay it by hand"
                );
                std::fs::rename(path, &aside)
                    .map_err(|io| BufferError::Sled(sled::Error::Io(io)))?;
                report.quarantined = Some(aside);
                sled::Config::new().path(path).open()?
            }
        };
        let destinations = db.open_tree("destinations")?;
        let dead = db.open_tree("dead_letters")?;
        let mut queues = HashMap::new();
        let mut ids = HashMap::new();
        let mut max_key = 0u64;
        let mut bytes = 0u64;
        let mut events = 0u64;
        let mut queue_ids = vec![DEFAULT_QUEUE];
        for entry in destinations.iter() {
            let (k, v) = entry?;
            let id = u32::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| BufferError::Decode("destination key".into()))?,
            );
            ids.insert(decode::<PluginDestination>(&v)?, id);
            queue_ids.push(id);
        }
        for id in queue_ids {
            let tree = db.open_tree(queue_tree_name(id))?;
            for entry in tree.iter() {
                let (k, v) = entry?;
                max_key = max_key.max(key_of(&k));
                bytes += decode::<StoredEvent>(&v)?.size();
                events += 1;
            }
            queues.insert(id, (tree, Arc::new(Notify::new())));
        }
        if let Some(last) = dead.last()? {
            max_key = max_key.max(key_of(&last.0));
        }
        report.resumed_events = events;
        let (commit_tx, commit_rx) = mpsc::unbounded_channel();
        let (new_queue_tx, new_queue_rx) = mpsc::unbounded_channel();
        tokio::spawn(committer(db.clone(), commit_rx));
        let buffer = Arc::new(DiskBuffer {
            db,
            destinations,
            dead,
            queues: Mutex::new(queues),
            destination_ids: Mutex::new(ids),
            next_key: AtomicU64::new(max_key + 1),
            bytes: AtomicU64::new(bytes),
            events: AtomicU64::new(events),
            max_bytes,
            commit_tx,
            new_queue_tx,
        });
        Ok((buffer, report, new_queue_rx))
    }

    /// Ids of every queue.
    pub fn queue_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = lock(&self.queues).keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The plugin destination of queue `id` (`None` for the default queue).
    pub fn destination(&self, id: u32) -> Option<PluginDestination> {
        lock(&self.destination_ids)
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
    }

    /// The queue for a plugin destination, created on first use.
    pub fn queue_for(&self, dest: Option<&PluginDestination>) -> Result<u32, BufferError> {
        let Some(dest) = dest else {
            return Ok(DEFAULT_QUEUE);
        };
        let mut ids = lock(&self.destination_ids);
        if let Some(id) = ids.get(dest) {
            return Ok(*id);
        }
        let id = ids.values().max().copied().unwrap_or(DEFAULT_QUEUE) + 1;
        self.destinations.insert(id.to_be_bytes(), encode(dest))?;
        let tree = self.db.open_tree(queue_tree_name(id))?;
        lock(&self.queues).insert(id, (tree, Arc::new(Notify::new())));
        ids.insert(dest.clone(), id);
        let _ = self.new_queue_tx.send(id);
        Ok(id)
    }

    fn queue(&self, id: u32) -> Option<(sled::Tree, Arc<Notify>)> {
        lock(&self.queues).get(&id).cloned()
    }

    /// Wakes when events are appended to queue `id`.
    pub fn notifier(&self, id: u32) -> Option<Arc<Notify>> {
        self.queue(id).map(|(_, n)| n)
    }

    /// Stores `events` at the end of queue `id`, atomically, or refuses when full.
    pub fn append(
        &self,
        id: u32,
        events: &[UsageEvent],
        received_ms: i64,
    ) -> Result<Append, BufferError> {
        let stored: Vec<StoredEvent> = events
            .iter()
            .map(|e| StoredEvent {
                id: e.id.clone(),
                source: e.source.clone(),
                ty: e.r#type.clone(),
                subject: e.subject.clone(),
                time: e.time.clone(),
                data: String::from_utf8_lossy(&e.data).into_owned(),
                received_ms,
            })
            .collect();
        let size: u64 = stored.iter().map(StoredEvent::size).sum();
        // Reserve the bytes first so concurrent appends cannot both pass the limit.
        let before = self.bytes.fetch_add(size, Ordering::AcqRel);
        if before + size > self.max_bytes {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            return Ok(Append::Full);
        }
        let Some((tree, notify)) = self.queue(id) else {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(BufferError::Decode(format!("no queue {id}")));
        };
        let mut batch = sled::Batch::default();
        let first = self
            .next_key
            .fetch_add(stored.len() as u64, Ordering::AcqRel);
        for (i, e) in stored.iter().enumerate() {
            batch.insert(&(first + i as u64).to_be_bytes(), encode(e));
        }
        if let Err(e) = tree.apply_batch(batch) {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(e.into());
        }
        self.events.fetch_add(stored.len() as u64, Ordering::AcqRel);
        notify.notify_one();
        Ok(Append::Stored)
    }

    /// Returns once everything appended before the call is on disk.
    pub async fn commit(&self) -> Result<(), BufferError> {
        let (tx, rx) = oneshot::channel();
        self.commit_tx.send(tx).map_err(|_| BufferError::Closed)?;
        rx.await
            .map_err(|_| BufferError::Closed)?
            .map_err(|e| BufferError::Sled(sled::Error::Io(std::io::Error::other(e))))
    }

    /// Up to `max_events` / `max_bytes` of the oldest events of queue `id`, with their keys.
    pub fn peek(
        &self,
        id: u32,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, StoredEvent)>, BufferError> {
        let Some((tree, _)) = self.queue(id) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for entry in tree.iter() {
            let (k, v) = entry?;
            let e: StoredEvent = decode(&v)?;
            bytes += e.size() as usize;
            if !out.is_empty() && (out.len() >= max_events || bytes > max_bytes) {
                break;
            }
            out.push((key_of(&k), e));
        }
        Ok(out)
    }

    /// Deletes delivered events.
    pub fn remove(&self, id: u32, events: &[(u64, StoredEvent)]) -> Result<(), BufferError> {
        let Some((tree, _)) = self.queue(id) else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for (k, _) in events {
            batch.remove(&k.to_be_bytes());
        }
        tree.apply_batch(batch)?;
        let size: u64 = events.iter().map(|(_, e)| e.size()).sum();
        self.bytes.fetch_sub(
            size.min(self.bytes.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        self.events.fetch_sub(events.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    /// Moves one refused event from queue `id` to the dead-letter tree, durably.
    pub async fn dead_letter(
        &self,
        id: u32,
        key: u64,
        event: &StoredEvent,
        status: u16,
        response: &str,
    ) -> Result<(), BufferError> {
        let letter = DeadLetter {
            key,
            queue: id,
            event: event.clone(),
            status,
            response: response.chars().take(4096).collect(),
            at_ms: chrono::Utc::now().timestamp_millis(),
        };
        self.dead.insert(key.to_be_bytes(), encode(&letter))?;
        self.commit().await?;
        self.remove(id, &[(key, event.clone())])
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, BufferError> {
        self.dead.iter().map(|r| decode(&r?.1)).collect()
    }

    /// Puts every dead letter back at the end of its queue; returns how many.
    pub async fn replay_dead_letters(&self) -> Result<usize, BufferError> {
        let letters = self.dead_letters()?;
        for l in &letters {
            let e = &l.event;
            let queue = if self.queue(l.queue).is_some() {
                l.queue
            } else {
                DEFAULT_QUEUE
            };
            // Replay is an operator's decision: it goes past the size limit if it must.
            let Some((tree, notify)) = self.queue(queue) else {
                continue;
            };
            let key = self.next_key.fetch_add(1, Ordering::AcqRel);
            let stored = StoredEvent {
                received_ms: e.received_ms,
                ..e.clone()
            };
            tree.insert(key.to_be_bytes(), encode(&stored))?;
            self.bytes.fetch_add(stored.size(), Ordering::AcqRel);
            self.events.fetch_add(1, Ordering::AcqRel);
            notify.notify_one();
        }
        self.commit().await?;
        for l in &letters {
            self.dead.remove(l.key.to_be_bytes())?;
        }
        self.commit().await?;
        Ok(letters.len())
    }

    /// Deletes every dead letter; returns how many.
    pub async fn drop_dead_letters(&self) -> Result<usize, BufferError> {
        let n = self.dead.len();
        self.dead.clear()?;
        self.commit().await?;
        Ok(n)
    }

    /// Events queued (all queues).
    pub fn depth(&self) -> u64 {
        self.events.load(Ordering::Acquire)
    }

    /// Bytes queued (all queues).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// The configured limit.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// `received_ms` of the oldest queued event, if any.
    pub fn oldest_received_ms(&self) -> Option<i64> {
        self.queue_ids()
            .into_iter()
            .filter_map(|id| self.queue(id))
            .filter_map(|(tree, _)| tree.first().ok().flatten())
            .filter_map(|(_, v)| decode::<StoredEvent>(&v).ok())
            .map(|e| e.received_ms)
            .min()
    }
}

fn key_of(k: &[u8]) -> u64 {
    k.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn quarantine_path(path: &Path) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "buffer".into());
    path.with_file_name(format!("{name}.quarantine-{stamp}"))
}

/// Group commit: every waiter queued while the previous flush ran shares the next one.
async fn committer(db: sled::Db, mut rx: mpsc::UnboundedReceiver<CommitWaiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let result = db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}
