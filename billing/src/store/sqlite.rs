//! The SQLite backend (embedded, the default): `<data_dir>/billing.db` in WAL mode with
//! `synchronous = FULL`, so a committed transaction survives kill -9 and power loss.
//!
//! One writer thread owns the only write connection. Every write is a job sent to it; the jobs
//! waiting when it wakes run in **one** transaction, each inside its own savepoint (a failing job
//! rolls back alone), and each is answered only after the group's commit — group commit: one fsync
//! for many concurrent requests. Reads run on a few read connections on tokio's blocking pool.
//! Exact decimal arithmetic in SQL (`dec_add`, `dec_min`, `dec_max` over TEXT) is registered on the
//! writer connection, so usage rows are upserted in one statement without floats.
//!
//! One process per database: `<data_dir>/billing.lock` is held while the store is open.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::functions::FunctionFlags;
use rusqlite::types::ToSql;
use rusqlite::{Connection, OpenFlags, params, params_from_iter};
use rust_decimal::Decimal;
use tokio::sync::oneshot;

use super::documents::Stmt;
use super::migrate::{self, SCHEMA_TABLE};
use super::usage::{self, MinuteAgg, UsageKey};
use super::{
    EventFilter, NewEvent, StoreError, StoredEvent, UsageQuery, UsageRow, assemble_usage,
    compile_meters,
};
use crate::meter::CompiledMeter;

type Meters = Vec<Arc<CompiledMeter>>;

/// What the writer thread keeps between jobs: the meters as of its transaction, and their
/// generation (bumped by every meter change), which ingest compares with the generation its
/// usage was precomputed for.
#[derive(Clone)]
struct WriterState {
    meters: Meters,
    generation: u64,
}

/// One event's usage rows, computed before the job reaches the writer.
type Precomputed = Vec<Vec<(UsageKey, MinuteAgg)>>;
/// Called with the group's commit outcome; sends the job's answer.
type Done = Box<dyn FnOnce(Option<StoreError>) + Send>;
/// Runs inside the group transaction; says whether it succeeded (else its savepoint is rolled
/// back) and how to answer once the group has committed.
type Run = Box<dyn FnOnce(&Connection, &mut WriterState) -> (bool, Done) + Send>;

/// A write for the writer thread.
struct Job {
    run: Run,
    /// Whether the job may fail on its own (a unique key taken…) and so runs in a savepoint that
    /// is rolled back alone. Ingest cannot fail but by the database failing, which fails the
    /// group; it runs without one, since a savepoint makes SQLite copy every page it touches.
    savepoint: bool,
}

/// Jobs folded into one transaction at most.
const MAX_GROUP: usize = 512;
/// Read connections kept open.
const READERS: usize = 4;

pub(crate) struct Sqlite {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
    meters: Arc<RwLock<Meters>>,
    /// The generation of the published meters (changed only under `meters`' write lock).
    generation: Arc<AtomicU64>,
    /// Dropped with the store: the checkpoint thread ends.
    _stop_checkpoints: mpsc::Sender<()>,
    _lock: File,
}

fn db_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict(e.to_string()),
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly
            | ErrorCode::CannotOpen,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Database(e.to_string()),
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        db_err(e)
    }
}

fn dec(s: &str) -> Result<Decimal, StoreError> {
    s.parse()
        .map_err(|e| StoreError::Decode(format!("decimal {s:?}: {e}")))
}

