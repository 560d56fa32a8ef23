//! Meter queries (`GET /api/v1/meters/{idOrSlug}/query`): per-minute aggregates folded into
//! windows (MINUTE, HOUR, DAY, MONTH in a time zone) and group-by keys, as `MeterQueryResult`.
//! A query that neither filters nor groups by subject (or customer) reads the store's totals
//! across subjects ([`Store::usage_totals`]); the others read the per-subject rows.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;

use crate::filter::{GroupFilters, group_passes};
use crate::meter::{Aggregation, CompiledMeter};
use crate::store::{MinuteAgg, Store, StoreError};

/// Window sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WindowSize {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (in the query's time zone).
    Day,
    /// One calendar month (in the query's time zone).
    Month,
}

impl std::str::FromStr for WindowSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "MINUTE" => Ok(WindowSize::Minute),
            "HOUR" => Ok(WindowSize::Hour),
            "DAY" => Ok(WindowSize::Day),
            "MONTH" => Ok(WindowSize::Month),
            other => Err(format!(
                "windowSize must be MINUTE, HOUR, DAY or MONTH, not {other:?}"
            )),
        }
    }
}

/// A query.
#[derive(Debug, Clone)]
pub struct MeterQuery {
    /// Inclusive start.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive end.
    pub to: Option<DateTime<Utc>>,
    /// Window size; `None` for one total.
    pub window_size: Option<WindowSize>,
    /// Window time zone.
    pub tz: Tz,
    /// Subjects to include (all when empty); a subject filter also groups by subject.
    pub subjects: Vec<String>,
    /// Customers to include, with their subjects (all when empty); a customer filter also
    /// groups by customer (`customerId` on rows), as OpenMeter does.
    pub customers: Vec<(String, Vec<String>)>,
    /// Group-by keys (`subject` and `customer_id` reserved).
    pub group_by: Vec<String>,
    /// Filters on group-by values (`filterGroupBy` as `$in`, or `advancedMeterGroupByFilters`).
    pub filters: GroupFilters,
}

/// One row of `MeterQueryResult.data`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeterQueryRow {
    /// Aggregated value.
    pub value: f64,
    /// Window start.
    pub window_start: DateTime<Utc>,
    /// Window end.
    pub window_end: DateTime<Utc>,
    /// Subject, when grouped by subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Customer, when filtered by customer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Group-by values.
    pub group_by: BTreeMap<String, Option<String>>,
}

/// `MeterQueryResult`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterQueryResult {
    /// Start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<Utc>>,
    /// End.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<DateTime<Utc>>,
    /// Window size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_size: Option<WindowSize>,
    /// Rows.
    pub data: Vec<MeterQueryRow>,
}

/// The window of `size` in `tz` that contains the minute starting at `minute_ms`.
pub fn window_bounds(minute_ms: i64, size: WindowSize, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    let t = Utc
        .timestamp_millis_opt(minute_ms)
        .single()
        .unwrap_or_default();
    match size {
        WindowSize::Minute => (t, t + chrono::Duration::minutes(1)),
        WindowSize::Hour => {
            // The hour on the zone's clock (zones with half-hour offsets start it at :30 UTC).
            let offset_ms = i64::from(
                chrono::Offset::fix(&tz.offset_from_utc_datetime(&t.naive_utc())).local_minus_utc(),
            ) * 1000;
            let start = Utc
                .timestamp_millis_opt(
                    (minute_ms + offset_ms).div_euclid(3_600_000) * 3_600_000 - offset_ms,
                )
                .single()
                .unwrap_or_default();
            (start, start + chrono::Duration::hours(1))
        }
        WindowSize::Day | WindowSize::Month => {
            let local = t.with_timezone(&tz).date_naive();
            let (start, end) = if size == WindowSize::Day {
                (local, local.succ_opt().unwrap_or(local))
            } else {
                let first = local.with_day(1).unwrap_or(local);
                let next = if first.month() == 12 {
                    first
                        .with_year(first.year() + 1)
                        .and_then(|d| d.with_month(1))
                } else {
                    first.with_month(first.month() + 1)
                };
                (first, next.unwrap_or(first))
            };
            let at_midnight = |d: chrono::NaiveDate| {
                tz.from_local_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default())
                    .earliest()
                    .map(|x| x.with_timezone(&Utc))
                    .unwrap_or_default()
            };
            (at_midnight(start), at_midnight(end))
        }
    }
}

