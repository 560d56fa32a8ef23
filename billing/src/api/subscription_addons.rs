//! Add-ons bought on a subscription: `POST|GET /api/v1/subscriptions/{id}/addons` and
//! `GET|PATCH /api/v1/subscriptions/{id}/addons/{subscriptionAddonId}`. A purchase names an
//! active add-on the subscription's plan offers, a quantity (≤ 1 for a single-instance add-on,
//! ≤ the plan's `maxQuantity`) and when it takes effect; a PATCH changes the quantity from its
//! `timing` on (0 ends it). The merged rate cards reach the customer's entitlements at once when
//! the timing is immediate, else at that instant through the scheduler.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::subscription_http::{Failure, SR, addon_view, body, provision_now, subscription_or_404};
use super::{Api, new_id};
use crate::catalog::model::{Addon, PlanAddonRecord};
use crate::catalog::versions;
use crate::store::StoreError;
use crate::subscription::model::{ADDON_KIND, Subscription};
use crate::subscription::ops;
use crate::subscription::period::Timing;
use crate::subscription::{self, Refusal};

/// The routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/subscriptions/{id}/addons", get(list).post(create))
        .route(
            "/api/v1/subscriptions/{id}/addons/{a}",
            get(get_one).patch(update),
        )
}

/// `{id}`.
#[derive(Debug, Deserialize)]
struct AddonIdInput {
    id: String,
}

/// `SubscriptionAddonCreate`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateInput {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    quantity: u32,
    #[serde(default)]
    timing: Option<Timing>,
    addon: AddonIdInput,
}

/// `SubscriptionAddonUpdate`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateInput {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    quantity: Option<u32>,
    #[serde(default)]
    timing: Option<Timing>,
}

/// When a purchase or quantity change on `sub` takes effect: now (not before the start),
/// the next billing cycle, or a date-time not in the past.
fn effect_at(
    sub: &Subscription,
    timing: &Timing,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Refusal> {
    let cadence = sub
        .cadence()
        .map_err(|m| Refusal::invalid("$.billingCadence", "billing_cadence_invalid", m))?;
    let at = timing
        .resolve(now, sub.billing_anchor, &cadence)
        .map_err(|m| Refusal::invalid("$.timing", "subscription_timing_invalid", m))?;
    if timing.is_custom() && at < now {
        return Err(Refusal::invalid(
            "$.timing",
            "subscription_timing_in_the_past",
            format!("{at} is in the past"),
        ));
    }
    if sub.active_to.is_some_and(|end| at >= end) {
        return Err(Refusal::invalid(
            "$.timing",
            "subscription_addon_after_end",
            format!("the subscription ends before {at}"),
        ));
    }
    Ok(at.max(sub.active_from))
}

/// The plan add-on offering `addon` with `sub`'s plan: (from phase, max quantity).
async fn offer(
    api: &Api,
    sub: &Subscription,
    addon: &Addon,
) -> Result<Option<(String, Option<i64>)>, StoreError> {
    let Some(plan) = &sub.plan else {
        return Ok(None);
    };
    Ok(api
        .store
        .list_entities::<PlanAddonRecord>("plan_addon")
        .await?
        .into_iter()
        .find(|pa| pa.plan_id == plan.id && pa.addon_id == addon.id && pa.deleted_at.is_none())
        .map(|pa| (pa.from_plan_phase, pa.max_quantity)))
}

async fn create(State(api): State<Api>, Path(id): Path<String>, raw: Bytes) -> SR {
    let input: CreateInput = body(&raw)?;
    let now = api.now().await?;
    let sub = subscription_or_404(&api, &id).await?;
    let all = versions::all::<Addon>(&api.store, now).await?;
    let addon = versions::resolve(&all, &input.addon.id, false, now).ok_or_else(|| {
        Refusal::invalid(
            "$.addon.id",
            "addon_not_found",
            format!("add-on {} not found", input.addon.id),
        )
    })?;
    if subscription::addons_of(&api.store, &sub.id)
        .await?
        .iter()
        .any(|a| a.addon.id == addon.id)
    {
        return Err(Refusal::conflict(
            "$.addon.id",
            "subscription_addon_exists",
            format!(
                "subscription already has that addon purchased ({}): change its quantity instead",
                addon.key
            ),
        )
        .into());
    }
    let offered = offer(&api, &sub, &addon).await?;
    let at = effect_at(&sub, &input.timing.unwrap_or_default(), now)?;
    let mut bought = ops::buy_addon(
        &sub,
        &addon,
        offered.as_ref().map(|(p, m)| (p.as_str(), *m)),
        input.quantity,
        at,
        now,
        new_id(),
        input.name.unwrap_or_else(|| addon.name.clone()),
    )?;
    bought.description = input.description;
    bought.metadata = input.metadata;
    subscription::save(&api.store, &[], &[&bought])
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => Failure::Refusal(Refusal::conflict(
                "$.addon.id",
                "subscription_addon_exists",
                "subscription already has that addon purchased",
            )),
            other => other.into(),
        })?;
    provision_now(&api, std::slice::from_ref(&sub), now).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(addon_view(&bought, &sub, now)),
    )
        .into_response())
}

