//! The durable event queue on disk: one queue per destination, each a series of sled trees
//! (segments), a dead-letter tree, and group commit.
//!
//! * [`DiskBuffer::append`] stores a batch in its destination's queue under increasing keys
//!   (arrival order), one sled record per append (the events' consecutive keys, stored under the
//!   first), and returns once it is in sled's memory; [`DiskBuffer::commit`] returns once
//!   everything appended before it is on disk. Concurrent commits share one `fsync` (a committer
//!   task drains every waiting request and flushes once for all of them).
//! * A queue is a series of segment trees: appends go to the newest, which is closed after
//!   [`SEGMENT_EVENTS`] events. The flusher reads a queue in order with [`DiskBuffer::peek`];
//!   [`DiskBuffer::remove`] then moves the segment's delivered-up-to cursor (one small write)
//!   and drops a closed segment whole once all of it is delivered. Deleting each delivered event
//!   from sled would copy a tree node per key, which cost as much as storing the event.
//!   Nothing here needs an fsync: after a crash an event past an older cursor is sent again,
//!   and (`source`, `id`) dedup makes that safe.
//! * Appends to one queue run concurrently; an append's keys are reserved before its events are
//!   in the tree, so [`DiskBuffer::peek`] stops before the lowest key still being written (the
//!   cursor must never pass an event that is not there yet).
//! * Events the destination refuses as malformed move to the dead-letter tree with the response
//!   ([`DiskBuffer::dead_letter`]) and can be replayed or dropped by an operator.
//! * A directory sled cannot open is moved aside to a quarantine folder and a fresh one is
//!   started: never a crash loop, never a deleted byte.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tollgate_proto::UsageEvent;

/// Queue id of the agent's configured destination.
pub const DEFAULT_QUEUE: u32 = 0;

/// Events written to a segment before appends move on to a new one.
pub const SEGMENT_EVENTS: u64 = 4_096;

/// One event as stored. A record holding one event stores its fields by name; a record holding
/// an append's events stores them by position (see `encode_record`): a new field goes at the end,
/// with `#[serde(default)]`, so records already on disk still read.
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
    /// `event` as stored, received at `received_ms`.
    pub fn received(event: &UsageEvent, received_ms: i64) -> StoredEvent {
        StoredEvent {
            id: event.id.clone(),
            source: event.source.clone(),
            ty: event.r#type.clone(),
            subject: event.subject.clone(),
            time: event.time.clone(),
            data: String::from_utf8_lossy(&event.data).into_owned(),
            received_ms,
        }
    }

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

/// One segment of a queue: a sled tree holding a contiguous range of keys.
#[derive(Clone)]
struct Segment {
    name: String,
    tree: sled::Tree,
    /// Events written to it (delivered or not).
    written: u64,
    /// The highest key reserved for it.
    last_key: u64,
    /// Every key up to this one is delivered (or dead-lettered); 0 for none.
    delivered_to: u64,
}

/// One destination's queue.
struct Queue {
    id: u32,
    notify: Arc<Notify>,
    state: Mutex<QueueState>,
}

struct QueueState {
    /// Oldest first; the last takes appends.
    segments: VecDeque<Segment>,
    /// First keys of appends whose keys are reserved but whose events are not in their tree yet.
    writing: BTreeSet<u64>,
    /// Number for the next segment's name.
    next_segment: u64,
}

