//! Customers, features, entitlements and grants, and the entitlement value engine
//! (reference/openmeter-api.md §3 "How balance is computed").
//!
//! Balance is derived, not stored: from the first usage period that matters to `at`, usage is
//! replayed at minute resolution in segments that break at every period boundary, reset, and
//! grant activation or expiry. In each segment usage burns the active grants in OpenMeter's order
//! (lower `priority` first, then earlier expiry, then earlier creation); what no grant covers is
//! overage. At each period boundary every grant's balance rolls over as
//! `min(maxRolloverAmount, max(balance, minRolloverAmount))`, `issueAfterReset` issues a fresh
//! grant, and overage is carried only with `preserveOverageAtReset`.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Months, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::duration::IsoDuration;
use crate::filter::{FilterString, compile_group_filters, group_passes};
use crate::meter::Aggregation;
use crate::query::value_of;
use crate::store::{MinuteAgg, Store, StoreError, minute_of};

/// `usageAttribution`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageAttribution {
    /// Subjects whose events belong to the customer.
    #[serde(default)]
    pub subject_keys: Vec<String>,
}

/// A customer (v1 `Customer`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    /// Id.
    #[serde(default)]
    pub id: String,
    /// Name.
    pub name: String,
    /// Key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Subjects.
    #[serde(default)]
    pub usage_attribution: UsageAttribution,
    /// Email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_email: Option<String>,
    /// ISO 4217.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Created.
    #[serde(default = "Utc::now")]
    pub created_at: DateTime<Utc>,
    /// Updated.
    #[serde(default = "Utc::now")]
    pub updated_at: DateTime<Utc>,
}

impl Customer {
    /// Every subject whose usage is the customer's: its key and its subject keys.
    pub fn subjects(&self) -> Vec<String> {
        let mut s: Vec<String> = self.key.iter().cloned().collect();
        s.extend(self.usage_attribution.subject_keys.iter().cloned());
        s.sort();
        s.dedup();
        s
    }
}

/// A feature (v1 `Feature`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Feature {
    /// Id.
    #[serde(default)]
    pub id: String,
    /// Key.
    pub key: String,
    /// Name.
    pub name: String,
    /// The meter behind it (SUM or COUNT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_slug: Option<String>,
    /// Exact-match filters on the meter's group-by values (OpenMeter's deprecated form: the
    /// `$eq` filters of `advancedMeterGroupByFilters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_group_by_filters: Option<BTreeMap<String, String>>,
    /// `FilterString` per group-by key of the meter; wins over `meterGroupByFilters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advanced_meter_group_by_filters: Option<BTreeMap<String, FilterString>>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Created.
    #[serde(default = "Utc::now")]
    pub created_at: DateTime<Utc>,
    /// Updated.
    #[serde(default = "Utc::now")]
    pub updated_at: DateTime<Utc>,
    /// Archived (DELETE archives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<DateTime<Utc>>,
}

impl Feature {
    /// The group-by filters in force: `advancedMeterGroupByFilters` when set, else
    /// `meterGroupByFilters` as `$eq` filters.
    pub fn group_filters(&self) -> BTreeMap<String, FilterString> {
        match &self.advanced_meter_group_by_filters {
            Some(a) if !a.is_empty() => a.clone(),
            _ => self
                .meter_group_by_filters
                .iter()
                .flatten()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        FilterString {
                            eq: Some(v.clone()),
                            ..FilterString::default()
                        },
                    )
                })
                .collect(),
        }
    }

    /// Whether the feature filters on group-by key `k`.
    pub fn filters_group_by(&self, k: &str) -> bool {
        self.group_filters().contains_key(k)
    }
}

/// `usagePeriod`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsagePeriod {
    /// `DAY|WEEK|MONTH|YEAR` or an ISO 8601 duration.
    pub interval: String,
    /// Start of the first period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<DateTime<Utc>>,
}

/// A usage period length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Interval {
    /// A fixed length.
    Fixed(Duration),
    /// Calendar months.
    Months(u32),
}

