//! The system of record: billing's SQL database behind one interface, on SQLite (embedded, the
//! default: `<data_dir>/billing.db`, WAL) or PostgreSQL (`database_url`, for several replicas).
//!
//! * `events`: every accepted event; (`source`, `id`) is a unique key, so dedup is decided by the
//!   database in the same transaction as the event's usage, and a request is answered only after
//!   that transaction committed: a retried event is never lost and never counted twice.
//! * `usage_minutes` / `usage_uniques`: per meter, subject, group-by values and minute, the partial
//!   aggregates every aggregation needs ([`usage`]), so queries never rescan raw events.
//! * `usage_totals` / `usage_total_uniques`: the same across subjects (per meter, group-by values
//!   and window), written in the same transaction, for queries over all subjects.
//! * `notification_events` / `notification_deliveries`: the notification outbox
//!   ([`notifications`]).
//! * API documents (meters, customers, features, entitlements, grants, plans, add-ons and plan
//!   add-ons) in their own tables with their unique keys as constraints ([`documents`]).
//!
//! Concurrent ingest requests are grouped into one transaction and one commit (one fsync on
//! SQLite), which is what makes durable ingest fast. Meters are cached in memory, compiled; a
//! meter is added under a lock that ingest also takes, so its backfill and concurrent ingest never
//! miss or double an event (on PostgreSQL an advisory lock across replicas).

pub mod documents;
pub mod migrate;
pub mod notifications;
mod postgres;
mod sqlite;
pub mod usage;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::meter::{CompiledMeter, Meter};

pub use usage::{DAY, HOUR, MINUTE, MinuteAgg, Span, UsageRow, minute_of};

/// Store errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refused to work now (retry later: 503).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A unique key is taken (409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database's schema cannot be used by this binary.
    #[error("{0}")]
    Schema(String),
    /// Opening the database failed (bad URL, unreachable, unwritable file…).
    #[error("{0}")]
    Open(String),
    /// The database failed otherwise.
    #[error("database: {0}")]
    Database(String),
    /// A stored record did not decode.
    #[error("store: undecodable record: {0}")]
    Decode(String),
}

/// One unit of [`Store::swap_entities_each`]: its compare-and-sets, each `(kind, id, expected
/// text, new JSON text)`, and the statements stored with them.
pub type SwapUnit<'a> = (
    Vec<(&'a str, &'a str, Option<&'a str>, String)>,
    Vec<documents::Stmt>,
);

/// An event as stored and listed (`IngestedEvent`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The CloudEvent, with `time` filled.
    pub event: Value,
    /// Ingest time (Unix ms).
    pub ingested_ms: i64,
    /// Event time (Unix ms).
    pub time_ms: i64,
}

/// An event ready to be written: its columns and its JSON text.
pub(crate) struct NewEvent {
    pub stored: StoredEvent,
    pub source: String,
    pub id: String,
    pub kind: String,
    pub subject: String,
    pub body: String,
}

/// Where the data lives.
#[derive(Debug, Clone)]
pub enum Location {
    /// SQLite in `<dir>/billing.db`.
    Sqlite(PathBuf),
    /// PostgreSQL at this URL (`postgres://user:password@host:port/db`).
    Postgres(String),
}

impl Location {
    /// For logs and errors: the file, or the URL with its password hidden.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(dir) => dir.join("billing.db").display().to_string(),
            Location::Postgres(url) => redact_url(url),
        }
    }
}

/// `url` with any password replaced by `***` (the same redaction the logs apply).
pub fn redact_url(url: &str) -> String {
    tollgate_telemetry::redact::url(url).into_owned()
}

