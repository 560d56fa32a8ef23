//! The catalog's documents in OpenMeter v1's JSON shapes (`Plan`, `PlanPhase`, `RateCard`, the
//! price variants, `Addon`, `PlanAddon`) and how a rate card's price becomes the engine's
//! [`crate::pricing`] types. Money is a decimal string on the wire; percentages are numbers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::pricing;

/// A plan or add-on's lifecycle state, derived from `effectiveFrom`/`effectiveTo` and the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Never published: editable.
    Draft,
    /// Published and in effect.
    Active,
    /// No longer in effect.
    Archived,
    /// Published with an effective date still ahead.
    Scheduled,
}

impl Status {
    /// OpenMeter's `StatusAt`.
    pub fn at(
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Status {
        match (from, to) {
            (None, None) => Status::Draft,
            (_, Some(to)) if to <= now => Status::Archived,
            (Some(from), _) if from > now => Status::Scheduled,
            (Some(_), _) => Status::Active,
            (None, Some(_)) => Status::Archived,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Active => "active",
            Status::Archived => "archived",
            Status::Scheduled => "scheduled",
        }
    }
}

/// One validation finding, OpenMeter's `ValidationError` (`field` is a JSONPath).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationIssue {
    /// JSONPath of the field, e.g. `$.phases[?(@.key=='trial')].rateCards[?(@.key=='api')].price`.
    pub field: String,
    /// Stable code, e.g. `rate_card_key_feature_key_mismatch`.
    pub code: String,
    /// What is wrong.
    pub message: String,
    /// `critical` (rejects the request) or `warning` (saved on a draft, blocks publish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
}

/// `proRatingConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProRatingConfig {
    /// Whether flat prices are prorated.
    pub enabled: bool,
    /// The only mode: `prorate_prices`.
    pub mode: String,
}

impl Default for ProRatingConfig {
    fn default() -> Self {
        ProRatingConfig {
            enabled: true,
            mode: "prorate_prices".into(),
        }
    }
}

/// A plan version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Id.
    pub id: String,
    /// Key shared by all versions.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// 1, 2, … per key.
    pub version: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// ISO 8601 duration, e.g. `P1M`.
    pub billing_cadence: String,
    /// Proration of flat prices.
    #[serde(default)]
    pub pro_rating_config: ProRatingConfig,
    /// `credit_then_invoice` or `credit_only`.
    #[serde(default = "default_settlement")]
    pub settlement_mode: String,
    /// Deprecated alignment block, kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alignment: Option<Value>,
    /// When it took (or takes) effect.
    #[serde(default)]
    pub effective_from: Option<DateTime<Utc>>,
    /// When it stopped (or stops) being in effect.
    #[serde(default)]
    pub effective_to: Option<DateTime<Utc>>,
    /// Derived on every read.
    #[serde(default = "draft")]
    pub status: Status,
    /// Phases in order.
    pub phases: Vec<Phase>,
    /// Warnings found when it was saved (null when none).
    #[serde(default)]
    pub validation_errors: Option<Vec<ValidationIssue>>,
}

fn default_settlement() -> String {
    "credit_then_invoice".into()
}

fn draft() -> Status {
    Status::Draft
}

/// A plan phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Phase {
    /// Key, unique in the plan.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// ISO 8601; null only on the last phase.
    #[serde(default)]
    pub duration: Option<String>,
    /// What the phase charges.
    #[serde(default)]
    pub rate_cards: Vec<RateCard>,
}

/// `flat_fee` or `usage_based`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateCardType {
    /// A flat price (or free).
    FlatFee,
    /// A usage-based price (or free).
    UsageBased,
}

/// A rate card: what one feature (or a fee) costs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateCard {
    /// `flat_fee` or `usage_based`.
    #[serde(rename = "type")]
    pub kind: RateCardType,
    /// Key, unique in the phase; equals `featureKey` when there is one.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// The feature charged for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_key: Option<String>,
    /// The entitlement a subscription gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entitlement_template: Option<EntitlementTemplate>,
    /// Tax behaviour and code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_config: Option<TaxConfig>,
    /// ISO 8601; null on a flat fee means one-time.
    #[serde(default)]
    pub billing_cadence: Option<String>,
    /// Null means free.
    #[serde(default)]
    pub price: Option<PriceDoc>,
    /// Discounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discounts: Option<DiscountsDoc>,
}

/// `{type: "flat", amount}` inside a tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TierAmount {
    /// `flat` or `unit`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The amount.
    pub amount: Decimal,
}

/// A price tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierDoc {
    /// Inclusive upper bound; absent on the open-ended tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to_amount: Option<Decimal>,
    /// Charged once when the tier is entered.
    #[serde(default)]
    pub flat_price: Option<TierAmount>,
    /// Charged per unit.
    #[serde(default)]
    pub unit_price: Option<TierAmount>,
}

