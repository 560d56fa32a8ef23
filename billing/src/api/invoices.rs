//! Invoices: `GET /api/v1/billing/invoices` (filters, `expand=lines`), `GET/PUT/DELETE
//! /api/v1/billing/invoices/{id}`, the actions (`advance`, `approve`, `retry`,
//! `snapshot-quantities`, `void`), invoicing pending lines now (`POST
//! /api/v1/billing/invoices/invoice`, progressive billing), pending lines created by hand and
//! simulation (`/api/v1/billing/customers/{c}/invoices/pending-lines|simulate`), and the printable
//! page (`GET /api/tollgate/v1/invoices/{id}/html`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};

use super::customers::customer_by;
use super::{Api, Problem, R, bad, conflict, json_body, not_found, parse_time, query_pairs};
use crate::catalog::model::{PriceDoc, pricing_of};
use crate::invoice::lifecycle::{self, Action, Collect, InvoiceError};
use crate::invoice::model::{Invoice, Line, LineRateCard, Period, Totals};
use crate::invoice::{html, new_id, profile};

/// Invoice routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/billing/invoices", get(list_invoices))
        .route("/api/v1/billing/invoices/invoice", post(invoice_now))
        .route(
            "/api/v1/billing/invoices/{id}",
            get(get_invoice).put(update_invoice).delete(delete_invoice),
        )
        .route("/api/v1/billing/invoices/{id}/advance", post(advance))
        .route("/api/v1/billing/invoices/{id}/approve", post(approve))
        .route("/api/v1/billing/invoices/{id}/retry", post(retry))
        .route(
            "/api/v1/billing/invoices/{id}/snapshot-quantities",
            post(snapshot),
        )
        .route("/api/v1/billing/invoices/{id}/void", post(void))
        .route(
            "/api/v1/billing/invoices/{id}/taxes/recalculate",
            post(recalculate_tax),
        )
        .route(
            "/api/v1/billing/customers/{c}/invoices/pending-lines",
            post(create_pending_lines),
        )
        .route(
            "/api/v1/billing/customers/{c}/invoices/simulate",
            post(simulate),
        )
        .route("/api/tollgate/v1/invoices/{id}/html", get(invoice_page))
}

impl From<InvoiceError> for Problem {
    fn from(e: InvoiceError) -> Self {
        match e {
            InvoiceError::NotFound(m) => not_found(m),
            InvoiceError::Invalid(m) => bad(m),
            InvoiceError::Conflict(m) => conflict(m),
            InvoiceError::Store(e) => e.into(),
        }
    }
}

/// An invoice as answered: a gathering invoice shows its lines rated with the usage so far;
/// lines are left out unless `lines`.
async fn view(api: &Api, inv: Invoice, lines: bool) -> Result<Value, Problem> {
    let now = api.now().await?;
    let inv = lifecycle::live_view(&api.store, inv, now).await?;
    let mut v = serde_json::to_value(&inv).map_err(|e| bad(e.to_string()))?;
    if !lines && let Some(o) = v.as_object_mut() {
        o.remove("lines");
    }
    Ok(v)
}

async fn find(api: &Api, id: &str) -> Result<Invoice, Problem> {
    lifecycle::load(&api.store, id)
        .await?
        .map(|(_, i)| i)
        .ok_or_else(|| not_found(format!("invoice {id} not found")))
}

fn time_param(k: &str, v: &str) -> Result<DateTime<Utc>, Problem> {
    parse_time(k, v)
}