enum Db {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// The store.
pub struct Store {
    db: Db,
    location: Location,
    /// This process's id as a user of the database ([`Store::instance`]).
    instance: String,
    meters: Arc<RwLock<Vec<Arc<CompiledMeter>>>>,
}

/// Compiles stored meters, skipping (and logging) any this binary cannot compile.
fn compile_meters(docs: Vec<String>) -> Vec<Arc<CompiledMeter>> {
    docs.into_iter()
        .filter_map(|d| {
            let m: Meter = serde_json::from_str(&d)
                .map_err(|e| tracing::error!(error = %e, "undecodable stored meter"))
                .ok()?;
            CompiledMeter::new(m)
                .map_err(|e| tracing::error!(error = %e, "stored meter does not compile"))
                .ok()
                .map(Arc::new)
        })
        .collect()
}

impl Store {
    /// Opens (creating if needed) the database at `location` and brings its schema up to date.
    pub async fn open(location: &Location) -> Result<Store, StoreError> {
        let meters = Arc::new(RwLock::new(Vec::new()));
        let instance = uuid::Uuid::now_v7().simple().to_string();
        let db = match location {
            Location::Sqlite(dir) => Db::Sqlite(sqlite::Sqlite::open(dir, meters.clone()).await?),
            Location::Postgres(url) => {
                Db::Postgres(postgres::Postgres::open(url, &instance, meters.clone()).await?)
            }
        };
        Ok(Store {
            db,
            location: location.clone(),
            instance,
            meters,
        })
    }

    /// Where the data lives, for logs (no password).
    pub fn describe(&self) -> String {
        match &self.db {
            Db::Sqlite(_) => format!("sqlite:{}", self.location.describe()),
            Db::Postgres(_) => self.location.describe(),
        }
    }

    /// Whether this process is the only one using the database (SQLite, whose directory is
    /// locked by one process), so what it wrote last is what is stored.
    pub fn is_exclusive(&self) -> bool {
        matches!(self.db, Db::Sqlite(_))
    }

    /// This process's id as a user of the database: what it writes as the holder of a lease
    /// (e.g. the clock's), so others can tell whether that holder is still alive
    /// ([`Store::instance_alive`]).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether the process with id `instance` ([`Store::instance`]) still uses the database. On
    /// SQLite only this process can (the data directory is locked), so any other id is a process
    /// that died. On PostgreSQL, whether it has a session: every connection carries its
    /// process's id in `application_name`, and a killed process's sessions end when the kernel
    /// closes its sockets — so a lease held by a process killed with -9 can be taken over at
    /// once instead of after the lease runs out.
    pub async fn instance_alive(&self, instance: &str) -> Result<bool, StoreError> {
        if instance == self.instance {
            return Ok(true);
        }
        match &self.db {
            Db::Sqlite(_) => Ok(false),
            Db::Postgres(db) => db.instance_alive(instance).await,
        }
    }

    /// The compiled meters.
    pub fn meters(&self) -> Vec<Arc<CompiledMeter>> {
        self.meters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A meter by id or slug.
    pub fn meter(&self, id_or_slug: &str) -> Option<Arc<CompiledMeter>> {
        self.meters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|m| m.meter.id == id_or_slug || m.meter.slug == id_or_slug)
            .cloned()
    }

