//! Subscriptions on OpenMeter's v1 paths: `POST /api/v1/subscriptions` (from a plan or a custom
//! plan), `GET|PATCH|DELETE /api/v1/subscriptions/{id}` (expanded view `?at=`, edit, delete a
//! scheduled one) and the actions `…/change`, `…/migrate`, `…/cancel`,
//! `…/unschedule-cancelation`, `…/restore`. Each action refuses with 400/404/409 and OpenMeter's
//! `validationErrors` before anything is stored, stores what changed in one transaction, and
//! reconciles the entitlements at once (the scheduler does it again at every later boundary).

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::subscription_http::{
    Failure, SR, body, expanded, for_update, provision_now, store_update, subscription_or_404, view,
};
use super::{Api, new_id, parse_time, query_pairs};
use crate::catalog::model::{Phase, Plan, ProRatingConfig};
use crate::catalog::{Status as PlanStatus, feature_facts, validate::validate_plan, versions};
use crate::entitlement::Customer;
use crate::subscription::model::{PREVIOUS, SUPERSEDING};
use crate::subscription::ops::{self, EditOp, NewSubscription};
use crate::subscription::period::Timing;
use crate::subscription::{self, Refusal, Subscription};

/// Subscription routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/subscriptions", post(create))
        .route(
            "/api/v1/subscriptions/{id}",
            get(get_expanded).patch(edit).delete(delete),
        )
        .route("/api/v1/subscriptions/{id}/change", post(change))
        .route("/api/v1/subscriptions/{id}/migrate", post(migrate))
        .route("/api/v1/subscriptions/{id}/cancel", post(cancel))
        .route(
            "/api/v1/subscriptions/{id}/unschedule-cancelation",
            post(unschedule_cancelation),
        )
        .route("/api/v1/subscriptions/{id}/restore", post(restore))
}

/// `{key, version?}`.
#[derive(Debug, Deserialize)]
struct PlanRefInput {
    key: String,
    #[serde(default)]
    version: Option<i64>,
}

/// A custom plan (`PlanCreate` without key and version).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CustomPlanInput {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    currency: Option<String>,
    billing_cadence: String,
    #[serde(default)]
    pro_rating_config: Option<ProRatingConfig>,
    #[serde(default)]
    settlement_mode: Option<String>,
    phases: Vec<Phase>,
}

/// `PlanSubscriptionCreate | CustomSubscriptionCreate`, and the same for a change.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateInput {
    #[serde(default)]
    plan: Option<PlanRefInput>,
    #[serde(default)]
    custom_plan: Option<CustomPlanInput>,
    #[serde(default)]
    customer_id: Option<String>,
    #[serde(default)]
    customer_key: Option<String>,
    #[serde(default)]
    timing: Option<Timing>,
    #[serde(default)]
    billing_anchor: Option<DateTime<Utc>>,
    #[serde(default)]
    starting_phase: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    settlement_mode: Option<String>,
    #[serde(default, rename = "costBasisMode")]
    _cost_basis_mode: Option<String>,
    #[serde(default, rename = "alignment")]
    _alignment: Option<Value>,
}

async fn customer_of(api: &Api, id: Option<&str>, key: Option<&str>) -> Result<Customer, Failure> {
    let wanted = id.or(key).ok_or_else(|| {
        Refusal::invalid(
            "$.customerId",
            "customer_required",
            "customerId or customerKey is required",
        )
    })?;
    // Through the primary key or the key's index, not a scan of every customer.
    let found = match id {
        Some(id) => api.store.get_entity::<Customer>("customer", id).await?,
        None => api
            .store
            .list_entities_where::<Customer>("customer", "key", wanted)
            .await?
            .pop(),
    };
    found.ok_or_else(|| {
        Refusal::invalid(
            if id.is_some() {
                "$.customerId"
            } else {
                "$.customerKey"
            },
            "customer_not_found",
            format!("customer {wanted} not found"),
        )
        .into()
    })
}