async fn list_invoices(State(api): State<Api>, RawQuery(raw): RawQuery) -> R {
    let (mut statuses, mut extended, mut customers) = (Vec::new(), Vec::new(), Vec::new());
    let mut bounds: Vec<(String, DateTime<Utc>)> = Vec::new();
    let (mut lines, mut include_deleted) = (false, false);
    let (mut page, mut page_size, mut desc, mut order_by) =
        (1usize, 100usize, false, "createdAt".to_owned());
    for (k, v) in query_pairs(&raw) {
        match k.trim_end_matches("[]") {
            "statuses" => statuses.push(v),
            "extendedStatuses" => extended.push(v),
            "customers" => customers.push(v),
            "expand" => lines |= v == "lines",
            "includeDeleted" => include_deleted = v == "true",
            b @ ("issuedAfter" | "issuedBefore" | "periodStartAfter" | "periodStartBefore"
            | "createdAfter" | "createdBefore") => bounds.push((b.to_owned(), time_param(b, &v)?)),
            "page" => {
                page = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad(format!("page: {v:?} must be an integer ≥ 1")))?
            }
            "pageSize" => {
                page_size = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| bad(format!("pageSize: {v:?} must be an integer in 1..=1000")))?
            }
            "order" => {
                desc = match v.as_str() {
                    "ASC" => false,
                    "DESC" => true,
                    _ => return Err(bad(format!("order: {v:?} is not ASC or DESC"))),
                }
            }
            "orderBy" => {
                if !matches!(
                    v.as_str(),
                    "customer.name"
                        | "issuedAt"
                        | "status"
                        | "createdAt"
                        | "updatedAt"
                        | "periodStart"
                ) {
                    return Err(bad(format!(
                        "orderBy: {v:?} is not customer.name, issuedAt, status, createdAt, updatedAt or periodStart"
                    )));
                }
                order_by = v;
            }
            _ => {}
        }
    }
    let mut all: Vec<Invoice> = if customers.is_empty() {
        api.store.list_entities(lifecycle::KIND).await?
    } else {
        let mut out = Vec::new();
        for c in &customers {
            let id = customer_by(&api, c)
                .await?
                .map_or_else(|| c.clone(), |c| c.id);
            out.extend(lifecycle::invoices_of(&api.store, &id).await?);
        }
        out
    };
    all.retain(|i| {
        let inside = |t: Option<DateTime<Utc>>, after: bool, bound: DateTime<Utc>| {
            t.is_some_and(|t| if after { t >= bound } else { t <= bound })
        };
        (include_deleted || i.deleted_at.is_none())
            && (statuses.is_empty() || statuses.contains(&i.status))
            && (extended.is_empty() || extended.iter().any(|e| e == i.ext()))
            && bounds.iter().all(|(k, b)| match k.as_str() {
                "issuedAfter" => inside(i.issued_at, true, *b),
                "issuedBefore" => inside(i.issued_at, false, *b),
                "periodStartAfter" => inside(i.period.map(|p| p.from), true, *b),
                "periodStartBefore" => inside(i.period.map(|p| p.from), false, *b),
                "createdAfter" => inside(Some(i.created_at), true, *b),
                _ => inside(Some(i.created_at), false, *b),
            })
    });
    let key = |i: &Invoice| match order_by.as_str() {
        "customer.name" => i.customer.name.clone(),
        "issuedAt" => i.issued_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        "status" => i.status.clone(),
        "updatedAt" => i.updated_at.to_rfc3339(),
        "periodStart" => i.period.map(|p| p.from.to_rfc3339()).unwrap_or_default(),
        _ => i.created_at.to_rfc3339(),
    };
    all.sort_by(|a, b| key(a).cmp(&key(b)).then(a.id.cmp(&b.id)));
    if desc {
        all.reverse();
    }
    let total = all.len();
    let mut items = Vec::new();
    for inv in all.into_iter().skip((page - 1) * page_size).take(page_size) {
        items.push(view(&api, inv, lines).await?);
    }
    Ok(axum::Json(
        json!({"totalCount": total, "page": page, "pageSize": page_size, "items": items}),
    )
    .into_response())
}

async fn get_invoice(State(api): State<Api>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> R {
    let pairs = query_pairs(&raw);
    let expands: Vec<&String> = pairs
        .iter()
        .filter(|(k, _)| k.trim_end_matches("[]") == "expand")
        .map(|(_, v)| v)
        .collect();
    // OpenMeter's default for a single invoice is `expand=lines`.
    let lines = expands.is_empty() || expands.iter().any(|v| *v == "lines");
    let include_deleted = pairs
        .iter()
        .any(|(k, v)| k == "includeDeletedLines" && v == "true");
    let mut inv = find(&api, &id).await?;
    if !include_deleted {
        inv.lines.retain(|l| l.live());
    }
    Ok(axum::Json(view(&api, inv, lines).await?).into_response())
}

async fn action(api: &Api, id: &str, a: Action) -> R {
    let now = api.now().await?;
    let inv = lifecycle::act(&api.store, id, a, now).await?;
    Ok(axum::Json(view(api, inv, true).await?).into_response())
}

async fn advance(State(api): State<Api>, Path(id): Path<String>) -> R {
    action(&api, &id, Action::Advance).await
}
async fn approve(State(api): State<Api>, Path(id): Path<String>) -> R {
    action(&api, &id, Action::Approve).await
}
async fn retry(State(api): State<Api>, Path(id): Path<String>) -> R {
    action(&api, &id, Action::Retry).await
}
async fn snapshot(State(api): State<Api>, Path(id): Path<String>) -> R {
    action(&api, &id, Action::SnapshotQuantities).await
}
async fn void(State(api): State<Api>, Path(id): Path<String>) -> R {
    action(&api, &id, Action::Void).await
}

async fn recalculate_tax(Path(id): Path<String>) -> R {
    Err(Problem(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "invoice {id}: tax is calculated by tax apps, and no tax app is installed (as in OpenMeter's open-source build)"
        ),
    ))
}

