//! Entitlements: who owns one ([`Owner`]: a customer on the v1 customer / v2 paths, a subject on
//! the v1 subject paths), create / list / get, values (`…/value`) and `GET
//! /api/v1/customers/{c}/access`.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::customers::customer_by;
use super::features::feature_by;
use super::{Api, Problem, R, bad, conflict, new_id, not_found, parse_time, query_pairs};
use crate::entitlement::{self, Customer, Entitlement, EntitlementValue, Feature, Grant, Interval};

/// Entitlement and value routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/customers/{c}/access", get(customer_access))
        .route(
            "/api/v1/customers/{c}/entitlements/{f}/value",
            get(customer_value),
        )
        .route(
            "/api/v2/customers/{c}/entitlements",
            get(list_customer_entitlements).post(create_customer_entitlement),
        )
        .route(
            "/api/v2/customers/{c}/entitlements/{e}",
            get(get_customer_entitlement),
        )
        .route(
            "/api/v2/customers/{c}/entitlements/{e}/value",
            get(customer_value_v2),
        )
        .route(
            "/api/v1/subjects/{s}/entitlements",
            get(list_subject_entitlements).post(create_subject_entitlement),
        )
        .route(
            "/api/v1/subjects/{s}/entitlements/{e}/value",
            get(subject_value),
        )
}

/// Whose entitlement: a customer (v1 customer / v2 paths) or a bare subject (v1 subject paths).
pub(crate) enum Owner {
    Customer(Customer),
    Subject(String),
}

impl Owner {
    pub(crate) fn subjects(&self) -> Vec<String> {
        match self {
            Owner::Customer(c) => c.subjects(),
            Owner::Subject(s) => vec![s.clone()],
        }
    }

    pub(crate) fn owns(&self, e: &Entitlement) -> bool {
        match self {
            Owner::Customer(c) => e.customer_id.as_deref() == Some(c.id.as_str()),
            Owner::Subject(s) => e.subject_key.as_deref() == Some(s.as_str()),
        }
    }
}

/// The v1 subject paths: the customer whose usage attribution holds the subject (as OpenMeter
/// resolves subjects since customers), else the bare subject.
pub(crate) async fn subject_owner(api: &Api, s: String) -> Result<Owner, Problem> {
    let customer = api
        .store
        .list_entities::<Customer>("customer")
        .await?
        .into_iter()
        .find(|c| c.subjects().contains(&s));
    Ok(match customer {
        Some(c) => Owner::Customer(c),
        None => Owner::Subject(s),
    })
}

pub(crate) async fn customer_owner(api: &Api, c: &str) -> Result<Owner, Problem> {
    Ok(Owner::Customer(customer_by(api, c).await?.ok_or_else(
        || not_found(format!("customer {c} not found")),
    )?))
}

pub(crate) async fn entitlements_of(api: &Api, owner: &Owner) -> Result<Vec<Entitlement>, Problem> {
    Ok(api
        .store
        .list_entities::<Entitlement>("entitlement")
        .await?
        .into_iter()
        .filter(|e| owner.owns(e))
        .collect())
}

pub(crate) async fn entitlement_of(
    api: &Api,
    owner: &Owner,
    id_or_feature: &str,
) -> Result<Entitlement, Problem> {
    entitlements_of(api, owner)
        .await?
        .into_iter()
        .find(|e| e.id == id_or_feature || e.feature_key == id_or_feature)
        .ok_or_else(|| not_found(format!("entitlement {id_or_feature} not found")))
}

