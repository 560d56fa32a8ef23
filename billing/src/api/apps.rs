//! Apps: `GET /api/v1/apps`, `GET/PUT/DELETE /api/v1/apps/{id}`, the marketplace
//! (`/api/v1/marketplace/listings[/{type}[/install]]`: sandbox and custom invoicing; Stripe needs
//! the network and is not offered), and the custom-invoicing callbacks
//! (`POST /api/v1/apps/custom-invoicing/{invoiceId}/draft/synchronized`,
//! `…/issuing/synchronized`, `…/payment/status`, each 204).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Api, Problem, R, bad, conflict, json_body, not_found, query_pairs};
use crate::app::{self, App};
use crate::invoice::lifecycle::{self, Action};
use crate::invoice::model::Invoice;
use crate::invoice::profile::{self, BillingProfile, ProfileApps, Workflow};

/// App routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/apps", get(list_apps))
        .route(
            "/api/v1/apps/{id}",
            get(get_app).put(update_app).delete(uninstall_app),
        )
        .route("/api/v1/marketplace/listings", get(list_listings))
        .route("/api/v1/marketplace/listings/{kind}", get(get_listing))
        .route("/api/v1/marketplace/listings/{kind}/install", post(install))
        .route(
            "/api/v1/apps/custom-invoicing/{invoice}/draft/synchronized",
            post(draft_synchronized),
        )
        .route(
            "/api/v1/apps/custom-invoicing/{invoice}/issuing/synchronized",
            post(issuing_synchronized),
        )
        .route(
            "/api/v1/apps/custom-invoicing/{invoice}/payment/status",
            post(payment_status),
        )
}

const KINDS: [&str; 2] = ["sandbox", "custom_invoicing"];

async fn live_app(api: &Api, id: &str) -> Result<App, Problem> {
    api.store
        .get_entity::<App>(app::KIND, id)
        .await?
        .filter(|a| a.deleted_at.is_none())
        .ok_or_else(|| not_found(format!("app {id} not found")))
}

async fn list_apps(State(api): State<Api>, RawQuery(raw): RawQuery) -> R {
    let (mut page, mut page_size) = (1usize, 100usize);
    for (k, v) in query_pairs(&raw) {
        match k.as_str() {
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
            _ => {}
        }
    }
    let mut all: Vec<App> = api.store.list_entities(app::KIND).await?;
    all.retain(|a| a.deleted_at.is_none());
    all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    let total = all.len();
    let items: Vec<App> = all
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .collect();
    Ok(axum::Json(
        json!({"totalCount": total, "page": page, "pageSize": page_size, "items": items}),
    )
    .into_response())
}

