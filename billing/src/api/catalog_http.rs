//! What the catalog's resources (plans, add-ons, plan add-ons) share over HTTP: their error
//! ([`Failure`], carrying OpenMeter's `extensions.validationErrors`), body parsing that names a
//! malformed field by JSONPath, and the list query (filters, `keyVersion[key]=n`, pages).

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::{Problem, bad, query_pairs};
use crate::catalog::versions::ListFilter;
use crate::catalog::{CatalogError, Status, ValidationIssue};
use crate::store::StoreError;

/// A catalog handler's error.
pub(crate) enum Failure {
    /// A plain problem.
    Problem(Problem),
    /// A catalog refusal.
    Catalog(CatalogError),
}

/// A catalog handler's result.
pub(crate) type CR = Result<Response, Failure>;

impl From<Problem> for Failure {
    fn from(p: Problem) -> Self {
        Failure::Problem(p)
    }
}

impl From<CatalogError> for Failure {
    fn from(e: CatalogError) -> Self {
        Failure::Catalog(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Problem(e.into())
    }
}

/// 400 with `extensions.validationErrors`.
pub(crate) fn validation_response(issues: &[ValidationIssue]) -> Response {
    let detail = CatalogError::Invalid(issues.to_vec()).to_string();
    let body = json!({
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": detail,
        "extensions": {"validationErrors": issues},
    });
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Problem(p) => p.into_response(),
            Failure::Catalog(CatalogError::Invalid(issues)) => validation_response(&issues),
            Failure::Catalog(CatalogError::Refused(m)) => bad(m).into_response(),
            Failure::Catalog(CatalogError::NotFound(m)) => {
                Problem(StatusCode::NOT_FOUND, m).into_response()
            }
            Failure::Catalog(CatalogError::Conflict(m)) => {
                Problem(StatusCode::CONFLICT, m).into_response()
            }
            Failure::Catalog(CatalogError::Store(e)) => Problem::from(e).into_response(),
        }
    }
}

/// The body parsed as `T`; a malformed field is a 400 whose `validationErrors` names it by
/// JSONPath.
pub(crate) fn catalog_body<T: for<'de> serde::Deserialize<'de>>(
    body: &Bytes,
) -> Result<T, Failure> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "$".to_owned()
        } else {
            format!("$.{path}")
        };
        let issue = ValidationIssue {
            field,
            code: "invalid_value".into(),
            message: format!("invalid request body: {}", e.inner()),
            severity: Some("critical".into()),
        };
        Failure::Catalog(CatalogError::Invalid(vec![issue]))
    })
}

/// A list query: filters, pages and order.
pub(crate) struct ListQuery {
    pub filter: ListFilter,
    pub include_latest: bool,
    pub page: usize,
    pub page_size: usize,
    pub descending: bool,
    pub order_by: String,
}

fn flag(name: &str, v: &str) -> Result<bool, Problem> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(bad(format!("{name}: {v:?} is not true or false"))),
    }
}

fn number(name: &str, v: &str, min: usize, max: usize) -> Result<usize, Problem> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| bad(format!("{name}: {v:?} must be an integer in {min}..={max}")))
}

/// Parses the query string of a list or get.
pub(crate) fn list_query(raw: &Option<String>) -> Result<ListQuery, Problem> {
    let mut q = ListQuery {
        filter: ListFilter::default(),
        include_latest: false,
        page: 1,
        page_size: 100,
        descending: false,
        order_by: "key".into(),
    };
    for (k, v) in query_pairs(raw) {
        let k = k.strip_suffix("[]").unwrap_or(&k).to_owned();
        match k.as_str() {
            "id" => q.filter.ids.push(v),
            "key" => q.filter.keys.push(v),
            "currency" => q.filter.currencies.push(v),
            "status" => q.filter.statuses.push(match v.as_str() {
                "draft" => Status::Draft,
                "active" => Status::Active,
                "archived" => Status::Archived,
                "scheduled" => Status::Scheduled,
                _ => {
                    return Err(bad(format!(
                        "status: {v:?} is not draft, active, archived or scheduled"
                    )));
                }
            }),
            "includeDeleted" => q.filter.include_deleted = flag("includeDeleted", &v)?,
            "includeLatest" => q.include_latest = flag("includeLatest", &v)?,
            "page" => q.page = number("page", &v, 1, usize::MAX)?,
            "pageSize" => q.page_size = number("pageSize", &v, 1, 1000)?,
            "order" => {
                q.descending = match v.as_str() {
                    "ASC" => false,
                    "DESC" => true,
                    _ => return Err(bad(format!("order: {v:?} is not ASC or DESC"))),
                }
            }
            "orderBy" => {
                if !matches!(
                    v.as_str(),
                    "id" | "key" | "version" | "created_at" | "updated_at"
                ) {
                    return Err(bad(format!(
                        "orderBy: {v:?} is not id, key, version, created_at or updated_at"
                    )));
                }
                q.order_by = v;
            }
            "keyVersion" => q.filter.key_versions.extend(key_versions_map(&v)?),
            other => {
                if let Some(key) = other
                    .strip_prefix("keyVersion[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    for version in v.split(',') {
                        let version = version.trim().parse::<i64>().map_err(|_| {
                            bad(format!(
                                "keyVersion[{key}]: {v:?} is not a list of versions"
                            ))
                        })?;
                        q.filter.key_versions.push((key.to_owned(), version));
                    }
                }
                // Other parameters (expand, …) are accepted and ignored, as OpenMeter does
                // for parameters it does not know.
            }
        }
    }
    Ok(q)
}

/// `keyVersion` as one value, the way OpenMeter's Python SDK sends it: a map of key to versions
/// (`{'pro': [1, 2]}`, Python's notation, or the same in JSON).
fn key_versions_map(v: &str) -> Result<Vec<(String, i64)>, Problem> {
    let parsed: std::collections::BTreeMap<String, Vec<i64>> =
        serde_json::from_str(&v.replace('\'', "\"")).map_err(|_| {
            bad(format!(
                "keyVersion: {v:?} is not a map of key to versions (use keyVersion[key]=version)"
            ))
        })?;
    Ok(parsed
        .into_iter()
        .flat_map(|(k, vs)| vs.into_iter().map(move |n| (k.clone(), n)))
        .collect())
}

/// `{totalCount, page, pageSize, items}` of `items` sorted as asked.
pub(crate) fn page<T: Serialize>(
    q: &ListQuery,
    mut items: Vec<T>,
    sort_key: impl Fn(&T, &str) -> String,
) -> Response {
    items.sort_by_key(|i| sort_key(i, &q.order_by));
    if q.descending {
        items.reverse();
    }
    let total = items.len();
    let items: Vec<T> = items
        .into_iter()
        .skip((q.page - 1).saturating_mul(q.page_size))
        .take(q.page_size)
        .collect();
    axum::Json(
        json!({"totalCount": total, "page": q.page, "pageSize": q.page_size, "items": items}),
    )
    .into_response()
}
