//! Grants on an entitlement: `GET/POST …/entitlements/{idOrFeatureKey}/grants` on the v2 customer
//! and v1 subject paths.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::Utc;

use super::entitlements::{Owner, customer_owner, entitlement_of, subject_owner};
use super::{Api, R, bad, json_body, new_id};
use crate::entitlement::Grant;

/// Grant routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/api/v2/customers/{c}/entitlements/{e}/grants",
            get(list_customer_grants).post(create_customer_grant),
        )
        .route(
            "/api/v1/subjects/{s}/entitlements/{e}/grants",
            get(list_subject_grants).post(create_subject_grant),
        )
}

async fn create_grant(api: &Api, owner: Owner, e: &str, body: &Bytes) -> R {
    let ent = entitlement_of(api, &owner, e).await?;
    if ent.kind != "metered" {
        return Err(bad(format!(
            "entitlement {} is {}: only metered entitlements take grants",
            ent.id, ent.kind
        )));
    }
    let mut g: Grant = json_body(body)?;
    g.normalise().map_err(bad)?;
    g.id = new_id();
    g.entitlement_id = ent.id.clone();
    g.created_at = Utc::now();
    api.store.put_entity("grant", &g.id, &g).await?;
    api.store.flush().await?;
    Ok((StatusCode::CREATED, axum::Json(g)).into_response())
}

async fn list_grants(api: &Api, owner: Owner, e: &str) -> R {
    let ent = entitlement_of(api, &owner, e).await?;
    let grants: Vec<Grant> = api
        .store
        .list_entities::<Grant>("grant")
        .await?
        .into_iter()
        .filter(|g| g.entitlement_id == ent.id)
        .collect();
    Ok(axum::Json(grants).into_response())
}

async fn create_customer_grant(
    State(api): State<Api>,
    Path((c, e)): Path<(String, String)>,
    body: Bytes,
) -> R {
    let owner = customer_owner(&api, &c).await?;
    create_grant(&api, owner, &e, &body).await
}

async fn list_customer_grants(State(api): State<Api>, Path((c, e)): Path<(String, String)>) -> R {
    let owner = customer_owner(&api, &c).await?;
    list_grants(&api, owner, &e).await
}

async fn create_subject_grant(
    State(api): State<Api>,
    Path((s, e)): Path<(String, String)>,
    body: Bytes,
) -> R {
    create_grant(&api, subject_owner(&api, s).await?, &e, &body).await
}

async fn list_subject_grants(State(api): State<Api>, Path((s, e)): Path<(String, String)>) -> R {
    list_grants(&api, subject_owner(&api, s).await?, &e).await
}
