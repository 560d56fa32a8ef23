//! Add-ons, OpenMeter v1: `GET/POST /api/v1/addons`, `GET/PUT/DELETE /api/v1/addons/{addonId}`
//! (id or key, `includeLatest`), `POST /api/v1/addons/{addonId}/publish` and `/archive`. Versioned
//! like plans ([`crate::catalog::versions`]); publishing also needs OpenMeter's `Publishable`
//! rules (one cadence, rate cards present, flat prices only for multiple instances).

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::catalog_http::{CR, Failure, catalog_body, list_query, page};
use super::{Api, new_id};
use crate::catalog::model::{Addon, RateCard, Status};
use crate::catalog::validate::{addon_publish_problems, validate_addon};
use crate::catalog::versions::{self, Versioned};
use crate::catalog::{CatalogError, feature_facts};

/// Add-on routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/addons", get(list_addons).post(create_addon))
        .route(
            "/api/v1/addons/{addon_id}",
            get(get_addon).put(update_addon).delete(delete_addon),
        )
        .route("/api/v1/addons/{addon_id}/publish", post(publish_addon))
        .route("/api/v1/addons/{addon_id}/archive", post(archive_addon))
}

/// `AddonCreate` and `AddonReplaceUpdate`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddonInput {
    #[serde(default)]
    key: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    currency: Option<String>,
    instance_type: String,
    #[serde(default)]
    rate_cards: Vec<RateCard>,
}

/// Every version of every add-on, status as of `now`.
pub(crate) async fn all_addons(api: &Api, now: DateTime<Utc>) -> Result<Vec<Addon>, Failure> {
    Ok(versions::all::<Addon>(&api.store, now).await?)
}

/// An add-on by id or key, or 404.
pub(crate) async fn addon_by(
    api: &Api,
    id_or_key: &str,
    include_latest: bool,
    now: DateTime<Utc>,
) -> Result<(Addon, Vec<Addon>), Failure> {
    let all = all_addons(api, now).await?;
    let addon = versions::resolve(&all, id_or_key, include_latest, now)
        .ok_or_else(|| CatalogError::NotFound(format!("add-on {id_or_key} not found")))?;
    Ok((addon, all))
}

async fn checked(api: &Api, mut addon: Addon) -> Result<Addon, Failure> {
    let findings = validate_addon(&addon, &feature_facts(&api.store).await?);
    if !findings.critical.is_empty() {
        return Err(CatalogError::Invalid(findings.critical).into());
    }
    addon.validation_errors = (!findings.warnings.is_empty()).then_some(findings.warnings);
    Ok(addon)
}

fn addon_from(input: AddonInput, key: String, currency: String, now: DateTime<Utc>) -> Addon {
    Addon {
        id: new_id(),
        key,
        name: input.name,
        description: input.description,
        metadata: input.metadata,
        annotations: None,
        created_at: now,
        updated_at: now,
        deleted_at: None,
        version: 1,
        instance_type: input.instance_type,
        currency: input.currency.unwrap_or(currency),
        effective_from: None,
        effective_to: None,
        status: Status::Draft,
        rate_cards: input.rate_cards,
        validation_errors: None,
    }
}

fn sort_key(a: &Addon, by: &str) -> String {
    match by {
        "id" => a.id.clone(),
        "version" => format!("{:020}{}", a.version, a.key),
        "created_at" => a.created_at.to_rfc3339(),
        "updated_at" => a.updated_at.to_rfc3339(),
        _ => format!("{}\u{0}{:020}", a.key, a.version),
    }
}

async fn list_addons(State(api): State<Api>, RawQuery(raw): RawQuery) -> CR {
    let q = list_query(&raw)?;
    let now = api.now().await?;
    let items: Vec<Addon> = all_addons(&api, now)
        .await?
        .into_iter()
        .filter(|a| q.filter.matches(a, &a.currency, now))
        .collect();
    Ok(page(&q, items, sort_key))
}

async fn create_addon(State(api): State<Api>, body: Bytes) -> CR {
    let input: AddonInput = catalog_body(&body)?;
    let now = api.now().await?;
    let key = input.key.clone().unwrap_or_default();
    let all = all_addons(&api, now).await?;
    let addon = checked(&api, addon_from(input, key.clone(), "USD".into(), now)).await?;
    let version = versions::next_version(&all, &key, now)?;
    let addon = Addon { version, ..addon };
    versions::save(&api.store, &addon).await?;
    Ok((StatusCode::CREATED, axum::Json(addon)).into_response())
}

async fn get_addon(State(api): State<Api>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> CR {
    let q = list_query(&raw)?;
    let (addon, _) = addon_by(&api, &id, q.include_latest, api.now().await?).await?;
    Ok(axum::Json(addon).into_response())
}

async fn update_addon(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> CR {
    let input: AddonInput = catalog_body(&body)?;
    let now = api.now().await?;
    let (current, _) = addon_by(&api, &id, true, now).await?;
    versions::require_status(&current, &[Status::Draft, Status::Scheduled], "update", now)?;
    versions::refuse_changed_identity(
        "add-on",
        [
            ("key", input.key.as_ref(), &current.key),
            ("currency", input.currency.as_ref(), &current.currency),
        ],
    )?;
    let mut addon = addon_from(input, current.key.clone(), current.currency.clone(), now);
    addon.keep_identity_of(&current);
    let addon = checked(&api, addon).await?;
    versions::save(&api.store, &addon).await?;
    Ok(axum::Json(addon).into_response())
}

async fn delete_addon(State(api): State<Api>, Path(id): Path<String>) -> CR {
    let now = api.now().await?;
    let (addon, _) = addon_by(&api, &id, true, now).await?;
    versions::delete(&api.store, addon, now).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn publish_addon(State(api): State<Api>, Path(id): Path<String>) -> CR {
    let now = api.now().await?;
    let (addon, all) = addon_by(&api, &id, true, now).await?;
    let addon = checked(&api, addon).await?;
    let blockers = addon_publish_problems(&addon);
    if !blockers.is_empty() {
        return Err(CatalogError::Invalid(blockers).into());
    }
    let addon = versions::publish(&api.store, &all, addon, now).await?;
    Ok(axum::Json(addon).into_response())
}

async fn archive_addon(State(api): State<Api>, Path(id): Path<String>) -> CR {
    let now = api.now().await?;
    let (addon, _) = addon_by(&api, &id, false, now).await?;
    let addon = versions::archive(&api.store, addon, now).await?;
    Ok(axum::Json(addon).into_response())
}
