//! Grants on an entitlement: `GET/POST …/entitlements/{idOrFeatureKey}/grants` on the v2 customer
//! path (the list paginated as `GrantV2PaginatedResponse`) and the v1 subject path (a plain list).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::Utc;

use super::entitlements::{Owner, customer_owner, entitlement_of, subject_owner};
use serde_json::json;

use super::{Api, Problem, R, bad, json_body, new_id, query_pairs};
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

async fn grants_of(api: &Api, owner: &Owner, e: &str) -> Result<Vec<Grant>, Problem> {
    let ent = entitlement_of(api, owner, e).await?;
    Ok(api
        .store
        .list_entities::<Grant>("grant")
        .await?
        .into_iter()
        .filter(|g| g.entitlement_id == ent.id)
        .collect())
}

/// The v1 subject path lists a plain `EntitlementGrant[]`.
async fn list_grants(api: &Api, owner: Owner, e: &str) -> R {
    Ok(axum::Json(grants_of(api, &owner, e).await?).into_response())
}

async fn create_customer_grant(
    State(api): State<Api>,
    Path((c, e)): Path<(String, String)>,
    body: Bytes,
) -> R {
    let owner = customer_owner(&api, &c).await?;
    create_grant(&api, owner, &e, &body).await
}

/// `GET /api/v2/customers/{c}/entitlements/{e}/grants`: `GrantV2PaginatedResponse`. Pages with
/// `page`/`pageSize` (default 1 and 100); the deprecated `offset`/`limit` only when neither of
/// those is given (OpenMeter's rule). `orderBy` `id|createdAt|updatedAt`, `order` `ASC|DESC`.
async fn list_customer_grants(
    State(api): State<Api>,
    Path((c, e)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> R {
    let mut page = None;
    let mut page_size = None;
    let mut offset = None;
    let mut limit = None;
    let mut descending = false;
    let mut order_by = "createdAt".to_owned();
    let number = |name: &str, v: &str, min: usize, max: usize| {
        v.parse::<usize>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                bad(format!(
                    "{name}: {v:?} is not a whole number in {min}..={max}"
                ))
            })
    };
    for (k, v) in query_pairs(&raw) {
        match k.as_str() {
            "page" => page = Some(number("page", &v, 1, usize::MAX)?),
            "pageSize" => page_size = Some(number("pageSize", &v, 1, 1000)?),
            "offset" => offset = Some(number("offset", &v, 0, usize::MAX)?),
            "limit" => limit = Some(number("limit", &v, 1, 1000)?),
            "order" => {
                descending = match v.as_str() {
                    "ASC" => false,
                    "DESC" => true,
                    _ => return Err(bad(format!("order: {v:?} is not ASC or DESC"))),
                }
            }
            "orderBy" => {
                if !matches!(v.as_str(), "id" | "createdAt" | "updatedAt") {
                    return Err(bad(format!(
                        "orderBy: {v:?} is not id, createdAt or updatedAt"
                    )));
                }
                order_by = v;
            }
            "includeDeleted" => {
                // Grants are never deleted here (voided ones stay listed with voidedAt).
                if v != "true" && v != "false" {
                    return Err(bad(format!("includeDeleted: {v:?} is not true or false")));
                }
            }
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    let owner = customer_owner(&api, &c).await?;
    let mut grants = grants_of(&api, &owner, &e).await?;
    // Ids are time-ordered, so every order is creation order (grants are never updated).
    grants.sort_by(|a, b| match order_by.as_str() {
        "id" => a.id.cmp(&b.id),
        _ => (a.created_at, &a.id).cmp(&(b.created_at, &b.id)),
    });
    if descending {
        grants.reverse();
    }
    let total = grants.len();
    let (skip, size, page) =
        if page.is_none() && page_size.is_none() && (offset.is_some() || limit.is_some()) {
            let limit = limit.unwrap_or(100);
            let offset = offset.unwrap_or(0);
            (offset, limit, offset / limit + 1)
        } else {
            let page = page.unwrap_or(1);
            let size = page_size.unwrap_or(100);
            (page.saturating_sub(1).saturating_mul(size), size, page)
        };
    let items: Vec<Grant> = grants.into_iter().skip(skip).take(size).collect();
    Ok(
        axum::Json(json!({"items": items, "page": page, "pageSize": size, "totalCount": total}))
            .into_response(),
    )
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
