//! The OpenMeter-compatible HTTP API (JSON field names as in OpenMeter's spec; errors as RFC 7807
//! `application/problem+json`). This module owns the shared state ([`Api`]), the router assembly,
//! Bearer-token auth, the [`Problem`] error type and the request helpers every resource uses
//! (JSON bodies, query strings, times). Each resource lives in its own module and registers its
//! own routes:
//!
//! * [`ingest`]: `POST` events (v1 and v3).
//! * [`events`]: listing ingested events.
//! * [`meters`]: meter CRUD (update included) and subjects.
//! * [`meter_query`]: meter queries (GET and POST).
//! * [`customers`]: customers and their lookup by id or key.
//! * [`features`]: features and their lookup by id or key.
//! * [`entitlements`]: entitlements (v1 subject, v1 customer, v2 customer), values and access.
//! * [`grants`]: grants on an entitlement.
//! * [`resets`]: usage resets.
//! * [`history`]: windowed balance history.
//! * [`subjects`]: subjects (display name and metadata for a subject key).
//! * [`clock`]: billing's clock, and moving the simulated one forward.
//! * [`plans`]: versioned plans (phases, rate cards): create, update a draft, publish, archive.
//! * [`addons`]: versioned add-ons.
//! * [`plan_addons`]: the add-ons a plan offers.
//! * [`subscriptions`]: subscriptions and their actions (change, migrate, cancel, …).
//! * [`customer_subscriptions`]: a customer's subscriptions.
//! * [`subscription_addons`]: add-ons bought on a subscription.
//! * [`notification_channels`], [`notification_rules`], [`notification_events`]: webhook
//!   notifications (channels, rules, events with their delivery status).
//! * [`billing_profiles`]: billing profiles (supplier, workflow, apps).
//! * [`billing_customers`]: customer overrides (which profile a customer's invoices use).
//! * [`invoices`]: invoices, their actions, pending lines, simulation and the printable page.
//! * [`apps`]: installed apps, the marketplace and the custom-invoicing callbacks.
//!
//! `catalog_http` holds what the catalog's resources share (errors with `validationErrors`,
//! list queries); `subscription_http` what the subscription resources share.

pub mod addons;
pub mod apps;
pub mod billing_customers;
pub mod billing_profiles;
pub(crate) mod catalog_http;
pub mod clock;
pub mod customer_subscriptions;
pub mod customers;
pub mod entitlements;
pub mod events;
pub mod features;
pub mod grants;
pub mod history;
pub mod ingest;
pub mod invoices;
pub mod meter_query;
pub mod meters;
pub mod notification_channels;
pub mod notification_events;
pub mod notification_rules;
pub mod plan_addons;
pub mod plans;
pub mod resets;
pub mod subjects;
pub mod subscription_addons;
pub(crate) mod subscription_http;
pub mod subscriptions;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::clock::Clock;
use crate::store::Store;

pub use meters::ensure_meter;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// Shared state.
#[derive(Clone)]
pub struct Api {
    /// The store.
    pub store: Arc<Store>,
    /// Accepted Bearer tokens; empty means no auth.
    pub tokens: Arc<Vec<String>>,
    /// Billing's "now": every handler takes its time from here, never from `Utc::now()`.
    pub clock: Arc<Clock>,
    /// Notifications: what ingest and the clock tell about changes (thresholds are evaluated on
    /// its own task) and the delivery worker's wake-up.
    pub notifications: Arc<crate::notification::threshold::Evaluator>,
}

impl Api {
    /// Billing's now (the simulated clock's when it runs on one).
    pub(crate) async fn now(&self) -> Result<DateTime<Utc>, Problem> {
        Ok(self.clock.now().await?)
    }
}

/// A problem+json error.
pub struct Problem(pub StatusCode, pub String);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({"type": "about:blank", "title": self.0.canonical_reason(), "status": self.0.as_u16(), "detail": self.1});
        let mut response = (
            self.0,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            // The database is away: clients (the agent) retry after this many seconds.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
        }
        response
    }
}

/// 400 with `detail`.
pub(crate) fn bad(detail: impl Into<String>) -> Problem {
    Problem(StatusCode::BAD_REQUEST, detail.into())
}

/// 404 with `detail`.
pub(crate) fn not_found(detail: impl Into<String>) -> Problem {
    Problem(StatusCode::NOT_FOUND, detail.into())
}

/// 409 with `detail`.
pub(crate) fn conflict(detail: impl Into<String>) -> Problem {
    Problem(StatusCode::CONFLICT, detail.into())
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "database unavailable: answering 503");
                Problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            StoreError::Conflict(_) => Problem(StatusCode::CONFLICT, e.to_string()),
            other => {
                tracing::error!(error = %other, "store failure");
                Problem(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}

/// A handler's result.
pub(crate) type R = Result<Response, Problem>;

/// A new time-ordered id.
pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// The router: every resource's routes, the body limit and auth.
pub fn router(api: Api) -> Router {
    Router::new()
        .merge(ingest::routes())
        .merge(events::routes())
        .merge(meters::routes())
        .merge(meter_query::routes())
        .merge(customers::routes())
        .merge(features::routes())
        .merge(entitlements::routes())
        .merge(grants::routes())
        .merge(resets::routes())
        .merge(history::routes())
        .merge(subjects::routes())
        .merge(clock::routes())
        .merge(plans::routes())
        .merge(addons::routes())
        .merge(plan_addons::routes())
        .merge(subscriptions::routes())
        .merge(customer_subscriptions::routes())
        .merge(subscription_addons::routes())
        .merge(notification_channels::routes())
        .merge(notification_rules::routes())
        .merge(notification_events::routes())
        .merge(billing_profiles::routes())
        .merge(billing_customers::routes())
        .merge(invoices::routes())
        .merge(apps::routes())
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(api.clone(), auth))
        .with_state(api.clone())
        // The web console: its own auth (a login cookie), so outside the Bearer layer.
        .merge(crate::console::router(api))
}

async fn auth(State(api): State<Api>, req: Request, next: Next) -> Response {
    if api.tokens.is_empty() || req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|t| api.tokens.iter().any(|k| k == t)) {
        next.run(req).await
    } else {
        Problem(
            StatusCode::UNAUTHORIZED,
            "missing or unknown Bearer token".into(),
        )
        .into_response()
    }
}

/// The body parsed as `T`; a 400 naming what is wrong otherwise.
pub(crate) fn json_body<T: for<'de> serde::Deserialize<'de>>(body: &Bytes) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    // The failing field named (`path: message`).
    serde_path_to_error::deserialize(de).map_err(|e| bad(format!("invalid request body: {e}")))
}
/// The query string's pairs, decoded.
pub(crate) fn query_pairs(raw: &Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// An RFC 3339 time; a 400 naming parameter `name` otherwise.
pub(crate) fn parse_time(name: &str, v: &str) -> Result<DateTime<Utc>, Problem> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| bad(format!("{name}: {v:?} is not RFC 3339")))
}
