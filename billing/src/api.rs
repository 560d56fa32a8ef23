//! The OpenMeter-compatible HTTP API (JSON field names as in OpenMeter's spec; errors as RFC 7807
//! `application/problem+json`). Paths: ingest (v1 and v3), events, meters and their queries,
//! customers, features, entitlements and grants (v1 subject, v1 customer, v2 customer), values.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::entitlement::{
    self, Customer, Entitlement, EntitlementValue, Feature, Grant, Interval, Reset,
};
use crate::meter::{CompiledMeter, Meter};
use crate::query::{self, MeterQuery};
use crate::store::Store;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// Shared state.
#[derive(Clone)]
pub struct Api {
    /// The store.
    pub store: Arc<Store>,
    /// Accepted Bearer tokens; empty means no auth.
    pub tokens: Arc<Vec<String>>,
}

/// A problem+json error.
pub struct Problem(StatusCode, String);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({"type": "about:blank", "title": self.0.canonical_reason(), "status": self.0.as_u16(), "detail": self.1});
        (
            self.0,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

fn bad(detail: impl Into<String>) -> Problem {
    Problem(StatusCode::BAD_REQUEST, detail.into())
}

fn not_found(detail: impl Into<String>) -> Problem {
    Problem(StatusCode::NOT_FOUND, detail.into())
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        Problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

type R = Result<Response, Problem>;

fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// The router.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/api/v1/events", post(ingest_v1).get(list_events))
        .route("/api/v3/openmeter/events", post(ingest_v3))
        .route("/v3/openmeter/events", post(ingest_v3))
        .route("/api/v1/meters", get(list_meters).post(create_meter))
        .route("/api/v1/meters/{id}", get(get_meter).delete(delete_meter))
        .route("/api/v1/meters/{id}/query", get(query_meter))
        .route("/api/v1/meters/{id}/subjects", get(meter_subjects))
        .route(
            "/api/v1/customers",
            get(list_customers).post(create_customer),
        )
        .route(
            "/api/v1/customers/{c}",
            get(get_customer).delete(delete_customer),
        )
        .route("/api/v1/customers/{c}/access", get(customer_access))
        .route(
            "/api/v1/customers/{c}/entitlements/{f}/value",
            get(customer_value),
        )
        .route("/api/v1/features", get(list_features).post(create_feature))
        .route(
            "/api/v1/features/{id}",
            get(get_feature).delete(archive_feature),
        )
        .route(
            "/api/v2/customers/{c}/entitlements",
            get(list_customer_entitlements).post(create_customer_entitlement),
        )
        .route(
            "/api/v2/customers/{c}/entitlements/{e}",
            get(get_customer_entitlement),
        )
        .route(
            "/api/v2/customers/{c}/entitlements/{e}/value",
            get(customer_value),
        )
        .route(
            "/api/v2/customers/{c}/entitlements/{e}/grants",
            get(list_customer_grants).post(create_customer_grant),
        )
        .route(
            "/api/v2/customers/{c}/entitlements/{e}/reset",
            post(reset_customer_entitlement),
        )
        .route(
            "/api/v2/customers/{c}/entitlements/{e}/history",
            get(customer_history),
        )
        .route(
            "/api/v1/subjects/{s}/entitlements/{e}/history",
            get(subject_history),
        )
        .route(
            "/api/v1/subjects/{s}/entitlements",
            get(list_subject_entitlements).post(create_subject_entitlement),
        )
        .route(
            "/api/v1/subjects/{s}/entitlements/{e}/value",
            get(subject_value),
        )
        .route(
            "/api/v1/subjects/{s}/entitlements/{e}/grants",
            get(list_subject_grants).post(create_subject_grant),
        )
        .route(
            "/api/v1/subjects/{s}/entitlements/{e}/reset",
            post(reset_subject_entitlement),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(api.clone(), auth))
        .with_state(api)
}

async fn auth(State(api): State<Api>, req: Request, next: Next) -> Response {
    if api.tokens.is_empty() || req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|t| api.tokens.iter().any(|k| k == t)) {
        next.run(req).await
    } else {
        Problem(
            StatusCode::UNAUTHORIZED,
            "missing or unknown Bearer token".into(),
        )
        .into_response()
    }
}

