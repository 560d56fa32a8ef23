//! Billing profiles: `GET/POST /api/v1/billing/profiles`, `GET/PUT/DELETE
//! /api/v1/billing/profiles/{id}` (`expand=apps` inlines the apps). One profile is the default:
//! making another the default demotes it in the same transaction; the default cannot be unset or
//! deleted, nor can a profile customers are pinned to or with invoices not yet final.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Api, R, bad, conflict, json_body, not_found, query_pairs};
use crate::app::{self, App};
use crate::invoice::lifecycle;
use crate::invoice::model::Invoice;
use crate::invoice::profile::{
    self, BillingProfile, CustomerOverride, KIND, OVERRIDE_KIND, Party, ProfileApps, Workflow,
};

/// Billing profile routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/api/v1/billing/profiles",
            get(list_profiles).post(create_profile),
        )
        .route(
            "/api/v1/billing/profiles/{id}",
            get(get_profile).put(update_profile).delete(delete_profile),
        )
}

/// The profile with its apps inlined when `expand` asks for them.
pub(crate) async fn profile_view(
    api: &Api,
    p: &BillingProfile,
    expand_apps: bool,
) -> Result<Value, super::Problem> {
    let mut v = serde_json::to_value(p).map_err(|e| bad(e.to_string()))?;
    if expand_apps {
        for cap in ["tax", "invoicing", "payment"] {
            let id = v["apps"][cap]["id"].as_str().unwrap_or_default().to_owned();
            if let Some(a) = api.store.get_entity::<App>(app::KIND, &id).await? {
                v["apps"][cap] = serde_json::to_value(a).unwrap_or_default();
            }
        }
    }
    Ok(v)
}

fn expands_apps(raw: &Option<String>) -> bool {
    query_pairs(raw)
        .iter()
        .any(|(k, v)| k.trim_end_matches("[]") == "expand" && v == "apps")
}

async fn list_profiles(State(api): State<Api>, RawQuery(raw): RawQuery) -> R {
    let mut include_archived = false;
    let (mut page, mut page_size, mut desc, mut order_by) =
        (1usize, 100usize, false, "createdAt".to_owned());
    for (k, v) in query_pairs(&raw) {
        match k.as_str() {
            "includeArchived" => include_archived = v == "true",
            "page" => {
                page = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad(format!("page: {v:?} must be an integer ≥ 1")))?
            }
            "pageSize" => {
                page_size = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| bad(format!("pageSize: {v:?} must be an integer in 1..=1000")))?
            }
            "order" => {
                desc = match v.as_str() {
                    "ASC" => false,
                    "DESC" => true,
                    _ => return Err(bad(format!("order: {v:?} is not ASC or DESC"))),
                }
            }
            "orderBy" => {
                if !matches!(v.as_str(), "createdAt" | "updatedAt" | "default" | "name") {
                    return Err(bad(format!(
                        "orderBy: {v:?} is not createdAt, updatedAt, default or name"
                    )));
                }
                order_by = v;
            }
            _ => {}
        }
    }
    let mut all: Vec<BillingProfile> = api.store.list_entities(KIND).await?;
    all.retain(|p| include_archived || p.deleted_at.is_none());
    all.sort_by_key(|p| match order_by.as_str() {
        "updatedAt" => p.updated_at.to_rfc3339(),
        "default" => (!p.default as u8).to_string(),
        "name" => p.name.clone(),
        _ => p.created_at.to_rfc3339(),
    });
    if desc {
        all.reverse();
    }
    let total = all.len();
    let expand = expands_apps(&raw);
    let mut items = Vec::new();
    for p in all.iter().skip((page - 1) * page_size).take(page_size) {
        items.push(profile_view(&api, p, expand).await?);
    }
    Ok(axum::Json(
        json!({"totalCount": total, "page": page, "pageSize": page_size, "items": items}),
    )
    .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileCreate {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    supplier: Party,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    workflow: Workflow,
    apps: AppIds,
}

#[derive(Deserialize)]
struct AppIds {
    tax: String,
    invoicing: String,
    payment: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileUpdate {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    supplier: Party,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    workflow: Workflow,
}

fn check(name: &str, supplier: &Party, workflow: &Workflow) -> Result<(), super::Problem> {
    let mut problems = Vec::new();
    if name.trim().is_empty() {
        problems.push("name: required".to_owned());
    }
    problems.extend(profile::supplier_problems(supplier));
    problems.extend(workflow.problems());
    if problems.is_empty() {
        Ok(())
    } else {
        Err(bad(format!(
            "invalid billing profile: {}",
            problems.join("; ")
        )))
    }
}

/// Stores `p`, demoting the current default in the same transaction when `p` is the default.
async fn store_profile(api: &Api, p: &BillingProfile) -> Result<(), super::Problem> {
    let mut docs: Vec<(&str, &str, Value)> = Vec::new();
    let old = if p.default {
        profile::default_profile(&api.store)
            .await?
            .filter(|d| d.id != p.id)
    } else {
        None
    };
    let demoted = old.map(|mut d| {
        d.default = false;
        d.updated_at = p.updated_at;
        d
    });
    if let Some(d) = &demoted {
        docs.push((
            KIND,
            &d.id,
            serde_json::to_value(d).map_err(|e| bad(e.to_string()))?,
        ));
    }
    docs.push((
        KIND,
        &p.id,
        serde_json::to_value(p).map_err(|e| bad(e.to_string()))?,
    ));
    api.store.put_entities(&docs).await?;
    Ok(())
}

async fn create_profile(State(api): State<Api>, body: Bytes) -> R {
    let c: ProfileCreate = json_body(&body)?;
    check(&c.name, &c.supplier, &c.workflow)?;
    for (cap, id) in [
        ("tax", &c.apps.tax),
        ("invoicing", &c.apps.invoicing),
        ("payment", &c.apps.payment),
    ] {
        match api.store.get_entity::<App>(app::KIND, id).await? {
            Some(a) if a.deleted_at.is_none() => {}
            _ => return Err(bad(format!("apps.{cap}: app {id} is not installed"))),
        }
    }
    let now = api.now().await?;
    let p = BillingProfile {
        id: crate::invoice::new_id(),
        name: c.name,
        description: c.description,
        metadata: c.metadata,
        created_at: now,
        updated_at: now,
        deleted_at: None,
        supplier: c.supplier,
        workflow: c.workflow,
        apps: ProfileApps {
            tax: json!({"id": c.apps.tax}),
            invoicing: json!({"id": c.apps.invoicing}),
            payment: json!({"id": c.apps.payment}),
        },
        default: c.default,
    };
    store_profile(&api, &p).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(profile_view(&api, &p, false).await?),
    )
        .into_response())
}

