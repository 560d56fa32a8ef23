//! One proxied request as the filter saw it ([`RequestFacts`], gathered from headers, properties
//! and body callbacks) turned into CloudEvents JSON, by the same code as the external plugin:
//! the facts become the typed entry of `kong.log.serialize()` ([`LogEntry`], borrowed from the
//! facts, no JSON written or parsed) that [`tollgate_events::meter::meter_into`] reads for the
//! plugin too. The same request therefore makes the same events, byte for byte, with the same
//! ids on both paths (the id is Kong's request id, `ngx.kong_request_id`, which serialize's
//! `request.id` is too), and billing dedupes them on (`source`, `id`). The tests hold the filter
//! to that: each request written as serialize JSON and parsed as the plugin does gives the same
//! bytes.
//!
//! What a filter cannot see is left out of the shape (README, "The proxy-wasm filter"): the
//! consumer entity (its id, username and custom id come from the `X-Consumer-*` headers Kong's
//! auth plugins set), upstream and Kong latencies, `upstream_status`, `response_source`,
//! `workspace_name`, the service's port and protocol, and ai-proxy's cost and plugin ids.

use std::borrow::Cow;

use tollgate_events::meter::{self, EventFields};
use tollgate_events::rules::{AttributeSource, Rules, SubjectSource};
use tollgate_events::serialize::{
    Ai, AiUsage, Consumer, Entity, FieldMap, Latencies, LogEntry, Request, Response, Service,
};

use crate::usage::Usage;

/// What the filter learnt about one request.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    /// Kong's request id (`ngx.kong_request_id`), or `x-request-id` on Envoy.
    pub id: Option<String>,
    /// When the request headers reached the filter, Unix ms.
    pub started_at_ms: i64,
    /// When the log callback ran, Unix ms.
    pub finished_at_ms: i64,
    /// `:method`.
    pub method: Option<String>,
    /// `:path` (path and query as received).
    pub path: Option<String>,
    /// `:scheme` (not read by the filter: no event uses it).
    pub scheme: Option<String>,
    /// Request headers, names lowercase, pseudo-headers left out: the filter keeps only those
    /// [`reads_header`] says the events or the decision can read (names the filter knows are
    /// `'static`, not copied per request).
    pub headers: Vec<(Cow<'static, str>, String)>,
    /// The client address (`source.address`, without the port).
    pub client_ip: Option<String>,
    /// Request size, bytes (headers and body when the host says; else the body).
    pub request_size: Option<i64>,
    /// Response size, bytes.
    pub response_size: Option<i64>,
    /// Status sent to the client.
    pub status: Option<i64>,
    /// `kong.route_id` / `kong.route_name` (Kong 3.6+), `xds.route_name` on Envoy.
    pub route_id: Option<String>,
    /// Route name.
    pub route_name: Option<String>,
    /// `kong.service_id` / `kong.service_name`, `xds.cluster_name` on Envoy.
    pub service_id: Option<String>,
    /// Service name.
    pub service_name: Option<String>,
    /// The consumer id from the configured property, when one is set (else `x-consumer-id`).
    pub consumer_id: Option<String>,
    /// LLM usage read from the response body.
    pub llm: Option<Usage>,
}

impl RequestFacts {
    /// A request header (names are lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The subject `rules` name for this request, as the events will carry it (the
    /// enforcement decision uses the same subject as metering).
    pub fn subject(&self, rules: &Rules) -> Option<String> {
        let field = rules.subject_field.as_deref();
        let found = match rules.subject_source {
            SubjectSource::Consumer => match field {
                None | Some("id") => {
                    return self
                        .consumer_id
                        .as_deref()
                        .or_else(|| self.header("x-consumer-id"))
                        .filter(|id| !id.is_empty())
                        .map(|id| format!("consumer:{id}"));
                }
                Some("username") => self.header("x-consumer-username").map(str::to_owned),
                Some(_) => self.header("x-consumer-custom-id").map(str::to_owned),
            },
            SubjectSource::Header => self.header(field?).map(str::to_owned),
            SubjectSource::Query => self.query(field?),
            SubjectSource::Credential => self
                .header("x-credential-identifier")
                .map(|id| format!("credential:{id}")),
        };
        found.filter(|s| !s.is_empty())
    }

