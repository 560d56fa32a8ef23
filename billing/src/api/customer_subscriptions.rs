//! `GET /api/v1/customers/{customerIdOrKey}/subscriptions`: a customer's subscriptions, filtered
//! by `status` (repeatable: active, inactive, canceled, scheduled), paged (`page`, `pageSize`).

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use super::customers::customer_by;
use super::subscription_http::{SR, view};
use super::{Api, bad, not_found, query_pairs};
use crate::subscription;

/// The route.
pub fn routes() -> Router<Api> {
    Router::new().route("/api/v1/customers/{c}/subscriptions", get(list))
}

async fn list(State(api): State<Api>, Path(c): Path<String>, RawQuery(q): RawQuery) -> SR {
    let customer = customer_by(&api, &c)
        .await?
        .ok_or_else(|| not_found(format!("customer {c} not found")))?;
    let now = api.now().await?;
    let mut statuses = Vec::new();
    let (mut page, mut page_size) = (1usize, 100usize);
    for (k, v) in query_pairs(&q) {
        match k.as_str() {
            "status" => {
                for s in v.split(',') {
                    if !["active", "inactive", "canceled", "scheduled"].contains(&s) {
                        return Err(bad(format!(
                            "status: {s:?} is not active, inactive, canceled or scheduled"
                        ))
                        .into());
                    }
                    statuses.push(s.to_owned());
                }
            }
            "page" => {
                page = v
                    .parse()
                    .ok()
                    .filter(|p| *p >= 1)
                    .ok_or_else(|| bad(format!("page: {v:?} must be an integer ≥ 1")))?
            }
            "pageSize" => {
                page_size = v
                    .parse()
                    .ok()
                    .filter(|p| (1..=1000).contains(p))
                    .ok_or_else(|| bad(format!("pageSize: {v:?} must be an integer in 1..=1000")))?
            }
            _ => {}
        }
    }
    let subs: Vec<_> = subscription::subscriptions_of_customer(&api.store, &customer.id, None)
        .await?
        .into_iter()
        .filter(|s| statuses.is_empty() || statuses.iter().any(|x| x == s.status_at(now).as_str()))
        .collect();
    let total = subs.len();
    let items: Vec<_> = subs
        .iter()
        .skip((page - 1).saturating_mul(page_size))
        .take(page_size)
        .map(|s| view(s, now))
        .collect();
    Ok(axum::Json(
        json!({"totalCount": total, "page": page, "pageSize": page_size, "items": items}),
    )
    .into_response())
}
