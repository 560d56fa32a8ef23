//! A subscription over time, derived from what is stored: each phase's window (it lasts until the
//! next phase starts or the subscription ends), each item's window within it, and the rate card
//! in force in every stretch of time once add-ons are merged ([`item_windows`]). This is the
//! read model invoicing uses: every [`ItemWindow`] is one rate card, constant over
//! `[active_from, active_to)`, with the customer, currency, billing anchor and cadence it is billed
//! on.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::addons;
use super::model::{Item, Phase, Subscription, SubscriptionAddon};
use crate::catalog::model::RateCard;

/// A phase and its window.
#[derive(Debug, Clone)]
pub struct PhaseWindow<'a> {
    /// The phase.
    pub phase: &'a Phase,
    /// Starts.
    pub active_from: DateTime<Utc>,
    /// Ends (exclusive); `None` while the subscription has no end and no later phase.
    pub active_to: Option<DateTime<Utc>>,
}

impl PhaseWindow<'_> {
    /// Whether `t` is inside.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.active_from <= t && self.active_to.is_none_or(|to| t < to)
    }
}

/// One rate card in force over `[active_from, active_to)` on a subscription.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemWindow {
    /// The subscription.
    pub subscription_id: String,
    /// Its customer.
    pub customer_id: String,
    /// Its currency.
    pub currency: String,
    /// Its billing anchor.
    pub billing_anchor: DateTime<Utc>,
    /// The phase's key.
    pub phase_key: String,
    /// When the phase started.
    pub phase_active_from: DateTime<Utc>,
    /// The item's id (`{addonId}/{key}` for an item only an add-on brings).
    pub item_id: String,
    /// The rate card's key.
    pub key: String,
    /// Starts.
    pub active_from: DateTime<Utc>,
    /// Ends (exclusive).
    pub active_to: Option<DateTime<Utc>>,
    /// The rate card in force (add-ons merged).
    pub rate_card: RateCard,
    /// Its billing cadence (ISO 8601); `None` = a one-time fee.
    pub billing_cadence: Option<String>,
}

impl ItemWindow {
    /// Whether `t` is inside.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.active_from <= t && self.active_to.is_none_or(|to| t < to)
    }
}

impl Subscription {
    /// Every phase that starts before the subscription ends, with its window.
    pub fn phase_windows(&self) -> Vec<PhaseWindow<'_>> {
        let mut out: Vec<PhaseWindow<'_>> = Vec::new();
        let end = self.active_to;
        for (i, phase) in self.phases.iter().enumerate() {
            if end.is_some_and(|e| phase.active_from >= e) && i > 0 {
                break;
            }
            let next = self.phases.get(i + 1).map(|p| p.active_from);
            let to = match (next, end) {
                (Some(n), Some(e)) => Some(n.min(e)),
                (Some(n), None) => Some(n),
                (None, e) => e,
            };
            out.push(PhaseWindow {
                phase,
                active_from: phase.active_from,
                active_to: to,
            });
        }
        out
    }

    /// The phase in force at `t`.
    pub fn phase_at(&self, t: DateTime<Utc>) -> Option<PhaseWindow<'_>> {
        self.phase_windows().into_iter().find(|w| w.contains(t))
    }

    /// An item's window inside its phase's (`None` when empty).
    pub fn item_window(
        item: &Item,
        phase: &PhaseWindow<'_>,
    ) -> Option<(DateTime<Utc>, Option<DateTime<Utc>>)> {
        let from = item
            .active_from_override
            .map_or(phase.active_from, |f| f.max(phase.active_from));
        let to = match (item.active_to_override, phase.active_to) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        to.is_none_or(|to| to > from).then_some((from, to))
    }
}