async fn create_entitlement(api: &Api, owner: Owner, body: &Bytes) -> R {
    let raw: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let mut e: Entitlement = serde_json::from_value(raw.clone())
        .map_err(|err| bad(format!("invalid entitlement: {err}")))?;
    let feature_ref = raw["featureKey"]
        .as_str()
        .or(raw["featureId"].as_str())
        .ok_or_else(|| bad("featureKey or featureId is required"))?;
    let feature = feature_by(api, feature_ref)
        .await?
        .ok_or_else(|| bad(format!("feature {feature_ref} not found")))?;
    match e.kind.as_str() {
        "metered" => {
            if feature.meter_slug.is_none() {
                return Err(bad(format!(
                    "feature {} has no meter: a metered entitlement needs one",
                    feature.key
                )));
            }
            let period = e
                .usage_period
                .as_ref()
                .ok_or_else(|| bad("usagePeriod is required for metered entitlements"))?;
            Interval::parse(&period.interval)
                .map_err(|m| bad(format!("usagePeriod.interval: {m}")))?;
            // v2 `issue: {amount, priority}` is the newer spelling of issueAfterReset.
            if let Some(amount) = raw["issue"]["amount"].as_f64() {
                e.issue_after_reset = rust_decimal::Decimal::try_from(amount).ok();
                e.issue_after_reset_priority = raw["issue"]["priority"].as_u64().map(|p| p as u8);
            }
        }
        "boolean" => {}
        "static" => {
            let config = e
                .config
                .as_deref()
                .ok_or_else(|| bad("config is required for static entitlements"))?;
            serde_json::from_str::<Value>(config)
                .map_err(|_| bad("config must be a JSON string"))?;
        }
        other => {
            return Err(bad(format!(
                "type: {other:?} is not metered, boolean or static"
            )));
        }
    }
    if entitlements_of(api, &owner)
        .await?
        .iter()
        .any(|x| x.feature_id == feature.id)
    {
        return Err(conflict(format!(
            "an entitlement for feature {} already exists",
            feature.key
        )));
    }
    e.id = new_id();
    e.feature_id = feature.id.clone();
    e.feature_key = feature.key.clone();
    match &owner {
        Owner::Customer(c) => {
            e.customer_id = Some(c.id.clone());
            e.customer_key = c.key.clone();
        }
        Owner::Subject(s) => e.subject_key = Some(s.clone()),
    }
    let now = api.now().await?;
    e.created_at = now;
    e.updated_at = e.created_at;
    e.resets.clear();
    // Only a subscription provisions annotated entitlements.
    e.annotations = None;
    api.store.put_entity("entitlement", &e.id, &e).await?;
    // v2 inline grants.
    if let Some(grants) = raw["grants"].as_array() {
        for g in grants {
            let mut g: Grant =
                serde_json::from_value(g.clone()).map_err(|err| bad(format!("grants: {err}")))?;
            g.normalise().map_err(|m| bad(format!("grants: {m}")))?;
            g.id = new_id();
            g.entitlement_id = e.id.clone();
            g.created_at = now;
            api.store.put_entity("grant", &g.id, &g).await?;
        }
    }
    Ok((StatusCode::CREATED, axum::Json(with_period(e, now))).into_response())
}

/// `e` with its current usage period at `now` (and its last reset) filled in.
fn with_period(mut e: Entitlement, now: DateTime<Utc>) -> Entitlement {
    if let Some(p) = &e.usage_period
        && Interval::parse(&p.interval).is_ok()
    {
        // The grid the balance engine resets on.
        let (interval, anchor, _) = e.period_basis();
        let (from, to) = interval.period_at(anchor, now);
        e.current_usage_period = Some(json!({"from": from, "to": to}));
    }
    e.last_reset = e.resets.last().map(|r| r.at);
    e
}

