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
#[cfg(feature = "proto")]
use tollgate_proto::encoded::EncodedEvent;
#[cfg(feature = "proto")]
pub use tollgate_proto::encoded::EventFields;

/// One event's fields, borrowed (the same struct as `tollgate_proto::encoded::EventFields`, for
/// builds without the `proto` feature such as the proxy-wasm filter).
#[cfg(not(feature = "proto"))]
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    /// CloudEvents `id`.
    pub id: &'a str,
    /// CloudEvents `source`.
    pub source: &'a str,
    /// CloudEvents `type`.
    pub r#type: &'a str,
    /// The billed subject.
    pub subject: &'a str,
    /// RFC 3339 time.
    pub time: &'a str,
    /// The `data` object as JSON.
    pub data: &'a [u8],
}

use crate::rules::{AttributeSource, Rules, SubjectSource};
use crate::serialize::{Ai, AiUsage, LogEntry};

/// `type` of the per-request event.
pub const API_REQUEST: &str = "kong.api_request";
/// `type` of the token events.
pub const LLM_REQUEST: &str = "kong.llm_request";

/// What one request produced.
#[cfg(feature = "proto")]
#[derive(Debug)]
pub enum Metered {
    /// The events to deliver, encoded for the agent (possibly none, when both toggles are off).
    Events(Vec<EncodedEvent>),
    /// No subject could be resolved: Kong's plugin drops the event, and so do we (and count it).
    NoSubject,
}

/// Builds the events for one serialized request, encoded for the agent's gRPC ingest.
#[cfg(feature = "proto")]
#[inline]
pub fn meter(entry: &LogEntry<'_>, config: &Rules, source: &str) -> Metered {
    let mut events = Vec::with_capacity(3);
    match meter_into(entry, config, source, |f| events.push(EncodedEvent::new(f))) {
        Ok(()) => Metered::Events(events),
        Err(NoSubject) => Metered::NoSubject,
    }
}

/// The configured subject source had no value for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSubject;

/// Builds the events for one serialized request and hands each to `emit`, borrowed: the caller
/// encodes them as it needs (the plugin as protobuf for the agent, the agent as stored events).
pub fn meter_into(
    entry: &LogEntry<'_>,
    config: &Rules,
    source: &str,
    mut emit: impl FnMut(EventFields<'_>),
) -> Result<(), NoSubject> {
    let Some((subject, subject_type)) = resolve_subject(entry, config) else {
        return Err(NoSubject);
    };
    let request = entry.request.as_ref();
    let fresh_id;
    let api_id = match request
        .and_then(|r| r.id.as_deref())
        .filter(|id| !id.is_empty())
    {
        Some(id) => id,
        None => {
            fresh_id = uuid::Uuid::now_v7().simple().to_string();
            &fresh_id
        }
    };
    let time = entry
        .started_at
        .and_then(|ms| DateTime::<Utc>::from_timestamp_millis(ms as i64))
        .unwrap_or_else(Utc::now)
        .to_rfc3339_opts(SecondsFormat::Millis, true);

    let attributes = custom_attributes(entry, config);
    if config.meter_api_requests {
        let mut data = DataWriter::new(&attributes);
        api_data(entry, &mut data);
        data.str("subject_type", Some(subject_type));
        emit(fields(
            api_id,
            source,
            API_REQUEST,
            &subject,
            &time,
            &data.finish(),
        ));
    }
    if config.meter_ai_token_usage {
        let status = entry.response.as_ref().and_then(|r| r.status);
        let route_id = entry.route.as_ref().and_then(|r| r.id.as_deref());
        let service_id = entry.service.as_ref().and_then(|s| s.id.as_deref());
        let usages = entry.ai.as_ref().map(Ai::usages).unwrap_or_default();
        for usage in usages.iter() {
            for kind in ["request", "response"] {
                let mut data = DataWriter::new(&attributes);
                llm_data(usage, kind, api_id, status, route_id, service_id, &mut data);
                data.str("subject_type", Some(subject_type));
                let id = if usage.plugin_name.is_empty() || usage.plugin_name == "proxy" {
                    format!("{api_id}:{kind}")
                } else {
                    format!("{api_id}:{}:{kind}", usage.plugin_name)
                };
                emit(fields(
                    &id,
                    source,
                    LLM_REQUEST,
                    &subject,
                    &time,
                    &data.finish(),
                ));
            }
        }
    }
    Ok(())
}

fn fields<'a>(
    id: &'a str,
    source: &'a str,
    ty: &'a str,
    subject: &'a str,
    time: &'a str,
    data: &'a [u8],
) -> EventFields<'a> {
    EventFields {
        id,
        source,
        r#type: ty,
        subject,
        time,
        data,
    }
}

