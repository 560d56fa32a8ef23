//! The embedded store: sled trees behind a narrow interface (so a PostgreSQL backend can take its
//! place for several replicas later).
//!
//! * `events`: every accepted event, keyed by arrival sequence.
//! * `dedup`: (`source`, `id`) → sequence. Written in the **same transaction** as the event and
//!   its usage, and acknowledged only after the flush: a retried event is never counted twice,
//!   and a failed write leaves no claim behind (unlike OpenMeter's #5118).
//! * `usage`: per meter, subject, group-by values and minute, the partial aggregates every
//!   aggregation needs (count, sum, min, max, latest, distinct values), so queries never rescan
//!   raw events.
//! * `entities`: meters, customers, features, entitlements and grants as JSON documents by kind
//!   and id (plans, subscriptions and invoices will be more kinds).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::meter::{CompiledMeter, Meter};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// A record did not decode.
    #[error("store: undecodable record: {0}")]
    Decode(String),
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

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

/// Partial aggregates of one minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MinuteAgg {
    /// Events (COUNT) or events with a value.
    pub count: u64,
    /// Sum of values.
    pub sum: Decimal,
    /// Smallest value.
    pub min: Option<Decimal>,
    /// Largest value.
    pub max: Option<Decimal>,
    /// Latest value and its time (ms).
    pub latest: Option<(i64, Decimal)>,
    /// Distinct values (UNIQUE_COUNT only).
    pub uniques: Vec<String>,
}

