//! `[sources.kubernetes]`: pod execution time. Every `interval` (aligned to the epoch) the pods
//! are listed from the API server (paged, `namespace` or all, `label_selector`), and each pod
//! that runs — `Running`; `Pending` too with `include_pending_pods`; with no phase, when all
//! its containers run — gives one event for that interval:
//!
//! * `type` `kube-pod-exec-time` (configurable), `source` `kubernetes-api`, `time` the tick;
//! * `subject` the annotation `openmeter.io/subject`, else the pod's name;
//! * `data`: every `data.openmeter.io/<KEY>` annotation as `<KEY>`, `pod_name`,
//!   `pod_namespace`, `duration_seconds`, and the sums over the pod's containers of CPU requests
//!   and limits in millicores (really millicores: OpenMeter's preset writes cores under that
//!   name), memory in bytes and `nvidia.com/gpu` counts, each also multiplied by the duration
//!   (`cpu_request_millicore_seconds`, `memory_limit_byte_seconds`, `gpu_request_seconds`…:
//!   what a meter SUMs; OpenMeter's `*_per_second` divided instead);
//! * `id` derived from the pod's UID, the tick and the interval: a tick repeated after a crash
//!   stores the same ids.
//!
//! Connection: `kubeconfig` when set, else in-cluster (service account), else `KUBECONFIG` or
//! `~/.kube/config` (the `kube` crate's inference). RBAC: `list` on pods. A failed listing
//! loses that tick only (the API cannot say what ran in the past); it is counted as an error.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Map, Value, json};

use super::pull::{Pull, derive_id, rfc3339};
use super::quantity::scaled;
use super::schedule::Schedule;
use crate::buffer::StoredEvent;
use crate::config::{KubernetesSource, pull::duration};

/// The annotation naming a pod's subject.
pub const SUBJECT_ANNOTATION: &str = "openmeter.io/subject";
/// Annotations with this prefix are copied into `data`.
pub const DATA_ANNOTATION_PREFIX: &str = "data.openmeter.io/";

/// A running Kubernetes source.
pub struct Kubernetes {
    config: KubernetesSource,
    interval: TimeDelta,
    pull: Pull,
}

impl Kubernetes {
    /// A source from its (validated) settings.
    pub fn new(config: KubernetesSource, pull: Pull) -> anyhow::Result<Kubernetes> {
        let interval = TimeDelta::from_std(
            duration("interval", &config.interval).map_err(anyhow::Error::msg)?,
        )?;
        Ok(Kubernetes {
            config,
            interval,
            pull,
        })
    }

    async fn client(&self) -> anyhow::Result<kube::Client> {
        let config = if self.config.kubeconfig.is_empty() {
            kube::Config::infer()
                .await
                .context("no in-cluster service account and no usable kubeconfig")?
        } else {
            let file = Kubeconfig::read_from(&self.config.kubeconfig)
                .with_context(|| format!("reading {}", self.config.kubeconfig))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using {}", self.config.kubeconfig))?
        };
        Ok(kube::Client::try_from(config)?)
    }

