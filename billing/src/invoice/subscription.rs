//! The seam between subscriptions and invoicing: what invoicing needs to know of a subscription
//! ([`SubscriptionView`]: customer, currency, billing anchor and cadence, items with their rate
//! cards and when each is active), where it gets them ([`Subscriptions`]), and the pure step that
//! turns a subscription into gathering-invoice lines, one per item and billing period
//! ([`lines_for`]), prorating flat prices on partial periods (reference §3.11). Lines carry a
//! stable identity (`{subscription}/{phase}/{item}/v[0]/period[n]`), so generating them again
//! adds nothing. Add-ons bought on the subscription are billed as items of their own, one per
//! stretch of constant quantity ([`addon_items`]), by OpenMeter's merge rules (reference §2.5):
//! their flat prices add to the item's of the same key, a price the item lacks comes from the
//! add-on; their lines say which add-on they come from.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use serde_json::json;

use super::model::{Line, LineRateCard, Period, Totals};
use crate::catalog::model::{PriceDoc, RateCard};
use crate::entitlement::Interval;
use crate::pricing::Currency;
use crate::store::{Store, StoreError};
use crate::subscription::model::{Subscription, SubscriptionAddon};

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
    /// The add-on it comes from (`None`: the subscription's own item).
    pub addon: Option<AddonSource>,
}

