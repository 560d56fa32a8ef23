//! `[sources.runai]`: NVIDIA Run:ai workload or pod metrics on a schedule.
//!
//! * Auth: `POST /api/v1/token` `{"grantType":"app_token","AppId","AppSecret"}` →
//!   `{"accessToken"}`, sent as a Bearer token; fetched again when its JWT `exp` is within 30 s,
//!   missing, or a request answers 401 (then that request is retried once).
//! * Listing: `GET /api/v1/workloads` (running phases, then `runningPods > 0`) or
//!   `GET /api/v1/workloads/pods?verbosity=full&completed=false`, `limit=page_size`, paging by
//!   the server's own `next` offset. OpenMeter's collector counted the offset after its
//!   client-side filter (`offset = len(kept)`), so a page holding filtered-out workloads made
//!   the next page start too early (overlap) or a short count skip one; here the offset only
//!   ever comes from the server (and must grow).
//! * Metrics: for each resource `GET …/{id}/metrics` (pods: `/workloads/{wid}/pods/{pid}/
//!   metrics`) with at most 9 `metricType`s a request, over the window `[t − interval −
//!   metrics_offset, t − metrics_offset]`, `numberOfSamples=1`; the last value of each counts,
//!   none counts 0. A resource whose metrics fail is skipped (counted); a failed listing loses
//!   the tick (counted).
//! * One event per resource per tick: `type` `run-ai`, `source` `run_ai`, `time` the window's
//!   end, `subject` the resource's `subject_field`, `data` = the resource's ids and names,
//!   `duration_seconds`, `metrics{TYPE: value}` and `metric_seconds{TYPE: value × duration}`,
//!   and an id derived from (resource type, id, window end, duration): a repeated tick
//!   dedupes.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use chrono::{DateTime, TimeDelta, Utc};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use super::pull::{Pull, derive_id, rfc3339, scalar_text};
use super::schedule::Schedule;
use crate::buffer::StoredEvent;
use crate::config::{RunaiResource, RunaiSource, pull::duration};

/// The most metric types Run:ai takes in one request.
const METRICS_PER_REQUEST: usize = 9;

/// The workload phases that are not running (asked of the server, as OpenMeter does).
const NOT_RUNNING: &str = "phase!=Creating,phase!=Initializing,phase!=Resuming,phase!=Pending,phase!=Updating,phase!=Stopped,phase!=Stopping,phase!=Failed,phase!=Completed,phase!=Terminating,phase!=Unknown";

/// Resource fields copied into `data` when present.
const KEPT_FIELDS: [&str; 12] = [
    "id",
    "name",
    "workloadId",
    "workloadName",
    "tenantId",
    "projectId",
    "projectName",
    "departmentId",
    "departmentName",
    "clusterId",
    "nodepool",
    "allocatedResources",
];

/// A running Run:ai source.
pub struct Runai {
    config: RunaiSource,
    schedule: Schedule,
    offset: TimeDelta,
    client: reqwest::Client,
    base: String,
    token: Mutex<Option<(String, i64)>>,
    pull: Pull,
}

impl Runai {
    /// A source from its (validated) settings.
    pub fn new(config: RunaiSource, pull: Pull) -> anyhow::Result<Runai> {
        let schedule = Schedule::parse(&config.schedule).map_err(anyhow::Error::msg)?;
        let offset = TimeDelta::from_std(
            duration("metrics_offset", &config.metrics_offset).map_err(anyhow::Error::msg)?,
        )?;
        let timeout: Duration = duration("timeout", &config.timeout).map_err(anyhow::Error::msg)?;
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        let base = config.url.trim_end_matches('/').to_owned();
        Ok(Runai {
            config,
            schedule,
            offset,
            client,
            base,
            token: Mutex::new(None),
            pull,
        })
    }

    /// Ticks until the agent stops.
    pub async fn run(mut self) {
        tracing::info!(url = %self.config.url, resource_type = ?self.config.resource_type, schedule = %self.config.schedule, "Run:ai source started");
        loop {
            let Some(tick) = self.schedule.next_after(Utc::now()) else {
                return;
            };
            if self.pull.sleep_until(tick).await.is_err() {
                return;
            }
            match self.tick(tick).await {
                Ok(events) => {
                    if self.pull.store(&events).await.is_err() {
                        return;
                    }
                    self.pull.tick_done(tick - self.offset);
                }
                Err(e) => {
                    self.pull.errors(1);
                    tracing::warn!(error = %format!("{e:#}"), tick = %rfc3339(tick), "Run:ai listing failed; this tick is lost");
                }
            }
        }
    }

