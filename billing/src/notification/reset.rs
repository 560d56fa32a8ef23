//! `entitlements.reset` events: when a metered entitlement's usage period resets (the boundary a
//! clock advance or the real-time runner crosses: [`crate::scheduler::entitlements`]), or a
//! manual reset (`POST …/reset`, recorded in the entitlement write's transaction), one event per
//! live reset rule covering its feature, deduplicated by (rule, entitlement, instant), so a
//! repeated advance records it once.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::payload::{EntitlementContext, entitlement_data};
use super::threshold::{Subjects, with_period};
use super::{kinds, outbox};
use crate::entitlement::{self, Entitlement};
use crate::store::notifications::NewNotification;
use crate::store::{Store, StoreError};

/// The reset events of `entitlements` (as they stand after the reset) that reset at `at`, created
/// `now`: one per live reset rule covering each one's feature, each with its dedup key (rule,
/// entitlement, instant).
pub async fn reset_events(
    store: &Store,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    entitlements: &[Entitlement],
) -> Result<Vec<NewNotification>, StoreError> {
    let (rules, channels) = outbox::rules_and_channels(store, kinds::RESET).await?;
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = Subjects::load(store).await?;
    let mut out = Vec::new();
    for e in entitlements {
        let Some(feature) = ctx.feature(e) else {
            continue;
        };
        let subjects = ctx.subjects(e);
        let value = entitlement::value(store, e, feature, &subjects, ctx.grants(e), at)
            .await?
            .v1();
        let shown = with_period(e.clone(), at);
        let subject = subjects.first().map(String::as_str).unwrap_or_default();
        for rule in rules.iter().filter(|r| r.covers(&feature.id, &feature.key)) {
            let key = format!(
                "{}:{}:{}:{}",
                kinds::RESET,
                rule.id,
                e.id,
                at.timestamp_millis()
            );
            if store.notification_deduped(&key).await? {
                continue;
            }
            let data = entitlement_data(&EntitlementContext {
                entitlement: &shown,
                feature,
                subject,
                customer: ctx.customer(e),
                value: &value,
            });
            out.push(outbox::new_event(
                rule,
                &channels,
                now,
                data,
                Some(key),
                json!({}),
            ));
        }
    }
    Ok(out)
}

/// Records the reset events of the entitlements in `items` (the scheduler's `entitlement.reset`
/// details, with `entitlementId`) at `at`; how many were recorded.
pub async fn record_resets(
    store: &Store,
    at: DateTime<Utc>,
    items: &[Value],
) -> Result<usize, StoreError> {
    let mut ents = Vec::new();
    for id in items.iter().filter_map(|i| i["entitlementId"].as_str()) {
        ents.extend(store.get_entity::<Entitlement>("entitlement", id).await?);
    }
    let mut recorded = 0;
    for event in reset_events(store, at, at, &ents).await? {
        if store.record_notification(&event).await? {
            recorded += 1;
        }
    }
    Ok(recorded)
}
