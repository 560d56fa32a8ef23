//! Notification events (`/api/v1/notification/events`): list (by time, feature, subject, rule,
//! channel), get, and resend (`POST …/{id}/resend`, 202: its deliveries — all, or the channels
//! given — go back to the queue as `RESENDING`). An event is shown with its `deliveryStatus`, one
//! per channel, as the delivery worker last recorded it.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::notification_channels::ListParams;
use super::{Api, Problem, R, bad, json_body, not_found, parse_time};
use crate::notification::outbox::DELIVERY_WINDOW;
use crate::store::notifications::delivery_id;

/// Event routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/notification/events", get(list_events))
        .route("/api/v1/notification/events/{id}", get(get_event))
        .route("/api/v1/notification/events/{id}/resend", post(resend))
}

/// An event document with its delivery statuses.
pub(crate) async fn render(api: &Api, mut doc: Value) -> Result<Value, Problem> {
    let id = doc["id"].as_str().unwrap_or_default().to_owned();
    doc["deliveryStatus"] = json!(api.store.notification_deliveries(&id).await?);
    Ok(doc)
}

async fn event(api: &Api, id: &str) -> Result<Value, Problem> {
    let doc = api
        .store
        .notification_event_doc(id)
        .await?
        .ok_or_else(|| not_found(format!("notification event {id} not found")))?;
    render(api, doc).await
}

fn matches(doc: &Value, name: &str, wanted: &[&str]) -> bool {
    if wanted.is_empty() {
        return true;
    }
    let data = &doc["payload"]["data"];
    let candidates: Vec<&str> = match name {
        "feature" => vec![
            data["feature"]["id"].as_str().unwrap_or_default(),
            data["feature"]["key"].as_str().unwrap_or_default(),
        ],
        "subject" => vec![data["subject"]["key"].as_str().unwrap_or_default()],
        "rule" => vec![doc["rule"]["id"].as_str().unwrap_or_default()],
        "channel" => doc["deliveryStatus"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["channel"]["id"].as_str())
            .collect(),
        _ => return true,
    };
    candidates
        .iter()
        .any(|c| !c.is_empty() && wanted.contains(c))
}

async fn list_events(State(api): State<Api>, RawQuery(raw): RawQuery) -> R {
    let p = ListParams::parse(&raw, &["createdAt", "id"])?;
    let mut from = i64::MIN;
    let mut to = i64::MAX;
    for (k, v) in &p.other {
        match k.as_str() {
            "from" => from = parse_time("from", v)?.timestamp_millis(),
            "to" => to = parse_time("to", v)?.timestamp_millis(),
            _ => {}
        }
    }
    if from > to {
        return Err(bad("from: must not be after to"));
    }
    let mut items = Vec::new();
    for doc in api.store.notification_event_docs(from, to).await? {
        let doc = render(&api, doc).await?;
        if ["feature", "subject", "rule", "channel"]
            .iter()
            .all(|n| matches(&doc, n, &p.list(n)))
        {
            items.push(doc);
        }
    }
    Ok(p.page(items, |d, by| match by {
        "id" => d["id"].as_str().unwrap_or_default().to_owned(),
        _ => format!(
            "{:020}{}",
            d["createdAt"]
                .as_str()
                .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                .map_or(0, |t| t.timestamp_micros().max(0)),
            d["id"].as_str().unwrap_or_default()
        ),
    }))
}

async fn get_event(State(api): State<Api>, Path(id): Path<String>) -> R {
    Ok(axum::Json(event(&api, &id).await?).into_response())
}

/// `NotificationEventResendRequest`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResendRequest {
    #[serde(default)]
    channels: Option<Vec<String>>,
}

async fn resend(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> R {
    resend_event(&api, &id, &body).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({}))).into_response())
}

/// Puts event `id`'s deliveries (all, or the channels `body` names) back in the queue as
/// `RESENDING` after the API's checks; the console's resend button goes through here too.
pub(crate) async fn resend_event(api: &Api, id: &str, body: &Bytes) -> Result<(), Problem> {
    let ev = event(api, id).await?;
    let req: ResendRequest = if body.is_empty() {
        ResendRequest::default()
    } else {
        json_body(body)?
    };
    let statuses: Vec<Value> = ev["deliveryStatus"].as_array().cloned().unwrap_or_default();
    let known: Vec<&str> = statuses
        .iter()
        .filter_map(|s| s["channel"]["id"].as_str())
        .collect();
    if let Some(wanted) = &req.channels {
        for (i, c) in wanted.iter().enumerate() {
            if !known.contains(&c.as_str()) {
                return Err(bad(format!(
                    "channels[{i}]: event {id} was not sent to channel {c}"
                )));
            }
        }
    }
    let now = api.now().await?;
    for mut s in statuses {
        let channel = s["channel"]["id"].as_str().unwrap_or_default().to_owned();
        if req.channels.as_ref().is_some_and(|w| !w.contains(&channel)) {
            continue;
        }
        s["state"] = json!("RESENDING");
        s["reason"] = json!("resend requested");
        s["updatedAt"] = json!(now);
        s["nextAttempt"] = json!(now);
        api.store
            .resend_delivery(
                &delivery_id(id, &channel),
                now.timestamp_millis(),
                (now + DELIVERY_WINDOW).timestamp_millis(),
                &s,
            )
            .await?;
    }
    api.notifications.deliver_now();
    Ok(())
}