/// Which add-on bought on the subscription an item comes from, and how many of it.
#[derive(Debug, Clone)]
pub struct AddonSource {
    /// The subscription add-on's id (the purchase).
    pub id: String,
    /// The add-on (catalog) id.
    pub addon_id: String,
    /// The add-on's key.
    pub key: String,
    /// The purchase's name.
    pub name: String,
    /// Instances over the item's window.
    pub quantity: u32,
    /// The stretch's index among this purchase's stretches of the rate card (its version).
    pub version: usize,
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
            let reference = match &item.addon {
                None => format!(
                    "{}/{}/{}/v[0]/period[{}]",
                    sub.id,
                    item.phase_key,
                    card.key,
                    n - 1
                ),
                Some(a) => format!(
                    "{}/{}/{}/addon[{}]/v[{}]/period[{}]",
                    sub.id,
                    item.phase_key,
                    card.key,
                    a.id,
                    a.version,
                    n - 1
                ),
            };
            let item_id = match &item.addon {
                None => card.key.clone(),
                Some(a) => format!("{}/{}", a.id, card.key),
            };
            let mut subscription = json!({
                "subscription": {"id": sub.id},
                "phase": {"id": item.phase_key},
                "item": {"id": item_id},
                "billingPeriod": {"from": from, "to": to},
            });
            let (name, description, metadata) = match &item.addon {
                None => (card.name.clone(), card.description.clone(), None),
                Some(a) => {
                    subscription["addon"] = json!({
                        "id": a.id,
                        "addon": {"id": a.addon_id, "key": a.key},
                        "quantity": a.quantity,
                    });
                    let meta = [
                        ("addon.id", a.id.clone()),
                        ("addon.key", a.key.clone()),
                        ("addon.quantity", a.quantity.to_string()),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect();
                    (
                        format!("{} (add-on {} × {})", card.name, a.name, a.quantity),
                        Some(format!(
                            "Add-on {} ({}), {} instance(s)",
                            a.name, a.key, a.quantity
                        )),
                        Some(meta),
                    )
                }
            };
            out.push(Line {
                id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, reference.as_bytes())
                    .simple()
                    .to_string(),
                name,
                description,
                metadata,
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
                subscription: Some(subscription),
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
                addon: None,
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
                addon: None,
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

/// The subscription module's subscriptions as invoicing sees them.
pub struct FromSubscriptions;

impl Subscriptions for FromSubscriptions {
    fn active<'a>(
        &'a self,
        store: &'a Store,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Vec<SubscriptionView>, StoreError>> {
        Box::pin(async move {
            let addons = crate::subscription::addons_of_all(store).await?;
            Ok(
                crate::subscription::subscriptions_active_in(store, from, to)
                    .await?
                    .iter()
                    .map(|s| view_of(s, &addons))
                    .collect(),
            )
        })
    }
}

/// A subscription as invoicing sees it: each phase's items active from the phase's start (or the
/// item's override) to the next phase's start, the subscription's end or the item's override,
/// then the add-ons bought on it ([`addon_items`]; `addons` may hold other subscriptions' too).
pub fn view_of(sub: &Subscription, addons: &[SubscriptionAddon]) -> SubscriptionView {
    let mut items = Vec::new();
    for (i, phase) in sub.phases.iter().enumerate() {
        let phase_to = sub
            .phases
            .get(i + 1)
            .map(|p| p.active_from)
            .into_iter()
            .chain(sub.active_to)
            .min();
        for item in &phase.items {
            let from = item
                .active_from_override
                .map_or(phase.active_from, |t| t.max(phase.active_from));
            let to = match (item.active_to_override, phase_to) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            items.push(SubscriptionItem {
                phase_key: phase.key.clone(),
                rate_card: item.rate_card.clone(),
                active_from: from.max(sub.active_from),
                active_to: to,
                addon: None,
            });
        }
    }
    let extra = addon_items(sub, &items, addons);
    items.extend(extra);
    SubscriptionView {
        id: sub.id.clone(),
        customer_id: sub.customer_id.clone(),
        currency: sub.currency.clone(),
        billing_anchor: sub.billing_anchor,
        cadence: sub.billing_cadence.clone(),
        pro_rating: sub.pro_rating_config.enabled,
        items,
    }
}

/// The items the add-ons bought on `sub` bill, beside its own `base` items: for each stretch of
/// constant, non-zero quantity (cut further where the phase or the same-key item changes), each
/// priced rate card of the add-on as `quantity` instances, by OpenMeter's merge rules
/// (`subscription/addon/extend.go`): over an item of the same key with a flat price, the
/// add-on's flat amount adds to it (a line of its own, on the item's payment term); over an item
/// without a price (or none of that key), the add-on's price is the price; over an item with a
/// usage price, the add-on's price is not taken (the merge keeps the item's), so nothing is
/// billed for it.
pub fn addon_items(
    sub: &Subscription,
    base: &[SubscriptionItem],
    addons: &[SubscriptionAddon],
) -> Vec<SubscriptionItem> {
    let mut out = Vec::new();
    if sub.deleted_at.is_some() {
        return out;
    }
    let phases = sub.phase_windows();
    for addon in addons.iter().filter(|a| a.subscription_id == sub.id) {
        for card in addon.rate_cards.iter().filter(|c| c.price.is_some()) {
            let mut version = 0;
            for (i, q) in addon.timeline.iter().enumerate() {
                let from = q.active_from.max(sub.active_from);
                let to = addon
                    .timeline
                    .get(i + 1)
                    .map(|n| n.active_from)
                    .into_iter()
                    .chain(sub.active_to)
                    .min();
                if q.quantity == 0 || to.is_some_and(|t| t <= from) {
                    continue;
                }
                let inside = |t: &DateTime<Utc>| *t > from && to.is_none_or(|e| *t < e);
                let mut cuts = vec![from];
                cuts.extend(phases.iter().map(|p| p.active_from).filter(inside));
                for b in base.iter().filter(|b| b.rate_card.key == card.key) {
                    cuts.extend(
                        std::iter::once(b.active_from)
                            .chain(b.active_to)
                            .filter(inside),
                    );
                }
                cuts.sort();
                cuts.dedup();
                for (j, &at) in cuts.iter().enumerate() {
                    let end = cuts.get(j + 1).copied().or(to);
                    let Some(phase) = phases.iter().find(|p| p.contains(at)) else {
                        continue;
                    };
                    let same_key = base.iter().find(|b| {
                        b.rate_card.key == card.key
                            && b.phase_key == phase.phase.key
                            && b.active_from <= at
                            && b.active_to.is_none_or(|t| at < t)
                    });
                    let mut scaled = crate::subscription::addons::scaled(card, q.quantity);
                    let price = match (
                        same_key.and_then(|b| b.rate_card.price.as_ref()),
                        scaled.price.take(),
                    ) {
                        (
                            Some(PriceDoc::Flat { payment_term, .. }),
                            Some(PriceDoc::Flat { amount, .. }),
                        ) => PriceDoc::Flat {
                            amount,
                            payment_term: payment_term.clone(),
                        },
                        (None, Some(p)) => p,
                        _ => continue,
                    };
                    scaled.price = Some(price);
                    if let Some(b) = same_key {
                        // The item's cadence bills the merged rate card.
                        scaled.billing_cadence = b.rate_card.billing_cadence.clone();
                    }
                    out.push(SubscriptionItem {
                        phase_key: phase.phase.key.clone(),
                        rate_card: scaled,
                        active_from: at,
                        active_to: end,
                        addon: Some(AddonSource {
                            id: addon.id.clone(),
                            addon_id: addon.addon.id.clone(),
                            key: addon.addon.key.clone(),
                            name: addon.name.clone(),
                            quantity: q.quantity,
                            version,
                        }),
                    });
                    version += 1;
                }
            }
        }
    }
    out
}

/// What a subscription's lines depend on: its own last change and its add-ons' (a purchase or a
/// quantity change makes its lines be generated again).
pub fn changed_at(sub: &Subscription, addons: &[SubscriptionAddon]) -> DateTime<Utc> {
    addons
        .iter()
        .filter(|a| a.subscription_id == sub.id)
        .map(|a| a.updated_at)
        .fold(sub.updated_at, DateTime::max)
}

/// The document kind recording how far a subscription's lines were generated.
pub const SYNC_KIND: &str = "subscription_invoicing";

/// How far a subscription's lines were generated.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncState {
    /// Lines of billing periods starting before this instant exist.
    pub synced_through: DateTime<Utc>,
    /// The subscription's [`changed_at`] when they were generated (a later change syncs again).
    pub subscription_updated_at: DateTime<Utc>,
    /// The lines generated for billing periods still running at `synced_through`: a line of such
    /// a period that is not among them is new (an add-on bought, an item added mid-period) and
    /// is added; one among them that is no longer gathering was invoiced and is not made again.
    /// `None` (records written before it existed): no line of an earlier period is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_lines: Option<Vec<String>>,
}

/// The billing period a generated line belongs to.
fn billing_period(l: &Line) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let p = &l.subscription.as_ref()?["billingPeriod"];
    Some((
        p["from"].as_str()?.parse().ok()?,
        p["to"].as_str()?.parse().ok()?,
    ))
}

