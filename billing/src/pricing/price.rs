//! What a rate card charges: the price models (flat, unit, tiered graduated and volume, package,
//! dynamic), discounts and spend commitments, and the rules that make one valid (OpenMeter's
//! `productcatalog/price.go`). Plain data: the catalog parses its JSON into these types.

use rust_decimal::Decimal;

/// When a flat price is billed within its period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentTerm {
    /// At the start of the period (OpenMeter v1's default for flat prices).
    InAdvance,
    /// At the end of the period (every usage-based price).
    InArrears,
}

/// How a tiered price spreads the quantity over its tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierMode {
    /// Each unit is priced by the tier it falls in.
    Graduated,
    /// Every unit is priced by the single tier the period's total reaches.
    Volume,
}

/// One tier: `(previous tier's up_to, up_to]`, open-ended when `up_to` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Inclusive upper bound of the tier; `None` for the open-ended last tier.
    pub up_to: Option<Decimal>,
    /// Charged once when the tier is entered.
    pub flat: Option<Decimal>,
    /// Charged per unit in the tier.
    pub unit: Option<Decimal>,
}

/// A price model. A rate card with no price is free and never reaches the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Price {
    /// A fixed amount per period (or once).
    Flat {
        /// The amount.
        amount: Decimal,
        /// Start or end of the period.
        payment_term: PaymentTerm,
    },
    /// Quantity × amount.
    Unit {
        /// Per unit.
        amount: Decimal,
    },
    /// Tiers, graduated or volume.
    Tiered {
        /// Graduated or volume.
        mode: TierMode,
        /// Sorted by `up_to`, the open-ended tier last.
        tiers: Vec<Tier>,
    },
    /// `amount` per started package of `quantity_per_package` units.
    Package {
        /// Per package.
        amount: Decimal,
        /// Units in one package (> 0).
        quantity_per_package: Decimal,
    },
    /// The meter holds a cost; the price is that cost × `multiplier`.
    Dynamic {
        /// Mark-up factor (1 = at cost).
        multiplier: Decimal,
    },
}

/// Discounts on a rate card.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discounts {
    /// Percent off every line, 0..=100.
    pub percentage: Option<Decimal>,
    /// The first N units of each period are free (usage prices only).
    pub usage: Option<Decimal>,
}

/// Minimum and maximum spend per period (usage prices only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commitments {
    /// The period bills at least this much.
    pub minimum: Option<Decimal>,
    /// The period never bills more than this.
    pub maximum: Option<Decimal>,
}

/// One rule a price breaks: OpenMeter's code, the field (relative to the price, e.g.
/// `tiers[1].upToAmount`) and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceProblem {
    /// Stable machine code, e.g. `price_tier_order_invalid`.
    pub code: &'static str,
    /// The JSON field under the price (or the rate card for discounts/commitments).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn problem(
    code: &'static str,
    field: impl Into<String>,
    message: impl Into<String>,
) -> PriceProblem {
    PriceProblem {
        code,
        field: field.into(),
        message: message.into(),
    }
}

fn not_negative(out: &mut Vec<PriceProblem>, value: Option<Decimal>, field: &str) {
    if value.is_some_and(|v| v.is_sign_negative() && !v.is_zero()) {
        out.push(problem(
            "price_amount_negative",
            field,
            format!("{field} must not be negative"),
        ));
    }
}

impl Price {
    /// Whether this is a flat price (no usage, no commitments).
    pub fn is_flat(&self) -> bool {
        matches!(self, Price::Flat { .. })
    }

    /// Every rule this price breaks; empty when the engine may rate it.
    pub fn problems(&self) -> Vec<PriceProblem> {
        let mut out = Vec::new();
        match self {
            Price::Flat { amount, .. } | Price::Unit { amount } => {
                not_negative(&mut out, Some(*amount), "amount");
            }
            Price::Package {
                amount,
                quantity_per_package,
            } => {
                not_negative(&mut out, Some(*amount), "amount");
                if *quantity_per_package <= Decimal::ZERO {
                    out.push(problem(
                        "price_package_size_invalid",
                        "quantityPerPackage",
                        "quantityPerPackage must be greater than 0",
                    ));
                }
            }
            Price::Dynamic { multiplier } => {
                not_negative(&mut out, Some(*multiplier), "multiplier");
            }
            Price::Tiered { tiers, .. } => tier_problems(tiers, &mut out),
        }
        out
    }
}

