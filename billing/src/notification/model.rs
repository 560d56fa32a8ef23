//! Channels and rules: the documents the API shows and the store keeps (OpenMeter's
//! `NotificationChannelWebhook` and `NotificationRule*`), built from create/update requests with
//! errors that name the offending field.

use std::collections::BTreeMap;

use base64::Engine;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::kinds;

/// Channels a rule may send to at most (OpenMeter's `MaxChannelsPerRule`).
pub const MAX_CHANNELS_PER_RULE: usize = 5;
/// Thresholds a rule may hold at most.
pub const MAX_THRESHOLDS: usize = 10;

/// A webhook channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Channel {
    /// Id.
    pub id: String,
    /// Always `WEBHOOK`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Name (1..256).
    pub name: String,
    /// A disabled channel is not sent to: its deliveries fail with a reason saying so.
    #[serde(default)]
    pub disabled: bool,
    /// Where events are POSTed.
    pub url: String,
    /// Headers added to every request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_headers: BTreeMap<String, String>,
    /// `whsec_<base64 key>`: the Standard Webhooks signing secret.
    pub signing_secret: String,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// Deleted (soft).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// `NotificationChannelWebhookCreateRequest` (also the PUT body).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelRequest {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    disabled: bool,
    url: String,
    #[serde(default)]
    custom_headers: BTreeMap<String, String>,
    #[serde(default)]
    signing_secret: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

/// A new signing secret: `whsec_` + base64 of 32 random bytes (as OpenMeter generates one).
pub fn new_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// Checks a given secret: `^(whsec_)?[a-zA-Z0-9+/=]{32,100}$` and valid base64.
pub fn check_secret(s: &str) -> Result<(), String> {
    let body = s.strip_prefix("whsec_").unwrap_or(s);
    if !(32..=100).contains(&body.len())
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    {
        return Err("signingSecret: must be whsec_ followed by 32 to 100 base64 characters".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("signingSecret: not valid base64: {e}"))?;
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.chars().count() > 256 {
        return Err("name: must be 1 to 256 characters".into());
    }
    Ok(())
}

impl ChannelRequest {
    /// The channel this request makes: `id` and `created_at` from the existing one on update.
    pub fn into_channel(
        self,
        id: String,
        created_at: DateTime<Utc>,
        now: DateTime<Utc>,
        old_secret: Option<String>,
    ) -> Result<Channel, String> {
        if self.kind != "WEBHOOK" {
            return Err(format!(
                "type: {:?} is not a channel type (only WEBHOOK)",
                self.kind
            ));
        }
        check_name(&self.name)?;
        let url =
            reqwest::Url::parse(&self.url).map_err(|e| format!("url: {:?}: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "url: {:?} is not an http(s) URL with a host",
                self.url
            ));
        }
        for (k, v) in &self.custom_headers {
            reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("customHeaders: {k:?} is not a header name"))?;
            reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| format!("customHeaders.{k}: not a valid header value"))?;
            if k.to_ascii_lowercase().starts_with("webhook-") {
                return Err(format!(
                    "customHeaders: {k:?} would override a Standard Webhooks header"
                ));
            }
        }
        let signing_secret = match self.signing_secret {
            Some(s) => {
                check_secret(&s)?;
                s
            }
            None => old_secret.unwrap_or_else(new_secret),
        };
        Ok(Channel {
            id,
            kind: self.kind,
            name: self.name,
            disabled: self.disabled,
            url: self.url,
            custom_headers: self.custom_headers,
            signing_secret,
            annotations: None,
            metadata: self.metadata,
            created_at,
            updated_at: now,
            deleted_at: None,
        })
    }
}

/// `{id, type}` of a channel, as rules and delivery statuses show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChannelMeta {
    /// Channel id.
    pub id: String,
    /// `WEBHOOK`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// `FeatureMeta`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeatureMeta {
    /// Feature id.
    pub id: String,
    /// Feature key.
    pub key: String,
}

/// `NotificationRuleBalanceThresholdValue`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Threshold {
    /// The value (a percentage for `usage_percentage`).
    #[serde(with = "rust_decimal::serde::float")]
    pub value: Decimal,
    /// `usage_value`, `usage_percentage`, `balance_value` (or the deprecated `NUMBER`,
    /// `PERCENT`).
    #[serde(rename = "type")]
    pub kind: String,
}

/// What a threshold measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdKind {
    /// Usage above a value.
    UsageValue,
    /// Usage above a percentage of the grants.
    UsagePercentage,
    /// Balance below a value.
    BalanceValue,
}

impl Threshold {
    /// Its kind; `None` for an unknown type (refused at creation).
    pub fn kind(&self) -> Option<ThresholdKind> {
        Some(match self.kind.as_str() {
            "usage_value" | "NUMBER" => ThresholdKind::UsageValue,
            "usage_percentage" | "PERCENT" => ThresholdKind::UsagePercentage,
            "balance_value" => ThresholdKind::BalanceValue,
            _ => return None,
        })
    }
}