impl MinuteAgg {
    /// Folds `other` in.
    pub fn merge(&mut self, other: &MinuteAgg) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.latest = match (self.latest, other.latest) {
            (Some(a), Some(b)) => Some(if b.0 >= a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        for u in &other.uniques {
            if let Err(i) = self.uniques.binary_search(u) {
                self.uniques.insert(i, u.clone());
            }
        }
    }
}

/// One usage row read back: subject, group, minute start (ms), aggregates.
pub type UsageRow = (String, BTreeMap<String, String>, i64, MinuteAgg);

/// The store.
pub struct Store {
    db: sled::Db,
    events: sled::Tree,
    dedup: sled::Tree,
    usage: sled::Tree,
    entities: sled::Tree,
    meters: RwLock<Vec<Arc<CompiledMeter>>>,
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(b).map_err(|e| StoreError::Decode(e.to_string()))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(v).unwrap_or_default()
}

fn usage_key(
    meter: &str,
    subject: &str,
    group: &BTreeMap<String, String>,
    minute_ms: i64,
) -> Vec<u8> {
    let mut k = Vec::with_capacity(meter.len() + subject.len() + 48);
    k.extend_from_slice(meter.as_bytes());
    k.push(0);
    k.extend_from_slice(subject.as_bytes());
    k.push(0);
    k.extend_from_slice(serde_json::to_string(group).unwrap_or_default().as_bytes());
    k.push(0);
    k.extend_from_slice(&minute_ms.to_be_bytes());
    k
}

fn parse_usage_key(k: &[u8]) -> Option<(String, BTreeMap<String, String>, i64)> {
    if k.len() < 9 {
        return None;
    }
    let (head, minute) = k.split_at(k.len() - 8);
    let minute = i64::from_be_bytes(minute.try_into().ok()?);
    let head = head.strip_suffix(&[0])?;
    let mut parts = head.splitn(3, |b| *b == 0);
    let _meter = parts.next()?;
    let subject = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let group = serde_json::from_slice(parts.next()?).ok()?;
    Some((subject, group, minute))
}

/// Truncates ms to the minute.
pub fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000) * 60_000
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        let db = sled::open(path)?;
        let store = Store {
            events: db.open_tree("events")?,
            dedup: db.open_tree("dedup")?,
            usage: db.open_tree("usage")?,
            entities: db.open_tree("entities")?,
            db,
            meters: RwLock::new(Vec::new()),
        };
        let meters: Vec<Meter> = store.entities_of_kind("meter")?;
        let compiled = meters
            .into_iter()
            .filter_map(|m| CompiledMeter::new(m).ok().map(Arc::new))
            .collect();
        *store.meters.write().unwrap_or_else(|e| e.into_inner()) = compiled;
        Ok(store)
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
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
        self.meters()
            .into_iter()
            .find(|m| m.meter.id == id_or_slug || m.meter.slug == id_or_slug)
    }

    /// Adds a meter and counts every stored event for it (backfill). Not durable until flushed.
    pub async fn add_meter(&self, meter: CompiledMeter) -> Result<(), StoreError> {
        let meter = Arc::new(meter);
        self.put_entity("meter", &meter.meter.id, &meter.meter)
            .await?;
        for entry in self.events.iter() {
            let (_, v) = entry?;
            let e: StoredEvent = decode(&v)?;
            self.count_usage(&meter, &e)?;
        }
        self.meters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(meter);
        Ok(())
    }

    /// Replaces a meter's definition (same id and slug; name, description, metadata and
    /// group-by may differ). When the group-by changes, the meter's usage is recounted from the
    /// stored events so every group-by value exists for the whole history. Not durable until
    /// flushed. (sled: an ingest racing the recount can be counted twice for this meter; the SQL
    /// store does it in one transaction.)
    pub async fn update_meter(&self, meter: CompiledMeter) -> Result<(), StoreError> {
        let meter = Arc::new(meter);
        let old = self.meter(&meter.meter.id);
        self.put_entity("meter", &meter.meter.id, &meter.meter)
            .await?;
        self.meters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .filter(|m| m.meter.id == meter.meter.id)
            .for_each(|m| *m = meter.clone());
        if old.is_some_and(|o| o.meter.group_by == meter.meter.group_by) {
            return Ok(());
        }
        let mut prefix = meter.meter.slug.as_bytes().to_vec();
        prefix.push(0);
        for k in self.usage.scan_prefix(&prefix).keys() {
            self.usage.remove(k?)?;
        }
        for entry in self.events.iter() {
            let (_, v) = entry?;
            let e: StoredEvent = decode(&v)?;
            self.count_usage(&meter, &e)?;
        }
        Ok(())
    }

    /// Removes a meter and its usage.
    pub async fn delete_meter(&self, id: &str) -> Result<bool, StoreError> {
        let Some(m) = self.meter(id) else {
            return Ok(false);
        };
        self.entities.remove(entity_key("meter", &m.meter.id))?;
        let mut prefix = m.meter.slug.as_bytes().to_vec();
        prefix.push(0);
        for k in self.usage.scan_prefix(&prefix).keys() {
            self.usage.remove(k?)?;
        }
        self.meters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|x| x.meter.id != m.meter.id);
        Ok(true)
    }

    fn count_usage(&self, meter: &CompiledMeter, e: &StoredEvent) -> Result<(), StoreError> {
        if let Some((key, agg)) = contribution(meter, e) {
            let merged = match self.usage.get(&key)? {
                Some(old) => {
                    let mut a: MinuteAgg = decode(&old)?;
                    a.merge(&agg);
                    a
                }
                None => agg,
            };
            self.usage.insert(key, encode(&merged))?;
        }
        Ok(())
    }

    /// Stores a request's events with their usage, skipping any (`source`, `id`) already seen
    /// (in the store or earlier in the batch): one transaction for the whole batch, so a batch is
    /// counted entirely or not at all. Returns once the batch is durable (flushed), with how many
    /// were new.
    pub async fn ingest(
        &self,
        events: Vec<(Value, i64)>,
        ingested_ms: i64,
    ) -> Result<usize, StoreError> {
        let meters = self.meters();
        let mut prepared = Vec::with_capacity(events.len());
        for (event, time_ms) in events {
            let source = event["source"].as_str().unwrap_or_default();
            let id = event["id"].as_str().unwrap_or_default();
            let mut dedup_key = Vec::with_capacity(source.len() + id.len() + 1);
            dedup_key.extend_from_slice(source.as_bytes());
            dedup_key.push(0);
            dedup_key.extend_from_slice(id.as_bytes());
            let stored = StoredEvent {
                event,
                ingested_ms,
                time_ms,
            };
            let contributions: Vec<(Vec<u8>, MinuteAgg)> = meters
                .iter()
                .filter_map(|m| contribution(m, &stored))
                .collect();
            let seq = self.db.generate_id()?;
            prepared.push((dedup_key, seq, encode(&stored), contributions));
        }
        let result =
            (&self.dedup, &self.events, &self.usage).transaction(|(dedup, events, usage)| {
                let mut new = 0;
                // The batch's new events folded per usage row first: a request's events mostly
                // share a few subjects and one minute, so each row is read and written once per
                // request instead of once per event.
                let mut rows: BTreeMap<&[u8], MinuteAgg> = BTreeMap::new();
                for (dedup_key, seq, record, contributions) in &prepared {
                    if dedup.get(dedup_key)?.is_some() {
                        continue;
                    }
                    new += 1;
                    dedup.insert(dedup_key.as_slice(), &seq.to_be_bytes())?;
                    events.insert(&seq.to_be_bytes(), record.as_slice())?;
                    for (key, agg) in contributions {
                        match rows.get_mut(key.as_slice()) {
                            Some(row) => row.merge(agg),
                            None => {
                                rows.insert(key.as_slice(), agg.clone());
                            }
                        }
                    }
                }
                for (key, agg) in rows {
                    let merged = match usage.get(key)? {
                        Some(old) => {
                            let mut a: MinuteAgg =
                                decode(&old).map_err(ConflictableTransactionError::Abort)?;
                            a.merge(&agg);
                            a
                        }
                        None => agg,
                    };
                    usage.insert(key, encode(&merged))?;
                }
                Ok(new)
            });
        let new = result?;
        // Acknowledged only once on disk.
        self.flush().await?;
        Ok(new)
    }

    /// Stored events, newest first, filtered.
    pub async fn list_events(
        &self,
        mut filter: impl FnMut(&StoredEvent) -> bool,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut out = Vec::new();
        for entry in self.events.iter().rev() {
            let (_, v) = entry?;
            let e: StoredEvent = decode(&v)?;
            if filter(&e) {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Usage rows of `meter` for `subjects` (all when empty) with minutes in `[from, to)`.
    pub async fn usage(
        &self,
        meter: &str,
        subjects: &[String],
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let mut prefixes = Vec::new();
        let mut base = meter.as_bytes().to_vec();
        base.push(0);
        if subjects.is_empty() {
            prefixes.push(base);
        } else {
            for s in subjects {
                let mut p = base.clone();
                p.extend_from_slice(s.as_bytes());
                p.push(0);
                prefixes.push(p);
            }
        }
        let mut rows = Vec::new();
        for p in prefixes {
            for entry in self.usage.scan_prefix(&p) {
                let (k, v) = entry?;
                let Some((subject, group, minute)) = parse_usage_key(&k) else {
                    continue;
                };
                if minute < from_ms || minute >= to_ms {
                    continue;
                }
                rows.push((subject, group, minute, decode(&v)?));
            }
        }
        Ok(rows)
    }

    /// Stores an entity document.
    pub async fn put_entity<T: Serialize>(
        &self,
        kind: &str,
        id: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_vec(value).map_err(|e| StoreError::Decode(e.to_string()))?;
        self.entities.insert(entity_key(kind, id), json)?;
        Ok(())
    }

    /// One entity.
    pub async fn get_entity<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.entities.get(entity_key(kind, id))? {
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).map_err(|e| StoreError::Decode(e.to_string()))?,
            )),
            None => Ok(None),
        }
    }

    /// Every entity of a kind, in id order.
    pub async fn list_entities<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
    ) -> Result<Vec<T>, StoreError> {
        self.entities_of_kind(kind)
    }

    fn entities_of_kind<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut prefix = kind.as_bytes().to_vec();
        prefix.push(0);
        self.entities
            .scan_prefix(prefix)
            .values()
            .map(|v| serde_json::from_slice(&v?).map_err(|e| StoreError::Decode(e.to_string())))
            .collect()
    }

    /// Deletes an entity.
    pub async fn delete_entity(&self, kind: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self.entities.remove(entity_key(kind, id))?.is_some())
    }
}

fn entity_key(kind: &str, id: &str) -> Vec<u8> {
    let mut k = kind.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn contribution(meter: &CompiledMeter, e: &StoredEvent) -> Option<(Vec<u8>, MinuteAgg)> {
    let m = &meter.meter;
    if e.event["type"].as_str() != Some(m.event_type.as_str()) {
        return None;
    }
    if let Some(from) = m.event_from
        && e.time_ms < from.timestamp_millis()
    {
        return None;
    }
    let subject = e.event["subject"].as_str().unwrap_or_default();
    let c = meter.extract(&e.event["data"]);
    let mut agg = MinuteAgg::default();
    match m.aggregation {
        crate::meter::Aggregation::Count => agg.count = 1,
        crate::meter::Aggregation::UniqueCount => {
            let u = c.unique?;
            agg.count = 1;
            agg.uniques = vec![u];
        }
        _ => {
            let v = c.value?;
            agg.count = 1;
            agg.sum = v;
            agg.min = Some(v);
            agg.max = Some(v);
            agg.latest = Some((e.time_ms, v));
        }
    }
    Some((
        usage_key(&m.slug, subject, &c.group, minute_of(e.time_ms)),
        agg,
    ))
}