/// The coarsest usage rows (UTC minutes, hours or days) that never straddle one of the query's
/// windows: any for a total; days for UTC days and months; hours for days and months in a time
/// zone whose offset is whole hours at both ends of the range (and now); minutes otherwise.
pub fn coarsest_grain(size: Option<WindowSize>, tz: Tz, from_ms: i64, to_ms: i64) -> i64 {
    use crate::store::{DAY, HOUR, MINUTE};
    use chrono::Offset;
    let whole_hours = |ms: i64| {
        let t = Utc
            .timestamp_millis_opt(ms.clamp(0, 253_402_300_799_000))
            .single()
            .unwrap_or_default();
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc()
            % 3600
            == 0
    };
    let tz_hours = [from_ms, to_ms, Utc::now().timestamp_millis()]
        .into_iter()
        .all(whole_hours);
    match size {
        None => DAY,
        Some(WindowSize::Minute) => MINUTE,
        Some(WindowSize::Hour) if tz_hours => HOUR,
        Some(WindowSize::Hour) => MINUTE,
        Some(WindowSize::Day | WindowSize::Month) if tz == chrono_tz::UTC => DAY,
        Some(WindowSize::Day | WindowSize::Month) if tz_hours => HOUR,
        Some(WindowSize::Day | WindowSize::Month) => MINUTE,
    }
}

/// The value of folded aggregates.
pub fn value_of(aggregation: Aggregation, agg: &MinuteAgg) -> Decimal {
    match aggregation {
        Aggregation::Count => Decimal::from(agg.count),
        Aggregation::Sum => agg.sum,
        Aggregation::Avg if agg.count > 0 => agg.sum / Decimal::from(agg.count),
        Aggregation::Avg => Decimal::ZERO,
        Aggregation::Min => agg.min.unwrap_or_default(),
        Aggregation::Max => agg.max.unwrap_or_default(),
        Aggregation::Latest => agg.latest.map(|(_, v)| v).unwrap_or_default(),
        Aggregation::UniqueCount => Decimal::from(agg.uniques.len()),
    }
}

/// Runs `q` against `meter`.
pub async fn run(
    store: &Store,
    meter: &CompiledMeter,
    q: &MeterQuery,
) -> Result<MeterQueryResult, StoreError> {
    let from_ms = q.from.map_or(i64::MIN, |t| t.timestamp_millis());
    let to_ms = q.to.map_or(i64::MAX, |t| t.timestamp_millis());
    // Which subjects to read: the subject filter, narrowed to the customers' subjects.
    let mut customer_of: BTreeMap<&str, &str> = BTreeMap::new();
    for (id, subjects) in &q.customers {
        for s in subjects {
            customer_of.entry(s.as_str()).or_insert(id.as_str());
        }
    }
    let scan: Vec<String> = if q.customers.is_empty() {
        q.subjects.clone()
    } else {
        customer_of
            .keys()
            .filter(|s| q.subjects.is_empty() || q.subjects.iter().any(|x| x == *s))
            .map(|s| s.to_string())
            .collect()
    };
    let by_subject = q.group_by.iter().any(|g| g == "subject") || !q.subjects.is_empty();
    let coarsest = coarsest_grain(q.window_size, q.tz, from_ms, to_ms);
    let rows = if !q.customers.is_empty() && scan.is_empty() {
        Vec::new() // the customers have no (matching) subjects: nothing, not everything
    } else if scan.is_empty() && !by_subject {
        // Neither filtered nor grouped by subject: the store's totals across subjects.
        store
            .usage_totals(&meter.meter.slug, from_ms, to_ms, coarsest)
            .await?
    } else {
        store
            .usage_grained(&meter.meter.slug, &scan, from_ms, to_ms, coarsest)
            .await?
    };
    let by_customer = !q.customers.is_empty();
    let keys: Vec<&String> = q
        .group_by
        .iter()
        .filter(|g| *g != "subject" && *g != "customer_id")
        .collect();
    type Key = (i64, Option<String>, Option<String>, Vec<Option<String>>);
    let mut folded: BTreeMap<Key, (MinuteAgg, i64, i64)> = BTreeMap::new();
    for (subject, group, span, agg) in rows {
        if !group_passes(&q.filters, &group) {
            continue;
        }
        let ws = match q.window_size {
            Some(size) => window_bounds(span.start_ms, size, q.tz)
                .0
                .timestamp_millis(),
            None => i64::MIN,
        };
        let key = (
            ws,
            by_subject.then(|| subject.clone()),
            by_customer
                .then(|| customer_of.get(subject.as_str()).map(|c| c.to_string()))
                .flatten(),
            keys.iter().map(|k| group.get(*k).cloned()).collect(),
        );
        let slot = folded
            .entry(key)
            .or_insert_with(|| (MinuteAgg::default(), i64::MAX, i64::MIN));
        slot.0.merge(&agg);
        slot.1 = slot.1.min(span.start_ms);
        slot.2 = slot.2.max(span.end_ms);
    }
    let data = folded
        .into_iter()
        .map(|((ws, subject, customer_id, values), (agg, first, last))| {
            let (start, end) = match q.window_size {
                Some(size) => window_bounds(ws, size, q.tz),
                None => (
                    q.from.unwrap_or_else(|| {
                        Utc.timestamp_millis_opt(first).single().unwrap_or_default()
                    }),
                    q.to.unwrap_or_else(|| {
                        Utc.timestamp_millis_opt(last).single().unwrap_or_default()
                    }),
                ),
            };
            MeterQueryRow {
                value: value_of(meter.meter.aggregation, &agg)
                    .to_f64()
                    .unwrap_or(0.0),
                window_start: start,
                window_end: end,
                subject,
                customer_id,
                group_by: keys
                    .iter()
                    .zip(values)
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }
        })
        .collect();
    Ok(MeterQueryResult {
        from: q.from,
        to: q.to,
        window_size: q.window_size,
        data,
    })
}

