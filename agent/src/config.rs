//! The agent's configuration: a TOML file, then `TOLLGATE_AGENT__SECTION__KEY` environment
//! overrides, then command-line flags. Every error names its key (`buffer.max_bytes: …`).
//! `tollgate-agent check-config FILE` prints the effective result.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod pull;
pub use pull::{
    KubernetesSource, PromQuery, PrometheusSource, RunaiResource, RunaiSource, S3Format, S3Source,
};

/// Which ingest API the default destination speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// OpenMeter v1: `POST {url}/api/v1/events`, 204.
    OpenmeterV1,
    /// Self-hosted OpenMeter v3: `POST {url}/api/v3/openmeter/events`, 202.
    OpenmeterV3,
    /// Konnect: `POST {url}/v3/openmeter/events`, 202.
    Konnect,
}

/// `[grpc]`: where plugins publish.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grpc {
    /// TCP address; empty string disables TCP.
    pub listen: String,
    /// Also serve on this Unix socket.
    pub unix_socket: Option<PathBuf>,
}

impl Default for Grpc {
    fn default() -> Self {
        Grpc {
            listen: "127.0.0.1:7070".into(),
            unix_socket: None,
        }
    }
}

/// `[http]`: health, metrics and admin endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// TCP address (loopback by default).
    pub listen: SocketAddr,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
        }
    }
}

/// `[buffer]`: the durable queue on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Buffer {
    /// The sled directory.
    pub path: PathBuf,
    /// Bytes of queued events at most. When full, new batches are answered `FULL` and nothing
    /// is stored (the plugin keeps them in memory and drops its oldest when that fills).
    pub max_bytes: u64,
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer {
            path: PathBuf::from("tollgate-agent-data"),
            max_bytes: 1 << 30,
        }
    }
}

/// `[destination]`: the central billing service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Destination {
    /// Base URL (`http://127.0.0.1:8888`), or a full events URL ending in `/events`.
    pub url: String,
    /// The API it speaks.
    pub api: Api,
    /// Bearer token.
    pub token: Option<String>,
    /// Verify TLS certificates.
    pub tls_verify: bool,
    /// Gzip request bodies.
    pub gzip: bool,
    /// Per-request timeout.
    pub timeout_ms: u64,
}

impl Default for Destination {
    fn default() -> Self {
        Destination {
            url: "http://127.0.0.1:8888".into(),
            api: Api::OpenmeterV1,
            token: None,
            tls_verify: true,
            gzip: false,
            timeout_ms: 10_000,
        }
    }
}

/// `[flush]`: batching and retries towards the destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Flush {
    /// Events per request at most.
    pub max_events: usize,
    /// Body bytes per request at most (before gzip).
    pub max_bytes: usize,
    /// Requests in flight per destination at most (acknowledged in order; a remote service
    /// with a long round trip needs several to keep up).
    pub max_in_flight: usize,
    /// How often an idle flusher looks for work.
    pub interval_ms: u64,
    /// First retry delay.
    pub retry_initial_ms: u64,
    /// Retry delay cap.
    pub retry_max_ms: u64,
    /// On SIGTERM, keep flushing for up to this long.
    pub shutdown_grace_ms: u64,
}

impl Default for Flush {
    fn default() -> Self {
        Flush {
            max_events: 1000,
            max_bytes: 1 << 20,
            max_in_flight: 4,
            interval_ms: 100,
            retry_initial_ms: 100,
            retry_max_ms: 30_000,
            shutdown_grace_ms: 5_000,
        }
    }
}

/// `[entitlements]`: the cache of entitlement values served to plugins and applications.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Entitlements {
    /// Sync and serve entitlements.
    pub enabled: bool,
    /// Central service base URL; empty means `destination.url`.
    pub url: String,
    /// Bearer token; none means `destination.token`.
    pub token: Option<String>,
    /// Feature keys to track from the start (plugins add theirs when they watch).
    pub features: Vec<String>,
    /// How often every value is refreshed.
    pub sync_interval_ms: u64,
    /// Values older than this are flagged stale.
    pub stale_after_ms: u64,
}

