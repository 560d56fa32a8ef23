//! The rules for offering an add-on with a plan (OpenMeter's `PlanAddon.Validate`): the plan is
//! not archived, the add-on is active, `maxQuantity` only (and > 0) for multiple instances, the
//! same currency, the phase exists, cadences align, and where the add-on and the plan price the
//! same rate card key (from that phase on) the two can stack: both flat with one payment term, one
//! feature and cadence, entitlement templates of one type (never static; metered with one usage
//! period), and at most one percentage discount.

use chrono::{DateTime, Utc};

use super::model::{Addon, EntitlementTemplate, Plan, PriceDoc, RateCard, Status, ValidationIssue};
use super::versions::Versioned;

/// A critical finding.
pub fn issue(field: &str, code: &str, message: String) -> ValidationIssue {
    ValidationIssue {
        field: field.into(),
        code: code.into(),
        message,
        severity: Some("critical".into()),
    }
}

fn price_kind(card: &RateCard) -> &'static str {
    match &card.price {
        None => "free",
        Some(PriceDoc::Flat { .. }) => "flat",
        Some(_) => "usage",
    }
}

/// Every rule `addon` from phase `from_phase` with `max_quantity` breaks on `plan`; all critical.
pub fn check(
    plan: &Plan,
    addon: &Addon,
    from_phase: &str,
    max_quantity: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<ValidationIssue> {
    let mut out = Vec::new();
    if !matches!(
        plan.status_at(now),
        Status::Draft | Status::Active | Status::Scheduled
    ) {
        out.push(issue(
            "$.planId",
            "plan_addon_invalid_plan_status",
            format!(
                "plan {} is {}: add-ons go on draft, active or scheduled plans",
                plan.id,
                plan.status_at(now).as_str()
            ),
        ));
    }
    if addon.status_at(now) != Status::Active || addon.effective_to.is_some() {
        out.push(issue(
            "$.addonId",
            "plan_addon_invalid_addon_status",
            format!(
                "add-on {} is {}: only a published (active) add-on can be offered",
                addon.id,
                addon.status_at(now).as_str()
            ),
        ));
    }
    match (addon.instance_type.as_str(), max_quantity) {
        ("single", Some(_)) => out.push(issue(
            "$.maxQuantity",
            "plan_addon_max_quantity_must_not_be_set",
            "maxQuantity is only for multiple-instance add-ons".into(),
        )),
        ("multiple", Some(q)) if q <= 0 => out.push(issue(
            "$.maxQuantity",
            "plan_addon_max_quantity_must_be_positive",
            format!("maxQuantity must be greater than 0, got {q}"),
        )),
        _ => {}
    }
    if addon.currency != plan.currency {
        out.push(issue(
            "$.addonId",
            "plan_addon_currency_mismatch",
            format!(
                "add-on currency {} differs from the plan's {}",
                addon.currency, plan.currency
            ),
        ));
    }
    let Some(start) = plan.phases.iter().position(|p| p.key == from_phase) else {
        out.push(issue(
            "$.fromPlanPhase",
            "plan_addon_unknown_plan_phase_key",
            format!("plan {} has no phase {from_phase:?}", plan.id),
        ));
        return out;
    };
    let plan_cadence = crate::entitlement::Interval::parse(&plan.billing_cadence).ok();
    for card in &addon.rate_cards {
        let field = format!("$.addon.rateCards[?(@.key=='{}')]", card.key);
        if let (Some(c), Some(p)) = (
            card.billing_cadence
                .as_deref()
                .and_then(|c| crate::entitlement::Interval::parse(c).ok()),
            plan_cadence,
        ) {
            let months = |i| match i {
                crate::entitlement::Interval::Months(m) => Some(m),
                _ => None,
            };
            let ok = match (months(c), months(p)) {
                (Some(a), Some(b)) => a % b == 0 || b % a == 0,
                (None, None) => true,
                _ => false,
            };
            if !ok {
                out.push(issue(
                    &format!("{field}.billingCadence"),
                    "plan_billing_cadence_not_compatible",
                    format!(
                        "rate card cadence {} does not align with the plan's {}",
                        card.billing_cadence.as_deref().unwrap_or(""),
                        plan.billing_cadence
                    ),
                ));
            }
        }
        for phase in &plan.phases[start..] {
            let Some(theirs) = phase.rate_cards.iter().find(|c| c.key == card.key) else {
                continue;
            };
            let mut refuse = |code: &str, why: &str| {
                out.push(issue(
                    &field,
                    code,
                    format!(
                        "rate card {} overlaps phase {}'s: {why}",
                        card.key, phase.key
                    ),
                ))
            };
            if price_kind(card) != "flat" || price_kind(theirs) != "flat" {
                refuse(
                    "rate_card_only_flat_price_allowed",
                    "both prices must be flat",
                );
            } else if let (
                Some(PriceDoc::Flat {
                    payment_term: a, ..
                }),
                Some(PriceDoc::Flat {
                    payment_term: b, ..
                }),
            ) = (&card.price, &theirs.price)
                && a != b
            {
                refuse(
                    "rate_card_price_payment_term_mismatch",
                    "both flat prices need the same paymentTerm",
                );
            }
            if card.feature_key != theirs.feature_key
                || card.billing_cadence != theirs.billing_cadence
            {
                refuse(
                    "rate_card_feature_or_cadence_mismatch",
                    "featureKey and billingCadence must be equal",
                );
            }
            match (&card.entitlement_template, &theirs.entitlement_template) {
                (Some(EntitlementTemplate::Static { .. }), _)
                | (_, Some(EntitlementTemplate::Static { .. })) => {
                    refuse(
                        "rate_card_static_entitlement_not_allowed",
                        "static entitlements cannot stack",
                    );
                }
                (
                    Some(EntitlementTemplate::Metered {
                        usage_period: a, ..
                    }),
                    Some(EntitlementTemplate::Metered {
                        usage_period: b, ..
                    }),
                ) if a != b => {
                    refuse(
                        "rate_card_entitlement_usage_period_mismatch",
                        "metered entitlements need the same usagePeriod",
                    );
                }
                (Some(a), Some(b)) if std::mem::discriminant(a) != std::mem::discriminant(b) => {
                    refuse(
                        "rate_card_entitlement_type_mismatch",
                        "entitlement templates must be of the same type",
                    );
                }
                _ => {}
            }
            let pct = |c: &RateCard| c.discounts.as_ref().is_some_and(|d| d.percentage.is_some());
            if pct(card) && pct(theirs) {
                refuse(
                    "rate_card_percentage_discount_not_allowed",
                    "only one of them may have a percentage discount",
                );
            }
        }
    }
    out
}
