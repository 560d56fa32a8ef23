//! A line's usage from the meters (OpenMeter's `quantitysnapshot.go`): the feature's meter for
//! the customer's subjects over the line's service period, with the feature's group-by filters,
//! aggregated as the meter aggregates; for a later line of a progressive-billing group also the
//! usage earlier in the group. Features are read once per [`UsageReader`].

use std::collections::HashMap;

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

/// Reads usage for lines, caching features by key.
pub struct UsageReader<'a> {
    store: &'a Store,
    features: Option<HashMap<String, Feature>>,
}

impl<'a> UsageReader<'a> {
    /// A reader on `store`.
    pub fn new(store: &'a Store) -> Self {
        UsageReader {
            store,
            features: None,
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
