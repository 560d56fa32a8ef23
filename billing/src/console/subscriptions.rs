//! A customer's subscriptions on the customer page: each one's plan, status at billing's now,
//! billing cadence and anchor, and its phases over time (the current one marked) with their rate
//! cards; and the form that subscribes the customer to an active plan, through the API's own
//! create ([`crate::api::subscriptions::create_subscription`]): a refusal shows its status and
//! the API's `validationErrors` text.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde_json::json;

use super::Console;
use super::layout::{Banner, Page, PageError, dash, datetime, empty};
use crate::catalog::model::{Plan, Status as PlanStatus};
use crate::entitlement::Customer;
use crate::subscription::{self, Status};

fn status(s: Status) -> Markup {
    let class = match s {
        Status::Active => "badge active",
        Status::Canceled => "badge near",
        Status::Scheduled => "badge draft",
        Status::Inactive => "badge archived",
    };
    html! { span class=(class) { (s.as_str()) } }
}

/// The customer page's subscription section.
pub async fn section(
    console: &Console,
    c: &Customer,
    now: DateTime<Utc>,
) -> Result<Markup, PageError> {
    let store = &console.api.store;
    let subs = subscription::subscriptions_of_customer(store, &c.id, None).await?;
    let plans: Vec<Plan> = crate::catalog::versions::all::<Plan>(store, now)
        .await?
        .into_iter()
        .filter(|p| p.status == PlanStatus::Active && p.deleted_at.is_none())
        .collect();
    let current = subs.iter().any(|s| {
        matches!(
            s.status_at(now),
            Status::Active | Status::Scheduled | Status::Canceled
        )
    });
    Ok(html! {
        section.panel #subscriptions {
            h2 { "Subscriptions" }
            @if subs.is_empty() { (empty("No subscriptions.")) }
            @for s in subs.iter().rev() {
                div.subscription data-id=(s.id) {
                    h3 {
                        (s.name) " " (status(s.status_at(now)))
                        @if let Some(p) = &s.plan { " " a href=(format!("/plans/{}", p.id)) { code { (p.key) } " v" (p.version) } }
                    }
                    p.muted {
                        (datetime(s.active_from)) " – " @match s.active_to { Some(t) => (datetime(t)), None => "open-ended" }
                        " · billed every " code { (s.billing_cadence) } " from " (datetime(s.billing_anchor))
                        " · " (s.currency)
                    }
                    table.phases {
                        thead { tr { th { "phase" } th { "from" } th { "to" } th { "items" } } }
                        tbody { @for w in s.phase_windows() {
                            tr class=[w.contains(now).then_some("current")] {
                                td { (w.phase.name) " " code { (w.phase.key) } @if w.contains(now) { " " span.badge.active { "now" } } }
                                td { (datetime(w.active_from)) }
                                td { @match w.active_to { Some(t) => (datetime(t)), None => (dash()) } }
                                td { @for i in &w.phase.items { code { (i.key) } " " } }
                            }
                        } }
                    }
                }
            }
            @if !current {
                @if plans.is_empty() { p.muted { "No active plan to subscribe to." } } @else {
                    form.inline.subscribe method="post" action=(format!("/customers/{}/subscriptions", c.id)) {
                        label { "plan" select name="plan" {
                            @for p in &plans { option value=(p.key) { (p.name) " (" (p.key) " v" (p.version) ")" } }
                        } }
                        label { "starts" select name="timing" {
                            option value="immediate" { "now" }
                            option value="next_billing_cycle" { "next billing cycle" }
                        } }
                        button type="submit" { "Subscribe" }
                    }
                    p.muted { "Same as " code { "POST /api/v1/subscriptions" } "." }
                }
            }
        }
    })
}

/// `POST /customers/{id}/subscriptions` (`plan`, `timing`).
pub async fn subscribe(
    State(console): State<Console>,
    Path(id): Path<String>,
    body: Bytes,
) -> Page {
    let mut plan = String::new();
    let mut timing = "immediate".to_owned();
    for (k, v) in form_urlencoded::parse(&body) {
        match k.as_ref() {
            "plan" => plan = v.trim().to_owned(),
            "timing" => timing = v.trim().to_owned(),
            _ => {}
        }
    }
    let doc = json!({"customerId": id, "plan": {"key": plan}, "timing": timing});
    match crate::api::subscriptions::create_subscription(
        &console.api,
        &Bytes::from(doc.to_string()),
    )
    .await
    {
        Ok(_) => {
            console.summary.invalidate();
            Ok(Redirect::to(&format!("/customers/{id}?subscribed=1")).into_response())
        }
        Err(f) => {
            let PageError(status, detail) = f.into();
            super::customers::render_customer(&console, &id, Banner::Error(status, detail)).await
        }
    }
}
