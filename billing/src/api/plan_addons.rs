//! Plan add-ons, OpenMeter v1: `GET/POST /api/v1/plans/{planId}/addons` and `GET/PUT/DELETE
//! /api/v1/plans/{planId}/addons/{planAddonId}` (`planAddonId`: the add-on's id or key). An
//! add-on is offered with a plan from one of its phases on, under the rules in
//! [`crate::catalog::plan_addons`].

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::addons::{addon_by, all_addons};
use super::catalog_http::{CR, Failure, catalog_body, list_query, page};
use super::plans::plan_by;
use super::{Api, new_id};
use crate::catalog::CatalogError;
use crate::catalog::model::{Addon, Plan, PlanAddonRecord};
use crate::catalog::plan_addons;

/// Plan add-on routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/api/v1/plans/{plan_id}/addons",
            get(list_plan_addons).post(create_plan_addon),
        )
        .route(
            "/api/v1/plans/{plan_id}/addons/{plan_addon_id}",
            get(get_plan_addon)
                .put(update_plan_addon)
                .delete(delete_plan_addon),
        )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlanAddonInput {
    #[serde(default)]
    addon_id: Option<String>,
    from_plan_phase: String,
    #[serde(default)]
    max_quantity: Option<i64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

fn render(record: &PlanAddonRecord, addon: &Addon) -> Value {
    json!({
        "id": record.id,
        "createdAt": record.created_at,
        "updatedAt": record.updated_at,
        "deletedAt": record.deleted_at,
        "metadata": record.metadata,
        "annotations": {},
        "addon": addon,
        "fromPlanPhase": record.from_plan_phase,
        "maxQuantity": record.max_quantity,
        "validationErrors": Value::Null,
    })
}

/// The plan, its add-on records, and every add-on version (to render them).
async fn context(
    api: &Api,
    plan_id: &str,
    now: DateTime<Utc>,
) -> Result<(Plan, Vec<PlanAddonRecord>, Vec<Addon>), Failure> {
    let (plan, _) = plan_by(api, plan_id, true, now).await?;
    let records: Vec<PlanAddonRecord> = api
        .store
        .list_entities::<PlanAddonRecord>("plan_addon")
        .await?
        .into_iter()
        .filter(|r| r.plan_id == plan.id)
        .collect();
    Ok((plan, records, all_addons(api, now).await?))
}

fn find<'a>(
    records: &'a [PlanAddonRecord],
    addons: &[Addon],
    id: &str,
) -> Result<&'a PlanAddonRecord, Failure> {
    records
        .iter()
        .filter(|r| r.deleted_at.is_none())
        .find(|r| {
            r.id == id
                || r.addon_id == id
                || addons.iter().any(|a| a.id == r.addon_id && a.key == id)
        })
        .ok_or_else(|| {
            CatalogError::NotFound(format!("add-on {id} is not offered with this plan")).into()
        })
}

fn addon_of<'a>(addons: &'a [Addon], r: &PlanAddonRecord) -> Result<&'a Addon, Failure> {
    addons
        .iter()
        .find(|a| a.id == r.addon_id)
        .ok_or_else(|| CatalogError::NotFound(format!("add-on {} not found", r.addon_id)).into())
}

async fn list_plan_addons(
    State(api): State<Api>,
    Path(plan_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> CR {
    let q = list_query(&raw)?;
    let now = api.now().await?;
    let (_, records, addons) = context(&api, &plan_id, now).await?;
    let mut items = Vec::new();
    for r in &records {
        let addon = addon_of(&addons, r)?;
        if q.filter.matches(addon, &addon.currency, now)
            && (q.filter.include_deleted || r.deleted_at.is_none())
        {
            items.push(render(r, addon));
        }
    }
    Ok(page(&q, items, |v, _| {
        v["addon"]["key"].as_str().unwrap_or_default().to_owned()
    }))
}

async fn create_plan_addon(State(api): State<Api>, Path(plan_id): Path<String>, body: Bytes) -> CR {
    let input: PlanAddonInput = catalog_body(&body)?;
    let now = api.now().await?;
    let (plan, records, _) = context(&api, &plan_id, now).await?;
    let addon_id = input.addon_id.clone().ok_or_else(|| {
        CatalogError::Invalid(vec![plan_addons::issue(
            "$.addonId",
            "required",
            "addonId is required".into(),
        )])
    })?;
    let (addon, _) = addon_by(&api, &addon_id, false, now).await?;
    let problems = plan_addons::check(
        &plan,
        &addon,
        &input.from_plan_phase,
        input.max_quantity,
        now,
    );
    if !problems.is_empty() {
        return Err(CatalogError::Invalid(problems).into());
    }
    if records
        .iter()
        .any(|r| r.deleted_at.is_none() && r.addon_id == addon.id)
    {
        return Err(CatalogError::Conflict(format!(
            "add-on {} is already offered with plan {}",
            addon.key, plan.key
        ))
        .into());
    }
    let record = PlanAddonRecord {
        id: new_id(),
        plan_id: plan.id.clone(),
        addon_id: addon.id.clone(),
        from_plan_phase: input.from_plan_phase,
        max_quantity: input.max_quantity,
        metadata: input.metadata,
        created_at: now,
        updated_at: now,
        deleted_at: None,
    };
    save(&api, &record).await?;
    Ok((StatusCode::CREATED, axum::Json(render(&record, &addon))).into_response())
}

async fn save(api: &Api, record: &PlanAddonRecord) -> Result<(), Failure> {
    let doc = serde_json::to_value(record)
        .map_err(|e| crate::store::StoreError::Decode(e.to_string()))?;
    api.store
        .put_entities(&[("plan_addon", &record.id, doc)])
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict(_) => {
                CatalogError::Conflict("this add-on was just offered with the plan".into()).into()
            }
            other => Failure::from(other),
        })
}

async fn get_plan_addon(State(api): State<Api>, Path((plan_id, id)): Path<(String, String)>) -> CR {
    let (_, records, addons) = context(&api, &plan_id, api.now().await?).await?;
    let r = find(&records, &addons, &id)?;
    Ok(axum::Json(render(r, addon_of(&addons, r)?)).into_response())
}

async fn update_plan_addon(
    State(api): State<Api>,
    Path((plan_id, id)): Path<(String, String)>,
    body: Bytes,
) -> CR {
    let input: PlanAddonInput = catalog_body(&body)?;
    let now = api.now().await?;
    let (plan, records, addons) = context(&api, &plan_id, now).await?;
    let mut record = find(&records, &addons, &id)?.clone();
    let addon = addon_of(&addons, &record)?.clone();
    let problems = plan_addons::check(
        &plan,
        &addon,
        &input.from_plan_phase,
        input.max_quantity,
        now,
    );
    if !problems.is_empty() {
        return Err(CatalogError::Invalid(problems).into());
    }
    record.from_plan_phase = input.from_plan_phase;
    record.max_quantity = input.max_quantity;
    record.metadata = input.metadata;
    record.updated_at = now;
    save(&api, &record).await?;
    Ok(axum::Json(render(&record, &addon)).into_response())
}

async fn delete_plan_addon(
    State(api): State<Api>,
    Path((plan_id, id)): Path<(String, String)>,
) -> Result<Response, Failure> {
    let now = api.now().await?;
    let (_, records, addons) = context(&api, &plan_id, now).await?;
    let mut record = find(&records, &addons, &id)?.clone();
    record.deleted_at = Some(now);
    record.updated_at = now;
    save(&api, &record).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
