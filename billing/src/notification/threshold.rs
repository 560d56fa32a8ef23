//! The balance-threshold evaluator (OpenMeter's `entitlementbalancethreshold`, reference §4.5),
//! run after usage commits, off the ingest path.
//!
//! **Which thresholds fire.** With `totalAvailableGrantAmount` as the grants (a threshold is
//! skipped while it is 0): `usage_value` is active when `value < usage` (strict),
//! `usage_percentage` when `grants × value / 100 < usage`, `balance_value` when
//! `value > balance` (`0 >= balance` for 0). Per rule, the highest active usage threshold and the
//! lowest active balance threshold fire: a burst past 50 % and 80 % at once sends the 80 % event
//! only.
//!
//! **Once per threshold per usage period, never lost.** Each event carries a dedup key (kind,
//! rule, entitlement, usage period start, threshold), unique in the database, written in the same
//! transaction as the event and its deliveries. Evaluation reads committed usage, so it is a pure
//! function of stored state: running it twice, late, or on two replicas at once records each
//! crossing once. It runs for the subjects of every committed ingest (a signal, never awaited by
//! ingest; passes at least [`MIN_INTERVAL`] apart, so its cost is bounded at any ingest rate), for
//! everything at start-up (catching any crossing whose evaluation a crash cut off), after a clock
//! advance, and every [`SWEEP`] — so a crossing is never lost and never doubled.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use tokio::sync::Notify;

use super::model::{Channel, Rule, Threshold, ThresholdKind};
use super::payload::{EntitlementContext, threshold_data};
use super::{kinds, outbox};
use crate::balances;
use crate::clock::Clock;
use crate::entitlement::{Customer, Entitlement, EntitlementValue, Feature, Grant};
use crate::store::{Store, StoreError};

/// How often everything is evaluated even without ingest (grants starting, clock moves).
pub const SWEEP: Duration = Duration::from_secs(30);
/// The least time between two evaluations: under sustained ingest the subjects that changed
/// meanwhile are evaluated together, so evaluation costs at most one pass per interval however
/// fast usage arrives (and a crossing is seen within about this long).
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// Whether the threshold is active for `value` (§4.5).
pub fn active(t: &Threshold, value: &EntitlementValue) -> bool {
    let grants = value.total_available_grant_amount.unwrap_or_default();
    if grants.is_zero() {
        return false;
    }
    let usage = value.usage.unwrap_or_default();
    let balance = value.balance.unwrap_or_default();
    match t.kind() {
        Some(ThresholdKind::UsageValue) => t.value < usage,
        Some(ThresholdKind::UsagePercentage) => grants * t.value / Decimal::ONE_HUNDRED < usage,
        Some(ThresholdKind::BalanceValue) if t.value.is_zero() => Decimal::ZERO >= balance,
        Some(ThresholdKind::BalanceValue) => t.value > balance,
        None => false,
    }
}

/// The thresholds that fire for `value`: the highest active usage threshold (compared in usage
/// units) and the lowest active balance threshold.
pub fn select(thresholds: &[Threshold], value: &EntitlementValue) -> Vec<Threshold> {
    let grants = value.total_available_grant_amount.unwrap_or_default();
    let in_usage = |t: &Threshold| match t.kind() {
        Some(ThresholdKind::UsagePercentage) => grants * t.value / Decimal::ONE_HUNDRED,
        _ => t.value,
    };
    let active: Vec<&Threshold> = thresholds.iter().filter(|t| active(t, value)).collect();
    let usage = active
        .iter()
        .filter(|t| t.kind() != Some(ThresholdKind::BalanceValue))
        .max_by_key(|t| in_usage(t));
    let balance = active
        .iter()
        .filter(|t| t.kind() == Some(ThresholdKind::BalanceValue))
        .min_by_key(|t| t.value);
    usage
        .into_iter()
        .chain(balance)
        .map(|t| (*t).clone())
        .collect()
}

