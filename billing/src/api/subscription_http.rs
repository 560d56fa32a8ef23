//! What the subscription resources share over HTTP: their error ([`Failure`]: a refusal with
//! OpenMeter's `extensions.validationErrors`, or a plain problem), the JSON views (a subscription,
//! the expanded view with phases and items as of a time, an add-on), loading a subscription or
//! 404, and provisioning after a change.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Api, Problem};
use crate::catalog::ValidationIssue;
use crate::entitlement::Entitlement;
use crate::store::StoreError;
use crate::subscription::period::billing_period_at;
use crate::subscription::provision::entitlement_id;
use crate::subscription::timeline::{ItemWindow, item_windows};
use crate::subscription::{self, Refusal, Subscription, SubscriptionAddon};

/// A subscription handler's error.
pub(crate) enum Failure {
    Problem(Problem),
    Refusal(Refusal),
}

/// A subscription handler's result.
pub(crate) type SR = Result<Response, Failure>;

impl From<Problem> for Failure {
    fn from(p: Problem) -> Self {
        Failure::Problem(p)
    }
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Failure::Refusal(r)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Problem(e.into())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Problem(p) => p.into_response(),
            Failure::Refusal(r) => {
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
                let body = json!({
                    "type": "about:blank",
                    "title": status.canonical_reason(),
                    "status": status.as_u16(),
                    "detail": r.detail(),
                    "extensions": {"validationErrors": r.issues},
                });
                (
                    status,
                    [(header::CONTENT_TYPE, "application/problem+json")],
                    body.to_string(),
                )
                    .into_response()
            }
        }
    }
}

/// The body parsed as `T`; a malformed field is a 400 naming it by JSONPath.
pub(crate) fn body<T: for<'de> serde::Deserialize<'de>>(body: &Bytes) -> Result<T, Failure> {
    let bytes: &[u8] = if body.is_empty() { b"{}" } else { body };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "$".to_owned()
        } else {
            format!("$.{path}")
        };
        Failure::Refusal(Refusal {
            status: 400,
            issues: vec![ValidationIssue {
                field,
                code: "invalid_value".into(),
                message: format!("invalid request body: {}", e.inner()),
                severity: Some("critical".into()),
            }],
        })
    })
}

/// The subscription with this id, or 404.
pub(crate) async fn subscription_or_404(api: &Api, id: &str) -> Result<Subscription, Failure> {
    subscription::load(&api.store, id)
        .await?
        .ok_or_else(|| Refusal::not_found(format!("subscription {id} not found")).into())
}

/// The subscription with this id for an update, or 404.
pub(crate) async fn for_update(api: &Api, id: &str) -> Result<subscription::ForUpdate, Failure> {
    subscription::load_for_update(&api.store, id)
        .await?
        .ok_or_else(|| Refusal::not_found(format!("subscription {id} not found")).into())
}

/// Stores `changed` over what was read, or 409 when another request changed it meanwhile.
pub(crate) async fn store_update(
    api: &Api,
    read: &subscription::ForUpdate,
    changed: &Subscription,
) -> Result<(), Failure> {
    if subscription::update(&api.store, read, changed).await? {
        return Ok(());
    }
    Err(Refusal::conflict(
        "$",
        "subscription_changed_concurrently",
        format!(
            "subscription {} was changed by another request at the same time: read it again and retry",
            changed.id
        ),
    )
    .into())
}

/// Reconciles the entitlements of `subs` at `now` (what a change means for the gateway, at once;
/// the scheduler does the same at every later boundary).
pub(crate) async fn provision_now(
    api: &Api,
    subs: &[Subscription],
    now: DateTime<Utc>,
) -> Result<(), Failure> {
    subscription::provision(&api.store, subs, now).await?;
    Ok(())
}

/// `Subscription` as OpenMeter shows it: status at `now`, alignment.
pub(crate) fn view(sub: &Subscription, now: DateTime<Utc>) -> Value {
    let mut v = serde_json::to_value(sub).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("phases");
        m.insert("status".into(), json!(sub.status_at(now).as_str()));
        m.insert("alignment".into(), json!({"billablesMustAlign": true}));
    }
    v
}