impl Interval {
    /// Parses `DAY|WEEK|MONTH|YEAR` or a simple ISO 8601 duration (`PT1H`, `P1D`, `P2W`, `P1M`, `P1Y`).
    pub fn parse(s: &str) -> Result<Interval, String> {
        match s {
            "DAY" => return Ok(Interval::Fixed(Duration::days(1))),
            "WEEK" => return Ok(Interval::Fixed(Duration::weeks(1))),
            "MONTH" => return Ok(Interval::Months(1)),
            "YEAR" => return Ok(Interval::Months(12)),
            _ => {}
        }
        let bad =
            || format!("{s:?} is not DAY, WEEK, MONTH, YEAR or an ISO 8601 duration like P1D");
        let d = IsoDuration::parse(s).map_err(|_| bad())?;
        match (d.months, d.fixed.is_zero()) {
            (0, false) if d.fixed >= Duration::hours(1) => Ok(Interval::Fixed(d.fixed)),
            (0, false) => Err(format!("{s:?}: the shortest usage period is PT1H")),
            (m, true) if m > 0 => Ok(Interval::Months(m)),
            _ => Err(bad()),
        }
    }

    /// `anchor + n` periods.
    pub fn step(&self, anchor: DateTime<Utc>, n: i64) -> DateTime<Utc> {
        match *self {
            Interval::Fixed(d) => anchor + d * n as i32,
            Interval::Months(m) => {
                let total = m as i64 * n;
                if total >= 0 {
                    anchor
                        .checked_add_months(Months::new(total as u32))
                        .unwrap_or(anchor)
                } else {
                    anchor
                        .checked_sub_months(Months::new((-total) as u32))
                        .unwrap_or(anchor)
                }
            }
        }
    }

    /// The period `[start, end)` that contains `at`.
    pub fn period_at(
        &self,
        anchor: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> (DateTime<Utc>, DateTime<Utc>) {
        let mut n = match *self {
            Interval::Fixed(d) => (at - anchor)
                .num_milliseconds()
                .div_euclid(d.num_milliseconds().max(1)),
            Interval::Months(m) => {
                use chrono::Datelike;
                let months = (at.year() as i64 - anchor.year() as i64) * 12 + at.month() as i64
                    - anchor.month() as i64;
                months.div_euclid(m as i64)
            }
        };
        while self.step(anchor, n) > at {
            n -= 1;
        }
        while self.step(anchor, n + 1) <= at {
            n += 1;
        }
        (self.step(anchor, n), self.step(anchor, n + 1))
    }
}

/// A manual reset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reset {
    /// When.
    pub at: DateTime<Utc>,
    /// Overage carried across this reset.
    pub preserve_overage: bool,
}

/// An entitlement (metered, boolean or static), for a customer or (v1) a subject.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entitlement {
    /// `metered`, `boolean` or `static`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Id.
    #[serde(default)]
    pub id: String,
    /// Feature.
    #[serde(default)]
    pub feature_id: String,
    /// Feature key.
    #[serde(default)]
    pub feature_key: String,
    /// v2: customer id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// v2: customer key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_key: Option<String>,
    /// v1: subject key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_key: Option<String>,
    /// Soft limits never deny.
    #[serde(default)]
    pub is_soft_limit: bool,
    /// Usage period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_period: Option<UsagePeriod>,
    /// Carry overage into the next period.
    #[serde(default)]
    pub preserve_overage_at_reset: bool,
    /// A grant of this amount at every reset.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::float_option"
    )]
    pub issue_after_reset: Option<Decimal>,
    /// Its priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue_after_reset_priority: Option<u8>,
    /// Static config (a JSON string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Usage counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measure_usage_from: Option<DateTime<Utc>>,
    /// Manual resets.
    #[serde(default)]
    pub resets: Vec<Reset>,
    /// Last reset (for display).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<DateTime<Utc>>,
    /// Current period (for display; recomputed on read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_usage_period: Option<Value>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Read-only annotations: `subscription.id` and `subscription.item.id` on an entitlement a
    /// subscription provisioned ([`crate::subscription::provision`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
    /// Created.
    #[serde(default = "Utc::now")]
    pub created_at: DateTime<Utc>,
    /// Updated.
    #[serde(default = "Utc::now")]
    pub updated_at: DateTime<Utc>,
}