/// A rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Id.
    pub id: String,
    /// One of [`kinds::ALL`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Name.
    pub name: String,
    /// A disabled rule creates no events.
    #[serde(default)]
    pub disabled: bool,
    /// Where its events go.
    pub channels: Vec<ChannelMeta>,
    /// Balance threshold rules: the thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Vec<Threshold>>,
    /// Entitlement rules: the features it is limited to (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<FeatureMeta>>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// Deleted (soft).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

impl Rule {
    /// Whether it is live (not disabled, not deleted).
    pub fn live(&self) -> bool {
        !self.disabled && self.deleted_at.is_none()
    }

    /// Whether it covers the feature (by id or key; all features when it names none).
    pub fn covers(&self, feature_id: &str, feature_key: &str) -> bool {
        match &self.features {
            None => true,
            Some(f) if f.is_empty() => true,
            Some(f) => f.iter().any(|m| m.id == feature_id || m.key == feature_key),
        }
    }
}

/// A rule create/update request (`NotificationRule*CreateRequest`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleRequest {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    disabled: bool,
    channels: Vec<String>,
    #[serde(default)]
    thresholds: Option<Vec<Threshold>>,
    #[serde(default)]
    features: Option<Vec<String>>,
    #[serde(default)]
    metadata: Option<Value>,
}

/// A rule request's feature and channel references, resolved by the API.
pub struct Resolved {
    /// The channels, in request order.
    pub channels: Vec<ChannelMeta>,
    /// The features, when the request names some.
    pub features: Option<Vec<FeatureMeta>>,
}

impl RuleRequest {
    /// The channel ids it names.
    pub fn channel_ids(&self) -> &[String] {
        &self.channels
    }

    /// The feature ids or keys it names.
    pub fn feature_refs(&self) -> &[String] {
        self.features.as_deref().unwrap_or_default()
    }

    /// Checks what can be checked without the store.
    pub fn check(&self) -> Result<(), String> {
        if !kinds::ALL.contains(&self.kind.as_str()) {
            return Err(format!(
                "type: {:?} is not a rule type (one of {})",
                self.kind,
                kinds::ALL.join(", ")
            ));
        }
        check_name(&self.name)?;
        if self.channels.is_empty() || self.channels.len() > MAX_CHANNELS_PER_RULE {
            return Err(format!(
                "channels: a rule sends to 1 to {MAX_CHANNELS_PER_RULE} channels, not {}",
                self.channels.len()
            ));
        }
        let entitlement_rule =
            matches!(self.kind.as_str(), kinds::BALANCE_THRESHOLD | kinds::RESET);
        if !entitlement_rule && self.features.is_some() {
            return Err(format!("features: not allowed on a {} rule", self.kind));
        }
        if self.features.as_ref().is_some_and(|f| f.is_empty()) {
            return Err("features: give at least one feature, or leave it out for all".into());
        }
        if self.kind == kinds::BALANCE_THRESHOLD {
            let t = self.thresholds.as_deref().unwrap_or_default();
            if t.is_empty() || t.len() > MAX_THRESHOLDS {
                return Err(format!(
                    "thresholds: a balance threshold rule has 1 to {MAX_THRESHOLDS} thresholds, not {}",
                    t.len()
                ));
            }
            for (i, th) in t.iter().enumerate() {
                let Some(kind) = th.kind() else {
                    return Err(format!(
                        "thresholds[{i}].type: {:?} is not one of usage_value, usage_percentage, balance_value (or NUMBER, PERCENT)",
                        th.kind
                    ));
                };
                if kind != ThresholdKind::BalanceValue && th.value <= Decimal::ZERO {
                    return Err(format!("thresholds[{i}].value: must be above 0"));
                }
                if th.value < Decimal::ZERO {
                    return Err(format!("thresholds[{i}].value: must not be negative"));
                }
            }
        } else if self.thresholds.is_some() {
            return Err(format!("thresholds: not allowed on a {} rule", self.kind));
        }
        Ok(())
    }

    /// The rule this request makes.
    pub fn into_rule(
        self,
        id: String,
        created_at: DateTime<Utc>,
        now: DateTime<Utc>,
        resolved: Resolved,
    ) -> Rule {
        Rule {
            id,
            kind: self.kind,
            name: self.name,
            disabled: self.disabled,
            channels: resolved.channels,
            thresholds: self.thresholds,
            features: resolved.features,
            annotations: None,
            metadata: self.metadata,
            created_at,
            updated_at: now,
            deleted_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_pass_the_check_and_bad_ones_are_named() {
        let s = new_secret();
        assert!(s.starts_with("whsec_"));
        check_secret(&s).unwrap();
        let e = check_secret("whsec_short").unwrap_err();
        assert!(e.contains("signingSecret"), "{e}");
        let e = check_secret(&format!("whsec_{}", "*".repeat(40))).unwrap_err();
        assert!(e.contains("signingSecret"), "{e}");
    }
}
