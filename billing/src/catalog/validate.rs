//! Catalog validation as OpenMeter does it (`productcatalog/errors.go`): every finding names its
//! field by JSONPath (`$.phases[?(@.key=='trial')].rateCards[?(@.key=='api')].price`) and is
//! **critical** (the request is refused with 400) or a **warning** (saved on the draft in
//! `validationErrors`; publishing is refused until it is fixed).

use std::collections::BTreeMap;

use chrono::Duration;

use super::model::{
    Addon, EntitlementTemplate, Plan, PriceDoc, RateCard, RateCardType, ValidationIssue,
};
use crate::entitlement::Interval;
use crate::pricing::Currency;

/// The plan billing cadences OpenMeter accepts.
pub const PLAN_CADENCES: &[&str] = &["P1W", "P2W", "P4W", "P1M", "P3M", "P6M", "P12M", "P1Y"];

/// What validation needs to know about a feature, by key.
#[derive(Debug, Clone, Copy)]
pub struct FeatureFacts {
    /// Archived features cannot be priced.
    pub archived: bool,
    /// Usage-based prices need a metered feature.
    pub has_meter: bool,
}

/// Features by key (a live feature wins over archived ones of the same key).
pub type Features = BTreeMap<String, FeatureFacts>;

/// Findings of one validation run.
#[derive(Debug, Default)]
pub struct Findings {
    /// Refuse the request.
    pub critical: Vec<ValidationIssue>,
    /// Saved on the draft; block publish.
    pub warnings: Vec<ValidationIssue>,
}

impl Findings {
    fn critical(&mut self, field: impl Into<String>, code: &str, message: impl Into<String>) {
        self.critical.push(issue(field, code, message, "critical"));
    }

    fn warning(&mut self, field: impl Into<String>, code: &str, message: impl Into<String>) {
        self.warnings.push(issue(field, code, message, "warning"));
    }
}

fn issue(
    field: impl Into<String>,
    code: &str,
    message: impl Into<String>,
    severity: &str,
) -> ValidationIssue {
    ValidationIssue {
        field: field.into(),
        code: code.into(),
        message: message.into(),
        severity: Some(severity.into()),
    }
}

/// Whether `key` matches OpenMeter's `Key`: `^[a-z0-9]+(?:_[a-z0-9]+)*$`, 1..64 characters.
pub fn is_key(key: &str) -> bool {
    key.len() <= 64 && crate::meter::is_slug(key)
}

fn by_key(key: &str) -> String {
    format!("[?(@.key=='{key}')]")
}

fn check_key(f: &mut Findings, field: String, key: &str) {
    if key.is_empty() {
        f.critical(field, "resource_key_empty", "key must not be empty");
    } else if !is_key(key) {
        f.critical(
            field,
            "resource_key_invalid",
            format!("key {key:?} must match ^[a-z0-9]+(?:_[a-z0-9]+)*$ (at most 64 characters)"),
        );
    }
}

fn check_name(f: &mut Findings, field: String, name: &str) {
    if name.trim().is_empty() {
        f.critical(field, "resource_name_empty", "name must not be empty");
    } else if name.chars().count() > 256 {
        f.critical(
            field,
            "resource_name_too_long",
            "name must be at most 256 characters",
        );
    }
}

fn check_currency(f: &mut Findings, code: &str) {
    if let Err(e) = Currency::from_code(code) {
        let kind = match e {
            crate::pricing::CurrencyError::Invalid(_) => "currency_invalid",
            crate::pricing::CurrencyError::NotFound(_) => "currency_not_found",
        };
        f.critical("$.currency", kind, e.to_string());
    }
}

/// A parsed duration, or a critical finding.
fn duration(f: &mut Findings, field: &str, value: &str) -> Option<Interval> {
    match Interval::parse(value) {
        Ok(i) if value.starts_with('P') => Some(i),
        Ok(_) => {
            f.critical(
                field,
                "duration_invalid",
                format!("{value:?} is not an ISO 8601 duration"),
            );
            None
        }
        Err(e) if e.contains("shortest") => {
            f.warning(
                field,
                "billing_cadence_invalid_value",
                format!("{value:?} is shorter than one hour"),
            );
            None
        }
        Err(_) => {
            f.critical(
                field,
                "duration_invalid",
                format!("{value:?} is not an ISO 8601 duration like P1M"),
            );
            None
        }
    }
}

/// Whether two cadences divide one another (both in months or both of fixed length).
fn aligned(a: Interval, b: Interval) -> bool {
    match (a, b) {
        (Interval::Months(x), Interval::Months(y)) => x % y == 0 || y % x == 0,
        (Interval::Fixed(x), Interval::Fixed(y)) => {
            let (x, y) = (x.num_seconds(), y.num_seconds());
            x > 0 && y > 0 && (x % y == 0 || y % x == 0)
        }
        _ => false,
    }
}