/// The plan a create or change names: `{key, version?}` (active now) or a validated custom plan.
async fn plan_of(
    api: &Api,
    input: &CreateInput,
    now: DateTime<Utc>,
) -> Result<(Plan, bool), Failure> {
    match (&input.plan, &input.custom_plan) {
        (Some(r), None) => {
            let all = versions::all::<Plan>(&api.store, now).await?;
            let candidates = all
                .iter()
                .filter(|p| p.key == r.key && p.deleted_at.is_none());
            let plan = match r.version {
                Some(v) => candidates.clone().find(|p| p.version == v),
                None => candidates
                    .clone()
                    .filter(|p| p.status == PlanStatus::Active)
                    .max_by_key(|p| p.version),
            };
            let plan = plan.ok_or_else(|| {
                Refusal::invalid(
                    "$.plan",
                    "plan_not_found",
                    match r.version {
                        Some(v) => format!("plan {} has no version {v}", r.key),
                        None => format!("plan {} has no active version", r.key),
                    },
                )
            })?;
            if plan.status != PlanStatus::Active {
                return Err(Refusal::invalid(
                    "$.plan.version",
                    "plan_not_active",
                    format!(
                        "plan {} version {} is {}: subscriptions are created from the active version",
                        plan.key,
                        plan.version,
                        plan.status.as_str()
                    ),
                )
                .into());
            }
            Ok((plan.clone(), false))
        }
        (None, Some(c)) => {
            let plan = Plan {
                id: String::new(),
                key: "custom".into(),
                name: c.name.clone(),
                description: c.description.clone(),
                metadata: c.metadata.clone(),
                created_at: now,
                updated_at: now,
                deleted_at: None,
                version: 1,
                currency: c.currency.clone().unwrap_or_else(|| "USD".into()),
                billing_cadence: c.billing_cadence.clone(),
                pro_rating_config: c.pro_rating_config.clone().unwrap_or_default(),
                settlement_mode: c
                    .settlement_mode
                    .clone()
                    .unwrap_or_else(|| "credit_then_invoice".into()),
                alignment: None,
                effective_from: Some(now),
                effective_to: None,
                status: PlanStatus::Active,
                phases: c.phases.clone(),
                validation_errors: None,
            };
            let findings = validate_plan(&plan, &feature_facts(&api.store).await?);
            if !findings.critical.is_empty() {
                return Err(Refusal {
                    status: 400,
                    issues: findings.critical,
                }
                .at_field("$.customPlan".into())
                .into());
            }
            Ok((plan, true))
        }
        _ => Err(Refusal::invalid(
            "$.plan",
            "plan_or_custom_plan_required",
            "exactly one of plan ({key, version?}) or customPlan is required",
        )
        .into()),
    }
}

fn new_subscription<'a>(
    input: &'a CreateInput,
    plan: &'a Plan,
    custom: bool,
    customer: &'a Customer,
    active_from: DateTime<Utc>,
    anchor: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> NewSubscription<'a> {
    NewSubscription {
        id: new_id(),
        plan,
        custom,
        customer,
        active_from,
        billing_anchor: anchor,
        starting_phase: input.starting_phase.clone(),
        name: input.name.clone(),
        description: input.description.clone(),
        metadata: input.metadata.clone(),
        settlement_mode: input.settlement_mode.clone(),
        now,
        new_id: &new_id,
    }
}

async fn create(State(api): State<Api>, raw: Bytes) -> SR {
    let (sub, now) = create_subscription(&api, &raw).await?;
    Ok((StatusCode::CREATED, axum::Json(view(&sub, now))).into_response())
}

/// Creates the subscription in `raw` (`SubscriptionCreate` JSON) after the API's checks, with
/// billing's time it was created at; the console's form goes through here too.
pub(crate) async fn create_subscription(
    api: &Api,
    raw: &Bytes,
) -> Result<(subscription::Subscription, DateTime<Utc>), Failure> {
    let input: CreateInput = body(raw)?;
    let now = api.now().await?;
    let customer = customer_of(
        api,
        input.customer_id.as_deref(),
        input.customer_key.as_deref(),
    )
    .await?;
    let (plan, custom) = plan_of(api, &input, now).await?;
    let start = ops::start_of(
        &input.timing.unwrap_or_default(),
        now,
        input.billing_anchor,
        &plan.billing_cadence,
    )?;
    let sub = ops::build(new_subscription(
        &input,
        &plan,
        custom,
        &customer,
        start,
        input.billing_anchor,
        now,
    ))?;
    let others = subscription::subscriptions_of_customer(&api.store, &customer.id, None).await?;
    ops::refuse_overlap(&sub, &others)?;
    subscription::insert(&api.store, &sub).await?;
    // Checked again once stored: of two creates racing for one customer (on any replicas), at
    // least one sees the other here and takes its own back, so two never stay.
    let others = subscription::subscriptions_of_customer(&api.store, &customer.id, None).await?;
    if let Err(refused) = ops::refuse_overlap(&sub, &others) {
        take_back(api, &sub, now).await?;
        return Err(refused.into());
    }
    provision_now(api, std::slice::from_ref(&sub), now).await?;
    Ok((sub, now))
}

