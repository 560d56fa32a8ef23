//! Meters: `GET/POST /api/v1/meters`, `GET/PUT/DELETE /api/v1/meters/{idOrSlug}`, `GET
//! …/subjects` and `GET …/group-by/{key}/values`; plus meters declared in the config file.
//! (Queries: [`super::meter_query`].)

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Api, Problem, R, bad, conflict, json_body, new_id, not_found, parse_time, query_pairs,
};
use crate::entitlement::Feature;
use crate::meter::{CompiledMeter, Meter};
use crate::store::Store;

/// Meter routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/meters", get(list_meters).post(create_meter))
        .route(
            "/api/v1/meters/{id}",
            get(get_meter).put(update_meter).delete(delete_meter),
        )
        .route("/api/v1/meters/{id}/subjects", get(meter_subjects))
        .route(
            "/api/v1/meters/{id}/group-by/{key}/values",
            get(group_by_values),
        )
}

async fn list_meters(State(api): State<Api>) -> R {
    let meters: Vec<Meter> = api.store.meters().iter().map(|m| m.meter.clone()).collect();
    Ok(axum::Json(meters).into_response())
}

async fn create_meter(State(api): State<Api>, body: Bytes) -> R {
    let mut meter: Meter = json_body(&body)?;
    if api.store.meter(&meter.slug).is_some() {
        return Err(conflict(format!("meter {} already exists", meter.slug)));
    }
    meter.id = new_id();
    meter.created_at = Some(api.now().await?);
    meter.updated_at = meter.created_at;
    let compiled = CompiledMeter::new(meter).map_err(|e| bad(e.to_string()))?;
    let shown = compiled.meter.clone();
    api.store.add_meter(compiled).await?;
    Ok((StatusCode::CREATED, axum::Json(shown)).into_response())
}

/// Adds a meter from the config file unless one with its slug exists.
/// `now` is billing's clock at start.
pub async fn ensure_meter(
    store: &Store,
    mut meter: Meter,
    now: DateTime<Utc>,
) -> Result<(), String> {
    if store.meter(&meter.slug).is_some() {
        return Ok(());
    }
    meter.id = new_id();
    meter.created_at = Some(now);
    meter.updated_at = meter.created_at;
    let slug = meter.slug.clone();
    let compiled = CompiledMeter::new(meter).map_err(|e| format!("meters.{slug}.{e}"))?;
    store.add_meter(compiled).await.map_err(|e| e.to_string())
}

async fn get_meter(State(api): State<Api>, Path(id): Path<String>) -> R {
    let m = api
        .store
        .meter(&id)
        .ok_or_else(|| not_found(format!("meter {id} not found")))?;
    Ok(axum::Json(m.meter.clone()).into_response())
}

/// `MeterUpdate`: what OpenMeter lets change. A PUT replaces all four (an absent `groupBy`
/// means none, as in OpenMeter).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MeterUpdate {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    group_by: Option<BTreeMap<String, String>>,
}

/// Fields a meter keeps for life: a PUT may repeat them unchanged, never change them.
const FIXED: [&str; 5] = [
    "slug",
    "aggregation",
    "eventType",
    "valueProperty",
    "eventFrom",
];
/// Read-only fields a client may send back from a GET; ignored.
const READ_ONLY: [&str; 5] = ["id", "createdAt", "updatedAt", "deletedAt", "annotations"];