/// Writes an event's `data` object straight into JSON bytes: no intermediate map, no per-field
/// allocation. Custom attributes win over built-in fields of the same name (as a later map insert
/// would), so built-in fields whose name an attribute uses are skipped, and attributes go last.
struct DataWriter<'a> {
    out: Vec<u8>,
    attributes: &'a [(&'a str, &'a str)],
}

impl<'a> DataWriter<'a> {
    fn new(attributes: &'a [(&'a str, &'a str)]) -> Self {
        let mut out = Vec::with_capacity(512);
        out.push(b'{');
        DataWriter { out, attributes }
    }

    /// Starts the member `key` (one of ours: plain ASCII, written as is) unless an attribute
    /// takes the name.
    fn key(&mut self, key: &'static str) -> bool {
        if self.attributes.iter().any(|(k, _)| *k == key) {
            return false;
        }
        let out = &mut self.out;
        out.reserve(key.len() + 4);
        if out.len() > 1 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.push(b'"');
        out.push(b':');
        true
    }

    fn str(&mut self, key: &'static str, value: Option<&str>) {
        if let Some(v) = value
            && self.key(key)
        {
            write_json_str(&mut self.out, v);
        }
    }

    fn int(&mut self, key: &'static str, value: Option<i64>) {
        if let Some(v) = value
            && self.key(key)
        {
            self.out
                .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        }
    }

    /// A number; whole numbers (Kong's latencies nearly always are) are written as integers.
    fn num(&mut self, key: &'static str, value: Option<f64>) {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        if let Some(v) = value.filter(|v| v.is_finite())
            && self.key(key)
        {
            if v.fract() == 0.0 && v.abs() < EXACT {
                self.out
                    .extend_from_slice(itoa::Buffer::new().format(v as i64).as_bytes());
            } else {
                self.out
                    .extend_from_slice(ryu::Buffer::new().format(v).as_bytes());
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        for (k, v) in self.attributes {
            if self.out.len() > 1 {
                self.out.push(b',');
            }
            write_json_str(&mut self.out, k);
            self.out.push(b':');
            write_json_str(&mut self.out, v);
        }
        self.out.push(b'}');
        self.out
    }
}

/// Appends `s` as a JSON string. Values without a quote, backslash or control character (nearly
/// all) are copied in one piece; the rest are escaped by `serde_json`.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Serialising a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Whether `s` holds a quote, a backslash or a control character (what JSON escapes), checked
/// eight bytes at a time: a byte below 0x20 or equal to `"`/`\\` sets its high bit in the
/// classic "has less than"/"has zero byte" word tricks (exact about whether any byte does; bytes
/// of 0x80 and up, UTF-8, never count).
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = ONES * 0x80;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = u64::from_le_bytes(b);
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        if control
            | has_zero(x ^ (ONES * u64::from(b'"')))
            | has_zero(x ^ (ONES * u64::from(b'\\')))
            != 0
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// The subject and its `subject_type`, or `None` when the configured source has no value.
fn resolve_subject(entry: &LogEntry<'_>, config: &Rules) -> Option<(String, &'static str)> {
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
                        .map(|id| (prefixed("consumer:", id), "consumer_id"));
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
        SubjectSource::Header => request?
            .headers
            .get(field?)
            .map(|v| (v.to_owned(), "header")),
        SubjectSource::Query => request?
            .querystring
            .get(field?)
            .map(|v| (v.to_owned(), "query")),
        SubjectSource::Credential => entry
            .authenticated_entity
            .as_ref()
            .and_then(|c| c.id.as_deref())
            .map(|id| (prefixed("credential:", id), "credential_id")),
    };
    found.filter(|(v, _)| !v.is_empty())
}

/// `prefix` + `id` in one allocation of the right size (no formatting machinery: this runs for
/// every request).
fn prefixed(prefix: &str, id: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + id.len());
    s.push_str(prefix);
    s.push_str(id);
    s
}

fn custom_attributes<'e>(entry: &'e LogEntry<'_>, config: &'e Rules) -> Vec<(&'e str, &'e str)> {
    let Some(request) = entry.request.as_ref() else {
        return Vec::new();
    };
    config
        .attributes
        .iter()
        .filter_map(|a| {
            let map = match a.source {
                AttributeSource::Header => &request.headers,
                AttributeSource::Query => &request.querystring,
            };
            map.get(&a.look_up_value_in)
                .map(|v| (a.event_property_name.as_str(), v))
        })
        .collect()
}

fn as_int(v: Option<f64>) -> Option<i64> {
    v.map(|f| f as i64)
}