/// The dedup key of a threshold event.
pub fn dedup_key(
    rule: &str,
    entitlement: &str,
    period_from: DateTime<Utc>,
    t: &Threshold,
) -> String {
    let kind = if t.kind() == Some(ThresholdKind::BalanceValue) {
        "balance"
    } else {
        "usage"
    };
    format!(
        "{}:{kind}:{rule}:{entitlement}:{}:{}:{}",
        kinds::BALANCE_THRESHOLD,
        period_from.timestamp_millis(),
        t.kind,
        t.value.normalize()
    )
}

/// The start of `e`'s usage period holding `now`: the grid point, where usage is measured from,
/// or the last manual reset, whichever is latest.
pub fn period_start(e: &Entitlement, now: DateTime<Utc>) -> DateTime<Utc> {
    let (interval, anchor, measure_from) = e.period_basis();
    let (from, to) = interval.period_at(anchor, now.max(measure_from));
    let mut from = from.max(measure_from);
    if let Some(r) = e.resets.iter().map(|r| r.at).filter(|r| *r <= now).max() {
        from = from.max(r);
    }
    let _ = to;
    from
}

/// `e` with `currentUsagePeriod` and `lastReset` as the API shows them at `now`.
pub fn with_period(mut e: Entitlement, now: DateTime<Utc>) -> Entitlement {
    let (interval, anchor, measure_from) = e.period_basis();
    let (_, to) = interval.period_at(anchor, now.max(measure_from));
    e.current_usage_period = Some(json!({"from": period_start(&e, now), "to": to}));
    e.last_reset = e.resets.last().map(|r| r.at);
    e
}

/// What evaluation works on: metered entitlements with their feature, subjects and grants.
pub struct Subjects {
    customers: HashMap<String, Customer>,
    features: HashMap<String, Feature>,
    grants: HashMap<String, Vec<Grant>>,
}

impl Subjects {
    /// Loads customers, features and grants.
    pub async fn load(store: &Store) -> Result<Subjects, StoreError> {
        let mut grants: HashMap<String, Vec<Grant>> = HashMap::new();
        for g in store.list_entities::<Grant>("grant").await? {
            grants.entry(g.entitlement_id.clone()).or_default().push(g);
        }
        Ok(Subjects {
            customers: store
                .list_entities::<Customer>("customer")
                .await?
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect(),
            features: store
                .list_entities::<Feature>("feature")
                .await?
                .into_iter()
                .map(|f| (f.id.clone(), f))
                .collect(),
            grants,
        })
    }

    /// The customer of `e`, if any.
    pub fn customer(&self, e: &Entitlement) -> Option<&Customer> {
        e.customer_id.as_ref().and_then(|c| self.customers.get(c))
    }

    /// The subjects whose usage `e` meters.
    pub fn subjects(&self, e: &Entitlement) -> Vec<String> {
        match (self.customer(e), &e.subject_key) {
            (Some(c), _) => c.subjects(),
            (None, Some(s)) => vec![s.clone()],
            (None, None) => Vec::new(),
        }
    }

    /// `e`'s feature.
    pub fn feature(&self, e: &Entitlement) -> Option<&Feature> {
        self.features.get(&e.feature_id)
    }

