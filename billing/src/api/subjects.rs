//! Subjects (OpenMeter v1, deprecated there in favour of customers but still what its SDK
//! reaches): `GET /api/v1/subjects`, `POST /api/v1/subjects` (upsert an array: a new key is
//! created, a known one updated with only the fields the request carries; `null` clears) and
//! `GET/DELETE /api/v1/subjects/{idOrKey}`. A subject enriches a subject key (display name,
//! metadata); usage is attributed by the key whether or not a subject exists.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Api, Problem, R, bad, json_body, new_id, not_found};

/// Entity kind in the store.
pub(crate) const KIND: &str = "subject";

/// Subject routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/subjects", get(list_subjects).post(upsert_subjects))
        .route(
            "/api/v1/subjects/{s}",
            get(get_subject).delete(delete_subject),
        )
}

/// `Subject`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// Id.
    pub id: String,
    /// The subject key events carry.
    pub key: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Deprecated in OpenMeter; kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_period_start: Option<DateTime<Utc>>,
    /// Deprecated in OpenMeter; kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_period_end: Option<DateTime<Utc>>,
    /// Deprecated in OpenMeter; `cus_…` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_customer_id: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
}

/// `SubjectUpsert`; `Some(None)` is an explicit `null`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubjectUpsert {
    key: String,
    #[serde(default, deserialize_with = "present")]
    display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    metadata: Option<Option<Map<String, Value>>>,
    #[serde(default, deserialize_with = "present")]
    current_period_start: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "present")]
    current_period_end: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "present")]
    stripe_customer_id: Option<Option<String>>,
}

/// A field that is present (even as `null`) becomes `Some`.
fn present<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

async fn subject_by(api: &Api, id_or_key: &str) -> Result<Option<Subject>, Problem> {
    Ok(api
        .store
        .list_entities::<Subject>(KIND)
        .await?
        .into_iter()
        .find(|s| s.id == id_or_key || s.key == id_or_key))
}

async fn list_subjects(State(api): State<Api>) -> R {
    let mut items = api.store.list_entities::<Subject>(KIND).await?;
    items.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(axum::Json(items).into_response())
}

async fn upsert_subjects(State(api): State<Api>, body: Bytes) -> R {
    let input: Vec<SubjectUpsert> = json_body(&body)?;
    // Check everything first: a bad item stores nothing.
    for (i, s) in input.iter().enumerate() {
        if s.key.is_empty() {
            return Err(bad(format!("[{i}].key: must not be empty")));
        }
        if let Some(Some(id)) = &s.stripe_customer_id
            && !id.starts_with("cus_")
        {
            return Err(bad(format!(
                "[{i}].stripeCustomerId: must start with cus_ when set"
            )));
        }
    }
    let mut existing = api.store.list_entities::<Subject>(KIND).await?;
    let now = api.now().await?;
    let mut out = Vec::with_capacity(input.len());
    for u in input {
        let subject = match existing.iter_mut().find(|s| s.key == u.key) {
            Some(s) => {
                if let Some(v) = u.display_name {
                    s.display_name = v;
                }
                if let Some(v) = u.metadata {
                    s.metadata = v;
                }
                if let Some(v) = u.current_period_start {
                    s.current_period_start = v;
                }
                if let Some(v) = u.current_period_end {
                    s.current_period_end = v;
                }
                if let Some(v) = u.stripe_customer_id {
                    s.stripe_customer_id = v;
                }
                s.updated_at = now;
                s.clone()
            }
            None => {
                let s = Subject {
                    id: new_id(),
                    key: u.key,
                    display_name: u.display_name.flatten(),
                    metadata: u.metadata.flatten(),
                    current_period_start: u.current_period_start.flatten(),
                    current_period_end: u.current_period_end.flatten(),
                    stripe_customer_id: u.stripe_customer_id.flatten(),
                    created_at: now,
                    updated_at: now,
                };
                existing.push(s.clone());
                s
            }
        };
        api.store.put_entity(KIND, &subject.id, &subject).await?;
        out.push(subject);
    }
    Ok(axum::Json(out).into_response())
}

async fn get_subject(State(api): State<Api>, Path(s): Path<String>) -> R {
    let subject = subject_by(&api, &s)
        .await?
        .ok_or_else(|| not_found(format!("subject {s} not found")))?;
    Ok(axum::Json(subject).into_response())
}

async fn delete_subject(State(api): State<Api>, Path(s): Path<String>) -> R {
    let subject = subject_by(&api, &s)
        .await?
        .ok_or_else(|| not_found(format!("subject {s} not found")))?;
    api.store.delete_entity(KIND, &subject.id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
