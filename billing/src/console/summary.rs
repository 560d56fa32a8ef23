//! The overview's expensive figures: the top consumers of each meter this month and the
//! entitlements near or over their limit. Both read what the API reads (the meters' usage
//! rollups through [`crate::store::Store::usage`], balances through
//! [`crate::balances::values`], one usage read per feature), but over every customer at once,
//! which at 10,000 customers
//! takes longer than a page may. So they are computed off the request path and kept: a page
//! shows the last snapshot with its time and, when that is older than its lifetime (or there is
//! none yet), starts a refresh in the background (one at a time). The lifetime grows with what a snapshot costs
//! (ten times its computation, at least [`MIN_TTL`]), so a big installation is not kept busy
//! recomputing. On the simulated clock a snapshot is for one instant: when the clock has moved,
//! the page waits for a new one. The console's own actions drop the snapshot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use rust_decimal::Decimal;

use super::Console;
use crate::balances;
use crate::entitlement::{self, Customer, Entitlement, Feature, Grant};
use crate::query::value_of;
use crate::store::{MinuteAgg, StoreError};

/// The shortest a snapshot is kept on real time.
pub const MIN_TTL: Duration = Duration::from_secs(15);
/// Consumers shown per meter.
pub const TOP_N: usize = 5;
/// An entitlement is near its limit below this share of what it was granted.
pub const NEAR_SHARE: Decimal = Decimal::from_parts(2, 0, 0, false, 1); // 0.2

/// Who consumed: a customer (its subjects together) or a subject no customer owns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Consumer {
    /// A customer: id and name.
    Customer(String, String),
    /// A bare subject.
    Subject(String),
}

/// One meter's top consumers.
pub struct TopMeter {
    /// The meter's slug.
    pub slug: String,
    /// Its aggregation, for the heading.
    pub aggregation: String,
    /// Largest first.
    pub consumers: Vec<(Consumer, Decimal)>,
    /// Consumers with usage in the period.
    pub total_consumers: usize,
}

/// How close to its limit an entitlement is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    /// No balance left (or overage).
    Over,
    /// Less than [`NEAR_SHARE`] of what was granted left.
    Near,
}

/// An entitlement near or over its limit.
pub struct LimitRow {
    /// Over or near.
    pub pressure: Pressure,
    /// Whose: the customer (id, name) or the subject.
    pub owner: Consumer,
    /// Feature key.
    pub feature_key: String,
    /// Balance.
    pub balance: Decimal,
    /// Usage this period.
    pub usage: Decimal,
    /// Granted this period.
    pub granted: Decimal,
    /// Overage.
    pub overage: Decimal,
    /// Soft limits never deny.
    pub soft: bool,
}

/// What the overview shows, as of one instant.
pub struct Snapshot {
    /// Billing's time it was computed for.
    pub at: DateTime<Utc>,
    /// Start of the period the top consumers cover (the month of `at`, UTC).
    pub period_from: DateTime<Utc>,
    /// When it was computed (process time).
    pub computed: Instant,
    /// How long it took.
    pub took: Duration,
    /// Per meter.
    pub top: Vec<TopMeter>,
    /// Near or over, over first.
    pub limits: Vec<LimitRow>,
    /// Metered entitlements looked at.
    pub metered: usize,
}

impl Snapshot {
    fn ttl(&self) -> Duration {
        (self.took * 10).max(MIN_TTL)
    }
}

/// The kept snapshot.
#[derive(Default)]
pub struct Cache {
    current: RwLock<Option<Arc<Snapshot>>>,
    refreshing: AtomicBool,
    computing: tokio::sync::Mutex<()>,
}

impl Cache {
    fn current(&self) -> Option<Arc<Snapshot>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, s: Arc<Snapshot>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(s);
    }

    /// Forgets the snapshot (after an action changed what it shows).
    pub fn invalidate(&self) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Starts computing a snapshot in the background unless one is under way.
fn refresh_in_background(console: &Console) {
    if console.summary.refreshing.swap(true, Ordering::AcqRel) {
        return;
    }
    let console = console.clone();
    tokio::spawn(async move {
        let _g = console.summary.computing.lock().await;
        match console.api.clock.now().await {
            Ok(now) => match compute(&console, now).await {
                Ok(s) => console.summary.set(Arc::new(s)),
                Err(e) => tracing::warn!(error = %e, "console overview refresh"),
            },
            Err(e) => tracing::warn!(error = %e, "console overview refresh"),
        }
        console.summary.refreshing.store(false, Ordering::Release);
    });
}

/// The snapshot to show now (see the module doc for when it is recomputed); `None` on real
/// time while the first one is being computed in the background.
pub async fn get(console: &Console) -> Result<Option<Arc<Snapshot>>, StoreError> {
    let cache = &console.summary;
    if !console.api.clock.is_simulated() {
        let current = cache.current();
        if current
            .as_ref()
            .is_none_or(|s| s.computed.elapsed() >= s.ttl())
        {
            refresh_in_background(console);
        }
        return Ok(current);
    }
    // The simulated clock stands still: a snapshot is for its instant, computed once.
    let now = console.api.clock.now().await?;
    if let Some(s) = cache.current()
        && s.at == now
    {
        return Ok(Some(s));
    }
    let _g = cache.computing.lock().await;
    if let Some(s) = cache.current()
        && s.at == now
    {
        return Ok(Some(s));
    }
    let s = Arc::new(compute(console, now).await?);
    cache.set(s.clone());
    Ok(Some(s))
}

/// The first instant of `at`'s month, UTC.
pub fn month_start(at: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(at)
}