impl Default for Entitlements {
    fn default() -> Self {
        Entitlements {
            enabled: true,
            url: String::new(),
            token: None,
            features: Vec::new(),
            sync_interval_ms: 5_000,
            stale_after_ms: 60_000,
        }
    }
}

/// `[sources.http]`: OpenMeter's ingest API on `http.listen`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSource {
    /// Serve `POST /api/v1/events` and `POST /api/v3/openmeter/events`.
    pub enabled: bool,
    /// Require `Authorization: Bearer <token>` (none: loopback callers are trusted).
    pub token: Option<String>,
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
}

impl Default for HttpSource {
    fn default() -> Self {
        HttpSource {
            enabled: true,
            token: None,
            max_body_bytes: 16 << 20,
        }
    }
}

/// `[sources.kong_http_log]`: bodies from Kong's bundled http-log plugin on `http.listen`
/// (`POST /kong/http-log`), metered with the `tollgate` plugin's own config fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KongHttpLogSource {
    /// Serve `POST /kong/http-log`.
    pub enabled: bool,
    /// CloudEvents `source` of the events; must equal the `tollgate` plugin's (`--source`) for
    /// the two paths to dedupe. Default: `kong-gateway/<hostname>`, the plugin's default.
    pub source: Option<String>,
    /// Require `Authorization: Bearer <token>` (set it in http-log's `headers`).
    pub token: Option<String>,
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
    /// As the plugin's `meter_api_requests` (default true).
    pub meter_api_requests: Option<bool>,
    /// As the plugin's `meter_ai_token_usage` (default true).
    pub meter_ai_token_usage: Option<bool>,
    /// As the plugin's `subject` (default: the consumer).
    pub subject: Option<tollgate_events::rules::Subject>,
    /// As the plugin's `attributes`.
    pub attributes: Option<Vec<tollgate_events::rules::Attribute>>,
}

impl Default for KongHttpLogSource {
    fn default() -> Self {
        KongHttpLogSource {
            enabled: false,
            source: None,
            token: None,
            max_body_bytes: 64 << 20,
            meter_api_requests: None,
            meter_ai_token_usage: None,
            subject: None,
            attributes: None,
        }
    }
}

impl KongHttpLogSource {
    /// The validated metering rules; the error names the key.
    pub fn rules(&self) -> Result<tollgate_events::rules::Rules, String> {
        tollgate_events::rules::Rules::new(
            self.meter_api_requests,
            self.meter_ai_token_usage,
            self.subject.clone(),
            self.attributes.clone(),
        )
        .map_err(|(field, why)| format!("sources.kong_http_log.{field}: {why}"))
    }

    /// The CloudEvents `source`: configured, or the plugin's default.
    pub fn source(&self) -> String {
        self.source
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(default_kong_source)
    }
}

/// `kong-gateway/<hostname>`, the `tollgate` plugin's default `source`.
pub fn default_kong_source() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("kong-gateway/{host}")
}

/// `[sources.otlp_logs]`: OTLP/gRPC `LogsService/Export`, one event per log record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpLogsSource {
    /// Serve OTLP/gRPC.
    pub enabled: bool,
    /// TCP address (OTLP's gRPC port is 4317).
    pub listen: String,
    /// CloudEvents `source` of the events.
    pub source: String,
    /// A fixed event `type` for every record (or use `type_attribute`).
    pub event_type: Option<String>,
    /// The record attribute holding the event `type` (wins over `event_type` when present).
    pub type_attribute: Option<String>,
    /// The record attribute holding the subject.
    pub subject_attribute: String,
    /// The record attribute holding the event id; a record without it gets an id derived from
    /// its content (so a retried export dedupes).
    pub id_attribute: String,
}