/// Validates a plan (create or update) against the features that exist.
pub fn validate_plan(plan: &Plan, features: &Features) -> Findings {
    let mut f = Findings::default();
    check_key(&mut f, "$.key".into(), &plan.key);
    check_name(&mut f, "$.name".into(), &plan.name);
    check_currency(&mut f, &plan.currency);
    let plan_cadence = if PLAN_CADENCES.contains(&plan.billing_cadence.as_str()) {
        Interval::parse(&plan.billing_cadence).ok()
    } else {
        f.critical(
            "$.billingCadence",
            "plan_billing_cadence_invalid",
            format!(
                "billingCadence {:?} must be one of {}",
                plan.billing_cadence,
                PLAN_CADENCES.join(", ")
            ),
        );
        None
    };
    if !matches!(
        plan.settlement_mode.as_str(),
        "credit_then_invoice" | "credit_only"
    ) {
        f.critical(
            "$.settlementMode",
            "plan_settlement_mode_invalid",
            "settlementMode must be credit_then_invoice or credit_only",
        );
    }
    if plan.phases.is_empty() {
        f.warning(
            "$.phases",
            "plan_with_no_phases",
            "a plan needs at least one phase",
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, phase) in plan.phases.iter().enumerate() {
        let path = format!("$.phases{}", by_key(&phase.key));
        check_key(&mut f, format!("{path}.key"), &phase.key);
        check_name(&mut f, format!("{path}.name"), &phase.name);
        if !seen.insert(phase.key.as_str()) {
            f.critical(
                &path,
                "plan_phase_duplicated_key",
                format!("phase key {:?} is used more than once", phase.key),
            );
        }
        let last = i + 1 == plan.phases.len();
        match (&phase.duration, last) {
            (None, false) => f.warning(
                format!("{path}.duration"),
                "plan_has_non_last_phase_with_no_duration",
                "every phase but the last needs a duration",
            ),
            (Some(_), true) => f.warning(
                format!("{path}.duration"),
                "plan_has_last_phase_with_duration",
                "the last phase must not have a duration",
            ),
            _ => {}
        }
        if let Some(d) = &phase.duration {
            duration(&mut f, &format!("{path}.duration"), d);
        }
        if phase.rate_cards.is_empty() {
            f.warning(
                &path,
                "plan_phase_has_no_rate_cards",
                "the phase has no rate cards",
            );
        }
        rate_cards(
            &mut f,
            &format!("{path}.rateCards"),
            &phase.rate_cards,
            plan_cadence,
            features,
        );
    }
    f
}

/// Validates an add-on (create or update).
pub fn validate_addon(addon: &Addon, features: &Features) -> Findings {
    let mut f = Findings::default();
    check_key(&mut f, "$.key".into(), &addon.key);
    check_name(&mut f, "$.name".into(), &addon.name);
    check_currency(&mut f, &addon.currency);
    if !matches!(addon.instance_type.as_str(), "single" | "multiple") {
        f.critical(
            "$.instanceType",
            "addon_instance_type_invalid",
            format!(
                "instanceType must be single or multiple, got {:?}",
                addon.instance_type
            ),
        );
    }
    rate_cards(&mut f, "$.rateCards", &addon.rate_cards, None, features);
    f
}

/// What blocks publishing an add-on beyond its warnings (OpenMeter's `Publishable`).
pub fn addon_publish_problems(addon: &Addon) -> Vec<ValidationIssue> {
    let mut f = Findings::default();
    if addon.rate_cards.is_empty() {
        f.critical(
            "$.rateCards",
            "addon_has_no_rate_cards",
            "an add-on needs at least one rate card",
        );
    }
    let cadences: std::collections::BTreeSet<Option<&str>> = addon
        .rate_cards
        .iter()
        .map(|c| c.billing_cadence.as_deref())
        .collect();
    if cadences.len() > 1 {
        f.critical(
            "$.rateCards",
            "rate_card_multiple_billing_cadence",
            "all of an add-on's rate cards must share one billing cadence",
        );
    }
    if addon.instance_type == "multiple" {
        for card in &addon.rate_cards {
            if !matches!(card.price, None | Some(PriceDoc::Flat { .. })) {
                f.critical(
                    format!("$.rateCards{}.price", by_key(&card.key)),
                    "addon_invalid_ratecard_price_for_multi_instance",
                    "a multiple-instance add-on may only have free or flat prices",
                );
            }
        }
    }
    f.critical
}

fn rate_cards(
    f: &mut Findings,
    base: &str,
    cards: &[RateCard],
    plan_cadence: Option<Interval>,
    features: &Features,
) {
    let mut seen = std::collections::BTreeSet::new();
    for card in cards {
        let path = format!("{base}{}", by_key(&card.key));
        if !seen.insert(card.key.as_str()) {
            f.critical(
                &path,
                "rate_card_duplicated_key",
                format!("rate card key {:?} is used more than once", card.key),
            );
        }
        rate_card(f, &path, card, plan_cadence, features);
    }
}

fn rate_card(
    f: &mut Findings,
    path: &str,
    card: &RateCard,
    plan_cadence: Option<Interval>,
    features: &Features,
) {
    check_key(f, format!("{path}.key"), &card.key);
    check_name(f, format!("{path}.name"), &card.name);

    // The feature.
    let feature = match &card.feature_key {
        Some(fk) => {
            if fk != &card.key {
                f.critical(
                    format!("{path}.featureKey"),
                    "rate_card_key_feature_key_mismatch",
                    format!(
                        "rate card key {:?} must equal its featureKey {fk:?}",
                        card.key
                    ),
                );
            }
            match features.get(fk) {
                None => {
                    f.critical(
                        format!("{path}.featureKey"),
                        "rate_card_feature_not_found",
                        format!("feature {fk:?} not found"),
                    );
                    None
                }
                Some(facts) if facts.archived => {
                    f.critical(
                        format!("{path}.featureKey"),
                        "rate_card_feature_archived",
                        format!("feature {fk:?} is archived"),
                    );
                    None
                }
                Some(facts) => Some(*facts),
            }
        }
        None => None,
    };

    // The cadence.
    let cadence = match (&card.billing_cadence, card.kind) {
        (None, RateCardType::UsageBased) => {
            f.critical(
                format!("{path}.billingCadence"),
                "rate_card_billing_cadence_required",
                "a usage_based rate card needs a billingCadence",
            );
            None
        }
        (None, RateCardType::FlatFee) => None,
        (Some(c), _) => duration(f, &format!("{path}.billingCadence"), c),
    };
    if let (Some(c), Some(p)) = (cadence, plan_cadence)
        && !aligned(c, p)
    {
        f.warning(
            format!("{path}.billingCadence"),
            "rate_card_billing_cadence_unaligned",
            "the rate card's billingCadence and the plan's must divide one another",
        );
    }

    // The price, its discounts and commitments.
    let price_path = format!("{path}.price");
    if card.kind == RateCardType::FlatFee
        && !matches!(card.price, None | Some(PriceDoc::Flat { .. }))
    {
        f.critical(
            &price_path,
            "rate_card_price_type_invalid",
            "a flat_fee rate card takes a flat price (or none)",
        );
    }
    if card
        .price
        .as_ref()
        .is_some_and(|p| !matches!(p, PriceDoc::Flat { .. }))
    {
        match feature {
            None if card.feature_key.is_none() => f.warning(
                &price_path,
                "usage_based_price_with_no_feature",
                "a usage-based price needs a feature to meter",
            ),
            Some(facts) if !facts.has_meter => f.warning(
                &price_path,
                "usage_based_price_with_feature_and_no_meter",
                "a usage-based price needs a feature with a meter",
            ),
            _ => {}
        }
    }
    let engine_price = match super::model::pricing_of(card) {
        Ok(p) => p,
        Err(problems) => {
            for p in problems {
                f.critical(format!("{price_path}.{}", p.field), p.code, p.message);
            }
            None
        }
    };
    let discounts = crate::pricing::Discounts {
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
    let price_kind = match (&engine_price, &card.price) {
        (Some((p, _, _)), _) => Some(p),
        (None, Some(PriceDoc::Flat { .. })) => Some(&SOME_FLAT_PRICE),
        (None, Some(_)) => Some(&SOME_USAGE_PRICE),
        (None, None) => None,
    };
    for p in discounts.problems(price_kind) {
        let field = format!("{path}.{}", p.field);
        match p.code {
            "usage_discount_with_flat_price" | "usage_discount_negative_quantity" => {
                f.warning(field, p.code, p.message)
            }
            _ => f.critical(field, p.code, p.message),
        }
    }

    // The entitlement template.
    if let Some(template) = &card.entitlement_template {
        let tpath = format!("{path}.entitlementTemplate");
        if card.feature_key.is_none() {
            f.warning(
                &tpath,
                "entitlement_template_with_no_feature",
                "an entitlement template needs a feature",
            );
        }
        match template {
            EntitlementTemplate::Metered {
                usage_period,
                issue_after_reset,
                issue_after_reset_priority,
                ..
            } => {
                match (usage_period, &card.billing_cadence) {
                    (Some(p), _) => {
                        if let Some(Interval::Fixed(d)) =
                            duration(f, &format!("{tpath}.usagePeriod"), p)
                            && d < Duration::hours(1)
                        {
                            f.warning(
                                format!("{tpath}.usagePeriod"),
                                "entitlement_template_usage_period_less_then_an_hour",
                                "usagePeriod must be at least one hour",
                            );
                        }
                    }
                    (None, None) => f.critical(
                        format!("{tpath}.usagePeriod"),
                        "entitlement_template_missing_usage_period",
                        "missing usagePeriod: cannot infer it from a null billingCadence",
                    ),
                    (None, Some(_)) => {}
                }
                match issue_after_reset {
                    None => f.warning(
                        format!("{tpath}.issueAfterReset"),
                        "entitlement_template_issue_after_reset_required",
                        "a metered entitlement template needs issueAfterReset",
                    ),
                    Some(v) if *v < 0.0 => f.critical(
                        format!("{tpath}.issueAfterReset"),
                        "entitlement_template_issue_after_reset_invalid",
                        "issueAfterReset must not be negative",
                    ),
                    Some(_) => {}
                }
                if issue_after_reset_priority.is_some_and(|p| !(1..=255).contains(&p)) {
                    f.critical(
                        format!("{tpath}.issueAfterResetPriority"),
                        "entitlement_template_priority_invalid",
                        "issueAfterResetPriority must be between 1 and 255",
                    );
                }
            }
            EntitlementTemplate::Static { config, .. } => {
                if serde_json::from_str::<serde_json::Value>(config).is_err() {
                    f.critical(
                        format!("{tpath}.config"),
                        "entitlement_template_invalid_json_config",
                        "config must be a JSON document in a string",
                    );
                }
            }
            EntitlementTemplate::Boolean { .. } => {}
        }
    }

    // Tax.
    if let Some(tax) = &card.tax_config {
        let tpath = format!("{path}.taxConfig");
        if tax
            .behavior
            .as_deref()
            .is_some_and(|b| !matches!(b, "inclusive" | "exclusive"))
        {
            f.critical(
                format!("{tpath}.behavior"),
                "tax_behavior_invalid",
                "behavior must be inclusive or exclusive",
            );
        }
        if let Some(code) = tax.stripe.as_ref().map(|s| s.code.as_str())
            && !(code.len() == 13
                && code.starts_with("txcd_")
                && code[5..].bytes().all(|b| b.is_ascii_digit()))
        {
            f.critical(
                format!("{tpath}.stripe.code"),
                "tax_stripe_code_invalid",
                format!("stripe.code {code:?} must match ^txcd_\\d{{8}}$"),
            );
        }
    }
}

/// Stand in for a price that is invalid, so the discount rules still see its kind.
static SOME_FLAT_PRICE: crate::pricing::Price = crate::pricing::Price::Flat {
    amount: rust_decimal::Decimal::ZERO,
    payment_term: crate::pricing::PaymentTerm::InAdvance,
};
static SOME_USAGE_PRICE: crate::pricing::Price = crate::pricing::Price::Unit {
    amount: rust_decimal::Decimal::ZERO,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn months(n: u32) -> Interval {
        Interval::Months(n)
    }

    #[test]
    fn cadences_align_when_one_divides_the_other() {
        assert!(aligned(months(1), months(12)));
        assert!(aligned(months(3), months(1)));
        assert!(!aligned(months(2), months(3)));
        let week = Interval::Fixed(Duration::weeks(1));
        assert!(aligned(week, Interval::Fixed(Duration::weeks(4))));
        assert!(!aligned(week, months(1)), "weeks and months never align");
    }

    #[test]
    fn keys_follow_openmeters_pattern() {
        assert!(is_key("api_calls") && is_key("p1"));
        assert!(!is_key("Api") && !is_key("a__b") && !is_key("_a") && !is_key(""));
        assert!(!is_key(&"a".repeat(65)));
    }

    #[test]
    fn durations_are_iso_8601_and_at_least_an_hour() {
        let mut f = Findings::default();
        assert_eq!(duration(&mut f, "$.d", "P1M"), Some(months(1)));
        assert!(duration(&mut f, "$.d", "MONTH").is_none());
        assert!(duration(&mut f, "$.d", "PT30M").is_none());
        let codes: Vec<&str> = f
            .critical
            .iter()
            .chain(&f.warnings)
            .map(|i| i.code.as_str())
            .collect();
        assert_eq!(codes, ["duration_invalid", "billing_cadence_invalid_value"]);
    }
}
