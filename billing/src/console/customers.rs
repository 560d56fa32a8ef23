//! Customers: the list (`/customers`, searched and paged, with the form that creates one) and a
//! customer's page (`/customers/{id}`: subjects, this month's usage per meter, entitlements
//! with their balance bars, current period and next reset, grants, and the form that adds a
//! grant). Values come from the balance engine exactly as `…/entitlements/{f}/value` computes
//! them; the forms go through the API's own create functions ([`api::customers::create`],
//! [`api::grants::create`]), so a refusal shows the API's status and detail.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::Console;
use super::layout::{Banner, Nav, Page, PageError, dash, datetime, empty, page, quantity};
use crate::api::{self, Problem, query_pairs};
use crate::entitlement::{self, Customer, Entitlement, EntitlementValue, Feature, Grant};
use crate::query::value_of;
use crate::store::MinuteAgg;

/// Customers per page.
const PAGE_SIZE: usize = 50;

/// The create form's fields, kept to show them again after a refusal.
#[derive(Default)]
struct NewCustomer {
    name: String,
    key: String,
    subjects: String,
    email: String,
    currency: String,
}

/// `GET /customers?q=&page=`.
pub async fn list(State(console): State<Console>, RawQuery(raw): RawQuery) -> Page {
    let banner = match query_pairs(&raw).iter().find(|(k, _)| k == "deleted") {
        Some(_) => Banner::Notice("Customer deleted.".into()),
        None => Banner::None,
    };
    render_list(&console, &raw, banner, NewCustomer::default()).await
}

async fn render_list(
    console: &Console,
    raw: &Option<String>,
    banner: Banner,
    form: NewCustomer,
) -> Page {
    let api = &console.api;
    let mut search = String::new();
    let mut page_no = 1usize;
    for (k, v) in query_pairs(raw) {
        match k.as_str() {
            "q" => search = v.trim().to_owned(),
            "page" => page_no = v.parse().ok().filter(|n| *n >= 1).unwrap_or(1),
            _ => {}
        }
    }
    let needle = search.to_lowercase();
    let mut customers: Vec<Customer> = api
        .store
        .list_entities::<Customer>("customer")
        .await?
        .into_iter()
        .filter(|c| {
            needle.is_empty()
                || c.name.to_lowercase().contains(&needle)
                || c.key
                    .as_deref()
                    .is_some_and(|k| k.to_lowercase().contains(&needle))
                || c.usage_attribution
                    .subject_keys
                    .iter()
                    .any(|s| s.to_lowercase().contains(&needle))
                || c.id == search
        })
        .collect();
    customers.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    let total = customers.len();
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let page_no = page_no.min(pages);
    let shown = customers
        .iter()
        .skip((page_no - 1) * PAGE_SIZE)
        .take(PAGE_SIZE);
    let link = |p: usize| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if !search.is_empty() {
            q.append_pair("q", &search);
        }
        q.append_pair("page", &p.to_string());
        format!("/customers?{}", q.finish())
    };
    let content = html! {
        form.filters method="get" action="/customers" {
            label { "search" input type="search" name="q" value=(search) placeholder="name, key or subject"; }
            button type="submit" { "Search" }
        }
        p.muted #customer-total { (quantity(total.into())) " customers" @if !search.is_empty() { " matching" } }
        @if total == 0 {
            (empty("No customers."))
        } @else {
            table #customers {
                thead { tr { th { "name" } th { "key" } th { "subjects" } th { "currency" } th { "created" } } }
                tbody {
                    @for c in shown {
                        tr {
                            td { a href=(format!("/customers/{}", c.id)) { (c.name) } }
                            td { @if let Some(k) = &c.key { code { (k) } } @else { (dash()) } }
                            td { @for s in &c.usage_attribution.subject_keys { code { (s) } " " } }
                            td { (c.currency.as_deref().unwrap_or("")) }
                            td { (datetime(c.created_at)) }
                        }
                    }
                }
            }
            div.pager {
                @if page_no > 1 { a href=(link(page_no - 1)) rel="prev" { "← previous" } }
                span.muted { "page " (page_no) " of " (pages) }
                @if page_no < pages { a href=(link(page_no + 1)) rel="next" { "next →" } }
            }
        }
        section.panel #new-customer {
            h2 { "New customer" }
            form.inline method="post" action="/customers" {
                label { "name" input type="text" name="name" required value=(form.name); }
                label { "key" input type="text" name="key" value=(form.key) placeholder="acme"; }
                label { "subject keys (comma-separated)" input type="text" name="subjects" value=(form.subjects) placeholder="consumer:…"; }
                label { "email" input type="email" name="email" value=(form.email); }
                label { "currency" input type="text" name="currency" value=(form.currency) placeholder="USD" size="4"; }
                button type="submit" { "Create customer" }
            }
            p.muted { "Same as " code { "POST /api/v1/customers" } "." }
        }
    };
    page(api, Nav::Customers, "Customers", banner, content).await
}