    /// The events of the tick at `tick`.
    pub async fn tick(&self, tick: DateTime<Utc>) -> anyhow::Result<Vec<StoredEvent>> {
        let interval = self.schedule.interval_at(tick);
        let end = tick - self.offset;
        let start = end - interval;
        let d = interval.num_seconds();
        let resources = self.list().await?;
        let received_ms = Utc::now().timestamp_millis();
        let (kind, ty) = match self.config.resource_type {
            RunaiResource::Workload => ("workload", "workload"),
            RunaiResource::Pod => ("pod", "pod"),
        };
        let mut events = Vec::new();
        for r in resources {
            let id = r.get("id").and_then(scalar_text).unwrap_or_default();
            let Some(subject) = r.get(&self.config.subject_field).and_then(scalar_text) else {
                self.pull.errors(1);
                tracing::warn!(resource = %id, field = %self.config.subject_field, "Run:ai {kind} without the subject field skipped");
                continue;
            };
            let metrics = match self.metrics(&r, start, end).await {
                Ok(m) => m,
                Err(e) => {
                    self.pull.errors(1);
                    tracing::warn!(resource = %id, error = %format!("{e:#}"), "Run:ai metrics failed; {kind} skipped this tick");
                    continue;
                }
            };
            let mut data = Map::new();
            data.insert("resource_type".into(), json!(ty));
            for f in KEPT_FIELDS {
                if let Some(v) = r.get(f) {
                    data.insert(f.to_owned(), v.clone());
                }
            }
            data.insert("duration_seconds".into(), json!(d));
            let seconds: Map<String, Value> = metrics
                .iter()
                .map(|(k, v)| (k.clone(), json!(v.as_f64().unwrap_or(0.0) * d as f64)))
                .collect();
            data.insert("metrics".into(), Value::Object(metrics));
            data.insert("metric_seconds".into(), Value::Object(seconds));
            let time = rfc3339(end);
            events.push(StoredEvent {
                id: derive_id(&["run_ai", ty, &id, &time, &d.to_string()]),
                source: self.config.source.clone(),
                ty: self.config.event_type.clone(),
                subject,
                time,
                data: Value::Object(data).to_string(),
                received_ms,
            });
        }
        Ok(events)
    }

