//! Subscriptions: customers on plans over time (OpenMeter v1 §2), the entitlements they
//! provision, and the add-ons bought on them.
//!
//! * [`model`]: the stored documents — a [`Subscription`] keeps its own copy of the plan's phases
//!   ([`model::Phase`], each with an absolute start) and their items ([`model::Item`], each the
//!   catalog [`crate::catalog::model::RateCard`]), and [`SubscriptionAddon`]s keep their quantity
//!   over time. Status (`active`, `canceled` = an end is scheduled, `inactive`, `scheduled`) is
//!   derived at an instant ([`Subscription::status_at`]).
//! * [`period`]: billing-period arithmetic on an anchor and cadence, and `SubscriptionTiming`.
//! * [`timeline`]: phases and items as of a time, add-ons merged.
//! * [`addons`]: OpenMeter's add-on merge rules.
//! * [`ops`]: the operations (create, cancel, change, migrate, edit, …) as pure steps that
//!   refuse with a [`Refusal`] and change nothing.
//! * [`provision`]: entitlements from rate-card templates, reconciled at an instant.
//!
//! ## The read API (for invoicing and notifications)
//!
//! * [`subscriptions_of_customer`]`(store, customer_id, as_of)` and
//!   [`subscriptions_active_in`]`(store, from, to)` load subscriptions (deleted ones never);
//!   [`addons_of`] / [`addons_of_all`] their add-ons.
//! * [`timeline::item_windows`]`(sub, addons)` gives every [`timeline::ItemWindow`]: one rate
//!   card constant over `[active_from, active_to)` with the subscription's customer id, currency
//!   and billing anchor, the item's billing cadence (`None` = one-time fee) and the phase it
//!   belongs to. Invoicing cuts each window into billing periods with
//!   [`period::billing_period_at`]`(sub.billing_anchor, cadence, t)` and rates each piece with
//!   [`crate::pricing`]; a window that ends inside a period (a cancelation, a change, a phase
//!   end) is a partial period to prorate when `proRatingConfig.enabled`.
//! * [`Subscription::phase_windows`] / [`Subscription::phase_at`] give the phases themselves.
//!
//! Time-driven work (a phase starts, a scheduled change or cancelation takes effect, an add-on's
//! quantity changes) is [`crate::scheduler::subscriptions`]: it calls [`provision()`] at each such
//! instant.

pub mod addons;
pub mod model;
pub mod ops;
pub mod period;
pub mod provision;
pub mod timeline;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use model::{Status, Subscription, SubscriptionAddon};

use crate::catalog::ValidationIssue;
use crate::store::{Store, StoreError};

/// Why an operation was refused: the HTTP status (400, 404, 409) and OpenMeter-style
/// `validationErrors`, each naming the field (JSONPath) and a stable code.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// 400, 404 or 409.
    pub status: u16,
    /// What is wrong.
    pub issues: Vec<ValidationIssue>,
}

