//! The PostgreSQL backend, for several billing replicas on one database (`database_url`).
//!
//! Ingest requests waiting at the same moment are grouped into one transaction: their events go in
//! with one `INSERT … SELECT FROM UNNEST(…) ON CONFLICT (source, id) DO NOTHING RETURNING`, so the
//! database decides which are new (two replicas ingesting the same event at once: one wins, the
//! other waits on the unique key and skips it), and the new events' usage rows are upserted with
//! exact NUMERIC arithmetic, sorted, so concurrent transactions lock rows in one order. A deadlock
//! or serialization failure retries the whole group.
//!
//! Meters: ingest holds a shared advisory lock for its transaction, adding or changing a meter an
//! exclusive one, so a meter's backfill sees every event committed before it and every later
//! ingest sees the meter. Each replica reloads its meter cache when `change_counters` moves.
//!
//! An unreachable database makes requests fail with [`StoreError::Unavailable`] (503 and
//! `Retry-After`); the pool reconnects by itself when it is back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::{StreamExt, pin_mut};
use rust_decimal::Decimal;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::documents::Stmt;
use super::migrate::{self, SCHEMA_TABLE};
use super::usage::{self, MinuteAgg, UsageKey};
use super::{
    EventFilter, NewEvent, StoreError, StoredEvent, UsageQuery, UsageRow, assemble_usage,
    compile_meters, redact_url,
};
use crate::meter::CompiledMeter;

type Meters = Vec<Arc<CompiledMeter>>;

/// The advisory lock key that orders meter changes against ingest ("TOLLGATE").
const METER_LOCK: i64 = 0x544f_4c4c_4741_5445;
/// The advisory lock key that serialises migrations across replicas.
const MIGRATION_LOCK: i64 = 0x544f_4c4c_4d49_4752;
/// Ingest jobs folded into one transaction at most.
const MAX_GROUP: usize = 256;
/// Group-commit writers per process (overlaps one group's round trips with the next's).
const WRITERS: usize = 2;
/// Retries of a group that hit a deadlock or serialization failure.
const RETRIES: usize = 5;

struct IngestJob {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<usize, StoreError>>,
}

pub(crate) struct Postgres {
    pool: Pool,
    jobs: mpsc::Sender<IngestJob>,
    shared: Arc<Shared>,
}

