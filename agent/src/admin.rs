//! The agent's local HTTP server (loopback by default): `/healthz`, `/readyz`, `/metrics`, and
//! the dead-letter admin endpoints (`GET /v1/dead-letters`, `POST /v1/dead-letters/replay`,
//! `DELETE /v1/dead-letters`). The entitlement endpoint will live here too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::buffer::DiskBuffer;
use crate::metrics::Metrics;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The buffer.
    pub buffer: Arc<DiskBuffer>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set once the gRPC server listens.
    pub ready: Arc<AtomicBool>,
}

/// The router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/dead-letters", get(list).delete(drop_all))
        .route("/v1/dead-letters/replay", axum::routing::post(replay))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    s.metrics.queue_depth.set(s.buffer.depth() as i64);
    s.metrics.queue_bytes.set(s.buffer.bytes() as i64);
    s.metrics.queue_max_bytes.set(s.buffer.max_bytes() as i64);
    let age = s
        .buffer
        .oldest_received_ms()
        .map(|ms| (chrono::Utc::now().timestamp_millis() - ms).max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    s.metrics.oldest_event_age_seconds.set(age);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

fn problem(status: StatusCode, detail: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        json!({"type": "about:blank", "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail}).to_string(),
    )
        .into_response()
}

async fn list(State(s): State<AdminState>) -> Response {
    match s.buffer.dead_letters() {
        Ok(letters) => axum::Json(letters).into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn replay(State(s): State<AdminState>) -> Response {
    match s.buffer.replay_dead_letters().await {
        Ok(n) => axum::Json(json!({"replayed": n})).into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn drop_all(State(s): State<AdminState>) -> Response {
    match s.buffer.drop_dead_letters().await {
        Ok(n) => axum::Json(json!({"dropped": n})).into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
