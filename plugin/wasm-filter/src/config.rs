//! The filter's configuration: the JSON string Kong passes as a filter's `config` (a filter chain
//! entry on 3.4–3.8, a plugin entry on 3.9–3.10) and Envoy as the plugin `configuration`, read in
//! `on_configure`. Errors name the field (`config.agent.address: …`), and a bad config refuses the
//! filter (on_configure returns false) instead of metering with half a config.
//!
//! Metering uses the external plugin's field names (`meter_api_requests`, `meter_ai_token_usage`,
//! `subject`, `attributes`: [`tollgate_events::rules`]), enforcement the `tollgate-enforcement`
//! names under `enforcement` (`feature.key`, `fail_policy`, `deny_unknown_customers`,
//! `max_stale_seconds`, `response_codes`), so one decK file can switch between the two forms.

use serde::Deserialize;
use tollgate_events::rules::{Attribute, Rules, Subject};

/// Where the agent is and how to reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    /// What `dispatch_http_call` is given as its upstream: `ip:port` on Kong (ngx_wasm_module
    /// resolves hostnames through `resolver`, 8.8.8.8 by default), a cluster name on Envoy.
    pub upstream: String,
    /// The `:authority` of the calls.
    pub authority: String,
    /// The agent's OpenMeter-compatible intake path.
    pub events_path: String,
    /// The agent's local entitlement endpoint (`/v1/entitlements`).
    pub entitlements_path: String,
    /// Bearer token for the intake (`[sources.http] token`), if the agent wants one.
    pub token: Option<String>,
    /// Timeout of one call, ms.
    pub timeout_ms: u64,
}

/// Enforcement settings (the `tollgate-enforcement` plugin's).
#[derive(Debug, Clone, PartialEq)]
pub struct Enforcement {
    /// The feature enforced.
    pub feature: String,
    /// Allow (true) or deny while no fresh value is known.
    pub fail_open: bool,
    /// Deny subjects the agent has no value for.
    pub deny_unknown: bool,
    /// A value older than this is stale, ms.
    pub max_stale_ms: i64,
    /// Status for a metered limit reached.
    pub limit_status: u16,
    /// Status for no access.
    pub no_access_status: u16,
    /// Status when the fail policy denies.
    pub unavailable_status: u16,
}

/// A validated filter config.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    /// What to meter and whom to bill.
    pub rules: Rules,
    /// CloudEvents `source` (the external plugin's default on Kong is `kong-gateway/<hostname>`:
    /// set the same value on both forms so their events dedupe).
    pub source: String,
    /// Read the consumer id from this property (dotted path) before the `X-Consumer-ID` header:
    /// e.g. `kong.ctx.shared.consumer_id` written by a Lua plugin, or Envoy metadata.
    pub consumer_property: Option<Vec<String>>,
    /// The agent.
    pub agent: Agent,
    /// How often `on_tick` delivers and refreshes, ms.
    pub flush_period_ms: u32,
    /// Where requests hand their events to the root context: `worker` (default) — a queue inside
    /// the VM, which every host has (one VM per nginx worker or Envoy thread, each ticking its
    /// own root context) — or `shared`: the proxy-wasm shared queue `tollgate/events`, drained
    /// by whichever worker ticks first (Envoy; on ngx_wasm_module it needs a `shm_queue
    /// tollgate/events` zone, which kong.conf cannot declare).
    pub shared_queue: bool,
    /// Records held at most (the shared queue has no eviction: past this, records are dropped
    /// and counted).
    pub queue_max: u64,
    /// Records per delivery call at most.
    pub batch_max: usize,
    /// Bytes of one delivery call's body at most (a single larger record still goes alone): under
    /// the agent's intake limit (`[sources.http] max_body_bytes`, 16 MiB by default), which
    /// refuses larger bodies with 413.
    pub batch_max_bytes: usize,
    /// The route serves LLM responses: read usage from its JSON bodies too (SSE streams and
    /// responses carrying Kong's `X-Kong-LLM-Model` are always read), and ask the upstream for
    /// unencoded bodies (`Accept-Encoding` removed).
    pub llm: bool,
    /// LLM response bodies larger than this are not parsed (counted as usage missing), bytes.
    pub max_llm_body_bytes: usize,
    /// Enforcement, when configured.
    pub enforcement: Option<Enforcement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    address: Option<String>,
    cluster: Option<String>,
    authority: Option<String>,
    events_path: Option<String>,
    entitlements_path: Option<String>,
    token: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