/// `dec_add`, `dec_min`, `dec_max`: exact decimal arithmetic over TEXT (NULL-tolerant min/max).
fn register_decimal_functions(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    fn arg(ctx: &rusqlite::functions::Context<'_>, i: usize) -> rusqlite::Result<Option<Decimal>> {
        let v: Option<String> = ctx.get(i)?;
        v.map(|s| {
            s.parse::<Decimal>()
                .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
        })
        .transpose()
    }
    conn.create_scalar_function("dec_add", 2, flags, |ctx| {
        let a = arg(ctx, 0)?.unwrap_or_default();
        let b = arg(ctx, 1)?.unwrap_or_default();
        Ok(a.checked_add(b)
            .ok_or_else(|| rusqlite::Error::UserFunctionError("decimal overflow".into()))?
            .to_string())
    })?;
    conn.create_scalar_function("dec_min", 2, flags, |ctx| {
        Ok(match (arg(ctx, 0)?, arg(ctx, 1)?) {
            (Some(a), Some(b)) => Some(a.min(b).to_string()),
            (a, b) => a.or(b).map(|d| d.to_string()),
        })
    })?;
    conn.create_scalar_function("dec_max", 2, flags, |ctx| {
        Ok(match (arg(ctx, 0)?, arg(ctx, 1)?) {
            (Some(a), Some(b)) => Some(a.max(b).to_string()),
            (a, b) => a.or(b).map(|d| d.to_string()),
        })
    })?;
    for (name, n, fold) in [
        ("dec_total", 1, Fold::Sum),
        ("dec_least", 1, Fold::Min),
        ("dec_greatest", 1, Fold::Max),
        ("dec_latest", 2, Fold::Latest),
    ] {
        conn.create_aggregate_function(name, n, flags, DecAggregate(fold))?;
    }
    Ok(())
}

/// Which part of [`MinuteAgg`] a decimal aggregate folds.
#[derive(Clone, Copy)]
enum Fold {
    Sum,
    Min,
    Max,
    Latest,
}

/// `dec_total(x)`, `dec_least(x)`, `dec_greatest(x)`, `dec_latest(ms, x)`: aggregates over TEXT
/// decimals that fold rows with [`MinuteAgg::merge`] (the totals migration's backfill), so they
/// are exact and pick LATEST by the same rule as ingest.
struct DecAggregate(Fold);

impl rusqlite::functions::Aggregate<MinuteAgg, Option<String>> for DecAggregate {
    fn init(&self, _: &mut rusqlite::functions::Context<'_>) -> rusqlite::Result<MinuteAgg> {
        Ok(MinuteAgg::default())
    }

    fn step(
        &self,
        ctx: &mut rusqlite::functions::Context<'_>,
        acc: &mut MinuteAgg,
    ) -> rusqlite::Result<()> {
        let dec_arg = |i: usize| -> rusqlite::Result<Option<Decimal>> {
            let v: Option<String> = ctx.get(i)?;
            v.map(|s| {
                s.parse::<Decimal>()
                    .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
            })
            .transpose()
        };
        let row = match self.0 {
            Fold::Sum => MinuteAgg {
                sum: dec_arg(0)?.unwrap_or_default(),
                ..MinuteAgg::default()
            },
            Fold::Min => MinuteAgg {
                min: dec_arg(0)?,
                ..MinuteAgg::default()
            },
            Fold::Max => MinuteAgg {
                max: dec_arg(0)?,
                ..MinuteAgg::default()
            },
            Fold::Latest => MinuteAgg {
                latest: ctx.get::<Option<i64>>(0)?.zip(dec_arg(1)?),
                ..MinuteAgg::default()
            },
        };
        acc.merge(&row);
        Ok(())
    }

    fn finalize(
        &self,
        _: &mut rusqlite::functions::Context<'_>,
        acc: Option<MinuteAgg>,
    ) -> rusqlite::Result<Option<String>> {
        let Some(a) = acc else {
            return Ok(None);
        };
        Ok(match self.0 {
            Fold::Sum => Some(a.sum),
            Fold::Min => a.min,
            Fold::Max => a.max,
            Fold::Latest => a.latest.map(|l| l.1),
        }
        .map(|d| d.to_string()))
    }
}

fn open_connection(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let name = path.display().to_string();
    conn.execute_batch(SCHEMA_TABLE)?;
    let applied: Vec<i64> = conn
        .prepare("SELECT version FROM tollgate_schema")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for m in migrate::pending(&applied, migrate::SQLITE, &name)? {
        let tx = conn.transaction()?;
        tx.execute_batch(m.sql)
            .map_err(|e| StoreError::Schema(format!("{name}: migration {}: {e}", m.version)))?;
        tx.execute(
            "INSERT INTO tollgate_schema (version, name, applied_ms) VALUES ($1, $2, $3)",
            params![m.version, m.name, chrono::Utc::now().timestamp_millis()],
        )?;
        tx.commit()?;
        tracing::info!(database = %name, version = m.version, name = m.name, "schema migrated");
    }
    Ok(())
}

