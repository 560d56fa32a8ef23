//! A line's usage from the meters (OpenMeter's `quantitysnapshot.go`): the feature's meter for
//! the customer's subjects over the line's service period, with the feature's group-by filters,
//! aggregated as the meter aggregates; for a later line of a progressive-billing group also the
//! usage earlier in the group. Features are read once per [`UsageReader`]. Many customers'
//! lines over one period are read together ([`Prefetched`]): one store read per feature and
//! period for all their subjects, instead of one per line.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, DurationRound, Utc};
use rust_decimal::Decimal;

use super::model::Line;
use super::rating::Quantities;
use crate::entitlement::Feature;
use crate::filter::{compile_group_filters, group_passes};
use crate::meter::Aggregation;
use crate::query::value_of;
use crate::store::{MinuteAgg, Store, StoreError};

fn floor_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(chrono::TimeDelta::minutes(1)).unwrap_or(t)
}

/// Rows of one subject: (group-by values, aggregate).
type SubjectRows = Vec<(BTreeMap<String, String>, MinuteAgg)>;

/// One read ahead: the subjects read, and their rows.
type Read = (HashSet<String>, HashMap<String, SubjectRows>);

/// Usage read ahead for many customers at once: for each feature and (minute-floored) period,
/// the subjects read and their rows. A [`UsageReader`] made [`UsageReader::with`] it answers
/// from here when every subject it asks for was read, and from the store otherwise.
#[derive(Debug, Default)]
pub struct Prefetched {
    reads: HashMap<(String, i64, i64), Read>,
}

impl Prefetched {
    /// Reads the usage `asks` will need — each `(feature key, subjects, from, to)` — with one
    /// store read per feature and period for all the subjects asking for it.
    pub async fn read(
        store: &Store,
        asks: impl IntoIterator<Item = (String, Vec<String>, DateTime<Utc>, DateTime<Utc>)>,
    ) -> Result<Prefetched, StoreError> {
        let mut groups: BTreeMap<(String, i64, i64), BTreeSet<String>> = BTreeMap::new();
        for (key, subjects, from, to) in asks {
            let (from, to) = (floor_minute(from), floor_minute(to));
            if from >= to || subjects.is_empty() {
                continue;
            }
            groups
                .entry((key, from.timestamp_millis(), to.timestamp_millis()))
                .or_default()
                .extend(subjects);
        }
        let mut out = Prefetched::default();
        let mut reader = UsageReader::new(store);
        for ((key, from, to), subjects) in groups {
            let Some(slug) = reader.feature(&key).await?.and_then(|f| f.meter_slug) else {
                continue;
            };
            let subjects: Vec<String> = subjects.into_iter().collect();
            let mut by_subject: HashMap<String, SubjectRows> = HashMap::new();
            for (subject, group, _, agg) in store.usage(&slug, &subjects, from, to).await? {
                by_subject.entry(subject).or_default().push((group, agg));
            }
            out.reads.insert(
                (key, from, to),
                (subjects.into_iter().collect(), by_subject),
            );
        }
        Ok(out)
    }

    /// How many reads it holds.
    pub fn len(&self) -> usize {
        self.reads.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty()
    }
}

/// Reads usage for lines, caching features by key.
pub struct UsageReader<'a> {
    store: &'a Store,
    features: Option<HashMap<String, Feature>>,
    pre: Option<&'a Prefetched>,
}

impl<'a> UsageReader<'a> {
    /// A reader on `store`.
    pub fn new(store: &'a Store) -> Self {
        Self::with(store, None)
    }

    /// A reader on `store` answering from `pre` what was read ahead.
    pub fn with(store: &'a Store, pre: Option<&'a Prefetched>) -> Self {
        UsageReader {
            store,
            features: None,
            pre,
        }
    }

