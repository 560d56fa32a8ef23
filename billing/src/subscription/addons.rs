//! OpenMeter's add-on merge rules (`subscription/addon/extend.go`): an add-on's rate card
//! overlays the subscription item with the same key, once per instance bought — flat amounts add
//! up, a metered template's `issueAfterReset` adds up, usage-discount quantities add up, a price
//! or template the item lacks is taken from the add-on, booleans stay booleans (access is
//! access). An add-on rate card with no item of its key becomes an item of its own. Quantities
//! multiply (a multi-instance add-on bought 3 times adds 3 × its amounts).

use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};

use crate::catalog::model::{DiscountsDoc, EntitlementTemplate, PriceDoc, RateCard, UsageDoc};

/// `card` as `quantity` instances: flat amounts, issued allowances and free units multiplied.
pub fn scaled(card: &RateCard, quantity: u32) -> RateCard {
    let q = Decimal::from(quantity);
    let mut out = card.clone();
    if let Some(PriceDoc::Flat { amount, .. }) = &mut out.price {
        *amount *= q;
    }
    if let Some(EntitlementTemplate::Metered {
        issue_after_reset: Some(issue),
        ..
    }) = &mut out.entitlement_template
    {
        *issue = mul_f64(*issue, q);
    }
    if let Some(DiscountsDoc {
        usage: Some(UsageDoc { quantity }),
        ..
    }) = &mut out.discounts
    {
        *quantity *= q;
    }
    out
}

/// `a × q` computed in decimal (allowances are counts: no float drift from repeated adds).
fn mul_f64(a: f64, q: Decimal) -> f64 {
    Decimal::from_f64(a)
        .map(|d| d * q)
        .and_then(|d| d.to_f64())
        .unwrap_or(a * q.to_f64().unwrap_or(0.0))
}

fn add_f64(a: f64, b: f64) -> f64 {
    match (Decimal::from_f64(a), Decimal::from_f64(b)) {
        (Some(x), Some(y)) => (x + y).to_f64().unwrap_or(a + b),
        _ => a + b,
    }
}

/// `base` extended by `quantity` instances of the add-on rate card `add` (same key).
pub fn extend(base: &mut RateCard, add: &RateCard, quantity: u32) {
    if quantity == 0 {
        return;
    }
    let add = scaled(add, quantity);
    match (&mut base.price, &add.price) {
        (Some(PriceDoc::Flat { amount, .. }), Some(PriceDoc::Flat { amount: more, .. })) => {
            *amount += *more;
        }
        (None, Some(p)) => base.price = Some(p.clone()),
        _ => {}
    }
    match (&mut base.entitlement_template, &add.entitlement_template) {
        (
            Some(EntitlementTemplate::Metered {
                issue_after_reset, ..
            }),
            Some(EntitlementTemplate::Metered {
                issue_after_reset: more,
                ..
            }),
        ) => {
            let sum = add_f64(issue_after_reset.unwrap_or(0.0), more.unwrap_or(0.0));
            *issue_after_reset = Some(sum);
        }
        (None, Some(t)) => base.entitlement_template = Some(t.clone()),
        _ => {}
    }
    if let Some(more) = add.discounts.as_ref().and_then(|d| d.usage.as_ref()) {
        let discounts = base.discounts.get_or_insert_with(DiscountsDoc::default);
        match &mut discounts.usage {
            Some(u) => u.quantity += more.quantity,
            None => discounts.usage = Some(more.clone()),
        }
    }
    if base.feature_key.is_none() {
        base.feature_key = add.feature_key.clone();
    }
}

/// Subtracts `quantity` instances of `add` from `base` (OpenMeter's restore of a quantity
/// decrease): an error names what would go negative.
pub fn restore(base: &mut RateCard, add: &RateCard, quantity: u32) -> Result<(), String> {
    let add = scaled(add, quantity);
    if let (Some(PriceDoc::Flat { amount, .. }), Some(PriceDoc::Flat { amount: less, .. })) =
        (&mut base.price, &add.price)
    {
        if *amount < *less {
            return Err(format!(
                "rate card {}: removing the add-on would make its flat price negative",
                base.key
            ));
        }
        *amount -= *less;
    }
    if let (
        Some(EntitlementTemplate::Metered {
            issue_after_reset: Some(issue),
            ..
        }),
        Some(EntitlementTemplate::Metered {
            issue_after_reset: Some(less),
            ..
        }),
    ) = (&mut base.entitlement_template, &add.entitlement_template)
    {
        if *issue < *less {
            return Err(format!(
                "rate card {}: removing the add-on would make issueAfterReset negative",
                base.key
            ));
        }
        *issue = add_f64(*issue, -*less);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn card(v: serde_json::Value) -> RateCard {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn amounts_and_allowances_add_up_per_instance() {
        let mut base = card(
            json!({"type": "flat_fee", "key": "api_calls", "name": "API",
            "featureKey": "api_calls", "billingCadence": "P1M",
            "price": {"type": "flat", "amount": "10"},
            "entitlementTemplate": {"type": "metered", "issueAfterReset": 1000}}),
        );
        let add = card(
            json!({"type": "flat_fee", "key": "api_calls", "name": "More API",
            "featureKey": "api_calls", "billingCadence": "P1M",
            "price": {"type": "flat", "amount": "2.50"},
            "entitlementTemplate": {"type": "metered", "issueAfterReset": 500},
            "discounts": {"usage": {"quantity": "10"}}}),
        );
        extend(&mut base, &add, 3);
        match &base.price {
            Some(PriceDoc::Flat { amount, .. }) => assert_eq!(*amount, Decimal::new(1750, 2)),
            other => panic!("{other:?}"),
        }
        match &base.entitlement_template {
            Some(EntitlementTemplate::Metered {
                issue_after_reset, ..
            }) => {
                assert_eq!(*issue_after_reset, Some(2500.0))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            base.discounts
                .as_ref()
                .unwrap()
                .usage
                .as_ref()
                .unwrap()
                .quantity,
            Decimal::from(30)
        );
        restore(&mut base, &add, 3).unwrap();
        match &base.entitlement_template {
            Some(EntitlementTemplate::Metered {
                issue_after_reset, ..
            }) => {
                assert_eq!(*issue_after_reset, Some(1000.0))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            restore(&mut base, &add, 10).is_err(),
            "nothing goes negative"
        );
    }

    #[test]
    fn what_the_item_lacks_comes_from_the_add_on_and_booleans_merge() {
        let mut free = card(json!({"type": "flat_fee", "key": "sso", "name": "SSO",
            "featureKey": "sso", "billingCadence": null, "price": null}));
        let add = card(json!({"type": "flat_fee", "key": "sso", "name": "SSO",
            "featureKey": "sso", "billingCadence": "P1M", "price": {"type": "flat", "amount": "5"},
            "entitlementTemplate": {"type": "boolean"}}));
        extend(&mut free, &add, 2);
        assert!(
            matches!(free.price, Some(PriceDoc::Flat { amount, .. }) if amount == Decimal::from(10))
        );
        assert!(matches!(
            free.entitlement_template,
            Some(EntitlementTemplate::Boolean { .. })
        ));
        let before = serde_json::to_value(&free).unwrap();
        extend(&mut free, &add, 0);
        assert_eq!(
            serde_json::to_value(&free).unwrap(),
            before,
            "zero instances change nothing"
        );
    }
}