/// The rate cards in force at `t` in `phase` (base items active at `t`, add-ons merged), as
/// `(item id, rate card)` in item order, add-on-only items last.
fn effective_at(
    sub: &Subscription,
    phase: &PhaseWindow<'_>,
    addons: &[SubscriptionAddon],
    t: DateTime<Utc>,
) -> Vec<(String, RateCard)> {
    let mut out: Vec<(String, RateCard)> = phase
        .phase
        .items
        .iter()
        .filter(|item| {
            Subscription::item_window(item, phase)
                .is_some_and(|(from, to)| from <= t && to.is_none_or(|to| t < to))
        })
        .map(|item| (item.id.clone(), item.rate_card.clone()))
        .collect();
    for addon in addons.iter().filter(|a| a.subscription_id == sub.id) {
        let q = addon.quantity_at(t);
        if q == 0 {
            continue;
        }
        for card in &addon.rate_cards {
            match out.iter_mut().find(|(_, c)| c.key == card.key) {
                Some((_, base)) => addons::extend(base, card, q),
                None => out.push((
                    format!("{}/{}", addon.id, card.key),
                    addons::scaled(card, q),
                )),
            }
        }
    }
    out
}

/// Every stretch of every item of `sub` with the rate card in force in it (add-ons merged), in
/// phase order then time order. Adjacent stretches of one item with the same rate card are one
/// window.
pub fn item_windows(sub: &Subscription, addons: &[SubscriptionAddon]) -> Vec<ItemWindow> {
    let mut out: Vec<ItemWindow> = Vec::new();
    for phase in sub.phase_windows() {
        let mut cuts: Vec<DateTime<Utc>> = vec![phase.active_from];
        for item in &phase.phase.items {
            if let Some((from, to)) = Subscription::item_window(item, &phase) {
                cuts.push(from);
                cuts.extend(to);
            }
        }
        for addon in addons.iter().filter(|a| a.subscription_id == sub.id) {
            cuts.extend(addon.timeline.iter().map(|q| q.active_from));
        }
        cuts.retain(|c| phase.contains(*c));
        cuts.sort();
        cuts.dedup();
        let first = out.len();
        for (i, &at) in cuts.iter().enumerate() {
            let end = cuts.get(i + 1).copied().or(phase.active_to);
            for (item_id, card) in effective_at(sub, &phase, addons, at) {
                let same = |w: &ItemWindow| {
                    w.item_id == item_id
                        && w.active_to == Some(at)
                        && serde_json::to_value(&w.rate_card).ok()
                            == serde_json::to_value(&card).ok()
                };
                if let Some(w) = out[first..].iter_mut().find(|w| same(w)) {
                    w.active_to = end;
                    continue;
                }
                out.push(ItemWindow {
                    subscription_id: sub.id.clone(),
                    customer_id: sub.customer_id.clone(),
                    currency: sub.currency.clone(),
                    billing_anchor: sub.billing_anchor,
                    phase_key: phase.phase.key.clone(),
                    phase_active_from: phase.active_from,
                    item_id,
                    key: card.key.clone(),
                    active_from: at,
                    active_to: end,
                    billing_cadence: card.billing_cadence.clone(),
                    rate_card: card,
                });
            }
        }
    }
    out
}

/// The rate cards in force at `t` (none before the start or after the end).
pub fn items_at(
    sub: &Subscription,
    addons: &[SubscriptionAddon],
    t: DateTime<Utc>,
) -> Vec<ItemWindow> {
    item_windows(sub, addons)
        .into_iter()
        .filter(|w| w.contains(t))
        .collect()
}

