//! `[sources.http]`: OpenMeter's ingest API on the agent's `http.listen`, so an application, a
//! job or any OpenMeter SDK or collector can hand usage to the sidecar instead of the cloud.
//!
//! * `POST /api/v1/events` → 204, `POST /api/v3/openmeter/events` → 202, answered only once
//!   every event of the request is durable in the buffer.
//! * Bodies: `application/cloudevents+json` (one event), `application/cloudevents-batch+json`
//!   (an array) or `application/json` (either).
//! * Every event is checked before anything is stored: `specversion` "1.0", non-empty string
//!   `id`, `source`, `type`, `subject`, an RFC 3339 `time` if present (absent: the time the agent
//!   received it, as OpenMeter does), `data` a JSON object if present. One bad event → 400
//!   `application/problem+json` naming each bad event's index and field, and nothing of that
//!   request is stored.
//! * A full buffer → 503 with `Retry-After` (see [`super::refusal_response`]).
//!
//! CloudEvents extension attributes are accepted and not forwarded (OpenMeter meters read only
//! the core attributes and `data`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::SecondsFormat;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Intake, authorized, media_type, problem, problem_with, refusal_response, unauthorized,
};
use crate::buffer::StoredEvent;
use crate::config::HttpSource;

#[derive(Clone)]
struct HttpIntake {
    intake: Intake,
    token: Option<Arc<str>>,
}

/// The routes, to merge into the agent's HTTP server.
pub fn router(intake: Intake, config: &HttpSource) -> Router {
    let state = HttpIntake {
        intake,
        token: config.token.as_deref().map(Arc::from),
    };
    Router::new()
        .route("/api/v1/events", post(ingest_v1))
        .route("/api/v3/openmeter/events", post(ingest_v3))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state)
}

async fn ingest_v1(State(s): State<HttpIntake>, headers: HeaderMap, body: Bytes) -> Response {
    ingest(&s, &headers, &body, StatusCode::NO_CONTENT).await
}

async fn ingest_v3(State(s): State<HttpIntake>, headers: HeaderMap, body: Bytes) -> Response {
    ingest(&s, &headers, &body, StatusCode::ACCEPTED).await
}

async fn ingest(s: &HttpIntake, headers: &HeaderMap, body: &[u8], ok: StatusCode) -> Response {
    if !authorized(s.token.as_deref(), headers) {
        return unauthorized();
    }
    let received_ms = chrono::Utc::now().timestamp_millis();
    let events = match parse(&media_type(headers), body, received_ms) {
        Ok(events) => events,
        Err(Invalid::Request(status, detail)) => {
            s.intake.metrics.rejected.inc();
            return problem(status, detail);
        }
        Err(Invalid::Events { count, errors }) => {
            s.intake.metrics.rejected.inc_by(count as u64);
            tracing::debug!(?errors, "refused a request with invalid events");
            let detail = format!(
                "invalid event: {}; nothing of this request was stored",
                errors[0].detail
            );
            let mut extra = serde_json::Map::new();
            extra.insert(
                "errors".into(),
                serde_json::to_value(&errors).unwrap_or_default(),
            );
            return problem_with(StatusCode::BAD_REQUEST, detail, extra);
        }
    };
    match s.intake.store(&events).await {
        Ok(()) => ok.into_response(),
        Err(r) => refusal_response(r),
    }
}

/// One invalid event: its index in the request, the field, and why.
#[derive(Debug, serde::Serialize)]
pub struct EventError {
    /// Index of the event in the request (0 for a single event).
    pub event: usize,
    /// The CloudEvents attribute at fault.
    pub field: &'static str,
    /// A sentence naming both.
    pub detail: String,
}

/// Why a request was refused.
#[derive(Debug)]
pub enum Invalid {
    /// The request as a whole (media type, JSON syntax, shape).
    Request(StatusCode, String),
    /// Some events are invalid (`count` events in the request).
    Events {
        /// Events in the request.
        count: usize,
        /// Every invalid event's first problem.
        errors: Vec<EventError>,
    },
}

/// The attributes read; the rest are accepted and not kept.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow, default)]
    specversion: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "type")]
    ty: Option<&'a RawValue>,
    #[serde(borrow, default)]
    subject: Option<&'a RawValue>,
    #[serde(borrow, default)]
    time: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// Parses and checks a request body; every event or none.
pub fn parse(mime: &str, body: &[u8], received_ms: i64) -> Result<Vec<StoredEvent>, Invalid> {
    let bad = |d: String| Invalid::Request(StatusCode::BAD_REQUEST, d);
    let text = std::str::from_utf8(body).map_err(|e| bad(format!("body is not UTF-8: {e}")))?;
    let first = text.trim_start().as_bytes().first().copied();
    let is_array = first == Some(b'[');
    match mime {
        "application/cloudevents+json" if is_array => {
            return Err(bad(
                "application/cloudevents+json takes one event (a JSON object); send arrays as application/cloudevents-batch+json".into(),
            ));
        }
        "application/cloudevents-batch+json" if !is_array => {
            return Err(bad(
                "application/cloudevents-batch+json takes a JSON array of events".into(),
            ));
        }
        "application/cloudevents+json"
        | "application/cloudevents-batch+json"
        | "application/json" => {}
        other => {
            return Err(Invalid::Request(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "content type {other:?} is not accepted: use application/cloudevents+json, application/cloudevents-batch+json or application/json"
                ),
            ));
        }
    }
    let raws: Vec<&RawValue> = if is_array {
        serde_json::from_str(text).map_err(|e| bad(format!("malformed JSON: {e}")))?
    } else {
        vec![serde_json::from_str(text).map_err(|e| bad(format!("malformed JSON: {e}")))?]
    };
    if raws.is_empty() {
        return Err(bad("no events: the array is empty".into()));
    }
    let now = chrono::DateTime::from_timestamp_millis(received_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut events = Vec::with_capacity(raws.len());
    let mut errors = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        match check(i, raw, &now, received_ms) {
            Ok(e) => events.push(e),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(Invalid::Events {
            count: raws.len(),
            errors,
        })
    }
}