/// Brings the customer's gathering invoice in line with `sub` for billing periods starting at or
/// before `at`: new periods' lines are added; lines of this subscription still gathering are
/// replaced by what the subscription says now (a cancel mid-period prorates its flat fee) or
/// removed (an item that no longer runs then). The gathering invoice and the sync record change
/// in one transaction, so a line is never generated twice, even across a kill -9 or replicas.
/// Returns whether anything changed.
pub async fn sync(
    store: &Store,
    sub: &Subscription,
    at: DateTime<Utc>,
) -> Result<bool, super::InvoiceError> {
    use super::lifecycle;
    let addons = crate::subscription::addons_of(store, &sub.id).await?;
    let view = view_of(sub, &addons);
    let version = changed_at(sub, &addons);
    let until = at + chrono::TimeDelta::milliseconds(1);
    let customer: crate::entitlement::Customer = store
        .get_entity("customer", &sub.customer_id)
        .await?
        .ok_or_else(|| {
            super::InvoiceError::NotFound(format!("customer {} not found", sub.customer_id))
        })?;
    loop {
        let sync_raw = store.get_entity_raw(SYNC_KIND, &sub.id).await?;
        let state: Option<SyncState> = sync_raw
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok());
        let targets = if sub.deleted_at.is_some() {
            Vec::new()
        } else {
            lines_for(&view, until, at).map_err(super::InvoiceError::Invalid)?
        };
        let gathering = lifecycle::gathering_of(store, &sub.customer_id, &sub.currency).await?;
        let (g_raw, mut inv, is_new) = match gathering {
            Some((raw, inv)) => (Some(raw), inv, false),
            None => {
                let profile = super::profile::profile_for(store, &customer.id)
                    .await?
                    .ok_or_else(|| {
                        super::InvoiceError::Conflict("there is no default billing profile".into())
                    })?;
                let mut inv = lifecycle::new_invoice(
                    super::new_id(),
                    lifecycle::invoice_customer(&customer),
                    &sub.currency,
                    &profile,
                    at,
                );
                inv.gathering_key = Some(lifecycle::gathering_key(&customer.id, &sub.currency));
                inv.number = Some(format!("GATHER-{}", sub.currency));
                (None, inv, true)
            }
        };
        let prefix = format!("{}/", sub.id);
        let synced = state.as_ref().map(|s| s.synced_through);
        let mut changed = false;
        // Lines of this subscription still gathering: replaced or removed.
        for l in inv.lines.iter_mut().filter(|l| l.live()) {
            let Some(r) = l.child_unique_reference_id.clone() else {
                continue;
            };
            if !r.starts_with(&prefix) || l.split_line_group.is_some() {
                continue;
            }
            match targets
                .iter()
                .find(|t| t.child_unique_reference_id.as_deref() == Some(&r))
            {
                Some(t) => {
                    if t.period != l.period
                        || t.invoice_at != l.invoice_at
                        || serde_json::to_value(&t.rate_card).ok()
                            != serde_json::to_value(&l.rate_card).ok()
                    {
                        let mut t = t.clone();
                        t.created_at = l.created_at;
                        t.invoice = Some(serde_json::json!({"id": inv.id}));
                        *l = t;
                        changed = true;
                    }
                }
                None => {
                    l.deleted_at = Some(at);
                    changed = true;
                }
            }
        }
        // New periods' lines, and new lines of periods still running at the last sync.
        let open = state.as_ref().and_then(|s| s.open_lines.as_ref());
        for t in &targets {
            let already = inv
                .lines
                .iter()
                .any(|l| l.child_unique_reference_id == t.child_unique_reference_id);
            let seen = match (billing_period(t), synced) {
                (Some((from, to)), Some(s)) if from < s => match open {
                    Some(open) if to > s => t
                        .child_unique_reference_id
                        .as_ref()
                        .is_some_and(|r| open.contains(r)),
                    _ => true,
                },
                _ => false,
            };
            if already || seen {
                continue;
            }
            let mut t = t.clone();
            t.invoice = Some(serde_json::json!({"id": inv.id}));
            inv.lines.push(t);
            changed = true;
        }
        let synced_through = until.max(synced.unwrap_or(until));
        let mut open_lines: Vec<String> = targets
            .iter()
            .filter(|t| billing_period(t).is_some_and(|(_, to)| to > synced_through))
            .filter_map(|t| t.child_unique_reference_id.clone())
            .collect();
        open_lines.sort();
        let new_state = SyncState {
            synced_through,
            subscription_updated_at: version,
            open_lines: Some(open_lines),
        };
        let state_changed = state.as_ref().is_none_or(|s| {
            s.synced_through != new_state.synced_through
                || s.subscription_updated_at != new_state.subscription_updated_at
                || s.open_lines != new_state.open_lines
        });
        if !changed && !state_changed {
            return Ok(false);
        }
        let before = inv.clone();
        if changed {
            inv.updated_at = at;
            inv.next_action_at = inv
                .live_lines()
                .map(|l| l.invoice_at)
                .min()
                .map(super::model::stamp);
            inv.recompute();
        }
        let record =
            serde_json::to_value(&new_state).map_err(|e| StoreError::Decode(e.to_string()))?;
        let extra = vec![(SYNC_KIND, sub.id.as_str(), sync_raw.as_deref(), record)];
        let before = (!is_new).then_some(&before);
        let mut changes: Vec<lifecycle::Change<'_>> = Vec::new();
        if changed {
            changes.push((g_raw.as_deref(), before, &inv));
        }
        if lifecycle::commit(store, &changes, extra).await? {
            return Ok(changed);
        }
    }
}

