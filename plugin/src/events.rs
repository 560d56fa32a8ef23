//! Turning one serialized Kong request into CloudEvents shaped like Kong's `metering-and-billing`
//! plugin (reference/konnect-metering.md §4): one `kong.api_request`, and for an AI Gateway
//! request two `kong.llm_request` (`data.type` = `request` with prompt tokens, `response` with
//! completion tokens).
//!
//! Kong's field names are never renamed, so a meter written for Kong's plugin works unchanged.
//! Our additions use names Kong's catalog does not: `consumer_id`, `consumer_username`,
//! `latency_kong_ms`, `latency_upstream_ms`, `latency_request_ms`, `latency_receive_ms`,
//! `response_source`, `workspace_name`, and on LLM events `total_tokens`, `cost`,
//! `llm_latency_ms`.
//!
//! Ids: the API event's `id` is Kong's request id (3.6+) or a fresh UUIDv7, fixed here and never
//! changed on retry; the LLM events use `<api id>:request` and `<api id>:response`, and carry the
//! API event's id as `api_request_id` like Kong's. `time` comes from `started_at`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use tollgate_proto::UsageEvent;

use crate::config::{AttributeSource, MeteringConfig, SubjectSource};
use crate::serialize::{self, AiUsage, LogEntry};

/// `type` of the per-request event.
pub const API_REQUEST: &str = "kong.api_request";
/// `type` of the token events.
pub const LLM_REQUEST: &str = "kong.llm_request";

/// What one request produced.
#[derive(Debug)]
pub enum Metered {
    /// The events to deliver (possibly none, when both toggles are off).
    Events(Vec<UsageEvent>),
    /// No subject could be resolved: Kong's plugin drops the event, and so do we (and count it).
    NoSubject,
}

