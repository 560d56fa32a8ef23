//! The product catalog's pages: features (`/features`), plans (`/plans`, every version by key,
//! and `/plans/{id}`: phases with their rate cards, prices, tiers, discounts and entitlement
//! templates laid out as tables), add-ons (`/addons`, `/addons/{id}`, with the plans that offer
//! them). Read through the same catalog functions the API's handlers use, status as of billing's
//! clock.

use axum::extract::{Path, State};
use maud::{Markup, html};

use super::Console;
use super::layout::{Banner, Nav, Page, dash, datetime, empty, page, quantity};
use crate::api;
use crate::catalog::model::{
    Addon, DiscountsDoc, EntitlementTemplate, PlanAddonRecord, PriceDoc, RateCard, RateCardType,
    Status,
};
use crate::entitlement::Feature;

fn status(s: Status) -> Markup {
    html! { span class=(format!("badge {}", s.as_str())) { (s.as_str()) } }
}

/// `GET /features`.
pub async fn features(State(console): State<Console>) -> Page {
    let api = &console.api;
    let mut features = api.store.list_entities::<Feature>("feature").await?;
    features
        .sort_by(|a, b| (a.archived_at.is_some(), &a.key).cmp(&(b.archived_at.is_some(), &b.key)));
    let content = html! {
        @if features.is_empty() { (empty("No features.")) } @else {
            table #features {
                thead { tr { th { "key" } th { "name" } th { "meter" } th { "filters" } th { "created" } th { "" } } }
                tbody { @for f in &features {
                    tr {
                        td { code { (f.key) } }
                        td { (f.name) }
                        td { @if let Some(m) = &f.meter_slug { a href=(format!("/meters/{m}")) { (m) } } @else { (dash()) } }
                        td { @for (k, filter) in f.group_filters() { code { (k) " " (serde_json::to_string(&filter).unwrap_or_default()) } " " } }
                        td { (datetime(f.created_at)) }
                        td { @if f.archived_at.is_some() { span.badge.archived { "archived" } } }
                    }
                } }
            }
        }
    };
    page(api, Nav::Features, "Features", Banner::None, content).await
}

/// `GET /plans`: every version, grouped by key.
pub async fn plans(State(console): State<Console>) -> Page {
    let api = &console.api;
    let now = api.now().await?;
    let plans = api::plans::all_plans(api, now).await?;
    let content = html! {
        @if plans.is_empty() { (empty("No plans: POST /api/v1/plans, or tollgate-billing catalog apply.")) } @else {
            table #plans {
                thead { tr { th { "key" } th { "version" } th { "name" } th { "status" } th { "currency" } th { "cadence" } th { "phases" } th { "effective" } } }
                tbody { @for p in plans.iter().filter(|p| p.deleted_at.is_none()) {
                    tr {
                        td { code { (p.key) } }
                        td { a href=(format!("/plans/{}", p.id)) { "v" (p.version) } }
                        td { (p.name) }
                        td { (status(p.status)) @if p.validation_errors.as_ref().is_some_and(|v| !v.is_empty()) { " " span.badge.near { "warnings" } } }
                        td { (p.currency) }
                        td { code { (p.billing_cadence) } }
                        td { (p.phases.len()) }
                        td { @if let Some(f) = p.effective_from { (datetime(f)) } @else { (dash()) }
                             @if let Some(t) = p.effective_to { " – " (datetime(t)) } }
                    }
                } }
            }
        }
    };
    page(api, Nav::Plans, "Plans", Banner::None, content).await
}

