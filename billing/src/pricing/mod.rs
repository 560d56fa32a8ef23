//! The rating engine: pure functions (no I/O, no clock) that turn a price and the usage of one
//! invoice line into detailed lines with amounts, the way OpenMeter rates them.
//!
//! A billing period may be invoiced in several lines (progressive billing); each is rated with
//! what came before it in the period: the usage before the line and the amount earlier lines
//! billed. The pipeline, in OpenMeter's order (`rating/service/pricer.go`):
//!
//! 1. usage discount — free units, used up by the period's earlier usage first ([`adjust`]);
//! 2. the pricer for the price model ([`models`]);
//! 3. percentage discount on each line;
//! 4. maximum spend — discounts whatever takes the period above the cap;
//! 5. minimum spend — on the period's last line, a `commitment` line up to the floor.
//!
//! Flat prices skip 1, 4 and 5. Every amount is rounded to the currency's minor unit, half away
//! from zero ([`Currency::round`]); money is [`rust_decimal::Decimal`], never a float.
//!
//! ```
//! use rust_decimal::Decimal;
//! use tollgate_billing::pricing::*;
//!
//! let price = Price::Unit { amount: "0.10".parse().unwrap() };
//! let rating = rate(&RatingInput {
//!     discounts: &Discounts { usage: Some(Decimal::from(900)), percentage: Some(Decimal::from(10)) },
//!     ..RatingInput::whole_period(Currency::USD, &price, Decimal::from(1000))
//! })
//! .unwrap();
//! assert_eq!(rating.total(), Decimal::from(9));
//! ```

mod adjust;
mod line;
mod models;
mod money;
mod price;

use rust_decimal::Decimal;

pub use line::{
    Category, DetailedLine, DiscountReason, LineDiscount, LineKind, Rating, UsageDiscountApplied,
};
pub use money::{Currency, CurrencyError};
pub use price::{Commitments, Discounts, PaymentTerm, Price, PriceProblem, Tier, TierMode};

use models::{Lines, Position};

/// Everything the engine needs to rate one invoice line.
#[derive(Debug, Clone)]
pub struct RatingInput<'a> {
    /// The currency amounts are rounded to.
    pub currency: Currency,
    /// The rate card's price.
    pub price: &'a Price,
    /// The rate card's discounts.
    pub discounts: &'a Discounts,
    /// The price's spend commitments (ignored for flat prices).
    pub commitments: &'a Commitments,
    /// Usage in this line's service period.
    pub quantity: Decimal,
    /// Usage earlier in the billing period, before this line.
    pub pre_period_quantity: Decimal,
    /// What the period's earlier lines of this rate card billed, after discounts.
    pub previously_billed: Decimal,
    /// This line starts the billing period.
    pub first_in_period: bool,
    /// This line ends the billing period.
    pub last_in_period: bool,
}

static NO_DISCOUNTS: Discounts = Discounts {
    percentage: None,
    usage: None,
};
static NO_COMMITMENTS: Commitments = Commitments {
    minimum: None,
    maximum: None,
};

impl<'a> RatingInput<'a> {
    /// One line covering a whole period, no discounts or commitments.
    pub fn whole_period(currency: Currency, price: &'a Price, quantity: Decimal) -> Self {
        RatingInput {
            currency,
            price,
            discounts: &NO_DISCOUNTS,
            commitments: &NO_COMMITMENTS,
            quantity,
            pre_period_quantity: Decimal::ZERO,
            previously_billed: Decimal::ZERO,
            first_in_period: true,
            last_in_period: true,
        }
    }
}

/// Input the engine cannot rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatingError {
    /// A quantity below zero.
    #[error("{field} must not be negative, got {value}")]
    NegativeQuantity {
        /// `quantity` or `pre_period_quantity`.
        field: &'static str,
        /// The value given.
        value: Decimal,
    },
    /// The price breaks a rule (the catalog refuses such prices; this guards other callers).
    #[error("invalid price: {field}: {message}")]
    InvalidPrice {
        /// Field under the price.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Rates one invoice line: detailed lines in OpenMeter's order, each amount rounded.
pub fn rate(input: &RatingInput<'_>) -> Result<Rating, RatingError> {
    check(input)?;
    let at = Position {
        first: input.first_in_period,
        last: input.last_in_period,
    };
    let mut lines = Lines {
        currency: input.currency,
        out: Vec::with_capacity(4),
    };

    if let Price::Flat {
        amount,
        payment_term,
    } = input.price
    {
        models::flat(&mut lines, *amount, *payment_term, at);
        if let Some(percent) = input.discounts.percentage {
            adjust::percentage(&mut lines, percent);
        }
        return Ok(Rating {
            lines: lines.out,
            usage_discount: None,
        });
    }

    let (pre, quantity, usage_discount) = adjust::usage_discount(
        input.discounts.usage,
        input.pre_period_quantity,
        input.quantity,
    );
    let (from, to) = (pre, pre + quantity);
    match input.price {
        Price::Flat { .. } => {} // rated above
        Price::Unit { amount } => models::unit(&mut lines, *amount, quantity),
        Price::Tiered {
            mode: TierMode::Graduated,
            tiers,
        } => models::graduated(&mut lines, tiers, from, to, at.first),
        Price::Tiered {
            mode: TierMode::Volume,
            tiers,
        } => {
            if at.last {
                models::volume(&mut lines, tiers, to);
            }
        }
        Price::Package {
            amount,
            quantity_per_package,
        } => models::package(&mut lines, *amount, *quantity_per_package, from, to),
        Price::Dynamic { multiplier } => models::dynamic(&mut lines, *multiplier, quantity),
    }

    if let Some(percent) = input.discounts.percentage {
        adjust::percentage(&mut lines, percent);
    }
    if let Some(maximum) = input.commitments.maximum {
        adjust::maximum_spend(&mut lines, maximum, input.previously_billed);
    }
    if let (Some(minimum), true) = (input.commitments.minimum, at.last) {
        adjust::minimum_spend(&mut lines, minimum, input.previously_billed);
    }
    Ok(Rating {
        lines: lines.out,
        usage_discount,
    })
}

/// The cheap checks that keep the arithmetic well-defined (no division by zero, no negative
/// ranges or totals); the catalog runs the full [`Price::problems`] before a price is ever stored.
fn check(input: &RatingInput<'_>) -> Result<(), RatingError> {
    for (field, value) in [
        ("quantity", input.quantity),
        ("pre_period_quantity", input.pre_period_quantity),
    ] {
        if value < Decimal::ZERO {
            return Err(RatingError::NegativeQuantity { field, value });
        }
    }
    let invalid = |field: &str, message: &str| RatingError::InvalidPrice {
        field: field.into(),
        message: message.into(),
    };
    if input
        .discounts
        .percentage
        .is_some_and(|p| p < Decimal::ZERO || p > Decimal::ONE_HUNDRED)
    {
        return Err(invalid("discounts.percentage", "must be between 0 and 100"));
    }
    if input.discounts.usage.is_some_and(|q| q < Decimal::ZERO) {
        return Err(invalid("discounts.usage", "must not be negative"));
    }
    match input.price {
        Price::Package {
            quantity_per_package,
            ..
        } if *quantity_per_package <= Decimal::ZERO => {
            Err(invalid("quantityPerPackage", "must be greater than 0"))
        }
        Price::Tiered { tiers, .. } if tiers.is_empty() => {
            Err(invalid("tiers", "a tiered price needs at least one tier"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