fn tier_problems(tiers: &[Tier], out: &mut Vec<PriceProblem>) {
    if tiers.is_empty() {
        out.push(problem(
            "price_tiers_empty",
            "tiers",
            "a tiered price needs at least one tier",
        ));
        return;
    }
    let mut previous: Option<Decimal> = None;
    for (i, tier) in tiers.iter().enumerate() {
        let last = i + 1 == tiers.len();
        not_negative(out, tier.flat, &format!("tiers[{i}].flatPrice.amount"));
        not_negative(out, tier.unit, &format!("tiers[{i}].unitPrice.amount"));
        if tier.flat.is_none() && tier.unit.is_none() {
            out.push(problem(
                "price_tier_without_price",
                format!("tiers[{i}]"),
                format!("tier {} needs a flatPrice or a unitPrice", i + 1),
            ));
        }
        match (tier.up_to, last) {
            (None, true) => {}
            (None, false) => out.push(problem(
                "price_tier_open_ended_not_last",
                format!("tiers[{i}].upToAmount"),
                format!(
                    "only the last tier may be open-ended (tier {} has no upToAmount)",
                    i + 1
                ),
            )),
            (Some(_), true) => out.push(problem(
                "price_tier_open_ended_missing",
                format!("tiers[{i}].upToAmount"),
                "the last tier must be open-ended (no upToAmount)",
            )),
            (Some(up_to), false) => {
                if up_to <= Decimal::ZERO {
                    out.push(problem(
                        "price_tier_bound_invalid",
                        format!("tiers[{i}].upToAmount"),
                        format!("upToAmount must be greater than 0 (tier {})", i + 1),
                    ));
                } else if previous.is_some_and(|p| up_to <= p) {
                    out.push(problem(
                        "price_tier_order_invalid",
                        format!("tiers[{i}].upToAmount"),
                        format!(
                            "tiers must be in ascending upToAmount order: tier {} ({up_to}) does not exceed tier {} ({})",
                            i + 1,
                            i,
                            previous.unwrap_or_default()
                        ),
                    ));
                }
                previous = Some(up_to);
            }
        }
    }
}

impl Discounts {
    /// Every rule these discounts break for `price`; fields are relative to the rate card.
    pub fn problems(&self, price: Option<&Price>) -> Vec<PriceProblem> {
        let mut out = Vec::new();
        if (self.percentage.is_some() || self.usage.is_some()) && price.is_none() {
            out.push(problem(
                "discount_without_price",
                "discounts",
                "a discount needs a price",
            ));
        }
        if let Some(p) = self.percentage
            && (p < Decimal::ZERO || p > Decimal::ONE_HUNDRED)
        {
            out.push(problem(
                "percentage_discount_invalid_value",
                "discounts.percentage.percentage",
                format!("percentage must be between 0 and 100, got {p}"),
            ));
        }
        if let Some(q) = self.usage {
            if q < Decimal::ZERO {
                out.push(problem(
                    "usage_discount_negative_quantity",
                    "discounts.usage.quantity",
                    format!("usage discount quantity must not be negative, got {q}"),
                ));
            }
            if price.is_some_and(Price::is_flat) {
                out.push(problem(
                    "usage_discount_with_flat_price",
                    "discounts.usage",
                    "a usage discount needs a usage-based price, not a flat one",
                ));
            }
        }
        out
    }
}

impl Commitments {
    /// Every rule these commitments break; fields are relative to the price.
    pub fn problems(&self) -> Vec<PriceProblem> {
        let mut out = Vec::new();
        not_negative(&mut out, self.minimum, "minimumAmount");
        not_negative(&mut out, self.maximum, "maximumAmount");
        if let (Some(min), Some(max)) = (self.minimum, self.maximum)
            && !min.is_zero()
            && !max.is_zero()
            && min > max
        {
            out.push(problem(
                "price_commitments_invalid",
                "minimumAmount",
                format!("minimumAmount ({min}) must not exceed maximumAmount ({max})"),
            ));
        }
        out
    }

    /// Whether there is no commitment at all.
    pub fn is_empty(&self) -> bool {
        self.minimum.is_none() && self.maximum.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().expect("decimal literal")
    }

    fn tier(up_to: Option<&str>, unit: &str) -> Tier {
        Tier {
            up_to: up_to.map(d),
            flat: None,
            unit: Some(d(unit)),
        }
    }

    fn codes(p: &[PriceProblem]) -> Vec<&'static str> {
        p.iter().map(|p| p.code).collect()
    }

    #[test]
    fn tiers_must_ascend_and_end_open() {
        let ok = Price::Tiered {
            mode: TierMode::Graduated,
            tiers: vec![tier(Some("10"), "1"), tier(None, "0.5")],
        };
        assert!(ok.problems().is_empty());
        let bad = Price::Tiered {
            mode: TierMode::Graduated,
            tiers: vec![tier(Some("10"), "1"), tier(Some("5"), "1"), tier(None, "1")],
        };
        let problems = bad.problems();
        assert_eq!(codes(&problems), ["price_tier_order_invalid"]);
        assert_eq!(problems[0].field, "tiers[1].upToAmount");
        let open_first = Price::Tiered {
            mode: TierMode::Volume,
            tiers: vec![tier(None, "1"), tier(Some("5"), "1")],
        };
        assert_eq!(
            codes(&open_first.problems()),
            [
                "price_tier_open_ended_not_last",
                "price_tier_open_ended_missing"
            ]
        );
    }

    #[test]
    fn negative_amounts_and_bad_packages_are_named() {
        let p = Price::Package {
            amount: d("-1"),
            quantity_per_package: d("0"),
        };
        assert_eq!(
            codes(&p.problems()),
            ["price_amount_negative", "price_package_size_invalid"]
        );
    }

    #[test]
    fn discount_and_commitment_rules() {
        let flat = Price::Flat {
            amount: d("10"),
            payment_term: PaymentTerm::InAdvance,
        };
        let discounts = Discounts {
            percentage: Some(d("101")),
            usage: Some(d("5")),
        };
        assert_eq!(
            codes(&discounts.problems(Some(&flat))),
            [
                "percentage_discount_invalid_value",
                "usage_discount_with_flat_price"
            ]
        );
        let c = Commitments {
            minimum: Some(d("10")),
            maximum: Some(d("5")),
        };
        assert_eq!(codes(&c.problems()), ["price_commitments_invalid"]);
    }
}
