//! The `tollgate` plugin's configuration: the `Config` JSON that Kong sends in
//! `plugin.StartInstance`, with the same field names as Kong's `metering-and-billing` plugin
//! (reference/konnect-metering.md §2), so moving a decK file over is renaming the plugin.
//!
//! Kong validates the config against the schema that `tollgate -dump` prints before it ever
//! reaches us (see [`crate::info`]); parsing here is the second line, and its errors name the
//! field (`config.subject.field: …`). Kong adds keys of its own (`__seq__`, `route_id`, …), which
//! are read where useful and otherwise ignored.

use serde::Deserialize;

/// Where the billed subject comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubjectSource {
    /// The authenticated consumer: `consumer:<uuid>` by default (Kong's convention); with
    /// `field: username` or `field: custom_id`, that field's raw value.
    #[default]
    Consumer,
    /// A request header named by `field`.
    Header,
    /// A query parameter named by `field`.
    Query,
    /// The authenticated credential's id (`authenticated_entity.id`).
    Credential,
}

/// `config.subject`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Subject {
    /// `look_up_value_in`: consumer (default) | header | query | credential.
    #[serde(default)]
    pub look_up_value_in: Option<SubjectSource>,
    /// Header name, query parameter or consumer field.
    #[serde(default)]
    pub field: Option<String>,
}

/// Where a custom attribute is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributeSource {
    /// A request header.
    Header,
    /// A query parameter.
    Query,
}

/// One entry of `config.attributes`: copied into the event's `data` when present.
#[derive(Debug, Clone, Deserialize)]
pub struct Attribute {
    /// `header` or `query`.
    pub source: AttributeSource,
    /// The header or query parameter name.
    pub look_up_value_in: String,
    /// The key written into `data`.
    pub event_property_name: String,
}

/// The wire form, as Kong sends it (unset fields arrive as JSON null).
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    meter_api_requests: Option<bool>,
    #[serde(default)]
    meter_ai_token_usage: Option<bool>,
    #[serde(default)]
    subject: Option<Subject>,
    #[serde(default)]
    attributes: Option<Vec<Attribute>>,
    #[serde(default)]
    ingest_endpoint: Option<String>,
    #[serde(default)]
    api_token: Option<String>,
    #[serde(default)]
    route_id: Option<String>,
    #[serde(default)]
    service_id: Option<String>,
    #[serde(default, rename = "__seq__")]
    seq: Option<i64>,
    #[serde(default, rename = "__plugin_id")]
    plugin_id: Option<String>,
}

/// A validated metering configuration.
#[derive(Debug, Clone)]
pub struct MeteringConfig {
    /// Emit one `kong.api_request` per request.
    pub meter_api_requests: bool,
    /// Emit `kong.llm_request` events for AI Gateway requests.
    pub meter_ai_token_usage: bool,
    /// Where the subject comes from.
    pub subject_source: SubjectSource,
    /// Header/query name or consumer field.
    pub subject_field: Option<String>,
    /// Custom attributes.
    pub attributes: Vec<Attribute>,
    /// A destination of this plugin's own (`ingest_endpoint` + `api_token`); `None` means the
    /// agent's default. Delivery is the agent's job: these are handed to it with every batch.
    pub destination: Option<tollgate_proto::Destination>,
    /// The plugin's scope, from Kong's injected keys.
    pub route_id: Option<String>,
    /// The plugin's scope, from Kong's injected keys.
    pub service_id: Option<String>,
    /// Kong's `__seq__` for this config.
    pub seq: i64,
    /// Kong's plugin entity id.
    pub plugin_id: Option<String>,
}

/// A config that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("invalid tollgate config: {0}")]
pub struct ConfigError(pub String);

impl MeteringConfig {
    /// Parses and validates the `Config` JSON of a `StartInstance`.
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError(format!("config.{path}: {}", e.inner()))
        })?;
        let subject = raw.subject.unwrap_or_default();
        let subject_source = subject.look_up_value_in.unwrap_or_default();
        let subject_field = subject.field.filter(|f| !f.is_empty());
        match subject_source {
            SubjectSource::Header | SubjectSource::Query if subject_field.is_none() => {
                return Err(ConfigError(format!(
                    "config.subject.field: required when subject.look_up_value_in is {}",
                    if subject_source == SubjectSource::Header {
                        "header"
                    } else {
                        "query"
                    }
                )));
            }
            SubjectSource::Consumer => {
                if let Some(f) = &subject_field
                    && !matches!(f.as_str(), "id" | "username" | "custom_id")
                {
                    return Err(ConfigError(format!(
                        "config.subject.field: consumer lookups take id, username or custom_id, not {f:?}"
                    )));
                }
            }
            _ => {}
        }
        let attributes = raw.attributes.unwrap_or_default();
        for (i, a) in attributes.iter().enumerate() {
            if a.look_up_value_in.is_empty() {
                return Err(ConfigError(format!(
                    "config.attributes[{i}].look_up_value_in: must not be empty"
                )));
            }
            if a.event_property_name.is_empty() {
                return Err(ConfigError(format!(
                    "config.attributes[{i}].event_property_name: must not be empty"
                )));
            }
        }
        if let Some(token) = &raw.api_token {
            // Never written to Kong's error log, whatever logs it later.
            tollgate_telemetry::redact::hide(token);
        }
        let destination = match (raw.ingest_endpoint, raw.api_token) {
            (Some(endpoint), token) if !endpoint.is_empty() => Some(tollgate_proto::Destination {
                ingest_endpoint: endpoint,
                api_token: token.unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(MeteringConfig {
            meter_api_requests: raw.meter_api_requests.unwrap_or(true),
            meter_ai_token_usage: raw.meter_ai_token_usage.unwrap_or(true),
            subject_source,
            subject_field,
            attributes,
            destination,
            route_id: raw.route_id,
            service_id: raw.service_id,
            seq: raw.seq.unwrap_or(0),
            plugin_id: raw.plugin_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_shaped_config_with_injected_keys_parses() {
        let c = MeteringConfig::from_json(
            br#"{"meter_api_requests":true,"meter_ai_token_usage":null,
                 "subject":{"look_up_value_in":"header","field":"x-tenant"},
                 "attributes":[{"source":"query","look_up_value_in":"project","event_property_name":"project"}],
                 "ingest_endpoint":null,"api_token":null,"queue":{"max_batch_size":1},
                 "__seq__":12,"__plugin_id":"b1","__key__":"plugins:tollgate:::","route_id":null}"#,
        )
        .unwrap();
        assert!(c.meter_ai_token_usage, "null takes the default");
        assert_eq!(c.subject_source, SubjectSource::Header);
        assert_eq!(c.seq, 12);
        assert!(c.destination.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let e = MeteringConfig::from_json(br#"{"subject":{"look_up_value_in":"cookie"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.subject.look_up_value_in"), "{e}");
        let e = MeteringConfig::from_json(br#"{"subject":{"look_up_value_in":"header"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.subject.field"), "{e}");
        let e = MeteringConfig::from_json(br#"{"attributes":[{"source":"header"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.attributes[0]"), "{e}");
    }
}
