//! The stored subscription and its add-ons in OpenMeter v1's JSON names: a subscription keeps its
//! own copy of the plan's phases (each with an absolute start) and their items (each the catalog
//! [`RateCard`] it was created from, with optional edit bounds), so later catalog changes never
//! move a running subscription. Windows, statuses and the expanded view are derived from these
//! ([`super::timeline`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::model::{ProRatingConfig, RateCard};
use crate::duration::IsoDuration;

/// The stored document kind of a subscription.
pub const KIND: &str = "subscription";
/// The stored document kind of an add-on bought on a subscription.
pub const ADDON_KIND: &str = "subscription_addon";

/// Annotation naming the subscription this one replaced (a change or migration).
pub const PREVIOUS: &str = "subscription.previous.id";
/// Annotation naming the subscription that replaces this one.
pub const SUPERSEDING: &str = "subscription.superseding.id";

/// OpenMeter's `SubscriptionStatus` (`subscription.go:GetStatusAt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Started and not ending.
    Active,
    /// Started, with an end (a cancelation) still ahead.
    Canceled,
    /// Ended, or deleted.
    Inactive,
    /// Starts later.
    Scheduled,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Canceled => "canceled",
            Status::Inactive => "inactive",
            Status::Scheduled => "scheduled",
        }
    }
}

/// `{id, key, version}` of the plan a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRef {
    /// The plan version's id.
    pub id: String,
    /// The plan's key.
    pub key: String,
    /// Its version.
    pub version: i64,
}

/// A subscription: a customer on a plan (or a custom plan) over `[activeFrom, activeTo)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// Id.
    pub id: String,
    /// Display name (the plan's by default).
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Read-only annotations (previous/superseding subscription ids).
    #[serde(default)]
    pub annotations: BTreeMap<String, Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// Deleted (only scheduled subscriptions are deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// Starts.
    pub active_from: DateTime<Utc>,
    /// Ends (a cancelation, or a change to another plan), exclusive.
    #[serde(default)]
    pub active_to: Option<DateTime<Utc>>,
    /// The customer.
    pub customer_id: String,
    /// The plan followed; `None` for a custom subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanRef>,
    /// Invoice currency (the plan's).
    pub currency: String,
    /// The plan's billing cadence (ISO 8601).
    pub billing_cadence: String,
    /// Proration of flat prices.
    #[serde(default)]
    pub pro_rating_config: ProRatingConfig,
    /// Billing periods are `billingAnchor + n × billingCadence`.
    pub billing_anchor: DateTime<Utc>,
    /// `credit_then_invoice` or `credit_only`.
    pub settlement_mode: String,
    /// `dynamic` or `pinned`.
    #[serde(default = "dynamic")]
    pub cost_basis_mode: String,
    /// Phases in time order.
    pub phases: Vec<Phase>,
}

fn dynamic() -> String {
    "dynamic".into()
}

/// A phase of a subscription, copied from the plan's phase with its absolute start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Phase {
    /// Id.
    pub id: String,
    /// The plan phase's key.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// When it starts; it lasts until the next phase starts (or the subscription ends).
    pub active_from: DateTime<Utc>,
    /// Items (item keys may repeat with disjoint bounds: versions of one item after edits).
    pub items: Vec<Item>,
}

/// An item of a phase: one rate card over (part of) the phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    /// Id.
    pub id: String,
    /// The rate card's key.
    pub key: String,
    /// What it charges and the entitlement it provisions.
    pub rate_card: RateCard,
    /// Starts later than its phase (added by an edit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_from_override: Option<DateTime<Utc>>,
    /// Ends earlier than its phase (removed by an edit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_to_override: Option<DateTime<Utc>>,
}

impl Subscription {
    /// OpenMeter's `GetStatusAt`.
    pub fn status_at(&self, now: DateTime<Utc>) -> Status {
        if self.deleted_at.is_some() {
            return Status::Inactive;
        }
        if self.active_from > now {
            return Status::Scheduled;
        }
        match self.active_to {
            None => Status::Active,
            Some(to) if to > now => Status::Canceled,
            Some(_) => Status::Inactive,
        }
    }

    /// The billing cadence parsed.
    pub fn cadence(&self) -> Result<IsoDuration, String> {
        IsoDuration::parse(&self.billing_cadence)
    }

    /// Whether `[activeFrom, activeTo)` overlaps `[from, to)` (`None` = open-ended).
    pub fn overlaps(&self, from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> bool {
        self.deleted_at.is_none()
            && self.active_to.is_none_or(|end| end > from)
            && to.is_none_or(|end| end > self.active_from)
            && self.active_to != Some(self.active_from)
    }

    /// An annotation's text.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).and_then(Value::as_str)
    }
}

