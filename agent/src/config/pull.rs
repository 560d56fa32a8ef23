//! The pull sources' settings — `[[sources.prometheus]]`, `[[sources.s3]]`,
//! `[sources.kubernetes]`, `[sources.runai]` — and their validation, every error naming its key
//! (`sources.prometheus[0].schedule: …`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sources::schedule::Schedule;

/// `[[sources.prometheus]]`: PromQL instant queries on a schedule, one event per series.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusSource {
    /// Names this source in metrics and in its saved progress; defaults to `url`.
    pub name: String,
    /// Prometheus' base URL (`http://127.0.0.1:9090`).
    pub url: String,
    /// Six-field cron with seconds (`0 * * * * *`) or `@every 15s`.
    pub schedule: String,
    /// Each tick evaluates at the tick's time minus this (`30s`), so late samples are in.
    pub query_offset: String,
    /// The label whose value is the event's subject.
    pub subject_label: String,
    /// Ticks missed while the agent was down (or a query failed) evaluated on the next run,
    /// at most this many per query; older ones are skipped and counted as errors.
    pub max_catch_up: u32,
    /// Per-request timeout.
    pub timeout: String,
    /// Headers sent with every request (`Authorization`, `X-Scope-OrgID`, …).
    pub headers: BTreeMap<String, String>,
    /// The queries: `{name, promql}`; the event `type` is the name.
    pub queries: Vec<PromQuery>,
}

/// One PromQL query.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromQuery {
    /// The event type.
    pub name: String,
    /// An instant-vector expression.
    pub promql: String,
}

impl Default for PrometheusSource {
    fn default() -> Self {
        PrometheusSource {
            name: String::new(),
            url: String::new(),
            schedule: "0 * * * * *".into(),
            query_offset: "0s".into(),
            subject_label: "instance".into(),
            max_catch_up: 60,
            timeout: "30s".into(),
            headers: BTreeMap::new(),
            queries: Vec::new(),
        }
    }
}

impl PrometheusSource {
    /// `name`, or the URL.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            &self.url
        } else {
            &self.name
        }
    }
}

/// The object formats the S3 source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum S3Format {
    /// One CloudEvent (JSON) a line.
    CloudeventsJsonl,
    /// A JSON array of CloudEvents.
    CloudeventsJson,
}

/// `[[sources.s3]]`: CloudEvents in objects under a prefix, each object read once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Source {
    /// Names this source in metrics and in its saved progress; defaults to `bucket/prefix`.
    pub name: String,
    /// The bucket.
    pub bucket: String,
    /// Its region (else `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: String,
    /// Only keys starting with this.
    pub prefix: String,
    /// An S3-compatible endpoint (MinIO, Ceph, moto…): path-style requests.
    pub endpoint: String,
    /// How often the bucket is listed.
    pub interval: String,
    /// `cloudevents-jsonl` or `cloudevents-json`.
    pub format: S3Format,
    /// The `source` of events that carry none.
    pub source: String,
    /// Keys are written in increasing order (time-stamped names such as
    /// `usage/2026/11/26/104000.jsonl`, as most exporters write them): each listing starts after
    /// the last key read (S3 `StartAfter`) instead of listing everything under `prefix`. An
    /// object written later under a key that sorts before the last one read is never read.
    pub start_after_last_key: bool,
}

impl Default for S3Source {
    fn default() -> Self {
        S3Source {
            name: String::new(),
            bucket: String::new(),
            region: String::new(),
            prefix: String::new(),
            endpoint: String::new(),
            interval: "60s".into(),
            format: S3Format::CloudeventsJsonl,
            source: "s3".into(),
            start_after_last_key: false,
        }
    }
}

impl S3Source {
    /// `name`, or `bucket/prefix`.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            format!("{}/{}", self.bucket, self.prefix)
        } else {
            self.name.clone()
        }
    }
}

/// `[sources.kubernetes]`: an event per running pod per interval, with its requests/limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesSource {
    /// Off unless set.
    pub enabled: bool,
    /// Only this namespace; empty for all.
    pub namespace: String,
    /// Only pods matching this label selector (`app=web,tier!=batch`).
    pub label_selector: String,
    /// The tick (and the `duration_seconds` of each event), at least 1s.
    pub interval: String,
    /// Also meter `Pending` pods (scheduled but not yet running).
    pub include_pending_pods: bool,
    /// The event type.
    pub event_type: String,
    /// The event source.
    pub source: String,
    /// A kubeconfig file; empty: in-cluster, then `KUBECONFIG`/`~/.kube/config`.
    pub kubeconfig: String,
}