fn form_fields(body: &Bytes) -> BTreeMap<String, String> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.trim().to_owned()))
        .collect()
}

/// `POST /customers`: the form, as a `Customer` document, through the API's create.
pub async fn create(State(console): State<Console>, body: Bytes) -> Page {
    let f = form_fields(&body);
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    let form = NewCustomer {
        name: get("name"),
        key: get("key"),
        subjects: get("subjects"),
        email: get("email"),
        currency: get("currency"),
    };
    let mut doc = json!({"name": form.name});
    if !form.key.is_empty() {
        doc["key"] = json!(form.key);
    }
    let subjects: Vec<&str> = form
        .subjects
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if !subjects.is_empty() {
        doc["usageAttribution"] = json!({"subjectKeys": subjects});
    }
    if !form.email.is_empty() {
        doc["primaryEmail"] = json!(form.email);
    }
    if !form.currency.is_empty() {
        doc["currency"] = json!(form.currency);
    }
    match api::customers::create(&console.api, &Bytes::from(doc.to_string())).await {
        Ok(c) => {
            console.summary.invalidate();
            Ok(Redirect::to(&format!("/customers/{}?created=1", c.id)).into_response())
        }
        Err(Problem(status, detail)) => {
            render_list(&console, &None, Banner::Error(status, detail), form).await
        }
    }
}