async fn live_profile(api: &Api, id: &str) -> Result<BillingProfile, super::Problem> {
    api.store
        .get_entity::<BillingProfile>(KIND, id)
        .await?
        .filter(|p| p.deleted_at.is_none())
        .ok_or_else(|| not_found(format!("billing profile {id} not found")))
}

async fn get_profile(State(api): State<Api>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> R {
    let p = live_profile(&api, &id).await?;
    Ok(axum::Json(profile_view(&api, &p, expands_apps(&raw)).await?).into_response())
}

async fn update_profile(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> R {
    let u: ProfileUpdate = json_body(&body)?;
    check(&u.name, &u.supplier, &u.workflow)?;
    let mut p = live_profile(&api, &id).await?;
    if p.default && !u.default {
        return Err(bad(format!(
            "default: billing profile {id} is the default; make another profile the default instead of unsetting it"
        )));
    }
    p.name = u.name;
    p.description = u.description;
    p.metadata = u.metadata;
    p.supplier = u.supplier;
    p.workflow = u.workflow;
    p.default = u.default;
    p.updated_at = api.now().await?;
    store_profile(&api, &p).await?;
    Ok(axum::Json(profile_view(&api, &p, false).await?).into_response())
}

async fn delete_profile(State(api): State<Api>, Path(id): Path<String>) -> R {
    let mut p = live_profile(&api, &id).await?;
    if p.default {
        return Err(conflict(format!(
            "billing profile {id} is the default profile and cannot be deleted"
        )));
    }
    let pinned: Vec<CustomerOverride> = api
        .store
        .list_entities_where(OVERRIDE_KIND, "profile_id", &id)
        .await?;
    if let Some(o) = pinned.first() {
        return Err(conflict(format!(
            "billing profile {id} is pinned by customer {} (and {} more): remove those overrides first",
            o.customer_id,
            pinned.len() - 1
        )));
    }
    let open: Vec<Invoice> = api.store.list_entities(lifecycle::KIND).await?;
    if let Some(i) = open.iter().find(|i| {
        i.workflow.source_billing_profile_id == id
            && !matches!(
                i.status.as_str(),
                "paid" | "voided" | "uncollectible" | "deleted"
            )
    }) {
        return Err(conflict(format!(
            "billing profile {id} has invoice {} in status {}: finalize its invoices first",
            i.id,
            i.ext()
        )));
    }
    let now = api.now().await?;
    p.deleted_at = Some(now);
    p.updated_at = now;
    api.store.put_entity(KIND, &p.id, &p).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