async fn list(State(api): State<Api>, Path(id): Path<String>) -> SR {
    let now = api.now().await?;
    let sub = subscription_or_404(&api, &id).await?;
    let items: Vec<_> = subscription::addons_of(&api.store, &sub.id)
        .await?
        .iter()
        .map(|a| addon_view(a, &sub, now))
        .collect();
    Ok(axum::Json(items).into_response())
}

async fn one(
    api: &Api,
    id: &str,
    a: &str,
) -> Result<(Subscription, subscription::SubscriptionAddon), Failure> {
    let sub = subscription_or_404(api, id).await?;
    let bought = api
        .store
        .get_entity::<subscription::SubscriptionAddon>(ADDON_KIND, a)
        .await?
        .filter(|x| x.subscription_id == sub.id)
        .ok_or_else(|| {
            Refusal::not_found(format!(
                "subscription add-on {a} not found on subscription {id}"
            ))
        })?;
    Ok((sub, bought))
}

async fn get_one(State(api): State<Api>, Path((id, a)): Path<(String, String)>) -> SR {
    let now = api.now().await?;
    let (sub, bought) = one(&api, &id, &a).await?;
    Ok(axum::Json(addon_view(&bought, &sub, now)).into_response())
}

async fn update(State(api): State<Api>, Path((id, a)): Path<(String, String)>, raw: Bytes) -> SR {
    let input: UpdateInput = body(&raw)?;
    let now = api.now().await?;
    let (sub, mut bought) = one(&api, &id, &a).await?;
    if let Some(q) = input.quantity {
        let at = effect_at(&sub, &input.timing.unwrap_or_default(), now)?;
        let all = versions::all::<Addon>(&api.store, now).await?;
        let addon = all
            .into_iter()
            .find(|x| x.id == bought.addon.id)
            .ok_or_else(|| {
                Refusal::conflict(
                    "$.addon",
                    "addon_not_found",
                    format!("add-on {} no longer exists", bought.addon.key),
                )
            })?;
        // A decrease is allowed from an archived add-on; an increase needs it active.
        if q > bought.quantity_at(at) {
            let offered = offer(&api, &sub, &addon).await?;
            ops::check_addon(
                &sub,
                &addon,
                offered.as_ref().map(|(p, m)| (p.as_str(), *m)),
                q,
                at,
            )?;
        } else if addon.instance_type == "single" && q > 1 {
            return Err(Refusal::invalid(
                "$.quantity",
                "addon_single_instance",
                "quantity is 0 or 1",
            )
            .into());
        }
        bought.set_quantity(at, q);
    }
    if let Some(n) = input.name {
        bought.name = n;
    }
    if input.description.is_some() {
        bought.description = input.description;
    }
    if input.metadata.is_some() {
        bought.metadata = input.metadata;
    }
    bought.updated_at = now;
    subscription::save(&api.store, &[], &[&bought]).await?;
    provision_now(&api, std::slice::from_ref(&sub), now).await?;
    Ok(axum::Json(addon_view(&bought, &sub, now)).into_response())
}
