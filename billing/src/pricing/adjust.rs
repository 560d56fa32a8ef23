//! Discounts and commitments, applied around the pricers in OpenMeter's order
//! (`rating/service/pricer.go`, `mutator/*`): the usage discount shrinks the quantity before
//! pricing; after it come the percentage discount, the maximum spend and the minimum spend.

use rust_decimal::Decimal;

use super::line::{DetailedLine, DiscountReason, LineDiscount, LineKind, UsageDiscountApplied};
use super::models::Lines;
use super::price::PaymentTerm;

/// The usage after free units: returns `(pre_period_quantity, quantity, applied)`. Free units
/// are used up by the period's earlier usage first; what remains comes off this line.
pub(super) fn usage_discount(
    free: Option<Decimal>,
    pre_period_quantity: Decimal,
    quantity: Decimal,
) -> (Decimal, Decimal, Option<UsageDiscountApplied>) {
    let Some(free) = free else {
        return (pre_period_quantity, quantity, None);
    };
    let used_before = free.min(pre_period_quantity);
    let used_now = (free - used_before).min(quantity);
    let applied = (!used_now.is_zero()).then_some(UsageDiscountApplied {
        quantity: used_now,
        pre_period_quantity: used_before,
    });
    (
        pre_period_quantity - used_before,
        quantity - used_now,
        applied,
    )
}

/// Takes `percent` off every line: `round(percent / 100 × line amount)` each.
pub(super) fn percentage(lines: &mut Lines, percent: Decimal) {
    let currency = lines.currency;
    let fraction = percent / Decimal::ONE_HUNDRED;
    for line in &mut lines.out {
        let amount = currency.round(line.total() * fraction);
        add_discount(line, DiscountReason::Percentage, amount);
    }
}

/// Caps the period at `maximum`: line by line, whatever would take the period's billed amount
/// (earlier lines included) above it is discounted as `maximum_spend`.
pub(super) fn maximum_spend(lines: &mut Lines, maximum: Decimal, previously_billed: Decimal) {
    let maximum = lines.currency.round(maximum);
    let mut billed = lines.currency.round(previously_billed);
    for line in &mut lines.out {
        let total = line.total();
        let excess = if billed >= maximum {
            total
        } else {
            (billed + total - maximum).max(Decimal::ZERO)
        };
        add_discount(line, DiscountReason::MaximumSpend, excess);
        billed += line.total();
    }
}

/// On the period's last line only: if the period (earlier lines included) billed less than
/// `minimum`, adds a `commitment` line for the difference.
pub(super) fn minimum_spend(lines: &mut Lines, minimum: Decimal, previously_billed: Decimal) {
    let billed = lines.out.iter().map(DetailedLine::total).sum::<Decimal>() + previously_billed;
    if billed < minimum {
        let top_up = lines.currency.round(minimum - billed);
        lines.push(
            LineKind::MinimumSpend,
            Decimal::ONE,
            top_up,
            PaymentTerm::InArrears,
        );
    }
}

fn add_discount(line: &mut DetailedLine, reason: DiscountReason, amount: Decimal) {
    if amount > Decimal::ZERO {
        line.discounts.push(LineDiscount { reason, amount });
    }
}