/// The disk buffer.
pub struct DiskBuffer {
    db: sled::Db,
    destinations: sled::Tree,
    dead: sled::Tree,
    /// Segment name → delivered-up-to key.
    cursors: sled::Tree,
    queues: Mutex<HashMap<u32, Arc<Queue>>>,
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

/// First byte of a record holding the events of one append (several): msgpack never uses 0xc1,
/// and a record holding one event is a msgpack map.
const PACKED: u8 = 0xc1;

/// The record for the events of one append, stored under the first of their consecutive keys.
fn encode_record(events: &[StoredEvent]) -> Vec<u8> {
    match events {
        [one] => encode(one),
        many => {
            let mut v =
                Vec::with_capacity(1 + many.iter().map(|e| e.size() as usize).sum::<usize>());
            v.push(PACKED);
            // Fields by position (the struct's order), not by name: a packed record is read only
            // as `Vec<StoredEvent>`. Encoding plain structs into a Vec cannot fail.
            let _ = rmp_serde::encode::write(&mut v, many);
            v
        }
    }
}

/// The events of the record stored under key `first`, with their keys.
fn decode_record(first: u64, v: &[u8]) -> Result<Vec<(u64, StoredEvent)>, BufferError> {
    match v.split_first() {
        Some((&PACKED, rest)) => Ok(decode::<Vec<StoredEvent>>(rest)?
            .into_iter()
            .enumerate()
            .map(|(i, e)| (first + i as u64, e))
            .collect()),
        _ => Ok(vec![(first, decode(v)?)]),
    }
}

/// The single tree a queue was before segments; read as its first segment.
fn legacy_tree_name(id: u32) -> String {
    format!("queue/{id}")
}

fn segment_name(id: u32, no: u64) -> String {
    format!("queue/{id}/{no:020}")
}

/// Opens queue `id`'s segments (the legacy tree first, if there is one), counting what is left
/// to deliver; creates a first segment for a new queue.
fn open_queue(
    db: &sled::Db,
    cursors: &sled::Tree,
    id: u32,
    names: &[String],
) -> Result<(Queue, u64, u64, u64), BufferError> {
    let prefix = format!("queue/{id}/");
    let mut numbered: Vec<(u64, String)> = names
        .iter()
        .filter_map(|n| {
            let no = n.strip_prefix(&prefix)?.parse().ok()?;
            Some((no, n.clone()))
        })
        .collect();
    if names.contains(&legacy_tree_name(id)) {
        numbered.push((0, legacy_tree_name(id)));
    }
    numbered.sort();
    let (mut max_key, mut bytes, mut events) = (0u64, 0u64, 0u64);
    let mut segments = VecDeque::new();
    for (_, name) in &numbered {
        let tree = db.open_tree(name)?;
        let delivered_to = cursors.get(name.as_bytes())?.map_or(0, |v| key_of(&v));
        let mut last_key = delivered_to;
        let mut written = 0;
        for entry in tree.iter() {
            let (k, v) = entry?;
            for (key, e) in decode_record(key_of(&k), &v)? {
                written += 1;
                last_key = last_key.max(key);
                if key > delivered_to {
                    bytes += e.size();
                    events += 1;
                }
            }
        }
        max_key = max_key.max(last_key);
        segments.push_back(Segment {
            name: name.clone(),
            tree,
            written,
            last_key,
            delivered_to,
        });
    }
    let next_segment = numbered.last().map_or(1, |(no, _)| no + 1);
    let mut state = QueueState {
        segments,
        writing: BTreeSet::new(),
        next_segment,
    };
    if state.segments.is_empty() {
        start_segment(db, id, &mut state)?;
    }
    let queue = Queue {
        id,
        notify: Arc::new(Notify::new()),
        state: Mutex::new(state),
    };
    Ok((queue, max_key, bytes, events))
}

/// Opens a new segment at the end of the queue.
fn start_segment(db: &sled::Db, id: u32, state: &mut QueueState) -> Result<(), BufferError> {
    let name = segment_name(id, state.next_segment);
    let tree = db.open_tree(&name)?;
    state.next_segment += 1;
    state.segments.push_back(Segment {
        name,
        tree,
        written: 0,
        last_key: 0,
        delivered_to: 0,
    });
    Ok(())
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
        let cursors = db.open_tree("cursors")?;
        let names: Vec<String> = db
            .tree_names()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
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
            let (queue, last, b, n) = open_queue(&db, &cursors, id, &names)?;
            max_key = max_key.max(last);
            bytes += b;
            events += n;
            queues.insert(id, Arc::new(queue));
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
            cursors,
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
        let (queue, ..) = open_queue(&self.db, &self.cursors, id, &[])?;
        lock(&self.queues).insert(id, Arc::new(queue));
        ids.insert(dest.clone(), id);
        let _ = self.new_queue_tx.send(id);
        Ok(id)
    }

    fn queue(&self, id: u32) -> Option<Arc<Queue>> {
        lock(&self.queues).get(&id).cloned()
    }

    /// Wakes when events are appended to queue `id`.
    pub fn notifier(&self, id: u32) -> Option<Arc<Notify>> {
        self.queue(id).map(|q| q.notify.clone())
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
            .map(|e| StoredEvent::received(e, received_ms))
            .collect();
        self.append_stored(id, &stored, true)
    }