/// The group-by keys a query answers by, in OpenMeter's order: those asked for, then `subject`
/// when filtering by subject and `customer_id` when filtering by customer.
pub fn effective_group_by(q: &MeterQuery) -> Vec<String> {
    let mut keys = q.group_by.clone();
    if !q.subjects.is_empty() && !keys.iter().any(|k| k == "subject") {
        keys.push("subject".into());
    }
    if !q.customers.is_empty() && !keys.iter().any(|k| k == "customer_id") {
        keys.push("customer_id".into());
    }
    keys
}

/// The result as CSV, in OpenMeter's layout: `window_start,window_end`, then `subject` (and
/// `subject_display_name` when any row's subject is a known subject) when grouped by subject,
/// then the other group-by keys (`customer_id` among them), then `value` (`%f`).
/// `display_names` maps subject keys to display names.
pub fn to_csv(
    result: &MeterQueryResult,
    q: &MeterQuery,
    display_names: &BTreeMap<String, Option<String>>,
) -> String {
    let group_by = effective_group_by(q);
    let by_subject = group_by.iter().any(|k| k == "subject");
    let keys: Vec<&String> = group_by.iter().filter(|k| *k != "subject").collect();
    let names = by_subject
        && result.data.iter().any(|r| {
            r.subject
                .as_ref()
                .is_some_and(|s| display_names.contains_key(s))
        });
    let esc = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    };
    let mut header = vec!["window_start".to_owned(), "window_end".to_owned()];
    if by_subject {
        header.push("subject".into());
    }
    if names {
        header.push("subject_display_name".into());
    }
    header.extend(keys.iter().map(|k| esc(k)));
    header.push("value".into());
    let mut out = header.join(",");
    out.push('\n');
    for row in &result.data {
        let mut cells = vec![
            row.window_start
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            row.window_end
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ];
        let subject = row.subject.as_deref().unwrap_or("");
        if by_subject {
            cells.push(esc(subject));
        }
        if names {
            let name = display_names.get(subject).cloned().flatten();
            cells.push(esc(name.as_deref().unwrap_or("")));
        }
        for k in &keys {
            let v = if k.as_str() == "customer_id" {
                row.customer_id.clone()
            } else {
                row.group_by.get(k.as_str()).cloned().flatten()
            };
            cells.push(esc(v.as_deref().unwrap_or("")));
        }
        cells.push(format!("{:.6}", row.value));
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}