/// Every instant at which what `sub` provisions may change: its start and end, phase starts,
/// item edit bounds and add-on quantity changes.
pub fn boundaries(sub: &Subscription, addons: &[SubscriptionAddon]) -> Vec<DateTime<Utc>> {
    let mut out = vec![sub.active_from];
    out.extend(sub.active_to);
    for phase in sub.phase_windows() {
        out.push(phase.active_from);
        for item in &phase.phase.items {
            if let Some((from, to)) = Subscription::item_window(item, &phase) {
                out.push(from);
                out.extend(to);
            }
        }
    }
    for addon in addons.iter().filter(|a| a.subscription_id == sub.id) {
        out.extend(addon.timeline.iter().map(|q| q.active_from));
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::model::{AddonRef, Quantity};
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn card(key: &str, amount: &str) -> RateCard {
        serde_json::from_value(
            json!({"type": "flat_fee", "key": key, "name": key, "featureKey": key,
            "billingCadence": "P1M", "price": {"type": "flat", "amount": amount}}),
        )
        .unwrap()
    }

    fn item(id: &str, key: &str, amount: &str, to: Option<&str>) -> Item {
        Item {
            id: id.into(),
            key: key.into(),
            rate_card: card(key, amount),
            active_from_override: None,
            active_to_override: to.map(t),
        }
    }

    fn sub() -> Subscription {
        serde_json::from_value(json!({
            "id": "s", "name": "n", "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z",
            "activeFrom": "2026-01-01T00:00:00Z", "activeTo": "2026-06-01T00:00:00Z", "customerId": "c",
            "currency": "USD", "billingCadence": "P1M", "billingAnchor": "2026-01-01T00:00:00Z",
            "settlementMode": "credit_then_invoice", "phases": []}))
        .unwrap()
    }

    fn phase(key: &str, from: &str, items: Vec<Item>) -> Phase {
        Phase {
            id: key.into(),
            key: key.into(),
            name: key.into(),
            description: None,
            metadata: None,
            active_from: t(from),
            items,
        }
    }

    #[test]
    fn windows_follow_phases_edits_add_ons_and_the_end() {
        let mut s = sub();
        s.phases = vec![
            phase(
                "trial",
                "2026-01-01T00:00:00Z",
                vec![item("i1", "seats", "0", None)],
            ),
            phase(
                "paid",
                "2026-02-01T00:00:00Z",
                vec![
                    item("i2", "seats", "10", None),
                    item("i3", "support", "5", Some("2026-03-10T00:00:00Z")),
                ],
            ),
        ];
        let addon = SubscriptionAddon {
            id: "a".into(),
            subscription_id: "s".into(),
            addon: AddonRef {
                id: "x".into(),
                key: "more".into(),
                version: 1,
                instance_type: "multiple".into(),
            },
            rate_cards: vec![card("seats", "2")],
            name: "more".into(),
            description: None,
            metadata: None,
            created_at: t("2026-01-01T00:00:00Z"),
            updated_at: t("2026-01-01T00:00:00Z"),
            timeline: vec![Quantity {
                active_from: t("2026-04-15T00:00:00Z"),
                quantity: 3,
            }],
        };
        let windows = item_windows(&s, std::slice::from_ref(&addon));
        let seen: Vec<(String, String, String, Option<String>, String)> = windows
            .iter()
            .map(|w| {
                let amount = match &w.rate_card.price {
                    Some(crate::catalog::model::PriceDoc::Flat { amount, .. }) => {
                        amount.to_string()
                    }
                    _ => "-".into(),
                };
                (
                    w.phase_key.clone(),
                    w.key.clone(),
                    w.active_from.format("%m-%d").to_string(),
                    w.active_to.map(|x| x.format("%m-%d").to_string()),
                    amount,
                )
            })
            .collect();
        let row = |p: &str, k: &str, f: &str, to: &str, a: &str| {
            (
                p.to_owned(),
                k.to_owned(),
                f.to_owned(),
                Some(to.to_owned()),
                a.to_owned(),
            )
        };
        assert_eq!(
            seen,
            vec![
                row("trial", "seats", "01-01", "02-01", "0"),
                row("paid", "seats", "02-01", "04-15", "10"),
                row("paid", "support", "02-01", "03-10", "5"),
                row("paid", "seats", "04-15", "06-01", "16"),
            ],
            "the add-on's 3 × 2 is a new window; the subscription's end closes the last"
        );
        assert_eq!(
            items_at(&s, std::slice::from_ref(&addon), t("2026-03-20T00:00:00Z")).len(),
            1
        );
        assert!(items_at(&s, std::slice::from_ref(&addon), t("2026-06-01T00:00:00Z")).is_empty());
        let b = boundaries(&s, &[addon]);
        assert!(b.contains(&t("2026-04-15T00:00:00Z")) && b.contains(&t("2026-03-10T00:00:00Z")));
    }
}
