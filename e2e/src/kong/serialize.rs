//! Realistic `kong.log.serialize()` output for each Kong version (reference/kong-protocols.md
//! §2.2, §2.3, §1.9): what Kong's log phase hands a plugin, as the JSON string cjson produces.
//!
//! Version differences kept: 3.4 has no `request.id`, `source`, `latencies.receive`,
//! `workspace`, `workspace_name`; 3.6 adds `request.id` and `source`; 3.7 adds
//! `latencies.receive`, `workspace`, `workspace_name`. The `ai` tree: 3.6 flat, 3.7
//! `ai.<plugin>` with singular `prompt_token`, 3.8 `ai.<plugin>` plural plus `cache`, 3.9+
//! `ai.proxy`. cjson quirks: `/` escaped as `\/`, `tries[].balancer_start_ns` in scientific
//! notation; key-auth's `authenticated_entity` carries only `id`.

use serde_json::{Map, Value, json};

/// The Kong versions whose serialize shapes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KongVersion {
    /// 3.4.
    V3_4,
    /// 3.6.
    V3_6,
    /// 3.7.
    V3_7,
    /// 3.8.
    V3_8,
    /// 3.9 and later.
    V3_9,
}

impl KongVersion {
    /// Every version, oldest first.
    pub const ALL: [KongVersion; 5] = [
        KongVersion::V3_4,
        KongVersion::V3_6,
        KongVersion::V3_7,
        KongVersion::V3_8,
        KongVersion::V3_9,
    ];
}

/// An authenticated consumer.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// UUID.
    pub id: String,
    /// Username.
    pub username: String,
    /// Custom id.
    pub custom_id: Option<String>,
}

impl Consumer {
    /// The consumer entity as Kong copies it.
    pub fn entity(&self) -> Value {
        json!({
            "id": self.id,
            "username": self.username,
            "custom_id": self.custom_id,
            "created_at": 1_763_900_000,
            "updated_at": 1_763_900_000,
            "tags": Value::Null,
            "type": 0,
        })
    }
}

/// An AI Gateway request's analytics.
#[derive(Debug, Clone)]
pub struct AiCall {
    /// `ai-proxy` or `ai-proxy-advanced`.
    pub plugin: String,
    /// Provider name.
    pub provider: String,
    /// Requested model.
    pub request_model: String,
    /// Model that answered.
    pub response_model: String,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cost, when the model has input/output costs configured.
    pub cost: Option<f64>,
}

/// One request through Kong, enough to produce serialize output and answer PDK calls.
#[derive(Debug, Clone)]
pub struct KongRequest {
    /// Serialize shape.
    pub version: KongVersion,
    /// Kong's request id (32 hex; not serialized by 3.4).
    pub request_id: String,
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query pairs.
    pub query: Vec<(String, String)>,
    /// Request headers (names as sent).
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Response status.
    pub status: u16,
    /// Upstream status (`None` when Kong answered itself).
    pub upstream_status: Option<u16>,
    /// Response size.
    pub response_size: u64,
    /// Client address.
    pub client_ip: String,
    /// The consumer, if authenticated.
    pub consumer: Option<Consumer>,
    /// Credential id (key-auth: only `id` is serialized).
    pub credential_id: Option<String>,
    /// Route id and name.
    pub route: (String, String),
    /// Service id, name, host, port, protocol.
    pub service: (String, String, String, u16, String),
    /// `started_at`, ms since the epoch.
    pub started_at_ms: u64,
    /// AI analytics.
    pub ai: Option<AiCall>,
    /// Extra serialize values (`kong.log.set_serialize_value`).
    pub extra: Map<String, Value>,
}