    /// The live feature with `key`.
    pub async fn feature(&mut self, key: &str) -> Result<Option<Feature>, StoreError> {
        if self.features.is_none() {
            let all: Vec<Feature> = self.store.list_entities("feature").await?;
            self.features = Some(
                all.into_iter()
                    .filter(|f| f.archived_at.is_none())
                    .map(|f| (f.key.clone(), f))
                    .collect(),
            );
        }
        Ok(self.features.as_ref().and_then(|m| m.get(key)).cloned())
    }

    /// The meter's aggregation for a feature key (`None`: no feature or meter).
    pub async fn aggregation(&mut self, key: &str) -> Result<Option<Aggregation>, StoreError> {
        let Some(f) = self.feature(key).await? else {
            return Ok(None);
        };
        Ok(f.meter_slug
            .as_deref()
            .and_then(|s| self.store.meter(s))
            .map(|m| m.meter.aggregation))
    }

    /// Usage of the feature `key` by `subjects` in `[from, to)`.
    pub async fn usage(
        &mut self,
        key: &str,
        subjects: &[String],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Decimal, StoreError> {
        let Some(feature) = self.feature(key).await? else {
            return Ok(Decimal::ZERO);
        };
        let Some(meter) = feature
            .meter_slug
            .as_deref()
            .and_then(|s| self.store.meter(s))
        else {
            return Ok(Decimal::ZERO);
        };
        // Usage is kept per minute: each minute belongs to the period its start falls in once
        // both bounds are floored to the minute, so adjacent periods neither share nor lose one.
        let (from, to) = (floor_minute(from), floor_minute(to));
        if subjects.is_empty() || from >= to {
            return Ok(Decimal::ZERO);
        }
        let Ok(filters) = compile_group_filters(
            "advancedMeterGroupByFilters",
            &feature.group_filters(),
            |_| true,
        ) else {
            tracing::warn!(feature = %feature.key, "feature group-by filters do not compile");
            return Ok(Decimal::ZERO);
        };
        let mut agg = MinuteAgg::default();
        let read_ahead = self.pre.and_then(|p| {
            p.reads.get(&(
                key.to_owned(),
                from.timestamp_millis(),
                to.timestamp_millis(),
            ))
        });
        if let Some((read, rows)) = read_ahead
            && subjects.iter().all(|s| read.contains(s))
        {
            for s in subjects {
                for (group, a) in rows.get(s).into_iter().flatten() {
                    if group_passes(&filters, group) {
                        agg.merge(a);
                    }
                }
            }
            return Ok(value_of(meter.meter.aggregation, &agg));
        }
        for (_, group, _, a) in self
            .store
            .usage(
                &meter.meter.slug,
                subjects,
                from.timestamp_millis(),
                to.timestamp_millis(),
            )
            .await?
        {
            if group_passes(&filters, &group) {
                agg.merge(&a);
            }
        }
        Ok(value_of(meter.meter.aggregation, &agg))
    }

    /// The quantities `line` is rated with: flat and free-of-feature lines have none.
    pub async fn quantities(
        &mut self,
        line: &Line,
        subjects: &[String],
    ) -> Result<Quantities, StoreError> {
        let Some(key) = line.rate_card.feature_key.as_deref() else {
            return Ok(Quantities::default());
        };
        if line.is_flat() {
            return Ok(Quantities::default());
        }
        // A later line of a split group: Q1 = [group start, line start), Q2 = [group start,
        // line end); the line's usage is Q2 − Q1 (right for MAX and UNIQUE_COUNT meters too).
        if let Some(g) = &line.split_line_group
            && g.period.from < line.period.from
        {
            let q1 = self
                .usage(key, subjects, g.period.from, line.period.from)
                .await?;
            let q2 = self
                .usage(key, subjects, g.period.from, line.period.to)
                .await?;
            return Ok(Quantities {
                metered: (q2 - q1).max(Decimal::ZERO),
                metered_pre: q1,
            });
        }
        Ok(Quantities {
            metered: self
                .usage(key, subjects, line.period.from, line.period.to)
                .await?,
            metered_pre: Decimal::ZERO,
        })
    }
}