    /// Stores events already in their stored form at the end of queue `id`, atomically, or
    /// refuses when full (the push sources build [`StoredEvent`]s directly).
    pub fn append_events(&self, id: u32, stored: &[StoredEvent]) -> Result<Append, BufferError> {
        self.append_stored(id, stored, true)
    }

    /// Stores `stored` at the end of queue `id`; with `limit`, refuses past `max_bytes`.
    fn append_stored(
        &self,
        id: u32,
        stored: &[StoredEvent],
        limit: bool,
    ) -> Result<Append, BufferError> {
        if stored.is_empty() {
            return Ok(Append::Stored);
        }
        let size: u64 = stored.iter().map(StoredEvent::size).sum();
        // Reserve the bytes first so concurrent appends cannot both pass the limit.
        let before = self.bytes.fetch_add(size, Ordering::AcqRel);
        if limit && before + size > self.max_bytes {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            return Ok(Append::Full);
        }
        let Some(queue) = self.queue(id) else {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(BufferError::Decode(format!("no queue {id}")));
        };
        let n = stored.len() as u64;
        let (first, tree) = match self.reserve(&queue, n) {
            Ok(r) => r,
            Err(e) => {
                self.bytes.fetch_sub(size, Ordering::AcqRel);
                return Err(e);
            }
        };
        // One record for the whole append, under its first key: one tree update however many
        // events (per-event records cost a node copy each, as much as the rest of the append).
        let applied = tree.insert(first.to_be_bytes(), encode_record(stored));
        lock(&queue.state).writing.remove(&first);
        if let Err(e) = applied {
            // The reserved keys stay empty; the cursor passes over them.
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(e.into());
        }
        self.events.fetch_add(n, Ordering::AcqRel);
        queue.notify.notify_one();
        Ok(Append::Stored)
    }

    /// Reserves `n` keys in the newest segment of `queue` (starting a new segment when the
    /// newest is full) and marks them as being written.
    fn reserve(&self, queue: &Queue, n: u64) -> Result<(u64, sled::Tree), BufferError> {
        let mut state = lock(&queue.state);
        if state
            .segments
            .back()
            .is_none_or(|s| s.written >= SEGMENT_EVENTS)
        {
            start_segment(&self.db, queue.id, &mut state)?;
        }
        let first = self.next_key.fetch_add(n, Ordering::AcqRel);
        state.writing.insert(first);
        let Some(segment) = state.segments.back_mut() else {
            return Err(BufferError::Decode("queue without a segment".into()));
        };
        segment.written += n;
        segment.last_key = segment.last_key.max(first + n.max(1) - 1);
        Ok((first, segment.tree.clone()))
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
        self.peek_after(id, 0, max_events, max_bytes)
    }

