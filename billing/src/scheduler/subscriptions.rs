//! Subscriptions' time-driven work, as a [`DueWork`]: at every instant where what a subscription
//! provides may change — it starts or ends (a cancelation, or the old side of a change), a phase
//! starts, an edit takes effect, an add-on's quantity changes — its entitlements are reconciled
//! with what it provides from then on ([`crate::subscription::provision`]): new ones provisioned,
//! changed ones updated, ended ones removed. Reconciling is idempotent and its inserts are
//! insert-if-absent, so a repeated instant (after a crash) or two replicas at once never duplicate
//! an entitlement.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Done, Due, DueQueue, DueWork, Happening, ListQueue};
use crate::store::{Store, StoreError};
use crate::subscription::{self, Subscription, SubscriptionAddon, timeline};

/// Entitlements follow subscriptions: `subscription.entitlement.provisioned`, `…updated`,
/// `…ended`.
pub struct Provisioning;

impl DueWork for Provisioning {
    fn name(&self) -> &'static str {
        "subscription provisioning"
    }

    fn plan<'a>(
        &'a self,
        store: &'a Store,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Box<dyn DueQueue>, StoreError>> {
        Box::pin(async move {
            // Only the subscriptions the due index names for this window.
            let mut subs: Vec<Subscription> = Vec::new();
            let mut addons: BTreeMap<String, Vec<SubscriptionAddon>> = BTreeMap::new();
            for id in store.subscriptions_due(after, until).await? {
                if let Some(s) = subscription::load(store, &id).await? {
                    addons.insert(id.clone(), subscription::addons_of(store, &id).await?);
                    subs.push(s);
                }
            }
            let mut items = Vec::new();
            for sub in subs.iter().filter(|s| s.deleted_at.is_none()) {
                let bought = addons.get(&sub.id).map(Vec::as_slice).unwrap_or_default();
                for at in timeline::boundaries(sub, bought) {
                    if at > after && at <= until {
                        items.push(Due {
                            at,
                            detail: json!({"subscriptionId": sub.id}),
                        });
                    }
                }
            }
            Ok(Box::new(ListQueue::new(items)) as Box<dyn DueQueue>)
        })
    }

    fn run<'a>(
        &'a self,
        store: &'a Store,
        at: DateTime<Utc>,
        items: Vec<Due>,
    ) -> BoxFuture<'a, Result<Done, StoreError>> {
        Box::pin(async move {
            let mut subs = Vec::new();
            for d in &items {
                let Some(id) = d.detail["subscriptionId"].as_str() else {
                    continue;
                };
                if subs.iter().any(|s: &Subscription| s.id == id) {
                    continue;
                }
                // Read afresh: the subscription may have changed since the plan was made.
                if let Some(s) = subscription::load(store, id).await? {
                    subs.push(s);
                }
            }
            let changes = subscription::provision(store, &subs, at).await?;
            let happened: Vec<Happening> = changes
                .iter()
                .map(|c| {
                    let mut detail = serde_json::Map::new();
                    detail.insert(
                        "subscriptionId".into(),
                        Value::from(c.subscription_id.clone()),
                    );
                    detail.insert(
                        "entitlementId".into(),
                        Value::from(c.entitlement_id.clone()),
                    );
                    detail.insert("featureKey".into(), Value::from(c.feature_key.clone()));
                    Happening {
                        at,
                        kind: c.kind.to_owned(),
                        detail,
                    }
                })
                .collect();
            if !happened.is_empty() {
                tracing::info!(%at, changes = happened.len(), "subscription entitlements reconciled");
            }
            Ok(Done {
                wrote: !happened.is_empty(),
                happened,
            })
        })
    }
}
