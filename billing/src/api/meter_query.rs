//! Meter queries: `GET /api/v1/meters/{idOrSlug}/query` (parameters in the query string) and
//! `POST /api/v1/meters/{idOrSlug}/query` (`MeterQueryRequest` in a JSON body). Both are turned
//! into one [`MeterQueryRequest`], checked once (every error names its field) and run by
//! [`crate::query::run`]; the answer is `MeterQueryResult` JSON, or CSV for `Accept: text/csv` (OpenMeter's columns,
//! with subjects' display names).

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;

use super::customers::customer_by;
use super::subjects::{self, Subject};
use super::{Api, Problem, R, bad, json_body, not_found, parse_time, query_pairs};
use crate::filter::{FilterString, Matcher, compile_group_filters};
use crate::meter::CompiledMeter;
use crate::query::{self, MeterQuery};

/// Most values `subject`, `filterCustomerId` and `groupBy` take each (OpenMeter's limit).
const MAX_ITEMS: usize = 100;

/// Meter query routes.
pub fn routes() -> Router<Api> {
    Router::new().route("/api/v1/meters/{id}/query", get(query_get).post(query_post))
}

/// `MeterQueryRequest` (the POST body; the GET's parameters are read into it too).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeterQueryRequest {
    /// For progress tracking in OpenMeter; checked and otherwise unused.
    pub client_id: Option<String>,
    /// Inclusive start (RFC 3339).
    pub from: Option<String>,
    /// End (RFC 3339).
    pub to: Option<String>,
    /// `MINUTE|HOUR|DAY|MONTH`; none for one total.
    pub window_size: Option<String>,
    /// IANA time zone of the windows (default UTC).
    pub window_time_zone: Option<String>,
    /// Subjects to include (also groups by subject).
    pub subject: Option<Vec<String>>,
    /// Customers (id or key) to include (also groups by customer).
    pub filter_customer_id: Option<Vec<String>>,
    /// Exact-match filters: any of the values (deprecated in OpenMeter).
    pub filter_group_by: Option<BTreeMap<String, Vec<String>>>,
    /// `FilterString` per group-by key.
    pub advanced_meter_group_by_filters: Option<BTreeMap<String, FilterString>>,
    /// Group-by keys; `subject` and `customer_id` are reserved.
    pub group_by: Option<Vec<String>>,
}

impl MeterQueryRequest {
    /// The GET form: `subject`, `filterCustomerId`, `groupBy` repeat; `filterGroupBy[key]=value`
    /// (deepObject); `advancedMeterGroupByFilters` is a JSON object.
    pub fn from_query(raw: &Option<String>) -> Result<Self, Problem> {
        let mut r = MeterQueryRequest::default();
        for (k, v) in query_pairs(raw) {
            match k.as_str() {
                "clientId" => r.client_id = Some(v),
                "from" => r.from = Some(v),
                "to" => r.to = Some(v),
                "windowSize" => r.window_size = Some(v),
                "windowTimeZone" => r.window_time_zone = Some(v),
                "subject" => r.subject.get_or_insert_with(Vec::new).push(v),
                "groupBy" => r.group_by.get_or_insert_with(Vec::new).push(v),
                "filterCustomerId" => r.filter_customer_id.get_or_insert_with(Vec::new).push(v),
                "advancedMeterGroupByFilters" => {
                    r.advanced_meter_group_by_filters =
                        Some(serde_json::from_str(&v).map_err(|e| {
                            bad(format!(
                                "advancedMeterGroupByFilters: not a JSON object of filters: {e}"
                            ))
                        })?)
                }
                other if other.starts_with("filterGroupBy[") && other.ends_with(']') => {
                    r.filter_group_by
                        .get_or_insert_with(BTreeMap::new)
                        .entry(other["filterGroupBy[".len()..other.len() - 1].to_owned())
                        .or_default()
                        .push(v);
                }
                other => return Err(bad(format!("unknown query parameter {other:?}"))),
            }
        }
        Ok(r)
    }

