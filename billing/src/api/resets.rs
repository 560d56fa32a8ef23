//! Usage resets: `POST …/entitlements/{idOrFeatureKey}/reset` (204) on the v2 customer and v1
//! subject paths (`ResetEntitlementUsageInput`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use chrono::DateTime;
use serde_json::{Value, json};

use super::entitlements::{Owner, customer_owner, entitlement_of, subject_owner};
use super::{Api, Problem, R, bad, parse_time};
use crate::entitlement::Reset;

/// Reset routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/api/v2/customers/{c}/entitlements/{e}/reset",
            post(reset_customer_entitlement),
        )
        .route(
            "/api/v1/subjects/{s}/entitlements/{e}/reset",
            post(reset_subject_entitlement),
        )
}

async fn reset(api: &Api, owner: Owner, e: &str, body: &Bytes) -> R {
    let mut ent = entitlement_of(api, &owner, e).await?;
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|err| bad(format!("malformed JSON: {err}")))?
    };
    let now = api.now().await?;
    let at = match input["effectiveAt"].as_str() {
        Some(t) => parse_time("effectiveAt", t)?,
        None => now,
    };
    if at > now {
        return Err(bad("effectiveAt: cannot be in the future"));
    }
    let at = DateTime::from_timestamp_millis(crate::store::minute_of(at.timestamp_millis()))
        .unwrap_or(at);
    let preserve = input["preserveOverage"]
        .as_bool()
        .unwrap_or(ent.preserve_overage_at_reset);
    if !input["retainAnchor"].as_bool().unwrap_or(false)
        && let Some(p) = &mut ent.usage_period
    {
        p.anchor = Some(at);
    }
    ent.resets.push(Reset {
        at,
        preserve_overage: preserve,
    });
    ent.updated_at = now;
    // The reset and its `entitlements.reset` notifications commit in one transaction.
    let events =
        crate::notification::reset::reset_events(&api.store, at, now, std::slice::from_ref(&ent))
            .await?;
    let doc = serde_json::to_value(&ent)
        .map_err(|e| Problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut stmts = crate::store::documents::put("entitlement", &ent.id, &doc);
    for e in &events {
        stmts.extend(crate::store::notifications::notification_statements(e));
    }
    api.store.execute_statements(stmts).await?;
    if !events.is_empty() {
        api.notifications.deliver_now();
    }
    // A new period: thresholds start over.
    api.notifications.everything_changed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn reset_customer_entitlement(
    State(api): State<Api>,
    Path((c, e)): Path<(String, String)>,
    body: Bytes,
) -> R {
    let owner = customer_owner(&api, &c).await?;
    reset(&api, owner, &e, &body).await
}

async fn reset_subject_entitlement(
    State(api): State<Api>,
    Path((s, e)): Path<(String, String)>,
    body: Bytes,
) -> R {
    reset(&api, subject_owner(&api, s).await?, &e, &body).await
}