fn check(i: usize, raw: &RawValue, now: &str, received_ms: i64) -> Result<StoredEvent, EventError> {
    let err = |field: &'static str, why: String| EventError {
        event: i,
        field,
        detail: format!("event {i}: {field} {why}"),
    };
    let e: Incoming = serde_json::from_str(raw.get()).map_err(|e| EventError {
        event: i,
        field: "",
        detail: format!("event {i}: not a CloudEvent object: {e}"),
    })?;
    let string = |field: &'static str, v: Option<&RawValue>| -> Result<String, EventError> {
        let v = v.ok_or_else(|| err(field, "is required".into()))?;
        match serde_json::from_str::<String>(v.get()) {
            Ok(s) if !s.is_empty() => Ok(s),
            Ok(_) => Err(err(field, "must not be empty".into())),
            Err(_) => Err(err(field, format!("must be a string, not {}", v.get()))),
        }
    };
    let specversion = string("specversion", e.specversion)?;
    if specversion != "1.0" {
        return Err(err(
            "specversion",
            format!("must be \"1.0\", not {specversion:?}"),
        ));
    }
    let id = string("id", e.id)?;
    let source = string("source", e.source)?;
    let ty = string("type", e.ty)?;
    let subject = string("subject", e.subject)?;
    let time = match e.time.filter(|t| t.get() != "null") {
        None => now.to_owned(),
        Some(t) => {
            let t = string("time", Some(t))?;
            if chrono::DateTime::parse_from_rfc3339(&t).is_err() {
                return Err(err("time", format!("{t:?} is not an RFC 3339 timestamp")));
            }
            t
        }
    };
    let data = match e.data.map(RawValue::get) {
        None | Some("null") => String::new(),
        Some(d) if d.starts_with('{') => d.to_owned(),
        Some(d) => return Err(err("data", format!("must be a JSON object, not {d}"))),
    };
    Ok(StoredEvent {
        id,
        source,
        ty,
        subject,
        time,
        data,
        received_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(mime: &str, body: &str) -> Vec<StoredEvent> {
        parse(mime, body.as_bytes(), 1_764_000_000_000).unwrap()
    }

    fn errors(mime: &str, body: &str) -> Vec<EventError> {
        match parse(mime, body.as_bytes(), 0) {
            Err(Invalid::Events { errors, .. }) => errors,
            other => panic!("{other:?}"),
        }
    }

    const GOOD: &str =
        r#"{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"c","data":{"n":1}}"#;

    #[test]
    fn single_batch_and_plain_json_are_read() {
        let one = ok("application/cloudevents+json", GOOD);
        assert_eq!(one[0].id, "a");
        assert_eq!(one[0].data, r#"{"n":1}"#);
        assert_eq!(
            one[0].time, "2025-11-24T16:00:00.000Z",
            "absent time is the receive time"
        );
        assert_eq!(
            ok(
                "application/cloudevents-batch+json",
                &format!("[{GOOD},{GOOD}]")
            )
            .len(),
            2
        );
        assert_eq!(ok("application/json", GOOD).len(), 1);
        assert_eq!(ok("application/json", &format!(" [{GOOD}]")).len(), 1);
    }

    #[test]
    fn each_invalid_event_is_named_with_its_field() {
        let body = format!(
            r#"[{GOOD},{{"specversion":"1.0","id":"b","source":"s","type":"t"}},{{"specversion":"1.0","id":"c","source":"s","type":"t","subject":"x","time":"yesterday"}},{{"id":"d","source":"s","type":"t","subject":"x"}},{{"specversion":"1.0","id":5,"source":"s","type":"t","subject":"x"}},7]"#
        );
        let e = errors("application/json", &body);
        let got: Vec<(usize, &str)> = e.iter().map(|e| (e.event, e.field)).collect();
        assert_eq!(
            got,
            vec![
                (1, "subject"),
                (2, "time"),
                (3, "specversion"),
                (4, "id"),
                (5, "")
            ]
        );
        assert!(e[0].detail.contains("event 1: subject"), "{}", e[0].detail);
    }

    #[test]
    fn media_type_must_match_the_body() {
        for (mime, body) in [
            ("application/cloudevents+json", format!("[{GOOD}]")),
            ("application/cloudevents-batch+json", GOOD.to_owned()),
            ("application/json", "[]".to_owned()),
            ("application/json", "{nope".to_owned()),
        ] {
            assert!(matches!(
                parse(mime, body.as_bytes(), 0),
                Err(Invalid::Request(StatusCode::BAD_REQUEST, _))
            ));
        }
        assert!(matches!(
            parse("text/plain", GOOD.as_bytes(), 0),
            Err(Invalid::Request(StatusCode::UNSUPPORTED_MEDIA_TYPE, _))
        ));
    }
}
