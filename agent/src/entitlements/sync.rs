//! Fetching entitlement values and feature meters from the central service (OpenMeter's API,
//! which `tollgate-billing` serves): `GET /api/v1/subjects/{subject}/entitlements/{feature}/value`
//! for values, `GET /api/v1/features` and `GET /api/v1/meters/{slug}` to learn how each feature is
//! measured. Every subject × feature is refreshed each sync interval; a new subject at once.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use serde_json_path::JsonPath;
use tokio::sync::{mpsc, watch};

use super::{Cache, FeatureMeter, Synced, now_ms};

/// The syncer.
#[derive(Clone)]
pub struct Syncer {
    /// The cache it fills.
    pub cache: Arc<Cache>,
    /// HTTP client.
    pub client: reqwest::Client,
    /// Base URL of the central service.
    pub base: String,
    /// Bearer token.
    pub token: Option<String>,
    /// How often everything is refreshed.
    pub interval: Duration,
}

impl Syncer {
    fn get(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        let req = self.client.get(url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    fn url(&self, segments: &[&str]) -> Result<reqwest::Url, String> {
        let mut url = reqwest::Url::parse(&self.base).map_err(|e| e.to_string())?;
        url.path_segments_mut()
            .map_err(|_| "base URL cannot have a path".to_owned())?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Runs until `stop`.
    pub async fn run(
        self,
        mut new_subjects: mpsc::UnboundedReceiver<String>,
        mut refresh: mpsc::UnboundedReceiver<()>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sync_all().await,
                Some(s) = new_subjects.recv() => {
                    self.load_meters().await;
                    self.sync_subject(&s).await;
                }
                Some(()) = refresh.recv() => self.sync_all().await,
                _ = stop.changed() => return,
            }
        }
    }

    /// Learns the meter of every feature that lacks one.
    pub async fn load_meters(&self) {
        let missing = self.cache.features_without_meter();
        if missing.is_empty() {
            return;
        }
        let features = match self.json(&["api", "v1", "features"]).await {
            Ok(Value::Array(a)) => a,
            Ok(Value::Object(o)) => o
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list features");
                return;
            }
        };
        for key in missing {
            let Some(f) = features
                .iter()
                .find(|f| f["key"].as_str() == Some(key.as_str()))
            else {
                continue;
            };
            let Some(slug) = f["meterSlug"].as_str() else {
                continue;
            };
            let meter = match self.json(&["api", "v1", "meters", slug]).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(feature = %key, error = %e, "cannot read the feature's meter");
                    continue;
                }
            };
            let aggregation = meter["aggregation"].as_str().unwrap_or("");
            if aggregation != "COUNT" && aggregation != "SUM" {
                continue;
            }
            let value = meter["valueProperty"]
                .as_str()
                .and_then(|p| JsonPath::parse(p).ok());
            let filters = f["meterGroupByFilters"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| {
                    let path = meter["groupBy"][k]
                        .as_str()
                        .and_then(|p| JsonPath::parse(p).ok())?;
                    Some((path, v.as_str()?.to_owned()))
                })
                .collect();
            self.cache.set_meter(FeatureMeter {
                feature: key.clone(),
                event_type: meter["eventType"].as_str().unwrap_or_default().to_owned(),
                count: aggregation == "COUNT",
                value,
                filters,
            });
        }
    }

    /// GET a JSON document from the central service.
    pub async fn json(&self, segments: &[&str]) -> Result<Value, String> {
        let resp = self
            .get(self.url(segments)?)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        resp.json().await.map_err(|e| e.to_string())
    }

    /// Fetches one value.
    pub async fn fetch(&self, subject: &str, feature: &str) -> Result<Synced, String> {
        let url = self.url(&[
            "api",
            "v1",
            "subjects",
            subject,
            "entitlements",
            feature,
            "value",
        ])?;
        let resp = self.get(url).send().await.map_err(|e| e.to_string())?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Synced {
                missing: true,
                synced_at_ms: now_ms(),
                ..Default::default()
            });
        }
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        let has_access = v["hasAccess"].as_bool().unwrap_or(false);
        let metered = v.get("balance").is_some_and(|b| !b.is_null());
        let balance = v["balance"].as_f64().unwrap_or(0.0);
        // The value does not say whether the limit is soft, nor when usage resets; the
        // entitlement does (`isSoftLimit`, `currentUsagePeriod.to`).
        let mut soft_limit = false;
        let mut reset_at_ms = 0;
        if metered {
            let entitlement = match self
                .json(&["api", "v1", "subjects", subject, "entitlements"])
                .await
            {
                Ok(Value::Array(list)) => list
                    .into_iter()
                    .find(|e| e["featureKey"].as_str() == Some(feature)),
                _ => None,
            };
            soft_limit = entitlement
                .as_ref()
                .and_then(|e| e["isSoftLimit"].as_bool())
                .unwrap_or(has_access && balance <= 0.0);
            reset_at_ms = entitlement
                .as_ref()
                .and_then(|e| e["currentUsagePeriod"]["to"].as_str())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or(0, |t| t.timestamp_millis());
        }
        Ok(Synced {
            metered,
            has_access,
            balance,
            usage: v["usage"].as_f64().unwrap_or(0.0),
            overage: v["overage"].as_f64().unwrap_or(0.0),
            soft_limit,
            synced_at_ms: now_ms(),
            missing: !metered && !has_access && v.get("config").is_none(),
            reset_at_ms,
        })
    }

    /// Refreshes every feature of `subject`.
    pub async fn sync_subject(&self, subject: &str) {
        for feature in self.cache.features() {
            self.sync_one(subject, &feature).await;
        }
    }

    async fn sync_one(&self, subject: &str, feature: &str) {
        let token = self.cache.fetch_started(subject, feature);
        match self.fetch(subject, feature).await {
            Ok(v) => self.cache.store(subject, feature, v, token),
            Err(e) => {
                tracing::debug!(subject, feature, error = %e, "entitlement fetch failed; keeping the last value")
            }
        }
    }

    /// Refreshes everything, 16 requests at a time.
    pub async fn sync_all(&self) {
        self.load_meters().await;
        let pairs: Vec<(String, String)> = self
            .cache
            .subjects()
            .into_iter()
            .flat_map(|s| {
                self.cache
                    .features()
                    .into_iter()
                    .map(move |f| (s.clone(), f))
            })
            .collect();
        futures::stream::iter(pairs)
            .for_each_concurrent(16, |(s, f)| async move { self.sync_one(&s, &f).await })
            .await;
    }
}