    /// Every running resource, page by page, with the server's offsets.
    async fn list(&self) -> anyhow::Result<Vec<Value>> {
        let (path, field) = match self.config.resource_type {
            RunaiResource::Workload => ("/api/v1/workloads", "workloads"),
            RunaiResource::Pod => ("/api/v1/workloads/pods", "pods"),
        };
        let limit = self.config.page_size.to_string();
        let mut out = Vec::new();
        let mut offset: u64 = 0;
        loop {
            let off = offset.to_string();
            let mut query = vec![("limit", limit.as_str()), ("offset", off.as_str())];
            match self.config.resource_type {
                RunaiResource::Workload => query.push(("filterBy", NOT_RUNNING)),
                RunaiResource::Pod => {
                    query.push(("verbosity", "full"));
                    query.push(("completed", "false"));
                }
            }
            let page = self.get(path, &query).await?;
            let items = page
                .get(field)
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow!("GET {path}: no {field:?} array in the answer"))?;
            let n = items.len() as u64;
            for item in items {
                let keep = match self.config.resource_type {
                    // Filtered after the page's offset is known: never moves the paging.
                    RunaiResource::Workload => {
                        item.get("runningPods").and_then(Value::as_i64).unwrap_or(0) > 0
                    }
                    RunaiResource::Pod => true,
                };
                if keep {
                    out.push(item.clone());
                }
            }
            let next = page.get("next").and_then(Value::as_u64).unwrap_or(0);
            if n == 0 || next == 0 {
                return Ok(out);
            }
            if next <= offset {
                bail!("GET {path}: the server's next offset {next} does not move past {offset}");
            }
            offset = next;
        }
    }

    /// The last value of each configured metric for resource `r` in `[start, end]`.
    async fn metrics(
        &self,
        r: &Value,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> anyhow::Result<Map<String, Value>> {
        let id = r
            .get("id")
            .and_then(scalar_text)
            .ok_or_else(|| anyhow!("no id"))?;
        let path = match self.config.resource_type {
            RunaiResource::Workload => format!("/api/v1/workloads/{id}/metrics"),
            RunaiResource::Pod => {
                let wid = r
                    .get("workloadId")
                    .and_then(scalar_text)
                    .ok_or_else(|| anyhow!("pod {id} has no workloadId"))?;
                format!("/api/v1/workloads/{wid}/pods/{id}/metrics")
            }
        };
        let (start, end) = (rfc3339(start), rfc3339(end));
        let mut values: Map<String, Value> = self
            .config
            .metrics
            .iter()
            .map(|m| (m.clone(), json!(0.0)))
            .collect();
        for chunk in self.config.metrics.chunks(METRICS_PER_REQUEST) {
            let types = chunk.join(",");
            let answer = self
                .get(
                    &path,
                    &[
                        ("metricType", types.as_str()),
                        ("start", start.as_str()),
                        ("end", end.as_str()),
                        ("numberOfSamples", "1"),
                    ],
                )
                .await?;
            let measurements = answer
                .get("measurements")
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow!("GET {path}: no \"measurements\" array"))?;
            for m in measurements {
                let Some(ty) = m.get("type").and_then(Value::as_str) else {
                    continue;
                };
                let last = m
                    .get("values")
                    .and_then(Value::as_array)
                    .and_then(|v| v.last())
                    .and_then(|v| v.get("value"));
                let number = match last {
                    None => 0.0,
                    Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
                    Some(Value::String(s)) => s
                        .parse::<f64>()
                        .with_context(|| format!("{ty}: value {s:?} is not a number"))?,
                    Some(other) => bail!("{ty}: value {other} is not a number"),
                };
                if values.contains_key(ty) {
                    values.insert(ty.to_owned(), json!(number));
                }
            }
        }
        Ok(values)
    }

    /// A GET with the token, fetching a new one on 401 and retrying once.
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let resp = self
                .client
                .get(format!("{}{path}", self.base))
                .query(query)
                .bearer_auth(&token)
                .send()
                .await
                .with_context(|| format!("GET {path}"))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                *self.token.lock().await = None;
                continue;
            }
            let body = resp.text().await?;
            if !status.is_success() {
                bail!("GET {path}: HTTP {status}: {}", truncate(&body));
            }
            return serde_json::from_str(&body)
                .with_context(|| format!("GET {path}: not JSON: {}", truncate(&body)));
        }
        bail!("GET {path}: HTTP 401 with a fresh token: check sources.runai.app_id and app_secret")
    }

    /// A valid access token (one refresh at a time).
    async fn token(&self) -> anyhow::Result<String> {
        let mut held = self.token.lock().await;
        if let Some((token, exp)) = held.as_ref()
            && *exp > Utc::now().timestamp() + 30
        {
            return Ok(token.clone());
        }
        let resp = self
            .client
            .post(format!("{}/api/v1/token", self.base))
            .json(&json!({
                "grantType": "app_token",
                "AppId": self.config.app_id,
                "AppSecret": self.config.app_secret,
            }))
            .send()
            .await
            .context("POST /api/v1/token")?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!(
                "POST /api/v1/token: HTTP {status} (check sources.runai.app_id and app_secret): {}",
                truncate(&body)
            );
        }
        let token = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("accessToken")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .ok_or_else(|| anyhow!("POST /api/v1/token: no accessToken in {}", truncate(&body)))?;
        // No `exp` (or not a JWT): use it for this tick only.
        let exp = jwt_exp(&token).unwrap_or(0);
        *held = Some((token.clone(), exp));
        Ok(token)
    }
}

/// The `exp` claim of a JWT (signature not checked: the server checks it).
fn jwt_exp(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_i64()
}

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_expiry_of_a_jwt() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":1795649957}"#);
        assert_eq!(jwt_exp(&format!("h.{payload}.s")), Some(1_795_649_957));
        assert_eq!(jwt_exp("opaque"), None);
    }
}
