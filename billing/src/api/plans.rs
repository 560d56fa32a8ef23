//! Plans, OpenMeter v1: `GET/POST /api/v1/plans`, `GET/PUT/DELETE /api/v1/plans/{planId}` (an id,
//! or a key: its active version, or with `includeLatest=true` its newest), `POST
//! /api/v1/plans/{planId}/publish`, `/archive` and the deprecated `/next` (a new draft cloned
//! from a version). The rules live in [`crate::catalog`]; this module maps HTTP onto them.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::catalog_http::{CR, Failure, catalog_body, list_query, page};
use super::{Api, new_id};
use crate::catalog::model::{Phase, Plan, PlanAddonRecord, ProRatingConfig, Status};
use crate::catalog::plan_addons;
use crate::catalog::validate::validate_plan;
use crate::catalog::versions::{self, Versioned};
use crate::catalog::{CatalogError, feature_facts};

/// Plan routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/plans", get(list_plans).post(create_plan))
        .route(
            "/api/v1/plans/{plan_id}",
            get(get_plan).put(update_plan).delete(delete_plan),
        )
        .route("/api/v1/plans/{plan_id}/publish", post(publish_plan))
        .route("/api/v1/plans/{plan_id}/archive", post(archive_plan))
        .route("/api/v1/plans/{plan_id}/next", post(next_plan))
}

/// `PlanCreate` and `PlanReplaceUpdate` (key and currency only on create).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlanInput {
    #[serde(default)]
    key: Option<String>,
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
    #[serde(default)]
    alignment: Option<Value>,
    phases: Vec<Phase>,
}

/// Every version of every plan, status as of `now`.
pub(crate) async fn all_plans(api: &Api, now: DateTime<Utc>) -> Result<Vec<Plan>, Failure> {
    Ok(versions::all::<Plan>(&api.store, now).await?)
}

/// A plan by id or key (see the module doc), or 404.
pub(crate) async fn plan_by(
    api: &Api,
    id_or_key: &str,
    include_latest: bool,
    now: DateTime<Utc>,
) -> Result<(Plan, Vec<Plan>), Failure> {
    let all = all_plans(api, now).await?;
    let plan = versions::resolve(&all, id_or_key, include_latest, now)
        .ok_or_else(|| CatalogError::NotFound(format!("plan {id_or_key} not found")))?;
    Ok((plan, all))
}

/// Validates `plan` against today's features: critical findings refuse it, warnings are kept on
/// it.
async fn checked(api: &Api, mut plan: Plan) -> Result<Plan, Failure> {
    let findings = validate_plan(&plan, &feature_facts(&api.store).await?);
    if !findings.critical.is_empty() {
        return Err(CatalogError::Invalid(findings.critical).into());
    }
    plan.validation_errors = (!findings.warnings.is_empty()).then_some(findings.warnings);
    Ok(plan)
}

fn sort_key(p: &Plan, by: &str) -> String {
    match by {
        "id" => p.id.clone(),
        "version" => format!("{:020}{}", p.version, p.key),
        "created_at" => p.created_at.to_rfc3339(),
        "updated_at" => p.updated_at.to_rfc3339(),
        _ => format!("{}\u{0}{:020}", p.key, p.version),
    }
}

async fn list_plans(State(api): State<Api>, RawQuery(raw): RawQuery) -> CR {
    let q = list_query(&raw)?;
    let now = api.now().await?;
    let items: Vec<Plan> = all_plans(&api, now)
        .await?
        .into_iter()
        .filter(|p| q.filter.matches(p, &p.currency, now))
        .collect();
    Ok(page(&q, items, sort_key))
}

async fn create_plan(State(api): State<Api>, body: Bytes) -> CR {
    let input: PlanInput = catalog_body(&body)?;
    let now = api.now().await?;
    let key = input.key.clone().unwrap_or_default();
    let all = all_plans(&api, now).await?;
    let plan = checked(&api, plan_from(input, key.clone(), "USD".into(), now)).await?;
    let version = versions::next_version(&all, &key, now)?;
    let plan = Plan { version, ..plan };
    versions::save(&api.store, &plan).await?;
    Ok((StatusCode::CREATED, axum::Json(plan)).into_response())
}