/// Removes a subscription that was just stored and must not stay, and ends whatever a runner
/// provisioned from it meanwhile.
async fn take_back(api: &Api, sub: &Subscription, now: DateTime<Utc>) -> Result<(), Failure> {
    subscription::remove(&api.store, &sub.id).await?;
    let gone = Subscription {
        deleted_at: Some(now),
        ..sub.clone()
    };
    provision_now(api, &[gone], now).await
}

async fn get_expanded(State(api): State<Api>, Path(id): Path<String>, RawQuery(q): RawQuery) -> SR {
    let now = api.now().await?;
    let at = match query_pairs(&q).into_iter().find(|(k, _)| k == "at") {
        Some((_, v)) => parse_time("at", &v)?,
        None => now,
    };
    let sub = subscription_or_404(&api, &id).await?;
    Ok(axum::Json(expanded(&api, &sub, at, now).await?).into_response())
}

/// `{customizations, timing?}`.
#[derive(Debug, Deserialize)]
struct EditInput {
    customizations: Vec<EditOp>,
    #[serde(default)]
    timing: Option<Timing>,
}

async fn edit(State(api): State<Api>, Path(id): Path<String>, raw: Bytes) -> SR {
    let input: EditInput = body(&raw)?;
    let now = api.now().await?;
    let read = for_update(&api, &id).await?;
    let sub = read.sub.clone();
    let has_addons = !subscription::addons_of(&api.store, &sub.id)
        .await?
        .is_empty();
    let edited = ops::edit(
        &sub,
        &input.customizations,
        &input.timing.unwrap_or_default(),
        has_addons,
        now,
        &new_id,
    )?;
    store_update(&api, &read, &edited).await?;
    provision_now(&api, std::slice::from_ref(&edited), now).await?;
    Ok(axum::Json(expanded(&api, &edited, now, now).await?).into_response())
}