struct Shared {
    pool: Pool,
    meters: Arc<RwLock<Meters>>,
    meters_version: AtomicI64,
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => StoreError::Conflict(e.to_string()),
        Some(c)
            if c.code().starts_with("08")
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::CRASH_SHUTDOWN =>
        {
            StoreError::Unavailable(e.to_string())
        }
        Some(_) => StoreError::Database(e.to_string()),
        None => StoreError::Unavailable(e.to_string()),
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        pg_err(e)
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => pg_err(e),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

fn text_params(p: &[Option<String>]) -> Vec<&(dyn ToSql + Sync)> {
    p.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

async fn load_meters(
    client: &impl GenericClient,
) -> Result<(i64, Vec<String>), tokio_postgres::Error> {
    let version: i64 = client
        .query_one(
            "SELECT version FROM change_counters WHERE name = 'meters'",
            &[],
        )
        .await?
        .get(0);
    let docs = client
        .query("SELECT doc FROM meters ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok((version, docs))
}

/// The upsert that adds minute aggregates, given as column arrays, into a usage table keyed by
/// `$key`, merging by the rules of [`MinuteAgg::merge`] (LATEST: the later instant, the larger
/// value on a tie).
#[rustfmt::skip]
macro_rules! upsert_usage {
    ($table:literal, $key:literal, $arrays:literal) => {
        concat!(
            "INSERT INTO ", $table, " (", $key, ", count, sum, min, max, latest_ms, latest) ",
            "SELECT * FROM UNNEST(", $arrays, ") ON CONFLICT (", $key, ") DO UPDATE SET ",
            "count = ", $table, ".count + excluded.count, ",
            "sum = ", $table, ".sum + excluded.sum, ",
            "min = LEAST(", $table, ".min, excluded.min), ",
            "max = GREATEST(", $table, ".max, excluded.max), ",
            "latest = CASE WHEN ", $table, ".latest_ms IS NULL OR excluded.latest_ms > ", $table, ".latest_ms ",
                "THEN excluded.latest WHEN excluded.latest_ms = ", $table, ".latest_ms ",
                "THEN GREATEST(", $table, ".latest, excluded.latest) ELSE ", $table, ".latest END, ",
            "latest_ms = GREATEST(", $table, ".latest_ms, excluded.latest_ms)"
        )
    };
}

/// A usage table pair: the aggregates and the UNIQUE_COUNT values, per subject or across them.
struct UsageTable {
    upsert: &'static str,
    unique: &'static str,
    /// Whether rows are keyed by subject (the totals are not).
    per_subject: bool,
}

const ROLLUPS: UsageTable = UsageTable {
    upsert: upsert_usage!(
        "usage_rollups",
        "meter_id, grain_ms, subject, group_key, start_ms",
        "$1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::int8[], \
         $7::numeric[], $8::numeric[], $9::numeric[], $10::int8[], $11::numeric[]"
    ),
    unique: "INSERT INTO usage_uniques (meter_id, grain_ms, subject, group_key, start_ms, value) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], \
                                  $6::text[]) \
             ON CONFLICT DO NOTHING",
    per_subject: true,
};

const TOTALS: UsageTable = UsageTable {
    upsert: upsert_usage!(
        "usage_totals",
        "meter_id, grain_ms, group_key, start_ms",
        "$1::text[], $2::int8[], $3::text[], $4::int8[], $5::int8[], \
         $6::numeric[], $7::numeric[], $8::numeric[], $9::int8[], $10::numeric[]"
    ),
    unique: "INSERT INTO usage_total_uniques (meter_id, grain_ms, group_key, start_ms, value) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int8[], $5::text[]) \
             ON CONFLICT DO NOTHING",
    per_subject: false,
};

/// The usage tables a meter's rows live in (per subject and totals).
const USAGE_TABLES: [&str; 4] = [
    "usage_rollups",
    "usage_uniques",
    "usage_totals",
    "usage_total_uniques",
];

/// Adds usage rows into the per-subject tables, then the same rows folded across subjects
/// into the totals (every writer locks in this order).
async fn write_usage(
    client: &impl GenericClient,
    rows: &BTreeMap<UsageKey, MinuteAgg>,
) -> Result<(), tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    write_rows(client, &ROLLUPS, rows).await?;
    write_rows(client, &TOTALS, &usage::totals(rows)).await
}

/// Rows' keys as column arrays, for `UNNEST`.
#[derive(Default)]
struct KeyColumns<'a> {
    meter: Vec<&'a str>,
    grain: Vec<i64>,
    subject: Vec<&'a str>,
    group: Vec<&'a str>,
    start: Vec<i64>,
}

impl<'a> KeyColumns<'a> {
    fn push(&mut self, k: &'a UsageKey) {
        self.meter.push(&k.meter_id);
        self.grain.push(k.grain_ms);
        self.subject.push(&k.subject);
        self.group.push(&k.group_key);
        self.start.push(k.start_ms);
    }

    /// The leading parameters of a [`UsageTable`]'s statements.
    fn params(&self, per_subject: bool) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![&self.meter, &self.grain];
        if per_subject {
            p.push(&self.subject);
        }
        p.extend([&self.group as &(dyn ToSql + Sync), &self.start]);
        p
    }
}

async fn write_rows(
    client: &impl GenericClient,
    table: &UsageTable,
    rows: &BTreeMap<UsageKey, MinuteAgg>,
) -> Result<(), tokio_postgres::Error> {
    let mut keys = KeyColumns::default();
    let (mut count, mut sum, mut min, mut max, mut latest_ms, mut latest) = (
        Vec::<i64>::with_capacity(rows.len()),
        Vec::<Decimal>::with_capacity(rows.len()),
        Vec::<Option<Decimal>>::with_capacity(rows.len()),
        Vec::<Option<Decimal>>::with_capacity(rows.len()),
        Vec::<Option<i64>>::with_capacity(rows.len()),
        Vec::<Option<Decimal>>::with_capacity(rows.len()),
    );
    let (mut unique_keys, mut unique_values) = (KeyColumns::default(), Vec::<&str>::new());
    for (k, a) in rows {
        keys.push(k);
        count.push(a.count as i64);
        sum.push(a.sum);
        min.push(a.min);
        max.push(a.max);
        latest_ms.push(a.latest.map(|l| l.0));
        latest.push(a.latest.map(|l| l.1));
        for v in &a.uniques {
            unique_keys.push(k);
            unique_values.push(v);
        }
    }
    let mut params = keys.params(table.per_subject);
    params.extend([
        &count as &(dyn ToSql + Sync),
        &sum,
        &min,
        &max,
        &latest_ms,
        &latest,
    ]);
    client.execute(table.upsert, &params).await?;
    if !unique_values.is_empty() {
        let mut params = unique_keys.params(table.per_subject);
        params.push(&unique_values);
        client.execute(table.unique, &params).await?;
    }
    Ok(())
}