async fn delete_invoice(State(api): State<Api>, Path(id): Path<String>) -> R {
    let now = api.now().await?;
    lifecycle::act(&api.store, &id, Action::Delete, now).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvoiceNow {
    customer_id: String,
    #[serde(default)]
    as_of: Option<DateTime<Utc>>,
    #[serde(default)]
    filters: Option<NowFilters>,
    #[serde(default)]
    progressive_billing_override: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NowFilters {
    #[serde(default)]
    line_ids: Option<Vec<String>>,
}

async fn invoice_now(State(api): State<Api>, body: Bytes) -> R {
    let req: InvoiceNow = json_body(&body)?;
    let customer = customer_by(&api, &req.customer_id).await?.ok_or_else(|| {
        not_found(format!(
            "customerId: customer {} not found",
            req.customer_id
        ))
    })?;
    let now = api.now().await?;
    let as_of = req.as_of.unwrap_or(now);
    if as_of > now {
        return Err(bad(format!(
            "asOf: {as_of} is in the future (now is {now})"
        )));
    }
    let gathering: Vec<Invoice> = lifecycle::invoices_of(&api.store, &customer.id)
        .await?
        .into_iter()
        .filter(|i| i.gathering_key.is_some())
        .collect();
    let how = Collect {
        as_of,
        line_ids: req.filters.and_then(|f| f.line_ids),
        progressive: Some(req.progressive_billing_override.unwrap_or(true)),
    };
    let mut made = Vec::new();
    for g in gathering {
        let how = Collect {
            progressive: Some(
                req.progressive_billing_override
                    .unwrap_or(g.workflow.workflow.invoicing.progressive_billing),
            ),
            ..how.clone()
        };
        if let Some(draft) = lifecycle::collect(&api.store, &g.id, &how, now).await? {
            lifecycle::settle(&api.store, &draft.id, now).await?;
            made.push(find(&api, &draft.id).await?);
        }
    }
    if made.is_empty() {
        return Err(bad(format!(
            "customer {}: no pending lines can be invoiced as of {as_of}",
            req.customer_id
        )));
    }
    let mut out = Vec::new();
    for inv in made {
        out.push(view(&api, inv, true).await?);
    }
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PendingLine {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
    period: Period,
    invoice_at: DateTime<Utc>,
    #[serde(default)]
    rate_card: Option<LineRateCard>,
    #[serde(default)]
    price: Option<PriceDoc>,
    #[serde(default)]
    feature_key: Option<String>,
    #[serde(default)]
    tax_config: Option<Value>,
    /// Simulation only.
    #[serde(default)]
    quantity: Option<Decimal>,
    /// Simulation only.
    #[serde(default)]
    pre_line_period_quantity: Option<Decimal>,
}

/// Checks a hand-made line and turns it into a line; errors name the line and field.
async fn make_line(
    api: &Api,
    i: usize,
    p: PendingLine,
    currency: &str,
    now: DateTime<Utc>,
    need_feature: bool,
) -> Result<Line, Problem> {
    let at = |f: &str| format!("lines[{i}].{f}");
    if p.name.trim().is_empty() {
        return Err(bad(format!("{}: required", at("name"))));
    }
    if p.period.from >= p.period.to {
        return Err(bad(format!("{}: from must be before to", at("period"))));
    }
    let mut card = p.rate_card.unwrap_or_default();
    if card.price.is_none() {
        card.price = p.price;
    }
    if card.feature_key.is_none() {
        card.feature_key = p.feature_key;
    }
    if card.tax_config.is_none() {
        card.tax_config = p.tax_config;
    }
    let mut line = Line {
        id: p.id.unwrap_or_else(new_id),
        name: p.name,
        description: p.description,
        metadata: p.metadata,
        created_at: now,
        updated_at: now,
        deleted_at: None,
        managed_by: "manual".into(),
        status: "valid".into(),
        kind: "usage_based".into(),
        currency: currency.to_owned(),
        period: p.period,
        invoice_at: p.invoice_at,
        invoice: None,
        feature_key: card.feature_key.clone(),
        price: card.price.clone(),
        rate_card: card,
        quantity: None,
        metered_quantity: None,
        pre_line_period_quantity: None,
        metered_pre_line_period_quantity: None,
        totals: Totals::default(),
        children: Vec::new(),
        discounts: Default::default(),
        subscription: None,
        split_line_group: None,
        child_unique_reference_id: None,
        external_ids: None,
    };
    match crate::invoice::rating::engine_price(&line) {
        Err(e) => return Err(bad(format!("lines[{i}].{e}"))),
        Ok(Some((price, discounts, commitments))) => {
            let mut problems: Vec<String> = price
                .problems()
                .into_iter()
                .map(|p| {
                    format!(
                        "{}: {}",
                        at(&format!("rateCard.price.{}", p.field)),
                        p.message
                    )
                })
                .collect();
            problems.extend(
                discounts
                    .problems(Some(&price))
                    .into_iter()
                    .map(|p| format!("{}: {}", at(&format!("rateCard.{}", p.field)), p.message)),
            );
            problems.extend(commitments.problems().into_iter().map(|p| {
                format!(
                    "{}: {}",
                    at(&format!("rateCard.price.{}", p.field)),
                    p.message
                )
            }));
            if !problems.is_empty() {
                return Err(bad(problems.join("; ")));
            }
            if !price.is_flat() {
                let Some(key) = line.rate_card.feature_key.clone() else {
                    return Err(bad(format!(
                        "{}: a usage-based price needs the feature whose meter measures the usage",
                        at("rateCard.featureKey")
                    )));
                };
                if need_feature
                    && super::features::feature_by(api, &key)
                        .await?
                        .is_none_or(|f| f.archived_at.is_some())
                {
                    return Err(bad(format!(
                        "{}: feature {key} not found",
                        at("rateCard.featureKey")
                    )));
                }
            }
        }
        Ok(None) => {}
    }
    // Catch what the engine would refuse before anything is stored.
    let card = crate::catalog::model::RateCard {
        kind: crate::catalog::model::RateCardType::UsageBased,
        key: String::new(),
        name: String::new(),
        description: None,
        metadata: None,
        feature_key: None,
        entitlement_template: None,
        tax_config: None,
        billing_cadence: None,
        price: line.rate_card.price.clone(),
        discounts: line.rate_card.discounts.clone(),
    };
    pricing_of(&card).map_err(|p| {
        bad(format!(
            "{}: {}",
            at("rateCard.price"),
            p.iter()
                .map(|x| x.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    line.updated_at = now;
    Ok(line)
}

#[derive(Deserialize)]
struct PendingLinesCreate {
    currency: String,
    lines: Vec<PendingLine>,
}

async fn create_pending_lines(State(api): State<Api>, Path(c): Path<String>, body: Bytes) -> R {
    let req: PendingLinesCreate = json_body(&body)?;
    let customer = customer_by(&api, &c)
        .await?
        .ok_or_else(|| not_found(format!("customer {c} not found")))?;
    if req.lines.is_empty() {
        return Err(bad("lines: at least one line is required"));
    }
    crate::pricing::Currency::from_code(&req.currency)
        .map_err(|e| bad(format!("currency: {e}")))?;
    let now = api.now().await?;
    let mut lines = Vec::new();
    for (i, p) in req.lines.into_iter().enumerate() {
        lines.push(make_line(&api, i, p, &req.currency, now, true).await?);
    }
    let (inv, added, is_new) =
        lifecycle::add_pending_lines(&api.store, &customer, &req.currency, lines, now).await?;
    let inv_view = view(&api, inv, true).await?;
    let added: Vec<Value> = added
        .iter()
        .filter_map(|l| {
            inv_view["lines"]
                .as_array()?
                .iter()
                .find(|x| x["id"] == l.id.as_str())
                .cloned()
        })
        .collect();
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"lines": added, "invoice": inv_view, "isInvoiceNew": is_new})),
    )
        .into_response())
}

#[derive(Deserialize)]
struct SimulateRequest {
    currency: String,
    #[serde(default)]
    number: Option<String>,
    lines: Vec<PendingLine>,
}

async fn simulate(State(api): State<Api>, Path(c): Path<String>, body: Bytes) -> R {
    let req: SimulateRequest = json_body(&body)?;
    let customer = customer_by(&api, &c)
        .await?
        .ok_or_else(|| not_found(format!("customer {c} not found")))?;
    crate::pricing::Currency::from_code(&req.currency)
        .map_err(|e| bad(format!("currency: {e}")))?;
    let now = api.now().await?;
    let profile = profile::profile_for(&api.store, &customer.id)
        .await?
        .ok_or_else(|| conflict("there is no default billing profile"))?;
    let mut inv = lifecycle::new_invoice(
        new_id(),
        lifecycle::invoice_customer(&customer),
        &req.currency,
        &profile,
        now,
    );
    inv.number = req.number;
    let mut quantities = Vec::new();
    for (i, p) in req.lines.into_iter().enumerate() {
        let q = (
            p.quantity.unwrap_or_default(),
            p.pre_line_period_quantity.unwrap_or_default(),
        );
        if q.0 < Decimal::ZERO || q.1 < Decimal::ZERO {
            return Err(bad(format!("lines[{i}].quantity: must not be negative")));
        }
        let mut line = make_line(&api, i, p, &req.currency, now, false).await?;
        line.invoice = Some(json!({"id": inv.id}));
        inv.lines.push(line);
        quantities.push(q);
    }
    let inv = lifecycle::simulate(inv, &quantities, now)?;
    Ok(axum::Json(inv).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvoiceUpdate {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    lines: Option<Vec<PendingLine>>,
    #[serde(default)]
    workflow: Option<Value>,
}

async fn update_invoice(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> R {
    let u: InvoiceUpdate = json_body(&body)?;
    let now = api.now().await?;
    loop {
        let (raw, inv) = lifecycle::load(&api.store, &id)
            .await?
            .ok_or_else(|| not_found(format!("invoice {id} not found")))?;
        if !(inv.status == "gathering" || inv.status == "draft") || inv.ext() == "draft.syncing" {
            return Err(conflict(format!(
                "invoice {id} is {}: only gathering and draft invoices can be updated",
                inv.ext()
            )));
        }
        let mut after = inv.clone();
        after.updated_at = now;
        if u.description.is_some() {
            after.description = u.description.clone();
        }
        if u.metadata.is_some() {
            after.metadata = u.metadata.clone();
        }
        if let Some(wf) = u
            .workflow
            .as_ref()
            .and_then(|w| w["workflow"]["invoicing"].as_object())
        {
            let inv_wf = &mut after.workflow.workflow.invoicing;
            if let Some(b) = wf.get("autoAdvance").and_then(Value::as_bool) {
                inv_wf.auto_advance = b;
            }
            for (k, slot) in [
                ("draftPeriod", &mut inv_wf.draft_period),
                ("dueAfter", &mut inv_wf.due_after),
            ] {
                if let Some(s) = wf.get(k).and_then(Value::as_str) {
                    crate::duration::IsoDuration::parse(s)
                        .map_err(|e| bad(format!("workflow.workflow.invoicing.{k}: {e}")))?;
                    *slot = s.to_owned();
                }
            }
        }
        if let Some(lines) = &u.lines {
            let mut kept = Vec::new();
            for (i, p) in lines.iter().enumerate() {
                let p = p.clone();
                let existing =
                    p.id.clone()
                        .and_then(|lid| after.lines.iter().find(|l| l.id == lid).cloned());
                let mut line = make_line(&api, i, p, &after.currency, now, true).await?;
                if let Some(old) = existing {
                    line.created_at = old.created_at;
                    line.split_line_group = old.split_line_group;
                    line.subscription = old.subscription;
                    line.managed_by = if old.managed_by == "subscription" {
                        "manual".into()
                    } else {
                        old.managed_by
                    };
                    line.child_unique_reference_id = old.child_unique_reference_id;
                }
                line.invoice = Some(json!({"id": after.id}));
                kept.push(line);
            }
            for l in after.lines.iter_mut() {
                if !kept.iter().any(|k| k.id == l.id) && l.deleted_at.is_none() {
                    l.deleted_at = Some(now);
                }
            }
            after.lines.retain(|l| l.deleted_at.is_some());
            after.lines.extend(kept);
        }
        if after.status == "draft" && after.quantity_snapshoted_at.is_some() {
            lifecycle::rate_all(&api.store, &mut after, now).await?;
        } else {
            after.recompute();
        }
        if after.status == "gathering" {
            after.next_action_at = after
                .live_lines()
                .map(|l| l.invoice_at)
                .min()
                .map(crate::invoice::model::stamp);
        }
        if lifecycle::commit(&api.store, &[(Some(&raw), Some(&inv), &after)], Vec::new()).await? {
            return Ok(axum::Json(view(&api, after, true).await?).into_response());
        }
    }
}

async fn invoice_page(State(api): State<Api>, Path(id): Path<String>) -> R {
    let inv = find(&api, &id).await?;
    let now = api.now().await?;
    let inv = lifecycle::live_view(&api.store, inv, now).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html::page(&inv),
    )
        .into_response())
}