    /// As [`DiskBuffer::peek`], for the events after key `after` (the next batch while earlier
    /// ones are still in flight).
    pub fn peek_after(
        &self,
        id: u32,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, StoredEvent)>, BufferError> {
        let Some(queue) = self.queue(id) else {
            return Ok(Vec::new());
        };
        let (segments, barrier) = {
            let state = lock(&queue.state);
            let barrier = state.writing.first().copied().unwrap_or(u64::MAX);
            (state.segments.clone(), barrier)
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for segment in segments {
            if segment.last_key <= after {
                continue;
            }
            let from = segment.delivered_to.max(after);
            for entry in records_after(&segment.tree, from) {
                let (k, v) = entry?;
                let first = key_of(&k);
                // Appends reserve disjoint key ranges: a record that starts below the barrier
                // ends below it.
                if first >= barrier {
                    return Ok(out);
                }
                for (key, e) in decode_record(first, &v)? {
                    if key <= from {
                        continue;
                    }
                    bytes += e.size() as usize;
                    if !out.is_empty() && (out.len() >= max_events || bytes > max_bytes) {
                        return Ok(out);
                    }
                    out.push((key, e));
                }
            }
        }
        Ok(out)
    }

    /// Marks delivered events as gone: `events` are the oldest of the queue, in order (what
    /// [`DiskBuffer::peek`] returned, or a leading part of it). Moves the cursor of each segment
    /// they belong to, and drops every closed segment that is now wholly delivered.
    pub fn remove(&self, id: u32, events: &[(u64, StoredEvent)]) -> Result<(), BufferError> {
        let Some(queue) = self.queue(id) else {
            return Ok(());
        };
        let Some(upto) = events.iter().map(|(k, _)| *k).max() else {
            return Ok(());
        };
        let mut done = Vec::new();
        {
            let mut state = lock(&queue.state);
            let newest = state.segments.len().saturating_sub(1);
            let mut moved = Vec::new();
            for (i, segment) in state.segments.iter_mut().enumerate() {
                if segment.last_key <= segment.delivered_to {
                    // Nothing left in it: drop it unless appends still go there.
                    if i < newest {
                        done.push(segment.name.clone());
                    }
                    continue;
                }
                if segment.delivered_to >= upto {
                    // Segments hold increasing keys: the delivered events are all behind us.
                    break;
                }
                let reaches = segment.last_key.min(upto);
                segment.delivered_to = reaches;
                if i < newest && reaches == segment.last_key {
                    done.push(segment.name.clone());
                } else {
                    moved.push((segment.name.clone(), reaches));
                }
                if segment.last_key >= upto {
                    break;
                }
            }
            state.segments.retain(|s| !done.contains(&s.name));
            for (name, reaches) in moved {
                self.cursors
                    .insert(name.as_bytes(), &reaches.to_be_bytes())?;
            }
        }
        for name in done {
            self.db.drop_tree(name.as_bytes())?;
            self.cursors.remove(name.as_bytes())?;
        }
        let size: u64 = events.iter().map(|(_, e)| e.size()).sum();
        self.bytes.fetch_sub(
            size.min(self.bytes.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
        self.events.fetch_sub(
            (events.len() as u64).min(self.events.load(Ordering::Acquire)),
            Ordering::AcqRel,
        );
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
            let queue = if self.queue(l.queue).is_some() {
                l.queue
            } else {
                DEFAULT_QUEUE
            };
            // Replay is an operator's decision: it goes past the size limit if it must.
            self.append_stored(queue, std::slice::from_ref(&l.event), false)?;
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

    /// Moves an input the agent could not make into an event (a malformed line of an S3
    /// object, …) to the dead-letter tree, durably, under a fresh key: `event` carries what is
    /// known of it (its raw text in `data`), `why` says what was wrong and where.
    pub async fn dead_letter_input(
        &self,
        event: &StoredEvent,
        why: &str,
    ) -> Result<(), BufferError> {
        let key = self.next_key.fetch_add(1, Ordering::AcqRel);
        let letter = DeadLetter {
            key,
            queue: DEFAULT_QUEUE,
            event: event.clone(),
            status: 0,
            response: why.chars().take(4096).collect(),
            at_ms: chrono::Utc::now().timestamp_millis(),
        };
        self.dead.insert(key.to_be_bytes(), encode(&letter))?;
        self.commit().await
    }

    /// The pull sources' progress (last tick evaluated, objects read…), kept in its own tree.
    fn progress(&self) -> Result<sled::Tree, BufferError> {
        Ok(self.db.open_tree("source_progress")?)
    }

    /// A pull source's progress value under `key`.
    pub fn progress_get(&self, key: &str) -> Result<Option<Vec<u8>>, BufferError> {
        Ok(self.progress()?.get(key.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Records a pull source's progress, durably (after the events it covers are committed).
    pub async fn progress_put(&self, key: &str, value: &[u8]) -> Result<(), BufferError> {
        self.progress()?.insert(key.as_bytes(), value)?;
        self.commit().await
    }

    /// Keys (and values) of a pull source's progress under `prefix`.
    pub fn progress_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, BufferError> {
        self.progress()?
            .scan_prefix(prefix.as_bytes())
            .map(|r| {
                let (k, v) = r?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
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
            .filter_map(|queue| {
                let segments = lock(&queue.state).segments.clone();
                segments.into_iter().find_map(|s| {
                    // Stop at the first error: a segment dropped by a concurrent delivery
                    // (cloned above before `remove` dropped its tree) makes sled's iterator
                    // yield errors forever, and skipping them spun a worker at 100 % CPU.
                    records_after(&s.tree, s.delivered_to)
                        .map_while(Result::ok)
                        .find_map(|(k, v)| {
                            decode_record(key_of(&k), &v)
                                .ok()?
                                .into_iter()
                                .find(|(key, _)| *key > s.delivered_to)
                        })
                })
            })
            .map(|(_, e)| e.received_ms)
            .min()
    }
}

/// The records holding events with keys after `after`, in order: the record that starts at or
/// before `after` (it may hold later keys too), then every record after it.
fn records_after(
    tree: &sled::Tree,
    after: u64,
) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> {
    let straddling = tree.range::<[u8; 8], _>(..=after.to_be_bytes()).next_back();
    straddling
        .into_iter()
        .chain(tree.range::<[u8; 8], _>((Bound::Excluded(after.to_be_bytes()), Bound::Unbounded)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> UsageEvent {
        UsageEvent {
            id: format!("e{i}"),
            source: "test".into(),
            r#type: "kong.api_request".into(),
            subject: "s".into(),
            time: String::new(),
            data: br#"{"n":1}"#.to_vec(),
        }
    }

    fn append(buffer: &DiskBuffer, from: u64, n: u64) {
        let events: Vec<UsageEvent> = (from..from + n).map(event).collect();
        assert_eq!(
            buffer.append(DEFAULT_QUEUE, &events, 0).unwrap(),
            Append::Stored
        );
    }

    /// Peeks and removes up to `n` events in batches of 1,000; returns their ids.
    fn deliver(buffer: &DiskBuffer, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        while ids.len() < n {
            let batch = buffer
                .peek(DEFAULT_QUEUE, 1000.min(n - ids.len()), usize::MAX)
                .unwrap();
            if batch.is_empty() {
                break;
            }
            ids.extend(batch.iter().map(|(_, e)| e.id.clone()));
            buffer.remove(DEFAULT_QUEUE, &batch).unwrap();
        }
        ids
    }

    fn segments(buffer: &DiskBuffer) -> usize {
        buffer
            .db
            .tree_names()
            .iter()
            .filter(|n| n.starts_with(b"queue/0/"))
            .count()
    }

    #[tokio::test]
    async fn an_append_still_being_written_holds_back_what_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        let (buffer, ..) = DiskBuffer::open(dir.path(), u64::MAX).unwrap();
        let queue = buffer.queue(DEFAULT_QUEUE).unwrap();
        // A reserves its keys first but is slow to write; B is written meanwhile.
        let (a, a_tree) = buffer.reserve(&queue, 2).unwrap();
        let (b, b_tree) = buffer.reserve(&queue, 1).unwrap();
        b_tree
            .insert(
                b.to_be_bytes(),
                encode(&StoredEvent::received(&event(b), 0)),
            )
            .unwrap();
        lock(&queue.state).writing.remove(&b);
        assert!(
            buffer
                .peek(DEFAULT_QUEUE, 10, usize::MAX)
                .unwrap()
                .is_empty(),
            "B must wait for A: delivering it would move the cursor past A's keys"
        );
        for k in a..a + 2 {
            a_tree
                .insert(
                    k.to_be_bytes(),
                    encode(&StoredEvent::received(&event(k), 0)),
                )
                .unwrap();
        }
        lock(&queue.state).writing.remove(&a);
        let keys: Vec<u64> = buffer
            .peek(DEFAULT_QUEUE, 10, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![a, a + 1, b]);
    }

    #[tokio::test]
    async fn a_cursor_inside_an_appends_record_survives_a_restart_beside_per_event_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (buffer, ..) = DiskBuffer::open(dir.path(), u64::MAX).unwrap();
            // What an older agent left: one record per event.
            let queue = buffer.queue(DEFAULT_QUEUE).unwrap();
            let (first, tree) = buffer.reserve(&queue, 2).unwrap();
            for k in first..first + 2 {
                let e = StoredEvent::received(&event(100 + k), 5);
                tree.insert(k.to_be_bytes(), encode(&e)).unwrap();
            }
            lock(&queue.state).writing.remove(&first);
            buffer.events.fetch_add(2, Ordering::AcqRel);
            // Then one record for an append of ten.
            append(&buffer, 0, 10);
            let batch = buffer.peek(DEFAULT_QUEUE, 5, usize::MAX).unwrap();
            let ids: Vec<&str> = batch.iter().map(|(_, e)| e.id.as_str()).collect();
            assert_eq!(ids, ["e101", "e102", "e0", "e1", "e2"]);
            let after = buffer
                .peek_after(DEFAULT_QUEUE, batch[4].0, 2, usize::MAX)
                .unwrap();
            assert_eq!(after[0].1.id, "e3", "a peek may start inside a record");
            buffer.remove(DEFAULT_QUEUE, &batch).unwrap();
            buffer.commit().await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (buffer, report, _) = DiskBuffer::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(
            report.resumed_events, 7,
            "counted per event, not per record"
        );
        assert_eq!(buffer.oldest_received_ms(), Some(0));
        let rest = deliver(&buffer, usize::MAX);
        assert_eq!(rest, (3..10).map(|i| format!("e{i}")).collect::<Vec<_>>());
        assert_eq!(buffer.depth(), 0);
    }

    #[tokio::test]
    async fn the_oldest_event_is_found_even_while_a_segment_is_dropped_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let (buffer, ..) = DiskBuffer::open(dir.path(), u64::MAX).unwrap();
        append(&buffer, 0, 10);
        let queue = buffer.queue(DEFAULT_QUEUE).unwrap();
        let name = lock(&queue.state).segments[0].name.clone();
        // What a delivery racing with a /metrics scrape does: the tree goes while a clone of
        // the segment list still names it. The scrape must answer, not spin.
        buffer.db.drop_tree(name.as_bytes()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(buffer.oldest_received_ms());
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok(),
            "oldest_received_ms never returned"
        );
    }

    #[tokio::test]
    async fn delivered_segments_are_dropped_whole_and_the_cursor_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let total = 2 * SEGMENT_EVENTS + 1000;
        {
            let (buffer, ..) = DiskBuffer::open(dir.path(), u64::MAX).unwrap();
            for start in (0..total).step_by(500) {
                append(&buffer, start, 500.min(total - start));
            }
            assert_eq!(segments(&buffer), 3);
            let first = deliver(&buffer, SEGMENT_EVENTS as usize + 2500);
            assert_eq!(first.len(), SEGMENT_EVENTS as usize + 2500);
            assert_eq!(first[0], "e0");
            assert_eq!(segments(&buffer), 2, "the first segment is gone");
            assert_eq!(buffer.depth(), total - SEGMENT_EVENTS - 2500);
            buffer.commit().await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (buffer, report, _) = DiskBuffer::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(report.resumed_events, total - SEGMENT_EVENTS - 2500);
        let rest = deliver(&buffer, usize::MAX);
        assert_eq!(rest.len() as u64, total - SEGMENT_EVENTS - 2500);
        assert_eq!(rest[0], format!("e{}", SEGMENT_EVENTS + 2500));
        assert_eq!(rest.last().unwrap(), &format!("e{}", total - 1));
        assert_eq!(segments(&buffer), 1, "only the newest segment is kept");
        assert_eq!(buffer.depth(), 0);
        // New appends after a full drain are delivered too.
        append(&buffer, total, 10);
        assert_eq!(deliver(&buffer, usize::MAX).len(), 10);
    }

    #[tokio::test]
    async fn an_empty_append_stores_nothing_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (buffer, ..) = DiskBuffer::open(dir.path(), u64::MAX).unwrap();
        append(&buffer, 0, 3);
        assert_eq!(
            buffer.append(DEFAULT_QUEUE, &[], 0).unwrap(),
            Append::Stored
        );
        append(&buffer, 3, 2);
        assert_eq!(
            deliver(&buffer, usize::MAX),
            vec!["e0", "e1", "e2", "e3", "e4"]
        );
        assert_eq!(buffer.depth(), 0);
    }

    #[tokio::test]
    async fn a_queue_from_before_segments_is_read_as_the_first_segment() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let legacy = db.open_tree(legacy_tree_name(DEFAULT_QUEUE)).unwrap();
            for k in 1..=5u64 {
                legacy
                    .insert(
                        k.to_be_bytes(),
                        encode(&StoredEvent::received(&event(k), 0)),
                    )
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let (buffer, report, _) = DiskBuffer::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(report.resumed_events, 5);
        append(&buffer, 6, 2);
        let ids = deliver(&buffer, usize::MAX);
        assert_eq!(ids, vec!["e1", "e2", "e3", "e4", "e5", "e6", "e7"]);
    }
}