    /// Ticks until the agent stops.
    pub async fn run(mut self) {
        tracing::info!(namespace = %self.config.namespace, label_selector = %self.config.label_selector, interval = %self.config.interval, "Kubernetes source started");
        let schedule = Schedule::Every(self.interval);
        let mut client = None;
        loop {
            let Some(tick) = schedule.next_after(Utc::now()) else {
                return;
            };
            if self.pull.sleep_until(tick).await.is_err() {
                return;
            }
            if client.is_none() {
                match self.client().await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        self.pull.errors(1);
                        tracing::error!(error = %format!("{e:#}"), "sources.kubernetes: cannot reach the API server");
                        continue;
                    }
                }
            }
            let Some(c) = client.clone() else { continue };
            match self.list(c).await {
                Ok(pods) => {
                    let events = self.events(&pods, tick);
                    if self.pull.store(&events).await.is_err() {
                        return;
                    }
                    self.pull.tick_done(tick);
                }
                Err(e) => {
                    self.pull.errors(1);
                    tracing::warn!(error = %format!("{e:#}"), tick = %rfc3339(tick), "listing pods failed; this tick is lost");
                }
            }
        }
    }

    /// Every pod matching namespace and selector, page by page.
    async fn list(&self, client: kube::Client) -> anyhow::Result<Vec<Pod>> {
        let api: Api<Pod> = if self.config.namespace.is_empty() {
            Api::all(client)
        } else {
            Api::namespaced(client, &self.config.namespace)
        };
        let mut params = ListParams::default().limit(500);
        if !self.config.label_selector.is_empty() {
            params = params.labels(&self.config.label_selector);
        }
        let mut pods = Vec::new();
        loop {
            let page = api.list(&params).await?;
            pods.extend(page.items);
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => return Ok(pods),
            }
        }
    }

    /// The events of the pods that ran during the tick at `tick`.
    pub fn events(&self, pods: &[Pod], tick: DateTime<Utc>) -> Vec<StoredEvent> {
        let d = self.interval.num_seconds();
        let time = rfc3339(tick);
        let received_ms = Utc::now().timestamp_millis();
        let mut out = Vec::new();
        for pod in pods {
            if !self.metered(pod) {
                continue;
            }
            let meta = &pod.metadata;
            let name = meta.name.clone().unwrap_or_default();
            let Some(uid) = meta.uid.as_deref() else {
                continue;
            };
            let annotations = meta.annotations.clone().unwrap_or_default();
            let subject = annotations
                .get(SUBJECT_ANNOTATION)
                .filter(|s| !s.is_empty())
                .cloned()
                .unwrap_or_else(|| name.clone());
            let mut data = Map::new();
            for (k, v) in &annotations {
                if let Some(key) = k.strip_prefix(DATA_ANNOTATION_PREFIX) {
                    data.insert(key.to_owned(), Value::String(v.clone()));
                }
            }
            data.insert("pod_name".into(), json!(name));
            data.insert(
                "pod_namespace".into(),
                json!(meta.namespace.clone().unwrap_or_default()),
            );
            data.insert("duration_seconds".into(), json!(d));
            let resources = self.resources(pod);
            for (field, value) in resources {
                // JSON numbers past i64 would not serialize; no pod requests that much.
                let integral =
                    i64::try_from(value.saturating_mul(i128::from(d))).unwrap_or(i64::MAX);
                let value = i64::try_from(value).unwrap_or(i64::MAX);
                data.insert(field.to_owned(), json!(value));
                let per = match field {
                    "cpu_request_millicores" => "cpu_request_millicore_seconds",
                    "cpu_limit_millicores" => "cpu_limit_millicore_seconds",
                    "memory_request_bytes" => "memory_request_byte_seconds",
                    "memory_limit_bytes" => "memory_limit_byte_seconds",
                    "gpu_request_count" => "gpu_request_seconds",
                    _ => "gpu_limit_seconds",
                };
                data.insert(per.to_owned(), json!(integral));
            }
            out.push(StoredEvent {
                id: derive_id(&["kubernetes", uid, &time, &d.to_string()]),
                source: self.config.source.clone(),
                ty: self.config.event_type.clone(),
                subject,
                time: time.clone(),
                data: Value::Object(data).to_string(),
                received_ms,
            });
        }
        out
    }

    /// Whether the pod counts as running (OpenMeter's filter).
    fn metered(&self, pod: &Pod) -> bool {
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
        match phase {
            "Running" => true,
            "Pending" => self.config.include_pending_pods,
            "" => {
                let containers = status
                    .and_then(|s| s.container_statuses.as_ref())
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let running = containers
                    .iter()
                    .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
                    .count();
                if !containers.is_empty() && running == containers.len() {
                    true
                } else {
                    running > 0 && self.config.include_pending_pods
                }
            }
            _ => false,
        }
    }

    /// Sums of the containers' requests and limits; a quantity that does not parse counts as 0
    /// and is logged (one bad annotation-free field must not lose the pod's time).
    fn resources(&self, pod: &Pod) -> BTreeMap<&'static str, i128> {
        let mut sums = BTreeMap::new();
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default();
        for (field, which, resource, scale) in [
            ("cpu_request_millicores", true, "cpu", 3),
            ("cpu_limit_millicores", false, "cpu", 3),
            ("memory_request_bytes", true, "memory", 0),
            ("memory_limit_bytes", false, "memory", 0),
            ("gpu_request_count", true, "nvidia.com/gpu", 0),
            ("gpu_limit_count", false, "nvidia.com/gpu", 0),
        ] {
            let mut sum = 0i128;
            for c in containers {
                let r = c.resources.as_ref();
                let q = if which {
                    r.and_then(|r| r.requests.as_ref())
                } else {
                    r.and_then(|r| r.limits.as_ref())
                }
                .and_then(|m| m.get(resource));
                if let Some(q) = q {
                    match scaled(&q.0, scale) {
                        Ok(v) => sum = sum.saturating_add(v),
                        Err(e) => {
                            self.pull.errors(1);
                            tracing::warn!(pod = ?pod.metadata.name, container = %c.name, "{field}: {e}");
                        }
                    }
                }
            }
            sums.insert(field, sum);
        }
        sums
    }
}
