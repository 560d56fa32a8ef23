//! Invoices: the list (`/invoices`, by status, newest first, with counts per status), an
//! invoice's page (`/invoices/{id}`: parties, dates, lines with their detailed lines and totals,
//! the actions it allows now) with the approve button, which goes through the same lifecycle call
//! as `POST /api/v1/billing/invoices/{id}/approve`, and the printable page
//! (`/invoices/{id}/print`: the invoicing module's own [`crate::invoice::html::page`]). A
//! gathering invoice shows its lines rated with the usage so far, as the API does
//! ([`lifecycle::live_view`]). The overview's "awaiting approval" comes from
//! [`awaiting_approval`].

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use maud::{Markup, html};

use super::Console;
use super::layout::{Banner, Nav, Page, PageError, dash, datetime, empty, money, page, quantity};
use crate::api::{Api, Problem, query_pairs};
use crate::invoice::lifecycle::{self, Action, KIND};
use crate::invoice::model::Invoice;

fn status_badge(inv: &Invoice) -> Markup {
    let class = match inv.status.as_str() {
        "paid" => "badge ok",
        "issued" | "payment_processing" => "badge active",
        "draft" | "gathering" => "badge draft",
        "overdue" | "uncollectible" => "badge bad",
        _ => "badge archived",
    };
    html! { span class=(class) title=(inv.status_details.extended_status) { (inv.status) } }
}

fn number(inv: &Invoice) -> String {
    inv.number.clone().unwrap_or_else(|| inv.id.clone())
}

async fn all(api: &Api) -> Result<Vec<Invoice>, PageError> {
    let mut v: Vec<Invoice> = api
        .store
        .list_entities::<Invoice>(KIND)
        .await?
        .into_iter()
        .filter(|i| i.deleted_at.is_none())
        .collect();
    v.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| b.id.cmp(&a.id))
    });
    Ok(v)
}

/// Drafts that wait for a person's approval.
pub async fn awaiting_approval(api: &Api) -> Result<Vec<Invoice>, PageError> {
    Ok(all(api)
        .await?
        .into_iter()
        .filter(|i| i.status == "draft" && i.status_details.available_actions.approve.is_some())
        .collect())
}

/// A table of invoices.
pub fn table(invoices: &[Invoice]) -> Markup {
    html! {
        table.invoices {
            thead { tr { th { "number" } th { "customer" } th { "status" } th { "period" } th.num { "total" } th { "created" } th { "issued" } } }
            tbody { @for i in invoices {
                tr data-invoice=(i.id) {
                    td { a href=(format!("/invoices/{}", i.id)) { (number(i)) } }
                    td { a href=(format!("/customers/{}", i.customer.id)) { (i.customer.name) } }
                    td { (status_badge(i)) }
                    td { @match &i.period { Some(p) => { (datetime(p.from)) " – " (datetime(p.to)) }, None => (dash()) } }
                    td.num data-value=(i.totals.total.normalize()) { (money(i.totals.total, &i.currency)) }
                    td { (datetime(i.created_at)) }
                    td { @match i.issued_at { Some(t) => (datetime(t)), None => (dash()) } }
                }
            } }
        }
    }
}

/// A customer's invoices, for the customer page.
pub async fn of_customer(api: &Api, customer_id: &str) -> Result<Vec<Invoice>, PageError> {
    let mut v: Vec<Invoice> = lifecycle::invoices_of(&api.store, customer_id)
        .await?
        .into_iter()
        .filter(|i| i.deleted_at.is_none())
        .collect();
    v.sort_by_key(|b| std::cmp::Reverse(b.created_at));
    Ok(v)
}

/// `GET /invoices?status=`.
pub async fn list(State(console): State<Console>, RawQuery(raw): RawQuery) -> Page {
    let api = &console.api;
    let wanted = query_pairs(&raw)
        .into_iter()
        .find(|(k, _)| k == "status")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty());
    let invoices = all(api).await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in &invoices {
        *counts.entry(i.status.clone()).or_default() += 1;
    }
    let shown: Vec<Invoice> = invoices
        .into_iter()
        .filter(|i| wanted.as_ref().is_none_or(|w| &i.status == w))
        .take(500)
        .collect();
    let content = html! {
        p.pager {
            a href="/invoices" { "all" } " "
            @for (s, n) in &counts { a href=(format!("/invoices?status={s}")) { (s) " (" (n) ")" } " " }
        }
        @if shown.is_empty() { (empty("No invoices.")) } @else { (table(&shown)) }
    };
    page(api, Nav::Invoices, "Invoices", Banner::None, content).await
}

