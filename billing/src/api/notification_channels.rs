//! Notification channels (`/api/v1/notification/channels`): webhook endpoints with their signing
//! secret (generated as `whsec_…` when not given), custom headers and a disabled flag. A channel
//! is deleted softly, and not while a live rule sends to it. Also the list query the
//! notification resources share ([`ListParams`]).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use serde_json::json;

use super::{Api, Problem, R, bad, conflict, json_body, new_id, not_found, query_pairs};
use crate::notification::model::ChannelRequest;
use crate::notification::{CHANNEL, Channel, RULE, Rule};

/// Channel routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/api/v1/notification/channels",
            get(list_channels).post(create_channel),
        )
        .route(
            "/api/v1/notification/channels/{id}",
            get(get_channel).put(update_channel).delete(delete_channel),
        )
}

/// The list parameters of the notification resources.
#[derive(Debug)]
pub(crate) struct ListParams {
    pub include_deleted: bool,
    pub include_disabled: bool,
    pub page: usize,
    pub page_size: usize,
    pub descending: bool,
    pub order_by: String,
    /// Repeated filters (`feature`, `channel`, `subject`, `rule`), `[]` suffix removed.
    pub lists: Vec<(String, String)>,
    /// Other single parameters (`from`, `to`).
    pub other: Vec<(String, String)>,
}

impl ListParams {
    /// Parses the query; `order_by` must be one of `orders` (the first is the default).
    pub(crate) fn parse(raw: &Option<String>, orders: &[&str]) -> Result<ListParams, Problem> {
        let flag = |k: &str, v: &str| match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(bad(format!("{k}: {v:?} is not true or false"))),
        };
        let number = |k: &str, v: &str, max: usize| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| bad(format!("{k}: {v:?} must be an integer in 1..={max}")))
        };
        let mut p = ListParams {
            include_deleted: false,
            include_disabled: false,
            page: 1,
            page_size: 100,
            descending: false,
            order_by: orders.first().copied().unwrap_or("id").into(),
            lists: Vec::new(),
            other: Vec::new(),
        };
        for (k, v) in query_pairs(raw) {
            let k = k.strip_suffix("[]").unwrap_or(&k).to_owned();
            match k.as_str() {
                "includeDeleted" => p.include_deleted = flag(&k, &v)?,
                "includeDisabled" => p.include_disabled = flag(&k, &v)?,
                "page" => p.page = number(&k, &v, usize::MAX)?,
                "pageSize" => p.page_size = number(&k, &v, 1000)?,
                "order" => {
                    p.descending = match v.as_str() {
                        "ASC" => false,
                        "DESC" => true,
                        _ => return Err(bad(format!("order: {v:?} is not ASC or DESC"))),
                    }
                }
                "orderBy" => {
                    if !orders.contains(&v.as_str()) {
                        return Err(bad(format!(
                            "orderBy: {v:?} is not one of {}",
                            orders.join(", ")
                        )));
                    }
                    p.order_by = v;
                }
                "feature" | "channel" | "subject" | "rule" => p.lists.push((k, v)),
                _ => p.other.push((k, v)),
            }
        }
        Ok(p)
    }

    /// The values of a repeated filter.
    pub(crate) fn list(&self, name: &str) -> Vec<&str> {
        self.lists
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `{totalCount, page, pageSize, items}`, sorted by `key`.
    pub(crate) fn page<T: Serialize>(
        &self,
        mut items: Vec<T>,
        key: impl Fn(&T, &str) -> String,
    ) -> axum::response::Response {
        items.sort_by_key(|i| key(i, &self.order_by));
        if self.descending {
            items.reverse();
        }
        let total = items.len();
        let items: Vec<T> = items
            .into_iter()
            .skip((self.page - 1).saturating_mul(self.page_size))
            .take(self.page_size)
            .collect();
        axum::Json(
            json!({"totalCount": total, "page": self.page, "pageSize": self.page_size,
                          "items": items}),
        )
        .into_response()
    }
}

fn order_key(c: &Channel, by: &str) -> String {
    match by {
        "type" => format!("{}{}", c.kind, c.id),
        "createdAt" => format!("{}{}", c.created_at.timestamp_millis(), c.id),
        "updatedAt" => format!("{}{}", c.updated_at.timestamp_millis(), c.id),
        _ => c.id.clone(),
    }
}

async fn list_channels(State(api): State<Api>, RawQuery(raw): RawQuery) -> R {
    let p = ListParams::parse(&raw, &["id", "type", "createdAt", "updatedAt"])?;
    let items: Vec<Channel> = api
        .store
        .list_entities::<Channel>(CHANNEL)
        .await?
        .into_iter()
        .filter(|c| p.include_deleted || c.deleted_at.is_none())
        .filter(|c| p.include_disabled || !c.disabled)
        .collect();
    Ok(p.page(items, order_key))
}

/// A channel by id, 404 naming it otherwise.
pub(crate) async fn channel(api: &Api, id: &str) -> Result<Channel, Problem> {
    api.store
        .get_entity::<Channel>(CHANNEL, id)
        .await?
        .ok_or_else(|| not_found(format!("notification channel {id} not found")))
}

async fn create_channel(State(api): State<Api>, body: Bytes) -> R {
    let req: ChannelRequest = json_body(&body)?;
    let now = api.now().await?;
    let c = req.into_channel(new_id(), now, now, None).map_err(bad)?;
    api.store.put_entity(CHANNEL, &c.id, &c).await?;
    Ok((StatusCode::CREATED, axum::Json(c)).into_response())
}

async fn get_channel(State(api): State<Api>, Path(id): Path<String>) -> R {
    Ok(axum::Json(channel(&api, &id).await?).into_response())
}

async fn update_channel(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> R {
    let old = channel(&api, &id).await?;
    if old.deleted_at.is_some() {
        return Err(bad(format!(
            "notification channel {id} was deleted and cannot be updated"
        )));
    }
    let req: ChannelRequest = json_body(&body)?;
    let now = api.now().await?;
    let c = req
        .into_channel(id, old.created_at, now, Some(old.signing_secret))
        .map_err(bad)?;
    api.store.put_entity(CHANNEL, &c.id, &c).await?;
    Ok(axum::Json(c).into_response())
}

async fn delete_channel(State(api): State<Api>, Path(id): Path<String>) -> R {
    let mut c = channel(&api, &id).await?;
    if c.deleted_at.is_some() {
        return Err(not_found(format!("notification channel {id} not found")));
    }
    let users: Vec<String> = api
        .store
        .list_entities::<Rule>(RULE)
        .await?
        .into_iter()
        .filter(|r| r.deleted_at.is_none() && r.channels.iter().any(|m| m.id == id))
        .map(|r| r.id)
        .collect();
    if !users.is_empty() {
        return Err(conflict(format!(
            "notification channel {id} is used by rule(s) {}: remove it from them first",
            users.join(", ")
        )));
    }
    let now = api.now().await?;
    c.deleted_at = Some(now);
    c.updated_at = now;
    api.store.put_entity(CHANNEL, &c.id, &c).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
