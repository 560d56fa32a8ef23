//! Entitlements provisioned from rate-card templates (OpenMeter's
//! `ToScheduleSubscriptionEntitlementInput`, reference §2.4): every item in force whose rate card
//! has a feature and an entitlement template gives the customer one entitlement, annotated with
//! the subscription and item it comes from. Metered ones reset on the subscription's billing
//! anchor (truncated to the minute) every `usagePeriod` (default: the rate card's cadence) and
//! count usage from the phase's start (truncated to the minute): a new subscription after a
//! change starts a new phase, so usage counts afresh, while an add-on bought mid-phase only
//! raises the allowance of the entitlement in place (its usage carries).
//!
//! [`reconcile`] makes the stored entitlements match what a set of subscriptions provides at an
//! instant: it ends (deletes) what no longer applies first, then creates or updates what does.
//! Ids are derived from (subscription, phase, item key), and creation is an insert-if-absent, so
//! running it twice — or on two replicas at once — never duplicates an entitlement.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::FromPrimitive;
use serde_json::{Value, json};

use super::model::{Subscription, SubscriptionAddon};
use super::timeline::{ItemWindow, items_at};
use crate::catalog::model::EntitlementTemplate;
use crate::entitlement::{Customer, Entitlement, Feature, UsagePeriod};
use crate::store::{MINUTE, Store, StoreError};

/// The annotation naming the subscription an entitlement belongs to.
pub const SUBSCRIPTION_ID: &str = "subscription.id";
/// The annotation naming the subscription item it comes from.
pub const ITEM_ID: &str = "subscription.item.id";

/// The id of the entitlement provisioned for `key` in `phase` of `subscription`.
pub fn entitlement_id(subscription: &str, phase: &str, key: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("tollgate:subscription/{subscription}/phase/{phase}/item/{key}").as_bytes(),
    )
    .simple()
    .to_string()
}

fn minute(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis().div_euclid(MINUTE) * MINUTE).unwrap_or(t)
}

/// The entitlement `window`'s template describes for `customer`, or `None` when it has none (or
/// its feature is missing or archived).
pub fn entitlement_for(
    window: &ItemWindow,
    customer: &Customer,
    features: &BTreeMap<String, Feature>,
) -> Option<Entitlement> {
    let template = window.rate_card.entitlement_template.as_ref()?;
    let feature = features.get(window.rate_card.feature_key.as_deref()?)?;
    let mut e = Entitlement {
        kind: String::new(),
        id: entitlement_id(&window.subscription_id, &window.phase_key, &window.key),
        feature_id: feature.id.clone(),
        feature_key: feature.key.clone(),
        customer_id: Some(customer.id.clone()),
        customer_key: customer.key.clone(),
        subject_key: None,
        is_soft_limit: false,
        usage_period: None,
        preserve_overage_at_reset: false,
        issue_after_reset: None,
        issue_after_reset_priority: None,
        config: None,
        measure_usage_from: None,
        resets: Vec::new(),
        last_reset: None,
        current_usage_period: None,
        metadata: None,
        annotations: Some(json!({
            SUBSCRIPTION_ID: window.subscription_id,
            ITEM_ID: window.item_id,
        })),
        created_at: window.phase_active_from,
        updated_at: window.active_from,
    };
    let meta = |m: &Option<BTreeMap<String, String>>| m.as_ref().map(|m| json!(m));
    match template {
        EntitlementTemplate::Boolean { metadata } => {
            e.kind = "boolean".into();
            e.metadata = meta(metadata);
        }
        EntitlementTemplate::Static { config, metadata } => {
            e.kind = "static".into();
            e.config = Some(config.clone());
            e.metadata = meta(metadata);
        }
        EntitlementTemplate::Metered {
            is_soft_limit,
            issue_after_reset,
            issue_after_reset_priority,
            preserve_overage_at_reset,
            usage_period,
            metadata,
        } => {
            feature.meter_slug.as_ref()?;
            let interval = usage_period
                .clone()
                .or_else(|| window.rate_card.billing_cadence.clone())?;
            e.kind = "metered".into();
            e.is_soft_limit = *is_soft_limit;
            e.issue_after_reset = issue_after_reset.and_then(Decimal::from_f64);
            e.issue_after_reset_priority = issue_after_reset_priority.map(|p| p.min(255) as u8);
            e.preserve_overage_at_reset = *preserve_overage_at_reset;
            e.usage_period = Some(UsagePeriod {
                interval,
                anchor: Some(minute(window.billing_anchor)),
            });
            e.measure_usage_from = Some(minute(window.phase_active_from));
            e.metadata = meta(metadata);
        }
    }
    Some(e)
}