impl Refusal {
    fn new(status: u16, field: impl Into<String>, code: &str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            issues: vec![ValidationIssue {
                field: field.into(),
                code: code.into(),
                message: message.into(),
                severity: Some("critical".into()),
            }],
        }
    }

    /// 400.
    pub fn invalid(field: impl Into<String>, code: &str, message: impl Into<String>) -> Self {
        Refusal::new(400, field, code, message)
    }

    /// 409.
    pub fn conflict(field: impl Into<String>, code: &str, message: impl Into<String>) -> Self {
        Refusal::new(409, field, code, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Refusal::new(404, "$", "not_found", message)
    }

    /// The issues' fields under `prefix` (`$.x` becomes `{prefix}.x`).
    pub fn at_field(mut self, prefix: String) -> Self {
        for i in &mut self.issues {
            i.field = format!("{prefix}{}", i.field.trim_start_matches('$'));
        }
        self
    }

    /// The messages joined (the problem's `detail`).
    pub fn detail(&self) -> String {
        self.issues
            .iter()
            .map(|i| i.message.clone())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// One subscription (deleted ones included).
pub async fn load(store: &Store, id: &str) -> Result<Option<Subscription>, StoreError> {
    store.get_entity(model::KIND, id).await
}

/// A subscription as read for an update, with the stored text the update is checked against.
pub struct ForUpdate {
    /// The subscription.
    pub sub: Subscription,
    raw: String,
}

/// One subscription (deleted ones included), for an update with [`update`].
pub async fn load_for_update(store: &Store, id: &str) -> Result<Option<ForUpdate>, StoreError> {
    let Some(raw) = store.get_entity_raw(model::KIND, id).await? else {
        return Ok(None);
    };
    let sub = serde_json::from_str(&raw).map_err(|e| StoreError::Decode(e.to_string()))?;
    Ok(Some(ForUpdate { sub, raw }))
}

/// Stores `changed` over `read` only if nobody changed the subscription since it was read
/// (compare-and-set: of two concurrent requests on any replicas, one wins); whether it was stored.
pub async fn update(
    store: &Store,
    read: &ForUpdate,
    changed: &Subscription,
) -> Result<bool, StoreError> {
    store
        .swap_entity(model::KIND, &changed.id, Some(&read.raw), changed)
        .await
}

/// Stores a new subscription only if its id is free; whether it was stored.
pub async fn insert(store: &Store, sub: &Subscription) -> Result<bool, StoreError> {
    store.swap_entity(model::KIND, &sub.id, None, sub).await
}

/// Removes a subscription that was never in force (undoing an [`insert`]).
pub async fn remove(store: &Store, id: &str) -> Result<bool, StoreError> {
    store.delete_entity(model::KIND, id).await
}

/// A customer's subscriptions, oldest first; with `as_of`, only those in force then (started and
/// not ended). Deleted ones never.
pub async fn subscriptions_of_customer(
    store: &Store,
    customer_id: &str,
    as_of: Option<DateTime<Utc>>,
) -> Result<Vec<Subscription>, StoreError> {
    let mut subs: Vec<Subscription> = store
        .list_entities_where(model::KIND, "customer_id", customer_id)
        .await?;
    subs.retain(|s| {
        s.deleted_at.is_none()
            && as_of.is_none_or(|t| s.active_from <= t && s.active_to.is_none_or(|to| t < to))
    });
    subs.sort_by_key(|s| (s.active_from, s.id.clone()));
    Ok(subs)
}

/// Every subscription in force at some time in `[from, to)`, oldest first. Deleted ones never.
pub async fn subscriptions_active_in(
    store: &Store,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Subscription>, StoreError> {
    let mut subs: Vec<Subscription> = store.list_entities(model::KIND).await?;
    subs.retain(|s| s.overlaps(from, Some(to)));
    subs.sort_by_key(|s| (s.active_from, s.id.clone()));
    Ok(subs)
}

/// The add-ons bought on a subscription.
pub async fn addons_of(
    store: &Store,
    subscription_id: &str,
) -> Result<Vec<SubscriptionAddon>, StoreError> {
    store
        .list_entities_where(model::ADDON_KIND, "subscription_id", subscription_id)
        .await
}

/// Every add-on bought on any subscription.
pub async fn addons_of_all(store: &Store) -> Result<Vec<SubscriptionAddon>, StoreError> {
    store.list_entities(model::ADDON_KIND).await
}

/// Stores subscriptions and add-ons in one transaction (all or none).
pub async fn save(
    store: &Store,
    subs: &[&Subscription],
    addons: &[&SubscriptionAddon],
) -> Result<(), StoreError> {
    let mut docs: Vec<(&str, &str, Value)> = Vec::new();
    for s in subs {
        docs.push((model::KIND, &s.id, to_value(s)?));
    }
    for a in addons {
        docs.push((model::ADDON_KIND, &a.id, to_value(a)?));
    }
    store.put_entities(&docs).await
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, StoreError> {
    serde_json::to_value(v).map_err(|e| StoreError::Decode(e.to_string()))
}

/// Makes the entitlements of `subs` what they provide at `at` (see [`provision::reconcile`]),
/// then reads the subscriptions again: one that changed meanwhile (a cancelation, a deletion, a
/// create taken back on another replica) is reconciled again as it now is, so an entitlement
/// written from a stale copy never outlives it. A subscription that no longer exists counts as
/// deleted. Each is reconciled at `at` or at its own last change, whichever is later.
pub async fn provision(
    store: &Store,
    subs: &[Subscription],
    at: DateTime<Utc>,
) -> Result<Vec<provision::Change>, StoreError> {
    let mut subs = subs.to_vec();
    let mut changes = Vec::new();
    for _ in 0..5 {
        let mut addons = Vec::new();
        for s in &subs {
            addons.extend(addons_of(store, &s.id).await?);
        }
        // A subscription changed by a request after `at` (a runner catching up on real time) is
        // made what it was at that request — which the request itself made it — never what it
        // was at an earlier instant, which would undo the request.
        let mut times: Vec<DateTime<Utc>> = subs.iter().map(|s| at.max(s.updated_at)).collect();
        times.sort();
        times.dedup();
        for t in times {
            let group: Vec<Subscription> = subs
                .iter()
                .filter(|s| at.max(s.updated_at) == t)
                .cloned()
                .collect();
            changes.extend(provision::reconcile(store, &group, &addons, t).await?);
        }
        let mut fresh = Vec::with_capacity(subs.len());
        for s in &subs {
            fresh.push(match load(store, &s.id).await? {
                Some(f) => f,
                None => Subscription {
                    deleted_at: Some(at),
                    ..s.clone()
                },
            });
        }
        let same = fresh
            .iter()
            .zip(&subs)
            .all(|(a, b)| to_value(a).ok() == to_value(b).ok());
        if same {
            break;
        }
        subs = fresh;
    }
    Ok(changes)
}
