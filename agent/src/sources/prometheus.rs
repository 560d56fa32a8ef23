//! `[[sources.prometheus]]`: PromQL instant queries on a schedule, one event per series per
//! tick (what OpenMeter's `prometheus` collector input does, without its bugs).
//!
//! * Each tick `t` evaluates every query at `t − query_offset` (`POST /api/v1/query` with
//!   `query` and `time`, retried as a GET where POST is refused: 403, 405, 501).
//! * Each series of a vector result becomes an event: `type` = the query's name, `source` =
//!   `prometheus`, `subject` = the value of `subject_label`, `time` = the evaluation time,
//!   `data` = `{value, metric}` with `value` a number (OpenMeter's mapping left the
//!   `[ts, "str"]` pair there), and an id derived from (query name, labels, evaluation time): a
//!   repeated or retried tick gives the same ids and dedupes.
//! * Progress is kept per query in sled (the last tick stored). A query that fails is retried
//!   at the next tick with the ticks it missed, and so are the ticks missed while the agent was
//!   down — Prometheus answers for a past `time` — up to `max_catch_up` per query; one failing
//!   query never loses the other queries' tick (OpenMeter's input dropped the whole tick).
//! * A series without the subject label is skipped and counted as an error.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, TimeDelta, Utc};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};

use super::pull::{Pull, Stopped, derive_id, rfc3339};
use super::schedule::Schedule;
use crate::buffer::StoredEvent;
use crate::config::{PromQuery, PrometheusSource, pull::duration};

/// A running Prometheus source.
pub struct Prometheus {
    config: PrometheusSource,
    schedule: Schedule,
    offset: TimeDelta,
    client: reqwest::Client,
    endpoint: reqwest::Url,
    pull: Pull,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<AnswerData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct AnswerData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Value,
}

#[derive(Deserialize)]
struct Sample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