/// When a subscription's invoicing must be synced in `(after, until]`: at once when it was never
/// synced or changed since, then at each billing period's start.
pub async fn sync_due(
    store: &Store,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, String)>, StoreError> {
    let mut out = Vec::new();
    let first = after + chrono::TimeDelta::milliseconds(1);
    let addons = crate::subscription::addons_of_all(store).await?;
    for sub in crate::subscription::subscriptions_active_in(store, after, until).await? {
        let state: Option<SyncState> = store.get_entity(SYNC_KIND, &sub.id).await?;
        let stale = state
            .as_ref()
            .is_none_or(|s| s.subscription_updated_at != changed_at(&sub, &addons));
        if stale {
            out.push((first.max(sub.active_from).min(until), sub.id.clone()));
        }
        let Ok(cadence) = Interval::parse(&sub.billing_cadence) else {
            continue;
        };
        let (mut from, _) = cadence.period_at(sub.billing_anchor, first);
        let mut n = 0;
        while from <= until && n < 10_000 {
            if from > after && from >= sub.active_from && sub.active_to.is_none_or(|t| from < t) {
                out.push((from, sub.id.clone()));
            }
            n += 1;
            from = cadence.period_at(sub.billing_anchor, from).1;
        }
    }
    // Cancelled subscriptions change too (their lines are prorated when cancelled).
    for sub in store
        .list_entities::<crate::subscription::model::Subscription>(crate::subscription::model::KIND)
        .await?
    {
        if out.iter().any(|(_, id)| *id == sub.id) {
            continue;
        }
        let state: Option<SyncState> = store.get_entity(SYNC_KIND, &sub.id).await?;
        if state.is_some_and(|s| s.subscription_updated_at != changed_at(&sub, &addons)) {
            out.push((first, sub.id.clone()));
        }
    }
    Ok(out)
}
