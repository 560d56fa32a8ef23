//! The seam between subscriptions and invoicing: what invoicing needs to know of a subscription
//! ([`SubscriptionView`]: customer, currency, billing anchor and cadence, items with their rate
//! cards and when each is active), where it gets them ([`Subscriptions`]), and the pure step that
//! turns a subscription into gathering-invoice lines, one per item and billing period
//! ([`lines_for`]), prorating flat prices on partial periods (reference §3.11). Lines carry a
//! stable identity (`{subscription}/{phase}/{item}/v[0]/period[n]`), so generating them again
//! adds nothing.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use serde_json::json;

use super::model::{Line, LineRateCard, Period, Totals};
use crate::catalog::model::{PriceDoc, RateCard};
use crate::entitlement::Interval;
use crate::pricing::Currency;
use crate::store::{Store, StoreError};

/// One item of a subscription: a rate card active over `[active_from, active_to)`.
#[derive(Debug, Clone)]
pub struct SubscriptionItem {
    /// The phase it belongs to.
    pub phase_key: String,
    /// The rate card (its key is the item key).
    pub rate_card: RateCard,
    /// Active from.
    pub active_from: DateTime<Utc>,
    /// Active until (exclusive); `None` while open-ended.
    pub active_to: Option<DateTime<Utc>>,
}

/// What invoicing needs of a subscription.
#[derive(Debug, Clone)]
pub struct SubscriptionView {
    /// Subscription id.
    pub id: String,
    /// Customer id.
    pub customer_id: String,
    /// Currency (ISO 4217).
    pub currency: String,
    /// Start of the first billing period.
    pub billing_anchor: DateTime<Utc>,
    /// Billing cadence (ISO 8601, e.g. `P1M`); a rate card's own cadence wins for its item.
    pub cadence: String,
    /// Flat prices prorated on partial periods.
    pub pro_rating: bool,
    /// Items.
    pub items: Vec<SubscriptionItem>,
}

/// Where invoicing reads subscriptions from.
pub trait Subscriptions: Send + Sync {
    /// The subscriptions with an item active at some time in `[from, to)`.
    fn active<'a>(
        &'a self,
        store: &'a Store,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Vec<SubscriptionView>, StoreError>>;
}

/// No subscriptions (until the subscription module provides them).
pub struct NoSubscriptions;