impl Shared {
    /// Reloads the meter cache if another replica (or this one) changed the meters.
    async fn refresh_meters(
        &self,
        client: &impl GenericClient,
    ) -> Result<Meters, tokio_postgres::Error> {
        let version: i64 = client
            .query_one(
                "SELECT version FROM change_counters WHERE name = 'meters'",
                &[],
            )
            .await?
            .get(0);
        if version != self.meters_version.load(Ordering::Acquire) {
            let (version, docs) = load_meters(client).await?;
            let compiled = compile_meters(docs);
            *self.meters.write().unwrap_or_else(|e| e.into_inner()) = compiled;
            self.meters_version.store(version, Ordering::Release);
        }
        Ok(self
            .meters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }

    /// One group of ingest jobs in one transaction; per job, how many of its events were new.
    async fn ingest_group(&self, jobs: &[&[NewEvent]]) -> Result<Vec<usize>, StoreError> {
        let mut attempt = 0;
        loop {
            match self.try_ingest_group(jobs).await {
                Ok(counts) => return Ok(counts),
                Err(Err(e)) => return Err(e),
                Err(Ok(e)) if attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "ingest group retried");
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                }
                Err(Ok(e)) => return Err(pg_err(e)),
            }
        }
    }

    /// `Err(Ok(e))`: a retryable database error; `Err(Err(e))`: final.
    async fn try_ingest_group(
        &self,
        jobs: &[&[NewEvent]],
    ) -> Result<Vec<usize>, Result<tokio_postgres::Error, StoreError>> {
        let split = |e: tokio_postgres::Error| {
            if retryable(&e) { Ok(e) } else { Err(pg_err(e)) }
        };
        let mut client = self.pool.get().await.map_err(|e| Err(e.into()))?;
        let tx = client.transaction().await.map_err(split)?;
        tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&METER_LOCK])
            .await
            .map_err(split)?;
        let meters = self.refresh_meters(&tx).await.map_err(split)?;

        // Every job's events, first occurrence of each key only, sorted by key (lock order).
        let mut first: BTreeMap<(&str, &str), (usize, &NewEvent)> = BTreeMap::new();
        for (j, events) in jobs.iter().enumerate() {
            for e in events.iter() {
                first
                    .entry((e.source.as_str(), e.id.as_str()))
                    .or_insert((j, e));
            }
        }
        let n = first.len();
        let (mut source, mut id, mut kind, mut subject) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut time, mut ingested, mut body) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for e in first.values().map(|v| v.1) {
            source.push(e.source.as_str());
            id.push(e.id.as_str());
            kind.push(e.kind.as_str());
            subject.push(e.subject.as_str());
            time.push(e.stored.time_ms);
            ingested.push(e.stored.ingested_ms);
            body.push(e.body.as_str());
        }
        let inserted = tx
            .query(
                "INSERT INTO events (source, id, type, subject, time_ms, ingested_ms, body) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
                                      $5::int8[], $6::int8[], $7::text[]) \
                 ON CONFLICT (source, id) DO NOTHING RETURNING source, id",
                &[&source, &id, &kind, &subject, &time, &ingested, &body],
            )
            .await
            .map_err(split)?;
        let mut counts = vec![0usize; jobs.len()];
        let mut new_events: Vec<&StoredEvent> = Vec::with_capacity(inserted.len());
        for row in &inserted {
            let key: (String, String) = (row.get(0), row.get(1));
            if let Some((j, e)) = first.get(&(key.0.as_str(), key.1.as_str())) {
                counts[*j] += 1;
                new_events.push(&e.stored);
            }
        }
        write_usage(&tx, &usage::fold(&meters, new_events))
            .await
            .map_err(split)?;
        tx.commit().await.map_err(split)?;
        Ok(counts)
    }
}

