//! Customers: `GET/POST /api/v1/customers`, `GET/DELETE /api/v1/customers/{idOrKey}`, and the
//! lookup by id or key the other resources use.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use super::{Api, Problem, R, bad, conflict, json_body, new_id, not_found};
use crate::entitlement::Customer;

/// Customer routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/api/v1/customers",
            get(list_customers).post(create_customer),
        )
        .route(
            "/api/v1/customers/{c}",
            get(get_customer).delete(delete_customer),
        )
}

/// The customer with this id or key.
pub(crate) async fn customer_by(api: &Api, id_or_key: &str) -> Result<Option<Customer>, Problem> {
    // Both are indexed: the id is the primary key, the key a column (no scan of every customer).
    if let Some(c) = api
        .store
        .get_entity::<Customer>("customer", id_or_key)
        .await?
    {
        return Ok(Some(c));
    }
    Ok(api
        .store
        .list_entities_where::<Customer>("customer", "key", id_or_key)
        .await?
        .into_iter()
        .next())
}

async fn list_customers(State(api): State<Api>) -> R {
    let items = api.store.list_entities::<Customer>("customer").await?;
    Ok(axum::Json(
        json!({"items": items, "page": 1, "pageSize": items.len(), "totalCount": items.len()}),
    )
    .into_response())
}

async fn create_customer(State(api): State<Api>, body: Bytes) -> R {
    let c = create(&api, &body).await?;
    Ok((StatusCode::CREATED, axum::Json(c)).into_response())
}

/// Creates the customer in `body` (a `Customer` JSON document) after the API's checks; the
/// console's form goes through here too.
pub(crate) async fn create(api: &Api, body: &Bytes) -> Result<Customer, Problem> {
    let mut c: Customer = json_body(body)?;
    if c.key.is_none() && c.usage_attribution.subject_keys.is_empty() {
        return Err(bad("key or usageAttribution.subjectKeys is required"));
    }
    let all = api.store.list_entities::<Customer>("customer").await?;
    if let Some(k) = &c.key
        && all.iter().any(|o| o.key.as_ref() == Some(k))
    {
        return Err(conflict(format!("customer with key {k} already exists")));
    }
    for s in &c.usage_attribution.subject_keys {
        if let Some(o) = all.iter().find(|o| o.subjects().contains(s)) {
            return Err(conflict(format!(
                "subject {s} already belongs to customer {}",
                o.id
            )));
        }
    }
    c.id = new_id();
    c.created_at = api.now().await?;
    c.updated_at = c.created_at;
    api.store.put_entity("customer", &c.id, &c).await?;
    Ok(c)
}

async fn get_customer(State(api): State<Api>, Path(c): Path<String>) -> R {
    let customer = customer_by(&api, &c)
        .await?
        .ok_or_else(|| not_found(format!("customer {c} not found")))?;
    Ok(axum::Json(customer).into_response())
}

async fn delete_customer(State(api): State<Api>, Path(c): Path<String>) -> R {
    let customer = customer_by(&api, &c)
        .await?
        .ok_or_else(|| not_found(format!("customer {c} not found")))?;
    api.store.delete_entity("customer", &customer.id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
