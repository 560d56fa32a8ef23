//! Grants: `GET/POST …/entitlements/{idOrFeatureKey}/grants` on the v2 customer path (the list
//! paginated as `GrantV2PaginatedResponse`) and the v1 subject path (a plain list); every grant
//! (`GET /api/v2/grants`, `GET /api/v1/grants`); voiding (`DELETE /api/v1/grants/{grantId}`).

use std::collections::{HashMap, HashSet};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::customers::customer_by;
use super::entitlements::{Owner, customer_owner, entitlement_of, subject_owner};
use super::{
    Api, Problem, R, bad, conflict, json_body, new_id, not_found, parse_time, query_pairs,
};
use crate::entitlement::{Customer, Entitlement, Grant, Interval};

/// Grant routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/api/v2/customers/{c}/entitlements/{e}/grants",
            get(list_customer_grants).post(create_customer_grant),
        )
        .route(
            "/api/v1/subjects/{s}/entitlements/{e}/grants",
            get(list_subject_grants).post(create_subject_grant),
        )
        .route("/api/v1/grants", get(list_all_grants_v1))
        .route("/api/v2/grants", get(list_all_grants_v2))
        .route("/api/v1/grants/{id}", delete(void_grant))
}

async fn create_grant(api: &Api, owner: Owner, e: &str, body: &Bytes) -> R {
    let g = create(api, owner, e, body).await?;
    Ok((StatusCode::CREATED, axum::Json(g)).into_response())
}

/// Creates the grant in `body` (an `EntitlementGrantCreateInput` JSON document) on `owner`'s
/// entitlement `e` (id or feature key) after the API's checks; the console's form goes through
/// here too.
pub(crate) async fn create(
    api: &Api,
    owner: Owner,
    e: &str,
    body: &Bytes,
) -> Result<Grant, Problem> {
    let ent = entitlement_of(api, &owner, e).await?;
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
    g.created_at = api.now().await?;
    api.store.put_entity("grant", &g.id, &g).await?;
    Ok(g)
}

async fn grants_of(api: &Api, owner: &Owner, e: &str) -> Result<Vec<Grant>, Problem> {
    let ent = entitlement_of(api, owner, e).await?;
    Ok(api
        .store
        .list_entities::<Grant>("grant")
        .await?
        .into_iter()
        .filter(|g| g.entitlement_id == ent.id)
        .collect())
}

/// The v1 subject path lists a plain `EntitlementGrant[]`.
async fn list_grants(api: &Api, owner: Owner, e: &str) -> R {
    Ok(axum::Json(grants_of(api, &owner, e).await?).into_response())
}

async fn create_customer_grant(
    State(api): State<Api>,
    Path((c, e)): Path<(String, String)>,
    body: Bytes,
) -> R {
    let owner = customer_owner(&api, &c).await?;
    create_grant(&api, owner, &e, &body).await
}

/// Paging and order of a grant listing (OpenMeter's `Pagination`, `LimitOffset` and
/// `GrantOrderByOrdering` parameters, plus `includeDeleted`).
struct Listing {
    page: Option<usize>,
    page_size: Option<usize>,
    offset: Option<usize>,
    limit: Option<usize>,
    descending: bool,
    by_id: bool,
}