impl Default for OtlpLogsSource {
    fn default() -> Self {
        OtlpLogsSource {
            enabled: false,
            listen: "127.0.0.1:4317".into(),
            source: "otlp-logs".into(),
            event_type: None,
            type_attribute: None,
            subject_attribute: "subject".into(),
            id_attribute: "id".into(),
        }
    }
}

/// `[sources]`: where events come from besides the plugin's gRPC stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sources {
    /// `[sources.http]`.
    pub http: HttpSource,
    /// `[sources.kong_http_log]`.
    pub kong_http_log: KongHttpLogSource,
    /// `[sources.otlp_logs]`.
    pub otlp_logs: OtlpLogsSource,
    /// `[[sources.prometheus]]` (pull).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prometheus: Vec<PrometheusSource>,
    /// `[[sources.s3]]` (pull).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub s3: Vec<S3Source>,
    /// `[sources.kubernetes]` (pull).
    pub kubernetes: KubernetesSource,
    /// `[sources.runai]` (pull).
    pub runai: RunaiSource,
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[grpc]`.
    pub grpc: Grpc,
    /// `[http]`.
    pub http: Http,
    /// `[buffer]`.
    pub buffer: Buffer,
    /// `[destination]`.
    pub destination: Destination,
    /// `[flush]`.
    pub flush: Flush,
    /// `[entitlements]`.
    pub entitlements: Entitlements,
    /// `[sources.*]`.
    pub sources: Sources,
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key has a bad value (or is unknown).
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads `file` (if any), applies env overrides from `env`, validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Vec<ConfigError>> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    vec![ConfigError::Read {
                        path: path.to_owned(),
                        source,
                    }]
                })?;
                text.parse::<toml::Table>().map_err(|e| {
                    vec![ConfigError::Invalid(format!(
                        "{}: {}",
                        path.display(),
                        e.message()
                    ))]
                })?
            }
            None => toml::Table::new(),
        };
        let mut errors = Vec::new();
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("TOLLGATE_AGENT__") else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            if path.len() < 2 || path.iter().any(|p| p.is_empty()) {
                errors.push(ConfigError::Invalid(format!(
                    "{key}: expected TOLLGATE_AGENT__<SECTION>__<KEY> (or __<SECTION>__<SUB>__<KEY>)"
                )));
                continue;
            }
            if !insert_at(&mut table, &path, env_value(&value)) {
                let section = path[..path.len() - 1].join(".");
                let list = matches!(section.as_str(), "sources.prometheus" | "sources.s3");
                errors.push(ConfigError::Invalid(if list {
                    format!(
                        "{key}: [[{section}]] is a list of sources, which the environment cannot \
                         address: set it in the file"
                    )
                } else {
                    format!("{key}: {section} is not a section")
                }));
            }
        }
        let config: Config = match serde_path_to_error::deserialize(toml::Value::Table(table)) {
            Ok(c) => c,
            Err(e) => {
                errors.push(ConfigError::Invalid(format!("{}: {}", e.path(), e.inner())));
                return Err(errors);
            }
        };
        errors.extend(config.validate());
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// Settles what the settings imply together, once every source (file, environment, flags)
    /// is applied; returns a note for each thing it changed.
    ///
    /// Konnect serves only OpenMeter's v3 surface: no entitlement values the agent can read
    /// (its v3 `entitlement-access` answers has-access only). With `destination.api = "konnect"`
    /// and no `entitlements.url` of their own, entitlements are turned off rather than asked of
    /// Konnect, where every value would be "not found" and enforcement would refuse everyone.
    pub fn settle(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.entitlements.enabled
            && self.entitlements.url.is_empty()
            && self.destination.api == Api::Konnect
        {
            self.entitlements.enabled = false;
            notes.push(
                "entitlements.enabled: off, because destination.api is konnect and Konnect has no \
                 entitlement values the agent can read; set entitlements.url to an \
                 OpenMeter-compatible service (tollgate-billing, OpenMeter) to serve them \
                 (tollgate-enforcement applies its fail_policy meanwhile)"
                    .to_owned(),
            );
        }
        notes
    }

    fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut bad =
            |key: &str, why: String| errors.push(ConfigError::Invalid(format!("{key}: {why}")));
        if !self.grpc.listen.is_empty() && self.grpc.listen.parse::<SocketAddr>().is_err() {
            bad(
                "grpc.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:7070",
                    self.grpc.listen
                ),
            );
        }
        if self.grpc.listen.is_empty() && self.grpc.unix_socket.is_none() {
            bad(
                "grpc.listen",
                "empty, and no grpc.unix_socket either: plugins could not connect".into(),
            );
        }
        if self.buffer.max_bytes < 1 << 20 {
            bad(
                "buffer.max_bytes",
                format!("{} is below the minimum of 1 MiB", self.buffer.max_bytes),
            );
        }
        match reqwest::Url::parse(&self.destination.url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => bad(
                "destination.url",
                format!("{:?} is not an http(s) URL", self.destination.url),
            ),
        }
        if self.flush.max_events == 0 {
            bad("flush.max_events", "must be at least 1".into());
        }
        if self.flush.max_in_flight == 0 {
            bad("flush.max_in_flight", "must be at least 1".into());
        }
        if self.flush.max_bytes < 1024 {
            bad("flush.max_bytes", "must be at least 1024".into());
        }
        if self.flush.retry_initial_ms == 0 || self.flush.retry_max_ms < self.flush.retry_initial_ms
        {
            bad(
                "flush.retry_max_ms",
                "must be at least flush.retry_initial_ms, which must be > 0".into(),
            );
        }
        if self.entitlements.sync_interval_ms < 100 {
            bad(
                "entitlements.sync_interval_ms",
                "must be at least 100".into(),
            );
        }
        if !self.entitlements.url.is_empty() && reqwest::Url::parse(&self.entitlements.url).is_err()
        {
            bad(
                "entitlements.url",
                format!("{:?} is not a URL", self.entitlements.url),
            );
        }
        if self.destination.timeout_ms == 0 {
            bad("destination.timeout_ms", "must be > 0".into());
        }
        for (key, max) in [
            (
                "sources.http.max_body_bytes",
                self.sources.http.max_body_bytes,
            ),
            (
                "sources.kong_http_log.max_body_bytes",
                self.sources.kong_http_log.max_body_bytes,
            ),
        ] {
            if max < 1024 {
                bad(key, "must be at least 1024".into());
            }
        }
        for (key, token) in [
            ("sources.http.token", &self.sources.http.token),
            (
                "sources.kong_http_log.token",
                &self.sources.kong_http_log.token,
            ),
        ] {
            if token.as_deref() == Some("") {
                bad(
                    key,
                    "empty: leave it out to accept requests without one".into(),
                );
            }
        }
        errors.extend(
            pull::validate(
                &self.sources.prometheus,
                &self.sources.s3,
                &self.sources.kubernetes,
                &self.sources.runai,
            )
            .into_iter()
            .map(ConfigError::Invalid),
        );
        if let Err(e) = self.sources.kong_http_log.rules() {
            errors.push(ConfigError::Invalid(e));
        }
        let otlp = &self.sources.otlp_logs;
        if otlp.enabled {
            let mut bad =
                |key: &str, why: String| errors.push(ConfigError::Invalid(format!("{key}: {why}")));
            if otlp.listen.parse::<SocketAddr>().is_err() {
                bad(
                    "sources.otlp_logs.listen",
                    format!("{:?} is not an address like 127.0.0.1:4317", otlp.listen),
                );
            }
            if otlp.event_type.as_deref().unwrap_or("").is_empty()
                && otlp.type_attribute.as_deref().unwrap_or("").is_empty()
            {
                bad(
                    "sources.otlp_logs.event_type",
                    "set event_type or type_attribute: every event needs a type".into(),
                );
            }
            if otlp.subject_attribute.is_empty() {
                bad(
                    "sources.otlp_logs.subject_attribute",
                    "must not be empty".into(),
                );
            }
            if otlp.id_attribute.is_empty() {
                bad("sources.otlp_logs.id_attribute", "must not be empty".into());
            }
            if otlp.source.is_empty() {
                bad("sources.otlp_logs.source", "must not be empty".into());
            }
            if otlp.listen == self.grpc.listen {
                bad(
                    "sources.otlp_logs.listen",
                    format!("{} is grpc.listen already", otlp.listen),
                );
            }
        }
        errors
    }

    /// The effective configuration as TOML, with the token masked.
    pub fn to_toml_masked(&self) -> String {
        let mut shown = self.clone();
        if shown.destination.token.is_some() {
            shown.destination.token = Some("********".into());
        }
        if shown.entitlements.token.is_some() {
            shown.entitlements.token = Some("********".into());
        }
        for token in [
            &mut shown.sources.http.token,
            &mut shown.sources.kong_http_log.token,
        ] {
            if token.is_some() {
                *token = Some("********".into());
            }
        }
        if !shown.sources.runai.app_secret.is_empty() {
            shown.sources.runai.app_secret = "********".into();
        }
        for p in &mut shown.sources.prometheus {
            for v in p.headers.values_mut() {
                *v = "********".into();
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_default()
    }
}

/// Sets `path` (sections, then the key) in `table`, making sections as needed; false when a
/// section on the way is a value.
fn insert_at(table: &mut toml::Table, path: &[String], value: toml::Value) -> bool {
    match path {
        [] => false,
        [key] => {
            table.insert(key.clone(), value);
            true
        }
        [section, rest @ ..] => match table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => insert_at(t, rest, value),
            _ => false,
        },
    }
}

/// Env values are TOML scalars when they parse as one (`8`, `true`), else strings.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn konnect_without_an_entitlements_url_turns_entitlements_off_and_says_why() {
        let mut c = Config::default();
        c.destination.api = Api::Konnect;
        let notes = c.settle();
        assert!(!c.entitlements.enabled);
        assert!(notes[0].contains("entitlements.url"), "{notes:?}");
        let mut c = Config::default();
        c.destination.api = Api::Konnect;
        c.entitlements.url = "http://127.0.0.1:8888".into();
        assert!(c.settle().is_empty());
        assert!(c.entitlements.enabled);
        let mut c = Config::default();
        assert!(c.settle().is_empty());
        assert!(c.entitlements.enabled);
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, Vec<ConfigError>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_file_and_env_layer_in_order() {
        let c = load(
            "[buffer]\nmax_bytes = 2097152\n",
            &[("TOLLGATE_AGENT__FLUSH__MAX_EVENTS", "50")],
        )
        .unwrap();
        assert_eq!(c.buffer.max_bytes, 2 << 20);
        assert_eq!(c.flush.max_events, 50);
        assert_eq!(c.grpc.listen, "127.0.0.1:7070");
    }

    #[test]
    fn errors_name_the_key() {
        let errs = load("[buffer]\nmax_bytes = \"lots\"\n", &[]).unwrap_err();
        assert!(
            errs[0].to_string().starts_with("buffer.max_bytes"),
            "{}",
            errs[0]
        );
        let errs = load("[destinaton]\nurl = \"x\"\n", &[]).unwrap_err();
        assert!(errs[0].to_string().contains("destinaton"), "{}", errs[0]);
        let errs = load(
            "[destination]\nurl = \"ftp://x\"\n[flush]\nmax_events = 0\n",
            &[],
        )
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter().any(|e| e.starts_with("destination.url")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.starts_with("flush.max_events")),
            "{text:?}"
        );
    }
}
