//! Plan add-ons, OpenMeter v1: `GET/POST /api/v1/plans/{planId}/addons` and `GET/PUT/DELETE
//! /api/v1/plans/{planId}/addons/{planAddonId}` (`planAddonId`: the add-on's id or key). An
//! add-on is offered with a plan from one of its phases on, under OpenMeter's `PlanAddon.Validate`
//! rules: the plan not archived, the add-on active, `maxQuantity` only (and > 0) for multiple
//! instances, the same currency, aligned cadences, and rate cards that may stack on the plan's.

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
use crate::catalog::model::{
    Addon, EntitlementTemplate, Plan, PlanAddonRecord, PriceDoc, RateCard, Status, ValidationIssue,
};
use crate::catalog::versions::Versioned;

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

fn issue(field: &str, code: &str, message: String) -> ValidationIssue {
    ValidationIssue {
        field: field.into(),
        code: code.into(),
        message,
        severity: Some("critical".into()),
    }
}

fn price_kind(card: &RateCard) -> &'static str {
    match &card.price {
        None => "free",
        Some(PriceDoc::Flat { .. }) => "flat",
        Some(_) => "usage",
    }
}

/// OpenMeter's `PlanAddon.Validate`, every finding critical.
fn check(
    plan: &Plan,
    addon: &Addon,
    from_phase: &str,
    max_quantity: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<ValidationIssue> {
    let mut out = Vec::new();
    if !matches!(
        plan.status_at(now),
        Status::Draft | Status::Active | Status::Scheduled
    ) {
        out.push(issue(
            "$.planId",
            "plan_addon_invalid_plan_status",
            format!(
                "plan {} is {}: add-ons go on draft, active or scheduled plans",
                plan.id,
                plan.status_at(now).as_str()
            ),
        ));
    }
    if addon.status_at(now) != Status::Active || addon.effective_to.is_some() {
        out.push(issue(
            "$.addonId",
            "plan_addon_invalid_addon_status",
            format!(
                "add-on {} is {}: only a published (active) add-on can be offered",
                addon.id,
                addon.status_at(now).as_str()
            ),
        ));
    }
    match (addon.instance_type.as_str(), max_quantity) {
        ("single", Some(_)) => out.push(issue(
            "$.maxQuantity",
            "plan_addon_max_quantity_must_not_be_set",
            "maxQuantity is only for multiple-instance add-ons".into(),
        )),
        ("multiple", Some(q)) if q <= 0 => out.push(issue(
            "$.maxQuantity",
            "plan_addon_max_quantity_must_be_positive",
            format!("maxQuantity must be greater than 0, got {q}"),
        )),
        _ => {}
    }
    if addon.currency != plan.currency {
        out.push(issue(
            "$.addonId",
            "plan_addon_currency_mismatch",
            format!(
                "add-on currency {} differs from the plan's {}",
                addon.currency, plan.currency
            ),
        ));
    }
    let Some(start) = plan.phases.iter().position(|p| p.key == from_phase) else {
        out.push(issue(
            "$.fromPlanPhase",
            "plan_addon_unknown_plan_phase_key",
            format!("plan {} has no phase {from_phase:?}", plan.id),
        ));
        return out;
    };
    let plan_cadence = crate::entitlement::Interval::parse(&plan.billing_cadence).ok();
    for card in &addon.rate_cards {
        let field = format!("$.addon.rateCards[?(@.key=='{}')]", card.key);
        if let (Some(c), Some(p)) = (
            card.billing_cadence
                .as_deref()
                .and_then(|c| crate::entitlement::Interval::parse(c).ok()),
            plan_cadence,
        ) {
            let months = |i| match i {
                crate::entitlement::Interval::Months(m) => Some(m),
                _ => None,
            };
            let ok = match (months(c), months(p)) {
                (Some(a), Some(b)) => a % b == 0 || b % a == 0,
                (None, None) => true,
                _ => false,
            };
            if !ok {
                out.push(issue(
                    &format!("{field}.billingCadence"),
                    "plan_billing_cadence_not_compatible",
                    format!(
                        "rate card cadence {} does not align with the plan's {}",
                        card.billing_cadence.as_deref().unwrap_or(""),
                        plan.billing_cadence
                    ),
                ));
            }
        }
        for phase in &plan.phases[start..] {
            let Some(theirs) = phase.rate_cards.iter().find(|c| c.key == card.key) else {
                continue;
            };
            let mut refuse = |code: &str, why: &str| {
                out.push(issue(
                    &field,
                    code,
                    format!(
                        "rate card {} overlaps phase {}'s: {why}",
                        card.key, phase.key
                    ),
                ))
            };
            if price_kind(card) != "flat" || price_kind(theirs) != "flat" {
                refuse(
                    "rate_card_only_flat_price_allowed",
                    "both prices must be flat",
                );
            } else if let (
                Some(PriceDoc::Flat {
                    payment_term: a, ..
                }),
                Some(PriceDoc::Flat {
                    payment_term: b, ..
                }),
            ) = (&card.price, &theirs.price)
                && a != b
            {
                refuse(
                    "rate_card_price_payment_term_mismatch",
                    "both flat prices need the same paymentTerm",
                );
            }
            if card.feature_key != theirs.feature_key
                || card.billing_cadence != theirs.billing_cadence
            {
                refuse(
                    "rate_card_feature_or_cadence_mismatch",
                    "featureKey and billingCadence must be equal",
                );
            }
            match (&card.entitlement_template, &theirs.entitlement_template) {
                (Some(EntitlementTemplate::Static { .. }), _)
                | (_, Some(EntitlementTemplate::Static { .. })) => {
                    refuse(
                        "rate_card_static_entitlement_not_allowed",
                        "static entitlements cannot stack",
                    );
                }
                (
                    Some(EntitlementTemplate::Metered {
                        usage_period: a, ..
                    }),
                    Some(EntitlementTemplate::Metered {
                        usage_period: b, ..
                    }),
                ) if a != b => {
                    refuse(
                        "rate_card_entitlement_usage_period_mismatch",
                        "metered entitlements need the same usagePeriod",
                    );
                }
                (Some(a), Some(b)) if std::mem::discriminant(a) != std::mem::discriminant(b) => {
                    refuse(
                        "rate_card_entitlement_type_mismatch",
                        "entitlement templates must be of the same type",
                    );
                }
                _ => {}
            }
            let pct = |c: &RateCard| c.discounts.as_ref().is_some_and(|d| d.percentage.is_some());
            if pct(card) && pct(theirs) {
                refuse(
                    "rate_card_percentage_discount_not_allowed",
                    "only one of them may have a percentage discount",
                );
            }
        }
    }
    out
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
    let now = Utc::now();
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
    let now = Utc::now();
    let (plan, records, _) = context(&api, &plan_id, now).await?;
    let addon_id = input.addon_id.clone().ok_or_else(|| {
        CatalogError::Invalid(vec![issue(
            "$.addonId",
            "required",
            "addonId is required".into(),
        )])
    })?;
    let (addon, _) = addon_by(&api, &addon_id, false, now).await?;
    let problems = check(
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
    let (_, records, addons) = context(&api, &plan_id, Utc::now()).await?;
    let r = find(&records, &addons, &id)?;
    Ok(axum::Json(render(r, addon_of(&addons, r)?)).into_response())
}

async fn update_plan_addon(
    State(api): State<Api>,
    Path((plan_id, id)): Path<(String, String)>,
    body: Bytes,
) -> CR {
    let input: PlanAddonInput = catalog_body(&body)?;
    let now = Utc::now();
    let (plan, records, addons) = context(&api, &plan_id, now).await?;
    let mut record = find(&records, &addons, &id)?.clone();
    let addon = addon_of(&addons, &record)?.clone();
    let problems = check(
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
    let now = Utc::now();
    let (_, records, addons) = context(&api, &plan_id, now).await?;
    let mut record = find(&records, &addons, &id)?.clone();
    record.deleted_at = Some(now);
    record.updated_at = now;
    save(&api, &record).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