    /// The first value of query parameter `name`, decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.path.as_deref()?.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == name).then(|| decode(v).into_owned())
        })
    }

    /// The request as the typed entry [`meter::meter_into`] reads, borrowing from the facts:
    /// what `kong.log.serialize()` would say of it, field for field, with what a filter has —
    /// without writing that JSON and parsing it back. The query is decoded only when `rules`
    /// read it (a query subject or attribute); nothing else in the events uses it.
    pub fn entry(&self, rules: &Rules) -> LogEntry<'_> {
        let headers = self
            .headers
            .iter()
            .map(|(k, v)| (Cow::Borrowed(k.as_ref()), Cow::Borrowed(v.as_str())))
            .collect();
        let reads_query = rules.subject_source == SubjectSource::Query
            || rules
                .attributes
                .iter()
                .any(|a| a.source == AttributeSource::Query);
        let querystring = match self.path.as_deref().and_then(|p| p.split_once('?')) {
            Some((_, query)) if reads_query => query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(k), decode(v))
                })
                .collect(),
            _ => Vec::new(),
        };
        let consumer_id = self
            .consumer_id
            .as_deref()
            .or_else(|| self.header("x-consumer-id"));
        let consumer = match (
            consumer_id,
            self.header("x-consumer-username"),
            self.header("x-consumer-custom-id"),
        ) {
            (None, None, None) => None,
            (id, username, custom_id) => Some(Consumer {
                id: id.map(Cow::Borrowed),
                username: username.map(Cow::Borrowed),
                custom_id: custom_id.map(Cow::Borrowed),
            }),
        };
        let ai = self.llm.as_ref().map(|u| {
            Ai::Read(vec![AiUsage {
                // Kong 3.9+'s `ai.proxy`: the LLM events' ids are `<id>:request`/`:response`.
                plugin_name: "proxy".to_owned(),
                provider: u.provider.map(str::to_owned),
                request_model: u.model.clone(),
                response_model: u.model.clone(),
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: u.total_tokens,
                ..AiUsage::default()
            }])
        });
        fn s(v: &Option<String>) -> Option<Cow<'_, str>> {
            v.as_deref().map(Cow::Borrowed)
        }
        LogEntry {
            request: Some(Request {
                id: s(&self.id),
                uri: s(&self.path),
                // Serialize's `url` is read only for the host when there is no `host` header,
                // and the filter has a host only from that header (`:authority`).
                url: None,
                method: s(&self.method),
                size: self.request_size.map(|n| n as f64),
                headers: FieldMap::from_pairs(headers),
                querystring: FieldMap::from_pairs(querystring),
            }),
            response: Some(Response {
                status: self.status.map(|n| n as f64),
                size: self.response_size.map(|n| n as f64),
            }),
            latencies: Some(Latencies {
                request: Some((self.finished_at_ms - self.started_at_ms).max(0) as f64),
                ..Latencies::default()
            }),
            route: Some(Entity {
                id: s(&self.route_id),
                name: s(&self.route_name),
            }),
            service: Some(Service {
                id: s(&self.service_id),
                name: s(&self.service_name),
                ..Service::default()
            }),
            consumer,
            authenticated_entity: self.header("x-credential-identifier").map(|id| Entity {
                id: Some(Cow::Borrowed(id)),
                name: None,
            }),
            client_ip: s(&self.client_ip),
            started_at: Some(self.started_at_ms as f64),
            ai,
            ..LogEntry::default()
        }
    }
}

/// Whether anything made from a request under `rules` reads its header `name` (lowercase):
/// the events (`host`, `user-agent`, the consumer and credential headers Kong's auth plugins set,
/// a header subject or attribute), the ids on Envoy (`x-request-id`) and the enforcement
/// decision (the same subject). The filter copies only these out of the header map; the events
/// are the same as from every header (the parity test holds it to that).
pub fn reads_header(name: &str, rules: &Rules) -> bool {
    known_header(name).is_some()
        || (rules.subject_source == SubjectSource::Header
            && rules
                .subject_field
                .as_deref()
                .is_some_and(|f| f.eq_ignore_ascii_case(name)))
        || rules.attributes.iter().any(|a| {
            a.source == AttributeSource::Header && a.look_up_value_in.eq_ignore_ascii_case(name)
        })
}

