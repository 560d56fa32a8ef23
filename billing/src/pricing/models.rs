//! The pricers: one function per price model turning a quantity range of the period into detailed
//! lines before any discount (OpenMeter's `rating/service/rate`). Every line amount is rounded to
//! the currency here, and nowhere else.
//!
//! Quantities are the period's running totals: this line covers `(from, to]`, where `from` is the
//! usage earlier in the period and `to = from + quantity`.

use rust_decimal::Decimal;

use super::line::{DetailedLine, LineKind};
use super::money::Currency;
use super::price::{PaymentTerm, Tier};

/// Collects detailed lines, rounding each amount as it is added.
pub(super) struct Lines {
    pub(super) currency: Currency,
    pub(super) out: Vec<DetailedLine>,
}

impl Lines {
    pub(super) fn push(
        &mut self,
        kind: LineKind,
        quantity: Decimal,
        per_unit_amount: Decimal,
        term: PaymentTerm,
    ) {
        self.out.push(DetailedLine {
            kind,
            quantity,
            per_unit_amount,
            amount: self.currency.round(quantity * per_unit_amount),
            discounts: Vec::new(),
            payment_term: term,
        });
    }

    fn usage(&mut self, kind: LineKind, quantity: Decimal, per_unit_amount: Decimal) {
        self.push(kind, quantity, per_unit_amount, PaymentTerm::InArrears);
    }
}

/// Where this line sits in its billing period.
#[derive(Debug, Clone, Copy)]
pub(super) struct Position {
    pub(super) first: bool,
    pub(super) last: bool,
}

/// A flat price bills once per period: in advance on the period's first line, in arrears on its
/// last.
pub(super) fn flat(lines: &mut Lines, amount: Decimal, term: PaymentTerm, at: Position) {
    let due = match term {
        PaymentTerm::InAdvance => at.first,
        PaymentTerm::InArrears => at.last,
    };
    if due {
        lines.push(LineKind::Flat, Decimal::ONE, amount, term);
    }
}

/// A unit price: `quantity × amount`, no line for no usage.
pub(super) fn unit(lines: &mut Lines, amount: Decimal, quantity: Decimal) {
    if quantity > Decimal::ZERO {
        lines.usage(LineKind::Unit, quantity, amount);
    }
}

/// A graduated price: the units of `(from, to]` are priced by the tier each falls in. Every tier
/// the range touches gets a usage line (even at unit price 0); a tier's flat price bills when the
/// range starts at or below the tier's start — the first tier's only on the period's first line.
/// No usage at all still bills the first tier's flat price.
pub(super) fn graduated(
    lines: &mut Lines,
    tiers: &[Tier],
    from: Decimal,
    to: Decimal,
    first: bool,
) {
    if to.is_zero() {
        if let Some(tier) = tiers.first() {
            if let Some(unit) = tier.unit {
                lines.usage(LineKind::TierUsage(0), Decimal::ZERO, unit);
            }
            if let (Some(flat), true) = (tier.flat, first) {
                lines.usage(LineKind::TierFlat(0), Decimal::ONE, flat);
            }
        }
        return;
    }
    let mut lower = Decimal::ZERO;
    for (i, tier) in tiers.iter().enumerate() {
        if lower >= to {
            break;
        }
        let start = lower.max(from);
        let end = tier.up_to.map_or(to, |upper| upper.min(to));
        if end > start {
            if let Some(unit) = tier.unit {
                lines.usage(LineKind::TierUsage(i), end - start, unit);
            }
            let enters_tier = from <= lower;
            if let (Some(flat), true) = (tier.flat, enters_tier && (i > 0 || first)) {
                lines.usage(LineKind::TierFlat(i), Decimal::ONE, flat);
            }
        }
        match tier.up_to {
            Some(upper) => lower = upper,
            None => break,
        }
    }
}

/// A volume price: on the period's last line, the whole period's quantity is priced by the one
/// tier it reaches (`quantity <= upToAmount`, else the open-ended tier). The tier's flat price
/// bills even at no usage; its unit price only on usage.
pub(super) fn volume(lines: &mut Lines, tiers: &[Tier], period_quantity: Decimal) {
    let reached = tiers
        .iter()
        .enumerate()
        .find(|(_, t)| t.up_to.is_none_or(|upper| period_quantity <= upper))
        .or_else(|| tiers.iter().enumerate().next_back());
    let Some((i, tier)) = reached else { return };
    if let (Some(unit), false) = (tier.unit, period_quantity.is_zero()) {
        lines.usage(LineKind::VolumeUsage(i), period_quantity, unit);
    }
    if let Some(flat) = tier.flat {
        lines.usage(LineKind::VolumeFlat(i), Decimal::ONE, flat);
    }
}

/// A package price: whole packages started within `(from, to]`, any part of a package counting
/// as a whole one.
pub(super) fn package(
    lines: &mut Lines,
    amount: Decimal,
    size: Decimal,
    from: Decimal,
    to: Decimal,
) {
    let packages = |q: Decimal| (q / size).ceil();
    let started = packages(to) - packages(from);
    if started > Decimal::ZERO {
        lines.usage(LineKind::Package, started, amount);
    }
}

/// A dynamic price: the metered quantity is a cost; one line of quantity 1 bills
/// `round(quantity × multiplier)`.
pub(super) fn dynamic(lines: &mut Lines, multiplier: Decimal, quantity: Decimal) {
    if quantity > Decimal::ZERO {
        let cost = lines.currency.round(quantity * multiplier);
        lines.usage(LineKind::Dynamic, Decimal::ONE, cost);
    }
}
