//! The `tollgate` plugin's configuration: the `Config` JSON that Kong sends in
//! `plugin.StartInstance`, with the same field names as Kong's `metering-and-billing` plugin
//! (reference/konnect-metering.md §2), so moving a decK file over is renaming the plugin.
//!
//! Kong validates the config against the schema that `tollgate -dump` prints before it ever
//! reaches us (see [`crate::info`]); parsing here is the second line, and its errors name the
//! field (`config.subject.field: …`). Kong adds keys of its own (`__seq__`, `route_id`, …), which
//! are read where useful and otherwise ignored.

use serde::Deserialize;
use tollgate_events::rules::{Attribute, Rules, Subject};

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
    /// What to meter and whom to bill (shared with the agent's http-log intake).
    pub rules: Rules,
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
        let rules = Rules::new(
            raw.meter_api_requests,
            raw.meter_ai_token_usage,
            raw.subject,
            raw.attributes,
        )
        .map_err(|(field, why)| ConfigError(format!("config.{field}: {why}")))?;
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
            rules,
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
        assert!(c.rules.meter_ai_token_usage, "null takes the default");
        assert_eq!(
            c.rules.subject_source,
            tollgate_events::rules::SubjectSource::Header
        );
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
