//! Meters: the list (`/meters`) and each meter's usage over time (`/meters/{slug}`) with a range,
//! a window size and a group-by, drawn as a chart and laid out as a table. The page builds the
//! API's own query string (`from`, `to`, `windowSize`, `groupBy`, `subject`) and runs it through
//! the API's query code ([`MeterQueryRequest::from_query`], `resolve`, [`query::run`]), so what
//! it shows is what `GET /api/v1/meters/{slug}/query` answers for that string, which the page
//! shows too; `/meters/{slug}/query.csv` is the same query as CSV ([`query::to_csv`]), for a plain
//! link (a link cannot send the API's `Accept: text/csv` or its Bearer token).

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Duration, Utc};
use maud::html;

use super::Console;
use super::chart::{self, COLOURS, Series};
use super::layout::{Banner, Nav, Page, PageError, dash, datetime, empty, page, quantity_f64};
use crate::api::meter_query::MeterQueryRequest;
use crate::api::query_pairs;
use crate::api::subjects::{self, Subject};
use crate::meter::CompiledMeter;
use crate::query::{self, MeterQuery, MeterQueryResult};

/// Rows shown in the table (the CSV has them all).
const MAX_ROWS: usize = 1000;

/// `GET /meters`.
pub async fn list(State(console): State<Console>) -> Page {
    let api = &console.api;
    let mut meters = api.store.meters();
    meters.sort_by(|a, b| a.meter.slug.cmp(&b.meter.slug));
    let content = html! {
        @if meters.is_empty() {
            (empty("No meters: declare them in billing.toml or POST /api/v1/meters."))
        } @else {
            table #meters {
                thead { tr { th { "slug" } th { "name" } th { "aggregation" } th { "event type" } th { "value" } th { "group by" } } }
                tbody {
                    @for m in &meters {
                        @let m = &m.meter;
                        tr {
                            td { a href=(format!("/meters/{}", m.slug)) { (m.slug) } }
                            td { (m.name.as_deref().unwrap_or("")) }
                            td { span.badge { (format!("{:?}", m.aggregation).to_uppercase()) } }
                            td { code { (m.event_type) } }
                            td { @if let Some(v) = &m.value_property { code { (v) } } @else { (dash()) } }
                            td { @for (k, path) in &m.group_by { code title=(path) { (k) } " " } }
                        }
                    }
                }
            }
        }
    };
    page(api, Nav::Meters, "Meters", Banner::None, content).await
}

/// The console's choices for a meter page.
struct Choice {
    range: &'static str,
    window: Option<&'static str>,
    group_by: Option<String>,
    subject: Option<String>,
}

const RANGES: &[(&str, &str, i64)] = &[
    ("1h", "last hour", 60),
    ("24h", "last 24 hours", 24 * 60),
    ("7d", "last 7 days", 7 * 24 * 60),
    ("30d", "last 30 days", 30 * 24 * 60),
    ("90d", "last 90 days", 90 * 24 * 60),
];
const WINDOWS: &[&str] = &["MINUTE", "HOUR", "DAY", "MONTH"];

impl Choice {
    fn read(raw: &Option<String>, meter: &CompiledMeter) -> Result<Choice, PageError> {
        let mut c = Choice {
            range: "24h",
            window: None,
            group_by: None,
            subject: None,
        };
        for (k, v) in query_pairs(raw) {
            match k.as_str() {
                "range" => {
                    c.range = RANGES
                        .iter()
                        .find(|r| r.0 == v)
                        .map(|r| r.0)
                        .ok_or_else(|| {
                            bad(format!("range: {v:?} is not one of 1h, 24h, 7d, 30d, 90d"))
                        })?;
                }
                "windowSize" if v.is_empty() || v == "none" => c.window = None,
                "windowSize" => {
                    c.window = Some(WINDOWS.iter().copied().find(|w| *w == v).ok_or_else(|| {
                        bad(format!(
                            "windowSize: {v:?} is not MINUTE, HOUR, DAY or MONTH"
                        ))
                    })?)
                }
                "groupBy" if v.is_empty() => c.group_by = None,
                "groupBy" => {
                    if v != "subject" && !meter.meter.group_by.contains_key(&v) {
                        return Err(bad(format!(
                            "groupBy: {v:?} is not a group-by of meter {}",
                            meter.meter.slug
                        )));
                    }
                    c.group_by = Some(v)
                }
                "subject" if v.trim().is_empty() => c.subject = None,
                "subject" => c.subject = Some(v.trim().to_owned()),
                other => return Err(bad(format!("unknown parameter {other:?}"))),
            }
        }
        if !raw.as_deref().unwrap_or("").contains("windowSize=") {
            c.window = Some(match c.range {
                "1h" => "MINUTE",
                "24h" => "HOUR",
                _ => "DAY",
            });
        }
        Ok(c)
    }