/// An entitlement with what the page shows of it.
struct Row {
    e: Entitlement,
    value: Option<EntitlementValue>,
    grants: Vec<Grant>,
    next_reset: Option<DateTime<Utc>>,
    period: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

async fn customer_of(console: &Console, id: &str) -> Result<Customer, PageError> {
    api::customers::customer_by(&console.api, id)
        .await?
        .ok_or_else(|| PageError(StatusCode::NOT_FOUND, format!("customer {id} not found")))
}

/// `GET /customers/{id}`.
pub async fn page_route(
    State(console): State<Console>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Page {
    let pairs = query_pairs(&raw);
    let banner = if pairs.iter().any(|(k, _)| k == "created") {
        Banner::Notice("Customer created.".into())
    } else if pairs.iter().any(|(k, _)| k == "subscribed") {
        Banner::Notice("Subscribed.".into())
    } else if let Some((_, at)) = pairs.iter().find(|(k, _)| k == "granted") {
        // Grants start on a whole minute (the API rounds `effectiveAt` up, as OpenMeter does).
        match at.parse::<DateTime<Utc>>() {
            Ok(t) => Banner::Notice(format!("Grant added, effective from {}.", datetime(t))),
            Err(_) => Banner::Notice("Grant added.".into()),
        }
    } else {
        Banner::None
    };
    render_customer(&console, &id, banner).await
}

/// The customer page with `banner` above it.
pub(crate) async fn render_customer(console: &Console, id: &str, banner: Banner) -> Page {
    let api = &console.api;
    let c = customer_of(console, id).await?;
    let now = api.now().await?;
    let subjects = c.subjects();
    let features: BTreeMap<String, Feature> = api
        .store
        .list_entities::<Feature>("feature")
        .await?
        .into_iter()
        .map(|f| (f.id.clone(), f))
        .collect();
    let owner = api::entitlements::customer_owner(api, &c.id).await?;
    let ents = api::entitlements::entitlements_of(api, &owner).await?;
    let mut grants_by: BTreeMap<String, Vec<Grant>> = BTreeMap::new();
    if !ents.is_empty() {
        for g in api.store.list_entities::<Grant>("grant").await? {
            if ents.iter().any(|e| e.id == g.entitlement_id) {
                grants_by
                    .entry(g.entitlement_id.clone())
                    .or_default()
                    .push(g);
            }
        }
    }
    let mut rows = Vec::new();
    for e in ents {
        let grants = grants_by.remove(&e.id).unwrap_or_default();
        let (value, next_reset, period) = match (e.kind.as_str(), features.get(&e.feature_id)) {
            ("metered", Some(f)) => {
                let v = entitlement::value(&api.store, &e, f, &subjects, &grants, now).await?;
                let (interval, anchor, _) = e.period_basis();
                (
                    Some(v),
                    Some(e.next_period_boundary(now)),
                    Some(interval.period_at(anchor, now)),
                )
            }
            _ => (None, None, None),
        };
        rows.push(Row {
            e,
            value,
            grants,
            next_reset,
            period,
        });
    }
    rows.sort_by(|a, b| a.e.feature_key.cmp(&b.e.feature_key));
    // This month's usage per meter (the API's rollups, all of the customer's subjects).
    let month = super::summary::month_start(now);
    let mut usage = Vec::new();
    let mut meters = api.store.meters();
    meters.sort_by(|a, b| a.meter.slug.cmp(&b.meter.slug));
    if !subjects.is_empty() {
        for m in &meters {
            let mut agg = MinuteAgg::default();
            for (_, _, _, a) in api
                .store
                .usage(
                    &m.meter.slug,
                    &subjects,
                    month.timestamp_millis(),
                    now.timestamp_millis(),
                )
                .await?
            {
                agg.merge(&a);
            }
            usage.push((m.meter.slug.clone(), value_of(m.meter.aggregation, &agg)));
        }
    }
    let subscriptions = super::subscriptions::section(console, &c, now).await?;
    let invoices = super::invoices::of_customer(api, &c.id).await?;
    let content = html! {
        dl.facts {
            dt { "id" } dd { code #customer-id { (c.id) } }
            dt { "key" } dd { @if let Some(k) = &c.key { code { (k) } } @else { (dash()) } }
            dt { "subjects" } dd #subjects { @for s in &subjects { code { (s) } " " } @if subjects.is_empty() { (dash()) } }
            @if let Some(e) = &c.primary_email { dt { "email" } dd { (e) } }
            @if let Some(cur) = &c.currency { dt { "currency" } dd { (cur) } }
            @if let Some(d) = &c.description { dt { "description" } dd { (d) } }
            dt { "created" } dd { (datetime(c.created_at)) }
        }
        section.panel {
            h2 { "Usage this month" }
            @if usage.is_empty() { (empty("No subjects or no meters.")) } @else {
                table #customer-usage {
                    thead { tr { th { "meter" } th.num { "since " (datetime(month)) } } }
                    tbody { @for (slug, v) in &usage {
                        tr { td { a href=(format!("/meters/{slug}?range=30d&groupBy=subject")) { (slug) } } td.num data-meter=(slug) data-value=(v.normalize()) { (quantity(*v)) } }
                    } }
                }
            }
        }
        (subscriptions)
        section.panel #customer-invoices {
            h2 { "Invoices" }
            @if invoices.is_empty() { (empty("No invoices.")) } @else { (super::invoices::table(&invoices)) }
        }
        section.panel #entitlements {
            h2 { "Entitlements" }
            @if rows.is_empty() { (empty("No entitlements.")) }
            @for r in &rows { (entitlement_panel(&c, r)) }
        }
    };
    page(api, Nav::Customers, &c.name, banner, content).await
}