    /// Checks every field against `meter` and resolves customers into a [`MeterQuery`].
    pub async fn resolve(self, api: &Api, meter: &CompiledMeter) -> Result<MeterQuery, Problem> {
        let slug = &meter.meter.slug;
        if let Some(c) = &self.client_id
            && !(1..=36).contains(&c.chars().count())
        {
            return Err(bad("clientId: must be 1 to 36 characters"));
        }
        let from = self.from.map(|v| parse_time("from", &v)).transpose()?;
        let to = self.to.map(|v| parse_time("to", &v)).transpose()?;
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            return Err(bad(format!("from ({f}) must be before to ({t})")));
        }
        let window_size = self
            .window_size
            .map(|v| v.parse::<query::WindowSize>())
            .transpose()
            .map_err(bad)?;
        let tz = match self.window_time_zone {
            Some(v) => v
                .parse()
                .map_err(|_| bad(format!("windowTimeZone: {v:?} is not an IANA time zone")))?,
            None => chrono_tz::UTC,
        };
        let subjects = self.subject.unwrap_or_default();
        let customer_refs = self.filter_customer_id.unwrap_or_default();
        let group_by = self.group_by.unwrap_or_default();
        for (name, n) in [
            ("subject", subjects.len()),
            ("filterCustomerId", customer_refs.len()),
            ("groupBy", group_by.len()),
        ] {
            if n > MAX_ITEMS {
                return Err(bad(format!("{name}: at most {MAX_ITEMS} values, not {n}")));
            }
        }
        if subjects.iter().any(String::is_empty) {
            return Err(bad("subject: values must not be empty"));
        }
        for g in &group_by {
            if g == "customer_id" && customer_refs.is_empty() {
                return Err(bad("groupBy: customer_id needs filterCustomerId"));
            }
            if g != "subject" && g != "customer_id" && !meter.meter.group_by.contains_key(g) {
                return Err(bad(format!(
                    "groupBy: {g:?} is not a group-by of meter {slug}"
                )));
            }
        }
        let simple = self.filter_group_by.unwrap_or_default();
        let advanced = self.advanced_meter_group_by_filters.unwrap_or_default();
        if !simple.is_empty() && !advanced.is_empty() {
            return Err(bad(
                "filterGroupBy and advancedMeterGroupByFilters cannot be used together",
            ));
        }
        let is_group_by = |k: &str| meter.meter.group_by.contains_key(k);
        let mut filters =
            compile_group_filters("advancedMeterGroupByFilters", &advanced, is_group_by)
                .map_err(bad)?;
        for (k, values) in simple {
            if !is_group_by(&k) {
                return Err(bad(format!(
                    "filterGroupBy.{k}: not a group-by of meter {slug}"
                )));
            }
            if !values.is_empty() {
                filters.insert(k, Matcher::In(values));
            }
        }
        let mut customers = Vec::with_capacity(customer_refs.len());
        for c in &customer_refs {
            let customer = customer_by(api, c)
                .await?
                .ok_or_else(|| bad(format!("filterCustomerId: customer {c} not found")))?;
            let subjects = customer.subjects();
            customers.push((customer.id, subjects));
        }
        Ok(MeterQuery {
            from,
            to,
            window_size,
            tz,
            subjects,
            customers,
            group_by,
            filters,
        })
    }
}

async fn answer(api: &Api, id: &str, req: MeterQueryRequest, headers: &HeaderMap) -> R {
    let meter = api
        .store
        .meter(id)
        .ok_or_else(|| not_found(format!("meter {id} not found")))?;
    let q = req.resolve(api, &meter).await?;
    let result = query::run(&api.store, &meter, &q).await?;
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    if wants_csv {
        let names: BTreeMap<String, Option<String>> = api
            .store
            .list_entities::<Subject>(subjects::KIND)
            .await?
            .into_iter()
            .map(|s| (s.key, s.display_name))
            .collect();
        return Ok((
            [(header::CONTENT_TYPE, "text/csv")],
            query::to_csv(&result, &q, &names),
        )
            .into_response());
    }
    Ok(axum::Json(result).into_response())
}

async fn query_get(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> R {
    let req = MeterQueryRequest::from_query(&raw)?;
    answer(&api, &id, req, &headers).await
}

async fn query_post(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> R {
    let req: MeterQueryRequest = if body.iter().all(u8::is_ascii_whitespace) {
        MeterQueryRequest::default()
    } else {
        json_body(&body)?
    };
    answer(&api, &id, req, &headers).await
}