fn plan_from(input: PlanInput, key: String, default_currency: String, now: DateTime<Utc>) -> Plan {
    Plan {
        id: new_id(),
        key,
        name: input.name,
        description: input.description,
        metadata: input.metadata,
        created_at: now,
        updated_at: now,
        deleted_at: None,
        version: 1,
        currency: input.currency.unwrap_or(default_currency),
        billing_cadence: input.billing_cadence,
        pro_rating_config: input.pro_rating_config.unwrap_or_default(),
        settlement_mode: input
            .settlement_mode
            .unwrap_or_else(|| "credit_then_invoice".into()),
        alignment: input.alignment,
        effective_from: None,
        effective_to: None,
        status: Status::Draft,
        phases: input.phases,
        validation_errors: None,
    }
}

async fn get_plan(State(api): State<Api>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> CR {
    let q = list_query(&raw)?;
    let (plan, _) = plan_by(&api, &id, q.include_latest, api.now().await?).await?;
    Ok(axum::Json(plan).into_response())
}

async fn update_plan(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> CR {
    let input: PlanInput = catalog_body(&body)?;
    let now = api.now().await?;
    let (current, _) = plan_by(&api, &id, true, now).await?;
    versions::require_status(&current, &[Status::Draft, Status::Scheduled], "update", now)?;
    versions::refuse_changed_identity(
        "plan",
        [
            ("key", input.key.as_ref(), &current.key),
            ("currency", input.currency.as_ref(), &current.currency),
        ],
    )?;
    let mut plan = plan_from(input, current.key.clone(), current.currency.clone(), now);
    plan.keep_identity_of(&current);
    let plan = checked(&api, plan).await?;
    versions::save(&api.store, &plan).await?;
    Ok(axum::Json(plan).into_response())
}

async fn delete_plan(State(api): State<Api>, Path(id): Path<String>) -> CR {
    let now = api.now().await?;
    let (plan, _) = plan_by(&api, &id, true, now).await?;
    versions::delete(&api.store, plan, now).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn publish_plan(State(api): State<Api>, Path(id): Path<String>) -> CR {
    let now = api.now().await?;
    let (plan, all) = plan_by(&api, &id, true, now).await?;
    // Features may have changed since the draft was saved: validate again.
    let plan = checked(&api, plan).await?;
    incompatible_addons(&api, &plan, now).await?;
    let plan = versions::publish(&api.store, &all, plan, now).await?;
    Ok(axum::Json(plan).into_response())
}

/// Refuses to publish a plan whose offered add-ons no longer fit it (OpenMeter's
/// `plan_has_incompatible_addon`): the add-on archived, its phase gone, its rate cards clashing.
async fn incompatible_addons(api: &Api, plan: &Plan, now: DateTime<Utc>) -> Result<(), Failure> {
    let addons = super::addons::all_addons(api, now).await?;
    let mut problems = Vec::new();
    for offer in api
        .store
        .list_entities::<PlanAddonRecord>("plan_addon")
        .await?
        .into_iter()
        .filter(|r| r.plan_id == plan.id && r.deleted_at.is_none())
    {
        let Some(addon) = addons.iter().find(|a| a.id == offer.addon_id) else {
            continue;
        };
        for p in plan_addons::check(plan, addon, &offer.from_plan_phase, offer.max_quantity, now) {
            problems.push(plan_addons::issue(
                &format!("$.addons[?(@.key=='{}')]", addon.key),
                "plan_has_incompatible_addon",
                format!("add-on {}: {} ({})", addon.key, p.message, p.code),
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CatalogError::Invalid(problems).into())
    }
}

async fn archive_plan(State(api): State<Api>, Path(id): Path<String>) -> CR {
    let now = api.now().await?;
    let (plan, _) = plan_by(&api, &id, false, now).await?;
    let plan = versions::archive(&api.store, plan, now).await?;
    Ok(axum::Json(plan).into_response())
}

/// Deprecated in OpenMeter ("use createPlan"): a new draft cloned from a version.
async fn next_plan(State(api): State<Api>, Path(id): Path<String>) -> CR {
    let now = api.now().await?;
    let (source, all) = plan_by(&api, &id, true, now).await?;
    let version = versions::next_version(&all, source.key(), now)?;
    let plan = Plan {
        id: new_id(),
        version,
        created_at: now,
        updated_at: now,
        deleted_at: None,
        effective_from: None,
        effective_to: None,
        status: Status::Draft,
        ..source
    };
    let plan = checked(&api, plan).await?;
    versions::save(&api.store, &plan).await?;
    Ok((StatusCode::CREATED, axum::Json(plan)).into_response())
}