impl Subscriptions for NoSubscriptions {
    fn active<'a>(
        &'a self,
        _: &'a Store,
        _: DateTime<Utc>,
        _: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Vec<SubscriptionView>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// The gathering lines of `sub` for every billing period that starts before `until`, each item's
/// service period being its billing period cut to when the item is active. Flat prices are
/// prorated by exact time on a cut period when `pro_rating` is on (a zero result drops the line).
pub fn lines_for(
    sub: &SubscriptionView,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<Line>, String> {
    let currency = Currency::from_code(&sub.currency).map_err(|e| format!("currency: {e}"))?;
    let mut out = Vec::new();
    for item in &sub.items {
        let card = &item.rate_card;
        let Some(price) = &card.price else {
            continue; // free: nothing to invoice
        };
        let cadence = card.billing_cadence.as_deref().unwrap_or(&sub.cadence);
        let interval = Interval::parse(cadence).map_err(|e| format!("billingCadence: {e}"))?;
        let mut n = 0i64;
        loop {
            let (from, to) = (
                interval.step(sub.billing_anchor, n),
                interval.step(sub.billing_anchor, n + 1),
            );
            if from >= until || item.active_to.is_some_and(|t| from >= t) {
                break;
            }
            n += 1;
            let service = Period {
                from: from.max(item.active_from),
                to: item.active_to.map_or(to, |t| to.min(t)),
            };
            if service.from >= service.to {
                continue;
            }
            let mut price = price.clone();
            if let PriceDoc::Flat { amount, .. } = &mut price
                && sub.pro_rating
                && (service.from, service.to) != (from, to)
            {
                let part = Decimal::from((service.to - service.from).num_milliseconds());
                let whole = Decimal::from((to - from).num_milliseconds());
                *amount = currency.round(*amount * part / whole);
                if amount.is_zero() {
                    continue;
                }
            }
            let in_advance = matches!(&price, PriceDoc::Flat { payment_term, .. } if payment_term == "in_advance");
            let invoice_at = if in_advance {
                service.from
            } else {
                service.to.max(to)
            };
            let reference = format!(
                "{}/{}/{}/v[0]/period[{}]",
                sub.id,
                item.phase_key,
                card.key,
                n - 1
            );
            out.push(Line {
                id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, reference.as_bytes())
                    .simple()
                    .to_string(),
                name: card.name.clone(),
                description: card.description.clone(),
                metadata: None,
                created_at: now,
                updated_at: now,
                deleted_at: None,
                managed_by: "subscription".into(),
                status: "valid".into(),
                kind: "usage_based".into(),
                currency: sub.currency.clone(),
                period: service,
                invoice_at,
                invoice: None,
                rate_card: LineRateCard {
                    feature_key: card.feature_key.clone(),
                    price: Some(price.clone()),
                    discounts: card.discounts.clone(),
                    tax_config: None,
                },
                feature_key: card.feature_key.clone(),
                price: Some(price),
                quantity: None,
                metered_quantity: None,
                pre_line_period_quantity: None,
                metered_pre_line_period_quantity: None,
                totals: Totals::default(),
                children: Vec::new(),
                discounts: Default::default(),
                subscription: Some(json!({
                    "subscription": {"id": sub.id},
                    "phase": {"id": item.phase_key},
                    "item": {"id": card.key},
                    "billingPeriod": {"from": from, "to": to},
                })),
                split_line_group: None,
                child_unique_reference_id: Some(reference),
                external_ids: None,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::catalog::model::RateCardType;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn card(key: &str, price: serde_json::Value) -> RateCard {
        RateCard {
            kind: RateCardType::FlatFee,
            key: key.into(),
            name: key.into(),
            description: None,
            metadata: None,
            feature_key: None,
            entitlement_template: None,
            tax_config: None,
            billing_cadence: Some("P1M".into()),
            price: Some(serde_json::from_value(price).unwrap()),
            discounts: None,
        }
    }

    #[test]
    fn a_cancelled_item_is_prorated_by_exact_time_and_lines_are_stable() {
        let sub = SubscriptionView {
            id: "s1".into(),
            customer_id: "c1".into(),
            currency: "USD".into(),
            billing_anchor: t("2026-01-01T00:00:00Z"),
            cadence: "P1M".into(),
            pro_rating: true,
            items: vec![SubscriptionItem {
                phase_key: "default".into(),
                rate_card: card(
                    "base",
                    json!({"type": "flat", "amount": "31", "paymentTerm": "in_advance"}),
                ),
                active_from: t("2026-01-01T00:00:00Z"),
                // Cancelled after 10 of January's 31 days, then February's line is not made.
                active_to: Some(t("2026-01-11T00:00:00Z")),
            }],
        };
        let lines = lines_for(&sub, t("2026-03-01T00:00:00Z"), t("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(lines.len(), 1);
        match &lines[0].rate_card.price {
            // 31 × 10/31 = 10.00
            Some(PriceDoc::Flat { amount, .. }) => assert_eq!(*amount, Decimal::from(10)),
            other => panic!("{other:?}"),
        }
        assert_eq!(lines[0].invoice_at, t("2026-01-01T00:00:00Z"));
        assert_eq!(
            lines[0].child_unique_reference_id.as_deref(),
            Some("s1/default/base/v[0]/period[0]")
        );
        let again = lines_for(&sub, t("2026-03-01T00:00:00Z"), t("2026-02-01T00:00:00Z")).unwrap();
        assert_eq!(again[0].id, lines[0].id);
    }

    #[test]
    fn usage_lines_are_invoiced_at_the_period_end_one_per_period() {
        let mut c = card("api", json!({"type": "unit", "amount": "0.01"}));
        c.kind = RateCardType::UsageBased;
        c.feature_key = Some("api".into());
        let sub = SubscriptionView {
            id: "s1".into(),
            customer_id: "c1".into(),
            currency: "USD".into(),
            billing_anchor: t("2026-01-15T00:00:00Z"),
            cadence: "P1M".into(),
            pro_rating: true,
            items: vec![SubscriptionItem {
                phase_key: "default".into(),
                rate_card: c,
                active_from: t("2026-01-15T00:00:00Z"),
                active_to: None,
            }],
        };
        let lines = lines_for(&sub, t("2026-02-16T00:00:00Z"), t("2026-01-15T00:00:00Z")).unwrap();
        let periods: Vec<_> = lines
            .iter()
            .map(|l| (l.period.from, l.invoice_at))
            .collect();
        assert_eq!(
            periods,
            [
                (t("2026-01-15T00:00:00Z"), t("2026-02-15T00:00:00Z")),
                (t("2026-02-15T00:00:00Z"), t("2026-03-15T00:00:00Z"))
            ]
        );
    }
}
