//! The web console: server-rendered HTML pages on the API's listener (at `/`), for an operator
//! who would rather look at usage than read it. Pages read what the API handlers read (the same
//! store calls, the same rollups, the same balance engine) and actions go through the same
//! functions the API's handlers call, so a page and the API never disagree and an action's
//! errors are the API's. HTML comes from `maud` (compile-time templates, every interpolation
//! escaped); charts are SVG drawn here; CSS and a little JavaScript are compiled into the binary
//! and served under `/console/assets/` (no CDN); a Content-Security-Policy forbids anything else.
//!
//! * [`auth`]: the login form and cookie when `api_tokens` are configured; nothing else is
//!   reachable without one.
//! * [`layout`]: the page shell (navigation, billing's clock in the header), errors, formatting.
//! * [`chart`]: SVG line and bar charts.
//! * [`assets`]: the stylesheet, script and icon.
//! * [`summary`]: the overview's expensive figures (top consumers, entitlements near their
//!   limit), computed off the request path and kept for a short while.
//! * [`overview`], [`meters`], [`customers`] (with [`subscriptions`]), [`catalog`], [`invoices`],
//!   [`notifications`]: the page groups.

pub mod assets;
pub mod auth;
pub mod catalog;
pub mod chart;
pub mod customers;
pub mod invoices;
pub mod layout;
pub mod meters;
pub mod notifications;
pub mod overview;
pub mod subscriptions;
pub mod summary;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::middleware;
use axum::routing::{get, post};

use crate::api::Api;

/// Largest form body the console accepts.
const MAX_FORM_BYTES: usize = 64 << 10;

/// The console's state: the API's, plus the overview's cache.
#[derive(Clone)]
pub struct Console {
    /// The API's state (store, tokens, clock).
    pub api: Api,
    /// The overview's figures.
    pub summary: Arc<summary::Cache>,
}

/// The console's routes (pages behind [`auth::require`], the login form and assets open).
pub fn router(api: Api) -> Router {
    let console = Console {
        api,
        summary: Arc::new(summary::Cache::default()),
    };
    let pages = Router::new()
        .route("/", get(overview::page_route))
        .route("/meters", get(meters::list))
        .route("/meters/{slug}", get(meters::page_route))
        .route("/meters/{slug}/query.csv", get(meters::csv))
        .route("/customers", get(customers::list).post(customers::create))
        .route("/customers/{id}", get(customers::page_route))
        .route(
            "/customers/{id}/entitlements/{e}/grants",
            post(customers::add_grant),
        )
        .route(
            "/customers/{id}/subscriptions",
            post(subscriptions::subscribe),
        )
        .route("/features", get(catalog::features))
        .route("/plans", get(catalog::plans))
        .route("/plans/{id}", get(catalog::plan))
        .route("/addons", get(catalog::addons))
        .route("/addons/{id}", get(catalog::addon))
        .route("/invoices", get(invoices::list))
        .route("/invoices/{id}", get(invoices::page_route))
        .route("/invoices/{id}/approve", post(invoices::approve))
        .route("/invoices/{id}/print", get(invoices::print))
        .route("/notifications", get(notifications::page_route))
        .route(
            "/notifications/events/{id}/resend",
            post(notifications::resend),
        )
        .route("/logout", post(auth::logout))
        .layer(middleware::from_fn_with_state(
            console.clone(),
            auth::require,
        ));
    Router::new()
        .merge(pages)
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/console/assets/{name}", get(assets::serve))
        .route("/favicon.ico", get(assets::favicon))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::map_response(secure_headers))
        .with_state(console)
}

/// Every console answer: a policy that allows only the console's own script and stylesheet (so
/// markup that slipped through escaping could still not run), no framing, no sniffing.
async fn secure_headers(mut res: axum::response::Response) -> axum::response::Response {
    let h = res.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}