fn entitlement_panel(c: &Customer, r: &Row) -> Markup {
    let e = &r.e;
    html! {
        div.panel.entitlement data-feature=(e.feature_key) {
            h3 { (e.feature_key) " " span.badge { (e.kind) } @if e.is_soft_limit { " " span.badge { "soft limit" } } }
            @match (&r.value, e.kind.as_str()) {
                (Some(v), _) => {
                    @let balance = v.balance.unwrap_or_default();
                    @let granted = v.total_available_grant_amount.unwrap_or_default();
                    p {
                        meter min="0" max=(granted.max(Decimal::ONE)) value=(balance.max(Decimal::ZERO))
                            low=(granted * super::summary::NEAR_SHARE) high=(granted) optimum=(granted) {}
                        " balance " strong.balance data-value=(balance.normalize()) { (quantity(balance)) }
                        " of " span.granted data-value=(granted.normalize()) { (quantity(granted)) }
                        " · usage " span.usage data-value=(v.usage.unwrap_or_default().normalize()) { (quantity(v.usage.unwrap_or_default())) }
                        @if v.overage.unwrap_or_default() > Decimal::ZERO { " · overage " span.badge.over { (quantity(v.overage.unwrap_or_default())) } }
                        " · " @if v.has_access { span.badge.ok { "access" } } @else { span.badge.bad { "no access" } }
                    }
                    p.muted {
                        @if let Some((from, to)) = r.period { "period " (datetime(from)) " – " (datetime(to)) }
                        @if let Some(t) = r.next_reset { " · next reset " time datetime=(t.to_rfc3339()) { (datetime(t)) } }
                        @if let Some(p) = &e.usage_period { " · every " code { (p.interval) } }
                    }
                    @if r.grants.is_empty() { (empty("No grants.")) } @else {
                        table.grants {
                            thead { tr { th { "grant" } th.num { "amount" } th.num { "priority" } th { "effective" } th { "expires" } th { "recurs" } th.num { "balance" } } }
                            tbody { @for g in &r.grants {
                                tr {
                                    td { code { (g.id) } @if g.voided_at.is_some() { " " span.badge.archived { "voided" } } }
                                    td.num { (quantity(g.amount)) }
                                    td.num { (g.priority) }
                                    td { (datetime(g.effective_at)) }
                                    td { @if let Some(t) = g.expires_at { (datetime(t)) } @else { (dash()) } }
                                    td { @if let Some(p) = &g.recurrence { code { (p.interval) } } @else { (dash()) } }
                                    td.num { @match v.grant_balances.as_ref().and_then(|b| b.get(&g.id)) {
                                        Some(b) => (quantity(*b)),
                                        None => (dash()),
                                    } }
                                }
                            } }
                        }
                    }
                    form.inline.add-grant method="post" action=(format!("/customers/{}/entitlements/{}/grants", c.id, e.id)) {
                        label { "amount" input type="number" name="amount" min="0" step="any" required; }
                        label { "priority" input type="number" name="priority" min="1" max="255" value="1"; }
                        label { "expires after" input type="number" name="expirationCount" min="1" placeholder="never"; }
                        label { "unit" select name="expirationDuration" {
                            @for d in ["HOUR", "DAY", "WEEK", "MONTH", "YEAR"] { option value=(d) selected[d == "MONTH"] { (d.to_lowercase()) } }
                        } }
                        button type="submit" { "Add grant now" }
                    }
                }
                (None, "static") => { p { "config " code { (e.config.as_deref().unwrap_or("")) } } }
                (None, _) => { p { span.badge.ok { "access" } } }
            }
        }
    }
}

/// `POST /customers/{id}/entitlements/{e}/grants`: a grant effective now, through the API's
/// create.
pub async fn add_grant(
    State(console): State<Console>,
    Path((id, e)): Path<(String, String)>,
    body: Bytes,
) -> Page {
    let f = form_fields(&body);
    let now = console.api.now().await?;
    let mut doc = json!({"effectiveAt": now});
    match f.get("amount").map(|a| a.parse::<Decimal>()) {
        Some(Ok(a)) => doc["amount"] = json!(a.to_string().parse::<f64>().unwrap_or(0.0)),
        Some(Err(_)) => {
            return render_customer(
                &console,
                &id,
                Banner::Error(StatusCode::BAD_REQUEST, "amount: not a number".into()),
            )
            .await;
        }
        None => {}
    }
    if let Some(p) = f.get("priority").filter(|p| !p.is_empty()) {
        doc["priority"] = p.parse::<i64>().map(Value::from).unwrap_or(json!(p));
    }
    if let Some(n) = f.get("expirationCount").filter(|n| !n.is_empty()) {
        doc["expiration"] = json!({
            "count": n.parse::<i64>().map(Value::from).unwrap_or(json!(n)),
            "duration": f.get("expirationDuration").cloned().unwrap_or_default(),
        });
    }
    let owner = api::entitlements::customer_owner(&console.api, &id).await?;
    match api::grants::create(&console.api, owner, &e, &Bytes::from(doc.to_string())).await {
        Ok(g) => {
            console.summary.invalidate();
            let at: String = form_urlencoded::byte_serialize(
                g.effective_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    .as_bytes(),
            )
            .collect();
            Ok(Redirect::to(&format!("/customers/{id}?granted={at}")).into_response())
        }
        Err(Problem(status, detail)) => {
            render_customer(&console, &id, Banner::Error(status, detail)).await
        }
    }
}
