//! Rates an invoice line with the catalog's pricing engine ([`crate::pricing`]) and writes the
//! result in OpenMeter's shape: detailed lines (one per charge, with their discounts), the usage
//! discount, quantities and totals that add up. No arithmetic on money happens here beyond
//! summing what the engine rounded.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;

use super::model::{
    AmountDiscount, DetailedLine, Line, LineDiscounts, Period, Totals, UsageDiscount,
};
use crate::catalog::model::{RateCard, RateCardType, pricing_of};
use crate::pricing::{self, Category, Currency, DiscountReason, PaymentTerm, RatingInput};

/// What a line is rated with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantities {
    /// Metered usage in the line's period.
    pub metered: Decimal,
    /// Metered usage in its split group before the line.
    pub metered_pre: Decimal,
}

/// A stable id for a detailed line: the same parent and reference always give the same id.
pub fn child_id(parent: &str, reference: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{parent}/{reference}").as_bytes(),
    )
    .simple()
    .to_string()
}

/// The line's price in the engine's terms (`None`: free).
pub fn engine_price(
    line: &Line,
) -> Result<Option<(pricing::Price, pricing::Discounts, pricing::Commitments)>, String> {
    let card = RateCard {
        kind: if line.is_flat() {
            RateCardType::FlatFee
        } else {
            RateCardType::UsageBased
        },
        key: line.rate_card.feature_key.clone().unwrap_or_default(),
        name: line.name.clone(),
        description: None,
        metadata: None,
        feature_key: line.rate_card.feature_key.clone(),
        entitlement_template: None,
        tax_config: None,
        billing_cadence: None,
        price: line.rate_card.price.clone(),
        discounts: line.rate_card.discounts.clone(),
    };
    pricing_of(&card).map_err(|problems| {
        problems
            .iter()
            .map(|p| format!("rateCard.price.{}: {}", p.field, p.message))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

fn term(t: PaymentTerm) -> &'static str {
    match t {
        PaymentTerm::InAdvance => "in_advance",
        PaymentTerm::InArrears => "in_arrears",
    }
}

/// Rates `line` in `currency` with `q`, replacing its detailed lines, discounts, quantities and
/// totals. Where the line sits in its split group (first/last) and what the group billed before
/// come from `line.split_line_group`.
pub fn rate_line(
    line: &mut Line,
    currency: Currency,
    q: Quantities,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let (first, last, previously_billed) = match &line.split_line_group {
        Some(g) => (
            g.period.from == line.period.from,
            g.period.to == line.period.to,
            g.previously_billed,
        ),
        None => (true, true, Decimal::ZERO),
    };
    line.children.clear();
    line.discounts = LineDiscounts::default();
    line.totals = Totals::default();
    let Some((price, discounts, commitments)) = engine_price(line)? else {
        // Free.
        line.quantity = Some(q.metered);
        line.metered_quantity = Some(q.metered);
        return Ok(());
    };
    let flat = price.is_flat();
    let (quantity, pre) = if flat {
        (Decimal::ONE, Decimal::ZERO)
    } else {
        (q.metered, q.metered_pre)
    };
    let rating = pricing::rate(&RatingInput {
        currency,
        price: &price,
        discounts: &discounts,
        commitments: &commitments,
        quantity,
        pre_period_quantity: pre,
        previously_billed,
        first_in_period: first,
        last_in_period: last,
    })
    .map_err(|e| e.to_string())?;

    let (used, used_pre) = match &rating.usage_discount {
        Some(u) => (u.quantity, u.pre_period_quantity),
        None => (Decimal::ZERO, Decimal::ZERO),
    };
    if !flat {
        line.metered_quantity = Some(quantity.normalize());
        line.metered_pre_line_period_quantity = Some(pre.normalize());
        line.quantity = Some((quantity - used).normalize());
        line.pre_line_period_quantity = Some((pre - used_pre).max(Decimal::ZERO).normalize());
    } else {
        line.quantity = Some(Decimal::ONE);
        line.metered_quantity = Some(Decimal::ONE);
    }
    if let Some(u) = &rating.usage_discount
        && !u.quantity.is_zero()
    {
        line.discounts.usage.push(UsageDiscount {
            id: child_id(&line.id, "usage-discount"),
            reason: "ratecard_usage".into(),
            quantity: u.quantity,
            pre_line_period_quantity: Some(u.pre_period_quantity),
        });
    }

    for d in &rating.lines {
        let reference = d.kind.child_reference();
        let id = child_id(&line.id, &reference);
        let category = d.kind.category();
        let mut totals = Totals::default();
        match category {
            Category::Regular => totals.amount = d.amount,
            Category::Commitment => totals.charges_total = d.amount,
        }
        let mut amount_discounts = Vec::new();
        for (i, disc) in d.discounts.iter().enumerate() {
            let reason = match disc.reason {
                DiscountReason::Percentage => "ratecard_percentage",
                DiscountReason::MaximumSpend => "maximum_spend",
            };
            amount_discounts.push(AmountDiscount {
                id: child_id(&id, &format!("{reason}/{i}")),
                reason: reason.into(),
                amount: disc.amount.normalize(),
                description: None,
            });
            totals.discounts_total += disc.amount;
        }
        totals.total = totals.amount + totals.charges_total - totals.discounts_total;
        let totals = totals.normalized();
        // A minimum-spend line covers the whole service period (OpenMeter).
        let period = match (&line.split_line_group, d.kind) {
            (Some(g), pricing::LineKind::MinimumSpend) => g.period,
            _ => line.period,
        };
        let invoice_at = match d.payment_term {
            PaymentTerm::InAdvance => line.period.from,
            PaymentTerm::InArrears => line.invoice_at,
        };
        line.totals.add(&totals);
        line.children.push(DetailedLine {
            id,
            name: format!("{}: {}", line.name, d.kind.label()),
            kind: "flat_fee".into(),
            status: "valid".into(),
            managed_by: "system".into(),
            category: match category {
                Category::Regular => "regular".into(),
                Category::Commitment => "commitment".into(),
            },
            child_unique_reference_id: reference,
            currency: line.currency.clone(),
            period: Period {
                from: period.from,
                to: period.to,
            },
            invoice_at,
            per_unit_amount: d.per_unit_amount.normalize(),
            quantity: d.quantity.normalize(),
            payment_term: term(d.payment_term).into(),
            rate_card: json!({
                "price": {"type": "flat", "amount": d.per_unit_amount, "paymentTerm": term(d.payment_term)},
                "quantity": d.quantity,
            }),
            totals,
            discounts: LineDiscounts {
                amount: amount_discounts,
                usage: Vec::new(),
            },
        });
    }
    line.totals = std::mem::take(&mut line.totals).normalized();
    line.updated_at = now;
    Ok(())
}
