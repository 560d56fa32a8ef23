//! Notification rules (`/api/v1/notification/rules`): which events (balance thresholds, resets,
//! invoices) go to which channels, optionally for some features only; and a rule's test send
//! (`POST …/{id}/test`: a real event, annotated `notification.rule.test`, delivered like any).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::features::feature_by;
use super::notification_channels::{ListParams, channel};
use super::notification_events::render;
use super::{Api, Problem, R, bad, json_body, new_id, not_found};
use crate::notification::model::{ChannelMeta, FeatureMeta, Resolved, RuleRequest};
use crate::notification::{CHANNEL, Channel, RULE, Rule, kinds, outbox};

/// Rule routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/api/v1/notification/rules",
            get(list_rules).post(create_rule),
        )
        .route(
            "/api/v1/notification/rules/{id}",
            get(get_rule).put(update_rule).delete(delete_rule),
        )
        .route("/api/v1/notification/rules/{id}/test", post(test_rule))
}

async fn rule(api: &Api, id: &str) -> Result<Rule, Problem> {
    api.store
        .get_entity::<Rule>(RULE, id)
        .await?
        .filter(|r| r.deleted_at.is_none())
        .ok_or_else(|| not_found(format!("notification rule {id} not found")))
}

async fn resolve(api: &Api, req: &RuleRequest) -> Result<Resolved, Problem> {
    req.check().map_err(bad)?;
    let mut channels = Vec::new();
    for (i, id) in req.channel_ids().iter().enumerate() {
        let c = channel(api, id)
            .await
            .ok()
            .filter(|c| c.deleted_at.is_none())
            .ok_or_else(|| {
                bad(format!(
                    "channels[{i}]: notification channel {id} not found"
                ))
            })?;
        if channels.iter().any(|m: &ChannelMeta| m.id == c.id) {
            return Err(bad(format!("channels[{i}]: channel {id} is listed twice")));
        }
        channels.push(ChannelMeta {
            id: c.id,
            kind: c.kind,
        });
    }
    let features = if req.feature_refs().is_empty() {
        None
    } else {
        let mut out = Vec::new();
        for (i, f) in req.feature_refs().iter().enumerate() {
            let f = feature_by(api, f)
                .await?
                .ok_or_else(|| bad(format!("features[{i}]: feature {f} not found")))?;
            out.push(FeatureMeta {
                id: f.id,
                key: f.key,
            });
        }
        Some(out)
    };
    Ok(Resolved { channels, features })
}

fn order_key(r: &Rule, by: &str) -> String {
    match by {
        "type" => format!("{}{}", r.kind, r.id),
        "createdAt" => format!("{}{}", r.created_at.timestamp_millis(), r.id),
        "updatedAt" => format!("{}{}", r.updated_at.timestamp_millis(), r.id),
        _ => r.id.clone(),
    }
}

async fn list_rules(State(api): State<Api>, RawQuery(raw): RawQuery) -> R {
    let p = ListParams::parse(&raw, &["id", "type", "createdAt", "updatedAt"])?;
    let features = p.list("feature");
    let channels = p.list("channel");
    let items: Vec<Rule> = api
        .store
        .list_entities::<Rule>(RULE)
        .await?
        .into_iter()
        .filter(|r| p.include_deleted || r.deleted_at.is_none())
        .filter(|r| p.include_disabled || !r.disabled)
        .filter(|r| {
            features.is_empty()
                || r.features.iter().flatten().any(|f| {
                    features.contains(&f.id.as_str()) || features.contains(&f.key.as_str())
                })
        })
        .filter(|r| {
            channels.is_empty() || r.channels.iter().any(|c| channels.contains(&c.id.as_str()))
        })
        .collect();
    Ok(p.page(items, order_key))
}

async fn create_rule(State(api): State<Api>, body: Bytes) -> R {
    let req: RuleRequest = json_body(&body)?;
    let resolved = resolve(&api, &req).await?;
    let now = api.now().await?;
    let r = req.into_rule(new_id(), now, now, resolved);
    api.store.put_entity(RULE, &r.id, &r).await?;
    if r.kind == kinds::BALANCE_THRESHOLD {
        // Usage may already be past a threshold.
        api.notifications.everything_changed();
    }
    Ok((StatusCode::CREATED, axum::Json(r)).into_response())
}

async fn get_rule(State(api): State<Api>, Path(id): Path<String>) -> R {
    Ok(axum::Json(rule(&api, &id).await?).into_response())
}

async fn update_rule(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> R {
    let old = rule(&api, &id).await?;
    let req: RuleRequest = json_body(&body)?;
    let resolved = resolve(&api, &req).await?;
    let now = api.now().await?;
    let r = req.into_rule(id, old.created_at, now, resolved);
    api.store.put_entity(RULE, &r.id, &r).await?;
    api.notifications.everything_changed();
    Ok(axum::Json(r).into_response())
}

async fn delete_rule(State(api): State<Api>, Path(id): Path<String>) -> R {
    let mut r = rule(&api, &id).await?;
    let now = api.now().await?;
    r.deleted_at = Some(now);
    r.updated_at = now;
    api.store.put_entity(RULE, &r.id, &r).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An example of the rule's payload `data`, clearly marked as a test.
fn example_data(r: &Rule, now: chrono::DateTime<chrono::Utc>) -> Value {
    let feature = r.features.as_ref().and_then(|f| f.first()).map_or(
        json!({"id": "test-feature", "key": "test-feature"}),
        |f| json!({"id": f.id, "key": f.key}),
    );
    let fkey = feature["key"].clone();
    let mut feature = feature;
    feature["name"] = json!("test feature");
    feature["createdAt"] = json!(now);
    feature["updatedAt"] = json!(now);
    let mut data = json!({
        "entitlement": {
            "id": "test-entitlement", "type": "metered", "featureId": feature["id"],
            "featureKey": fkey, "subjectKey": "test-subject", "isSoftLimit": false,
            "usagePeriod": {"interval": "MONTH", "anchor": now},
            "currentUsagePeriod": {"from": now, "to": now},
            "lastReset": now, "measureUsageFrom": now,
            "createdAt": now, "updatedAt": now,
        },
        "feature": feature,
        "subject": {"id": "test-subject", "key": "test-subject"},
        "value": {"hasAccess": true, "balance": 0, "usage": 100, "overage": 0,
                  "totalAvailableGrantAmount": 100},
    });
    match r.kind.as_str() {
        kinds::BALANCE_THRESHOLD => {
            data["threshold"] = r
                .thresholds
                .as_ref()
                .and_then(|t| t.first())
                .map_or(json!({"value": 100, "type": "usage_percentage"}), |t| {
                    json!(t)
                });
        }
        kinds::RESET => {}
        _ => {
            data = json!({"id": "test-invoice", "status": "issued", "currency": "USD",
                          "createdAt": now, "updatedAt": now});
        }
    }
    data
}

async fn test_rule(State(api): State<Api>, Path(id): Path<String>) -> R {
    let r = rule(&api, &id).await?;
    let now = api.now().await?;
    let channels = api.store.list_entities::<Channel>(CHANNEL).await?;
    let event = outbox::new_event(
        &r,
        &channels,
        now,
        example_data(&r, now),
        None,
        json!({"notification.rule.test": true}),
    );
    api.store.record_notification(&event).await?;
    api.notifications.deliver_now();
    let shown = render(&api, event.doc).await?;
    Ok((StatusCode::CREATED, axum::Json(shown)).into_response())
}