async fn find(api: &Api, id: &str) -> Result<Invoice, PageError> {
    let inv = lifecycle::load(&api.store, id)
        .await?
        .map(|(_, i)| i)
        .ok_or_else(|| PageError(StatusCode::NOT_FOUND, format!("invoice {id} not found")))?;
    let now = api.now().await?;
    Ok(lifecycle::live_view(&api.store, inv, now).await?)
}

/// `GET /invoices/{id}`.
pub async fn page_route(
    State(console): State<Console>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Page {
    let banner = if query_pairs(&raw).iter().any(|(k, _)| k == "approved") {
        Banner::Notice("Approved.".into())
    } else {
        Banner::None
    };
    render(&console, &id, banner).await
}

async fn render(console: &Console, id: &str, banner: Banner) -> Page {
    let api = &console.api;
    let inv = find(api, id).await?;
    let cur = inv.currency.clone();
    let t = &inv.totals;
    let content = html! {
        dl.facts {
            dt { "status" } dd { (status_badge(&inv)) " " code { (inv.status_details.extended_status) } }
            dt { "customer" } dd { a href=(format!("/customers/{}", inv.customer.id)) { (inv.customer.name) } }
            dt { "supplier" } dd { (inv.supplier.name.as_deref().unwrap_or("")) }
            @if let Some(p) = &inv.period { dt { "period" } dd { (datetime(p.from)) " – " (datetime(p.to)) } }
            dt { "created" } dd { (datetime(inv.created_at)) }
            @if let Some(t) = inv.issued_at { dt { "issued" } dd { (datetime(t)) } }
            @if let Some(t) = inv.due_at { dt { "due" } dd { (datetime(t)) } }
            @if let Some(t) = inv.draft_until { dt { "draft until" } dd { (datetime(t)) } }
        }
        div.inline.no-print {
            @if inv.status_details.available_actions.approve.is_some() {
                form.approve method="post" action=(format!("/invoices/{}/approve", inv.id)) data-confirm="Approve and issue this invoice?" {
                    button type="submit" { "Approve" }
                }
            }
            a href=(format!("/invoices/{}/print", inv.id)) { "Printable page" }
        }
        section.panel {
            h2 { "Lines" }
            @if inv.lines.iter().all(|l| !l.live()) { (empty("No lines.")) } @else {
                table.lines {
                    thead { tr { th { "line" } th { "period" } th.num { "quantity" } th.num { "amount" } th.num { "discounts" } th.num { "total" } } }
                    tbody { @for l in inv.lines.iter().filter(|l| l.live()) {
                        tr {
                            td { strong { (l.name) } }
                            td { (datetime(l.period.from)) " – " (datetime(l.period.to)) }
                            td.num { @match l.quantity { Some(q) => (quantity(q)), None => (dash()) } }
                            td.num { (money(l.totals.amount, &cur)) }
                            td.num { (money(l.totals.discounts_total, &cur)) }
                            td.num { (money(l.totals.total, &cur)) }
                        }
                        @for d in &l.children {
                            tr.detail {
                                td { "↳ " (d.name) }
                                td {}
                                td.num { (quantity(d.quantity)) " × " (money(d.per_unit_amount, &cur)) }
                                td.num { (money(d.totals.amount, &cur)) }
                                td.num { (money(d.totals.discounts_total, &cur)) }
                                td.num { (money(d.totals.total, &cur)) }
                            }
                        }
                    } }
                }
            }
            table.totals {
                tbody {
                    tr { th { "amount" } td.num { (money(t.amount, &cur)) } }
                    tr { th { "discounts" } td.num { (money(t.discounts_total, &cur)) } }
                    tr { th { "taxes" } td.num { (money(t.taxes_total, &cur)) } }
                    tr { th { "total" } td.num #invoice-total data-value=(t.total.normalize()) { strong { (money(t.total, &cur)) } } }
                }
            }
        }
    };
    page(
        api,
        Nav::Invoices,
        &format!("Invoice {}", number(&inv)),
        banner,
        content,
    )
    .await
}

/// `POST /invoices/{id}/approve`.
pub async fn approve(State(console): State<Console>, Path(id): Path<String>) -> Page {
    let now = console.api.now().await?;
    match lifecycle::act(&console.api.store, &id, Action::Approve, now).await {
        Ok(_) => Ok(Redirect::to(&format!("/invoices/{id}?approved=1")).into_response()),
        Err(e) => {
            let Problem(status, detail) = e.into();
            render(&console, &id, Banner::Error(status, detail)).await
        }
    }
}

/// `GET /invoices/{id}/print`: the printable page (its own inline stylesheet allowed, no script).
pub async fn print(State(console): State<Console>, Path(id): Path<String>) -> Page {
    let inv = find(&console.api, &id).await?;
    let mut res = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        crate::invoice::html::page(&inv),
    )
        .into_response();
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'",
        ),
    );
    Ok(res)
}
