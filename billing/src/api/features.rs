//! Features: `GET/POST /api/v1/features`, `GET/DELETE /api/v1/features/{idOrKey}` (DELETE
//! archives), and the lookup of a live feature by id or key.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use std::collections::BTreeMap;

use super::{Api, Problem, R, bad, conflict, json_body, new_id, not_found};
use crate::entitlement::Feature;
use crate::filter::compile_group_filters;

/// Feature routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/features", get(list_features).post(create_feature))
        .route(
            "/api/v1/features/{id}",
            get(get_feature).delete(archive_feature),
        )
}

/// The live (not archived) feature with this id or key.
pub(crate) async fn feature_by(api: &Api, id_or_key: &str) -> Result<Option<Feature>, Problem> {
    Ok(api
        .store
        .list_entities::<Feature>("feature")
        .await?
        .into_iter()
        .filter(|f| f.archived_at.is_none())
        .find(|f| f.id == id_or_key || f.key == id_or_key))
}

async fn list_features(State(api): State<Api>) -> R {
    let items: Vec<Feature> = api
        .store
        .list_entities::<Feature>("feature")
        .await?
        .into_iter()
        .filter(|f| f.archived_at.is_none())
        .collect();
    Ok(axum::Json(items).into_response())
}

async fn create_feature(State(api): State<Api>, body: Bytes) -> R {
    let mut f: Feature = json_body(&body)?;
    if !crate::meter::is_slug(&f.key) {
        return Err(bad(format!(
            "key: {:?} must match ^[a-z0-9]+(?:_[a-z0-9]+)*$",
            f.key
        )));
    }
    if feature_by(&api, &f.key).await?.is_some() {
        return Err(conflict(format!("feature {} already exists", f.key)));
    }
    if let Some(slug) = &f.meter_slug {
        let meter = api
            .store
            .meter(slug)
            .ok_or_else(|| bad(format!("meterSlug: meter {slug} not found")))?;
        if !matches!(
            meter.meter.aggregation,
            crate::meter::Aggregation::Sum | crate::meter::Aggregation::Count
        ) {
            return Err(bad(format!(
                "meterSlug: meter {slug} must aggregate with SUM or COUNT"
            )));
        }
        for k in f.meter_group_by_filters.iter().flat_map(|m| m.keys()) {
            if !meter.meter.group_by.contains_key(k) {
                return Err(bad(format!(
                    "meterGroupByFilters.{k}: not a group-by of meter {slug}"
                )));
            }
        }
        if let Some(advanced) = &f.advanced_meter_group_by_filters {
            compile_group_filters("advancedMeterGroupByFilters", advanced, |k| {
                meter.meter.group_by.contains_key(k)
            })
            .map_err(bad)?;
        }
    } else if f.advanced_meter_group_by_filters.is_some() || f.meter_group_by_filters.is_some() {
        return Err(bad("meterSlug: group-by filters need a meter to filter"));
    }
    // As OpenMeter: the advanced filters win; both fields then show the filters in force.
    let filters = f.group_filters();
    if !filters.is_empty() {
        let eq: BTreeMap<String, String> = filters
            .iter()
            .filter_map(|(k, v)| v.eq.clone().map(|e| (k.clone(), e)))
            .collect();
        f.meter_group_by_filters = Some(eq);
        f.advanced_meter_group_by_filters = Some(filters);
    }
    f.id = new_id();
    f.created_at = api.now().await?;
    f.updated_at = f.created_at;
    api.store.put_entity("feature", &f.id, &f).await?;
    Ok((StatusCode::CREATED, axum::Json(f)).into_response())
}

async fn get_feature(State(api): State<Api>, Path(id): Path<String>) -> R {
    let f = feature_by(&api, &id)
        .await?
        .ok_or_else(|| not_found(format!("feature {id} not found")))?;
    Ok(axum::Json(f).into_response())
}

async fn archive_feature(State(api): State<Api>, Path(id): Path<String>) -> R {
    let mut f = feature_by(&api, &id)
        .await?
        .ok_or_else(|| not_found(format!("feature {id} not found")))?;
    f.archived_at = Some(api.now().await?);
    api.store.put_entity("feature", &f.id, &f).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