/// A price in OpenMeter's JSON (commitments inline on the usage-based variants).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PriceDoc {
    /// `{type: flat, amount, paymentTerm}`.
    #[serde(rename_all = "camelCase")]
    Flat {
        /// Amount.
        amount: Decimal,
        /// `in_advance` (default) or `in_arrears`.
        #[serde(default = "in_advance")]
        payment_term: String,
    },
    /// `{type: unit, amount, minimumAmount?, maximumAmount?}`.
    #[serde(rename_all = "camelCase")]
    Unit {
        /// Per unit.
        amount: Decimal,
        /// Minimum spend.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        minimum_amount: Option<Decimal>,
        /// Maximum spend.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maximum_amount: Option<Decimal>,
    },
    /// `{type: tiered, mode, tiers, …}`.
    #[serde(rename_all = "camelCase")]
    Tiered {
        /// `graduated` or `volume`.
        mode: String,
        /// Tiers.
        tiers: Vec<TierDoc>,
        /// Minimum spend.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        minimum_amount: Option<Decimal>,
        /// Maximum spend.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maximum_amount: Option<Decimal>,
    },
    /// `{type: dynamic, multiplier, …}`.
    #[serde(rename_all = "camelCase")]
    Dynamic {
        /// Mark-up factor, default 1.
        #[serde(default = "one")]
        multiplier: Decimal,
        /// Minimum spend.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        minimum_amount: Option<Decimal>,
        /// Maximum spend.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maximum_amount: Option<Decimal>,
    },
    /// `{type: package, amount, quantityPerPackage, …}`.
    #[serde(rename_all = "camelCase")]
    Package {
        /// Per package.
        amount: Decimal,
        /// Units per package.
        quantity_per_package: Decimal,
        /// Minimum spend.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        minimum_amount: Option<Decimal>,
        /// Maximum spend.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maximum_amount: Option<Decimal>,
    },
}

fn in_advance() -> String {
    "in_advance".into()
}

fn one() -> Decimal {
    Decimal::ONE
}

/// `{percentage?: {percentage}, usage?: {quantity}}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiscountsDoc {
    /// Percent off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<PercentageDoc>,
    /// Free units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageDoc>,
}

/// `{percentage: 10}` (a number, 0..100).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PercentageDoc {
    /// Percent.
    #[serde(with = "rust_decimal::serde::float")]
    pub percentage: Decimal,
}

/// `{quantity: "100"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageDoc {
    /// Free units per period.
    pub quantity: Decimal,
}

/// An entitlement template.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntitlementTemplate {
    /// A metered allowance.
    #[serde(rename_all = "camelCase")]
    Metered {
        /// Allow usage beyond the balance.
        #[serde(default)]
        is_soft_limit: bool,
        /// Units granted at each reset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        issue_after_reset: Option<f64>,
        /// Priority of that grant (1..255).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        issue_after_reset_priority: Option<u16>,
        /// Carry overage into the next period.
        #[serde(default)]
        preserve_overage_at_reset: bool,
        /// ISO 8601; defaults to the rate card's cadence.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage_period: Option<String>,
        /// Metadata.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<BTreeMap<String, String>>,
    },
    /// A static configuration (a JSON string).
    Static {
        /// JSON text.
        config: String,
        /// Metadata.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<BTreeMap<String, String>>,
    },
    /// On or off.
    Boolean {
        /// Metadata.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<BTreeMap<String, String>>,
    },
}

/// `taxConfig`, kept as given apart from the checked fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaxConfig {
    /// `inclusive` or `exclusive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<String>,
    /// A tax code's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_code_id: Option<String>,
    /// `{code: "txcd_…"}` (deprecated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe: Option<StripeTaxCode>,
    /// `{code}` (deprecated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_invoicing: Option<Value>,
}

/// `{code}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StripeTaxCode {
    /// `txcd_` and 8 digits.
    pub code: String,
}

/// An add-on version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Addon {
    /// Id.
    pub id: String,
    /// Key shared by all versions.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Read-only annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, Value>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// 1, 2, … per key.
    pub version: i64,
    /// `single` or `multiple`.
    pub instance_type: String,
    /// ISO 4217.
    pub currency: String,
    /// In effect from.
    #[serde(default)]
    pub effective_from: Option<DateTime<Utc>>,
    /// In effect until.
    #[serde(default)]
    pub effective_to: Option<DateTime<Utc>>,
    /// Derived.
    #[serde(default = "draft")]
    pub status: Status,
    /// What it charges.
    #[serde(default)]
    pub rate_cards: Vec<RateCard>,
    /// Warnings saved with it.
    #[serde(default)]
    pub validation_errors: Option<Vec<ValidationIssue>>,
}

/// An add-on offered with a plan, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanAddonRecord {
    /// Id.
    pub id: String,
    /// The plan.
    pub plan_id: String,
    /// The add-on version.
    pub addon_id: String,
    /// Phase key from which it may be bought.
    pub from_plan_phase: String,
    /// Most instances (multiple-instance add-ons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_quantity: Option<i64>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A rate card's price in the engine's terms: `(price, discounts, commitments)`, or `None` when