struct RawFeature {
    key: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawCodes {
    usage_limit_reached: Option<u16>,
    no_access: Option<u16>,
    unavailable: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnforcement {
    feature: Option<RawFeature>,
    fail_policy: Option<String>,
    deny_unknown_customers: Option<bool>,
    max_stale_seconds: Option<f64>,
    response_codes: Option<RawCodes>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent: Option<RawAgent>,
    source: Option<String>,
    meter_api_requests: Option<bool>,
    meter_ai_token_usage: Option<bool>,
    subject: Option<Subject>,
    attributes: Option<Vec<Attribute>>,
    consumer_property: Option<String>,
    flush_period_ms: Option<u32>,
    delivery_queue: Option<String>,
    queue_max: Option<u64>,
    batch_max: Option<usize>,
    batch_max_bytes: Option<usize>,
    llm: Option<bool>,
    max_llm_body_bytes: Option<usize>,
    enforcement: Option<RawEnforcement>,
}

fn invalid(field: &str, why: impl std::fmt::Display) -> String {
    format!("invalid tollgate filter config: config.{field}: {why}")
}

impl FilterConfig {
    /// Whether any event is made (`meter_api_requests` or `meter_ai_token_usage`): if not, the
    /// filter reads nothing for metering.
    pub fn meters(&self) -> bool {
        self.rules.meter_api_requests || self.rules.meter_ai_token_usage
    }

    /// Parses and validates the config bytes; the error names the field.
    pub fn from_json(json: &[u8]) -> Result<FilterConfig, String> {
        let json = if json.iter().all(u8::is_ascii_whitespace) {
            b"{}".as_slice()
        } else {
            json
        };
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(de)
            .map_err(|e| invalid(&e.path().to_string(), e.inner()))?;
        let rules = Rules::new(
            raw.meter_api_requests,
            raw.meter_ai_token_usage,
            raw.subject,
            raw.attributes,
        )
        .map_err(|(field, why)| invalid(&field, why))?;
        let agent = raw.agent.ok_or_else(|| {
            invalid(
                "agent",
                "required: {\"address\": \"127.0.0.1:7071\"} on Kong, {\"cluster\": …} on Envoy",
            )
        })?;
        let upstream = match (agent.address, agent.cluster) {
            (Some(a), None) if !a.is_empty() => {
                check_address(&a).map_err(|why| invalid("agent.address", why))?;
                a
            }
            (None, Some(c)) if !c.is_empty() => c,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "agent",
                    "give address (Kong) or cluster (Envoy), not both",
                ));
            }
            _ => {
                return Err(invalid(
                    "agent.address",
                    "required (ip:port of the agent's HTTP listener), or agent.cluster on Envoy",
                ));
            }
        };
        let rel = |field: &str, v: Option<String>, default: &str| -> Result<String, String> {
            let v = v.unwrap_or_else(|| default.to_owned());
            if !v.starts_with('/') {
                return Err(invalid(field, format!("{v:?} must start with /")));
            }
            Ok(v)
        };
        let agent = Agent {
            authority: agent
                .authority
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "tollgate-agent".to_owned()),
            events_path: rel("agent.events_path", agent.events_path, "/api/v1/events")?,
            entitlements_path: rel(
                "agent.entitlements_path",
                agent.entitlements_path,
                "/v1/entitlements",
            )?,
            token: agent.token.filter(|t| !t.is_empty()),
            timeout_ms: match agent.timeout_ms.unwrap_or(2_000) {
                0 => return Err(invalid("agent.timeout_ms", "must be above 0")),
                t => t,
            },
            upstream,
        };
        let flush_period_ms = raw.flush_period_ms.unwrap_or(1_000);
        if flush_period_ms == 0 {
            return Err(invalid("flush_period_ms", "must be above 0"));
        }
        let queue_max = raw.queue_max.unwrap_or(10_000);
        if queue_max == 0 {
            return Err(invalid("queue_max", "must be above 0"));
        }
        let batch_max = raw.batch_max.unwrap_or(500);
        if batch_max == 0 {
            return Err(invalid("batch_max", "must be above 0"));
        }
        let batch_max_bytes = raw.batch_max_bytes.unwrap_or(1 << 20);
        if batch_max_bytes < 1024 {
            return Err(invalid("batch_max_bytes", "must be at least 1024"));
        }
        let source = raw.source.unwrap_or_else(|| "kong-gateway".to_owned());
        if source.is_empty() {
            return Err(invalid("source", "must not be empty"));
        }
        let consumer_property = match raw.consumer_property {
            Some(p) if p.split('.').any(str::is_empty) => {
                return Err(invalid(
                    "consumer_property",
                    format!("{p:?} is not a dotted property path"),
                ));
            }
            Some(p) => Some(p.split('.').map(str::to_owned).collect()),
            None => None,
        };
        let shared_queue = match raw.delivery_queue.as_deref() {
            None | Some("worker") => false,
            Some("shared") => true,
            Some(other) => {
                return Err(invalid(
                    "delivery_queue",
                    format!("{other:?} is not worker or shared"),
                ));
            }
        };
        let enforcement = raw.enforcement.map(enforcement).transpose()?;
        Ok(FilterConfig {
            rules,
            source,
            consumer_property,
            agent,
            flush_period_ms,
            shared_queue,
            queue_max,
            batch_max,
            batch_max_bytes,
            llm: raw.llm.unwrap_or(false),
            max_llm_body_bytes: raw.max_llm_body_bytes.unwrap_or(4 << 20),
            enforcement,
        })
    }
}