async fn delete(State(api): State<Api>, Path(id): Path<String>) -> SR {
    let now = api.now().await?;
    let read = for_update(&api, &id).await?;
    let sub = read.sub.clone();
    let deleted = ops::delete(&sub, now)?;
    // The subscription it was to replace no longer is replaced: its end stays (it is canceled).
    let mut previous = None;
    if let Some(prev_id) = sub.annotation(PREVIOUS)
        && let Some(mut prev) = subscription::load(&api.store, prev_id).await?
        && prev.annotation(SUPERSEDING) == Some(sub.id.as_str())
    {
        prev.annotations.remove(SUPERSEDING);
        prev.updated_at = now;
        previous = Some(prev);
    }
    store_update(&api, &read, &deleted).await?;
    if let Some(prev) = &previous {
        subscription::save(&api.store, &[prev], &[]).await?;
    }
    provision_now(&api, std::slice::from_ref(&deleted), now).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `{timing?}`.
#[derive(Debug, Default, Deserialize)]
struct TimingInput {
    #[serde(default)]
    timing: Option<Timing>,
}

async fn cancel(State(api): State<Api>, Path(id): Path<String>, raw: Bytes) -> SR {
    let input: TimingInput = body(&raw)?;
    let now = api.now().await?;
    let read = for_update(&api, &id).await?;
    let sub = read.sub.clone();
    let canceled = ops::cancel(&sub, &input.timing.unwrap_or_default(), now)?;
    store_update(&api, &read, &canceled).await?;
    provision_now(&api, std::slice::from_ref(&canceled), now).await?;
    Ok(axum::Json(view(&canceled, now)).into_response())
}

async fn unschedule_cancelation(State(api): State<Api>, Path(id): Path<String>) -> SR {
    let now = api.now().await?;
    let read = for_update(&api, &id).await?;
    let sub = read.sub.clone();
    let out = ops::unschedule_cancelation(&sub, now)?;
    store_update(&api, &read, &out).await?;
    provision_now(&api, std::slice::from_ref(&out), now).await?;
    Ok(axum::Json(view(&out, now)).into_response())
}

async fn restore(State(api): State<Api>, Path(id): Path<String>) -> SR {
    let now = api.now().await?;
    let read = for_update(&api, &id).await?;
    let sub = read.sub.clone();
    let (out, successor) = ops::restore(&sub, now)?;
    let mut gone = None;
    if let Some(next_id) = successor
        && let Some(next) = subscription::load(&api.store, &next_id).await?
    {
        gone = Some(ops::delete(&next, now).map_err(|_| {
            Refusal::conflict(
                "$",
                "subscription_successor_started",
                format!("subscription {next_id} already replaced this one: restore is too late"),
            )
        })?);
    }
    store_update(&api, &read, &out).await?;
    if let Some(g) = &gone {
        subscription::save(&api.store, &[g], &[]).await?;
    }
    let mut all = vec![out.clone()];
    all.extend(gone);
    provision_now(&api, &all, now).await?;
    Ok(axum::Json(view(&out, now)).into_response())
}

/// Ends `sub` at `timing` and starts `next_input`'s plan exactly then.
async fn replace(
    api: &Api,
    read: subscription::ForUpdate,
    input: CreateInput,
    plan: Plan,
    custom: bool,
    timing: Timing,
    now: DateTime<Utc>,
) -> SR {
    let sub = &read.sub;
    ops::refuse_change(sub, now)?;
    let at = ops::end_of(sub, &timing, now)?;
    let customer = api
        .store
        .get_entity::<Customer>("customer", &sub.customer_id)
        .await?
        .ok_or_else(|| {
            Refusal::conflict(
                "$.customerId",
                "customer_not_found",
                format!("customer {} not found", sub.customer_id),
            )
        })?;
    let anchor = input.billing_anchor.or(Some(sub.billing_anchor));
    let mut next = ops::build(new_subscription(
        &input, &plan, custom, &customer, at, anchor, now,
    ))?;
    if input.name.is_none() && custom {
        next.name = plan.name.clone();
    }
    let (current, next) = ops::supersede(sub, next, at, now);
    // The successor first, then the subscription it replaces if nobody changed that meanwhile
    // (else the successor is taken back).
    subscription::insert(&api.store, &next).await?;
    if let Err(e) = store_update(api, &read, &current).await {
        take_back(api, &next, now).await?;
        return Err(e);
    }
    provision_now(api, &[current.clone(), next.clone()], now).await?;
    let next_view = expanded(api, &next, now.max(next.active_from), now).await?;
    Ok(axum::Json(json!({"current": view(&current, now), "next": next_view})).into_response())
}

async fn change(State(api): State<Api>, Path(id): Path<String>, raw: Bytes) -> SR {
    let input: CreateInput = body(&raw)?;
    let now = api.now().await?;
    let read = for_update(&api, &id).await?;
    let sub = read.sub.clone();
    let timing = input.timing.ok_or_else(|| {
        Refusal::invalid(
            "$.timing",
            "timing_required",
            "timing is required: immediate, next_billing_cycle or a date-time",
        )
    })?;
    ops::refuse_change(&sub, now)?;
    let (plan, custom) = plan_of(&api, &input, now).await?;
    replace(&api, read, input, plan, custom, timing, now).await
}

/// `{targetVersion?, timing?, startingPhase?, billingAnchor?}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MigrateInput {
    #[serde(default)]
    target_version: Option<i64>,
    #[serde(default)]
    timing: Option<Timing>,
    #[serde(default)]
    starting_phase: Option<String>,
    #[serde(default)]
    billing_anchor: Option<DateTime<Utc>>,
}

async fn migrate(State(api): State<Api>, Path(id): Path<String>, raw: Bytes) -> SR {
    let input: MigrateInput = body(&raw)?;
    let now = api.now().await?;
    let read = for_update(&api, &id).await?;
    let sub = read.sub.clone();
    ops::refuse_change(&sub, now)?;
    let all = versions::all::<Plan>(&api.store, now).await?;
    let plan = ops::migration_target(&sub, &all, input.target_version)?.clone();
    let as_create = CreateInput {
        plan: None,
        custom_plan: None,
        customer_id: None,
        customer_key: None,
        timing: None,
        billing_anchor: input.billing_anchor,
        starting_phase: input.starting_phase,
        name: Some(sub.name.clone()),
        description: sub.description.clone(),
        metadata: sub.metadata.clone(),
        settlement_mode: Some(sub.settlement_mode.clone()),
        _cost_basis_mode: None,
        _alignment: None,
    };
    replace(
        &api,
        read,
        as_create,
        plan,
        false,
        input.timing.unwrap_or_default(),
        now,
    )
    .await
}
