//! Balances read once per feature: many metered entitlements of one feature evaluated together
//! (the console's "near or over limit", the balance-threshold notifications' pass) read that
//! feature's usage for all their subjects and periods in one store read
//! ([`Store::usage_for_ranges`]) instead of a read per entitlement and segment; the balance engine
//! ([`entitlement::value`]'s) then runs on it in memory. Which segments an entitlement needs
//! depends only on its periods, resets and grants, so a first pass of the engine with no usage
//! lists them. Results equal [`entitlement::value`] one by one.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::entitlement::{
    self, Entitlement, EntitlementValue, Feature, Grant, UsageSource, value_until,
};
use crate::filter::{compile_group_filters, group_passes};
use crate::meter::Aggregation;
use crate::query::value_of;
use crate::store::{MinuteAgg, Store, StoreError};

/// Up to this many subjects in a batch are read by subject (index seeks); more read the meter's
/// rows for all subjects in the batch's spans and keep theirs.
const SEEK_SUBJECTS: usize = 16;

/// One entitlement of a batch, with the subjects whose usage is its and its grants.
pub struct Evaluation<'a> {
    /// The entitlement (of the batch's feature).
    pub entitlement: &'a Entitlement,
    /// Its subjects (the customer's, or its subject).
    pub subjects: &'a [String],
    /// Its grants.
    pub grants: &'a [Grant],
}

/// Every entitlement's value at `at` (as [`entitlement::value`]), `items` all of `feature`, with
/// one usage read for all of them.
pub async fn values(
    store: &Store,
    feature: &Feature,
    items: &[Evaluation<'_>],
    at: DateTime<Utc>,
) -> Result<Vec<EntitlementValue>, StoreError> {
    let until = entitlement::value_end(at);
    // Which usage each entitlement asks for.
    let mut asked: Vec<Vec<(i64, i64)>> = Vec::with_capacity(items.len());
    for it in items {
        let mut rec = Recorder::default();
        value_until(&mut rec, it.entitlement, it.grants, until, at).await?;
        asked.push(rec.ranges);
    }
    let index = read(store, feature, items, &asked).await?;
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let mut source = Prefetched {
            index: &index,
            subjects: it.subjects,
        };
        out.push(value_until(&mut source, it.entitlement, it.grants, until, at).await?);
    }
    Ok(out)
}

/// Usage per subject, each subject's rows sorted by start, filtered by the feature's group-by
/// filters; and how a segment's rows become usage.
struct Index {
    rows: HashMap<String, Vec<(i64, MinuteAgg)>>,
    aggregation: Aggregation,
}

/// The feature's usage for every subject and range asked, in one store read. An index with no
/// rows when the feature has no (known) meter or its filters do not compile, as
/// [`entitlement::usage_between`] counts nothing then.
async fn read(
    store: &Store,
    feature: &Feature,
    items: &[Evaluation<'_>],
    asked: &[Vec<(i64, i64)>],
) -> Result<Index, StoreError> {
    let mut index = Index {
        rows: HashMap::new(),
        aggregation: Aggregation::Sum,
    };
    let Some(meter) = feature.meter_slug.as_deref().and_then(|s| store.meter(s)) else {
        return Ok(index);
    };
    index.aggregation = match meter.meter.aggregation {
        Aggregation::Count => Aggregation::Count,
        _ => Aggregation::Sum,
    };
    let Ok(filters) = compile_group_filters(
        "advancedMeterGroupByFilters",
        &feature.group_filters(),
        |_| true,
    ) else {
        tracing::warn!(feature = %feature.key, "feature group-by filters do not compile");
        return Ok(index);
    };
    let subjects: HashSet<&str> = items
        .iter()
        .filter(|it| !it.subjects.is_empty())
        .flat_map(|it| it.subjects.iter().map(String::as_str))
        .collect();
    let ranges: Vec<(i64, i64)> = items
        .iter()
        .zip(asked)
        .filter(|(it, _)| !it.subjects.is_empty())
        .flat_map(|(_, r)| r.iter().copied())
        .collect();
    if subjects.is_empty() || ranges.is_empty() {
        return Ok(index);
    }
    let seek: Vec<String> = if subjects.len() <= SEEK_SUBJECTS {
        subjects.iter().map(|s| s.to_string()).collect()
    } else {
        Vec::new()
    };
    for (subject, group, span, agg) in store
        .usage_for_ranges(&meter.meter.slug, &seek, &ranges)
        .await?
    {
        if subjects.contains(subject.as_str()) && group_passes(&filters, &group) {
            index
                .rows
                .entry(subject)
                .or_default()
                .push((span.start_ms, agg));
        }
    }
    for rows in index.rows.values_mut() {
        rows.sort_by_key(|r| r.0);
    }
    Ok(index)
}

/// Lists the segments the engine asks for, answering none.
#[derive(Default)]
struct Recorder {
    ranges: Vec<(i64, i64)>,
}

impl UsageSource for Recorder {
    async fn usage(
        &mut self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Decimal, StoreError> {
        if from < to {
            self.ranges
                .push((from.timestamp_millis(), to.timestamp_millis()));
        }
        Ok(Decimal::ZERO)
    }
}

/// Answers segments from the batch's read: the rows of the entitlement's subjects that start in
/// the segment (no row read straddles a segment's end).
struct Prefetched<'a> {
    index: &'a Index,
    subjects: &'a [String],
}

impl UsageSource for Prefetched<'_> {
    async fn usage(
        &mut self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Decimal, StoreError> {
        let (from, to) = (from.timestamp_millis(), to.timestamp_millis());
        let mut agg = MinuteAgg::default();
        if from >= to {
            return Ok(Decimal::ZERO);
        }
        for s in self.subjects {
            let Some(rows) = self.index.rows.get(s) else {
                continue;
            };
            let first = rows.partition_point(|r| r.0 < from);
            for (_, a) in rows[first..].iter().take_while(|r| r.0 < to) {
                agg.merge(a);
            }
        }
        Ok(value_of(self.index.aggregation, &agg))
    }
}