/// `EntitlementValue` (v1) or `EntitlementValueV2` (`v2`: with `grantBalances`).
async fn value_of(
    api: &Api,
    owner: &Owner,
    id_or_feature: &str,
    raw: &Option<String>,
    v2: bool,
) -> R {
    let at = match query_pairs(raw).into_iter().find(|(k, _)| k == "time") {
        Some((_, v)) => parse_time("time", &v)?,
        None => api.now().await?,
    };
    let Ok(e) = entitlement_of(api, owner, id_or_feature).await else {
        // OpenMeter: no entitlement means no access, unless the feature itself is unknown.
        if feature_by(api, id_or_feature).await?.is_none() {
            return Err(not_found(format!("feature {id_or_feature} not found")));
        }
        return Ok(axum::Json(EntitlementValue::no_access()).into_response());
    };
    let feature = feature_by(api, &e.feature_id)
        .await?
        .or(api
            .store
            .get_entity::<Feature>("feature", &e.feature_id)
            .await?)
        .ok_or_else(|| not_found(format!("feature {} not found", e.feature_key)))?;
    let grants: Vec<Grant> = api
        .store
        .list_entities::<Grant>("grant")
        .await?
        .into_iter()
        .filter(|g| g.entitlement_id == e.id)
        .collect();
    let v = entitlement::value(&api.store, &e, &feature, &owner.subjects(), &grants, at).await?;
    Ok(axum::Json(if v2 { v } else { v.v1() }).into_response())
}

async fn customer_value(
    State(api): State<Api>,
    Path((c, f)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> R {
    let owner = customer_owner(&api, &c).await?;
    value_of(&api, &owner, &f, &raw, false).await
}

async fn customer_value_v2(
    State(api): State<Api>,
    Path((c, f)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> R {
    let owner = customer_owner(&api, &c).await?;
    value_of(&api, &owner, &f, &raw, true).await
}

async fn subject_value(
    State(api): State<Api>,
    Path((s, f)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> R {
    value_of(&api, &subject_owner(&api, s).await?, &f, &raw, false).await
}

async fn customer_access(State(api): State<Api>, Path(c): Path<String>) -> R {
    let owner = customer_owner(&api, &c).await?;
    let now = api.now().await?;
    let mut out = HashMap::new();
    for e in entitlements_of(&api, &owner).await? {
        let Some(feature) = api
            .store
            .get_entity::<Feature>("feature", &e.feature_id)
            .await?
        else {
            continue;
        };
        let grants: Vec<Grant> = api
            .store
            .list_entities::<Grant>("grant")
            .await?
            .into_iter()
            .filter(|g| g.entitlement_id == e.id)
            .collect();
        out.insert(
            e.feature_key.clone(),
            entitlement::value(&api.store, &e, &feature, &owner.subjects(), &grants, now)
                .await?
                .v1(),
        );
    }
    Ok(axum::Json(json!({"entitlements": out})).into_response())
}

async fn list_customer_entitlements(State(api): State<Api>, Path(c): Path<String>) -> R {
    let owner = customer_owner(&api, &c).await?;
    let now = api.now().await?;
    let items: Vec<Entitlement> = entitlements_of(&api, &owner)
        .await?
        .into_iter()
        .map(|e| with_period(e, now))
        .collect();
    Ok(axum::Json(
        json!({"items": items, "page": 1, "pageSize": items.len(), "totalCount": items.len()}),
    )
    .into_response())
}

async fn create_customer_entitlement(
    State(api): State<Api>,
    Path(c): Path<String>,
    body: Bytes,
) -> R {
    let owner = customer_owner(&api, &c).await?;
    create_entitlement(&api, owner, &body).await
}

async fn get_customer_entitlement(
    State(api): State<Api>,
    Path((c, e)): Path<(String, String)>,
) -> R {
    let owner = customer_owner(&api, &c).await?;
    let now = api.now().await?;
    Ok(axum::Json(with_period(entitlement_of(&api, &owner, &e).await?, now)).into_response())
}

async fn list_subject_entitlements(State(api): State<Api>, Path(s): Path<String>) -> R {
    let now = api.now().await?;
    let items: Vec<Entitlement> = entitlements_of(&api, &subject_owner(&api, s).await?)
        .await?
        .into_iter()
        .map(|e| with_period(e, now))
        .collect();
    Ok(axum::Json(items).into_response())
}

async fn create_subject_entitlement(
    State(api): State<Api>,
    Path(s): Path<String>,
    body: Bytes,
) -> R {
    create_entitlement(&api, subject_owner(&api, s).await?, &body).await
}
