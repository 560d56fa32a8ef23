//! Listing ingested events: `GET /api/v1/events` (`IngestedEvent[]`, newest first, filtered).

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Api, R, bad, parse_time, query_pairs};

/// Event listing routes (`POST` on the same path is ingest's).
pub fn routes() -> Router<Api> {
    Router::new().route("/api/v1/events", get(list_events))
}

async fn list_events(State(api): State<Api>, RawQuery(raw): RawQuery) -> R {
    let q = query_pairs(&raw);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let from = get("from")
        .map(|v| parse_time("from", &v))
        .transpose()?
        .unwrap_or_else(|| Utc::now() - chrono::Duration::hours(72));
    let to = get("to").map(|v| parse_time("to", &v)).transpose()?;
    let limit: usize = get("limit")
        .map(|v| v.parse().map_err(|_| bad("limit: must be 1..100")))
        .transpose()?
        .unwrap_or(100);
    if !(1..=100).contains(&limit) {
        return Err(bad("limit: must be 1..100"));
    }
    let id = get("id");
    let subject = get("subject");
    let events = api
        .store
        .list_events(
            move |e| {
                e.time_ms >= from.timestamp_millis()
                    && to.is_none_or(|t| e.time_ms < t.timestamp_millis())
                    && id.as_ref().is_none_or(|i| {
                        e.event["id"]
                            .as_str()
                            .is_some_and(|x| x.contains(i.as_str()))
                    })
                    && subject.as_ref().is_none_or(|s| {
                        e.event["subject"]
                            .as_str()
                            .is_some_and(|x| x.contains(s.as_str()))
                    })
            },
            limit,
        )
        .await?;
    let out: Vec<Value> = events
        .into_iter()
        .map(|e| {
            let at = DateTime::from_timestamp_millis(e.ingested_ms).unwrap_or_default();
            json!({"event": e.event, "ingestedAt": at, "storedAt": at})
        })
        .collect();
    Ok(axum::Json(out).into_response())
}