impl Listing {
    /// Reads the listing parameters; any other parameter goes to `extra`, which says whether it
    /// knew it.
    fn parse(
        raw: &Option<String>,
        mut extra: impl FnMut(&str, String) -> Result<bool, Problem>,
    ) -> Result<Listing, Problem> {
        let mut l = Listing {
            page: None,
            page_size: None,
            offset: None,
            limit: None,
            descending: false,
            by_id: false,
        };
        let number = |name: &str, v: &str, min: usize, max: usize| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    bad(format!(
                        "{name}: {v:?} is not a whole number in {min}..={max}"
                    ))
                })
        };
        for (k, v) in query_pairs(raw) {
            match k.as_str() {
                "page" => l.page = Some(number("page", &v, 1, usize::MAX)?),
                "pageSize" => l.page_size = Some(number("pageSize", &v, 1, 1000)?),
                "offset" => l.offset = Some(number("offset", &v, 0, usize::MAX)?),
                "limit" => l.limit = Some(number("limit", &v, 1, 1000)?),
                "order" => {
                    l.descending = match v.as_str() {
                        "ASC" => false,
                        "DESC" => true,
                        _ => return Err(bad(format!("order: {v:?} is not ASC or DESC"))),
                    }
                }
                "orderBy" => {
                    l.by_id = match v.as_str() {
                        "id" => true,
                        "createdAt" | "updatedAt" => false,
                        _ => {
                            return Err(bad(format!(
                                "orderBy: {v:?} is not id, createdAt or updatedAt"
                            )));
                        }
                    }
                }
                "includeDeleted" => {
                    // Grants are never deleted here (voided ones stay listed with voidedAt).
                    if v != "true" && v != "false" {
                        return Err(bad(format!("includeDeleted: {v:?} is not true or false")));
                    }
                }
                other => {
                    if !extra(other, v)? {
                        return Err(bad(format!("unknown query parameter {other:?}")));
                    }
                }
            }
        }
        Ok(l)
    }

    /// Whether the caller asked for a page (the v1 list answers a plain array otherwise).
    fn paged(&self) -> bool {
        self.page.is_some() || self.page_size.is_some()
    }

    /// Sorted grants as a list.
    fn sorted(&self, mut grants: Vec<Grant>) -> Vec<Grant> {
        // Grants are never updated, so updatedAt is createdAt.
        grants.sort_by(|a, b| {
            if self.by_id {
                a.id.cmp(&b.id)
            } else {
                (a.created_at, &a.id).cmp(&(b.created_at, &b.id))
            }
        });
        if self.descending {
            grants.reverse();
        }
        grants
    }

    /// `{items, page, pageSize, totalCount}`: `page`/`pageSize` (default 1 and 100); the
    /// deprecated `offset`/`limit` only when neither of those is given (OpenMeter's rule).
    fn page_of(&self, grants: Vec<Grant>) -> Value {
        let grants = self.sorted(grants);
        let total = grants.len();
        let (skip, size, page) = if !self.paged() && (self.offset.is_some() || self.limit.is_some())
        {
            let limit = self.limit.unwrap_or(100);
            let offset = self.offset.unwrap_or(0);
            (offset, limit, offset / limit + 1)
        } else {
            let page = self.page.unwrap_or(1);
            let size = self.page_size.unwrap_or(100);
            (page.saturating_sub(1).saturating_mul(size), size, page)
        };
        let items: Vec<Grant> = grants.into_iter().skip(skip).take(size).collect();
        json!({"items": items, "page": page, "pageSize": size, "totalCount": total})
    }
}