fn json_body<T: for<'de> serde::Deserialize<'de>>(body: &Bytes) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error_free(de)
}

/// serde_json with the failing field named (`path: message`).
fn serde_path_to_error_free<'de, T: serde::Deserialize<'de>>(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
) -> Result<T, Problem> {
    T::deserialize(de).map_err(|e| bad(format!("invalid request body: {e}")))
}

// ---------------------------------------------------------------- ingest

fn parse_events(headers: &HeaderMap, body: &Bytes) -> Result<Vec<Value>, Problem> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let parsed: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let events = match (mime.as_str(), parsed) {
        ("application/cloudevents+json", v @ Value::Object(_)) => vec![v],
        ("application/cloudevents-batch+json", Value::Array(a)) => a,
        ("application/json", v @ Value::Object(_)) => vec![v],
        ("application/json", Value::Array(a)) => a,
        (
            "application/cloudevents+json"
            | "application/cloudevents-batch+json"
            | "application/json",
            _,
        ) => {
            return Err(bad(format!("body does not match content type {mime}")));
        }
        _ => {
            return Err(bad(format!(
                "invalid content type: {ct:?} (use application/cloudevents+json, application/cloudevents-batch+json or application/json)"
            )));
        }
    };
    if events.is_empty() {
        return Err(bad("no events found"));
    }
    Ok(events)
}

/// Checks required fields and normalises `time`; returns (event, time).
fn validate_event(
    i: usize,
    mut e: Value,
    now: DateTime<Utc>,
) -> Result<(Value, DateTime<Utc>), Problem> {
    let Value::Object(obj) = &mut e else {
        return Err(bad(format!("event {i}: not a JSON object")));
    };
    for field in ["id", "source", "type", "subject"] {
        match obj.get(field) {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => {
                return Err(bad(format!(
                    "event {i}: {field} is required and must be a non-empty string"
                )));
            }
        }
    }
    match obj.get("specversion") {
        None => {
            obj.insert("specversion".into(), json!("1.0"));
        }
        Some(Value::String(v)) if v == "1.0" => {}
        Some(other) => {
            return Err(bad(format!(
                "event {i}: specversion must be \"1.0\", not {other}"
            )));
        }
    }
    let time = match obj.get("time") {
        None | Some(Value::Null) => now,
        Some(Value::String(t)) => DateTime::parse_from_rfc3339(t)
            .map_err(|_| bad(format!("event {i}: time {t:?} is not RFC 3339")))?
            .with_timezone(&Utc),
        Some(other) => {
            return Err(bad(format!(
                "event {i}: time must be a string, not {other}"
            )));
        }
    };
    obj.insert(
        "time".into(),
        json!(time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
    );
    match obj.get("data") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err(bad(format!("event {i}: data must be a JSON object"))),
    }
    Ok((e, time))
}

async fn ingest(api: &Api, headers: &HeaderMap, body: &Bytes) -> Result<(), Problem> {
    let events = parse_events(headers, body)?;
    let now = Utc::now();
    // Validate everything first: a bad request stores nothing.
    let checked: Vec<(Value, DateTime<Utc>)> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| validate_event(i, e, now))
        .collect::<Result<_, _>>()?;
    let batch = checked
        .into_iter()
        .map(|(e, t)| (e, t.timestamp_millis()))
        .collect();
    let new = api.store.ingest(batch, now.timestamp_millis())?;
    // Acknowledge only what is on disk.
    api.store.flush().await?;
    tracing::debug!(new, "ingested");
    Ok(())
}