/// Builds the events for one serialized request.
pub fn meter(entry: &LogEntry<'_>, config: &MeteringConfig, source: &str) -> Metered {
    let Some((subject, subject_type)) = resolve_subject(entry, config) else {
        return Metered::NoSubject;
    };
    let request = entry.request.as_ref();
    let api_id = request
        .and_then(|r| r.id.as_deref())
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let time = entry
        .started_at
        .and_then(|ms| DateTime::<Utc>::from_timestamp_millis(ms as i64))
        .unwrap_or_else(Utc::now)
        .to_rfc3339_opts(SecondsFormat::Millis, true);

    let attributes = custom_attributes(entry, config);
    let mut events = Vec::with_capacity(3);
    if config.meter_api_requests {
        let mut data = api_data(entry);
        data.insert("subject_type".into(), subject_type.into());
        data.extend(attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
        events.push(event(&api_id, source, API_REQUEST, &subject, &time, data));
    }
    if config.meter_ai_token_usage {
        let status = entry.response.as_ref().and_then(|r| r.status);
        let route_id = entry.route.as_ref().and_then(|r| r.id.as_deref());
        let service_id = entry.service.as_ref().and_then(|s| s.id.as_deref());
        for usage in serialize::ai_usages(entry.ai) {
            for kind in ["request", "response"] {
                let mut data = llm_data(&usage, kind, &api_id, status, route_id, service_id);
                data.insert("subject_type".into(), subject_type.into());
                data.extend(attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
                let id = if usage.plugin_name.is_empty() || usage.plugin_name == "proxy" {
                    format!("{api_id}:{kind}")
                } else {
                    format!("{api_id}:{}:{kind}", usage.plugin_name)
                };
                events.push(event(&id, source, LLM_REQUEST, &subject, &time, data));
            }
        }
    }
    Metered::Events(events)
}

fn event(
    id: &str,
    source: &str,
    ty: &str,
    subject: &str,
    time: &str,
    data: Map<String, Value>,
) -> UsageEvent {
    UsageEvent {
        id: id.to_owned(),
        source: source.to_owned(),
        r#type: ty.to_owned(),
        subject: subject.to_owned(),
        time: time.to_owned(),
        // Serialising a map of JSON values cannot fail.
        data: serde_json::to_vec(&data).unwrap_or_default(),
    }
}

/// The subject and its `subject_type`, or `None` when the configured source has no value.
fn resolve_subject(
    entry: &LogEntry<'_>,
    config: &MeteringConfig,
) -> Option<(String, &'static str)> {
    let field = config.subject_field.as_deref();
    let request = entry.request.as_ref();
    let found = match config.subject_source {
        SubjectSource::Consumer => {
            let consumer = entry.consumer.as_ref()?;
            match field {
                None | Some("id") => {
                    return consumer
                        .id
                        .as_deref()
                        .filter(|id| !id.is_empty())
                        .map(|id| (format!("consumer:{id}"), "consumer_id"));
                }
                Some("username") => consumer
                    .username
                    .as_deref()
                    .map(|v| (v.to_owned(), "consumer_username")),
                Some(_) => consumer
                    .custom_id
                    .as_deref()
                    .map(|v| (v.to_owned(), "consumer_custom_id")),
            }
        }
        SubjectSource::Header => {
            serialize::lookup(request.and_then(|r| r.headers), field?).map(|v| (v, "header"))
        }
        SubjectSource::Query => {
            serialize::lookup(request.and_then(|r| r.querystring), field?).map(|v| (v, "query"))
        }
        SubjectSource::Credential => entry
            .authenticated_entity
            .as_ref()
            .and_then(|c| c.id.as_deref())
            .map(|id| (format!("credential:{id}"), "credential_id")),
    };
    found.filter(|(v, _)| !v.is_empty())
}

fn custom_attributes(entry: &LogEntry<'_>, config: &MeteringConfig) -> Vec<(String, Value)> {
    let request = entry.request.as_ref();
    config
        .attributes
        .iter()
        .filter_map(|a| {
            let map = match a.source {
                AttributeSource::Header => request.and_then(|r| r.headers),
                AttributeSource::Query => request.and_then(|r| r.querystring),
            };
            serialize::lookup(map, &a.look_up_value_in)
                .map(|v| (a.event_property_name.clone(), Value::String(v)))
        })
        .collect()
}

fn put_str(data: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        data.insert(key.into(), Value::String(v.to_owned()));
    }
}

fn put_int(data: &mut Map<String, Value>, key: &str, value: Option<f64>) {
    if let Some(v) = value {
        data.insert(key.into(), Value::from(v as i64));
    }
}

fn put_num(data: &mut Map<String, Value>, key: &str, value: Option<f64>) {
    if let Some(v) = value.and_then(serde_json::Number::from_f64) {
        data.insert(key.into(), Value::Number(v));
    }
}

fn api_data(entry: &LogEntry<'_>) -> Map<String, Value> {
    let mut d = Map::new();
    let request = entry.request.as_ref();
    put_str(&mut d, "client_ip", entry.client_ip.as_deref());
    let host = serialize::lookup(request.and_then(|r| r.headers), "host")
        .or_else(|| request.and_then(|r| r.url.as_deref()).and_then(host_of_url));
    put_str(&mut d, "request_host", host.as_deref());
    put_str(
        &mut d,
        "request_method",
        request.and_then(|r| r.method.as_deref()),
    );
    let path = request
        .and_then(|r| r.uri.as_deref())
        .map(|u| u.split_once('?').map_or(u, |(p, _)| p));
    put_str(&mut d, "request_uri", path);
    put_int(&mut d, "request_size_bytes", request.and_then(|r| r.size));
    let agent = serialize::lookup(request.and_then(|r| r.headers), "user-agent");
    put_str(&mut d, "request_user_agent", agent.as_deref());
    put_int(
        &mut d,
        "response_size_bytes",
        entry.response.as_ref().and_then(|r| r.size),
    );
    put_int(
        &mut d,
        "response_http_status",
        entry.response.as_ref().and_then(|r| r.status),
    );
    if let Some(route) = &entry.route {
        put_str(&mut d, "route_id", route.id.as_deref());
        put_str(&mut d, "route_name", route.name.as_deref());
    }
    if let Some(service) = &entry.service {
        put_str(&mut d, "service_id", service.id.as_deref());
        put_str(&mut d, "service_name", service.name.as_deref());
        put_int(&mut d, "service_port", service.port);
        put_str(&mut d, "service_protocol", service.protocol.as_deref());
    }
    if let Some(status) = entry.upstream_status.as_ref().and_then(|s| s.as_int()) {
        d.insert("upstream_status".into(), Value::from(status));
    }
    // Our additions.
    if let Some(consumer) = &entry.consumer {
        put_str(&mut d, "consumer_id", consumer.id.as_deref());
        put_str(&mut d, "consumer_username", consumer.username.as_deref());
    }
    if let Some(l) = &entry.latencies {
        put_num(&mut d, "latency_kong_ms", l.kong);
        put_num(&mut d, "latency_upstream_ms", l.proxy.filter(|p| *p >= 0.0));
        put_num(&mut d, "latency_request_ms", l.request);
        put_num(&mut d, "latency_receive_ms", l.receive);
    }
    put_str(&mut d, "response_source", entry.source.as_deref());
    put_str(&mut d, "workspace_name", entry.workspace_name.as_deref());
    d
}

fn llm_data(
    usage: &AiUsage,
    kind: &str,
    api_id: &str,
    status: Option<f64>,
    route_id: Option<&str>,
    service_id: Option<&str>,
) -> Map<String, Value> {
    let mut d = Map::new();
    d.insert("type".into(), kind.into());
    let (tokens, model) = if kind == "request" {
        (
            usage.prompt_tokens,
            usage
                .request_model
                .as_deref()
                .or(usage.response_model.as_deref()),
        )
    } else {
        (
            usage.completion_tokens,
            usage
                .response_model
                .as_deref()
                .or(usage.request_model.as_deref()),
        )
    };
    d.insert("tokens".into(), Value::from(tokens));
    put_str(&mut d, "model", model);
    put_str(&mut d, "provider", usage.provider.as_deref());
    put_str(&mut d, "ai_plugin_id", usage.plugin_id.as_deref());
    let plugin_name = match usage.plugin_name.as_str() {
        "" | "proxy" => None,
        name => Some(name),
    };
    put_str(&mut d, "ai_plugin_name", plugin_name);
    d.insert("api_request_id".into(), api_id.into());
    put_str(&mut d, "cache_status", usage.cache_status.as_deref());
    put_int(&mut d, "http_status", status);
    put_str(&mut d, "route_id", route_id);
    put_str(&mut d, "service_id", service_id);
    // Our additions.
    d.insert("total_tokens".into(), Value::from(usage.total_tokens));
    put_num(&mut d, "cost", usage.cost);
    put_num(&mut d, "llm_latency_ms", usage.llm_latency_ms);
    d
}

fn host_of_url(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}