/// A group-commit writer: takes every job waiting, runs them as one transaction, answers each.
async fn writer(shared: Arc<Shared>, rx: Arc<Mutex<mpsc::Receiver<IngestJob>>>) {
    loop {
        let mut group = Vec::new();
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(job) => group.push(job),
                None => return,
            }
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
        }
        let batches: Vec<&[NewEvent]> = group.iter().map(|j| j.events.as_slice()).collect();
        let result = shared.ingest_group(&batches).await;
        match result {
            Ok(counts) => {
                for (job, n) in group.into_iter().zip(counts) {
                    let _ = job.reply.send(Ok(n));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, requests = group.len(), "ingest transaction failed");
                for job in group {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The `application_name` of a billing process's sessions: `tollgate-billing/<instance>` (49
/// characters, under PostgreSQL's 63).
fn application_name(instance: &str) -> String {
    format!("tollgate-billing/{instance}")
}

impl Postgres {
    /// Whether the billing process `instance` has a session in the database.
    pub(crate) async fn instance_alive(&self, instance: &str) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $1)",
                &[&application_name(instance)],
            )
            .await?;
        Ok(row.get(0))
    }

    pub(crate) async fn open(
        url: &str,
        instance: &str,
        meters: Arc<RwLock<Meters>>,
    ) -> Result<Postgres, StoreError> {
        let shown = redact_url(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Open(format!(
                "database_url {shown}: not a PostgreSQL URL (postgres://user:password@host:port/database): {e}"
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name(application_name(instance));
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Open(format!("database_url {shown}: {e}")))?;
        let mut client = pool.get().await.map_err(|e| {
            StoreError::Open(format!("cannot connect to PostgreSQL at {shown}: {e}"))
        })?;
        let fail =
            |e: tokio_postgres::Error| StoreError::Open(format!("PostgreSQL at {shown}: {e}"));
        {
            let tx = client.transaction().await.map_err(fail)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(fail)?;
            tx.batch_execute(SCHEMA_TABLE).await.map_err(fail)?;
            let applied: Vec<i64> = tx
                .query("SELECT version::int8 FROM tollgate_schema", &[])
                .await
                .map_err(fail)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for m in migrate::pending(&applied, migrate::POSTGRES, &shown)? {
                tx.batch_execute(m.sql).await.map_err(|e| {
                    StoreError::Schema(format!("{shown}: migration {}: {e}", m.version))
                })?;
                tx.execute(
                    "INSERT INTO tollgate_schema (version, name, applied_ms) VALUES ($1, $2, $3)",
                    &[&m.version, &m.name, &chrono::Utc::now().timestamp_millis()],
                )
                .await
                .map_err(fail)?;
                tracing::info!(database = %shown, version = m.version, name = m.name, "schema migrated");
            }
            tx.commit().await.map_err(fail)?;
        }
        let (version, docs) = load_meters(&client).await.map_err(fail)?;
        *meters.write().unwrap_or_else(|e| e.into_inner()) = compile_meters(docs);
        drop(client);
        let shared = Arc::new(Shared {
            pool: pool.clone(),
            meters,
            meters_version: AtomicI64::new(version),
        });
        let (jobs, rx) = mpsc::channel(4096);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(writer(shared.clone(), rx.clone()));
        }
        // Meters created or changed on another replica reach this one's cache.
        let refresher = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(shared) = refresher.upgrade() else {
                    return;
                };
                if let Ok(client) = shared.pool.get().await {
                    let _ = shared.refresh_meters(&client).await;
                }
            }
        });
        Ok(Postgres { pool, jobs, shared })
    }

    pub(crate) async fn ingest(&self, events: Vec<NewEvent>) -> Result<usize, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(IngestJob { events, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the ingest writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the ingest writer has stopped".into()))?
    }

    /// Runs `f` in a transaction holding the exclusive meter lock, then refreshes the cache.
    async fn change_meters(
        &self,
        stmts: Vec<Stmt>,
        backfill: Option<Arc<CompiledMeter>>,
    ) -> Result<usize, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&METER_LOCK])
            .await?;
        let mut last = 0;
        for s in &stmts {
            last = tx.execute(s.sql.as_str(), &text_params(&s.params)).await? as usize;
        }
        if let Some(meter) = backfill {
            let meters = [meter.clone()];
            let params: [&(dyn ToSql + Sync); 1] = [&meter.meter.event_type];
            let rows = tx
                .query_raw(
                    "SELECT body, time_ms, ingested_ms FROM events WHERE type = $1",
                    params,
                )
                .await?;
            pin_mut!(rows);
            let mut chunk = Vec::with_capacity(10_000);
            let mut folded: Vec<BTreeMap<UsageKey, MinuteAgg>> = Vec::new();
            while let Some(row) = rows.next().await {
                let row = row?;
                let body: &str = row.get(0);
                chunk.push(StoredEvent {
                    event: serde_json::from_str(body)
                        .map_err(|e| StoreError::Decode(e.to_string()))?,
                    time_ms: row.get(1),
                    ingested_ms: row.get(2),
                });
                if chunk.len() >= 10_000 {
                    folded.push(usage::fold(&meters, chunk.iter()));
                    chunk.clear();
                }
            }
            folded.push(usage::fold(&meters, chunk.iter()));
            for rows in folded {
                write_usage(&tx, &rows).await?;
            }
        }
        tx.execute(
            "UPDATE change_counters SET version = version + 1 WHERE name = 'meters'",
            &[],
        )
        .await?;
        tx.commit().await?;
        let client = self.pool.get().await?;
        self.shared.refresh_meters(&client).await?;
        Ok(last)
    }

    pub(crate) async fn add_meter(&self, meter: CompiledMeter) -> Result<(), StoreError> {
        let doc =
            serde_json::to_value(&meter.meter).map_err(|e| StoreError::Decode(e.to_string()))?;
        let stmts = super::documents::put("meter", &meter.meter.id, &doc);
        self.change_meters(stmts, Some(Arc::new(meter))).await?;
        Ok(())
    }

    pub(crate) async fn update_meter(&self, meter: CompiledMeter) -> Result<(), StoreError> {
        let doc =
            serde_json::to_value(&meter.meter).map_err(|e| StoreError::Decode(e.to_string()))?;
        let id = meter.meter.id.clone();
        let mut stmts = super::documents::put("meter", &id, &doc);
        let old = self
            .shared
            .meters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|m| m.meter.id == id)
            .cloned();
        let regroup = old.is_none_or(|o| o.meter.group_by != meter.meter.group_by);
        if regroup {
            // Usage recounted from the stored events, in this same transaction.
            for table in USAGE_TABLES {
                stmts.push(Stmt {
                    sql: format!("DELETE FROM {table} WHERE meter_id = $1"),
                    params: vec![Some(id.clone())],
                });
            }
        }
        self.change_meters(stmts, regroup.then(|| Arc::new(meter)))
            .await?;
        Ok(())
    }

    pub(crate) async fn delete_meter(&self, id: String) -> Result<bool, StoreError> {
        let p = vec![Some(id)];
        let mut stmts: Vec<Stmt> = USAGE_TABLES
            .iter()
            .map(|t| Stmt {
                sql: format!("DELETE FROM {t} WHERE meter_id = $1"),
                params: p.clone(),
            })
            .collect();
        stmts.push(Stmt {
            sql: "DELETE FROM meters WHERE id = $1".into(),
            params: p,
        });
        Ok(self.change_meters(stmts, None).await? > 0)
    }

    pub(crate) async fn execute(&self, stmts: Vec<Stmt>) -> Result<usize, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut last = 0;
        for s in &stmts {
            last = tx.execute(s.sql.as_str(), &text_params(&s.params)).await? as usize;
        }
        tx.commit().await?;
        Ok(last)
    }

    /// Runs `stmts` in one transaction; each must change exactly one row, else all are rolled
    /// back and the answer is `false`.
    pub(crate) async fn execute_all_or_none(
        &self,
        stmts: Vec<Stmt>,
        then: Vec<Stmt>,
    ) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        for s in &stmts {
            if tx.execute(s.sql.as_str(), &text_params(&s.params)).await? != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        for s in &then {
            tx.execute(s.sql.as_str(), &text_params(&s.params)).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// [`Postgres::execute_all_or_none`] for several units in one transaction on one pooled
    /// connection, each in its own savepoint: a unit whose compare-and-set is lost (or whose
    /// unique key is taken) is rolled back alone and answered `false`.
    pub(crate) async fn execute_each_all_or_none(
        &self,
        units: Vec<(Vec<Stmt>, Vec<Stmt>)>,
    ) -> Result<Vec<bool>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut out = Vec::with_capacity(units.len());
        for (stmts, then) in &units {
            tx.batch_execute("SAVEPOINT unit").await?;
            let mut lost = false;
            for s in stmts {
                match tx.execute(s.sql.as_str(), &text_params(&s.params)).await {
                    Ok(1) => {}
                    Ok(_) => {
                        lost = true;
                        break;
                    }
                    Err(e) => match pg_err(e) {
                        StoreError::Conflict(_) => {
                            lost = true;
                            break;
                        }
                        e => return Err(e),
                    },
                }
            }
            if !lost {
                for s in then {
                    tx.execute(s.sql.as_str(), &text_params(&s.params)).await?;
                }
                tx.batch_execute("RELEASE SAVEPOINT unit").await?;
            } else {
                tx.batch_execute("ROLLBACK TO SAVEPOINT unit; RELEASE SAVEPOINT unit")
                    .await?;
            }
            out.push(!lost);
        }
        tx.commit().await?;
        Ok(out)
    }

    pub(crate) async fn query_docs(&self, stmt: Stmt) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(stmt.sql.as_str(), &text_params(&stmt.params))
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub(crate) async fn list_events(
        &self,
        mut filter: EventFilter,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let client = self.pool.get().await?;
        let mut out = Vec::new();
        let mut before = i64::MAX;
        loop {
            let rows = client
                .query(
                    "SELECT seq, body, time_ms, ingested_ms FROM events WHERE seq < $1 \
                     ORDER BY seq DESC LIMIT 1000",
                    &[&before],
                )
                .await?;
            if rows.is_empty() {
                return Ok(out);
            }
            for r in &rows {
                before = r.get(0);
                let body: &str = r.get(1);
                let e = StoredEvent {
                    event: serde_json::from_str(body)
                        .map_err(|e| StoreError::Decode(e.to_string()))?,
                    time_ms: r.get(2),
                    ingested_ms: r.get(3),
                };
                if filter(&e) {
                    out.push(e);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
    }

    pub(crate) async fn usage(&self, q: UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let client = self.pool.get().await?;
        let all = q.subjects.is_empty();
        // With subjects, `subject = ANY($6)` alone lets a generic plan use the key's subject
        // column; `($5 OR …)` would scan every subject of the meter.
        let subject_cond = if all {
            "($5 OR subject = ANY($6))"
        } else {
            "subject = ANY($6) AND NOT $5"
        };
        // Totals: the rows across subjects (no subject column, no subject parameters).
        let (rows_sql, uniques_sql) = if q.totals {
            (
                "SELECT '', group_key, count, sum, min, max, latest_ms, latest, start_ms \
                 FROM usage_totals WHERE meter_id = $1 AND grain_ms = $2 \
                 AND start_ms >= $3 AND start_ms < $4"
                    .to_owned(),
                "SELECT '', group_key, value, start_ms FROM usage_total_uniques \
                 WHERE meter_id = $1 AND grain_ms = $2 AND start_ms >= $3 AND start_ms < $4"
                    .to_owned(),
            )
        } else {
            (
                format!(
                    "SELECT subject, group_key, count, sum, min, max, latest_ms, latest, start_ms \
                     FROM usage_rollups WHERE meter_id = $1 AND grain_ms = $2 \
                     AND start_ms >= $3 AND start_ms < $4 AND {subject_cond}"
                ),
                format!(
                    "SELECT subject, group_key, value, start_ms FROM usage_uniques \
                     WHERE meter_id = $1 AND grain_ms = $2 AND start_ms >= $3 AND start_ms < $4 \
                     AND {subject_cond}"
                ),
            )
        };
        let (rows_sql, uniques_sql) = (rows_sql.as_str(), uniques_sql.as_str());
        let mut out = Vec::new();
        let mut uniques = Vec::new();
        for (grain, lo, hi) in &q.segments {
            let all_params: [&(dyn ToSql + Sync); 6] =
                [&q.meter_id, grain, lo, hi, &all, &q.subjects];
            let params = &all_params[..if q.totals { 4 } else { 6 }];
            for r in client.query(rows_sql, params).await? {
                let latest_ms: Option<i64> = r.get(6);
                let latest: Option<Decimal> = r.get(7);
                out.push((
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    *grain,
                    r.get::<_, i64>(8),
                    MinuteAgg {
                        count: r.get::<_, i64>(2) as u64,
                        sum: r.get(3),
                        min: r.get(4),
                        max: r.get(5),
                        latest: latest_ms.zip(latest),
                        uniques: Vec::new(),
                    },
                ));
            }
            if q.unique {
                for r in client.query(uniques_sql, params).await? {
                    uniques.push((r.get(0), r.get(1), *grain, r.get(3), r.get(2)));
                }
            }
        }
        Ok(assemble_usage(out, uniques))
    }
}