async fn compute(console: &Console, now: DateTime<Utc>) -> Result<Snapshot, StoreError> {
    let started = Instant::now();
    let store = &console.api.store;
    let customers = store.list_entities::<Customer>("customer").await?;
    let owner_of: HashMap<String, Consumer> = customers
        .iter()
        .flat_map(|c| {
            c.subjects()
                .into_iter()
                .map(move |s| (s, Consumer::Customer(c.id.clone(), c.name.clone())))
        })
        .collect();
    let consumer = |subject: &str| {
        owner_of
            .get(subject)
            .cloned()
            .unwrap_or_else(|| Consumer::Subject(subject.to_owned()))
    };
    let period_from = month_start(now);
    let mut top = Vec::new();
    let mut meters = store.meters();
    meters.sort_by(|a, b| a.meter.slug.cmp(&b.meter.slug));
    for m in meters {
        let rows = store
            .usage(
                &m.meter.slug,
                &[],
                period_from.timestamp_millis(),
                now.timestamp_millis(),
            )
            .await?;
        let mut per: HashMap<Consumer, MinuteAgg> = HashMap::new();
        for (subject, _, _, agg) in rows {
            per.entry(consumer(&subject)).or_default().merge(&agg);
        }
        let total_consumers = per.len();
        let mut consumers: Vec<(Consumer, Decimal)> = per
            .into_iter()
            .map(|(c, agg)| (c, value_of(m.meter.aggregation, &agg)))
            .collect();
        consumers.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        consumers.truncate(TOP_N);
        top.push(TopMeter {
            slug: m.meter.slug.clone(),
            aggregation: format!("{:?}", m.meter.aggregation).to_uppercase(),
            consumers,
            total_consumers,
        });
    }
    let (limits, metered) = limits(console, &customers, now).await?;
    Ok(Snapshot {
        at: now,
        period_from,
        computed: Instant::now(),
        took: started.elapsed(),
        top,
        limits,
        metered,
    })
}

/// An entitlement to evaluate: it, its owner, its subjects, its grants.
type Job = (Entitlement, Consumer, Vec<String>, Vec<Grant>);

/// Every metered entitlement's value at `now`; those near or over their limit, over first.
async fn limits(
    console: &Console,
    customers: &[Customer],
    now: DateTime<Utc>,
) -> Result<(Vec<LimitRow>, usize), StoreError> {
    let store = &console.api.store;
    let by_id: HashMap<&str, &Customer> = customers.iter().map(|c| (c.id.as_str(), c)).collect();
    let features: HashMap<String, Feature> = store
        .list_entities::<Feature>("feature")
        .await?
        .into_iter()
        .map(|f| (f.id.clone(), f))
        .collect();
    let mut grants: HashMap<String, Vec<Grant>> = HashMap::new();
    for g in store.list_entities::<Grant>("grant").await? {
        grants.entry(g.entitlement_id.clone()).or_default().push(g);
    }
    // Per feature, every entitlement's balance from one usage read ([`crate::balances`]).
    let mut by_feature: HashMap<String, Vec<Job>> = HashMap::new();
    for e in store.list_entities::<Entitlement>("entitlement").await? {
        if e.kind != "metered" || !features.contains_key(&e.feature_id) {
            continue;
        }
        let (owner, subjects) = match (&e.customer_id, &e.subject_key) {
            (Some(id), _) => match by_id.get(id.as_str()) {
                Some(c) => (
                    Consumer::Customer(c.id.clone(), c.name.clone()),
                    c.subjects(),
                ),
                None => continue,
            },
            (None, Some(s)) => (Consumer::Subject(s.clone()), vec![s.clone()]),
            (None, None) => continue,
        };
        let gs = grants.remove(&e.id).unwrap_or_default();
        by_feature
            .entry(e.feature_id.clone())
            .or_default()
            .push((e, owner, subjects, gs));
    }
    let mut metered = 0;
    let mut out = Vec::new();
    for (feature_id, jobs) in by_feature {
        let Some(feature) = features.get(&feature_id) else {
            continue;
        };
        metered += jobs.len();
        let batch: Vec<balances::Evaluation<'_>> = jobs
            .iter()
            .map(|(e, _, subjects, gs)| balances::Evaluation {
                entitlement: e,
                subjects,
                grants: gs,
            })
            .collect();
        let values = balances::values(store, feature, &batch, now).await?;
        for ((e, owner, _, _), v) in jobs.into_iter().zip(values) {
            if let Some(row) = pressure(&e, owner, &v) {
                out.push(row);
            }
        }
    }
    out.sort_by(|a, b| {
        (a.pressure, a.balance, &a.feature_key).cmp(&(b.pressure, b.balance, &b.feature_key))
    });
    Ok((out, metered))
}

/// Whether a value is near or over its limit.
fn pressure(
    e: &Entitlement,
    owner: Consumer,
    v: &entitlement::EntitlementValue,
) -> Option<LimitRow> {
    let balance = v.balance.unwrap_or_default();
    let usage = v.usage.unwrap_or_default();
    let granted = v.total_available_grant_amount.unwrap_or_default();
    let overage = v.overage.unwrap_or_default();
    let p = if overage > Decimal::ZERO || (balance <= Decimal::ZERO && usage > Decimal::ZERO) {
        Pressure::Over
    } else if granted > Decimal::ZERO && balance < granted * NEAR_SHARE {
        Pressure::Near
    } else {
        return None;
    };
    Some(LimitRow {
        pressure: p,
        owner,
        feature_key: e.feature_key.clone(),
        balance,
        usage,
        granted,
        overage,
        soft: e.is_soft_limit,
    })
}