/// `name` as the `'static` name of a header the events always read (not a configured one).
pub fn known_header(name: &str) -> Option<&'static str> {
    [
        "host",
        "user-agent",
        "x-consumer-id",
        "x-consumer-username",
        "x-consumer-custom-id",
        "x-credential-identifier",
        "x-request-id",
    ]
    .into_iter()
    .find(|k| *k == name)
}

/// The (name, value) pairs of a header map in the proxy-wasm ABI's serialization, borrowed from
/// it: a count, a name and a value length per pair (u32 LE), then each name and value followed
/// by a NUL. A truncated map yields the pairs before the cut; pairs that are not UTF-8 are
/// skipped.
pub fn header_pairs(map: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    let u32_at = move |at: usize| -> Option<usize> {
        let b = map.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = u32_at(0).unwrap_or(0);
    let mut at = n.saturating_mul(8).saturating_add(4);
    (0..n)
        .map_while(move |i| {
            let (kl, vl) = (u32_at(4 + i * 8)?, u32_at(8 + i * 8)?);
            let k = map.get(at..at.checked_add(kl)?)?;
            let v = map.get(at + kl + 1..(at + kl + 1).checked_add(vl)?)?;
            at += kl + 1 + vl + 1;
            Some((std::str::from_utf8(k).ok(), std::str::from_utf8(v).ok()))
        })
        .filter_map(|(k, v)| Some((k?, v?)))
}

/// A query name or value, decoded as Kong's `ngx.req.get_uri_args` does (`+` is a space);
/// borrowed when there is nothing to decode.
fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// The outcome of metering one request.
#[derive(Debug, Default)]
pub struct Metered {
    /// CloudEvents, each one JSON object, ready for the agent's intake.
    pub events: Vec<Vec<u8>>,
    /// The configured subject source had no value (the event is dropped, as Kong's plugin does).
    pub no_subject: bool,
    /// LLM events were made from a stream cut before its final usage (flagged in `data`).
    pub usage_missing: bool,
}

/// Builds the request's events under `rules`, stamped with `source`.
pub fn meter(facts: &RequestFacts, rules: &Rules, source: &str) -> Metered {
    let mut out = Metered::default();
    if !rules.meter_api_requests && !rules.meter_ai_token_usage {
        return out;
    }
    let entry = facts.entry(rules);
    let incomplete = facts.llm.as_ref().is_some_and(|u| !u.complete);
    // A cut stream flags every event of the request: the token events (when some tokens were
    // seen) and the request's own event, which is all there is when none were.
    let result = meter::meter_into(&entry, rules, source, |f| {
        out.events.push(cloudevent(&f, incomplete));
    });
    out.no_subject = result.is_err();
    out.usage_missing = incomplete && !out.no_subject && rules.meter_ai_token_usage;
    out
}

/// One event as a CloudEvents JSON object. `usage_incomplete` adds `"usage_complete": false` to
/// `data` (an addition; Kong's names are unchanged): the response was an LLM stream that ended
/// before its final usage.
fn cloudevent(f: &EventFields<'_>, usage_incomplete: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.data.len() + 256);
    out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
    push_str(&mut out, f.id);
    out.extend_from_slice(b",\"source\":");
    push_str(&mut out, f.source);
    out.extend_from_slice(b",\"type\":");
    push_str(&mut out, f.r#type);
    out.extend_from_slice(b",\"subject\":");
    push_str(&mut out, f.subject);
    out.extend_from_slice(b",\"time\":");
    push_str(&mut out, f.time);
    out.extend_from_slice(b",\"datacontenttype\":\"application/json\",\"data\":");
    match (usage_incomplete, f.data.strip_suffix(b"}")) {
        (true, Some(open)) => {
            out.extend_from_slice(open);
            if open.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(b"\"usage_complete\":false}");
        }
        _ => out.extend_from_slice(f.data),
    }
    out.push(b'}');
    out
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    meter::write_json_str(out, s);
}

/// The body of one delivery: a JSON array of events (`application/cloudevents-batch+json`).
pub fn batch_body<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = vec![b'['];
    for e in events {
        if body.len() > 1 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.push(b']');
    body
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::{Map, Value, json};
    use tollgate_events::rules::Subject;
    use tollgate_events::serialize;

    fn facts() -> RequestFacts {
        RequestFacts {
            id: Some("5f0c3a1e7d2b4c6a8e9f0a1b2c3d4e5f".into()),
            started_at_ms: 1_764_000_000_123,
            finished_at_ms: 1_764_000_000_140,
            method: Some("POST".into()),
            path: Some("/v1/chat?project=apollo&x=a%20b".into()),
            scheme: Some("http".into()),
            headers: vec![
                ("host".into(), "api.example.com".into()),
                ("user-agent".into(), "curl/8".into()),
                (
                    "x-consumer-id".into(),
                    "8f1c1e9e-0000-4000-8000-000000000001".into(),
                ),
                ("x-consumer-username".into(), "alice".into()),
            ],
            client_ip: Some("10.0.0.7".into()),
            request_size: Some(120),
            response_size: Some(900),
            status: Some(200),
            route_id: Some("r-1".into()),
            route_name: Some("chat".into()),
            service_id: Some("s-1".into()),
            service_name: Some("llm".into()),
            consumer_id: None,
            llm: Some(Usage {
                provider: Some("openai"),
                model: Some("gpt-4o".into()),
                prompt_tokens: 10,
                completion_tokens: 5,
                total_tokens: 15,
                complete: true,
            }),
        }
    }

    fn events(m: &Metered) -> Vec<Value> {
        m.events
            .iter()
            .map(|e| serde_json::from_slice(e).unwrap())
            .collect()
    }

    #[test]
    fn one_api_event_and_two_llm_events_in_kongs_shape() {
        let m = meter(&facts(), &Rules::default(), "kong-gateway/node-1");
        let e = events(&m);
        assert_eq!(e.len(), 3);
        let api = &e[0];
        assert_eq!(api["type"], "kong.api_request");
        assert_eq!(api["id"], "5f0c3a1e7d2b4c6a8e9f0a1b2c3d4e5f");
        assert_eq!(
            api["subject"],
            "consumer:8f1c1e9e-0000-4000-8000-000000000001"
        );
        assert_eq!(api["time"], "2025-11-24T16:00:00.123Z");
        let d = &api["data"];
        assert_eq!(d["request_method"], "POST");
        assert_eq!(d["request_uri"], "/v1/chat");
        assert_eq!(d["request_host"], "api.example.com");
        assert_eq!(d["response_http_status"], 200);
        assert_eq!(d["route_name"], "chat");
        assert_eq!(d["service_id"], "s-1");
        assert_eq!(d["latency_request_ms"], 17);
        assert_eq!(d["consumer_username"], "alice");
        assert_eq!(e[1]["id"], "5f0c3a1e7d2b4c6a8e9f0a1b2c3d4e5f:request");
        assert_eq!(e[1]["data"]["tokens"], 10);
        assert_eq!(e[2]["id"], "5f0c3a1e7d2b4c6a8e9f0a1b2c3d4e5f:response");
        assert_eq!(e[2]["data"]["tokens"], 5);
        assert_eq!(e[2]["data"]["model"], "gpt-4o");
        assert_eq!(e[2]["data"]["provider"], "openai");
        assert!(e[2]["data"].get("usage_complete").is_none());
    }

    /// The request in `kong.log.serialize()`'s shape, as Kong would write it with what a
    /// filter has (the filter's own path until session 6, kept as the oracle).
    fn serialize_json(f: &RequestFacts) -> String {
        fn decode(s: &str) -> String {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        }
        let mut headers = Map::new();
        for (k, v) in &f.headers {
            headers
                .entry(k.to_ascii_lowercase())
                .or_insert_with(|| Value::from(v.as_str()));
        }
        let query = f
            .path
            .as_deref()
            .and_then(|p| p.split_once('?'))
            .map(|(_, q)| q)
            .unwrap_or("");
        let mut querystring = Map::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .map_or((pair, None), |(k, v)| (k, Some(v)));
            querystring
                .entry(decode(k))
                .or_insert_with(|| v.map_or(Value::Bool(true), |v| Value::from(decode(v))));
        }
        let host = f.header("host");
        let url = match (f.scheme.as_deref(), host, f.path.as_deref()) {
            (Some(s), Some(h), Some(p)) => Some(format!("{s}://{h}{p}")),
            _ => None,
        };
        let consumer_id = f
            .consumer_id
            .as_deref()
            .or_else(|| f.header("x-consumer-id"));
        let consumer = match (
            consumer_id,
            f.header("x-consumer-username"),
            f.header("x-consumer-custom-id"),
        ) {
            (None, None, None) => Value::Null,
            (id, username, custom_id) => {
                json!({"id": id, "username": username, "custom_id": custom_id})
            }
        };
        let ai = f.llm.as_ref().map(|u| {
            json!({"proxy": {
                "meta": {"provider_name": u.provider, "request_model": u.model, "response_model": u.model},
                "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens},
            }})
        });
        json!({
            "request": {
                "id": f.id, "uri": f.path, "url": url, "method": f.method,
                "size": f.request_size, "headers": headers, "querystring": querystring,
            },
            "response": {"status": f.status, "size": f.response_size},
            "latencies": {"request": (f.finished_at_ms - f.started_at_ms).max(0)},
            "route": {"id": f.route_id, "name": f.route_name},
            "service": {"id": f.service_id, "name": f.service_name},
            "consumer": consumer,
            "authenticated_entity": f.header("x-credential-identifier").map(|id| json!({"id": id})),
            "client_ip": f.client_ip,
            "started_at": f.started_at_ms,
            "ai": ai,
        })
        .to_string()
    }

    /// Every field of every event, as the external plugin's path makes them from `json`.
    fn plugin_path(json: &str, rules: &Rules, source: &str) -> Result<Vec<[Vec<u8>; 6]>, ()> {
        let entry = serialize::parse(json).unwrap();
        let mut out = Vec::new();
        meter::meter_into(&entry, rules, source, |e| {
            out.push([
                e.id.as_bytes().to_vec(),
                e.source.as_bytes().to_vec(),
                e.r#type.as_bytes().to_vec(),
                e.subject.as_bytes().to_vec(),
                e.time.as_bytes().to_vec(),
                e.data.to_vec(),
            ])
        })
        .map_err(|_| ())?;
        Ok(out)
    }

    /// The same fields of the filter's events (strings decoded from its CloudEvents JSON,
    /// `data` as the exact bytes it carries).
    fn filter_path(f: &RequestFacts, rules: &Rules, source: &str) -> Result<Vec<[Vec<u8>; 6]>, ()> {
        let m = meter(f, rules, source);
        if m.no_subject {
            return Err(());
        }
        Ok(m.events
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_slice(e).unwrap();
                let raw: std::collections::HashMap<String, Box<serde_json::value::RawValue>> =
                    serde_json::from_slice(e).unwrap();
                let s = |k: &str| v[k].as_str().unwrap().as_bytes().to_vec();
                [
                    s("id"),
                    s("source"),
                    s("type"),
                    s("subject"),
                    s("time"),
                    raw["data"].get().as_bytes().to_vec(),
                ]
            })
            .collect())
    }

    fn rules(subject: Option<(SubjectSource, &str)>, attributes: serde_json::Value) -> Rules {
        let attributes = serde_json::from_value(attributes).unwrap();
        Rules::new(
            None,
            None,
            subject.map(|(s, field)| Subject {
                look_up_value_in: Some(s),
                field: Some(field.into()),
            }),
            Some(attributes),
        )
        .unwrap()
    }

    #[test]
    fn every_event_is_byte_for_byte_what_the_external_plugin_makes_from_the_same_serialize_json() {
        // The external plugin feeds Kong's serialize JSON to `meter_into`; the filter hands it
        // the typed entry directly. Each request below, written as serialize JSON and parsed
        // as the plugin does, must give the same events: same ids, subject, time, and the
        // same `data` bytes.
        let base = facts();
        let mut variants = vec![base.clone()];
        // No LLM, no route/service names, no sizes, quoting and non-ASCII in values.
        let mut v = base.clone();
        v.llm = None;
        v.route_name = None;
        v.service_id = None;
        v.request_size = None;
        v.response_size = None;
        v.headers
            .push(("user-agent".into(), "second \"ua\" ignored".into()));
        v.headers[1].1 = "Mozilla/5.0 \"quoted\" \\ é \u{1}".into();
        variants.push(v);
        // Consumer from the configured property, credential, custom id, query flags, an
        // escaped query, a path with no query, a negative duration clamped to 0.
        let mut v = base.clone();
        v.consumer_id = Some("prop-consumer".into());
        v.headers
            .push(("x-credential-identifier".into(), "cred-9".into()));
        v.headers
            .push(("x-consumer-custom-id".into(), "cust-7".into()));
        v.headers.push(("x-tenant".into(), "acme".into()));
        v.headers.push(("accept".into(), "application/json".into()));
        v.headers.push(("cookie".into(), "a=1; b=2".into()));
        v.path = Some("/v1/a%2Fb?flag&team=blue+green&team=red&t%C3%A9=%E2%9C%93&empty=".into());
        v.finished_at_ms = v.started_at_ms - 5;
        variants.push(v);
        let mut v = base.clone();
        v.path = Some("/plain".into());
        // A fresh UUIDv7 on each path: compared without the ids below (and no LLM events,
        // whose `data` names the API event's id).
        v.id = None;
        v.llm = None;
        variants.push(v);
        // No consumer at all, no status, a cut stream with nothing seen, Anthropic.
        let mut v = base.clone();
        v.headers.retain(|(k, _)| !k.starts_with("x-consumer"));
        v.status = None;
        v.llm = Some(Usage {
            provider: Some("anthropic"),
            model: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            total_tokens: 0,
            complete: false,
        });
        variants.push(v);
        let rule_sets = [
            Rules::default(),
            rules(Some((SubjectSource::Consumer, "username")), json!([])),
            rules(Some((SubjectSource::Consumer, "custom_id")), json!([])),
            rules(Some((SubjectSource::Header, "X-Tenant")), json!([])),
            rules(Some((SubjectSource::Query, "team")), json!([])),
            rules(Some((SubjectSource::Query, "té")), json!([])),
            rules(Some((SubjectSource::Credential, "id")), json!([])),
            rules(
                None,
                json!([
                    {"source": "header", "look_up_value_in": "user-agent", "event_property_name": "ua"},
                    {"source": "query", "look_up_value_in": "team", "event_property_name": "team"},
                    {"source": "query", "look_up_value_in": "flag", "event_property_name": "flag"},
                    {"source": "query", "look_up_value_in": "empty", "event_property_name": "route_name"},
                ]),
            ),
            Rules::new(Some(false), Some(true), None, None).unwrap(),
            Rules::new(Some(true), Some(false), None, None).unwrap(),
        ];
        let (mut compared, mut no_subject) = (0, 0);
        for (i, f) in variants.iter().enumerate() {
            let json = serialize_json(f);
            for (j, r) in rule_sets.iter().enumerate() {
                let plugin = plugin_path(&json, r, "kong-gateway/node-1");
                // The filter keeps only the headers the rules can read.
                let mut kept = f.clone();
                kept.headers.retain(|(k, _)| reads_header(k, r));
                let filter = filter_path(&kept, r, "kong-gateway/node-1");
                let (Ok(plugin), Ok(filter)) = (&plugin, &filter) else {
                    assert_eq!(plugin.is_err(), filter.is_err(), "request {i}, rules {j}");
                    no_subject += 1;
                    continue;
                };
                assert_eq!(plugin.len(), filter.len(), "request {i}, rules {j}");
                for (p, w) in plugin.iter().zip(filter) {
                    let mut p = p.clone();
                    if f.llm.as_ref().is_some_and(|u| !u.complete) {
                        // The filter's one addition: a cut stream flags the request's events.
                        p[5].pop();
                        p[5].extend_from_slice(b",\"usage_complete\":false}");
                    }
                    let from = usize::from(f.id.is_none());
                    for k in from..6 {
                        assert_eq!(
                            String::from_utf8_lossy(&p[k]),
                            String::from_utf8_lossy(&w[k]),
                            "request {i}, rules {j}, field {k}"
                        );
                    }
                    compared += 1;
                }
            }
        }
        assert!(compared >= 45, "only {compared} events compared");
        assert!(no_subject >= 5, "the no-subject cases ran: {no_subject}");
    }

    #[test]
    fn header_maps_are_read_in_place_and_cut_maps_stop_at_the_cut() {
        let pairs = [("host", "a.example"), ("x-e", ""), ("user-agent", "ü/1")];
        let mut map = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            map.extend_from_slice(&(k.len() as u32).to_le_bytes());
            map.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            map.extend_from_slice(k.as_bytes());
            map.push(0);
            map.extend_from_slice(v.as_bytes());
            map.push(0);
        }
        assert_eq!(header_pairs(&map).collect::<Vec<_>>(), pairs);
        for cut in 0..map.len() {
            let got: Vec<_> = header_pairs(&map[..cut]).collect();
            assert!(pairs.starts_with(&got), "cut at {cut}: {got:?}");
        }
        assert_eq!(header_pairs(&[]).count(), 0);
        let rules = rules(Some((SubjectSource::Header, "X-Tenant")), json!([]));
        assert!(reads_header("x-tenant", &rules) && reads_header("host", &rules));
        assert!(!reads_header("accept", &rules) && !reads_header("x-tenant", &Rules::default()));
    }

    #[test]
    fn nothing_is_built_when_nothing_is_metered() {
        let m = meter(
            &facts(),
            &Rules::new(Some(false), Some(false), None, None).unwrap(),
            "s",
        );
        assert!(m.events.is_empty() && !m.no_subject && !m.usage_missing);
    }

    #[test]
    fn a_cut_stream_flags_its_llm_events_and_header_subjects_work() {
        let mut f = facts();
        if let Some(u) = f.llm.as_mut() {
            u.complete = false;
            u.completion_tokens = 0;
        }
        let rules = Rules::new(
            None,
            None,
            Some(Subject {
                look_up_value_in: Some(SubjectSource::Header),
                field: Some("x-consumer-username".into()),
            }),
            None,
        )
        .unwrap();
        let m = meter(&f, &rules, "src");
        assert_eq!(f.subject(&rules).as_deref(), Some("alice"));
        assert_eq!(
            f.subject(&Rules::default()).as_deref(),
            Some("consumer:8f1c1e9e-0000-4000-8000-000000000001")
        );
        assert!(m.usage_missing);
        let e = events(&m);
        assert_eq!(e[0]["subject"], "alice");
        assert_eq!(e[0]["data"]["usage_complete"], false);
        assert_eq!(e[2]["data"]["usage_complete"], false);
        // Nothing seen at all: no token events (none are guessed), the request's event flagged.
        if let Some(u) = f.llm.as_mut() {
            u.prompt_tokens = 0;
            u.total_tokens = 0;
        }
        let e = events(&meter(&f, &rules, "src"));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0]["data"]["usage_complete"], false);
        // No subject: nothing, counted.
        f.headers.retain(|(k, _)| k != "x-consumer-username");
        let m = meter(&f, &rules, "src");
        assert!(m.no_subject && m.events.is_empty());
    }

    #[test]
    fn batches_are_json_arrays() {
        let b = batch_body([b"{\"a\":1}".as_slice(), b"{\"b\":2}".as_slice()]);
        assert_eq!(
            serde_json::from_slice::<Value>(&b).unwrap(),
            json!([{"a":1},{"b":2}])
        );
    }
}