const INSERT_EVENT: &str = "INSERT INTO events (source, id, type, subject, time_ms, ingested_ms, body) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (source, id) DO NOTHING";

/// The upsert that adds minute aggregates into a usage table keyed by `$key`, merging by the
/// rules of [`MinuteAgg::merge`] (LATEST: the later instant, the larger value on a tie).
#[rustfmt::skip]
macro_rules! upsert_usage {
    ($table:literal, $key:literal, $values:literal) => {
        concat!(
            "INSERT INTO ", $table, " (", $key, ", count, sum, min, max, latest_ms, latest) ",
            "VALUES (", $values, ") ON CONFLICT (", $key, ") DO UPDATE SET ",
            "count = ", $table, ".count + excluded.count, ",
            "sum = dec_add(", $table, ".sum, excluded.sum), ",
            "min = dec_min(", $table, ".min, excluded.min), ",
            "max = dec_max(", $table, ".max, excluded.max), ",
            "latest = CASE WHEN ", $table, ".latest_ms IS NULL OR excluded.latest_ms > ", $table, ".latest_ms ",
                "THEN excluded.latest WHEN excluded.latest_ms = ", $table, ".latest_ms ",
                "THEN dec_max(", $table, ".latest, excluded.latest) ELSE ", $table, ".latest END, ",
            "latest_ms = MAX(COALESCE(", $table, ".latest_ms, excluded.latest_ms), ",
                "COALESCE(excluded.latest_ms, ", $table, ".latest_ms))"
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
        "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11"
    ),
    unique: "INSERT INTO usage_uniques (meter_id, grain_ms, subject, group_key, start_ms, value) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    per_subject: true,
};

const TOTALS: UsageTable = UsageTable {
    upsert: upsert_usage!(
        "usage_totals",
        "meter_id, grain_ms, group_key, start_ms",
        "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10"
    ),
    unique: "INSERT INTO usage_total_uniques (meter_id, grain_ms, group_key, start_ms, value) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    per_subject: false,
};

/// The usage tables a meter's rows live in (per subject and totals).
const USAGE_TABLES: [&str; 4] = [
    "usage_rollups",
    "usage_uniques",
    "usage_totals",
    "usage_total_uniques",
];

fn delete_usage(conn: &Connection, meter_id: &str) -> rusqlite::Result<()> {
    for t in USAGE_TABLES {
        conn.execute(
            &format!("DELETE FROM {t} WHERE meter_id = $1"),
            params![meter_id],
        )?;
    }
    Ok(())
}

/// Adds usage rows into the per-subject tables, then the same rows folded across subjects
/// into the totals (every writer locks in this order).
fn write_usage(
    conn: &Connection,
    rows: &std::collections::BTreeMap<UsageKey, MinuteAgg>,
) -> rusqlite::Result<()> {
    write_rows(conn, &ROLLUPS, rows)?;
    write_rows(conn, &TOTALS, &usage::totals(rows))
}

fn write_rows(
    conn: &Connection,
    table: &UsageTable,
    rows: &std::collections::BTreeMap<UsageKey, MinuteAgg>,
) -> rusqlite::Result<()> {
    let mut upsert = conn.prepare_cached(table.upsert)?;
    let mut unique = conn.prepare_cached(table.unique)?;
    for (k, a) in rows {
        let subject: &[&dyn ToSql] = if table.per_subject {
            &[&k.subject]
        } else {
            &[]
        };
        let key = || {
            [&k.meter_id as &dyn ToSql, &k.grain_ms]
                .into_iter()
                .chain(subject.iter().copied())
                .chain([&k.group_key as &dyn ToSql, &k.start_ms])
        };
        let (count, sum) = (a.count as i64, a.sum.to_string());
        let (min, max) = (a.min.map(|d| d.to_string()), a.max.map(|d| d.to_string()));
        let (latest_ms, latest) = (a.latest.map(|l| l.0), a.latest.map(|l| l.1.to_string()));
        let agg: [&dyn ToSql; 6] = [&count, &sum, &min, &max, &latest_ms, &latest];
        upsert.execute(params_from_iter(key().chain(agg)))?;
        for v in &a.uniques {
            unique.execute(params_from_iter(key().chain([v as &dyn ToSql])))?;
        }
    }
    Ok(())
}

fn bump_meters_version(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE change_counters SET version = version + 1 WHERE name = 'meters'",
        [],
    )?;
    Ok(())
}

