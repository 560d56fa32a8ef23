//! What `tollgate -dump` prints: Kong's plugin-info JSON (reference/kong-protocols.md §1.2) with
//! the config schema in Kong's own schema language, so Kong validates decK files and Admin API
//! calls against it before any config reaches this server.

use serde_json::{Value, json};

/// The metering plugin's name, as in `plugins = bundled,tollgate`.
pub const METERING_PLUGIN: &str = "tollgate";

/// Priority of the metering plugin: Kong's `metering-and-billing` runs at 16, late in each phase,
/// and so do we (its work is in `log`, after every other plugin has set its serialize values).
pub const METERING_PRIORITY: i64 = 16;

/// The enforcement plugin's name, served by the same binary under its own plugin-server entry.
pub const ENFORCEMENT_PLUGIN: &str = "tollgate-enforcement";

/// Priority of the enforcement plugin: Kong's `entitlement-enforcement` runs at 915, after
/// authentication (1000+) has set the consumer and before most other access-phase plugins.
pub const ENFORCEMENT_PRIORITY: i64 = 915;

/// The plugin-info document for `-dump`: `{"Protocol":"MsgPack:1","Plugins":[{…}]}`.
pub fn dump(plugin: &str) -> Value {
    let (priority, phases, schema) = if plugin == ENFORCEMENT_PLUGIN {
        (
            ENFORCEMENT_PRIORITY,
            json!(["access"]),
            enforcement_schema(),
        )
    } else {
        (METERING_PRIORITY, json!(["log"]), metering_schema())
    };
    json!({
        "Protocol": "MsgPack:1",
        "Plugins": [{
            "Name": plugin,
            "Priority": priority,
            "Version": env!("CARGO_PKG_VERSION"),
            "Phases": phases,
            "Schema": schema,
        }]
    })
}

/// The `tollgate-enforcement` config schema, with the field names of Kong's
/// `entitlement-enforcement` plugin.
pub fn enforcement_schema() -> Value {
    json!({
        "name": ENFORCEMENT_PLUGIN,
        "fields": [
            field("protocols", json!({
                "type": "set",
                "elements": {"type": "string", "one_of": ["grpc", "grpcs", "http", "https"]},
                "default": ["grpc", "grpcs", "http", "https"],
            })),
            field("config", json!({
                "type": "record",
                "fields": [
                    field("customer", json!({
                        "type": "record",
                        "required": true,
                        "fields": [
                            field("look_up_value_in", json!({"type": "string", "default": "consumer", "required": true, "one_of": ["consumer", "header", "query"]})),
                            field("field", json!({"type": "string"})),
                        ]
                    })),
                    field("feature", json!({
                        "type": "record",
                        "required": true,
                        "fields": [field("key", json!({"type": "string", "required": true}))]
                    })),
                    field("fail_policy", json!({"type": "string", "default": "allow", "one_of": ["allow", "deny"]})),
                    field("deny_unknown_customers", json!({"type": "boolean", "default": true})),
                    field("max_stale_seconds", json!({"type": "number", "default": 60, "between": [1, 86400]})),
                    field("response_codes", json!({
                        "type": "record",
                        "fields": [
                            field("usage_limit_reached", json!({"type": "integer", "default": 429, "between": [400, 599]})),
                            field("no_access", json!({"type": "integer", "default": 403, "between": [400, 599]})),
                            field("unavailable", json!({"type": "integer", "default": 503, "between": [400, 599]})),
                        ]
                    })),
                ]
            })),
        ]
    })
}

fn field(name: &str, spec: Value) -> Value {
    json!({ name: spec })
}

/// Kong's standard plugin-queue record (as on http-log and `metering-and-billing`). Accepted for
/// compatibility with decK files written for Kong's plugin; delivery is the agent's job, so these
/// values are documented but not used by the plugin server.
fn queue_record() -> Value {
    json!({
        "type": "record",
        "fields": [
            field("max_batch_size", json!({"type": "integer", "default": 1, "between": [1, 1_000_000]})),
            field("max_coalescing_delay", json!({"type": "number", "default": 1, "between": [0, 3600]})),
            field("max_entries", json!({"type": "integer", "default": 10000, "between": [1, 1_000_000]})),
            field("max_bytes", json!({"type": "integer"})),
            field("max_retry_time", json!({"type": "number", "default": 60})),
            field("initial_retry_delay", json!({"type": "number", "default": 0.01, "between": [0.001, 1_000_000]})),
            field("max_retry_delay", json!({"type": "number", "default": 60, "between": [0.001, 1_000_000]})),
            field("concurrency_limit", json!({"type": "integer", "default": 1, "one_of": [-1, 1]})),
        ]
    })
}

/// The `tollgate` config schema in Kong's form: `{name, fields:[{config:{type:record,…}}]}`.
pub fn metering_schema() -> Value {
    json!({
        "name": METERING_PLUGIN,
        "fields": [
            field("protocols", json!({
                "type": "set",
                "elements": {"type": "string", "one_of": ["grpc", "grpcs", "http", "https"]},
                "default": ["grpc", "grpcs", "http", "https"],
            })),
            field("config", json!({
                "type": "record",
                "fields": [
                    field("meter_api_requests", json!({"type": "boolean", "default": true, "required": true})),
                    field("meter_ai_token_usage", json!({"type": "boolean", "default": true, "required": true})),
                    field("subject", json!({
                        "type": "record",
                        "required": true,
                        "fields": [
                            field("look_up_value_in", json!({
                                "type": "string",
                                "default": "consumer",
                                "required": true,
                                "one_of": ["consumer", "header", "query", "credential"],
                            })),
                            field("field", json!({"type": "string"})),
                        ]
                    })),
                    field("attributes", json!({
                        "type": "array",
                        "elements": {
                            "type": "record",
                            "fields": [
                                field("source", json!({"type": "string", "required": true, "one_of": ["header", "query"]})),
                                field("look_up_value_in", json!({"type": "string", "required": true})),
                                field("event_property_name", json!({"type": "string", "required": true})),
                            ]
                        }
                    })),
                    // Delivery settings of Kong's plugin. The agent owns delivery: an
                    // `ingest_endpoint` (with `api_token`) here makes the agent deliver this
                    // plugin's events there instead of its default destination.
                    field("ingest_endpoint", json!({"type": "string"})),
                    field("api_token", json!({"type": "string", "encrypted": true, "referenceable": true})),
                    field("keepalive", json!({"type": "number", "default": 60000})),
                    field("timeout", json!({"type": "number", "default": 10000})),
                    field("ssl_verify", json!({"type": "boolean", "default": true})),
                    field("queue", queue_record()),
                ]
            })),
        ]
    })
}
