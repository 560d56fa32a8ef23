//! Usage pre-aggregation, shared by both backends: what one stored event contributes to each meter
//! (a row per meter × subject × group-by values × minute), folded per row before it is written, so
//! a request's events touch each row once. Pure: no database here.

use std::collections::BTreeMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::meter::{Aggregation, CompiledMeter};
use crate::store::StoredEvent;

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
    /// Distinct values (UNIQUE_COUNT only), sorted.
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

/// The key of a usage row: meter id, subject, group-by values as canonical JSON, minute (ms).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UsageKey {
    /// The meter's id.
    pub meter_id: String,
    /// The event's subject.
    pub subject: String,
    /// Group-by values, a JSON object with sorted keys.
    pub group_key: String,
    /// Minute start, Unix ms.
    pub minute_ms: i64,
}

/// Truncates ms to the minute.
pub fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000) * 60_000
}

/// The canonical text of group-by values (sorted keys), as stored in `group_key`.
pub fn group_key(group: &BTreeMap<String, String>) -> String {
    serde_json::to_string(group).unwrap_or_else(|_| "{}".into())
}

/// Group-by values back from their stored text.
pub fn parse_group_key(s: &str) -> BTreeMap<String, String> {
    serde_json::from_str(s).unwrap_or_default()
}

/// What `e` contributes to `meter`, if anything.
pub fn contribution(meter: &CompiledMeter, e: &StoredEvent) -> Option<(UsageKey, MinuteAgg)> {
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
        Aggregation::Count => agg.count = 1,
        Aggregation::UniqueCount => {
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
        UsageKey {
            meter_id: m.id.clone(),
            subject: subject.to_owned(),
            group_key: group_key(&c.group),
            minute_ms: minute_of(e.time_ms),
        },
        agg,
    ))
}

/// The usage rows `events` add to `meters`, folded per row, in key order (the order both backends
/// write them in, so concurrent writers lock rows in one order).
pub fn fold<'a>(
    meters: &[Arc<CompiledMeter>],
    events: impl IntoIterator<Item = &'a StoredEvent>,
) -> BTreeMap<UsageKey, MinuteAgg> {
    let mut rows: BTreeMap<UsageKey, MinuteAgg> = BTreeMap::new();
    for e in events {
        for m in meters {
            if let Some((key, agg)) = contribution(m, e) {
                match rows.get_mut(&key) {
                    Some(row) => row.merge(&agg),
                    None => {
                        rows.insert(key, agg);
                    }
                }
            }
        }
    }
    rows
}

/// Folds already computed contributions per row, in key order.
pub fn fold_contributions<'a>(
    contributions: impl IntoIterator<Item = &'a (UsageKey, MinuteAgg)>,
) -> BTreeMap<UsageKey, MinuteAgg> {
    let mut rows: BTreeMap<UsageKey, MinuteAgg> = BTreeMap::new();
    for (key, agg) in contributions {
        match rows.get_mut(key) {
            Some(row) => row.merge(agg),
            None => {
                rows.insert(key.clone(), agg.clone());
            }
        }
    }
    rows
}