async fn ingest_v1(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> R {
    ingest(&api, &headers, &body).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn ingest_v3(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> R {
    ingest(&api, &headers, &body).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

fn query_pairs(raw: &Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn parse_time(name: &str, v: &str) -> Result<DateTime<Utc>, Problem> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| bad(format!("{name}: {v:?} is not RFC 3339")))
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
    let events = api.store.list_events(
        |e| {
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
    )?;
    let out: Vec<Value> = events
        .into_iter()
        .map(|e| {
            let at = DateTime::from_timestamp_millis(e.ingested_ms).unwrap_or_default();
            json!({"event": e.event, "ingestedAt": at, "storedAt": at})
        })
        .collect();
    Ok(axum::Json(out).into_response())
}

// ---------------------------------------------------------------- meters

async fn list_meters(State(api): State<Api>) -> R {
    let meters: Vec<Meter> = api.store.meters().iter().map(|m| m.meter.clone()).collect();
    Ok(axum::Json(meters).into_response())
}

async fn create_meter(State(api): State<Api>, body: Bytes) -> R {
    let mut meter: Meter = json_body(&body)?;
    if api.store.meter(&meter.slug).is_some() {
        return Err(Problem(
            StatusCode::CONFLICT,
            format!("meter {} already exists", meter.slug),
        ));
    }
    meter.id = new_id();
    meter.created_at = Some(Utc::now());
    meter.updated_at = meter.created_at;
    let compiled = CompiledMeter::new(meter).map_err(|e| bad(e.to_string()))?;
    let shown = compiled.meter.clone();
    api.store.add_meter(compiled)?;
    api.store.flush().await?;
    Ok((StatusCode::CREATED, axum::Json(shown)).into_response())
}

/// Adds a meter from the config file unless one with its slug exists.
pub fn ensure_meter(store: &Store, mut meter: Meter) -> Result<(), String> {
    if store.meter(&meter.slug).is_some() {
        return Ok(());
    }
    meter.id = new_id();
    meter.created_at = Some(Utc::now());
    meter.updated_at = meter.created_at;
    let slug = meter.slug.clone();
    let compiled = CompiledMeter::new(meter).map_err(|e| format!("meters.{slug}.{e}"))?;
    store.add_meter(compiled).map_err(|e| e.to_string())
}

async fn get_meter(State(api): State<Api>, Path(id): Path<String>) -> R {
    let m = api
        .store
        .meter(&id)
        .ok_or_else(|| not_found(format!("meter {id} not found")))?;
    Ok(axum::Json(m.meter.clone()).into_response())
}

async fn delete_meter(State(api): State<Api>, Path(id): Path<String>) -> R {
    if !api.store.delete_meter(&id)? {
        return Err(not_found(format!("meter {id} not found")));
    }
    api.store.flush().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn customer_by(api: &Api, id_or_key: &str) -> Result<Option<Customer>, Problem> {
    Ok(api
        .store
        .list_entities::<Customer>("customer")?
        .into_iter()
        .find(|c| c.id == id_or_key || c.key.as_deref() == Some(id_or_key)))
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
        let customer = customer_by(&api, c)?
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
    let result = query::run(&api.store, &meter, &q)?;
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
        .usage(&meter.meter.slug, &[], i64::MIN, i64::MAX)?
        .into_iter()
        .map(|r| r.0)
        .collect();
    subjects.sort();
    subjects.dedup();
    Ok(axum::Json(subjects).into_response())
}

// ---------------------------------------------------------------- customers and features

async fn list_customers(State(api): State<Api>) -> R {
    let items = api.store.list_entities::<Customer>("customer")?;
    Ok(axum::Json(
        json!({"items": items, "page": 1, "pageSize": items.len(), "totalCount": items.len()}),
    )
    .into_response())
}

async fn create_customer(State(api): State<Api>, body: Bytes) -> R {
    let mut c: Customer = json_body(&body)?;
    if c.key.is_none() && c.usage_attribution.subject_keys.is_empty() {
        return Err(bad("key or usageAttribution.subjectKeys is required"));
    }
    let all = api.store.list_entities::<Customer>("customer")?;
    if let Some(k) = &c.key
        && all.iter().any(|o| o.key.as_ref() == Some(k))
    {
        return Err(Problem(
            StatusCode::CONFLICT,
            format!("customer with key {k} already exists"),
        ));
    }
    for s in &c.usage_attribution.subject_keys {
        if let Some(o) = all.iter().find(|o| o.subjects().contains(s)) {
            return Err(Problem(
                StatusCode::CONFLICT,
                format!("subject {s} already belongs to customer {}", o.id),
            ));
        }
    }
    c.id = new_id();
    c.created_at = Utc::now();
    c.updated_at = c.created_at;
    api.store.put_entity("customer", &c.id, &c)?;
    api.store.flush().await?;
    Ok((StatusCode::CREATED, axum::Json(c)).into_response())
}

async fn get_customer(State(api): State<Api>, Path(c): Path<String>) -> R {
    let customer =
        customer_by(&api, &c)?.ok_or_else(|| not_found(format!("customer {c} not found")))?;
    Ok(axum::Json(customer).into_response())
}

async fn delete_customer(State(api): State<Api>, Path(c): Path<String>) -> R {
    let customer =
        customer_by(&api, &c)?.ok_or_else(|| not_found(format!("customer {c} not found")))?;
    api.store.delete_entity("customer", &customer.id)?;
    api.store.flush().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn feature_by(api: &Api, id_or_key: &str) -> Result<Option<Feature>, Problem> {
    Ok(api
        .store
        .list_entities::<Feature>("feature")?
        .into_iter()
        .filter(|f| f.archived_at.is_none())
        .find(|f| f.id == id_or_key || f.key == id_or_key))
}

async fn list_features(State(api): State<Api>) -> R {
    let items: Vec<Feature> = api
        .store
        .list_entities::<Feature>("feature")?
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
    if feature_by(&api, &f.key)?.is_some() {
        return Err(Problem(
            StatusCode::CONFLICT,
            format!("feature {} already exists", f.key),
        ));
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
    }
    f.id = new_id();
    f.created_at = Utc::now();
    f.updated_at = f.created_at;
    api.store.put_entity("feature", &f.id, &f)?;
    api.store.flush().await?;
    Ok((StatusCode::CREATED, axum::Json(f)).into_response())
}

async fn get_feature(State(api): State<Api>, Path(id): Path<String>) -> R {
    let f = feature_by(&api, &id)?.ok_or_else(|| not_found(format!("feature {id} not found")))?;
    Ok(axum::Json(f).into_response())
}

async fn archive_feature(State(api): State<Api>, Path(id): Path<String>) -> R {
    let mut f =
        feature_by(&api, &id)?.ok_or_else(|| not_found(format!("feature {id} not found")))?;
    f.archived_at = Some(Utc::now());
    api.store.put_entity("feature", &f.id, &f)?;
    api.store.flush().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- entitlements

/// Whose entitlement: a customer (v1 customer / v2 paths) or a bare subject (v1 subject paths).
enum Owner {
    Customer(Customer),
    Subject(String),
}

impl Owner {
    fn subjects(&self) -> Vec<String> {
        match self {
            Owner::Customer(c) => c.subjects(),
            Owner::Subject(s) => vec![s.clone()],
        }
    }

    fn owns(&self, e: &Entitlement) -> bool {
        match self {
            Owner::Customer(c) => e.customer_id.as_deref() == Some(c.id.as_str()),
            Owner::Subject(s) => e.subject_key.as_deref() == Some(s.as_str()),
        }
    }
}

/// The v1 subject paths: the customer whose usage attribution holds the subject (as OpenMeter
/// resolves subjects since customers), else the bare subject.
fn subject_owner(api: &Api, s: String) -> Result<Owner, Problem> {
    let customer = api
        .store
        .list_entities::<Customer>("customer")?
        .into_iter()
        .find(|c| c.subjects().contains(&s));
    Ok(match customer {
        Some(c) => Owner::Customer(c),
        None => Owner::Subject(s),
    })
}

fn customer_owner(api: &Api, c: &str) -> Result<Owner, Problem> {
    Ok(Owner::Customer(customer_by(api, c)?.ok_or_else(|| {
        not_found(format!("customer {c} not found"))
    })?))
}

fn entitlements_of(api: &Api, owner: &Owner) -> Result<Vec<Entitlement>, Problem> {
    Ok(api
        .store
        .list_entities::<Entitlement>("entitlement")?
        .into_iter()
        .filter(|e| owner.owns(e))
        .collect())
}

fn entitlement_of(api: &Api, owner: &Owner, id_or_feature: &str) -> Result<Entitlement, Problem> {
    entitlements_of(api, owner)?
        .into_iter()
        .find(|e| e.id == id_or_feature || e.feature_key == id_or_feature)
        .ok_or_else(|| not_found(format!("entitlement {id_or_feature} not found")))
}

async fn create_entitlement(api: &Api, owner: Owner, body: &Bytes) -> R {
    let raw: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let mut e: Entitlement = serde_json::from_value(raw.clone())
        .map_err(|err| bad(format!("invalid entitlement: {err}")))?;
    let feature_ref = raw["featureKey"]
        .as_str()
        .or(raw["featureId"].as_str())
        .ok_or_else(|| bad("featureKey or featureId is required"))?;
    let feature = feature_by(api, feature_ref)?
        .ok_or_else(|| bad(format!("feature {feature_ref} not found")))?;
    match e.kind.as_str() {
        "metered" => {
            if feature.meter_slug.is_none() {
                return Err(bad(format!(
                    "feature {} has no meter: a metered entitlement needs one",
                    feature.key
                )));
            }
            let period = e
                .usage_period
                .as_ref()
                .ok_or_else(|| bad("usagePeriod is required for metered entitlements"))?;
            Interval::parse(&period.interval)
                .map_err(|m| bad(format!("usagePeriod.interval: {m}")))?;
            // v2 `issue: {amount, priority}` is the newer spelling of issueAfterReset.
            if let Some(amount) = raw["issue"]["amount"].as_f64() {
                e.issue_after_reset = rust_decimal::Decimal::try_from(amount).ok();
                e.issue_after_reset_priority = raw["issue"]["priority"].as_u64().map(|p| p as u8);
            }
        }
        "boolean" => {}
        "static" => {
            let config = e
                .config
                .as_deref()
                .ok_or_else(|| bad("config is required for static entitlements"))?;
            serde_json::from_str::<Value>(config)
                .map_err(|_| bad("config must be a JSON string"))?;
        }
        other => {
            return Err(bad(format!(
                "type: {other:?} is not metered, boolean or static"
            )));
        }
    }
    if entitlements_of(api, &owner)?
        .iter()
        .any(|x| x.feature_id == feature.id)
    {
        return Err(Problem(
            StatusCode::CONFLICT,
            format!("an entitlement for feature {} already exists", feature.key),
        ));
    }
    e.id = new_id();
    e.feature_id = feature.id.clone();
    e.feature_key = feature.key.clone();
    match &owner {
        Owner::Customer(c) => {
            e.customer_id = Some(c.id.clone());
            e.customer_key = c.key.clone();
        }
        Owner::Subject(s) => e.subject_key = Some(s.clone()),
    }
    e.created_at = Utc::now();
    e.updated_at = e.created_at;
    e.resets.clear();
    api.store.put_entity("entitlement", &e.id, &e)?;
    // v2 inline grants.
    if let Some(grants) = raw["grants"].as_array() {
        for g in grants {
            let mut g: Grant =
                serde_json::from_value(g.clone()).map_err(|err| bad(format!("grants: {err}")))?;
            g.normalise().map_err(|m| bad(format!("grants: {m}")))?;
            g.id = new_id();
            g.entitlement_id = e.id.clone();
            g.created_at = Utc::now();
            api.store.put_entity("grant", &g.id, &g)?;
        }
    }
    api.store.flush().await?;
    Ok((StatusCode::CREATED, axum::Json(with_period(e))).into_response())
}

fn with_period(mut e: Entitlement) -> Entitlement {
    if let Some(p) = &e.usage_period
        && let Ok(interval) = Interval::parse(&p.interval)
    {
        let anchor = p.anchor.or(e.measure_usage_from).unwrap_or(e.created_at);
        let (from, to) = interval.period_at(anchor, Utc::now());
        e.current_usage_period = Some(json!({"from": from, "to": to}));
    }
    e.last_reset = e.resets.last().map(|r| r.at);
    e
}

async fn value_of(api: &Api, owner: &Owner, id_or_feature: &str, raw: &Option<String>) -> R {
    let at = query_pairs(raw)
        .into_iter()
        .find(|(k, _)| k == "time")
        .map(|(_, v)| parse_time("time", &v))
        .transpose()?
        .unwrap_or_else(Utc::now);
    let Ok(e) = entitlement_of(api, owner, id_or_feature) else {
        // OpenMeter: no entitlement means no access, unless the feature itself is unknown.
        if feature_by(api, id_or_feature)?.is_none() {
            return Err(not_found(format!("feature {id_or_feature} not found")));
        }
        return Ok(axum::Json(EntitlementValue::no_access()).into_response());
    };
    let feature = feature_by(api, &e.feature_id)?
        .or(api.store.get_entity::<Feature>("feature", &e.feature_id)?)
        .ok_or_else(|| not_found(format!("feature {} not found", e.feature_key)))?;
    let grants: Vec<Grant> = api
        .store
        .list_entities::<Grant>("grant")?
        .into_iter()
        .filter(|g| g.entitlement_id == e.id)
        .collect();
    let v = entitlement::value(&api.store, &e, &feature, &owner.subjects(), &grants, at)?;
    Ok(axum::Json(v).into_response())
}

async fn customer_value(
    State(api): State<Api>,
    Path((c, f)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> R {
    let owner = customer_owner(&api, &c)?;
    value_of(&api, &owner, &f, &raw).await
}

async fn subject_value(
    State(api): State<Api>,
    Path((s, f)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> R {
    value_of(&api, &subject_owner(&api, s)?, &f, &raw).await
}

async fn customer_access(State(api): State<Api>, Path(c): Path<String>) -> R {
    let owner = customer_owner(&api, &c)?;
    let mut out = HashMap::new();
    for e in entitlements_of(&api, &owner)? {
        let Some(feature) = api.store.get_entity::<Feature>("feature", &e.feature_id)? else {
            continue;
        };
        let grants: Vec<Grant> = api
            .store
            .list_entities::<Grant>("grant")?
            .into_iter()
            .filter(|g| g.entitlement_id == e.id)
            .collect();
        out.insert(
            e.feature_key.clone(),
            entitlement::value(
                &api.store,
                &e,
                &feature,
                &owner.subjects(),
                &grants,
                Utc::now(),
            )?,
        );
    }
    Ok(axum::Json(json!({"entitlements": out})).into_response())
}

async fn list_customer_entitlements(State(api): State<Api>, Path(c): Path<String>) -> R {
    let owner = customer_owner(&api, &c)?;
    let items: Vec<Entitlement> = entitlements_of(&api, &owner)?
        .into_iter()
        .map(with_period)
        .collect();
    Ok(axum::Json(
        json!({"items": items, "page": 1, "pageSize": items.len(), "totalCount": items.len()}),
    )
    .into_response())
}

async fn create_customer_entitlement(
    State(api): State<Api>,
    Path(c): Path<String>,
    body: Bytes,
) -> R {
    let owner = customer_owner(&api, &c)?;
    create_entitlement(&api, owner, &body).await
}

async fn get_customer_entitlement(
    State(api): State<Api>,
    Path((c, e)): Path<(String, String)>,
) -> R {
    let owner = customer_owner(&api, &c)?;
    Ok(axum::Json(with_period(entitlement_of(&api, &owner, &e)?)).into_response())
}

async fn list_subject_entitlements(State(api): State<Api>, Path(s): Path<String>) -> R {
    let items: Vec<Entitlement> = entitlements_of(&api, &subject_owner(&api, s)?)?
        .into_iter()
        .map(with_period)
        .collect();
    Ok(axum::Json(items).into_response())
}

async fn create_subject_entitlement(
    State(api): State<Api>,
    Path(s): Path<String>,
    body: Bytes,
) -> R {
    create_entitlement(&api, subject_owner(&api, s)?, &body).await
}

async fn create_grant(api: &Api, owner: Owner, e: &str, body: &Bytes) -> R {
    let ent = entitlement_of(api, &owner, e)?;
    if ent.kind != "metered" {
        return Err(bad(format!(
            "entitlement {} is {}: only metered entitlements take grants",
            ent.id, ent.kind
        )));
    }
    let mut g: Grant = json_body(body)?;
    g.normalise().map_err(bad)?;
    g.id = new_id();
    g.entitlement_id = ent.id.clone();
    g.created_at = Utc::now();
    api.store.put_entity("grant", &g.id, &g)?;
    api.store.flush().await?;
    Ok((StatusCode::CREATED, axum::Json(g)).into_response())
}

async fn list_grants(api: &Api, owner: Owner, e: &str) -> R {
    let ent = entitlement_of(api, &owner, e)?;
    let grants: Vec<Grant> = api
        .store
        .list_entities::<Grant>("grant")?
        .into_iter()
        .filter(|g| g.entitlement_id == ent.id)
        .collect();
    Ok(axum::Json(grants).into_response())
}

async fn create_customer_grant(
    State(api): State<Api>,
    Path((c, e)): Path<(String, String)>,
    body: Bytes,
) -> R {
    let owner = customer_owner(&api, &c)?;
    create_grant(&api, owner, &e, &body).await
}

async fn list_customer_grants(State(api): State<Api>, Path((c, e)): Path<(String, String)>) -> R {
    let owner = customer_owner(&api, &c)?;
    list_grants(&api, owner, &e).await
}

async fn create_subject_grant(
    State(api): State<Api>,
    Path((s, e)): Path<(String, String)>,
    body: Bytes,
) -> R {
    create_grant(&api, subject_owner(&api, s)?, &e, &body).await
}

async fn list_subject_grants(State(api): State<Api>, Path((s, e)): Path<(String, String)>) -> R {
    list_grants(&api, subject_owner(&api, s)?, &e).await
}

async fn reset(api: &Api, owner: Owner, e: &str, body: &Bytes) -> R {
    let mut ent = entitlement_of(api, &owner, e)?;
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|err| bad(format!("malformed JSON: {err}")))?
    };
    let now = Utc::now();
    let at = match input["effectiveAt"].as_str() {
        Some(t) => parse_time("effectiveAt", t)?,
        None => now,
    };
    if at > now {
        return Err(bad("effectiveAt: cannot be in the future"));
    }
    let at = DateTime::from_timestamp_millis(crate::store::minute_of(at.timestamp_millis()))
        .unwrap_or(at);
    let preserve = input["preserveOverage"]
        .as_bool()
        .unwrap_or(ent.preserve_overage_at_reset);
    if !input["retainAnchor"].as_bool().unwrap_or(false)
        && let Some(p) = &mut ent.usage_period
    {
        p.anchor = Some(at);
    }
    ent.resets.push(Reset {
        at,
        preserve_overage: preserve,
    });
    ent.updated_at = now;
    api.store.put_entity("entitlement", &ent.id, &ent)?;
    api.store.flush().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn reset_customer_entitlement(
    State(api): State<Api>,
    Path((c, e)): Path<(String, String)>,
    body: Bytes,
) -> R {
    let owner = customer_owner(&api, &c)?;
    reset(&api, owner, &e, &body).await
}

async fn reset_subject_entitlement(
    State(api): State<Api>,
    Path((s, e)): Path<(String, String)>,
    body: Bytes,
) -> R {
    reset(&api, subject_owner(&api, s)?, &e, &body).await
}

/// `WindowedBalanceHistory`: per window, usage and the balance at its start; per usage period
/// (burn-down), usage, overage and the balance at its end.
async fn history(api: &Api, owner: Owner, e: &str, raw: &Option<String>) -> R {
    let ent = entitlement_of(api, &owner, e)?;
    if ent.kind != "metered" {
        return Err(bad(format!(
            "entitlement {} is {}: only metered entitlements have history",
            ent.id, ent.kind
        )));
    }
    let mut from = None;
    let mut to = None;
    let mut size = None;
    let mut tz = chrono_tz::UTC;
    for (k, v) in query_pairs(raw) {
        match k.as_str() {
            "from" => from = Some(parse_time("from", &v)?),
            "to" => to = Some(parse_time("to", &v)?),
            "windowSize" => size = Some(v.parse::<query::WindowSize>().map_err(bad)?),
            "windowTimeZone" => {
                tz = v
                    .parse()
                    .map_err(|_| bad(format!("windowTimeZone: {v:?} is not an IANA time zone")))?
            }
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    let size = size.ok_or_else(|| bad("windowSize is required (MINUTE, HOUR, DAY or MONTH)"))?;
    let to = to.unwrap_or_else(Utc::now);
    let from = from.unwrap_or(ent.measure_usage_from.unwrap_or(ent.created_at));
    let feature = api
        .store
        .get_entity::<Feature>("feature", &ent.feature_id)?
        .ok_or_else(|| not_found(format!("feature {} not found", ent.feature_key)))?;
    let grants: Vec<Grant> = api
        .store
        .list_entities::<Grant>("grant")?
        .into_iter()
        .filter(|g| g.entitlement_id == ent.id)
        .collect();
    let subjects = owner.subjects();
    let mut windows = Vec::new();
    let mut start =
        query::window_bounds(crate::store::minute_of(from.timestamp_millis()), size, tz).0;
    while start < to {
        if windows.len() >= 1000 {
            return Err(bad(
                "more than 1000 windows: use a larger windowSize or a shorter range",
            ));
        }
        let end = query::window_bounds(start.timestamp_millis(), size, tz).1;
        let usage =
            entitlement::usage_between(&api.store, &feature, &subjects, start, end.min(to))?;
        let at_start = entitlement::value_at_instant(
            &api.store,
            &ent,
            &feature,
            &subjects,
            &grants,
            start.max(from),
        )?;
        windows.push(json!({
            "period": {"from": start, "to": end},
            "usage": rust_decimal::prelude::ToPrimitive::to_f64(&usage),
            "balanceAtStart": at_start.balance.and_then(|b| rust_decimal::prelude::ToPrimitive::to_f64(&b)),
        }));
        start = end;
    }
    let mut burndown = Vec::new();
    if let Some(p) = &ent.usage_period
        && let Ok(interval) = Interval::parse(&p.interval)
    {
        let anchor = p
            .anchor
            .or(ent.measure_usage_from)
            .unwrap_or(ent.created_at);
        let (mut ps, mut pe) = interval.period_at(anchor, from);
        while ps < to && burndown.len() < 1000 {
            let end = entitlement::value(
                &api.store,
                &ent,
                &feature,
                &subjects,
                &grants,
                pe.min(to) - chrono::Duration::minutes(1),
            )?;
            let f = |d: Option<rust_decimal::Decimal>| {
                d.and_then(|d| rust_decimal::prelude::ToPrimitive::to_f64(&d))
            };
            burndown.push(json!({
                "period": {"from": ps, "to": pe},
                "usage": f(end.usage),
                "overage": f(end.overage),
                "balanceAtEnd": f(end.balance),
            }));
            ps = pe;
            pe = interval.step(ps, 1);
        }
    }
    Ok(
        axum::Json(json!({"windowedHistory": windows, "burndownHistory": burndown}))
            .into_response(),
    )
}

async fn customer_history(
    State(api): State<Api>,
    Path((c, e)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> R {
    let owner = customer_owner(&api, &c)?;
    history(&api, owner, &e, &raw).await
}

async fn subject_history(
    State(api): State<Api>,
    Path((s, e)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> R {
    history(&api, subject_owner(&api, s)?, &e, &raw).await
}
