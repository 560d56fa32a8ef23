//! Meters (OpenMeter v1 `Meter`): what an event counts for. A meter matches events by `type`,
//! takes a value from `data` with a JSONPath `valueProperty` (numbers and numeric strings), and
//! groups by named JSONPaths. [`Meter::extract`] turns one event into the per-minute
//! contribution the store aggregates.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json_path::JsonPath;

/// Aggregations OpenMeter supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Aggregation {
    /// Sum of values.
    Sum,
    /// Number of events.
    Count,
    /// Distinct values.
    UniqueCount,
    /// Mean of values.
    Avg,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Value of the latest event.
    Latest,
}

/// A meter as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meter {
    /// ULID-like id.
    #[serde(default)]
    pub id: String,
    /// `^[a-z0-9]+(?:_[a-z0-9]+)*$`, ≤ 64.
    pub slug: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Aggregation.
    pub aggregation: Aggregation,
    /// The CloudEvent `type` it counts.
    pub event_type: String,
    /// Events before this are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_from: Option<chrono::DateTime<chrono::Utc>>,
    /// JSONPath into `data` (not for COUNT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_property: Option<String>,
    /// Name → JSONPath.
    #[serde(default)]
    pub group_by: BTreeMap<String, String>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Update time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A meter that cannot be used, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct MeterError {
    /// The offending field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> MeterError {
    MeterError {
        field: field.into(),
        message: message.into(),
    }
}

/// Whether `s` is a valid slug/key.
pub fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('_').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// A meter with its JSONPaths compiled.
pub struct CompiledMeter {
    /// The meter.
    pub meter: Meter,
    value: Option<JsonPath>,
    groups: Vec<(String, JsonPath)>,
}

/// One event's contribution to a meter.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// Group-by values (missing ones absent).
    pub group: BTreeMap<String, String>,
    /// The value (COUNT: none needed; others: `None` when absent or not numeric).
    pub value: Option<Decimal>,
    /// The raw value as a string, for UNIQUE_COUNT.
    pub unique: Option<String>,
}

impl CompiledMeter {
    /// Validates and compiles.
    pub fn new(meter: Meter) -> Result<CompiledMeter, MeterError> {
        if !is_slug(&meter.slug) {
            return Err(err(
                "slug",
                format!(
                    "{:?} must match ^[a-z0-9]+(?:_[a-z0-9]+)*$ and be at most 64 characters",
                    meter.slug
                ),
            ));
        }
        if meter.event_type.is_empty() {
            return Err(err("eventType", "is required"));
        }
        let value = match (&meter.value_property, meter.aggregation) {
            (None, Aggregation::Count) => None,
            (None, _) => {
                return Err(err(
                    "valueProperty",
                    format!("is required for {:?}", meter.aggregation),
                ));
            }
            (Some(p), _) => Some(
                JsonPath::parse(p)
                    .map_err(|e| err("valueProperty", format!("invalid JSONPath {p:?}: {e}")))?,
            ),
        };
        let mut groups = Vec::new();
        for (name, path) in &meter.group_by {
            if name.is_empty() || name == "subject" {
                return Err(err(
                    &format!("groupBy.{name}"),
                    "is a reserved or empty name",
                ));
            }
            groups.push((
                name.clone(),
                JsonPath::parse(path).map_err(|e| {
                    err(
                        &format!("groupBy.{name}"),
                        format!("invalid JSONPath {path:?}: {e}"),
                    )
                })?,
            ));
        }
        Ok(CompiledMeter {
            meter,
            value,
            groups,
        })
    }

    /// What `data` contributes (OpenMeter: values through `toDecimal128OrNull`, group-by values
    /// stringified, arrays and objects as `""`).
    pub fn extract(&self, data: &Value) -> Contribution {
        let group = self
            .groups
            .iter()
            .filter_map(|(name, path)| {
                path.query(data).first().map(|v| {
                    let s = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => "null".into(),
                        Value::Array(_) | Value::Object(_) => String::new(),
                    };
                    (name.clone(), s)
                })
            })
            .collect();
        let raw = self
            .value
            .as_ref()
            .and_then(|p| p.query(data).first().cloned());
        let value = raw.as_ref().and_then(|v| match v {
            Value::Number(n) => n
                .to_string()
                .parse::<Decimal>()
                .ok()
                .or_else(|| n.as_f64().and_then(|f| Decimal::try_from(f).ok())),
            Value::String(s) => s
                .trim()
                .parse::<Decimal>()
                .ok()
                .or_else(|| Decimal::from_scientific(s.trim()).ok()),
            _ => None,
        });
        let unique = raw.map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        });
        Contribution {
            group,
            value,
            unique,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meter(agg: Aggregation, value: Option<&str>) -> Meter {
        Meter {
            id: String::new(),
            slug: "tokens_total".into(),
            name: None,
            description: None,
            aggregation: agg,
            event_type: "kong.llm_request".into(),
            event_from: None,
            value_property: value.map(str::to_owned),
            group_by: BTreeMap::from([
                ("model".into(), "$.model".into()),
                ("type".into(), "$.type".into()),
            ]),
            metadata: None,
            created_at: None,
            updated_at: None,
        }
    }

    #[test]
    fn values_from_numbers_and_numeric_strings_groups_stringified() {
        let m = CompiledMeter::new(meter(Aggregation::Sum, Some("$.tokens"))).unwrap();
        let c = m.extract(&json!({"tokens": "12.5", "model": "gpt-4o", "type": "request"}));
        assert_eq!(c.value, Some(Decimal::new(125, 1)));
        assert_eq!(c.group["model"], "gpt-4o");
        let c = m.extract(&json!({"tokens": 7, "model": 4}));
        assert_eq!(c.value, Some(Decimal::from(7)));
        assert_eq!(c.group["model"], "4");
        assert!(!c.group.contains_key("type"));
        assert_eq!(m.extract(&json!({"tokens": "lots"})).value, None);
    }

    #[test]
    fn bad_meters_name_the_field() {
        let mut bad = meter(Aggregation::Sum, None);
        assert_eq!(
            CompiledMeter::new(bad.clone()).err().unwrap().field,
            "valueProperty"
        );
        bad.value_property = Some("$[".into());
        assert_eq!(
            CompiledMeter::new(bad.clone()).err().unwrap().field,
            "valueProperty"
        );
        bad.slug = "Bad-Slug".into();
        assert_eq!(CompiledMeter::new(bad).err().unwrap().field, "slug");
        assert!(CompiledMeter::new(meter(Aggregation::Count, None)).is_ok());
    }
}