/// `GET /api/v2/customers/{c}/entitlements/{e}/grants`: `GrantV2PaginatedResponse`.
async fn list_customer_grants(
    State(api): State<Api>,
    Path((c, e)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> R {
    let listing = Listing::parse(&raw, |_, _| Ok(false))?;
    let owner = customer_owner(&api, &c).await?;
    let grants = grants_of(&api, &owner, &e).await?;
    Ok(axum::Json(listing.page_of(grants)).into_response())
}

/// Every grant whose entitlement passes `keep`.
async fn grants_where(
    api: &Api,
    keep: impl Fn(&Entitlement) -> bool,
) -> Result<Vec<Grant>, Problem> {
    let entitlements: HashMap<String, Entitlement> = api
        .store
        .list_entities::<Entitlement>("entitlement")
        .await?
        .into_iter()
        .map(|e| (e.id.clone(), e))
        .collect();
    Ok(api
        .store
        .list_entities::<Grant>("grant")
        .await?
        .into_iter()
        .filter(|g| entitlements.get(&g.entitlement_id).is_some_and(&keep))
        .collect())
}

/// `GET /api/v2/grants?feature&customer`: every grant, `GrantV2PaginatedResponse`. `feature`
/// (key or id) and `customer` (id or key) repeat; an unknown customer is a 400.
async fn list_all_grants_v2(State(api): State<Api>, RawQuery(raw): RawQuery) -> R {
    let mut features = Vec::new();
    let mut customer_refs = Vec::new();
    let listing = Listing::parse(&raw, |k, v| {
        match k {
            "feature" => features.push(v),
            "customer" => customer_refs.push(v),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let mut customers = HashSet::new();
    for c in &customer_refs {
        let customer = customer_by(&api, c)
            .await?
            .ok_or_else(|| bad(format!("customer: customer {c} not found")))?;
        customers.insert(customer.id);
    }
    let grants = grants_where(&api, |e| {
        (features.is_empty()
            || features
                .iter()
                .any(|f| *f == e.feature_key || *f == e.feature_id))
            && (customers.is_empty()
                || e.customer_id
                    .as_ref()
                    .is_some_and(|c| customers.contains(c)))
    })
    .await?;
    Ok(axum::Json(listing.page_of(grants)).into_response())
}

/// `GET /api/v1/grants?feature&subject`: every grant; a plain list unless `page` or `pageSize`
/// is given (then the paginated shape). `subject` matches an entitlement's subject or a subject
/// of its customer.
async fn list_all_grants_v1(State(api): State<Api>, RawQuery(raw): RawQuery) -> R {
    let mut features = Vec::new();
    let mut subjects = Vec::new();
    let listing = Listing::parse(&raw, |k, v| {
        match k {
            "feature" => features.push(v),
            "subject" => subjects.push(v),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let customers = api.store.list_entities::<Customer>("customer").await?;
    let grants = grants_where(&api, |e| {
        let subject_ok = subjects.is_empty()
            || subjects.iter().any(|s| {
                e.subject_key.as_ref() == Some(s)
                    || customers
                        .iter()
                        .any(|c| e.customer_id.as_ref() == Some(&c.id) && c.subjects().contains(s))
            });
        subject_ok
            && (features.is_empty()
                || features
                    .iter()
                    .any(|f| *f == e.feature_key || *f == e.feature_id))
    })
    .await?;
    if listing.paged() {
        return Ok(axum::Json(listing.page_of(grants)).into_response());
    }
    let mut grants = listing.sorted(grants);
    if let Some(offset) = listing.offset {
        grants = grants.into_iter().skip(offset).collect();
    }
    if let Some(limit) = listing.limit {
        grants.truncate(limit);
    }
    Ok(axum::Json(grants).into_response())
}

/// `DELETE /api/v1/grants/{grantId}?at=`: voids the grant from `at` (default now; not in the
/// future, not before its entitlement's current usage period; truncated to the minute). Usage
/// it already covered stays covered; from `at` on it burns nothing and its balance is gone.
async fn void_grant(State(api): State<Api>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> R {
    let mut at = None;
    for (k, v) in query_pairs(&raw) {
        match k.as_str() {
            "at" => at = Some(parse_time("at", &v)?),
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    let mut grant = api
        .store
        .get_entity::<Grant>("grant", &id)
        .await?
        .ok_or_else(|| not_found(format!("grant {id} not found")))?;
    if let Some(v) = grant.voided_at {
        return Err(conflict(format!("grant {id} was already voided at {v}")));
    }
    let now = api.now().await?;
    let at = at.unwrap_or(now);
    if at > now {
        return Err(bad("at: cannot be in the future"));
    }
    if let Some(ent) = api
        .store
        .get_entity::<Entitlement>("entitlement", &grant.entitlement_id)
        .await?
        && let Some(period_start) = current_period_start(&ent, now)
        && at < period_start
    {
        return Err(bad(format!(
            "at: {at} is before the entitlement's current usage period ({period_start})"
        )));
    }
    let at = DateTime::from_timestamp_millis(crate::store::minute_of(at.timestamp_millis()))
        .unwrap_or(at);
    grant.voided_at = Some(at);
    api.store.put_entity("grant", &grant.id, &grant).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Start of the usage period `at` falls in, when the entitlement has a usage period.
fn current_period_start(ent: &Entitlement, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let p = ent.usage_period.as_ref()?;
    let interval = Interval::parse(&p.interval).ok()?;
    let anchor = p
        .anchor
        .or(ent.measure_usage_from)
        .unwrap_or(ent.created_at);
    let start = interval.period_at(anchor, at).0;
    // A reset starts a period too.
    Some(
        ent.resets
            .iter()
            .map(|r| r.at)
            .filter(|r| *r <= at)
            .fold(start, DateTime::max),
    )
}

async fn create_subject_grant(
    State(api): State<Api>,
    Path((s, e)): Path<(String, String)>,
    body: Bytes,
) -> R {
    create_grant(&api, subject_owner(&api, s).await?, &e, &body).await
}

async fn list_subject_grants(State(api): State<Api>, Path((s, e)): Path<(String, String)>) -> R {
    list_grants(&api, subject_owner(&api, s).await?, &e).await
}
