//! The overview (`/`): how much is coming in (metered events per minute over the last hour, per
//! meter, from the minute rollups), how many customers, meters, features and plans there are, the
//! top consumers of each meter this month and the entitlements near or over their limit (both
//! from the kept [`super::summary`] snapshot, with its time), and webhook deliveries that
//! failed in the last week, and invoices awaiting approval.

use std::collections::BTreeMap;

use axum::extract::State;
use maud::{Markup, html};

use super::Console;
use super::chart::{self, Series};
use super::layout::{Banner, Nav, Page, datetime, empty, page, quantity};
use super::summary::{self, Consumer, Pressure};
use crate::catalog::model::{Plan, Status};
use crate::entitlement::{Customer, Feature};
use crate::store::MINUTE;

/// Minutes the ingest chart covers.
const CHART_MINUTES: i64 = 60;

/// `GET /`.
pub async fn page_handler(console: &Console) -> Page {
    let api = &console.api;
    let now = api.now().await?;
    let now_ms = now.timestamp_millis();
    // The last hour of whole minutes, the current one included.
    let to_ms = now_ms.div_euclid(MINUTE) * MINUTE + MINUTE;
    let from_ms = to_ms - CHART_MINUTES * MINUTE;
    let mut series = Vec::new();
    let mut last_hour: u64 = 0;
    let mut meters = api.store.meters();
    meters.sort_by(|a, b| a.meter.slug.cmp(&b.meter.slug));
    for m in &meters {
        let rows = api
            .store
            .usage_totals(&m.meter.slug, from_ms, to_ms, MINUTE)
            .await?;
        let mut per_minute: BTreeMap<i64, u64> = (0..CHART_MINUTES)
            .map(|i| (from_ms + i * MINUTE, 0))
            .collect();
        for (_, _, span, agg) in rows {
            *per_minute.entry(span.start_ms).or_default() += agg.count;
            last_hour += agg.count;
        }
        series.push(Series {
            name: m.meter.slug.clone(),
            points: per_minute.into_iter().map(|(t, n)| (t, n as f64)).collect(),
        });
    }
    let customers = api.store.list_entities::<Customer>("customer").await?.len();
    let features = api
        .store
        .list_entities::<Feature>("feature")
        .await?
        .iter()
        .filter(|f| f.archived_at.is_none())
        .count();
    let plans = crate::catalog::versions::all::<Plan>(&api.store, now)
        .await?
        .iter()
        .filter(|p| p.status == Status::Active)
        .count();
    let snap = summary::get(console).await?;
    let failed = super::notifications::failed_deliveries(api, now).await?;
    let awaiting = super::invoices::awaiting_approval(api).await?;
    let content = html! {
        div.cards {
            div.card { div.n #customers-count { (quantity(customers.into())) } div.k { a href="/customers" { "customers" } } }
            div.card { div.n #meters-count { (meters.len()) } div.k { a href="/meters" { "meters" } } }
            div.card { div.n { (features) } div.k { a href="/features" { "features" } } }
            div.card { div.n { (plans) } div.k { a href="/plans" { "active plans" } } }
            div.card { div.n #events-last-hour { (quantity(last_hour.into())) } div.k { "metered events, last hour" } }
        }
        section.panel {
            h2 { "Metered events per minute" }
            p.muted { "Each meter's events in the last hour, by event time (one minute rows)." }
            (chart::time_series("Metered events per minute, last hour", &series, from_ms, to_ms - MINUTE))
        }
        section.panel #awaiting-approval {
            h2 { "Invoices awaiting approval" }
            @if awaiting.is_empty() { (empty("None.")) } @else { (super::invoices::table(&awaiting)) }
        }
        section.panel #failed-deliveries {
            h2 { "Failed webhook deliveries" }
            p.muted { "Events of the last 7 days with a delivery that failed; " a href="/notifications" { "all notifications" } "." }
            @if failed.is_empty() { (empty("None.")) } @else { (super::notifications::events_table(&failed)) }
        }
        @match &snap {
            Some(snap) => (month_figures(snap)),
            None => section.panel #top-consumers {
                h2 { "Top consumers and entitlements near their limit" }
                p.muted { "Being computed in the background (every customer's balance): reload in a moment." }
            },
        }
    };
    page(api, Nav::Overview, "Overview", Banner::None, content).await
}

/// The month's figures of a snapshot: top consumers per meter, entitlements near or over their
/// limit.
fn month_figures(snap: &summary::Snapshot) -> Markup {
    html! {
        div.grid2 {
            section.panel #top-consumers {
                h2 { "Top consumers this month" }
                p.muted { "Since " (datetime(snap.period_from)) "; as of " (datetime(snap.at)) "." }
                @if snap.top.is_empty() { (empty("No meters yet.")) }
                @for t in &snap.top {
                    h3 { a href=(format!("/meters/{}", t.slug)) { (t.slug) } " " span.badge { (t.aggregation) } }
                    @if t.consumers.is_empty() {
                        (empty("No usage this month."))
                    } @else {
                        table.top data-meter=(t.slug) {
                            thead { tr { th { "consumer" } th.num { "usage" } } }
                            tbody {
                                @for (c, v) in &t.consumers {
                                    tr { td { (consumer(c)) } td.num data-value=(v.normalize()) { (quantity(*v)) } }
                                }
                            }
                        }
                        @if t.total_consumers > t.consumers.len() {
                            p.muted { (t.consumers.len()) " of " (t.total_consumers) " consumers" }
                        }
                    }
                }
            }
            section.panel #limits {
                h2 { "Entitlements near or over their limit" }
                p.muted { (snap.limits.len()) " of " (snap.metered) " metered entitlements; as of " (datetime(snap.at)) "." }
                @if snap.limits.is_empty() {
                    (empty("None: every metered entitlement has more than a fifth of its grants left."))
                } @else {
                    table {
                        thead { tr { th { "" } th { "owner" } th { "feature" } th.num { "usage" } th.num { "balance" } th.num { "granted" } } }
                        tbody {
                            @for r in snap.limits.iter().take(50) {
                                tr {
                                    td { @match r.pressure {
                                        Pressure::Over => span.badge.over { "over" },
                                        Pressure::Near => span.badge.near { "near" },
                                    } @if r.soft { " " span.badge { "soft" } } }
                                    td { (consumer(&r.owner)) }
                                    td { (r.feature_key) }
                                    td.num { (quantity(r.usage)) }
                                    td.num { (quantity(r.balance)) @if r.overage > rust_decimal::Decimal::ZERO { " (overage " (quantity(r.overage)) ")" } }
                                    td.num { (quantity(r.granted)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /`.
pub async fn page_route(State(console): State<Console>) -> Page {
    page_handler(&console).await
}

/// A consumer, linked to its customer when it is one.
pub fn consumer(c: &Consumer) -> Markup {
    match c {
        Consumer::Customer(id, name) => html! { a href=(format!("/customers/{id}")) { (name) } },
        Consumer::Subject(s) => html! { code { (s) } " " span.muted { "(no customer)" } },
    }
}