    /// Adds a meter and counts every stored event for it (backfill), in one transaction that
    /// ingest cannot interleave with.
    pub async fn add_meter(&self, meter: CompiledMeter) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite(db) => db.add_meter(meter).await,
            Db::Postgres(db) => db.add_meter(meter).await,
        }
    }

    /// Replaces a meter's document (same id, slug, event type and aggregation; the API checks
    /// what may change). Usage already counted stays.
    pub async fn update_meter(&self, meter: CompiledMeter) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite(db) => db.update_meter(meter).await,
            Db::Postgres(db) => db.update_meter(meter).await,
        }
    }

    /// Removes a meter and its usage.
    pub async fn delete_meter(&self, id_or_slug: &str) -> Result<bool, StoreError> {
        let Some(m) = self.meter(id_or_slug) else {
            return Ok(false);
        };
        match &self.db {
            Db::Sqlite(db) => db.delete_meter(m.meter.id.clone()).await,
            Db::Postgres(db) => db.delete_meter(m.meter.id.clone()).await,
        }
    }

    /// Stores a request's events with their usage, skipping any (`source`, `id`) already stored
    /// (or earlier in the batch), in one transaction: a batch is counted entirely or not at all.
    /// Returns, once committed, how many were new.
    pub async fn ingest(
        &self,
        events: Vec<(Value, i64)>,
        ingested_ms: i64,
    ) -> Result<usize, StoreError> {
        let events: Vec<NewEvent> = events
            .into_iter()
            .map(|(event, time_ms)| {
                let field = |k: &str| event[k].as_str().unwrap_or_default().to_owned();
                NewEvent {
                    source: field("source"),
                    id: field("id"),
                    kind: field("type"),
                    subject: field("subject"),
                    body: event.to_string(),
                    stored: StoredEvent {
                        event,
                        ingested_ms,
                        time_ms,
                    },
                }
            })
            .collect();
        if events.is_empty() {
            return Ok(0);
        }
        match &self.db {
            Db::Sqlite(db) => db.ingest(events).await,
            Db::Postgres(db) => db.ingest(events).await,
        }
    }

    /// Stored events, newest first, filtered.
    pub async fn list_events(
        &self,
        filter: impl FnMut(&StoredEvent) -> bool + Send + 'static,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        match &self.db {
            Db::Sqlite(db) => db.list_events(Box::new(filter), limit).await,
            Db::Postgres(db) => db.list_events(Box::new(filter), limit).await,
        }
    }

    /// Usage rows of a meter (by id or slug) for `subjects` (all when empty) covering minutes in
    /// `[from, to)`, at whatever grain reads fewest rows (for totals).
    pub async fn usage(
        &self,
        meter: &str,
        subjects: &[String],
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.usage_grained(meter, subjects, from_ms, to_ms, DAY)
            .await
    }

    /// As [`Store::usage`], with rows no coarser than `coarsest` ([`MINUTE`], [`HOUR`] or
    /// [`DAY`], UTC-aligned): a windowed query asks for rows that fit inside its windows.
    pub async fn usage_grained(
        &self,
        meter: &str,
        subjects: &[String],
        from_ms: i64,
        to_ms: i64,
        coarsest: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.read_usage(
            meter,
            subjects,
            usage::segments(from_ms, to_ms, coarsest),
            false,
        )
        .await
    }

    /// As [`Store::usage_grained`] for all subjects folded together: the totals rows (per
    /// group-by values and window, subject [`usage::ALL_SUBJECTS`]), which equal the per-subject
    /// rows merged, for a read that neither filters nor groups by subject.
    pub async fn usage_totals(
        &self,
        meter: &str,
        from_ms: i64,
        to_ms: i64,
        coarsest: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.read_usage(meter, &[], usage::segments(from_ms, to_ms, coarsest), true)
            .await
    }

    /// Usage rows of a meter for `subjects` (all when empty) covering every minute of each of
    /// `ranges` (`[from, to)`, ms) once, in one read: no row straddles a range's end, so the
    /// usage of a range is the rows starting inside it. Ranges that share or overlap minutes
    /// (many entitlements' periods) are read once; each grain is read in a few spans
    /// ([`usage::coalesce`]) rather than a query per range.
    pub async fn usage_for_ranges(
        &self,
        meter: &str,
        subjects: &[String],
        ranges: &[(i64, i64)],
    ) -> Result<Vec<UsageRow>, StoreError> {
        let pieces = usage::pieces(ranges);
        if pieces.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .read_usage(meter, subjects, usage::coalesce(&pieces), false)
            .await?;
        Ok(rows
            .into_iter()
            .filter(|r| usage::in_pieces(&pieces, r.2.start_ms, r.2.end_ms - r.2.start_ms))
            .collect())
    }

    /// One read of a meter's usage rows (none for an unknown meter): per subject for `subjects`
    /// (all when empty), or the totals rows across subjects.
    async fn read_usage(
        &self,
        meter: &str,
        subjects: &[String],
        segments: Vec<(i64, i64, i64)>,
        totals: bool,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let Some(m) = self.meter(meter) else {
            return Ok(Vec::new());
        };
        let q = UsageQuery {
            meter_id: m.meter.id.clone(),
            subjects: subjects.to_vec(),
            segments,
            unique: m.meter.aggregation == crate::meter::Aggregation::UniqueCount,
            totals,
        };
        match &self.db {
            Db::Sqlite(db) => db.usage(q).await,
            Db::Postgres(db) => db.usage(q).await,
        }
    }

    /// Stores an API document (insert or replace). A taken unique key is a
    /// [`StoreError::Conflict`].
    pub async fn put_entity<T: Serialize>(
        &self,
        kind: &str,
        id: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let doc = serde_json::to_value(value).map_err(|e| StoreError::Decode(e.to_string()))?;
        let stmts = documents::put(kind, id, &doc);
        match &self.db {
            Db::Sqlite(db) => db.execute(stmts).await.map(drop),
            Db::Postgres(db) => db.execute(stmts).await.map(drop),
        }
    }

    /// Stores several documents in one transaction: all are written or none (a taken unique key
    /// is a [`StoreError::Conflict`]). Each is `(kind, id, document)`.
    pub async fn put_entities(&self, docs: &[(&str, &str, Value)]) -> Result<(), StoreError> {
        let stmts = docs
            .iter()
            .flat_map(|(kind, id, doc)| documents::put(kind, id, doc))
            .collect();
        match &self.db {
            Db::Sqlite(db) => db.execute(stmts).await.map(drop),
            Db::Postgres(db) => db.execute(stmts).await.map(drop),
        }
    }

    /// One document.
    pub async fn get_entity<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        let stmt = documents::get(kind, id);
        let docs = match &self.db {
            Db::Sqlite(db) => db.query_docs(stmt).await?,
            Db::Postgres(db) => db.query_docs(stmt).await?,
        };
        docs.first().map(|d| decode(d)).transpose()
    }

    /// One document's stored text, exactly as stored: what [`Store::swap_entity`] compares.
    pub async fn get_entity_raw(&self, kind: &str, id: &str) -> Result<Option<String>, StoreError> {
        let stmt = documents::get(kind, id);
        let docs = match &self.db {
            Db::Sqlite(db) => db.query_docs(stmt).await?,
            Db::Postgres(db) => db.query_docs(stmt).await?,
        };
        Ok(docs.into_iter().next())
    }

    /// Compare-and-set: stores `value` as `kind`/`id` only if the stored text is still `expected`
    /// (as read by [`Store::get_entity_raw`]), or there is none when `expected` is `None`; whether
    /// it was stored. Atomic on both backends, so of concurrent writers on any replica exactly one
    /// wins and the others re-read.
    pub async fn swap_entity<T: Serialize>(
        &self,
        kind: &str,
        id: &str,
        expected: Option<&str>,
        value: &T,
    ) -> Result<bool, StoreError> {
        let doc = serde_json::to_value(value).map_err(|e| StoreError::Decode(e.to_string()))?;
        let stmts = documents::swap_all(kind, id, expected, &doc).map_err(StoreError::Database)?;
        let n = match &self.db {
            Db::Sqlite(db) => db.execute(stmts).await?,
            Db::Postgres(db) => db.execute(stmts).await?,
        };
        Ok(n == 1)
    }

    /// Every document of a kind, in id order.
    pub async fn list_entities<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
    ) -> Result<Vec<T>, StoreError> {
        let stmt = documents::list(kind);
        let docs = match &self.db {
            Db::Sqlite(db) => db.query_docs(stmt).await?,
            Db::Postgres(db) => db.query_docs(stmt).await?,
        };
        docs.iter().map(|d| decode(d)).collect()
    }

    /// Compare-and-set of several documents in one transaction: each `(kind, id, expected, value)`
    /// as in [`Store::swap_entity`]; all are stored, or none when any one's stored text is not
    /// its `expected` (or a unique key is taken). Whether they were stored. This is what makes a
    /// step that moves data between documents (an invoice's lines into a new draft) happen once.
    pub async fn swap_entities(
        &self,
        swaps: &[(&str, &str, Option<&str>, Value)],
    ) -> Result<bool, StoreError> {
        self.swap_entities_then(swaps, Vec::new()).await
    }

    /// [`Store::swap_entities`], then `then` (statements whose row counts do not matter, such as
    /// [`notifications::notification_statements`]) in the same transaction: they are stored
    /// with the documents, or not at all.
    pub async fn swap_entities_then(
        &self,
        swaps: &[(&str, &str, Option<&str>, Value)],
        then: Vec<documents::Stmt>,
    ) -> Result<bool, StoreError> {
        let stmts = swaps
            .iter()
            .map(|(kind, id, expected, doc)| documents::swap(kind, id, *expected, doc))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::Database)?;
        let r = match &self.db {
            Db::Sqlite(db) => db.execute_all_or_none(stmts, then).await,
            Db::Postgres(db) => db.execute_all_or_none(stmts, then).await,
        };
        match r {
            Ok(stored) => Ok(stored),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The documents of a kind whose indexed `column` equals `value`, in id order (read through
    /// the column's index on both backends); a column the kind does not index is an error.
    pub async fn list_entities_where<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
        column: &str,
        value: &str,
    ) -> Result<Vec<T>, StoreError> {
        let stmt = documents::list_where(kind, column, value).ok_or_else(|| {
            StoreError::Database(format!("documents of kind {kind} have no column {column}"))
        })?;
        let docs = match &self.db {
            Db::Sqlite(db) => db.query_docs(stmt).await?,
            Db::Postgres(db) => db.query_docs(stmt).await?,
        };
        docs.iter().map(|d| decode(d)).collect()
    }

    /// [`Store::list_entities_where`] for several values of `column` at once (one query per
    /// 500 values).
    pub async fn list_entities_where_in<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
        column: &str,
        values: &[String],
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for part in values.chunks(500) {
            let stmt = documents::list_where_in(kind, column, part).ok_or_else(|| {
                StoreError::Database(format!("documents of kind {kind} have no column {column}"))
            })?;
            let docs = match &self.db {
                Db::Sqlite(db) => db.query_docs(stmt).await?,
                Db::Postgres(db) => db.query_docs(stmt).await?,
            };
            for d in &docs {
                out.push(decode(d)?);
            }
        }
        Ok(out)
    }

    /// The stored text of the documents of a kind with the given ids (those that exist; one
    /// query per 500 ids), as [`Store::get_entity_raw`] reads one.
    pub async fn get_entities_raw(
        &self,
        kind: &str,
        ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for part in ids.chunks(500) {
            let stmt = documents::get_many(kind, part);
            out.extend(match &self.db {
                Db::Sqlite(db) => db.query_docs(stmt).await?,
                Db::Postgres(db) => db.query_docs(stmt).await?,
            });
        }
        Ok(out)
    }

    /// Several independent [`Store::swap_entities_then`]s, each document given as its JSON text,
    /// in one transaction: each unit's documents are stored with its statements, or — when one
    /// of its compare-and-sets finds another text — none of that unit's, without touching the
    /// others (PostgreSQL: a savepoint per unit; SQLite, the only writer: a unit losing its first
    /// compare-and-set has changed nothing). Whether each unit was stored, in order. One commit
    /// for many invoices' steps; a kill -9 loses the whole transaction or nothing. On SQLite
    /// every unit is answered `false` (nothing stored) when one loses a compare-and-set other than
    /// its first: callers retry each unit answered `false`.
    pub async fn swap_entities_each(
        &self,
        units: Vec<SwapUnit<'_>>,
    ) -> Result<Vec<bool>, StoreError> {
        let units = units
            .into_iter()
            .map(|(swaps, then)| {
                let stmts = swaps
                    .into_iter()
                    .map(|(kind, id, expected, text)| {
                        documents::swap_text(kind, id, expected, text)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((stmts, then))
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(StoreError::Database)?;
        match &self.db {
            Db::Sqlite(db) => db.execute_each_all_or_none(units).await,
            Db::Postgres(db) => db.execute_each_all_or_none(units).await,
        }
    }

    /// The ids of the subscriptions with something due in `(after, until]` (a start, an end, a
    /// phase start, an edit or add-on change), read through the `subscription_due` index.
    pub async fn subscriptions_due(
        &self,
        after: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let stmt = documents::due_between(after.timestamp_millis(), until.timestamp_millis());
        match &self.db {
            Db::Sqlite(db) => db.query_docs(stmt).await,
            Db::Postgres(db) => db.query_docs(stmt).await,
        }
    }

    /// Invoices whose next action falls due at or before `until` (`nextActionAt` text), earliest
    /// first, at most `limit`.
    pub async fn invoices_due<T: for<'de> Deserialize<'de>>(
        &self,
        until: &str,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let stmt = documents::invoices_due(until, limit);
        let docs = match &self.db {
            Db::Sqlite(db) => db.query_docs(stmt).await?,
            Db::Postgres(db) => db.query_docs(stmt).await?,
        };
        docs.iter().map(|d| decode(d)).collect()
    }

    /// Deletes a document; whether it existed.
    pub async fn delete_entity(&self, kind: &str, id: &str) -> Result<bool, StoreError> {
        let stmts = documents::delete(kind, id);
        let n = match &self.db {
            Db::Sqlite(db) => db.execute(stmts).await?,
            Db::Postgres(db) => db.execute(stmts).await?,
        };
        Ok(n > 0)
    }
}

fn decode<T: for<'de> Deserialize<'de>>(doc: &str) -> Result<T, StoreError> {
    serde_json::from_str(doc).map_err(|e| StoreError::Decode(e.to_string()))
}

/// What [`Store::usage`] asks a backend.
pub(crate) struct UsageQuery {
    pub meter_id: String,
    pub subjects: Vec<String>,
    /// `(grain, lo, hi)`: rows of that grain starting in `[lo, hi)`.
    pub segments: Vec<(i64, i64, i64)>,
    pub unique: bool,
    /// Read the totals across subjects (`subjects` is then empty; rows' subject is
    /// [`usage::ALL_SUBJECTS`]).
    pub totals: bool,
}

/// A usage row as a backend reads it: subject, group key, grain, start, aggregates.
pub(crate) type RawUsage = (String, String, i64, i64, MinuteAgg);
/// A distinct value as a backend reads it: subject, group key, grain, start, value.
pub(crate) type RawUnique = (String, String, i64, i64, String);

/// A boxed event filter.
pub(crate) type EventFilter = Box<dyn FnMut(&StoredEvent) -> bool + Send + 'static>;

/// Assembles usage rows (and their distinct values) read from either backend.
pub(crate) fn assemble_usage(rows: Vec<RawUsage>, uniques: Vec<RawUnique>) -> Vec<UsageRow> {
    let span = |grain: i64, start: i64| Span {
        start_ms: start,
        end_ms: start.saturating_add(grain),
    };
    let mut out: Vec<UsageRow> = Vec::with_capacity(rows.len());
    // Rows share a few group keys: parse each once.
    let mut groups: std::collections::HashMap<String, std::collections::BTreeMap<String, String>> =
        std::collections::HashMap::new();
    let mut group_of = |g: &str| -> std::collections::BTreeMap<String, String> {
        if let Some(v) = groups.get(g) {
            return v.clone();
        }
        let v = usage::parse_group_key(g);
        groups.insert(g.to_owned(), v.clone());
        v
    };
    if uniques.is_empty() {
        for (subject, group, grain, start, agg) in rows {
            out.push((subject, group_of(&group), span(grain, start), agg));
        }
        return out;
    }
    let mut by_key: std::collections::BTreeMap<(String, String, i64, i64), MinuteAgg> = rows
        .into_iter()
        .map(|(s, g, gr, st, a)| ((s, g, gr, st), a))
        .collect();
    for (s, g, gr, st, v) in uniques {
        if let Some(agg) = by_key.get_mut(&(s, g, gr, st))
            && let Err(i) = agg.uniques.binary_search(&v)
        {
            agg.uniques.insert(i, v);
        }
    }
    for ((subject, group, grain, start), agg) in by_key {
        out.push((subject, group_of(&group), span(grain, start), agg));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_leave_a_url() {
        assert_eq!(
            redact_url("postgres://billing:s3cret@db.local:5432/tollgate?sslmode=disable"),
            "postgres://billing:***@db.local:5432/tollgate?sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://billing@db/x"),
            "postgres://billing@db/x"
        );
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact_url("p@ss:word"), "p@ss:word");
    }
}