    /// The API's query string for this choice at `now`.
    fn api_query(&self, now: DateTime<Utc>) -> String {
        let minutes = RANGES
            .iter()
            .find(|r| r.0 == self.range)
            .map(|r| r.2)
            .unwrap_or(24 * 60);
        let to_ms = (now.timestamp_millis().div_euclid(60_000) + 1) * 60_000;
        let to = DateTime::<Utc>::from_timestamp_millis(to_ms).unwrap_or(now);
        let from = to - Duration::minutes(minutes);
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair(
            "from",
            &from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        q.append_pair("to", &to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        if let Some(w) = self.window {
            q.append_pair("windowSize", w);
        }
        if let Some(g) = &self.group_by {
            q.append_pair("groupBy", g);
        }
        if let Some(s) = &self.subject {
            q.append_pair("subject", s);
        }
        q.finish()
    }
}

fn bad(detail: String) -> PageError {
    PageError(StatusCode::BAD_REQUEST, detail)
}

fn meter_of(console: &Console, slug: &str) -> Result<std::sync::Arc<CompiledMeter>, PageError> {
    console
        .api
        .store
        .meter(slug)
        .ok_or_else(|| PageError(StatusCode::NOT_FOUND, format!("meter {slug} not found")))
}

/// Runs the API's query string `qs` on `meter` exactly as `GET …/query` does.
async fn run_api_query(
    console: &Console,
    meter: &CompiledMeter,
    qs: &str,
) -> Result<(MeterQuery, MeterQueryResult), PageError> {
    let req = MeterQueryRequest::from_query(&Some(qs.to_owned()))?;
    let q = req.resolve(&console.api, meter).await?;
    let result = query::run(&console.api.store, meter, &q).await?;
    Ok((q, result))
}

/// A row's series name: its subject and group-by values.
fn series_name(row: &query::MeterQueryRow) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(s) = &row.subject {
        parts.push(s.clone());
    }
    for v in row.group_by.values() {
        parts.push(v.clone().unwrap_or_else(|| "(none)".into()));
    }
    if parts.is_empty() {
        "total".into()
    } else {
        parts.join(" · ")
    }
}

/// `GET /meters/{slug}`.
pub async fn page_route(
    State(console): State<Console>,
    Path(slug): Path<String>,
    RawQuery(raw): RawQuery,
) -> Page {
    let meter = meter_of(&console, &slug)?;
    let choice = Choice::read(&raw, &meter)?;
    let now = console.api.now().await?;
    let qs = choice.api_query(now);
    let (q, result) = run_api_query(&console, &meter, &qs).await?;
    let m = &meter.meter;
    // Series for the chart: the largest eight.
    let mut by_series: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for row in &result.data {
        by_series
            .entry(series_name(row))
            .or_default()
            .push((row.window_start.timestamp_millis(), row.value));
    }
    let total_series = by_series.len();
    let mut series: Vec<Series> = by_series
        .into_iter()
        .map(|(name, points)| Series { name, points })
        .collect();
    series.sort_by(|a, b| {
        let sum = |s: &Series| s.points.iter().map(|p| p.1).sum::<f64>();
        sum(b).total_cmp(&sum(a)).then_with(|| a.name.cmp(&b.name))
    });
    series.truncate(COLOURS);
    let from_ms = q.from.map_or(0, |t| t.timestamp_millis());
    let to_ms = q.to.map_or(0, |t| t.timestamp_millis());
    let keys: Vec<String> = query::effective_group_by(&q);
    let api_path = format!("/api/v1/meters/{}/query?{qs}", m.slug);
    let csv_path = format!("/meters/{}/query.csv?{qs}", m.slug);
    let content = html! {
        dl.facts {
            dt { "aggregation" } dd { span.badge { (format!("{:?}", m.aggregation).to_uppercase()) } }
            dt { "event type" } dd { code { (m.event_type) } }
            @if let Some(v) = &m.value_property { dt { "value" } dd { code { (v) } } }
            @if let Some(d) = &m.description { dt { "description" } dd { (d) } }
        }
        form.filters method="get" action=(format!("/meters/{}", m.slug)) data-autosubmit {
            label { "range" select name="range" {
                @for (k, label, _) in RANGES { option value=(k) selected[*k == choice.range] { (label) } }
            } }
            label { "window" select name="windowSize" {
                option value="none" selected[choice.window.is_none()] { "one total" }
                @for w in WINDOWS { option value=(w) selected[choice.window == Some(*w)] { (w.to_lowercase()) } }
            } }
            label { "group by" select name="groupBy" {
                option value="" selected[choice.group_by.is_none()] { "nothing" }
                option value="subject" selected[choice.group_by.as_deref() == Some("subject")] { "subject" }
                @for k in m.group_by.keys() { option value=(k) selected[choice.group_by.as_deref() == Some(k.as_str())] { (k) } }
            } }
            label { "subject" input type="text" name="subject" value=(choice.subject.as_deref().unwrap_or("")) placeholder="all"; }
            button type="submit" { "Apply" }
        }
        p.muted {
            "Same as " code #api-query { "GET " (api_path) } " · "
            a #csv-link href=(csv_path) download=(format!("{}.csv", m.slug)) { "Download CSV" }
        }
        @if choice.window.is_some() {
            (chart::time_series(&format!("{} usage", m.slug), &series, from_ms, to_ms))
            @if total_series > series.len() {
                p.muted { "The chart shows the " (series.len()) " largest of " (total_series) " series; the table has them all." }
            }
        }
        @if result.data.is_empty() {
            (empty("No usage in this range."))
        } @else {
            table #usage {
                thead { tr {
                    th { "window start" } th { "window end" }
                    @for k in &keys { th { (k) } }
                    th.num { "value" }
                } }
                tbody {
                    @for row in result.data.iter().take(MAX_ROWS) {
                        tr {
                            td { (datetime(row.window_start)) }
                            td { (datetime(row.window_end)) }
                            @for k in &keys {
                                td { @match k.as_str() {
                                    "subject" => (row.subject.as_deref().unwrap_or("")),
                                    "customer_id" => (row.customer_id.as_deref().unwrap_or("")),
                                    other => (row.group_by.get(other).cloned().flatten().unwrap_or_default()),
                                } }
                            }
                            td.num data-value=(row.value) { (quantity_f64(row.value)) }
                        }
                    }
                }
            }
            @if result.data.len() > MAX_ROWS {
                p.muted { "The first " (MAX_ROWS) " of " (result.data.len()) " rows; the CSV has them all." }
            }
        }
    };
    page(
        &console.api,
        Nav::Meters,
        &format!("Meter {}", m.slug),
        Banner::None,
        content,
    )
    .await
}

/// `GET /meters/{slug}/query.csv?<the API's query string>`: the API's CSV.
pub async fn csv(
    State(console): State<Console>,
    Path(slug): Path<String>,
    RawQuery(raw): RawQuery,
) -> Page {
    let meter = meter_of(&console, &slug)?;
    let (q, result) = run_api_query(&console, &meter, raw.as_deref().unwrap_or("")).await?;
    let names: BTreeMap<String, Option<String>> = console
        .api
        .store
        .list_entities::<Subject>(subjects::KIND)
        .await?
        .into_iter()
        .map(|s| (s.key, s.display_name))
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.csv\"", meter.meter.slug),
            ),
        ],
        query::to_csv(&result, &q, &names),
    )
        .into_response())
}
