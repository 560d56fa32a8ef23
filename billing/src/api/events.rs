//! Listing ingested events: `GET /api/v1/events` (`IngestedEvent[]`, newest first, filtered).

use std::collections::{HashMap, HashSet};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Api, R, bad, parse_time, query_pairs};
use crate::entitlement::Customer;

/// Event listing routes (`POST` on the same path is ingest's).
pub fn routes() -> Router<Api> {
    Router::new().route("/api/v1/events", get(list_events))
}

/// `GET /api/v1/events`: `from`/`to` (event time, default the last 72 h), `ingestedAtFrom` /
/// `ingestedAtTo` (ingest time), `id` and `subject` (partial matches), `customerId` (repeated or
/// comma-separated: events whose subject belongs to one of them), `limit` 1..100; bounds are
/// inclusive as OpenMeter documents. Each event shows the `customerId` its subject belongs to.
async fn list_events(State(api): State<Api>, RawQuery(raw): RawQuery) -> R {
    let mut from = None;
    let mut to = None;
    let mut ingested_from = None;
    let mut ingested_to = None;
    let mut limit = 100usize;
    let mut id = None;
    let mut subject = None;
    let mut customer_refs: Vec<String> = Vec::new();
    for (k, v) in query_pairs(&raw) {
        match k.as_str() {
            "from" => from = Some(parse_time("from", &v)?),
            "to" => to = Some(parse_time("to", &v)?),
            "ingestedAtFrom" => ingested_from = Some(parse_time("ingestedAtFrom", &v)?),
            "ingestedAtTo" => ingested_to = Some(parse_time("ingestedAtTo", &v)?),
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| bad(format!("limit: {v:?} is not 1..100")))?
            }
            "id" => id = Some(v),
            "subject" => subject = Some(v),
            "customerId" => customer_refs.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned),
            ),
            "clientId" => {}
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    let from = match from {
        Some(f) => f,
        None => api.now().await? - chrono::Duration::hours(72),
    };
    for (name, lo, hi) in [
        ("from", Some(from), to),
        ("ingestedAtFrom", ingested_from, ingested_to),
    ] {
        if let (Some(lo), Some(hi)) = (lo, hi)
            && lo > hi
        {
            return Err(bad(format!("{name} ({lo}) is after its end ({hi})")));
        }
    }
    let customers = api.store.list_entities::<Customer>("customer").await?;
    // Subject → customer id, for the filter and for `customerId` on each event.
    let mut customer_of: HashMap<String, String> = HashMap::new();
    for c in &customers {
        for s in c.subjects() {
            customer_of.entry(s).or_insert_with(|| c.id.clone());
        }
    }
    let mut wanted: HashSet<String> = HashSet::new();
    for r in &customer_refs {
        let c = customers
            .iter()
            .find(|c| &c.id == r || c.key.as_ref() == Some(r))
            .ok_or_else(|| bad(format!("customerId: customer {r} not found")))?;
        wanted.insert(c.id.clone());
    }
    let ms = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis());
    let (to, ingested_from, ingested_to) = (ms(to), ms(ingested_from), ms(ingested_to));
    let from = from.timestamp_millis();
    let customer_of = std::sync::Arc::new(customer_of);
    let owners = customer_of.clone();
    let events = api
        .store
        .list_events(
            move |e| {
                let subj = e.event["subject"].as_str().unwrap_or_default();
                e.time_ms >= from
                    && to.is_none_or(|t| e.time_ms <= t)
                    && ingested_from.is_none_or(|t| e.ingested_ms >= t)
                    && ingested_to.is_none_or(|t| e.ingested_ms <= t)
                    && id.as_ref().is_none_or(|i| {
                        e.event["id"]
                            .as_str()
                            .is_some_and(|x| x.contains(i.as_str()))
                    })
                    && subject.as_ref().is_none_or(|s| subj.contains(s.as_str()))
                    && (wanted.is_empty() || owners.get(subj).is_some_and(|c| wanted.contains(c)))
            },
            limit,
        )
        .await?;
    let out: Vec<Value> = events
        .into_iter()
        .map(|e| {
            let at = DateTime::from_timestamp_millis(e.ingested_ms).unwrap_or_default();
            let customer = e.event["subject"].as_str().and_then(|s| customer_of.get(s));
            let mut item = json!({"event": e.event, "ingestedAt": at, "storedAt": at});
            if let Some(c) = customer {
                item["customerId"] = json!(c);
            }
            item
        })
        .collect();
    Ok(axum::Json(out).into_response())
}
