//! Meters: `GET/POST /api/v1/meters`, `GET/DELETE /api/v1/meters/{idOrSlug}`, the meter query
//! (`GET …/query`, JSON or CSV) and `GET …/subjects`; plus meters declared in the config file.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::Utc;

use super::customers::customer_by;
use super::{Api, R, bad, conflict, json_body, new_id, not_found, parse_time, query_pairs};
use crate::meter::{CompiledMeter, Meter};
use crate::query::{self, MeterQuery};
use crate::store::Store;

/// Meter routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/meters", get(list_meters).post(create_meter))
        .route("/api/v1/meters/{id}", get(get_meter).delete(delete_meter))
        .route("/api/v1/meters/{id}/query", get(query_meter))
        .route("/api/v1/meters/{id}/subjects", get(meter_subjects))
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
    meter.created_at = Some(Utc::now());
    meter.updated_at = meter.created_at;
    let compiled = CompiledMeter::new(meter).map_err(|e| bad(e.to_string()))?;
    let shown = compiled.meter.clone();
    api.store.add_meter(compiled).await?;
    api.store.flush().await?;
    Ok((StatusCode::CREATED, axum::Json(shown)).into_response())
}

/// Adds a meter from the config file unless one with its slug exists.
pub async fn ensure_meter(store: &Store, mut meter: Meter) -> Result<(), String> {
    if store.meter(&meter.slug).is_some() {
        return Ok(());
    }
    meter.id = new_id();
    meter.created_at = Some(Utc::now());
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

async fn delete_meter(State(api): State<Api>, Path(id): Path<String>) -> R {
    if !api.store.delete_meter(&id).await? {
        return Err(not_found(format!("meter {id} not found")));
    }
    api.store.flush().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn query_meter(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> R {
    let meter = api
        .store
        .meter(&id)
        .ok_or_else(|| not_found(format!("meter {id} not found")))?;
    let mut q = MeterQuery {
        from: None,
        to: None,
        window_size: None,
        tz: chrono_tz::UTC,
        subjects: Vec::new(),
        group_by: Vec::new(),
        filter_group_by: BTreeMap::new(),
    };
    let mut customers = Vec::new();
    for (k, v) in query_pairs(&raw) {
        match k.as_str() {
            "from" => q.from = Some(parse_time("from", &v)?),
            "to" => q.to = Some(parse_time("to", &v)?),
            "windowSize" => q.window_size = Some(v.parse().map_err(bad)?),
            "windowTimeZone" => {
                q.tz = v
                    .parse()
                    .map_err(|_| bad(format!("windowTimeZone: {v:?} is not an IANA time zone")))?
            }
            "subject" => q.subjects.push(v),
            "groupBy" => q.group_by.push(v),
            "filterCustomerId" => customers.push(v),
            other if other.starts_with("filterGroupBy[") && other.ends_with(']') => {
                q.filter_group_by
                    .insert(other["filterGroupBy[".len()..other.len() - 1].to_owned(), v);
            }
            "clientId" => {}
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    for g in &q.group_by {
        if g != "subject" && !meter.meter.group_by.contains_key(g) {
            return Err(bad(format!(
                "groupBy: {g:?} is not a group-by of meter {}",
                meter.meter.slug
            )));
        }
    }
    for c in &customers {
        let customer = customer_by(&api, c)
            .await?
            .ok_or_else(|| bad(format!("filterCustomerId: customer {c} not found")))?;
        q.subjects.extend(customer.subjects());
    }
    if !customers.is_empty() && q.subjects.is_empty() {
        return Ok(axum::Json(query::MeterQueryResult {
            from: q.from,
            to: q.to,
            window_size: q.window_size,
            data: vec![],
        })
        .into_response());
    }
    let result = query::run(&api.store, &meter, &q).await?;
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    if wants_csv {
        return Ok((
            [(header::CONTENT_TYPE, "text/csv")],
            query::to_csv(&result, &q.group_by),
        )
            .into_response());
    }
    Ok(axum::Json(result).into_response())
}

async fn meter_subjects(State(api): State<Api>, Path(id): Path<String>) -> R {
    let meter = api
        .store
        .meter(&id)
        .ok_or_else(|| not_found(format!("meter {id} not found")))?;
    let mut subjects: Vec<String> = api
        .store
        .usage(&meter.meter.slug, &[], i64::MIN, i64::MAX)
        .await?
        .into_iter()
        .map(|r| r.0)
        .collect();
    subjects.sort();
    subjects.dedup();
    Ok(axum::Json(subjects).into_response())
}