async fn update_meter(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> R {
    let current = api
        .store
        .meter(&id)
        .ok_or_else(|| not_found(format!("meter {id} not found")))?;
    let mut raw: serde_json::Map<String, Value> = json_body(&body)?;
    let shown =
        serde_json::to_value(&current.meter).map_err(|e| bad(format!("meter {id}: {e}")))?;
    for key in FIXED {
        if let Some(v) = raw.remove(key)
            && !v.is_null()
            && Some(&v) != shown.get(key)
        {
            return Err(bad(format!(
                "{key}: cannot be changed on an existing meter (a PUT may change name, description, groupBy and metadata; create a new meter instead)"
            )));
        }
    }
    for key in READ_ONLY {
        raw.remove(key);
    }
    let update: MeterUpdate = serde_json::from_value(Value::Object(raw))
        .map_err(|e| bad(format!("invalid request body: {e}")))?;
    if let Some(name) = &update.name
        && !(1..=256).contains(&name.chars().count())
    {
        return Err(bad("name: must be 1 to 256 characters"));
    }
    if let Some(d) = &update.description {
        if d.is_empty() {
            return Err(bad("description: must not be an empty string"));
        }
        if d.chars().count() > 1024 {
            return Err(bad("description: at most 1024 characters"));
        }
    }
    if update.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(bad("metadata: must be an object"));
    }
    let group_by = update.group_by.unwrap_or_default();
    // A group-by a feature filters on cannot go (OpenMeter answers 409 too).
    let dropped: Vec<&String> = current
        .meter
        .group_by
        .keys()
        .filter(|k| !group_by.contains_key(*k))
        .collect();
    if !dropped.is_empty() {
        for f in api.store.list_entities::<Feature>("feature").await? {
            if f.archived_at.is_some() || f.meter_slug.as_deref() != Some(&current.meter.slug) {
                continue;
            }
            for k in &dropped {
                if f.filters_group_by(k) {
                    return Err(conflict(format!(
                        "groupBy.{k}: cannot be dropped because feature {} filters on it",
                        f.key
                    )));
                }
            }
        }
    }
    let mut meter = current.meter.clone();
    meter.name = update.name;
    meter.description = update.description;
    meter.metadata = update.metadata;
    meter.group_by = group_by;
    meter.updated_at = Some(api.now().await?);
    let compiled = CompiledMeter::new(meter).map_err(|e| bad(e.to_string()))?;
    let shown = compiled.meter.clone();
    api.store.update_meter(compiled).await?;
    Ok(axum::Json(shown).into_response())
}

async fn delete_meter(State(api): State<Api>, Path(id): Path<String>) -> R {
    if !api.store.delete_meter(&id).await? {
        return Err(not_found(format!("meter {id} not found")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `from`/`to` (both inclusive) as minute-row bounds `[from, to]` in ms; `search` when allowed.
fn range(
    raw: &Option<String>,
    default_from: Option<DateTime<Utc>>,
    allow_search: bool,
) -> Result<(i64, i64, Option<String>), Problem> {
    let mut from = None;
    let mut to = None;
    let mut search = None;
    for (k, v) in query_pairs(raw) {
        match k.as_str() {
            "from" => from = Some(parse_time("from", &v)?),
            "to" => to = Some(parse_time("to", &v)?),
            "search" if allow_search => search = Some(v.to_lowercase()),
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(bad(format!("from ({f}) is after to ({t})")));
    }
    if from.is_none() && to.is_none() {
        from = default_from;
    }
    let from_ms = from.map_or(i64::MIN, |t| crate::store::minute_of(t.timestamp_millis()));
    let to_ms = to.map_or(i64::MAX, |t| t.timestamp_millis().saturating_add(1));
    Ok((from_ms, to_ms, search))
}

/// `GET /api/v1/meters/{idOrSlug}/subjects?from&to`: the subjects with usage.
async fn meter_subjects(
    State(api): State<Api>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> R {
    let meter = api
        .store
        .meter(&id)
        .ok_or_else(|| not_found(format!("meter {id} not found")))?;
    let (from_ms, to_ms, _) = range(&raw, None, false)?;
    let subjects: BTreeSet<String> = api
        .store
        .usage(&meter.meter.slug, &[], from_ms, to_ms)
        .await?
        .into_iter()
        .map(|r| r.0)
        .collect();
    Ok(axum::Json(subjects).into_response())
}

/// `GET /api/v1/meters/{idOrSlug}/group-by/{groupByKey}/values?from&to&search`: the distinct
/// values of a group-by with usage (default: the last 24 hours, as OpenMeter); `search` keeps
/// values containing it, ignoring case.
async fn group_by_values(
    State(api): State<Api>,
    Path((id, key)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> R {
    let meter = api
        .store
        .meter(&id)
        .ok_or_else(|| not_found(format!("meter {id} not found")))?;
    if !meter.meter.group_by.contains_key(&key) {
        return Err(bad(format!(
            "groupByKey: {key:?} is not a group-by of meter {}",
            meter.meter.slug
        )));
    }
    let (from_ms, to_ms, search) = range(&raw, Some(api.now().await? - Duration::hours(24)), true)?;
    let values: BTreeSet<String> = api
        .store
        .usage_totals(&meter.meter.slug, from_ms, to_ms, crate::store::DAY)
        .await?
        .into_iter()
        .filter_map(|mut r| r.1.remove(&key))
        .filter(|v| search.as_ref().is_none_or(|s| v.to_lowercase().contains(s)))
        .collect();
    Ok(axum::Json(values).into_response())
}