/// it is free. Fails with the engine-level problems of a malformed price.
pub fn pricing_of(
    card: &RateCard,
) -> Result<
    Option<(pricing::Price, pricing::Discounts, pricing::Commitments)>,
    Vec<pricing::PriceProblem>,
> {
    let Some(doc) = &card.price else {
        return Ok(None);
    };
    let mut problems = Vec::new();
    let (price, minimum, maximum) = match doc {
        PriceDoc::Flat {
            amount,
            payment_term,
        } => {
            let payment_term = match payment_term.as_str() {
                "in_advance" => pricing::PaymentTerm::InAdvance,
                "in_arrears" => pricing::PaymentTerm::InArrears,
                other => {
                    problems.push(pricing::PriceProblem {
                        code: "price_payment_term_invalid",
                        field: "paymentTerm".into(),
                        message: format!(
                            "paymentTerm must be in_advance or in_arrears, got {other:?}"
                        ),
                    });
                    pricing::PaymentTerm::InAdvance
                }
            };
            (
                pricing::Price::Flat {
                    amount: *amount,
                    payment_term,
                },
                None,
                None,
            )
        }
        PriceDoc::Unit {
            amount,
            minimum_amount,
            maximum_amount,
        } => (
            pricing::Price::Unit { amount: *amount },
            *minimum_amount,
            *maximum_amount,
        ),
        PriceDoc::Tiered {
            mode,
            tiers,
            minimum_amount,
            maximum_amount,
        } => {
            let mode = match mode.as_str() {
                "graduated" => pricing::TierMode::Graduated,
                "volume" => pricing::TierMode::Volume,
                other => {
                    problems.push(pricing::PriceProblem {
                        code: "price_tier_mode_invalid",
                        field: "mode".into(),
                        message: format!("mode must be graduated or volume, got {other:?}"),
                    });
                    pricing::TierMode::Graduated
                }
            };
            let tiers = tiers
                .iter()
                .map(|t| pricing::Tier {
                    up_to: t.up_to_amount,
                    flat: t.flat_price.as_ref().map(|p| p.amount),
                    unit: t.unit_price.as_ref().map(|p| p.amount),
                })
                .collect();
            (
                pricing::Price::Tiered { mode, tiers },
                *minimum_amount,
                *maximum_amount,
            )
        }
        PriceDoc::Dynamic {
            multiplier,
            minimum_amount,
            maximum_amount,
        } => (
            pricing::Price::Dynamic {
                multiplier: *multiplier,
            },
            *minimum_amount,
            *maximum_amount,
        ),
        PriceDoc::Package {
            amount,
            quantity_per_package,
            minimum_amount,
            maximum_amount,
        } => (
            pricing::Price::Package {
                amount: *amount,
                quantity_per_package: *quantity_per_package,
            },
            *minimum_amount,
            *maximum_amount,
        ),
    };
    let commitments = pricing::Commitments { minimum, maximum };
    let discounts = pricing::Discounts {
        percentage: card
            .discounts
            .as_ref()
            .and_then(|d| d.percentage.as_ref())
            .map(|p| p.percentage),
        usage: card
            .discounts
            .as_ref()
            .and_then(|d| d.usage.as_ref())
            .map(|u| u.quantity),
    };
    problems.extend(price.problems());
    problems.extend(commitments.problems());
    if problems.is_empty() {
        Ok(Some((price, discounts, commitments)))
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn status_follows_openmeters_status_at() {
        let t = |h| Utc.with_ymd_and_hms(2026, 1, 1, h, 0, 0).single();
        let now = t(12).expect("time");
        assert_eq!(Status::at(None, None, now), Status::Draft);
        assert_eq!(Status::at(t(10), None, now), Status::Active);
        assert_eq!(Status::at(t(10), t(13), now), Status::Active);
        assert_eq!(
            Status::at(t(10), t(12), now),
            Status::Archived,
            "effectiveTo is exclusive"
        );
        assert_eq!(Status::at(t(13), None, now), Status::Scheduled);
    }

    #[test]
    fn a_rate_cards_json_price_becomes_the_engines() {
        let card: RateCard = serde_json::from_value(serde_json::json!({
            "type": "usage_based", "key": "api", "name": "API", "billingCadence": "P1M",
            "price": {"type": "package", "amount": "10", "quantityPerPackage": "20", "maximumAmount": "100"},
            "discounts": {"percentage": {"percentage": 12.5}, "usage": {"quantity": "5"}}
        }))
        .expect("a rate card");
        let (price, discounts, commitments) = pricing_of(&card).expect("valid").expect("priced");
        assert_eq!(
            price,
            pricing::Price::Package {
                amount: Decimal::from(10),
                quantity_per_package: Decimal::from(20)
            }
        );
        assert_eq!(discounts.percentage, Some(Decimal::new(125, 1)));
        assert_eq!(discounts.usage, Some(Decimal::from(5)));
        assert_eq!(commitments.maximum, Some(Decimal::from(100)));
    }
}
