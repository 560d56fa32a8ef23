//! Customer overrides: `GET /api/v1/billing/customers`, `GET/PUT/DELETE
//! /api/v1/billing/customers/{customerId}` — which billing profile a customer's invoices use
//! (the default when not pinned), answered with the merged profile values.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::billing_profiles::profile_view;
use super::customers::customer_by;
use super::{Api, Problem, R, bad, json_body, not_found, query_pairs};
use crate::entitlement::Customer;
use crate::invoice::profile::{self, BillingProfile, CustomerOverride, KIND, OVERRIDE_KIND};

/// Customer override routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/billing/customers", get(list_overrides))
        .route(
            "/api/v1/billing/customers/{c}",
            get(get_override)
                .put(upsert_override)
                .delete(delete_override),
        )
}

async fn view(api: &Api, customer: &Customer, expand: &[String]) -> Result<Value, Problem> {
    let o = api
        .store
        .get_entity::<CustomerOverride>(OVERRIDE_KIND, &customer.id)
        .await?;
    let base = profile::default_profile(&api.store).await?;
    let effective = profile::profile_for(&api.store, &customer.id).await?;
    let mut v = json!({
        "baseBillingProfileId": base.as_ref().map(|p| p.id.clone()),
    });
    if let Some(o) = o {
        v["customerOverride"] = serde_json::to_value(o).unwrap_or_default();
    }
    if let Some(p) = effective {
        let pv = profile_view(api, &p, expand.iter().any(|e| e == "apps")).await?;
        v["customerProfile"] =
            json!({"supplier": pv["supplier"], "workflow": pv["workflow"], "apps": pv["apps"]});
    }
    if expand.iter().any(|e| e == "customer") {
        v["customer"] = serde_json::to_value(customer).unwrap_or_default();
    }
    Ok(v)
}

fn expand_of(raw: &Option<String>) -> Vec<String> {
    query_pairs(raw)
        .into_iter()
        .filter(|(k, _)| k.trim_end_matches("[]") == "expand")
        .map(|(_, v)| v)
        .collect()
}

async fn customer(api: &Api, c: &str) -> Result<Customer, Problem> {
    customer_by(api, c)
        .await?
        .ok_or_else(|| not_found(format!("customer {c} not found")))
}

async fn list_overrides(State(api): State<Api>, RawQuery(raw): RawQuery) -> R {
    let mut include_all = true;
    let mut without_pinned = false;
    let (mut profiles, mut ids) = (Vec::new(), Vec::new());
    let (mut page, mut page_size) = (1usize, 100usize);
    for (k, v) in query_pairs(&raw) {
        match k.trim_end_matches("[]") {
            "includeAllCustomers" => include_all = v != "false",
            "customersWithoutPinnedProfile" => without_pinned = v == "true",
            "billingProfile" => profiles.push(v),
            "customerId" => ids.push(v),
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
            _ => {}
        }
    }
    let expand = expand_of(&raw);
    let overrides: Vec<CustomerOverride> = api.store.list_entities(OVERRIDE_KIND).await?;
    let customers: Vec<Customer> = api.store.list_entities("customer").await?;
    let mut items = Vec::new();
    for c in &customers {
        let o = overrides.iter().find(|o| o.customer_id == c.id);
        let pinned = o.and_then(|o| o.billing_profile_id.clone());
        if (!include_all && o.is_none())
            || (without_pinned && pinned.is_some())
            || (!ids.is_empty() && !ids.contains(&c.id))
            || (!profiles.is_empty() && !pinned.as_ref().is_some_and(|p| profiles.contains(p)))
        {
            continue;
        }
        items.push(c);
    }
    let total = items.len();
    let mut out = Vec::new();
    for c in items
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
    {
        out.push(view(&api, c, &expand).await?);
    }
    Ok(
        axum::Json(json!({"totalCount": total, "page": page, "pageSize": page_size, "items": out}))
            .into_response(),
    )
}

async fn get_override(State(api): State<Api>, Path(c): Path<String>, RawQuery(raw): RawQuery) -> R {
    let customer = customer(&api, &c).await?;
    Ok(axum::Json(view(&api, &customer, &expand_of(&raw)).await?).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Upsert {
    #[serde(default)]
    billing_profile_id: Option<String>,
}

async fn upsert_override(State(api): State<Api>, Path(c): Path<String>, body: Bytes) -> R {
    let u: Upsert = if body.is_empty() {
        Upsert {
            billing_profile_id: None,
        }
    } else {
        json_body(&body)?
    };
    let customer = customer(&api, &c).await?;
    if let Some(pid) = &u.billing_profile_id
        && api
            .store
            .get_entity::<BillingProfile>(KIND, pid)
            .await?
            .is_none_or(|p| p.deleted_at.is_some())
    {
        return Err(bad(format!(
            "billingProfileId: billing profile {pid} not found"
        )));
    }
    let now = api.now().await?;
    let created_at = api
        .store
        .get_entity::<CustomerOverride>(OVERRIDE_KIND, &customer.id)
        .await?
        .map_or(now, |o| o.created_at);
    let o = CustomerOverride {
        billing_profile_id: u.billing_profile_id,
        customer_id: customer.id.clone(),
        created_at,
        updated_at: now,
    };
    api.store
        .put_entity(OVERRIDE_KIND, &customer.id, &o)
        .await?;
    Ok(axum::Json(view(&api, &customer, &[]).await?).into_response())
}

async fn delete_override(State(api): State<Api>, Path(c): Path<String>) -> R {
    let customer = customer(&api, &c).await?;
    if !api.store.delete_entity(OVERRIDE_KIND, &customer.id).await? {
        return Err(not_found(format!("customer {c} has no billing override")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