/// `GET /plans/{id}` (an id, or a key: its active version, else its newest).
pub async fn plan(State(console): State<Console>, Path(id): Path<String>) -> Page {
    let api = &console.api;
    let now = api.now().await?;
    let (p, all) = match api::plans::plan_by(api, &id, false, now).await {
        Ok(found) => found,
        Err(_) => api::plans::plan_by(api, &id, true, now).await?,
    };
    let offered: Vec<PlanAddonRecord> = api
        .store
        .list_entities::<PlanAddonRecord>("plan_addon")
        .await?
        .into_iter()
        .filter(|r| r.plan_id == p.id && r.deleted_at.is_none())
        .collect();
    let addons = api::addons::all_addons(api, now).await?;
    let content = html! {
        dl.facts {
            dt { "key" } dd { code { (p.key) } }
            dt { "version" } dd { (p.version) " " (status(p.status)) }
            dt { "currency" } dd { (p.currency) }
            dt { "billing cadence" } dd { code { (p.billing_cadence) } }
            dt { "pro-rating" } dd { @if p.pro_rating_config.enabled { "on" } @else { "off" } }
            @if let Some(d) = &p.description { dt { "description" } dd { (d) } }
            dt { "other versions" } dd {
                @for o in all.iter().filter(|o| o.key == p.key && o.id != p.id && o.deleted_at.is_none()) {
                    a href=(format!("/plans/{}", o.id)) { "v" (o.version) } " " (status(o.status)) " "
                }
            }
        }
        @if let Some(issues) = p.validation_errors.as_ref().filter(|v| !v.is_empty()) {
            div.error { strong { "Warnings (block publishing):" }
                ul { @for i in issues { li { code { (i.field) } ": " (i.message) } } } }
        }
        @for (n, phase) in p.phases.iter().enumerate() {
            section.panel.phase {
                h2 { "Phase " (n + 1) ": " (phase.name) " " code { (phase.key) } }
                p.muted { @match &phase.duration { Some(d) => { "lasts " code { (d) } }, None => { "lasts until the subscription ends" } } }
                (rate_cards(&phase.rate_cards, &p.currency))
            }
        }
        @if !offered.is_empty() {
            section.panel {
                h2 { "Add-ons offered" }
                table { thead { tr { th { "add-on" } th { "from phase" } th.num { "max quantity" } } }
                    tbody { @for r in &offered {
                        tr {
                            td { @match addons.iter().find(|a| a.id == r.addon_id) {
                                Some(a) => a href=(format!("/addons/{}", a.id)) { (a.name) " v" (a.version) },
                                None => code { (r.addon_id) },
                            } }
                            td { code { (r.from_plan_phase) } }
                            td.num { @if let Some(q) = r.max_quantity { (q) } @else { (dash()) } }
                        }
                    } }
                }
            }
        }
    };
    page(
        api,
        Nav::Plans,
        &format!("Plan {} v{}", p.name, p.version),
        Banner::None,
        content,
    )
    .await
}

/// `GET /addons`.
pub async fn addons(State(console): State<Console>) -> Page {
    let api = &console.api;
    let now = api.now().await?;
    let addons = api::addons::all_addons(api, now).await?;
    let content = html! {
        @if addons.is_empty() { (empty("No add-ons.")) } @else {
            table #addons {
                thead { tr { th { "key" } th { "version" } th { "name" } th { "status" } th { "instances" } th { "currency" } th { "rate cards" } } }
                tbody { @for a in addons.iter().filter(|a| a.deleted_at.is_none()) {
                    tr {
                        td { code { (a.key) } }
                        td { a href=(format!("/addons/{}", a.id)) { "v" (a.version) } }
                        td { (a.name) }
                        td { (status(a.status)) }
                        td { (a.instance_type) }
                        td { (a.currency) }
                        td { (a.rate_cards.len()) }
                    }
                } }
            }
        }
    };
    page(api, Nav::Addons, "Add-ons", Banner::None, content).await
}

/// `GET /addons/{id}`.
pub async fn addon(State(console): State<Console>, Path(id): Path<String>) -> Page {
    let api = &console.api;
    let now = api.now().await?;
    let (a, _): (Addon, _) = match api::addons::addon_by(api, &id, false, now).await {
        Ok(found) => found,
        Err(_) => api::addons::addon_by(api, &id, true, now).await?,
    };
    let content = html! {
        dl.facts {
            dt { "key" } dd { code { (a.key) } }
            dt { "version" } dd { (a.version) " " (status(a.status)) }
            dt { "instances" } dd { (a.instance_type) }
            dt { "currency" } dd { (a.currency) }
            @if let Some(d) = &a.description { dt { "description" } dd { (d) } }
        }
        section.panel { h2 { "Rate cards" } (rate_cards(&a.rate_cards, &a.currency)) }
    };
    page(
        api,
        Nav::Addons,
        &format!("Add-on {} v{}", a.name, a.version),
        Banner::None,
        content,
    )
    .await
}

