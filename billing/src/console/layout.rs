//! The page shell every console page shares — navigation, billing's clock (simulated or real) in
//! the header, a notice or error banner — the console's error type (an HTML page with the API's
//! status and detail), and how numbers, money and times are written.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use rust_decimal::Decimal;

use crate::api::{Api, Problem};
use crate::clock::View;

/// A console handler's error: shown as a page with the status and the API's detail.
pub struct PageError(pub StatusCode, pub String);

/// A console handler's result.
pub type Page = Result<Response, PageError>;

impl From<Problem> for PageError {
    fn from(p: Problem) -> Self {
        PageError(p.0, p.1)
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        Problem::from(e).into()
    }
}

impl From<crate::api::catalog_http::Failure> for PageError {
    fn from(f: crate::api::catalog_http::Failure) -> Self {
        use crate::api::catalog_http::Failure;
        use crate::catalog::CatalogError;
        match f {
            Failure::Problem(p) => p.into(),
            Failure::Catalog(CatalogError::NotFound(m)) => PageError(StatusCode::NOT_FOUND, m),
            Failure::Catalog(CatalogError::Conflict(m)) => PageError(StatusCode::CONFLICT, m),
            Failure::Catalog(CatalogError::Store(e)) => e.into(),
            Failure::Catalog(other) => PageError(StatusCode::BAD_REQUEST, other.to_string()),
        }
    }
}

impl From<crate::api::subscription_http::Failure> for PageError {
    fn from(f: crate::api::subscription_http::Failure) -> Self {
        use crate::api::subscription_http::Failure;
        match f {
            Failure::Problem(p) => p.into(),
            Failure::Refusal(r) => PageError(
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
                r.detail(),
            ),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = self.0.canonical_reason().unwrap_or("Error");
        let body = html! {
            header.top { a.brand href="/" { "Tollgate billing" } }
            main {
                h1 { (self.0.as_u16()) " " (title) }
                p.error role="alert" { (self.1) }
                p { a href="/" { "Back to the overview" } }
            }
        };
        (self.0, Html(document(title, body).into_string())).into_response()
    }
}

/// Which navigation entry a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// `/`.
    Overview,
    /// `/meters`.
    Meters,
    /// `/customers`.
    Customers,
    /// `/features`.
    Features,
    /// `/plans`.
    Plans,
    /// `/addons`.
    Addons,
    /// `/invoices`.
    Invoices,
    /// `/notifications`.
    Notifications,
}

const NAV: &[(Nav, &str, &str)] = &[
    (Nav::Overview, "/", "Overview"),
    (Nav::Meters, "/meters", "Meters"),
    (Nav::Customers, "/customers", "Customers"),
    (Nav::Features, "/features", "Features"),
    (Nav::Plans, "/plans", "Plans"),
    (Nav::Addons, "/addons", "Add-ons"),
    (Nav::Invoices, "/invoices", "Invoices"),
    (Nav::Notifications, "/notifications", "Notifications"),
];

/// A banner above the page's content.
pub enum Banner {
    /// Nothing.
    None,
    /// Something done.
    Notice(String),
    /// Something refused (the API's status and detail).
    Error(StatusCode, String),
}

/// A whole page: shell, header with the clock, the content.
pub async fn page(
    api: &Api,
    nav: Nav,
    title: &str,
    banner: Banner,
    content: Markup,
) -> Result<Response, PageError> {
    let clock = api.clock.view().await?;
    let status = match &banner {
        Banner::Error(s, _) => *s,
        _ => StatusCode::OK,
    };
    let body = html! {
        header.top {
            a.brand href="/" { "Tollgate billing" }
            nav {
                @for (n, href, label) in NAV {
                    a href=(href) class=[(*n == nav).then_some("active")] { (label) }
                }
            }
            (clock_badge(&clock))
            @if !api.tokens.is_empty() {
                form.logout method="post" action="/logout" { button type="submit" { "Log out" } }
            }
        }
        main {
            h1 { (title) }
            @match &banner {
                Banner::None => {}
                Banner::Notice(m) => p.notice role="status" { (m) },
                Banner::Error(s, m) => p.error role="alert" { strong { (s.as_u16()) " " } (m) },
            }
            (content)
        }
    };
    Ok((status, Html(document(title, body).into_string())).into_response())
}

fn clock_badge(clock: &View) -> Markup {
    html! {
        div.clock title="GET /api/tollgate/v1/clock" {
            span.label { @if clock.simulated { "simulated clock" } @else { "clock" } }
            time id="clock-now" datetime=(clock.now.to_rfc3339()) { (datetime(clock.now)) }
            @if let Some(to) = clock.advancing_to {
                span.warn { " advancing to " (datetime(to)) }
            }
        }
    }
}

/// The HTML document around `body`.
pub fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Tollgate billing" }
                link rel="icon" href=(super::assets::ICON_PATH) type="image/svg+xml";
                link rel="stylesheet" href=(super::assets::CSS_PATH);
                script src=(super::assets::JS_PATH) defer {}
            }
            body { (body) }
        }
    }
}

/// A time as the console writes it: `2026-11-26 04:05 UTC`.
pub fn datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// A quantity: whole numbers with thousands separators, fractions up to 4 places.
pub fn quantity(v: Decimal) -> String {
    let v = v.round_dp(4).normalize();
    let text = v.abs().to_string();
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if v.is_sign_negative() && !v.is_zero() {
        "-"
    } else {
        ""
    };
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

/// A float from a meter query as a [`quantity`].
pub fn quantity_f64(v: f64) -> String {
    Decimal::try_from(v)
        .map(quantity)
        .unwrap_or_else(|_| v.to_string())
}

/// Money: the amount with its currency.
pub fn money(amount: Decimal, currency: &str) -> String {
    format!("{} {currency}", amount.normalize())
}

/// An empty-state line.
pub fn empty(text: &str) -> Markup {
    html! { p.empty { (text) } }
}

/// Non-breaking dash for a missing value.
pub fn dash() -> Markup {
    PreEscaped("&mdash;".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_grouped_and_trimmed() {
        assert_eq!(quantity(Decimal::from(1_234_567)), "1,234,567");
        assert_eq!(quantity(Decimal::new(-12345, 1)), "-1,234.5");
        assert_eq!(quantity(Decimal::new(100, 2)), "1");
        assert_eq!(quantity(Decimal::ZERO), "0");
        assert_eq!(quantity(Decimal::from(999)), "999");
    }
}