fn check_address(a: &str) -> Result<(), String> {
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| format!("{a:?} is not host:port"))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("{a:?} is not host:port"));
    }
    Ok(())
}

fn enforcement(raw: RawEnforcement) -> Result<Enforcement, String> {
    let feature = raw
        .feature
        .and_then(|f| f.key)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| invalid("enforcement.feature.key", "required"))?;
    let fail_open = match raw.fail_policy.as_deref() {
        None | Some("allow") => true,
        Some("deny") => false,
        Some(other) => {
            return Err(invalid(
                "enforcement.fail_policy",
                format!("{other:?} is not allow or deny"),
            ));
        }
    };
    let max_stale = raw.max_stale_seconds.unwrap_or(60.0);
    if !max_stale.is_finite() || max_stale <= 0.0 {
        return Err(invalid("enforcement.max_stale_seconds", "must be above 0"));
    }
    let codes = raw.response_codes.unwrap_or_default();
    let code = |field: &str, v: Option<u16>, default: u16| -> Result<u16, String> {
        match v.unwrap_or(default) {
            c @ 400..=599 => Ok(c),
            c => Err(invalid(
                &format!("enforcement.response_codes.{field}"),
                format!("{c} is not a 4xx or 5xx status"),
            )),
        }
    };
    Ok(Enforcement {
        feature,
        fail_open,
        deny_unknown: raw.deny_unknown_customers.unwrap_or(true),
        max_stale_ms: (max_stale * 1000.0) as i64,
        limit_status: code("usage_limit_reached", codes.usage_limit_reached, 429)?,
        no_access_status: code("no_access", codes.no_access, 403)?,
        unavailable_status: code("unavailable", codes.unavailable, 503)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_minimal_config_takes_the_defaults() {
        let c = FilterConfig::from_json(br#"{"agent":{"address":"127.0.0.1:7071"}}"#).unwrap();
        assert_eq!(c.agent.upstream, "127.0.0.1:7071");
        assert_eq!(c.agent.events_path, "/api/v1/events");
        assert_eq!(c.flush_period_ms, 1_000);
        assert_eq!((c.batch_max, c.batch_max_bytes), (500, 1 << 20));
        assert!(c.rules.meter_api_requests && c.rules.meter_ai_token_usage);
        assert!(c.enforcement.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        for (json, field) in [
            (r#"{}"#, "config.agent"),
            (r#"{"agent":{}}"#, "config.agent.address"),
            (
                r#"{"agent":{"address":"localhost"}}"#,
                "config.agent.address",
            ),
            (
                r#"{"agent":{"address":"127.0.0.1:1","cluster":"a"}}"#,
                "config.agent",
            ),
            (
                r#"{"agent":{"address":"127.0.0.1:1"},"subject":{"look_up_value_in":"header"}}"#,
                "config.subject.field",
            ),
            (
                r#"{"agent":{"address":"127.0.0.1:1"},"enforcement":{}}"#,
                "config.enforcement.feature.key",
            ),
            (
                r#"{"agent":{"address":"127.0.0.1:1"},"enforcement":{"feature":{"key":"a"},"fail_policy":"maybe"}}"#,
                "config.enforcement.fail_policy",
            ),
            (
                r#"{"agent":{"address":"127.0.0.1:1"},"queue_max":0}"#,
                "config.queue_max",
            ),
            (
                r#"{"agent":{"address":"127.0.0.1:1"},"batch_max_bytes":100}"#,
                "config.batch_max_bytes",
            ),
            (
                r#"{"agent":{"address":"127.0.0.1:1"},"colour":1}"#,
                "colour",
            ),
        ] {
            let err = FilterConfig::from_json(json.as_bytes()).unwrap_err();
            assert!(err.contains(field), "{json}: {err}");
        }
    }
}