impl KongRequest {
    /// A plain GET through route `orders-api` of service `orders` on `version`.
    pub fn get(version: KongVersion, path: &str) -> KongRequest {
        KongRequest {
            version,
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            method: "GET".into(),
            path: path.into(),
            query: Vec::new(),
            headers: vec![
                ("Host".into(), "api.example.com".into()),
                ("User-Agent".into(), "curl/8.5.0".into()),
                ("Accept".into(), "*/*".into()),
            ],
            body: Vec::new(),
            status: 200,
            upstream_status: Some(200),
            response_size: 512,
            client_ip: "203.0.113.7".into(),
            consumer: None,
            credential_id: None,
            route: (
                "a2f1c1d0-1b5e-4d1e-9a3c-5e0f5a1b2c3d".into(),
                "orders-api".into(),
            ),
            service: (
                "7c6f1e2a-3b4c-4d5e-8f90-a1b2c3d4e5f6".into(),
                "orders".into(),
                "orders.internal".into(),
                8080,
                "http".into(),
            ),
            started_at_ms: 1_763_980_000_123,
            ai: None,
            extra: Map::new(),
        }
    }

    /// Authenticated with key-auth as `consumer`.
    pub fn with_consumer(mut self, id: &str, username: &str) -> Self {
        self.consumer = Some(Consumer {
            id: id.into(),
            username: username.into(),
            custom_id: None,
        });
        self.credential_id = Some(uuid::Uuid::new_v4().to_string());
        self.headers
            .push(("apikey".into(), format!("{username}-key")));
        self
    }