async fn get_app(State(api): State<Api>, Path(id): Path<String>) -> R {
    Ok(axum::Json(live_app(&api, &id).await?).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppUpdate {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    enable_draft_sync_hook: Option<bool>,
    #[serde(default)]
    enable_issuing_sync_hook: Option<bool>,
}

async fn update_app(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> R {
    let u: AppUpdate = json_body(&body)?;
    let mut a = live_app(&api, &id).await?;
    if u.name.trim().is_empty() {
        return Err(bad("name: required"));
    }
    a.name = u.name;
    a.description = u.description;
    a.metadata = u.metadata;
    if a.kind == "custom_invoicing" {
        a.enable_draft_sync_hook = Some(u.enable_draft_sync_hook.unwrap_or(false));
        a.enable_issuing_sync_hook = Some(u.enable_issuing_sync_hook.unwrap_or(false));
    }
    a.updated_at = api.now().await?;
    api.store.put_entity(app::KIND, &a.id, &a).await?;
    Ok(axum::Json(a).into_response())
}

async fn uninstall_app(State(api): State<Api>, Path(id): Path<String>) -> R {
    let mut a = live_app(&api, &id).await?;
    let profiles: Vec<BillingProfile> = api.store.list_entities(profile::KIND).await?;
    if let Some(p) = profiles.iter().find(|p| {
        p.deleted_at.is_none()
            && [&p.apps.tax, &p.apps.invoicing, &p.apps.payment]
                .iter()
                .any(|x| x["id"] == id.as_str())
    }) {
        return Err(conflict(format!(
            "app {id} is used by billing profile {} ({}): delete or change that profile first",
            p.id, p.name
        )));
    }
    let invoices: Vec<Invoice> = api.store.list_entities(lifecycle::KIND).await?;
    if let Some(i) = invoices.iter().find(|i| {
        i.workflow.apps.invoicing["id"] == id.as_str()
            && !matches!(
                i.status.as_str(),
                "paid" | "voided" | "uncollectible" | "deleted"
            )
    }) {
        return Err(conflict(format!(
            "app {id} is used by invoice {} in status {}",
            i.id,
            i.ext()
        )));
    }
    let now = api.now().await?;
    a.deleted_at = Some(now);
    a.updated_at = now;
    api.store.put_entity(app::KIND, &a.id, &a).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_listings() -> R {
    let items: Vec<Value> = KINDS.iter().filter_map(|k| app::listing(k)).collect();
    Ok(
        axum::Json(json!({"totalCount": items.len(), "page": 1, "pageSize": 100, "items": items}))
            .into_response(),
    )
}

fn listing_of(kind: &str) -> Result<Value, Problem> {
    app::listing(kind).ok_or_else(|| {
        not_found(format!(
            "marketplace listing {kind} not found: this billing offers sandbox and custom_invoicing (stripe needs the network and is not provided)"
        ))
    })
}

async fn get_listing(Path(kind): Path<String>) -> R {
    Ok(axum::Json(listing_of(&kind)?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Install {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    create_billing_profile: Option<bool>,
}

async fn install(State(api): State<Api>, Path(kind): Path<String>, body: Bytes) -> R {
    let listing = listing_of(&kind)?;
    let req: Install = if body.is_empty() {
        Install::default()
    } else {
        json_body(&body)?
    };
    let now = api.now().await?;
    let custom = kind == "custom_invoicing";
    let a = App {
        id: crate::invoice::new_id(),
        kind: kind.clone(),
        name: req
            .name
            .unwrap_or_else(|| listing["name"].as_str().unwrap_or_default().to_owned()),
        description: listing["description"].as_str().map(str::to_owned),
        metadata: None,
        created_at: now,
        updated_at: now,
        deleted_at: None,
        status: "ready".into(),
        listing,
        enable_draft_sync_hook: custom.then_some(true),
        enable_issuing_sync_hook: custom.then_some(true),
    };
    api.store.put_entity(app::KIND, &a.id, &a).await?;
    let mut default_for = Vec::new();
    if req.create_billing_profile.unwrap_or(true) {
        let supplier = profile::default_profile(&api.store)
            .await?
            .map(|p| p.supplier)
            .unwrap_or_default();
        let id_of = json!({"id": a.id});
        let p = BillingProfile {
            id: crate::invoice::new_id(),
            name: a.name.clone(),
            description: Some(format!("Created when {} was installed", a.name)),
            metadata: None,
            created_at: now,
            updated_at: now,
            deleted_at: None,
            supplier,
            workflow: Workflow::default(),
            apps: ProfileApps {
                tax: id_of.clone(),
                invoicing: id_of.clone(),
                payment: id_of,
            },
            default: false,
        };
        api.store.put_entity(profile::KIND, &p.id, &p).await?;
        default_for = vec!["tax", "invoicing", "payment"];
    }
    // OpenMeter answers an install with 200.
    Ok(axum::Json(json!({"app": a, "defaultForCapabilityTypes": default_for})).into_response())
}

/// The invoice must run on a custom invoicing app.
async fn custom_invoice(api: &Api, id: &str) -> Result<(), Problem> {
    let (_, inv) = lifecycle::load(&api.store, id)
        .await?
        .ok_or_else(|| not_found(format!("invoice {id} not found")))?;
    let app_id = inv.workflow.apps.invoicing["id"]
        .as_str()
        .unwrap_or_default();
    match api.store.get_entity::<App>(app::KIND, app_id).await? {
        Some(a) if a.kind == "custom_invoicing" => Ok(()),
        _ => Err(conflict(format!(
            "invoice {id} is not invoiced by a custom invoicing app"
        ))),
    }
}

async fn callback(api: &Api, id: &str, a: Action) -> R {
    custom_invoice(api, id).await?;
    let now = api.now().await?;
    lifecycle::act(&api.store, id, a, now).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
struct DraftSynced {
    #[serde(default)]
    invoicing: Option<DraftSyncedInvoicing>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DraftSyncedInvoicing {
    #[serde(default)]
    invoice_number: Option<String>,
    #[serde(default)]
    external_id: Option<String>,
}

async fn draft_synchronized(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> R {
    let b: DraftSynced = if body.is_empty() {
        DraftSynced::default()
    } else {
        json_body(&body)?
    };
    let i = b.invoicing.unwrap_or_default();
    callback(
        &api,
        &id,
        Action::DraftSynchronized {
            number: i.invoice_number,
            external_id: i.external_id,
        },
    )
    .await
}

#[derive(Deserialize, Default)]
struct IssuingSynced {
    #[serde(default)]
    invoicing: Option<IssuingSyncedInvoicing>,
    #[serde(default)]
    payment: Option<IssuingSyncedPayment>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct IssuingSyncedInvoicing {
    #[serde(default)]
    invoice_number: Option<String>,
    #[serde(default)]
    sent_to_customer_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct IssuingSyncedPayment {
    #[serde(default)]
    external_id: Option<String>,
}

async fn issuing_synchronized(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> R {
    let b: IssuingSynced = if body.is_empty() {
        IssuingSynced::default()
    } else {
        json_body(&body)?
    };
    let i = b.invoicing.unwrap_or_default();
    callback(
        &api,
        &id,
        Action::IssuingSynchronized {
            number: i.invoice_number,
            sent_at: i.sent_to_customer_at,
            payment_external_id: b.payment.and_then(|p| p.external_id),
        },
    )
    .await
}

#[derive(Deserialize)]
struct PaymentStatus {
    trigger: String,
}

async fn payment_status(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> R {
    let b: PaymentStatus = json_body(&body)?;
    callback(&api, &id, Action::PaymentStatus(b.trigger)).await
}