impl Default for KubernetesSource {
    fn default() -> Self {
        KubernetesSource {
            enabled: false,
            namespace: String::new(),
            label_selector: String::new(),
            interval: "15s".into(),
            include_pending_pods: false,
            event_type: "kube-pod-exec-time".into(),
            source: "kubernetes-api".into(),
            kubeconfig: String::new(),
        }
    }
}

/// What the Run:ai source meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunaiResource {
    /// Running workloads.
    Workload,
    /// Their pods.
    Pod,
}

/// `[sources.runai]`: NVIDIA Run:ai workload or pod metrics on a schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunaiSource {
    /// Off unless set.
    pub enabled: bool,
    /// The control plane's base URL.
    pub url: String,
    /// An application's client id.
    pub app_id: String,
    /// Its secret (never shown; left out of `check-config` when unset).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub app_secret: String,
    /// `workload` or `pod`.
    pub resource_type: RunaiResource,
    /// Metric types (`GPU_ALLOCATION`, `CPU_USAGE_CORES`, …).
    pub metrics: Vec<String>,
    /// Six-field cron with seconds, or `@every 30s`.
    pub schedule: String,
    /// Each window ends this long before the tick.
    pub metrics_offset: String,
    /// Resources per page (100–500).
    pub page_size: u32,
    /// The event type.
    pub event_type: String,
    /// The event source.
    pub source: String,
    /// The resource field whose value is the subject (`name`, `projectId`, `tenantId`…).
    pub subject_field: String,
    /// Per-request timeout.
    pub timeout: String,
}

/// The Run:ai workload metrics metered by default.
pub const RUNAI_DEFAULT_METRICS: [&str; 12] = [
    "CPU_LIMIT_CORES",
    "CPU_REQUEST_CORES",
    "CPU_USAGE_CORES",
    "CPU_MEMORY_LIMIT_BYTES",
    "CPU_MEMORY_REQUEST_BYTES",
    "CPU_MEMORY_USAGE_BYTES",
    "GPU_ALLOCATION",
    "GPU_MEMORY_REQUEST_BYTES",
    "GPU_MEMORY_USAGE_BYTES",
    "GPU_UTILIZATION",
    "POD_COUNT",
    "RUNNING_POD_COUNT",
];

impl Default for RunaiSource {
    fn default() -> Self {
        RunaiSource {
            enabled: false,
            url: String::new(),
            app_id: String::new(),
            app_secret: String::new(),
            resource_type: RunaiResource::Workload,
            metrics: RUNAI_DEFAULT_METRICS
                .iter()
                .map(|m| m.to_string())
                .collect(),
            schedule: "*/30 * * * * *".into(),
            metrics_offset: "0s".into(),
            page_size: 500,
            event_type: "run-ai".into(),
            source: "run_ai".into(),
            subject_field: "name".into(),
            timeout: "30s".into(),
        }
    }
}

/// A duration setting (`15s`, `1m 30s`, `500ms`), naming `key` when it does not parse.
pub fn duration(key: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{key}: {text:?} is not a duration like 15s or 1m ({e})"))
}

fn http_url(key: &str, text: &str, errors: &mut Vec<String>) {
    match reqwest::Url::parse(text) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        _ => errors.push(format!(
            "{key}: {text:?} is not an http(s) URL{}",
            if text.is_empty() { " (required)" } else { "" }
        )),
    }
}

fn schedule(key: &str, text: &str, errors: &mut Vec<String>) {
    if let Err(e) = Schedule::parse(text) {
        errors.push(format!("{key}: {e}"));
    }
}

fn positive_duration(key: &str, text: &str, min: Duration, errors: &mut Vec<String>) {
    match duration(key, text) {
        Ok(d) if d < min => errors.push(format!("{key}: {text:?} is below the minimum of {min:?}")),
        Ok(_) => {}
        Err(e) => errors.push(e),
    }
}

