//! The console's authentication: when billing has `api_tokens`, a page needs one of them, given
//! once in the login form and kept in an `HttpOnly`, `SameSite=Strict` cookie (the same tokens
//! as the API's Bearer auth; script on a page cannot read it, other sites cannot send it). A
//! request without it is answered 401 with the login form and nothing else. Forms that change
//! something must also come from the console's own origin (checked on `Origin` when the browser
//! sends it). Without `api_tokens` the console is open, as the API is.

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::Console;
use super::layout::document;

/// The cookie's name.
pub const COOKIE: &str = "tollgate_console";

/// The token in the request's cookie, if any.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| {
            form_urlencoded::parse(format!("t={v}").as_bytes())
                .next()
                .map(|(_, t)| t.into_owned())
                .unwrap_or_default()
        })
}

fn known(console: &Console, token: &str) -> bool {
    console.api.tokens.iter().any(|k| k == token)
}

/// Whether a form post comes from the console itself: its `Origin` (when sent) names this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // not sent (older browsers, curl): the SameSite cookie still guards
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest == host)
}

/// Lets a request through when tokens are off or its cookie holds one; otherwise 401 with the
/// login form (which brings the visitor back to where they were going).
pub async fn require(State(console): State<Console>, req: Request, next: Next) -> Response {
    if req.method() == Method::POST && !same_origin(req.headers()) {
        return (StatusCode::FORBIDDEN, "cross-origin form post refused").into_response();
    }
    if console.api.tokens.is_empty()
        || cookie_token(req.headers()).is_some_and(|t| known(&console, &t))
    {
        return next.run(req).await;
    }
    let next_path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    login_page(StatusCode::UNAUTHORIZED, &next_path, None)
}

/// A path to come back to: only this site's own paths.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let body = html! {
        header.top { a.brand href="/" { "Tollgate billing" } }
        main.login {
            h1 { "Sign in" }
            p { "This billing service requires an API token (one of " code { "api_tokens" } ")." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(safe_next(Some(next)));
                label { "API token " input type="password" name="token" autocomplete="current-password" required autofocus; }
                button type="submit" { "Sign in" }
            }
        }
    };
    (status, Html(document("Sign in", body).into_string())).into_response()
}

/// `?next=`.
#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// `GET /login`.
pub async fn login_form(State(console): State<Console>, Query(q): Query<NextQuery>) -> Response {
    if console.api.tokens.is_empty() {
        return Redirect::to("/").into_response();
    }
    login_page(StatusCode::OK, &safe_next(q.next.as_deref()), None)
}

/// `POST /login` (`token`, `next`): a known token sets the cookie and goes on to `next`.
pub async fn login(State(console): State<Console>, headers: HeaderMap, body: Bytes) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-origin form post refused").into_response();
    }
    let mut token = None;
    let mut next = None;
    for (k, v) in form_urlencoded::parse(&body) {
        match k.as_ref() {
            "token" => token = Some(v.trim().to_owned()),
            "next" => next = Some(v.into_owned()),
            _ => {}
        }
    }
    let next = safe_next(next.as_deref());
    match token {
        Some(t) if known(&console, &t) => {
            let encoded: String = form_urlencoded::byte_serialize(t.as_bytes()).collect();
            let cookie = format!("{COOKIE}={encoded}; Path=/; HttpOnly; SameSite=Strict");
            let mut res = Redirect::to(&next).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Some(t) if !t.is_empty() => login_page(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That token is not one of this service's api_tokens."),
        ),
        _ => login_page(StatusCode::BAD_REQUEST, &next, Some("token: required")),
    }
}

/// `POST /logout`: forgets the cookie.
pub async fn logout() -> Response {
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("tollgate_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_next_stays_on_site() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tollgate_console=om%2Bx; b=2"),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("om+x"));
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/meters?x=1")), "/meters?x=1");
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8888"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8888"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
    }
}