/// Counts every stored event of the meter's type for it.
fn backfill(conn: &Connection, meter: &Arc<CompiledMeter>) -> Result<(), StoreError> {
    let mut stmt =
        conn.prepare("SELECT body, time_ms, ingested_ms FROM events WHERE type = $1 ORDER BY seq")?;
    let mut rows = stmt.query(params![meter.meter.event_type])?;
    let meters = [meter.clone()];
    let mut chunk = Vec::with_capacity(10_000);
    while let Some(r) = rows.next()? {
        let body: String = r.get(0)?;
        chunk.push(StoredEvent {
            event: serde_json::from_str(&body).map_err(|e| StoreError::Decode(e.to_string()))?,
            time_ms: r.get(1)?,
            ingested_ms: r.get(2)?,
        });
        if chunk.len() >= 10_000 {
            write_usage(conn, &usage::fold(&meters, chunk.iter()))?;
            chunk.clear();
        }
    }
    write_usage(conn, &usage::fold(&meters, chunk.iter()))?;
    Ok(())
}

impl Sqlite {
    pub(crate) async fn open(
        dir: &Path,
        meters: Arc<RwLock<Meters>>,
    ) -> Result<Sqlite, StoreError> {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir, meters))
            .await
            .map_err(|e| StoreError::Open(format!("opening SQLite: {e}")))?
    }

    fn open_blocking(dir: &Path, meters: Arc<RwLock<Meters>>) -> Result<Sqlite, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Open(format!("data_dir {}: cannot create it: {e}", dir.display()))
        })?;
        let lock_path = dir.join("billing.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Open(format!("{}: {e}", lock_path.display())))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Open(format!(
                "{}: another tollgate-billing is using this data_dir (SQLite takes one process; \
                 use PostgreSQL (database_url) for several)",
                dir.display()
            )));
        }
        let path = dir.join("billing.db");
        let name = path.display().to_string();
        let open_err = |e: StoreError| match e {
            StoreError::Schema(m) => StoreError::Schema(m),
            other => StoreError::Open(format!("SQLite database {name}: {other}")),
        };
        let mut conn = open_connection(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_err(e.into()))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| open_err(e.into()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open(format!(
                "SQLite database {name}: cannot switch to WAL mode (got {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| open_err(e.into()))?;
        // 64 MiB of page cache for the writer (SQLite's default is 2 MiB): usage rows and the
        // dedup index stay in memory under load.
        conn.pragma_update(None, "cache_size", -65_536)
            .map_err(|e| open_err(e.into()))?;
        // Checkpoints run on their own thread (below), not in the writer's commits; the writer
        // checkpoints itself only if the WAL grows past ~64 MiB anyway.
        conn.pragma_update(None, "wal_autocheckpoint", 16_384)
            .map_err(|e| open_err(e.into()))?;
        register_decimal_functions(&conn).map_err(|e| open_err(e.into()))?;
        migrate(&mut conn, &path).map_err(open_err)?;
        let docs: Vec<String> = conn
            .prepare("SELECT doc FROM meters ORDER BY id")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| open_err(e.into()))?;
        *meters.write().unwrap_or_else(|e| e.into_inner()) = compile_meters(docs);

        let checkpointer = open_connection(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| open_err(e.into()))?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (stop_checkpoints, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("billing-sqlite-checkpoint".into())
            .spawn(move || checkpoints(checkpointer, stopped))
            .map_err(|e| StoreError::Open(format!("starting the SQLite checkpointer: {e}")))?;
        let shared = meters.clone();
        let generation = Arc::new(AtomicU64::new(0));
        let published = generation.clone();
        std::thread::Builder::new()
            .name("billing-sqlite-writer".into())
            .spawn(move || writer(conn, rx, shared, published))
            .map_err(|e| StoreError::Open(format!("starting the SQLite writer: {e}")))?;
        Ok(Sqlite {
            path,
            jobs,
            readers: Arc::new(Mutex::new(Vec::new())),
            meters,
            generation,
            _stop_checkpoints: stop_checkpoints,
            _lock: lock,
        })
    }

    /// Runs `f` in the writer's next group transaction and answers after its commit.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &mut WriterState) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(true, f).await
    }

    /// Sends a job to the writer and waits for its answer, given after the group's commit.
    async fn submit<T: Send + 'static>(
        &self,
        savepoint: bool,
        f: impl FnOnce(&Connection, &mut WriterState) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let run: Run = Box::new(move |conn, state| {
            let result = f(conn, state);
            let ok = result.is_ok();
            let done: Done = Box::new(move |commit_error| {
                let _ = tx.send(match commit_error {
                    Some(e) => Err(e),
                    None => result,
                });
            });
            (ok, done)
        });
        self.jobs
            .send(Job { run, savepoint })
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?
    }

    /// Runs `f` on a read connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match conn {
                Some(c) => c,
                None => open_connection(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?,
            };
            let result = f(&conn);
            let mut pool = readers.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < READERS {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task: {e}")))?
    }

    pub(crate) async fn ingest(&self, events: Vec<NewEvent>) -> Result<usize, StoreError> {
        // Usage rows computed and folded here, on the request's thread, so the writer only
        // writes; redone in the writer if a meter changed in between or some events were
        // duplicates.
        let (generation, meters) = {
            let guard = self.meters.read().unwrap_or_else(|e| e.into_inner());
            (self.generation.load(Ordering::Acquire), guard.clone())
        };
        let precomputed: Precomputed = events
            .iter()
            .map(|e| {
                meters
                    .iter()
                    .filter_map(|m| usage::contribution(m, &e.stored))
                    .collect()
            })
            .collect();
        let all_new = usage::fold_contributions(precomputed.iter().flatten());
        let (count, leftovers) = self
            .submit(false, move |conn, state| {
                let mut insert = conn.prepare_cached(INSERT_EVENT)?;
                let mut new = Vec::with_capacity(events.len());
                for (i, e) in events.iter().enumerate() {
                    let n = insert.execute(params![
                        e.source,
                        e.id,
                        e.kind,
                        e.subject,
                        e.stored.time_ms,
                        e.stored.ingested_ms,
                        e.body
                    ])?;
                    if n == 1 {
                        new.push(i);
                    }
                }
                let current = state.generation == generation;
                if current && new.len() == events.len() {
                    write_usage(conn, &all_new)?;
                } else if current {
                    let rows =
                        usage::fold_contributions(new.iter().flat_map(|i| precomputed[*i].iter()));
                    write_usage(conn, &rows)?;
                } else {
                    let rows = usage::fold(&state.meters, new.iter().map(|i| &events[*i].stored));
                    write_usage(conn, &rows)?;
                }
                // The buffers go back to be freed on the request's thread, not the writer's.
                Ok((new.len(), (events, precomputed, all_new)))
            })
            .await?;
        drop(leftovers);
        Ok(count)
    }

    pub(crate) async fn add_meter(&self, meter: CompiledMeter) -> Result<(), StoreError> {
        self.write(move |conn, state| {
            let meter = Arc::new(meter);
            let doc = serde_json::to_value(&meter.meter)
                .map_err(|e| StoreError::Decode(e.to_string()))?;
            for s in super::documents::put("meter", &meter.meter.id, &doc) {
                run_stmt(conn, &s)?;
            }
            backfill(conn, &meter)?;
            bump_meters_version(conn)?;
            state.meters.push(meter);
            state.generation += 1;
            Ok(())
        })
        .await
    }

    pub(crate) async fn update_meter(&self, meter: CompiledMeter) -> Result<(), StoreError> {
        self.write(move |conn, state| {
            let meter = Arc::new(meter);
            let doc = serde_json::to_value(&meter.meter)
                .map_err(|e| StoreError::Decode(e.to_string()))?;
            for s in super::documents::put("meter", &meter.meter.id, &doc) {
                run_stmt(conn, &s)?;
            }
            let id = meter.meter.id.clone();
            let regroup = state
                .meters
                .iter()
                .find(|m| m.meter.id == id)
                .is_none_or(|old| old.meter.group_by != meter.meter.group_by);
            if regroup {
                // Usage recounted from the stored events, in this same transaction.
                delete_usage(conn, &id)?;
                backfill(conn, &meter)?;
            }
            bump_meters_version(conn)?;
            state.meters.retain(|m| m.meter.id != id);
            state.meters.push(meter);
            state.generation += 1;
            Ok(())
        })
        .await
    }

    pub(crate) async fn delete_meter(&self, id: String) -> Result<bool, StoreError> {
        self.write(move |conn, state| {
            delete_usage(conn, &id)?;
            let n = conn.execute("DELETE FROM meters WHERE id = $1", params![id])?;
            bump_meters_version(conn)?;
            state.meters.retain(|m| m.meter.id != id);
            state.generation += 1;
            Ok(n > 0)
        })
        .await
    }

    pub(crate) async fn execute(&self, stmts: Vec<Stmt>) -> Result<usize, StoreError> {
        self.write(move |conn, _| {
            let mut last = 0;
            for s in &stmts {
                last = run_stmt(conn, s)?;
            }
            Ok(last)
        })
        .await
    }

    /// Runs `stmts` in one savepoint; each must change exactly one row, else all are rolled
    /// back and the answer is `false`. `then` runs after them in the same savepoint.
    pub(crate) async fn execute_all_or_none(
        &self,
        stmts: Vec<Stmt>,
        then: Vec<Stmt>,
    ) -> Result<bool, StoreError> {
        let r = self
            .write(move |conn, _| {
                for s in &stmts {
                    if run_stmt(conn, s)? != 1 {
                        return Err(StoreError::Conflict("compare-and-set lost".into()));
                    }
                }
                for s in &then {
                    run_stmt(conn, s)?;
                }
                Ok(())
            })
            .await;
        match r {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// [`Sqlite::execute_all_or_none`] for several units in one job (one transaction), without
    /// a savepoint per unit (SQLite copies every page a savepoint's statements touch: that was
    /// half the writer's time): this connection is the only writer, so a unit whose first
    /// compare-and-set changes no row has changed nothing and is answered `false`, and the
    /// others go on. A later statement of a unit changing no row, or a unique key taken, rolls
    /// the whole job back (its own savepoint) and every unit is answered `false`: nothing was
    /// stored, and the caller retries each on its own.
    pub(crate) async fn execute_each_all_or_none(
        &self,
        units: Vec<(Vec<Stmt>, Vec<Stmt>)>,
    ) -> Result<Vec<bool>, StoreError> {
        let n = units.len();
        let r = self
            .write(move |conn, _| {
                let mut out = Vec::with_capacity(units.len());
                for (stmts, then) in &units {
                    let mut stmts = stmts.iter();
                    if let Some(first) = stmts.next() {
                        match run_stmt(conn, first) {
                            Ok(1) => {}
                            Ok(_) => {
                                out.push(false);
                                continue;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    for s in stmts {
                        if run_stmt(conn, s)? != 1 {
                            return Err(StoreError::Conflict("compare-and-set lost".into()));
                        }
                    }
                    for s in then {
                        run_stmt(conn, s)?;
                    }
                    out.push(true);
                }
                Ok(out)
            })
            .await;
        match r {
            Err(StoreError::Conflict(_)) => Ok(vec![false; n]),
            r => r,
        }
    }

    pub(crate) async fn query_docs(&self, stmt: Stmt) -> Result<Vec<String>, StoreError> {
        self.read(move |conn| {
            let mut s = conn.prepare_cached(&stmt.sql)?;
            let rows = s.query_map(rusqlite::params_from_iter(stmt.params.iter()), |r| {
                r.get::<_, String>(0)
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub(crate) async fn list_events(
        &self,
        mut filter: EventFilter,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |conn| {
            let mut out = Vec::new();
            let mut before = i64::MAX;
            let mut stmt = conn.prepare_cached(
                "SELECT seq, body, time_ms, ingested_ms FROM events WHERE seq < $1 \
                 ORDER BY seq DESC LIMIT 1000",
            )?;
            loop {
                let mut rows = stmt.query(params![before])?;
                let mut seen = 0;
                while let Some(r) = rows.next()? {
                    seen += 1;
                    before = r.get(0)?;
                    let body: String = r.get(1)?;
                    let e = StoredEvent {
                        event: serde_json::from_str(&body)
                            .map_err(|e| StoreError::Decode(e.to_string()))?,
                        time_ms: r.get(2)?,
                        ingested_ms: r.get(3)?,
                    };
                    if filter(&e) {
                        out.push(e);
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                }
                if seen == 0 {
                    return Ok(out);
                }
            }
        })
        .await
    }

    pub(crate) async fn usage(&self, q: UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.read(move |conn| {
            let mut rows = Vec::new();
            let mut uniques = Vec::new();
            let subjects: Vec<Option<&str>> = if q.subjects.is_empty() {
                vec![None]
            } else {
                q.subjects.iter().map(|s| Some(s.as_str())).collect()
            };
            // One subject: `subject = $3` (the primary key's third column, so SQLite seeks to
            // the subject's rows). `$3 IS NULL OR subject = $3` would be planned once for both
            // cases and scan every subject's rows of the meter — quadratic when each of many
            // customers is read in turn (invoicing).
            let subject_cond = if q.subjects.is_empty() {
                "($3 IS NULL OR subject = $3)"
            } else {
                "subject = $3"
            };
            // Totals: the rows across subjects (no subject column; `$3` is NULL).
            let (rows_sql, uniques_sql) = if q.totals {
                (
                    "SELECT '', group_key, count, sum, min, max, latest_ms, latest, start_ms \
                     FROM usage_totals WHERE meter_id = $1 AND grain_ms = $2 \
                     AND $3 IS NULL AND start_ms >= $4 AND start_ms < $5"
                        .to_owned(),
                    "SELECT '', group_key, value, start_ms FROM usage_total_uniques \
                     WHERE meter_id = $1 AND grain_ms = $2 AND $3 IS NULL \
                     AND start_ms >= $4 AND start_ms < $5"
                        .to_owned(),
                )
            } else {
                (
                    format!(
                        "SELECT subject, group_key, count, sum, min, max, latest_ms, latest, \
                         start_ms FROM usage_rollups WHERE meter_id = $1 AND grain_ms = $2 \
                         AND {subject_cond} AND start_ms >= $4 AND start_ms < $5"
                    ),
                    format!(
                        "SELECT subject, group_key, value, start_ms FROM usage_uniques \
                         WHERE meter_id = $1 AND grain_ms = $2 AND {subject_cond} \
                         AND start_ms >= $4 AND start_ms < $5"
                    ),
                )
            };
            let mut stmt = conn.prepare_cached(&rows_sql)?;
            let mut ustmt = conn.prepare_cached(&uniques_sql)?;
            for s in subjects {
                for (grain, lo, hi) in &q.segments {
                    let mut r = stmt.query(params![q.meter_id, grain, s, lo, hi])?;
                    while let Some(row) = r.next()? {
                        let sum: String = row.get(3)?;
                        let min: Option<String> = row.get(4)?;
                        let max: Option<String> = row.get(5)?;
                        let latest_ms: Option<i64> = row.get(6)?;
                        let latest: Option<String> = row.get(7)?;
                        let agg = MinuteAgg {
                            count: row.get::<_, i64>(2)? as u64,
                            sum: dec(&sum)?,
                            min: min.as_deref().map(dec).transpose()?,
                            max: max.as_deref().map(dec).transpose()?,
                            latest: match (latest_ms, latest) {
                                (Some(t), Some(v)) => Some((t, dec(&v)?)),
                                _ => None,
                            },
                            uniques: Vec::new(),
                        };
                        rows.push((row.get(0)?, row.get(1)?, *grain, row.get(8)?, agg));
                    }
                    if q.unique {
                        let mut r = ustmt.query(params![q.meter_id, grain, s, lo, hi])?;
                        while let Some(row) = r.next()? {
                            uniques.push((
                                row.get(0)?,
                                row.get(1)?,
                                *grain,
                                row.get(3)?,
                                row.get(2)?,
                            ));
                        }
                    }
                }
            }
            Ok(assemble_usage(rows, uniques))
        })
        .await
    }
}

fn run_stmt(conn: &Connection, s: &Stmt) -> Result<usize, StoreError> {
    let mut stmt = conn.prepare_cached(&s.sql)?;
    Ok(stmt.execute(rusqlite::params_from_iter(s.params.iter()))?)
}

/// Copies committed WAL frames into the database every 100 ms (a passive checkpoint never blocks
/// the writer), so commits do not pay for it, until the store is dropped.
fn checkpoints(conn: Connection, stop: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) =
        stop.recv_timeout(std::time::Duration::from_millis(100))
    {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "WAL checkpoint");
        }
    }
}

/// The writer thread: group commit until every sender is gone.
fn writer(
    mut conn: Connection,
    rx: mpsc::Receiver<Job>,
    shared: Arc<RwLock<Meters>>,
    published: Arc<AtomicU64>,
) {
    let mut state = WriterState {
        meters: shared.read().unwrap_or_else(|e| e.into_inner()).clone(),
        generation: published.load(Ordering::Acquire),
    };
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let before = state.clone();
        let mut dones: Vec<Done> = Vec::with_capacity(group.len());
        let outcome = (|| -> Result<(), rusqlite::Error> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for job in group.drain(..) {
                if !job.savepoint {
                    let (ok, done) = (job.run)(&tx, &mut state);
                    dones.push(done);
                    if !ok {
                        // Nothing to roll back to: the whole group fails and is answered so.
                        return Err(rusqlite::Error::UserFunctionError(
                            "a write in this group failed; the group was rolled back".into(),
                        ));
                    }
                    continue;
                }
                tx.execute_batch("SAVEPOINT job")?;
                let kept = (state.generation, state.meters.clone());
                let (ok, done) = (job.run)(&tx, &mut state);
                if ok {
                    tx.execute_batch("RELEASE job")?;
                } else {
                    tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
                    (state.generation, state.meters) = kept;
                }
                dones.push(done);
            }
            tx.commit()
        })();
        match outcome {
            Ok(()) => {
                if state.generation != before.generation {
                    let mut cache = shared.write().unwrap_or_else(|e| e.into_inner());
                    *cache = state.meters.clone();
                    published.store(state.generation, Ordering::Release);
                }
                for d in dones {
                    d(None);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "SQLite commit failed; the group's requests get 503");
                state = before;
                let msg = e.to_string();
                for d in dones {
                    d(Some(StoreError::Unavailable(msg.clone())));
                }
                // Jobs not reached before the error were dropped with their senders: their
                // requests get "unavailable" too.
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_functions_are_exact() {
        let conn = Connection::open_in_memory().unwrap();
        register_decimal_functions(&conn).unwrap();
        let (a, mn, mx): (String, Option<String>, Option<String>) = conn
            .query_row(
                "SELECT dec_add('0.1', '0.2'), dec_min(NULL, '3'), dec_max('2.50', '10')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(a, "0.3");
        assert_eq!(mn.as_deref(), Some("3"));
        assert_eq!(mx.as_deref(), Some("10"));
    }
}
