//! Ingest: `POST /api/v1/events` (204) and `POST /api/v3/openmeter/events` (202). Content types,
//! CloudEvents validation (a bad event refuses the whole request, nothing stored) and the store
//! write, acknowledged only once durable.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Api, Problem, R, bad};

/// Ingest routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/events", post(ingest_v1))
        .route("/api/v3/openmeter/events", post(ingest_v3))
        .route("/v3/openmeter/events", post(ingest_v3))
}

fn parse_events(headers: &HeaderMap, body: &Bytes) -> Result<Vec<Value>, Problem> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let parsed: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let events = match (mime.as_str(), parsed) {
        ("application/cloudevents+json", v @ Value::Object(_)) => vec![v],
        ("application/cloudevents-batch+json", Value::Array(a)) => a,
        ("application/json", v @ Value::Object(_)) => vec![v],
        ("application/json", Value::Array(a)) => a,
        (
            "application/cloudevents+json"
            | "application/cloudevents-batch+json"
            | "application/json",
            _,
        ) => {
            return Err(bad(format!("body does not match content type {mime}")));
        }
        _ => {
            return Err(bad(format!(
                "invalid content type: {ct:?} (use application/cloudevents+json, application/cloudevents-batch+json or application/json)"
            )));
        }
    };
    if events.is_empty() {
        return Err(bad("no events found"));
    }
    Ok(events)
}

/// Checks required fields and normalises `time`; returns (event, time).
fn validate_event(
    i: usize,
    mut e: Value,
    now: DateTime<Utc>,
) -> Result<(Value, DateTime<Utc>), Problem> {
    let Value::Object(obj) = &mut e else {
        return Err(bad(format!("event {i}: not a JSON object")));
    };
    for field in ["id", "source", "type", "subject"] {
        match obj.get(field) {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => {
                return Err(bad(format!(
                    "event {i}: {field} is required and must be a non-empty string"
                )));
            }
        }
    }
    match obj.get("specversion") {
        None => {
            obj.insert("specversion".into(), json!("1.0"));
        }
        Some(Value::String(v)) if v == "1.0" => {}
        Some(other) => {
            return Err(bad(format!(
                "event {i}: specversion must be \"1.0\", not {other}"
            )));
        }
    }
    let time = match obj.get("time") {
        None | Some(Value::Null) => now,
        Some(Value::String(t)) => DateTime::parse_from_rfc3339(t)
            .map_err(|_| bad(format!("event {i}: time {t:?} is not RFC 3339")))?
            .with_timezone(&Utc),
        Some(other) => {
            return Err(bad(format!(
                "event {i}: time must be a string, not {other}"
            )));
        }
    };
    obj.insert(
        "time".into(),
        json!(time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
    );
    match obj.get("data") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err(bad(format!("event {i}: data must be a JSON object"))),
    }
    Ok((e, time))
}

async fn ingest(api: &Api, headers: &HeaderMap, body: &Bytes) -> Result<(), Problem> {
    let events = parse_events(headers, body)?;
    let now = api.now().await?;
    // Validate everything first: a bad request stores nothing.
    let checked: Vec<(Value, DateTime<Utc>)> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| validate_event(i, e, now))
        .collect::<Result<_, _>>()?;
    let subjects: std::collections::HashSet<String> = checked
        .iter()
        .filter_map(|(e, _)| e["subject"].as_str().map(str::to_owned))
        .collect();
    let batch = checked
        .into_iter()
        .map(|(e, t)| (e, t.timestamp_millis()))
        .collect();
    // Returns once the batch is durable: acknowledge only what is on disk.
    let new = api.store.ingest(batch, now.timestamp_millis()).await?;
    tracing::debug!(new, "ingested");
    if new > 0 {
        // Committed: balance thresholds are evaluated on their own task (never awaited here).
        api.notifications.usage_changed(subjects);
    }
    Ok(())
}

async fn ingest_v1(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> R {
    ingest(&api, &headers, &body).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn ingest_v3(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> R {
    ingest(&api, &headers, &body).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}
