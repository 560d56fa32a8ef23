//! What to meter and whom to bill: the fields of Kong's `metering-and-billing` plugin config
//! (reference/konnect-metering.md §2) that decide the events — `meter_api_requests`,
//! `meter_ai_token_usage`, `subject{look_up_value_in, field}` and `attributes[]`.
//!
//! The `tollgate` plugin reads them from the `Config` Kong sends; the agent's
//! `[sources.kong_http_log]` reads the same names from its TOML. Both validate with
//! [`Rules::new`], whose errors name the field relative to where it was read.

use serde::{Deserialize, Serialize};

/// Where the billed subject comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
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

/// `subject`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Subject {
    /// `look_up_value_in`: consumer (default) | header | query | credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub look_up_value_in: Option<SubjectSource>,
    /// Header name, query parameter or consumer field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Where a custom attribute is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributeSource {
    /// A request header.
    Header,
    /// A query parameter.
    Query,
}

/// One entry of `attributes`: copied into the event's `data` when present.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attribute {
    /// `header` or `query`.
    pub source: AttributeSource,
    /// The header or query parameter name.
    pub look_up_value_in: String,
    /// The key written into `data`.
    pub event_property_name: String,
}

/// Validated metering rules.
#[derive(Debug, Clone)]
pub struct Rules {
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
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            meter_api_requests: true,
            meter_ai_token_usage: true,
            subject_source: SubjectSource::Consumer,
            subject_field: None,
            attributes: Vec::new(),
        }
    }
}

impl Rules {
    /// Validates the four fields as read (unset = `None`, Kong's defaults apply). An error is
    /// `(field path, why)`, e.g. `("subject.field", "required when …")`.
    pub fn new(
        meter_api_requests: Option<bool>,
        meter_ai_token_usage: Option<bool>,
        subject: Option<Subject>,
        attributes: Option<Vec<Attribute>>,
    ) -> Result<Rules, (String, String)> {
        let subject = subject.unwrap_or_default();
        let subject_source = subject.look_up_value_in.unwrap_or_default();
        let subject_field = subject.field.filter(|f| !f.is_empty());
        match subject_source {
            SubjectSource::Header | SubjectSource::Query if subject_field.is_none() => {
                return Err((
                    "subject.field".into(),
                    format!(
                        "required when subject.look_up_value_in is {}",
                        if subject_source == SubjectSource::Header {
                            "header"
                        } else {
                            "query"
                        }
                    ),
                ));
            }
            SubjectSource::Consumer => {
                if let Some(f) = &subject_field
                    && !matches!(f.as_str(), "id" | "username" | "custom_id")
                {
                    return Err((
                        "subject.field".into(),
                        format!("consumer lookups take id, username or custom_id, not {f:?}"),
                    ));
                }
            }
            _ => {}
        }
        let attributes = attributes.unwrap_or_default();
        for (i, a) in attributes.iter().enumerate() {
            if a.look_up_value_in.is_empty() {
                return Err((
                    format!("attributes[{i}].look_up_value_in"),
                    "must not be empty".into(),
                ));
            }
            if a.event_property_name.is_empty() {
                return Err((
                    format!("attributes[{i}].event_property_name"),
                    "must not be empty".into(),
                ));
            }
        }
        Ok(Rules {
            meter_api_requests: meter_api_requests.unwrap_or(true),
            meter_ai_token_usage: meter_ai_token_usage.unwrap_or(true),
            subject_source,
            subject_field,
            attributes,
        })
    }
}
