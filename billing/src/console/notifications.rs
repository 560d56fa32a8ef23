//! Notifications (`/notifications`): webhook channels (never their signing secrets), rules with
//! their thresholds and features, and the newest events with each channel's delivery status as
//! the delivery worker last recorded it, with a resend button that goes through the API's own
//! resend ([`crate::api::notification_events::resend_event`]). The overview's "failed webhook
//! deliveries" come from [`failed_deliveries`].

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use chrono::{DateTime, Duration, Utc};
use maud::{Markup, html};
use serde_json::Value;

use super::Console;
use super::layout::{Banner, Nav, Page, PageError, dash, datetime, empty, page};
use crate::api::Api;
use crate::notification::{CHANNEL, Channel, RULE, Rule};

/// Events shown on the page (newest first).
const MAX_EVENTS: usize = 100;

fn state_badge(state: &str) -> Markup {
    let class = match state {
        "SUCCESS" => "badge ok",
        "FAILED" => "badge bad",
        "PENDING" | "SENDING" | "RESENDING" => "badge near",
        _ => "badge",
    };
    html! { span class=(class) { (state) } }
}

fn event_time(doc: &Value) -> Option<DateTime<Utc>> {
    doc["createdAt"].as_str().and_then(|t| t.parse().ok())
}

/// What an event is about: its feature and subject (or invoice), from its payload.
fn about(doc: &Value) -> String {
    let data = &doc["payload"]["data"];
    let mut parts = Vec::new();
    for (k, v) in [
        ("feature", data["feature"]["key"].as_str()),
        ("subject", data["subject"]["key"].as_str()),
        (
            "customer",
            data["customer"]["key"]
                .as_str()
                .or(data["customer"]["name"].as_str()),
        ),
        ("invoice", data["number"].as_str()),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k} {v}"));
        }
    }
    if let Some(t) = data["threshold"]["value"].as_f64() {
        parts.push(format!(
            "threshold {t} {}",
            data["threshold"]["type"].as_str().unwrap_or("")
        ));
    }
    parts.join(" · ")
}

/// Events since `since` (newest first, at most `limit`) with their delivery statuses.
async fn events_since(
    api: &Api,
    since: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<(Value, Vec<Value>)>, PageError> {
    let mut out = Vec::new();
    for doc in api
        .store
        .notification_event_docs(since.timestamp_millis(), i64::MAX)
        .await?
        .into_iter()
        .take(limit)
    {
        let id = doc["id"].as_str().unwrap_or_default().to_owned();
        let deliveries = api.store.notification_deliveries(&id).await?;
        out.push((doc, deliveries));
    }
    Ok(out)
}

/// Events of the last week with a failed delivery (newest first; the 200 newest events looked
/// at), for the overview.
pub async fn failed_deliveries(
    api: &Api,
    now: DateTime<Utc>,
) -> Result<Vec<(Value, Vec<Value>)>, PageError> {
    Ok(events_since(api, now - Duration::days(7), 200)
        .await?
        .into_iter()
        .filter(|(_, d)| d.iter().any(|s| s["state"] == "FAILED"))
        .collect())
}

/// A table of events with their deliveries and resend buttons.
pub fn events_table(events: &[(Value, Vec<Value>)]) -> Markup {
    html! {
        table.events {
            thead { tr { th { "created" } th { "type" } th { "about" } th { "deliveries" } th { "" } } }
            tbody { @for (doc, deliveries) in events {
                @let id = doc["id"].as_str().unwrap_or_default();
                tr data-event=(id) {
                    td { @if let Some(t) = event_time(doc) { (datetime(t)) } }
                    td { code { (doc["type"].as_str().unwrap_or("")) } }
                    td { (about(doc)) }
                    td { @if deliveries.is_empty() { (dash()) }
                        @for d in deliveries {
                            div.delivery {
                                (state_badge(d["state"].as_str().unwrap_or("")))
                                " " (d["channel"]["name"].as_str().or(d["channel"]["id"].as_str()).unwrap_or(""))
                                @if let Some(r) = d["reason"].as_str().filter(|r| !r.is_empty()) { " " span.muted { (r) } }
                            }
                        }
                    }
                    td { @if !deliveries.is_empty() {
                        form.resend method="post" action=(format!("/notifications/events/{id}/resend")) {
                            button type="submit" { "Resend" }
                        }
                    } }
                }
            } }
        }
    }
}

/// `GET /notifications`.
pub async fn page_route(
    State(console): State<Console>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Page {
    let banner = if crate::api::query_pairs(&raw)
        .iter()
        .any(|(k, _)| k == "resent")
    {
        Banner::Notice("Queued for delivery again.".into())
    } else {
        Banner::None
    };
    render(&console, banner).await
}

async fn render(console: &Console, banner: Banner) -> Page {
    let api = &console.api;
    let mut channels = api.store.list_entities::<Channel>(CHANNEL).await?;
    channels.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rules = api.store.list_entities::<Rule>(RULE).await?;
    rules.sort_by(|a, b| a.name.cmp(&b.name));
    let events = events_since(api, DateTime::<Utc>::MIN_UTC, MAX_EVENTS).await?;
    let content = html! {
        section.panel #channels {
            h2 { "Channels" }
            @if channels.is_empty() { (empty("No channels: POST /api/v1/notification/channels.")) } @else {
                table { thead { tr { th { "name" } th { "type" } th { "url" } th { "" } } }
                    tbody { @for ch in &channels {
                        tr { td { (ch.name) } td { (ch.kind) } td { code { (ch.url) } }
                             td { @if ch.disabled { span.badge.archived { "disabled" } } } }
                    } }
                }
            }
        }
        section.panel #rules {
            h2 { "Rules" }
            @if rules.is_empty() { (empty("No rules.")) } @else {
                table { thead { tr { th { "name" } th { "type" } th { "channels" } th { "thresholds" } th { "features" } th { "" } } }
                    tbody { @for r in &rules {
                        tr {
                            td { (r.name) }
                            td { code { (r.kind) } }
                            td { @for c in &r.channels { code { (channels.iter().find(|x| x.id == c.id).map_or(c.id.as_str(), |x| x.name.as_str())) } " " } }
                            td { @for t in r.thresholds.iter().flatten() { (t.value.normalize()) " " (t.kind) br; } }
                            td { @for f in r.features.iter().flatten() { code { (f.key) } " " } }
                            td { @if r.disabled { span.badge.archived { "disabled" } } }
                        }
                    } }
                }
            }
        }
        section.panel #events {
            h2 { "Events" }
            p.muted { "The newest " (MAX_EVENTS) ", with each channel's delivery status." }
            @if events.is_empty() { (empty("No events.")) } @else { (events_table(&events)) }
        }
    };
    page(api, Nav::Notifications, "Notifications", banner, content).await
}

/// `POST /notifications/events/{id}/resend`: every delivery of the event again.
pub async fn resend(State(console): State<Console>, Path(id): Path<String>) -> Page {
    match crate::api::notification_events::resend_event(&console.api, &id, &Bytes::new()).await {
        Ok(()) => Ok(Redirect::to("/notifications?resent=1").into_response()),
        Err(p) => {
            let PageError(status, detail) = p.into();
            render(&console, Banner::Error(status, detail)).await
        }
    }
}