/// `{id, key, version, instanceType}` of the add-on bought.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddonRef {
    /// The add-on version's id.
    pub id: String,
    /// Its key.
    pub key: String,
    /// Its version.
    pub version: i64,
    /// `single` or `multiple`.
    pub instance_type: String,
}

/// From `activeFrom` on, this many instances (until the next entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quantity {
    /// From.
    pub active_from: DateTime<Utc>,
    /// Instances (0 = none).
    pub quantity: u32,
}

/// An add-on bought on a subscription, with its quantity over time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionAddon {
    /// Id.
    pub id: String,
    /// The subscription.
    pub subscription_id: String,
    /// The add-on version bought.
    pub addon: AddonRef,
    /// Its rate cards when bought.
    pub rate_cards: Vec<RateCard>,
    /// Display name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// Quantity changes, in time order.
    pub timeline: Vec<Quantity>,
}

impl SubscriptionAddon {
    /// Instances at `t`.
    pub fn quantity_at(&self, t: DateTime<Utc>) -> u32 {
        self.timeline
            .iter()
            .rev()
            .find(|q| q.active_from <= t)
            .map_or(0, |q| q.quantity)
    }

    /// Sets the quantity from `from` on: later entries are replaced (a new plan for the future).
    pub fn set_quantity(&mut self, from: DateTime<Utc>, quantity: u32) {
        self.timeline.retain(|q| q.active_from < from);
        if self.timeline.last().map(|q| q.quantity) != Some(quantity) {
            self.timeline.push(Quantity {
                active_from: from,
                quantity,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn sub(from: &str, to: Option<&str>) -> Subscription {
        Subscription {
            id: "s".into(),
            name: "n".into(),
            description: None,
            metadata: None,
            annotations: BTreeMap::new(),
            created_at: t(from),
            updated_at: t(from),
            deleted_at: None,
            active_from: t(from),
            active_to: to.map(t),
            customer_id: "c".into(),
            plan: None,
            currency: "USD".into(),
            billing_cadence: "P1M".into(),
            pro_rating_config: ProRatingConfig::default(),
            billing_anchor: t(from),
            settlement_mode: "credit_then_invoice".into(),
            cost_basis_mode: "dynamic".into(),
            phases: vec![],
        }
    }

    #[test]
    fn status_follows_openmeters_get_status_at() {
        let now = t("2026-02-01T00:00:00Z");
        assert_eq!(
            sub("2026-03-01T00:00:00Z", None).status_at(now),
            Status::Scheduled
        );
        assert_eq!(
            sub("2026-01-01T00:00:00Z", None).status_at(now),
            Status::Active
        );
        let canceled = sub("2026-01-01T00:00:00Z", Some("2026-03-01T00:00:00Z"));
        assert_eq!(canceled.status_at(now), Status::Canceled);
        let ended = sub("2026-01-01T00:00:00Z", Some("2026-02-01T00:00:00Z"));
        assert_eq!(
            ended.status_at(now),
            Status::Inactive,
            "activeTo is exclusive"
        );
        let mut deleted = sub("2026-03-01T00:00:00Z", None);
        deleted.deleted_at = Some(now);
        assert_eq!(deleted.status_at(now), Status::Inactive);
    }

    #[test]
    fn overlap_is_half_open() {
        let a = sub("2026-01-01T00:00:00Z", Some("2026-02-01T00:00:00Z"));
        assert!(
            !a.overlaps(t("2026-02-01T00:00:00Z"), None),
            "a successor starts at activeTo"
        );
        assert!(a.overlaps(t("2026-01-15T00:00:00Z"), None));
        assert!(!a.overlaps(t("2025-01-01T00:00:00Z"), Some(t("2026-01-01T00:00:00Z"))));
    }

    #[test]
    fn quantities_over_time() {
        let mut a = SubscriptionAddon {
            id: "a".into(),
            subscription_id: "s".into(),
            addon: AddonRef {
                id: "x".into(),
                key: "k".into(),
                version: 1,
                instance_type: "multiple".into(),
            },
            rate_cards: vec![],
            name: "n".into(),
            description: None,
            metadata: None,
            created_at: t("2026-01-01T00:00:00Z"),
            updated_at: t("2026-01-01T00:00:00Z"),
            timeline: vec![],
        };
        a.set_quantity(t("2026-01-01T00:00:00Z"), 2);
        a.set_quantity(t("2026-02-01T00:00:00Z"), 5);
        assert_eq!(a.quantity_at(t("2025-12-31T00:00:00Z")), 0);
        assert_eq!(a.quantity_at(t("2026-01-20T00:00:00Z")), 2);
        assert_eq!(a.quantity_at(t("2026-02-01T00:00:00Z")), 5);
        a.set_quantity(t("2026-01-15T00:00:00Z"), 1);
        assert_eq!(a.timeline.len(), 2, "a later plan is replaced");
    }
}
