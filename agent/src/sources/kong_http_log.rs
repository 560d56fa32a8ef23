//! `[sources.kong_http_log]`: `POST /kong/http-log`, the body Kong's bundled http-log plugin
//! sends — one `kong.log.serialize()` object, or a JSON array of them when its queue batches —
//! made into exactly the events the `tollgate` plugin makes from the same serialize, by the same
//! code (crate `tollgate-events`): same ids, so both paths dedupe at billing.
//!
//! The whole body is read before anything is stored: malformed JSON, or an element that is not a
//! log entry, → 400 naming the element, and nothing of it is stored (http-log retries the batch,
//! then drops it and logs the answer). A request whose subject cannot be resolved is skipped and
//! counted, as the plugin does. 200 once every event is durable; a full buffer → 503 with
//! `Retry-After`, which http-log's queue retries with backoff.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
use tollgate_events::meter::{NoSubject, meter_into};
use tollgate_events::rules::Rules;
use tollgate_events::serialize::LogEntry;

use super::{Intake, authorized, problem, refusal_response, unauthorized};
use crate::buffer::StoredEvent;

/// The source's settings, validated.
#[derive(Clone)]
pub struct KongHttpLog {
    /// What to meter and whom to bill (the plugin's config fields).
    pub rules: Arc<Rules>,
    /// CloudEvents `source`.
    pub source: Arc<str>,
    /// Bearer token required, if any.
    pub token: Option<Arc<str>>,
    /// Largest body taken.
    pub max_body_bytes: usize,
}

#[derive(Clone)]
struct Handler {
    intake: Intake,
    config: KongHttpLog,
}

/// The route, to merge into the agent's HTTP server.
pub fn router(intake: Intake, config: KongHttpLog) -> Router {
    let limit = config.max_body_bytes;
    Router::new()
        .route("/kong/http-log", post(http_log))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Handler { intake, config })
}

/// What a body became.
#[derive(Debug, Default)]
pub struct Metered {
    /// The events, in order.
    pub events: Vec<StoredEvent>,
    /// Log entries in the body.
    pub entries: usize,
    /// Entries skipped because their subject could not be resolved.
    pub no_subject: usize,
}

/// Reads an http-log body and meters every entry; `Err` names what is wrong.
///
/// One pass over the JSON: each entry of a batch is metered as soon as the parser has read it,
/// borrowing its strings from the body, so a batch is scanned once.
pub fn meter_body(
    body: &[u8],
    rules: &Rules,
    source: &str,
    received_ms: i64,
) -> Result<Metered, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    let mut out = Metered::default();
    let mut de = serde_json::Deserializer::from_str(text);
    Body {
        rules,
        source,
        received_ms,
        out: &mut out,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
    .map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            format!("malformed JSON: {e}")
        } else {
            // `entries` counts the entries metered before the one that failed.
            format!(
                "entry {}: not a kong.log.serialize() object: {e}",
                out.entries
            )
        }
    })?;
    Ok(out)
}

/// The body as a [`DeserializeSeed`]: one log entry, or an array of them.
struct Body<'r> {
    rules: &'r Rules,
    source: &'r str,
    received_ms: i64,
    out: &'r mut Metered,
}

impl Body<'_> {
    fn meter(&mut self, entry: &LogEntry<'_>) {
        let received_ms = self.received_ms;
        let events = &mut self.out.events;
        let emitted = meter_into(entry, self.rules, self.source, |f| {
            events.push(StoredEvent {
                id: f.id.to_owned(),
                source: f.source.to_owned(),
                ty: f.r#type.to_owned(),
                subject: f.subject.to_owned(),
                time: f.time.to_owned(),
                // The builder writes `data` from `&str`s and ASCII: always UTF-8.
                data: String::from_utf8(f.data.to_vec())
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                received_ms,
            })
        });
        self.out.entries += 1;
        if emitted == Err(NoSubject) {
            self.out.no_subject += 1;
        }
    }
}

impl<'de> DeserializeSeed<'de> for Body<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Body<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a kong.log.serialize() object or an array of them")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, map: A) -> Result<(), A::Error> {
        let entry = LogEntry::deserialize(MapAccessDeserializer::new(map))?;
        self.meter(&entry);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while let Some(entry) = seq.next_element::<LogEntry<'de>>()? {
            self.meter(&entry);
        }
        Ok(())
    }
}

async fn http_log(State(h): State<Handler>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(h.config.token.as_deref(), &headers) {
        return unauthorized();
    }
    let received_ms = chrono::Utc::now().timestamp_millis();
    let metered = match meter_body(&body, &h.config.rules, &h.config.source, received_ms) {
        Ok(m) => m,
        Err(detail) => {
            h.intake.metrics.rejected.inc();
            tracing::warn!(%detail, "refused an http-log body");
            return problem(
                StatusCode::BAD_REQUEST,
                format!("{detail}; nothing of this request was stored"),
            );
        }
    };
    if metered.no_subject > 0 {
        h.intake
            .metrics
            .no_subject
            .inc_by(metered.no_subject as u64);
    }
    match h.intake.store(&metered.events).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(r) => refusal_response(r),
    }
}