/// Every problem with the pull sources' settings, each naming its key.
pub fn validate(
    prometheus: &[PrometheusSource],
    s3: &[S3Source],
    kubernetes: &KubernetesSource,
    runai: &RunaiSource,
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut labels = std::collections::HashSet::new();
    for (i, p) in prometheus.iter().enumerate() {
        let key = format!("sources.prometheus[{i}]");
        http_url(&format!("{key}.url"), &p.url, &mut errors);
        schedule(&format!("{key}.schedule"), &p.schedule, &mut errors);
        if let Err(e) = duration(&format!("{key}.query_offset"), &p.query_offset) {
            errors.push(e);
        }
        positive_duration(
            &format!("{key}.timeout"),
            &p.timeout,
            Duration::from_millis(1),
            &mut errors,
        );
        if p.subject_label.is_empty() {
            errors.push(format!("{key}.subject_label: must not be empty"));
        }
        if p.queries.is_empty() {
            errors.push(format!(
                "{key}.queries: at least one {{name, promql}} is needed"
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (j, q) in p.queries.iter().enumerate() {
            if q.name.is_empty() {
                errors.push(format!(
                    "{key}.queries[{j}].name: must not be empty (it is the event type)"
                ));
            } else if !names.insert(&q.name) {
                errors.push(format!(
                    "{key}.queries[{j}].name: {:?} is used twice (ids and progress are per name)",
                    q.name
                ));
            }
            if q.promql.trim().is_empty() {
                errors.push(format!("{key}.queries[{j}].promql: must not be empty"));
            }
        }
        for (h, v) in &p.headers {
            if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(v).is_err()
            {
                errors.push(format!("{key}.headers.{h}: not a valid HTTP header"));
            }
        }
        if !labels.insert(format!("prometheus/{}", p.label())) {
            errors.push(format!(
                "{key}.name: {:?} names another Prometheus source too (set distinct names)",
                p.label()
            ));
        }
    }
    for (i, s) in s3.iter().enumerate() {
        let key = format!("sources.s3[{i}]");
        if s.bucket.is_empty() {
            errors.push(format!("{key}.bucket: required"));
        }
        if !s.endpoint.is_empty() {
            http_url(&format!("{key}.endpoint"), &s.endpoint, &mut errors);
        }
        positive_duration(
            &format!("{key}.interval"),
            &s.interval,
            Duration::from_millis(100),
            &mut errors,
        );
        if s.source.is_empty() {
            errors.push(format!("{key}.source: must not be empty"));
        }
        if !labels.insert(format!("s3/{}", s.label())) {
            errors.push(format!(
                "{key}.name: {:?} names another S3 source too (set distinct names)",
                s.label()
            ));
        }
    }
    if kubernetes.enabled {
        let key = "sources.kubernetes";
        positive_duration(
            &format!("{key}.interval"),
            &kubernetes.interval,
            Duration::from_secs(1),
            &mut errors,
        );
        if duration("", &kubernetes.interval).is_ok_and(|d| d.subsec_nanos() != 0) {
            errors.push(format!(
                "{key}.interval: {:?} is not a whole number of seconds (each event's duration_seconds)",
                kubernetes.interval
            ));
        }
        if kubernetes.event_type.is_empty() {
            errors.push(format!("{key}.event_type: must not be empty"));
        }
        if kubernetes.source.is_empty() {
            errors.push(format!("{key}.source: must not be empty"));
        }
    }
    if runai.enabled {
        let key = "sources.runai";
        http_url(&format!("{key}.url"), &runai.url, &mut errors);
        for (field, value) in [("app_id", &runai.app_id), ("app_secret", &runai.app_secret)] {
            if value.is_empty() {
                errors.push(format!("{key}.{field}: required"));
            }
        }
        schedule(&format!("{key}.schedule"), &runai.schedule, &mut errors);
        if let Err(e) = duration(&format!("{key}.metrics_offset"), &runai.metrics_offset) {
            errors.push(e);
        }
        positive_duration(
            &format!("{key}.timeout"),
            &runai.timeout,
            Duration::from_millis(1),
            &mut errors,
        );
        if !(100..=500).contains(&runai.page_size) {
            errors.push(format!(
                "{key}.page_size: {} is outside 100..=500 (Run:ai's limits)",
                runai.page_size
            ));
        }
        if runai.metrics.is_empty() {
            errors.push(format!("{key}.metrics: at least one metric type is needed"));
        }
        for (j, m) in runai.metrics.iter().enumerate() {
            if m.is_empty()
                || !m
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                errors.push(format!(
                    "{key}.metrics[{j}]: {m:?} is not a Run:ai metric type like GPU_ALLOCATION"
                ));
            }
        }
        if runai.subject_field.is_empty() {
            errors.push(format!("{key}.subject_field: must not be empty"));
        }
    }
    errors
}
