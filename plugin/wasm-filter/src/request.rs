//! One proxied request as the filter saw it ([`RequestFacts`], gathered from headers, properties
//! and body callbacks) turned into CloudEvents JSON, by the same code as the external plugin:
//! the facts are written in `kong.log.serialize()`'s shape and handed to
//! [`tollgate_events::meter::meter_into`]. The same request therefore makes the same events with
//! the same ids on both paths (the id is Kong's request id, `ngx.kong_request_id`, which
//! serialize's `request.id` is too), and billing dedupes them on (`source`, `id`).
//!
//! What a filter cannot see is left out of the shape (README, "The proxy-wasm filter"): the
//! consumer entity (its id, username and custom id come from the `X-Consumer-*` headers Kong's
//! auth plugins set), upstream and Kong latencies, `upstream_status`, `response_source`,
//! `workspace_name`, the service's port and protocol, and ai-proxy's cost and plugin ids.

use serde_json::{Map, Value, json};
use tollgate_events::meter::{self, EventFields};
use tollgate_events::rules::{Rules, SubjectSource};
use tollgate_events::serialize;

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
    /// `:scheme`.
    pub scheme: Option<String>,
    /// Request headers, names lowercase, pseudo-headers left out.
    pub headers: Vec<(String, String)>,
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
            (decode(k) == name).then(|| decode(v))
        })
    }

    /// The request in `kong.log.serialize()`'s shape, with what a filter has.
    pub fn to_serialize_json(&self) -> String {
        let mut headers = Map::new();
        for (k, v) in &self.headers {
            headers
                .entry(k.to_ascii_lowercase())
                .or_insert_with(|| Value::from(v.as_str()));
        }
        let query = self
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
        let host = self.header("host").or_else(|| self.header(":authority"));
        let url = match (self.scheme.as_deref(), host, self.path.as_deref()) {
            (Some(s), Some(h), Some(p)) => Some(format!("{s}://{h}{p}")),
            _ => None,
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
            (None, None, None) => Value::Null,
            (id, username, custom_id) => {
                json!({"id": id, "username": username, "custom_id": custom_id})
            }
        };
        let ai = self.llm.as_ref().map(|u| {
            json!({"proxy": {
                "meta": {"provider_name": u.provider, "request_model": u.model, "response_model": u.model},
                "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens},
            }})
        });
        json!({
            "request": {
                "id": self.id, "uri": self.path, "url": url, "method": self.method,
                "size": self.request_size, "headers": headers, "querystring": querystring,
            },
            "response": {"status": self.status, "size": self.response_size},
            "latencies": {"request": (self.finished_at_ms - self.started_at_ms).max(0)},
            "route": {"id": self.route_id, "name": self.route_name},
            "service": {"id": self.service_id, "name": self.service_name},
            "consumer": consumer,
            "authenticated_entity": self.header("x-credential-identifier").map(|id| json!({"id": id})),
            "client_ip": self.client_ip,
            "started_at": self.started_at_ms,
            "ai": ai,
        })
        .to_string()
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
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
    let json = facts.to_serialize_json();
    let mut out = Metered::default();
    let Ok(entry) = serialize::parse(&json) else {
        // Cannot happen: the JSON was written just above from typed values.
        return out;
    };
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
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
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
    use tollgate_events::rules::Subject;

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

    #[test]
    fn the_same_request_as_serialize_json_makes_the_same_events_as_the_external_plugin_path() {
        // The external plugin feeds Kong's serialize JSON to the same builder: a request
        // described both ways (here, the filter's own serialize JSON parsed back) matches.
        let f = facts();
        let mut plugin_side = Vec::new();
        let json = f.to_serialize_json();
        let entry = serialize::parse(&json).unwrap();
        meter::meter_into(&entry, &Rules::default(), "src", |e| {
            plugin_side.push((e.id.to_owned(), e.subject.to_owned(), e.data.to_vec()))
        })
        .unwrap();
        let filter_side = events(&meter(&f, &Rules::default(), "src"));
        for (p, w) in plugin_side.iter().zip(&filter_side) {
            assert_eq!(w["id"], p.0.as_str());
            assert_eq!(w["subject"], p.1.as_str());
            assert_eq!(w["data"], serde_json::from_slice::<Value>(&p.2).unwrap());
        }
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