    /// `e`'s grants.
    pub fn grants(&self, e: &Entitlement) -> &[Grant] {
        self.grants
            .get(&e.id)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// Evaluates every metered entitlement (of `only`'s subjects, when given) against the live
/// balance-threshold rules at `now`; how many events were recorded.
pub async fn evaluate(
    store: &Store,
    now: DateTime<Utc>,
    only: Option<&HashSet<String>>,
) -> Result<usize, StoreError> {
    let (rules, channels) = outbox::rules_and_channels(store, kinds::BALANCE_THRESHOLD).await?;
    if rules.is_empty() {
        return Ok(0);
    }
    let ctx = Subjects::load(store).await?;
    let mut recorded = 0;
    // Entitlements to evaluate, per feature: each feature's balances are read together
    // (one usage read for all of them, [`crate::balances`]).
    let mut by_feature: HashMap<String, Vec<(Entitlement, Vec<String>)>> = HashMap::new();
    for e in store.list_entities::<Entitlement>("entitlement").await? {
        if e.kind != "metered" {
            continue;
        }
        let subjects = ctx.subjects(&e);
        if only.is_some_and(|only| !subjects.iter().any(|s| only.contains(s))) {
            continue;
        }
        let Some(feature) = ctx.feature(&e) else {
            continue;
        };
        if !rules.iter().any(|r| r.covers(&feature.id, &feature.key)) {
            continue;
        }
        by_feature
            .entry(feature.id.clone())
            .or_default()
            .push((e, subjects));
    }
    let mut features: Vec<_> = by_feature.into_iter().collect();
    features.sort_by(|a, b| a.0.cmp(&b.0));
    for (feature_id, ents) in features {
        let Some(feature) = ctx.features.get(&feature_id) else {
            continue;
        };
        let batch: Vec<balances::Evaluation<'_>> = ents
            .iter()
            .map(|(e, subjects)| balances::Evaluation {
                entitlement: e,
                subjects,
                grants: ctx.grants(e),
            })
            .collect();
        let values = balances::values(store, feature, &batch, now).await?;
        for ((e, subjects), value) in ents.iter().zip(values) {
            recorded += record(
                store, &rules, &channels, &ctx, feature, e, subjects, value, now,
            )
            .await?;
        }
    }
    Ok(recorded)
}

/// Records the events of `e`'s thresholds that `value` crosses (each once per usage period);
/// how many were new.
#[allow(clippy::too_many_arguments)]
async fn record(
    store: &Store,
    rules: &[Rule],
    channels: &[Channel],
    ctx: &Subjects,
    feature: &Feature,
    e: &Entitlement,
    subjects: &[String],
    value: EntitlementValue,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let mut recorded = 0;
    let covering: Vec<&Rule> = rules
        .iter()
        .filter(|r| r.covers(&feature.id, &feature.key))
        .collect();
    let value = value.v1();
    let from = period_start(e, now);
    let shown = with_period(e.clone(), now);
    for rule in covering {
        for t in select(rule.thresholds.as_deref().unwrap_or_default(), &value) {
            let key = dedup_key(&rule.id, &e.id, from, &t);
            if store.notification_deduped(&key).await? {
                continue;
            }
            let subject = subjects.first().map(String::as_str).unwrap_or_default();
            let data = threshold_data(
                &EntitlementContext {
                    entitlement: &shown,
                    feature,
                    subject,
                    customer: ctx.customer(e),
                    value: &value,
                },
                &t,
            );
            let event = outbox::new_event(rule, channels, now, data, Some(key), json!({}));
            if store.record_notification(&event).await? {
                tracing::info!(rule = %rule.id, entitlement = %e.id, threshold = %t.value,
                               kind = %t.kind, "balance threshold crossed: event recorded");
                recorded += 1;
            }
        }
    }
    Ok(recorded)
}

/// What is waiting to be evaluated.
#[derive(Default)]
struct Dirty {
    all: bool,
    subjects: HashSet<String>,
}

/// The evaluator's background task and its inbox: ingest (and the clock) mark what changed and
/// return at once; the task evaluates it, and wakes the delivery worker when it recorded events.
pub struct Evaluator {
    store: Arc<Store>,
    clock: Arc<Clock>,
    dirty: Mutex<Dirty>,
    wake: Notify,
    deliveries: Arc<Notify>,
}

impl Evaluator {
    /// An evaluator; `deliveries` is the delivery worker's wake-up.
    pub fn new(store: Arc<Store>, clock: Arc<Clock>, deliveries: Arc<Notify>) -> Arc<Evaluator> {
        Arc::new(Evaluator {
            store,
            clock,
            dirty: Mutex::new(Dirty {
                all: true,
                subjects: HashSet::new(),
            }),
            wake: Notify::new(),
            deliveries,
        })
    }

    /// Usage of these subjects was committed.
    pub fn usage_changed(&self, subjects: impl IntoIterator<Item = String>) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .subjects
            .extend(subjects);
        self.wake.notify_one();
    }

    /// Anything may have changed (the clock moved, grants changed).
    pub fn everything_changed(&self) {
        self.dirty.lock().unwrap_or_else(|e| e.into_inner()).all = true;
        self.wake.notify_one();
    }

    /// Wakes the delivery worker (an event was recorded elsewhere).
    pub fn deliver_now(&self) {
        self.deliveries.notify_one();
    }

    /// The task: evaluates what is dirty until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            let work = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
            if work.all || !work.subjects.is_empty() {
                let only = (!work.all).then_some(&work.subjects);
                let result = match self.clock.now().await {
                    Ok(now) => evaluate(&self.store, now, only).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(0) => tokio::time::sleep(MIN_INTERVAL).await,
                    Ok(n) => {
                        tracing::debug!(events = n, "thresholds evaluated");
                        self.deliveries.notify_one();
                        tokio::time::sleep(MIN_INTERVAL).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "threshold evaluation failed; retrying");
                        {
                            let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
                            d.all |= work.all;
                            d.subjects.extend(work.subjects);
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            if tokio::time::timeout(SWEEP, self.wake.notified())
                .await
                .is_err()
            {
                self.dirty.lock().unwrap_or_else(|e| e.into_inner()).all = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(usage: i64, grants: i64) -> EntitlementValue {
        EntitlementValue {
            has_access: true,
            usage: Some(Decimal::from(usage)),
            balance: Some(Decimal::from(grants - usage)),
            total_available_grant_amount: Some(Decimal::from(grants)),
            ..EntitlementValue::no_access()
        }
    }

    fn t(v: i64, kind: &str) -> Threshold {
        Threshold {
            value: Decimal::from(v),
            kind: kind.into(),
        }
    }

    #[test]
    fn the_highest_usage_and_lowest_balance_threshold_fire() {
        let ts = [
            t(50, "usage_percentage"),
            t(80, "PERCENT"),
            t(100, "usage_percentage"),
            t(30, "balance_value"),
            t(10, "balance_value"),
        ];
        // Exactly 50 %: strict, nothing yet.
        assert!(select(&ts, &value(500, 1000)).is_empty());
        assert_eq!(
            select(&ts, &value(501, 1000)),
            vec![t(50, "usage_percentage")]
        );
        // A burst past 50 and 80 at once: 80 only; balance 5 is below 30 and 10: the lowest, 10.
        assert_eq!(
            select(&ts, &value(995, 1000)),
            vec![t(80, "PERCENT"), t(10, "balance_value")]
        );
        // No grants: nothing is measured.
        assert!(select(&ts, &value(10, 0)).is_empty());
        // A usage value is compared in usage units with percentages.
        let mixed = [t(600, "usage_value"), t(50, "usage_percentage")];
        assert_eq!(
            select(&mixed, &value(700, 1000)),
            vec![t(600, "usage_value")]
        );
    }

    #[test]
    fn dedup_keys_differ_by_threshold_and_period_only() {
        let p1: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let p2: DateTime<Utc> = "2026-02-01T00:00:00Z".parse().unwrap();
        let a = dedup_key("r", "e", p1, &t(50, "usage_percentage"));
        assert_eq!(a, dedup_key("r", "e", p1, &t(50, "usage_percentage")));
        assert_ne!(a, dedup_key("r", "e", p2, &t(50, "usage_percentage")));
        assert_ne!(a, dedup_key("r", "e", p1, &t(80, "usage_percentage")));
    }
}