impl Entitlement {
    /// What its usage periods are made of, as the balance engine uses them: the interval, the
    /// anchor of its grid (`usagePeriod.anchor`, else where usage is measured from) and the
    /// minute usage is measured from (`measureUsageFrom`, else creation).
    pub fn period_basis(&self) -> (Interval, DateTime<Utc>, DateTime<Utc>) {
        let measure_from = self.measure_usage_from.unwrap_or(self.created_at);
        let measure_from =
            DateTime::from_timestamp_millis(minute_of(measure_from.timestamp_millis()))
                .unwrap_or(measure_from);
        let interval = self
            .usage_period
            .as_ref()
            .and_then(|p| Interval::parse(&p.interval).ok())
            .unwrap_or(Interval::Months(1));
        let anchor = self
            .usage_period
            .as_ref()
            .and_then(|p| p.anchor)
            .unwrap_or(measure_from);
        (interval, anchor, measure_from)
    }

    /// The first automatic usage-period boundary (a reset) after `t`: the end of the period that
    /// holds `t` on the anchor's grid (`anchor + n` periods, so month ends do not drift).
    pub fn next_period_boundary(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let (interval, anchor, measure_from) = self.period_basis();
        interval.period_at(anchor, t.max(measure_from)).1
    }
}

/// `expiration`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Expiration {
    /// `HOUR|DAY|WEEK|MONTH|YEAR`.
    pub duration: String,
    /// How many.
    pub count: u32,
}

/// A grant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// Id.
    #[serde(default)]
    pub id: String,
    /// Entitlement.
    #[serde(default)]
    pub entitlement_id: String,
    /// Amount.
    #[serde(with = "rust_decimal::serde::float")]
    pub amount: Decimal,
    /// 1..255, lower burns first.
    #[serde(default = "one")]
    pub priority: u8,
    /// Effective from (rounded up to the minute).
    pub effective_at: DateTime<Utc>,
    /// Expiry rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Expiration>,
    /// Computed expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Rollover floor.
    #[serde(default, with = "rust_decimal::serde::float")]
    pub min_rollover_amount: Decimal,
    /// Rollover cap (defaults to `amount`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::float_option"
    )]
    pub max_rollover_amount: Option<Decimal>,
    /// The grant refills to `amount` at every recurrence boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurrence: Option<UsagePeriod>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Created.
    #[serde(default = "Utc::now")]
    pub created_at: DateTime<Utc>,
    /// Voided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voided_at: Option<DateTime<Utc>>,
}

fn one() -> u8 {
    1
}

impl Grant {
    /// Normalises a created grant: effectiveAt up to the minute, expiresAt from expiration.
    pub fn normalise(&mut self) -> Result<(), String> {
        let ms = self.effective_at.timestamp_millis();
        let up = if ms % 60_000 == 0 {
            ms
        } else {
            minute_of(ms) + 60_000
        };
        self.effective_at = DateTime::from_timestamp_millis(up).unwrap_or(self.effective_at);
        if self.priority == 0 {
            return Err("priority: must be 1..255".into());
        }
        if self.amount < Decimal::ZERO {
            return Err("amount: must not be negative".into());
        }
        if let Some(r) = &self.recurrence {
            Interval::parse(&r.interval).map_err(|m| format!("recurrence.interval: {m}"))?;
        }
        if let Some(e) = &self.expiration {
            let step = match e.duration.as_str() {
                "HOUR" => Interval::Fixed(Duration::hours(1)),
                "DAY" => Interval::Fixed(Duration::days(1)),
                "WEEK" => Interval::Fixed(Duration::weeks(1)),
                "MONTH" => Interval::Months(1),
                "YEAR" => Interval::Months(12),
                other => {
                    return Err(format!(
                        "expiration.duration: {other:?} is not HOUR, DAY, WEEK, MONTH or YEAR"
                    ));
                }
            };
            self.expires_at = Some(step.step(self.effective_at, e.count as i64));
        }
        Ok(())
    }

    /// Recurrence boundaries of this grant in `(from, to)`.
    fn recurrences_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let Some(r) = &self.recurrence else {
            return Vec::new();
        };
        let Ok(interval) = Interval::parse(&r.interval) else {
            return Vec::new();
        };
        let anchor = r.anchor.unwrap_or(self.effective_at);
        let mut out = Vec::new();
        let (mut t, _) = interval.period_at(anchor, from.max(self.effective_at));
        while t < to {
            if t > from && t > self.effective_at {
                out.push(t);
            }
            // On the anchor's grid (`anchor + n` periods), so month ends do not drift.
            t = interval.period_at(anchor, t).1;
        }
        out
    }

    /// The first recurrence boundary (refill) after `t`, if the grant recurs.
    pub fn next_recurrence(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let r = self.recurrence.as_ref()?;
        let interval = Interval::parse(&r.interval).ok()?;
        let anchor = r.anchor.unwrap_or(self.effective_at);
        Some(interval.period_at(anchor, t.max(self.effective_at)).1)
    }

    /// Whether it is in force at `t` (effective, not expired, not voided).
    pub fn active_at(&self, t: DateTime<Utc>) -> bool {
        self.effective_at <= t
            && self.expires_at.is_none_or(|e| t < e)
            && self.voided_at.is_none_or(|v| t < v)
    }
}