fn item_view(w: &ItemWindow, entitlements: &BTreeMap<String, Entitlement>) -> Value {
    let card = &w.rate_card;
    let entitlement = entitlements.get(&entitlement_id(&w.subscription_id, &w.phase_key, &w.key));
    let mut included = serde_json::Map::new();
    if let Some(f) = &card.feature_key {
        included.insert("feature".into(), json!({"key": f}));
    }
    if let Some(e) = entitlement {
        included.insert("entitlement".into(), json!(e));
    }
    json!({
        "id": w.item_id,
        "key": w.key,
        "name": card.name,
        "description": card.description,
        "metadata": card.metadata,
        "activeFrom": w.active_from,
        "activeTo": w.active_to,
        "currency": w.currency,
        "featureKey": card.feature_key,
        "billingCadence": card.billing_cadence,
        "price": card.price,
        "discounts": card.discounts,
        "taxConfig": card.tax_config,
        "included": included,
        "rateCard": card,
    })
}

/// `SubscriptionExpanded` as of `at`: phases with their items (the version in force for the
/// phase holding `at`, the last for past phases, the first for future ones) and every version of
/// each item (`itemTimelines`), and the billing period holding `at`.
pub(crate) async fn expanded(
    api: &Api,
    sub: &Subscription,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Value, Failure> {
    let addons = subscription::addons_of(&api.store, &sub.id).await?;
    let windows = item_windows(sub, &addons);
    let entitlements: BTreeMap<String, Entitlement> = api
        .store
        .list_entities_where::<Entitlement>("entitlement", "customer_id", &sub.customer_id)
        .await?
        .into_iter()
        .map(|e| (e.id.clone(), e))
        .collect();
    let mut phases = Vec::new();
    for p in sub.phase_windows() {
        let mine: Vec<&ItemWindow> = windows
            .iter()
            .filter(|w| w.phase_key == p.phase.key)
            .collect();
        let mut timelines: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for w in &mine {
            timelines
                .entry(w.key.clone())
                .or_default()
                .push(item_view(w, &entitlements));
        }
        let mut items = Vec::new();
        let mut keys: Vec<&str> = mine.iter().map(|w| w.key.as_str()).collect();
        keys.dedup();
        let mut seen = std::collections::BTreeSet::new();
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            let versions: Vec<&&ItemWindow> = mine.iter().filter(|w| w.key == key).collect();
            let chosen = if p.contains(at) {
                versions.iter().find(|w| w.contains(at)).copied()
            } else if p.active_to.is_some_and(|to| to <= at) {
                versions.last().copied()
            } else {
                versions.first().copied()
            };
            if let Some(w) = chosen {
                items.push(item_view(w, &entitlements));
            }
        }
        phases.push(json!({
            "id": p.phase.id,
            "key": p.phase.key,
            "name": p.phase.name,
            "description": p.phase.description,
            "metadata": p.phase.metadata,
            "activeFrom": p.active_from,
            "activeTo": p.active_to,
            "items": items,
            "itemTimelines": timelines,
        }));
    }
    let mut v = view(sub, now);
    let period = sub
        .cadence()
        .ok()
        .and_then(|c| billing_period_at(sub.billing_anchor, &c, at));
    if let Value::Object(m) = &mut v {
        m.insert("phases".into(), Value::Array(phases));
        m.insert(
            "alignment".into(),
            json!({"billablesMustAlign": true, "currentAlignedBillingPeriod":
                period.map(|(from, to)| json!({"from": from, "to": to}))}),
        );
    }
    Ok(v)
}

/// `SubscriptionAddon` as OpenMeter shows it, quantity as of `now`.
pub(crate) fn addon_view(a: &SubscriptionAddon, sub: &Subscription, now: DateTime<Utc>) -> Value {
    let timeline: Vec<Value> = a
        .timeline
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let to = a
                .timeline
                .get(i + 1)
                .map(|n| n.active_from)
                .or(sub.active_to);
            json!({"activeFrom": q.active_from, "activeTo": to, "quantity": q.quantity})
        })
        .collect();
    let affected = |key: &str| -> Vec<String> {
        sub.phases
            .iter()
            .flat_map(|p| p.items.iter())
            .filter(|i| i.key == key)
            .map(|i| i.id.clone())
            .collect()
    };
    json!({
        "id": a.id,
        "name": a.name,
        "description": a.description,
        "metadata": a.metadata,
        "createdAt": a.created_at,
        "updatedAt": a.updated_at,
        "activeFrom": a.timeline.first().map(|q| q.active_from),
        "activeTo": sub.active_to,
        "addon": a.addon,
        "quantityAt": now,
        "quantity": a.quantity_at(now),
        "timeline": timeline,
        "subscriptionId": a.subscription_id,
        "rateCards": a.rate_cards.iter().map(|c| json!({"rateCard": c, "affectedSubscriptionItemIds": affected(&c.key)})).collect::<Vec<_>>(),
    })
}