fn rate_cards(cards: &[RateCard], currency: &str) -> Markup {
    html! {
        @if cards.is_empty() { (empty("No rate cards.")) } @else {
            table.rate-cards {
                thead { tr { th { "rate card" } th { "type" } th { "feature" } th { "cadence" } th { "price" } th { "discounts" } th { "entitlement" } } }
                tbody { @for rc in cards {
                    tr {
                        td { (rc.name) br; code { (rc.key) } }
                        td { @match rc.kind { RateCardType::FlatFee => "flat fee", RateCardType::UsageBased => "usage based" } }
                        td { @if let Some(f) = &rc.feature_key { code { (f) } } @else { (dash()) } }
                        td { @if let Some(c) = &rc.billing_cadence { code { (c) } } @else { "one-time" } }
                        td { (price(rc.price.as_ref(), currency)) }
                        td { (discounts(rc.discounts.as_ref())) }
                        td { (template(rc.entitlement_template.as_ref())) }
                    }
                } }
            }
        }
    }
}

fn money(v: &rust_decimal::Decimal, currency: &str) -> String {
    super::layout::money(*v, currency)
}

fn commitments(
    min: Option<&rust_decimal::Decimal>,
    max: Option<&rust_decimal::Decimal>,
    currency: &str,
) -> Markup {
    html! {
        @if let Some(m) = min { br; span.muted { "minimum " (money(m, currency)) } }
        @if let Some(m) = max { br; span.muted { "maximum " (money(m, currency)) } }
    }
}

fn price(p: Option<&PriceDoc>, currency: &str) -> Markup {
    match p {
        None => html! { "free" },
        Some(PriceDoc::Flat {
            amount,
            payment_term,
        }) => html! { (money(amount, currency)) " flat, " (payment_term.replace('_', " ")) },
        Some(PriceDoc::Unit {
            amount,
            minimum_amount,
            maximum_amount,
        }) => html! {
            (money(amount, currency)) " per unit"
            (commitments(minimum_amount.as_ref(), maximum_amount.as_ref(), currency))
        },
        Some(PriceDoc::Package {
            amount,
            quantity_per_package,
            minimum_amount,
            maximum_amount,
        }) => html! {
            (money(amount, currency)) " per " (quantity(*quantity_per_package)) " units"
            (commitments(minimum_amount.as_ref(), maximum_amount.as_ref(), currency))
        },
        Some(PriceDoc::Dynamic {
            multiplier,
            minimum_amount,
            maximum_amount,
        }) => html! {
            "dynamic × " (multiplier.normalize())
            (commitments(minimum_amount.as_ref(), maximum_amount.as_ref(), currency))
        },
        Some(PriceDoc::Tiered {
            mode,
            tiers,
            minimum_amount,
            maximum_amount,
        }) => {
            let lowers: Vec<rust_decimal::Decimal> = std::iter::once(rust_decimal::Decimal::ZERO)
                .chain(tiers.iter().map_while(|t| t.up_to_amount))
                .collect();
            html! {
                (mode) " tiers"
                table.inner.tiers {
                    thead { tr { th.num { "from" } th.num { "up to" } th.num { "flat" } th.num { "per unit" } } }
                    tbody { @for (i, t) in tiers.iter().enumerate() {
                        tr {
                            td.num { @match lowers.get(i) { Some(l) => (quantity(*l)), None => (dash()) } }
                            td.num { @match t.up_to_amount { Some(u) => (quantity(u)), None => "∞" } }
                            td.num { @if let Some(f) = &t.flat_price { (money(&f.amount, currency)) } @else { (dash()) } }
                            td.num { @if let Some(u) = &t.unit_price { (money(&u.amount, currency)) } @else { (dash()) } }
                        }
                    } }
                }
                (commitments(minimum_amount.as_ref(), maximum_amount.as_ref(), currency))
            }
        }
    }
}

fn discounts(d: Option<&DiscountsDoc>) -> Markup {
    html! {
        @match d {
            None => (dash()),
            Some(d) => {
                @if let Some(p) = &d.percentage { (p.percentage.normalize()) "% off" br; }
                @if let Some(u) = &d.usage { (quantity(u.quantity)) " units free" }
                @if d.percentage.is_none() && d.usage.is_none() { (dash()) }
            }
        }
    }
}

fn template(t: Option<&EntitlementTemplate>) -> Markup {
    html! {
        @match t {
            None => (dash()),
            Some(EntitlementTemplate::Metered { is_soft_limit, issue_after_reset, usage_period, .. }) => {
                "metered"
                @if let Some(n) = issue_after_reset { ", " (n) " per period" }
                @if let Some(p) = usage_period { ", every " code { (p) } }
                @if *is_soft_limit { ", soft" }
            },
            Some(EntitlementTemplate::Static { config, .. }) => { "static " code { (config) } },
            Some(EntitlementTemplate::Boolean { .. }) => "boolean",
        }
    }
}
