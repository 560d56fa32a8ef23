//! Balance history: `GET …/entitlements/{idOrFeatureKey}/history` (`WindowedBalanceHistory`) on
//! the v2 customer and v1 subject paths: usage and the balance at the start of each window; per
//! usage period, usage, overage and the balance (total and per grant) at its start and end.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use super::entitlements::{Owner, customer_owner, entitlement_of, subject_owner};
use super::{Api, R, bad, not_found, parse_time, query_pairs};
use crate::entitlement::{self, Feature, Grant, Interval};
use crate::query;

/// History routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/api/v2/customers/{c}/entitlements/{e}/history",
            get(customer_history),
        )
        .route(
            "/api/v1/subjects/{s}/entitlements/{e}/history",
            get(subject_history),
        )
}

/// (burn-down), usage, overage and the balance at its end.
/// `WindowedBalanceHistory`: per window, usage and the balance at its start; per usage period
async fn history(api: &Api, owner: Owner, e: &str, raw: &Option<String>) -> R {
    let ent = entitlement_of(api, &owner, e).await?;
    if ent.kind != "metered" {
        return Err(bad(format!(
            "entitlement {} is {}: only metered entitlements have history",
            ent.id, ent.kind
        )));
    }
    let mut from = None;
    let mut to = None;
    let mut size = None;
    let mut tz = chrono_tz::UTC;
    for (k, v) in query_pairs(raw) {
        match k.as_str() {
            "from" => from = Some(parse_time("from", &v)?),
            "to" => to = Some(parse_time("to", &v)?),
            "windowSize" => size = Some(v.parse::<query::WindowSize>().map_err(bad)?),
            "windowTimeZone" => {
                tz = v
                    .parse()
                    .map_err(|_| bad(format!("windowTimeZone: {v:?} is not an IANA time zone")))?
            }
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    let size = size.ok_or_else(|| bad("windowSize is required (MINUTE, HOUR, DAY or MONTH)"))?;
    let to = match to {
        Some(t) => t,
        None => api.now().await?,
    };
    let from = from.unwrap_or(ent.measure_usage_from.unwrap_or(ent.created_at));
    let feature = api
        .store
        .get_entity::<Feature>("feature", &ent.feature_id)
        .await?
        .ok_or_else(|| not_found(format!("feature {} not found", ent.feature_key)))?;
    let grants: Vec<Grant> = api
        .store
        .list_entities::<Grant>("grant")
        .await?
        .into_iter()
        .filter(|g| g.entitlement_id == ent.id)
        .collect();
    let subjects = owner.subjects();
    let mut windows = Vec::new();
    let mut start =
        query::window_bounds(crate::store::minute_of(from.timestamp_millis()), size, tz).0;
    while start < to {
        if windows.len() >= 1000 {
            return Err(bad(
                "more than 1000 windows: use a larger windowSize or a shorter range",
            ));
        }
        let end = query::window_bounds(start.timestamp_millis(), size, tz).1;
        let usage =
            entitlement::usage_between(&api.store, &feature, &subjects, start, end.min(to)).await?;
        let at_start = entitlement::value_at_instant(
            &api.store,
            &ent,
            &feature,
            &subjects,
            &grants,
            start.max(from),
        )
        .await?;
        windows.push(json!({
            "period": {"from": start, "to": end},
            "usage": rust_decimal::prelude::ToPrimitive::to_f64(&usage),
            "balanceAtStart": at_start.balance.and_then(|b| rust_decimal::prelude::ToPrimitive::to_f64(&b)),
        }));
        start = end;
    }
    let mut burndown = Vec::new();
    if let Some(p) = &ent.usage_period
        && let Ok(interval) = Interval::parse(&p.interval)
    {
        let anchor = p
            .anchor
            .or(ent.measure_usage_from)
            .unwrap_or(ent.created_at);
        let (mut ps, mut pe) = interval.period_at(anchor, from);
        while ps < to && burndown.len() < 1000 {
            let end = entitlement::value(
                &api.store,
                &ent,
                &feature,
                &subjects,
                &grants,
                pe.min(to) - chrono::Duration::minutes(1),
            )
            .await?;
            let start = entitlement::value_at_instant(
                &api.store,
                &ent,
                &feature,
                &subjects,
                &grants,
                ps.max(from),
            )
            .await?;
            let f = |d: Option<rust_decimal::Decimal>| {
                d.and_then(|d| rust_decimal::prelude::ToPrimitive::to_f64(&d))
            };
            // Per-grant balances as numbers, the way values show them.
            let per_grant = |v: &entitlement::EntitlementValue| {
                serde_json::to_value(v)
                    .ok()
                    .and_then(|mut j| j.get_mut("grantBalances").map(serde_json::Value::take))
                    .unwrap_or_else(|| json!({}))
            };
            burndown.push(json!({
                "period": {"from": ps, "to": pe},
                "usage": f(end.usage),
                "overage": f(end.overage),
                "balanceAtStart": f(start.balance),
                "grantBalancesAtStart": per_grant(&start),
                "balanceAtEnd": f(end.balance),
                "grantBalancesAtEnd": per_grant(&end),
            }));
            ps = pe;
            pe = interval.step(ps, 1);
        }
    }
    Ok(
        axum::Json(json!({"windowedHistory": windows, "burndownHistory": burndown}))
            .into_response(),
    )
}

async fn customer_history(
    State(api): State<Api>,
    Path((c, e)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> R {
    let owner = customer_owner(&api, &c).await?;
    history(&api, owner, &e, &raw).await
}

async fn subject_history(
    State(api): State<Api>,
    Path((s, e)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> R {
    history(&api, subject_owner(&api, s).await?, &e, &raw).await
}