/// What an entitlement grants, for deciding whether a stored one must be rewritten.
fn terms(e: &Entitlement) -> Value {
    json!([
        e.kind,
        e.feature_id,
        e.customer_id,
        e.is_soft_limit,
        e.usage_period.as_ref().map(|p| (&p.interval, p.anchor)),
        e.preserve_overage_at_reset,
        e.issue_after_reset,
        e.issue_after_reset_priority,
        e.config,
        e.measure_usage_from,
        e.metadata,
        e.annotations,
    ])
}

/// One change [`reconcile`] made.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `subscription.entitlement.provisioned`, `…updated` or `…ended`.
    pub kind: &'static str,
    /// The subscription.
    pub subscription_id: String,
    /// The entitlement.
    pub entitlement_id: String,
    /// Its feature.
    pub feature_key: String,
}

/// The subscription an entitlement was provisioned by, if any.
pub fn subscription_of(e: &Entitlement) -> Option<&str> {
    e.annotations.as_ref()?.get(SUBSCRIPTION_ID)?.as_str()
}

/// Makes the stored entitlements of `subs` what they provide at `at`: ends first, then creates
/// and updates. Idempotent.
pub async fn reconcile(
    store: &Store,
    subs: &[Subscription],
    addons: &[SubscriptionAddon],
    at: DateTime<Utc>,
) -> Result<Vec<Change>, StoreError> {
    if subs.is_empty() {
        return Ok(Vec::new());
    }
    let mut features: BTreeMap<String, Feature> = BTreeMap::new();
    for f in store.list_entities::<Feature>("feature").await? {
        if f.archived_at.is_none() {
            features.insert(f.key.clone(), f);
        }
    }
    // Only the customers concerned and their entitlements (read through the customer index).
    let mut customers: BTreeMap<String, Customer> = BTreeMap::new();
    let mut existing: Vec<Entitlement> = Vec::new();
    for sub in subs {
        if customers.contains_key(&sub.customer_id) {
            continue;
        }
        if let Some(c) = store
            .get_entity::<Customer>("customer", &sub.customer_id)
            .await?
        {
            existing.extend(
                store
                    .list_entities_where::<Entitlement>("entitlement", "customer_id", &c.id)
                    .await?,
            );
            customers.insert(c.id.clone(), c);
        }
    }
    let mut wanted: BTreeMap<String, Entitlement> = BTreeMap::new();
    for sub in subs {
        let Some(customer) = customers.get(&sub.customer_id) else {
            continue;
        };
        let live = sub.deleted_at.is_none()
            && sub.active_from <= at
            && sub.active_to.is_none_or(|to| at < to);
        if !live {
            continue;
        }
        for window in items_at(sub, addons, at) {
            if let Some(e) = entitlement_for(&window, customer, &features) {
                wanted.insert(e.id.clone(), e);
            }
        }
    }
    let mine =
        |e: &&Entitlement| subscription_of(e).is_some_and(|s| subs.iter().any(|sub| sub.id == s));
    let mut changes = Vec::new();
    for e in existing.iter().filter(mine) {
        if !wanted.contains_key(&e.id) && store.delete_entity("entitlement", &e.id).await? {
            changes.push(Change {
                kind: "subscription.entitlement.ended",
                subscription_id: subscription_of(e).unwrap_or_default().to_owned(),
                entitlement_id: e.id.clone(),
                feature_key: e.feature_key.clone(),
            });
        }
    }
    for (id, e) in wanted {
        let sub = subscription_of(&e).unwrap_or_default().to_owned();
        match existing.iter().find(|x| x.id == id) {
            Some(old) if terms(old) == terms(&e) => {}
            Some(old) => {
                let raw = store.get_entity_raw("entitlement", &id).await?;
                let updated = Entitlement {
                    created_at: old.created_at,
                    resets: old.resets.clone(),
                    ..e
                };
                if let Some(raw) = raw
                    && store
                        .swap_entity("entitlement", &id, Some(&raw), &updated)
                        .await?
                {
                    changes.push(Change {
                        kind: "subscription.entitlement.updated",
                        subscription_id: sub,
                        entitlement_id: id,
                        feature_key: updated.feature_key,
                    });
                }
            }
            None => {
                if store.swap_entity("entitlement", &id, None, &e).await? {
                    changes.push(Change {
                        kind: "subscription.entitlement.provisioned",
                        subscription_id: sub,
                        entitlement_id: id,
                        feature_key: e.feature_key,
                    });
                }
            }
        }
    }
    Ok(changes)
}
