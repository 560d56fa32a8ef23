//! The local entitlement endpoint (on the agent's loopback HTTP server): answers from the cache,
//! reading through to the central service on a miss, so an application can ask the sidecar "may
//! customer X use feature Y, and how much is left?" with no network hop.
//!
//! * `GET /v1/entitlements?feature={key}`: every cached value of the feature (an array, empty when
//!   none): the snapshot the proxy-wasm filter refreshes on each tick.
//! * `GET /v1/entitlements/{subject}`: every tracked feature of the subject.
//! * `GET /v1/entitlements/{subject}/{feature}`: one value.
//! * `GET /api/v1/subjects/{subject}/entitlements/{feature}/value`: the same in OpenMeter's
//!   `EntitlementValue` shape, so OpenMeter's SDKs can point at the sidecar.
//!
//! * `GET /api/v2/customers/{customer}/entitlements/{feature}/value`: OpenMeter's v2 customer value,
//!   read through to the central service and adjusted by the local usage of the customer's
//!   subjects (from its `usageAttribution.subjectKeys`).
//!
//! Unknown subject or feature → 404 problem+json.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::sync::Syncer;
use super::{Cache, LocalValue};

/// What the handlers share.
#[derive(Clone)]
pub struct EntitlementApi {
    /// The cache.
    pub cache: Arc<Cache>,
    /// For read-through on a miss.
    pub syncer: Syncer,
}

/// The routes.
pub fn router(api: EntitlementApi) -> Router {
    Router::new()
        .route("/v1/entitlements", get(all_for_feature))
        .route("/v1/entitlements/{subject}", get(all_for_subject))
        .route("/v1/entitlements/{subject}/{feature}", get(one))
        .route(
            "/api/v1/subjects/{subject}/entitlements/{feature}/value",
            get(openmeter_value),
        )
        .route(
            "/api/v2/customers/{customer}/entitlements/{feature}/value",
            get(customer_value),
        )
        .with_state(api)
}

fn not_found(detail: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/problem+json")],
        json!({"type": "about:blank", "title": "Not Found", "status": 404, "detail": detail})
            .to_string(),
    )
        .into_response()
}

/// The cached value, or a read-through: learn the feature and the subject, fetch now.
pub async fn lookup(
    cache: &Cache,
    syncer: &Syncer,
    subject: &str,
    feature: &str,
) -> Option<LocalValue> {
    let cached = cache.get(subject, feature);
    if let Some(v) = &cached {
        // A value from a usage period that has ended is read again: usage has reset centrally.
        let period_over =
            v.reset_at_ms > 0 && chrono::Utc::now().timestamp_millis() >= v.reset_at_ms;
        if !period_over {
            return cached;
        }
    }
    if cache.track_features(&[feature.to_owned()]) {
        syncer.load_meters().await;
    }
    cache.observe(subject);
    let token = cache.fetch_started(subject, feature);
    let Ok(synced) = syncer.fetch(subject, feature).await else {
        // Central service unreachable: the last value, if any, with its age.
        return cached;
    };
    cache.store(subject, feature, synced, token);
    cache.get(subject, feature)
}

async fn one(
    State(api): State<EntitlementApi>,
    Path((subject, feature)): Path<(String, String)>,
) -> Response {
    match lookup(&api.cache, &api.syncer, &subject, &feature).await {
        Some(v) if v.kind != "none" => axum::Json(v).into_response(),
        _ => not_found(format!(
            "no entitlement for feature {feature} of subject {subject}"
        )),
    }
}

/// `?feature=` of the snapshot route.
#[derive(serde::Deserialize)]
struct FeatureQuery {
    feature: Option<String>,
}

async fn all_for_feature(
    State(api): State<EntitlementApi>,
    axum::extract::Query(q): axum::extract::Query<FeatureQuery>,
) -> Response {
    let Some(feature) = q.feature.filter(|f| !f.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/problem+json")],
            json!({"type": "about:blank", "title": "Bad Request", "status": 400,
                "detail": "query parameter feature is required (GET /v1/entitlements?feature=<key>)"})
            .to_string(),
        )
            .into_response();
    };
    if api.cache.track_features(std::slice::from_ref(&feature)) {
        api.syncer.load_meters().await;
    }
    let values: Vec<LocalValue> = api
        .cache
        .all()
        .into_iter()
        .filter(|v| v.feature == feature && v.kind != "none")
        .collect();
    axum::Json(values).into_response()
}

async fn all_for_subject(
    State(api): State<EntitlementApi>,
    Path(subject): Path<String>,
) -> Response {
    let values: Vec<LocalValue> = api
        .cache
        .for_subject(&subject)
        .into_iter()
        .filter(|v| v.kind != "none")
        .collect();
    if values.is_empty() {
        return not_found(format!("no entitlements known for subject {subject}"));
    }
    axum::Json(values).into_response()
}

async fn openmeter_value(
    State(api): State<EntitlementApi>,
    Path((subject, feature)): Path<(String, String)>,
) -> Response {
    match lookup(&api.cache, &api.syncer, &subject, &feature).await {
        Some(v) if v.kind == "metered" => axum::Json(json!({
            "hasAccess": v.has_access, "balance": v.balance, "usage": v.usage, "overage": v.overage,
        }))
        .into_response(),
        Some(v) if v.kind != "none" => {
            axum::Json(json!({"hasAccess": v.has_access})).into_response()
        }
        _ => not_found(format!(
            "no entitlement for feature {feature} of subject {subject}"
        )),
    }
}

async fn customer_value(
    State(api): State<EntitlementApi>,
    Path((customer, feature)): Path<(String, String)>,
) -> Response {
    let value_path = [
        "api",
        "v2",
        "customers",
        customer.as_str(),
        "entitlements",
        feature.as_str(),
        "value",
    ];
    let customer_path = ["api", "v1", "customers", customer.as_str()];
    let (value, customer_doc) = tokio::join!(
        api.syncer.json(&value_path),
        api.syncer.json(&customer_path)
    );
    let Ok(mut value) = value else {
        return not_found(format!(
            "no entitlement for feature {feature} of customer {customer}"
        ));
    };
    let subjects: Vec<String> = customer_doc
        .ok()
        .and_then(|c| {
            let mut s: Vec<String> = c["usageAttribution"]["subjectKeys"]
                .as_array()?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            s.extend(c["key"].as_str().map(str::to_owned));
            Some(s)
        })
        .unwrap_or_default();
    let local: f64 = subjects
        .iter()
        .map(|s| api.cache.buffered_usage(s, &feature))
        .sum();
    if local > 0.0
        && let (Some(balance), Some(usage)) = (value["balance"].as_f64(), value["usage"].as_f64())
    {
        let left = (balance - local).max(0.0);
        value["balance"] = json!(left);
        value["usage"] = json!(usage + local);
        value["overage"] =
            json!(value["overage"].as_f64().unwrap_or(0.0) + (local - balance).max(0.0));
        if left <= 0.0 {
            value["hasAccess"] = json!(false);
        }
    }
    axum::Json(value).into_response()
}