    /// Adds a request header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a query parameter.
    pub fn with_query(mut self, name: &str, value: &str) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }

    /// Makes it an AI Gateway chat request.
    pub fn with_ai(mut self, ai: AiCall) -> Self {
        self.method = "POST".into();
        self.ai = Some(ai);
        self
    }

    fn uri(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            let q: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{}?{}", self.path, q.join("&"))
        }
    }

    /// The route entity as Kong copies it into serialize and answers `get_route`.
    pub fn route_entity(&self) -> Value {
        json!({
            "id": self.route.0, "name": self.route.1, "paths": [self.path],
            "protocols": ["http", "https"], "methods": Value::Null, "hosts": Value::Null,
            "strip_path": true, "preserve_host": false, "regex_priority": 0,
            "https_redirect_status_code": 426, "path_handling": "v0", "request_buffering": true,
            "response_buffering": true, "ws_id": "0dc6f45b-8f8d-40d2-a504-473544ee190b",
            "service": {"id": self.service.0}, "created_at": 1_763_900_000, "updated_at": 1_763_900_000,
        })
    }

    /// The service entity.
    pub fn service_entity(&self) -> Value {
        json!({
            "id": self.service.0, "name": self.service.1, "host": self.service.2,
            "port": self.service.3, "protocol": self.service.4, "path": Value::Null,
            "retries": 5, "connect_timeout": 60000, "read_timeout": 60000, "write_timeout": 60000,
            "enabled": true, "ws_id": "0dc6f45b-8f8d-40d2-a504-473544ee190b",
            "created_at": 1_763_900_000, "updated_at": 1_763_900_000,
        })
    }

    fn headers_json(pairs: &[(String, String)], lower: bool) -> Value {
        let mut m = Map::new();
        for (k, v) in pairs {
            let key = if lower {
                k.to_ascii_lowercase()
            } else {
                k.clone()
            };
            let v = if key == "authorization" || key == "proxy-authorization" {
                "REDACTED".to_owned()
            } else {
                v.clone()
            };
            match m.get_mut(&key) {
                Some(Value::Array(list)) => list.push(Value::String(v)),
                Some(prev) => {
                    let first = prev.take();
                    *prev = Value::Array(vec![first, Value::String(v)]);
                }
                None => {
                    m.insert(key, Value::String(v));
                }
            }
        }
        Value::Object(m)
    }

    fn ai_json(&self) -> Option<Value> {
        let ai = self.ai.as_ref()?;
        let total = ai.prompt_tokens + ai.completion_tokens;
        Some(match self.version {
            KongVersion::V3_4 => return None,
            KongVersion::V3_6 => json!({
                "usage": {"prompt_tokens": ai.prompt_tokens, "completion_tokens": ai.completion_tokens, "total_tokens": total},
                "meta": {"request_model": ai.request_model, "response_model": ai.response_model, "provider_name": ai.provider},
            }),
            KongVersion::V3_7 => json!({ ai.plugin.clone(): {
                "usage": {"prompt_token": ai.prompt_tokens, "completion_token": ai.completion_tokens, "total_tokens": total},
                "meta": {"request_model": ai.request_model, "response_model": ai.response_model,
                         "provider_name": ai.provider, "plugin_id": "3f0a9c1e-7d2b-4c8e-9a1f-2b3c4d5e6f70"},
            }}),
            KongVersion::V3_8 => json!({ ai.plugin.clone(): {
                "usage": {"prompt_tokens": ai.prompt_tokens, "completion_tokens": ai.completion_tokens,
                          "total_tokens": total, "cost": ai.cost, "time_per_token": 12},
                "meta": {"request_model": ai.request_model, "response_model": ai.response_model,
                         "provider_name": ai.provider, "plugin_id": "3f0a9c1e-7d2b-4c8e-9a1f-2b3c4d5e6f70",
                         "llm_latency": 840},
                "cache": {"cache_status": "Miss"},
            }}),
            KongVersion::V3_9 => json!({ "proxy": {
                "usage": {"prompt_tokens": ai.prompt_tokens, "completion_tokens": ai.completion_tokens,
                          "total_tokens": total, "cost": ai.cost, "time_per_token": 12.5},
                "meta": {"request_model": ai.request_model, "response_model": ai.response_model,
                         "provider_name": ai.provider, "plugin_id": "3f0a9c1e-7d2b-4c8e-9a1f-2b3c4d5e6f70",
                         "llm_latency": 840},
            }}),
        })
    }

    /// The JSON string `kong.log.serialize()` returns for this request.
    pub fn serialize(&self) -> String {
        let v = self.version;
        let uri = self.uri();
        let mut request = json!({
            "uri": uri,
            "url": format!("http://{}:8000{}", self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("host")).map_or("localhost", |(_, h)| h.as_str()), uri),
            "querystring": Self::headers_json(&self.query, false),
            "method": self.method,
            "headers": Self::headers_json(&self.headers, true),
            "size": 180 + self.body.len(),
        });
        if v != KongVersion::V3_4 {
            request["id"] = json!(self.request_id);
        }
        let mut latencies = json!({"kong": 3, "proxy": if self.upstream_status.is_some() { 27 } else { -1 }, "request": 31});
        if matches!(v, KongVersion::V3_7 | KongVersion::V3_8 | KongVersion::V3_9) {
            latencies["receive"] = json!(0);
        }
        let mut root = json!({
            "request": request,
            "upstream_uri": self.path,
            "response": {"status": self.status, "size": self.response_size,
                         "headers": {"content-type": "application/json", "content-length": self.response_size.to_string(),
                                     "x-kong-upstream-latency": "27", "via": "1.1 kong/3.9.1"}},
            "latencies": latencies,
            "tries": [{"balancer_start": self.started_at_ms + 2, "balancer_start_ns": "__NS__",
                       "ip": "10.0.0.12", "port": self.service.3, "balancer_latency": 0, "balancer_latency_ns": 20992}],
            "route": self.route_entity(),
            "service": self.service_entity(),
            "client_ip": self.client_ip,
            "started_at": self.started_at_ms,
        });
        if let Some(us) = self.upstream_status {
            root["upstream_status"] = json!(us.to_string());
        }
        if let Some(c) = &self.consumer {
            root["consumer"] = c.entity();
        }
        if let Some(cred) = &self.credential_id {
            // key-auth: only the id (§1.9).
            root["authenticated_entity"] = json!({"id": cred});
        }
        if v != KongVersion::V3_4 {
            root["source"] = json!(if self.upstream_status.is_some() {
                "upstream"
            } else {
                "kong"
            });
        }
        if matches!(v, KongVersion::V3_7 | KongVersion::V3_8 | KongVersion::V3_9) {
            root["workspace"] = json!("0dc6f45b-8f8d-40d2-a504-473544ee190b");
            root["workspace_name"] = json!("default");
        }
        if let Some(ai) = self.ai_json() {
            root["ai"] = ai;
        }
        if let Some(obj) = root.as_object_mut() {
            obj.extend(self.extra.clone());
        }
        // cjson: slashes escaped; a big float in scientific notation.
        let ns = format!("{:e}", (self.started_at_ms as f64) * 1e6).replace('e', "e+");
        root.to_string()
            .replace('/', "\\/")
            .replace("\"__NS__\"", &ns)
    }
}