/// `EntitlementValue` (v1) / `EntitlementValueV2`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EntitlementValue {
    /// Whether access is granted.
    pub has_access: bool,
    /// Metered: remaining balance.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::float_option"
    )]
    pub balance: Option<Decimal>,
    /// Metered: usage in the current period.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::float_option"
    )]
    pub usage: Option<Decimal>,
    /// Metered: usage not covered by grants.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::float_option"
    )]
    pub overage: Option<Decimal>,
    /// Metered: grant amount available in the period.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::float_option"
    )]
    pub total_available_grant_amount: Option<Decimal>,
    /// Static: the config string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Metered, v2 only: each active grant's balance by grant id (`grantBalances`). The grant
    /// `issueAfterReset` issues shows as `issue-after-reset@<period start>`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "balances_as_numbers"
    )]
    pub grant_balances: Option<BTreeMap<String, Decimal>>,
}

fn balances_as_numbers<S: serde::Serializer>(
    balances: &Option<BTreeMap<String, Decimal>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use rust_decimal::prelude::ToPrimitive;
    use serde::ser::SerializeMap;
    let Some(b) = balances else {
        return s.serialize_none();
    };
    let mut map = s.serialize_map(Some(b.len()))?;
    for (id, v) in b {
        map.serialize_entry(id, &v.to_f64().unwrap_or(0.0))?;
    }
    map.end()
}

impl EntitlementValue {
    /// The v1 shape (`EntitlementValue`): no `grantBalances`.
    pub fn v1(mut self) -> Self {
        self.grant_balances = None;
        self
    }
}

impl EntitlementValue {
    /// No entitlement: no access.
    pub fn no_access() -> Self {
        EntitlementValue {
            has_access: false,
            balance: None,
            usage: None,
            overage: None,
            total_available_grant_amount: None,
            config: None,
            grant_balances: None,
        }
    }
}