fn api_data(entry: &LogEntry<'_>, d: &mut DataWriter<'_>) {
    let request = entry.request.as_ref();
    d.str("client_ip", entry.client_ip.as_deref());
    let host = request
        .and_then(|r| r.headers.get("host"))
        .or_else(|| request.and_then(|r| r.url.as_deref()).and_then(host_of_url));
    d.str("request_host", host);
    d.str("request_method", request.and_then(|r| r.method.as_deref()));
    let path = request
        .and_then(|r| r.uri.as_deref())
        .map(|u| u.split_once('?').map_or(u, |(p, _)| p));
    d.str("request_uri", path);
    d.int("request_size_bytes", as_int(request.and_then(|r| r.size)));
    d.str(
        "request_user_agent",
        request.and_then(|r| r.headers.get("user-agent")),
    );
    d.int(
        "response_size_bytes",
        as_int(entry.response.as_ref().and_then(|r| r.size)),
    );
    d.int(
        "response_http_status",
        as_int(entry.response.as_ref().and_then(|r| r.status)),
    );
    if let Some(route) = &entry.route {
        d.str("route_id", route.id.as_deref());
        d.str("route_name", route.name.as_deref());
    }
    if let Some(service) = &entry.service {
        d.str("service_id", service.id.as_deref());
        d.str("service_name", service.name.as_deref());
        d.int("service_port", as_int(service.port));
        d.str("service_protocol", service.protocol.as_deref());
    }
    d.int(
        "upstream_status",
        entry.upstream_status.as_ref().and_then(|s| s.as_int()),
    );
    // Our additions.
    if let Some(consumer) = &entry.consumer {
        d.str("consumer_id", consumer.id.as_deref());
        d.str("consumer_username", consumer.username.as_deref());
    }
    if let Some(l) = &entry.latencies {
        d.num("latency_kong_ms", l.kong);
        d.num("latency_upstream_ms", l.proxy.filter(|p| *p >= 0.0));
        d.num("latency_request_ms", l.request);
        d.num("latency_receive_ms", l.receive);
    }
    d.str("response_source", entry.source.as_deref());
    d.str("workspace_name", entry.workspace_name.as_deref());
}

fn llm_data(
    usage: &AiUsage,
    kind: &str,
    api_id: &str,
    status: Option<f64>,
    route_id: Option<&str>,
    service_id: Option<&str>,
    d: &mut DataWriter<'_>,
) {
    d.str("type", Some(kind));
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
    d.int("tokens", Some(tokens));
    d.str("model", model);
    d.str("provider", usage.provider.as_deref());
    d.str("ai_plugin_id", usage.plugin_id.as_deref());
    let plugin_name = match usage.plugin_name.as_str() {
        "" | "proxy" => None,
        name => Some(name),
    };
    d.str("ai_plugin_name", plugin_name);
    d.str("api_request_id", Some(api_id));
    d.str("cache_status", usage.cache_status.as_deref());
    d.int("http_status", as_int(status));
    d.str("route_id", route_id);
    d.str("service_id", service_id);
    // Our additions.
    d.int("total_tokens", Some(usage.total_tokens));
    d.num("cost", usage.cost);
    d.num("llm_latency_ms", usage.llm_latency_ms);
}

fn host_of_url(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_at_a_time_escape_check_agrees_with_a_byte_at_a_time_one() {
        let naive = |s: &[u8]| s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        // Every byte value at every position of strings up to 17 bytes long, over fillers that
        // sit next to the thresholds (0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff).
        for filler in [b'a', 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff] {
            for len in 1..=17 {
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut s = vec![filler; len];
                        s[at] = b;
                        assert_eq!(needs_escape(&s), naive(&s), "{s:?}");
                    }
                }
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape("Mozilla/5.0 (X11; Linux) é ✓".as_bytes()));
        let mut out = Vec::new();
        write_json_str(&mut out, "a \"b\" \\ c\u{1f}d — é");
        assert_eq!(
            serde_json::from_slice::<String>(&out).unwrap(),
            "a \"b\" \\ c\u{1f}d — é"
        );
    }

    #[test]
    fn data_is_valid_json_and_attributes_win_over_built_in_fields() {
        let attrs = vec![
            ("request_method", "custom \"quoted\""),
            ("team", "a\u{1}\\ é/"),
        ];
        let mut d = DataWriter::new(&attrs);
        d.str("request_method", Some("GET"));
        d.int("tokens", Some(42));
        d.num("cost", Some(0.25));
        d.num("latency_kong_ms", Some(3.0));
        d.num("big", Some(1e300));
        d.num("nan", Some(f64::NAN));
        d.str("absent", None);
        let v: serde_json::Value = serde_json::from_slice(&d.finish()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"request_method": "custom \"quoted\"", "team": "a\u{1}\\ é/", "tokens": 42, "cost": 0.25, "latency_kong_ms": 3, "big": 1e300})
        );
    }
}