impl Prometheus {
    /// A source from its (validated) settings.
    pub fn new(config: PrometheusSource, pull: Pull) -> anyhow::Result<Prometheus> {
        let schedule = Schedule::parse(&config.schedule).map_err(anyhow::Error::msg)?;
        let offset = TimeDelta::from_std(
            duration("query_offset", &config.query_offset).map_err(anyhow::Error::msg)?,
        )?;
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            headers.insert(
                HeaderName::from_bytes(k.as_bytes())?,
                HeaderValue::from_str(v)?,
            );
        }
        let timeout: Duration = duration("timeout", &config.timeout).map_err(anyhow::Error::msg)?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .default_headers(headers)
            .build()?;
        let base = config.url.trim_end_matches('/');
        let endpoint = reqwest::Url::parse(&format!("{base}/api/v1/query"))
            .with_context(|| format!("url {:?}", config.url))?;
        Ok(Prometheus {
            config,
            schedule,
            offset,
            client,
            endpoint,
            pull,
        })
    }

    /// Ticks until the agent stops.
    pub async fn run(mut self) {
        tracing::info!(name = %self.pull.name, url = %self.config.url, schedule = %self.config.schedule, "Prometheus source started");
        loop {
            let now = Utc::now();
            if self.catch_up(now).await.is_err() {
                return;
            }
            let Some(next) = self.schedule.next_after(now) else {
                tracing::error!(name = %self.pull.name, "the schedule has no further ticks");
                return;
            };
            if self.pull.sleep_until(next).await.is_err() {
                return;
            }
        }
    }

    /// Evaluates every tick up to `now` that a query has not stored yet.
    pub async fn catch_up(&mut self, now: DateTime<Utc>) -> Result<(), Stopped> {
        let mut newest_everywhere: Option<DateTime<Utc>> = None;
        let mut any = false;
        let queries = self.config.queries.clone();
        for q in &queries {
            let what = format!("query/{}", q.name);
            let last = match self.pull.progress_ms(&what) {
                Some(ms) => DateTime::from_timestamp_millis(ms).unwrap_or(now),
                // A new query starts with the newest tick, not the history.
                None => self
                    .schedule
                    .latest_at_or_before(now)
                    .map_or(now, |t| t - TimeDelta::milliseconds(1)),
            };
            let limit = self.config.max_catch_up.max(1) as usize;
            let (ticks, skipped) = self.schedule.ticks_between(last, now, limit);
            if skipped > 0 {
                self.pull.errors(skipped);
                tracing::warn!(name = %self.pull.name, query = %q.name, skipped, max_catch_up = limit, "ticks older than max_catch_up were skipped");
            }
            let mut done = last;
            for tick in ticks {
                if self.pull.stopping() {
                    return Err(Stopped);
                }
                any = true;
                let at = tick - self.offset;
                match self.evaluate(q, at).await {
                    Ok((events, unlabelled)) => {
                        if unlabelled > 0 {
                            self.pull.errors(unlabelled);
                            tracing::warn!(name = %self.pull.name, query = %q.name, series = unlabelled, label = %self.config.subject_label, "series without the subject label skipped");
                        }
                        self.pull.store(&events).await?;
                        self.pull
                            .save_progress_ms(&what, tick.timestamp_millis())
                            .await;
                        done = tick;
                    }
                    Err(e) => {
                        self.pull.errors(1);
                        tracing::warn!(name = %self.pull.name, query = %q.name, time = %rfc3339(at), error = %format!("{e:#}"), "query failed; retried at the next tick");
                        break;
                    }
                }
            }
            newest_everywhere =
                Some(newest_everywhere.map_or(done, |n: DateTime<Utc>| n.min(done)));
        }
        if any && let Some(t) = newest_everywhere {
            self.pull.tick_done(t - self.offset);
        }
        Ok(())
    }

    /// One query at `at`: its events, and how many series had no subject label.
    async fn evaluate(
        &self,
        q: &PromQuery,
        at: DateTime<Utc>,
    ) -> anyhow::Result<(Vec<StoredEvent>, u64)> {
        let time = format!("{:.3}", at.timestamp_millis() as f64 / 1000.0);
        let form = [("query", q.promql.as_str()), ("time", time.as_str())];
        let mut resp = self
            .client
            .post(self.endpoint.clone())
            .form(&form)
            .send()
            .await?;
        if matches!(
            resp.status(),
            StatusCode::FORBIDDEN | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
        ) {
            resp = self
                .client
                .get(self.endpoint.clone())
                .query(&form)
                .send()
                .await?;
        }
        let status = resp.status();
        let body = resp.bytes().await?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            anyhow!(
                "HTTP {status}, not a Prometheus API answer ({e}): {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )
        })?;
        if answer.status != "success" {
            bail!(
                "HTTP {status}: {}: {}",
                answer.error_type.unwrap_or_default(),
                answer.error.unwrap_or_default()
            );
        }
        let data = answer.data.ok_or_else(|| anyhow!("success without data"))?;
        if data.result_type != "vector" {
            bail!(
                "the query gives a {} result; only instant vectors make events",
                data.result_type
            );
        }
        let samples: Vec<Sample> = serde_json::from_value(data.result)?;
        let time = rfc3339(at);
        let at_ms = at.timestamp_millis().to_string();
        let received_ms = Utc::now().timestamp_millis();
        let mut events = Vec::with_capacity(samples.len());
        let mut unlabelled = 0;
        for s in samples {
            let Some(subject) = s
                .metric
                .get(&self.config.subject_label)
                .filter(|v| !v.is_empty())
            else {
                unlabelled += 1;
                continue;
            };
            let labels = serde_json::to_string(&s.metric)?;
            let value = s
                .value
                .1
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map_or_else(|| Value::String(s.value.1.clone()), |v| json!(v));
            events.push(StoredEvent {
                id: derive_id(&["prometheus", &q.name, &labels, &at_ms]),
                source: "prometheus".into(),
                ty: q.name.clone(),
                subject: subject.clone(),
                time: time.clone(),
                data: json!({"value": value, "metric": s.metric}).to_string(),
                received_ms,
            });
        }
        Ok((events, unlabelled))
    }
}