/// Usage of a feature for some subjects in `[from, to)`.
pub async fn usage_between(
    store: &Store,
    feature: &Feature,
    subjects: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Decimal, StoreError> {
    let Some(slug) = &feature.meter_slug else {
        return Ok(Decimal::ZERO);
    };
    let Some(meter) = store.meter(slug) else {
        return Ok(Decimal::ZERO);
    };
    if subjects.is_empty() || from >= to {
        return Ok(Decimal::ZERO);
    }
    // Checked when the feature was created; a filter that no longer compiles counts nothing
    // rather than everything.
    let Ok(filters) = compile_group_filters(
        "advancedMeterGroupByFilters",
        &feature.group_filters(),
        |_| true,
    ) else {
        tracing::warn!(feature = %feature.key, "feature group-by filters do not compile");
        return Ok(Decimal::ZERO);
    };
    let mut agg = MinuteAgg::default();
    for (_, group, _, a) in store
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
    let aggregation = match meter.meter.aggregation {
        Aggregation::Count => Aggregation::Count,
        _ => Aggregation::Sum,
    };
    Ok(value_of(aggregation, &agg))
}

struct LiveGrant {
    grant: Grant,
    balance: Decimal,
}

/// The value of `ent` at `at` for `subjects`: usage counts at minute resolution, so the minute
/// `at` falls in is included.
pub async fn value(
    store: &Store,
    ent: &Entitlement,
    feature: &Feature,
    subjects: &[String],
    grants: &[Grant],
    at: DateTime<Utc>,
) -> Result<EntitlementValue, StoreError> {
    let mut live = Live {
        store,
        feature,
        subjects,
    };
    value_until(&mut live, ent, grants, value_end(at), at).await
}

/// Where [`value`] stops counting usage for `at`: the end of `at`'s minute.
pub(crate) fn value_end(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(minute_of(at.timestamp_millis()) + 60_000).unwrap_or(at)
}

/// Where the balance engine gets a segment's usage from: the store one segment at a time
/// ([`Live`]), or a batch read once for many entitlements ([`crate::balances`]). Which segments
/// an entitlement asks for depends on its periods, resets and grants only, never on usage.
pub(crate) trait UsageSource {
    /// Usage in `[from, to)`.
    async fn usage(
        &mut self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Decimal, StoreError>;
}

/// Usage read from the store per segment.
struct Live<'a> {
    store: &'a Store,
    feature: &'a Feature,
    subjects: &'a [String],
}

impl UsageSource for Live<'_> {
    async fn usage(
        &mut self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Decimal, StoreError> {
        usage_between(self.store, self.feature, self.subjects, from, to).await
    }
}

/// The value at the instant `at`, counting usage strictly before `at` (for history windows:
/// the balance at a window's start, after any grant that starts or refills exactly then).
pub async fn value_at_instant(
    store: &Store,
    ent: &Entitlement,
    feature: &Feature,
    subjects: &[String],
    grants: &[Grant],
    at: DateTime<Utc>,
) -> Result<EntitlementValue, StoreError> {
    let mut live = Live {
        store,
        feature,
        subjects,
    };
    value_until(&mut live, ent, grants, at, at).await
}

/// Usage in `[.., until)`, grants as they stand at `check_at`.
pub(crate) async fn value_until(
    source: &mut impl UsageSource,
    ent: &Entitlement,
    grants: &[Grant],
    until: DateTime<Utc>,
    check_at: DateTime<Utc>,
) -> Result<EntitlementValue, StoreError> {
    let at = until;
    match ent.kind.as_str() {
        "boolean" => {
            return Ok(EntitlementValue {
                has_access: true,
                ..EntitlementValue::no_access()
            });
        }
        "static" => {
            return Ok(EntitlementValue {
                has_access: true,
                config: ent.config.clone(),
                ..EntitlementValue::no_access()
            });
        }
        _ => {}
    }
    let (_, _, measure_from) = ent.period_basis();

    // Period boundaries from measure_from to at: anchor steps plus manual resets.
    let mut boundaries: Vec<(DateTime<Utc>, bool)> = Vec::new(); // (time, preserve overage)
    let mut next = ent.next_period_boundary(measure_from);
    while next <= at {
        boundaries.push((next, ent.preserve_overage_at_reset));
        next = ent.next_period_boundary(next);
    }
    for r in &ent.resets {
        if r.at > measure_from && r.at <= at {
            boundaries.push((r.at, r.preserve_overage));
        }
    }
    boundaries.sort_by_key(|b| b.0);

    let mut live: Vec<LiveGrant> = Vec::new();
    let mut period_start = measure_from;
    let mut overage = Decimal::ZERO;
    let mut period_usage = Decimal::ZERO;
    let mut available = Decimal::ZERO;
    let issue = |start: DateTime<Utc>| {
        ent.issue_after_reset
            .filter(|a| *a > Decimal::ZERO)
            .map(|amount| LiveGrant {
                grant: Grant {
                    id: format!("issue-after-reset@{start}"),
                    entitlement_id: ent.id.clone(),
                    amount,
                    priority: ent.issue_after_reset_priority.unwrap_or(1),
                    effective_at: start,
                    expiration: None,
                    expires_at: None,
                    min_rollover_amount: Decimal::ZERO,
                    max_rollover_amount: Some(Decimal::ZERO),
                    recurrence: None,
                    metadata: None,
                    created_at: start,
                    voided_at: None,
                },
                balance: amount,
            })
    };
    live.extend(issue(period_start));
    available += live.iter().map(|g| g.balance).sum::<Decimal>();
    let mut added: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut bounds = boundaries.into_iter().peekable();
    loop {
        let period_end = bounds.peek().map(|b| b.0).unwrap_or(at);
        // Segment the period at grant activations and expiries.
        let mut cuts: Vec<DateTime<Utc>> = vec![period_start, period_end];
        for g in grants {
            for t in [Some(g.effective_at), g.expires_at, g.voided_at]
                .into_iter()
                .flatten()
            {
                if t > period_start && t < period_end {
                    cuts.push(t);
                }
            }
            cuts.extend(g.recurrences_between(period_start, period_end));
        }
        cuts.sort();
        cuts.dedup();
        for w in cuts.windows(2) {
            let (s, e) = (w[0], w[1]);
            // Recurring grants refill at their own boundaries.
            for g in live.iter_mut() {
                if g.grant
                    .recurrences_between(
                        s - Duration::milliseconds(1),
                        s + Duration::milliseconds(1),
                    )
                    .contains(&s)
                {
                    g.balance = g.grant.amount;
                }
            }
            for g in grants {
                if g.active_at(s) && !added.contains(&g.id) {
                    added.insert(g.id.clone());
                    available += g.amount;
                    live.push(LiveGrant {
                        grant: g.clone(),
                        balance: g.amount,
                    });
                }
            }
            let mut u = source.usage(s, e).await?;
            period_usage += u;
            // Burn order: priority, then earlier expiry (none last), then earlier creation.
            live.sort_by(|a, b| {
                (
                    a.grant.priority,
                    a.grant.expires_at.is_none(),
                    a.grant.expires_at,
                    a.grant.created_at,
                )
                    .cmp(&(
                        b.grant.priority,
                        b.grant.expires_at.is_none(),
                        b.grant.expires_at,
                        b.grant.created_at,
                    ))
            });
            // Overage carried from an earlier period burns first.
            if overage > Decimal::ZERO {
                u += overage;
                overage = Decimal::ZERO;
            }
            for g in live.iter_mut().filter(|g| g.grant.active_at(s)) {
                let take = g.balance.min(u);
                g.balance -= take;
                u -= take;
            }
            overage += u;
        }
        let Some((boundary, preserve)) = bounds.next() else {
            break;
        };
        // Reset: roll every grant over, drop expired ones, issue afresh.
        live.retain(|g| g.grant.active_at(boundary));
        for g in &mut live {
            let max = g.grant.max_rollover_amount.unwrap_or(g.grant.amount);
            g.balance = max.min(g.balance.max(g.grant.min_rollover_amount));
        }
        live.retain(|g| !g.grant.id.starts_with("issue-after-reset@"));
        live.extend(issue(boundary));
        available = live.iter().map(|g| g.balance).sum();
        if !preserve {
            overage = Decimal::ZERO;
        }
        period_usage = Decimal::ZERO;
        period_start = boundary;
    }
    // What happens exactly at `check_at`: grants that start, grants that refill.
    if check_at >= at {
        for g in grants {
            if g.active_at(check_at) && !added.contains(&g.id) {
                available += g.amount;
                live.push(LiveGrant {
                    grant: g.clone(),
                    balance: g.amount,
                });
            }
        }
        for g in live.iter_mut() {
            if g.grant
                .recurrences_between(
                    check_at - Duration::milliseconds(1),
                    check_at + Duration::milliseconds(1),
                )
                .contains(&check_at)
            {
                g.balance = g.grant.amount;
            }
        }
    }
    let active: BTreeMap<String, Decimal> = live
        .iter()
        .filter(|g| g.grant.active_at(check_at))
        .map(|g| (g.grant.id.clone(), g.balance))
        .collect();
    let balance: Decimal = active.values().copied().sum();
    Ok(EntitlementValue {
        has_access: ent.is_soft_limit || balance > Decimal::ZERO,
        balance: Some(balance),
        usage: Some(period_usage),
        overage: Some(overage),
        total_available_grant_amount: Some(available),
        config: None,
        grant_balances: Some(active),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_and_periods_contain_the_instant() {
        assert_eq!(
            Interval::parse("DAY").unwrap(),
            Interval::Fixed(Duration::days(1))
        );
        assert_eq!(Interval::parse("P1M").unwrap(), Interval::Months(1));
        assert_eq!(
            Interval::parse("PT2H").unwrap(),
            Interval::Fixed(Duration::hours(2))
        );
        assert!(Interval::parse("PT5M").unwrap_err().contains("PT1H"));
        assert!(Interval::parse("fortnight").is_err());
        let anchor: DateTime<Utc> = "2026-01-31T00:00:00Z".parse().unwrap();
        let at: DateTime<Utc> = "2026-03-15T12:00:00Z".parse().unwrap();
        let (s, e) = Interval::Months(1).period_at(anchor, at);
        assert!(s <= at && at < e, "{s} {e}");
    }
}
