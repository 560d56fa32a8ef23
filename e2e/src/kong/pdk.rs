//! Answers to the PDK calls a plugin makes, as Kong encodes them (reference/kong-protocols.md
//! §1.4 "How values are encoded", §1.6 log-phase details, §1.9).
//!
//! [`Pdk`] is what the Step loop asks; [`RequestPdk`] answers from one request's captured state:
//! in `log` from the pre-captured snapshot (serialize as a JSON *string*, multimaps through
//! `fix_mmap`, bodies as bin), in `access` from the live request. Methods Kong cannot find come
//! back as nil (Kong logs "could not find pdk method").

use rmpv::Value;

use super::serialize::KongRequest;

/// Answers PDK calls. `None` is Lua nil (the Step is sent without `Data`).
pub trait Pdk: Send + Sync {
    /// The result of `method(args…)`.
    fn call(&self, method: &str, args: &[Value]) -> Option<Value>;
}

/// One request as Kong sees it, in one phase.
pub struct RequestPdk<'r> {
    /// The request.
    pub request: &'r KongRequest,
    /// `log` or `access`.
    pub phase: &'r str,
}

/// `fix_mmap`: every value an array of strings, `true` → `[]`, the map type kept when empty.
pub fn multimap(pairs: &[(String, String)]) -> Value {
    let mut out: Vec<(Value, Value)> = Vec::new();
    for (k, v) in pairs {
        let key = k.to_ascii_lowercase();
        match out
            .iter_mut()
            .find(|(ok, _)| ok.as_str() == Some(key.as_str()))
        {
            Some((_, Value::Array(list))) => list.push(Value::from(v.as_str())),
            _ => out.push((
                Value::from(key),
                Value::Array(vec![Value::from(v.as_str())]),
            )),
        }
    }
    Value::Map(out)
}

fn json_to_msgpack(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Value::from(u),
            (_, Some(i), _) => Value::from(i),
            (_, _, Some(f)) => Value::F64(f),
            _ => Value::Nil,
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        // An empty Lua table goes out as an empty array.
        serde_json::Value::Array(a) => Value::Array(a.iter().map(json_to_msgpack).collect()),
        serde_json::Value::Object(o) if o.is_empty() => Value::Array(Vec::new()),
        serde_json::Value::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (Value::from(k.as_str()), json_to_msgpack(v)))
                .collect(),
        ),
    }
}

impl Pdk for RequestPdk<'_> {
    fn call(&self, method: &str, args: &[Value]) -> Option<Value> {
        let r = self.request;
        match method {
            // log only: `check_phase(PHASES_LOG)`; a JSON string, not a map.
            "kong.log.serialize" if self.phase == "log" => Some(Value::from(r.serialize())),
            "kong.log.serialize" => None,
            "kong.client.get_consumer" => r.consumer.as_ref().map(|c| json_to_msgpack(&c.entity())),
            "kong.client.get_credential" => r
                .credential_id
                .as_ref()
                .map(|id| Value::Map(vec![(Value::from("id"), Value::from(id.as_str()))])),
            "kong.router.get_route" => Some(json_to_msgpack(&r.route_entity())),
            "kong.router.get_service" => Some(json_to_msgpack(&r.service_entity())),
            "kong.request.get_header" => {
                let name = args.first().and_then(Value::as_str)?.to_ascii_lowercase();
                r.headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(&name))
                    .map(|(_, v)| Value::from(v.as_str()))
            }
            "kong.request.get_headers" => Some(multimap(&r.headers)),
            "kong.request.get_query" => Some(multimap(&r.query)),
            "kong.request.get_method" if self.phase != "log" => {
                Some(Value::from(r.method.as_str()))
            }
            "kong.request.get_path" if self.phase != "log" => Some(Value::from(r.path.as_str())),
            "kong.request.get_raw_body" => Some(Value::Binary(r.body.clone())),
            "kong.response.get_status" => Some(Value::from(r.status)),
            "kong.client.get_ip" if self.phase != "log" => Some(Value::from(r.client_ip.as_str())),
            _ => None,
        }
    }
}
