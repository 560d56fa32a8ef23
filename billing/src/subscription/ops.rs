//! The operations on subscriptions (OpenMeter's `subscription/workflow`): create from a plan or a
//! custom plan, cancel and unschedule a cancelation, change to another plan, migrate to a newer
//! version, restore, delete a scheduled one, edit items and phases, and buy add-ons. Each works on
//! copies and returns what to store, or a [`Refusal`] naming what is wrong — so a refused request
//! changes nothing. Storing and provisioning are the caller's ([`super::Subscriptions`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::json;

use super::Refusal;
use super::model::{
    AddonRef, Item, PREVIOUS, Phase, PlanRef, SUPERSEDING, Status, Subscription, SubscriptionAddon,
};
use super::period::{NamedTiming, Timing, billing_period_at, is_boundary, normalise_anchor};
use crate::catalog::model::{Addon, Plan, RateCard};
use crate::duration::IsoDuration;
use crate::entitlement::Customer;

/// How far in the past a custom start may lie (OpenMeter: "cannot create subscription in the
/// past").
pub const PAST_TOLERANCE: Duration = Duration::minutes(2);

/// What a new subscription is made from.
pub struct NewSubscription<'a> {
    /// A new id.
    pub id: String,
    /// The plan (a custom plan has no id/key to refer to).
    pub plan: &'a Plan,
    /// Whether it is a custom plan.
    pub custom: bool,
    /// The customer.
    pub customer: &'a Customer,
    /// Starts.
    pub active_from: DateTime<Utc>,
    /// Requested anchor (default: the start).
    pub billing_anchor: Option<DateTime<Utc>>,
    /// Phase to start in (default: the first).
    pub starting_phase: Option<String>,
    /// Name (default: the plan's).
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Metadata.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Settlement mode (default: the plan's).
    pub settlement_mode: Option<String>,
    /// Now (creation time).
    pub now: DateTime<Utc>,
    /// Makes ids.
    pub new_id: &'a dyn Fn() -> String,
}

/// The subscription `n` describes, its phases placed in time from its start.
pub fn build(n: NewSubscription<'_>) -> Result<Subscription, Refusal> {
    let cadence = IsoDuration::parse(&n.plan.billing_cadence)
        .map_err(|m| Refusal::invalid("$.plan.billingCadence", "billing_cadence_invalid", m))?;
    let first = match &n.starting_phase {
        None => 0,
        Some(k) => n
            .plan
            .phases
            .iter()
            .position(|p| &p.key == k)
            .ok_or_else(|| {
                Refusal::invalid(
                    "$.startingPhase",
                    "subscription_starting_phase_not_found",
                    format!("the plan has no phase {k:?}"),
                )
            })?,
    };
    if n.plan.phases.is_empty() {
        return Err(Refusal::invalid(
            "$.plan.phases",
            "plan_with_no_phases",
            "the plan has no phases",
        ));
    }
    let mut start = n.active_from;
    let mut phases = Vec::new();
    for (i, p) in n.plan.phases.iter().enumerate().skip(first) {
        phases.push(Phase {
            id: (n.new_id)(),
            key: p.key.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            metadata: p.metadata.clone(),
            active_from: start,
            items: p
                .rate_cards
                .iter()
                .map(|c| Item {
                    id: (n.new_id)(),
                    key: c.key.clone(),
                    rate_card: c.clone(),
                    active_from_override: None,
                    active_to_override: None,
                })
                .collect(),
        });
        match &p.duration {
            Some(d) if i + 1 < n.plan.phases.len() => {
                let d = IsoDuration::parse(d).map_err(|m| {
                    Refusal::invalid(
                        format!("$.plan.phases[?(@.key=='{}')].duration", p.key),
                        "plan_phase_duration_invalid",
                        m,
                    )
                })?;
                start = d.after(start).ok_or_else(|| {
                    Refusal::invalid(
                        "$.plan",
                        "plan_phase_duration_invalid",
                        "phase ends past the representable time",
                    )
                })?;
            }
            _ => break,
        }
    }
    let anchor = normalise_anchor(
        n.billing_anchor.unwrap_or(n.active_from),
        &cadence,
        n.active_from,
    );
    Ok(Subscription {
        id: n.id,
        name: n.name.unwrap_or_else(|| n.plan.name.clone()),
        description: n.description,
        metadata: n.metadata,
        annotations: BTreeMap::new(),
        created_at: n.now,
        updated_at: n.now,
        deleted_at: None,
        active_from: n.active_from,
        active_to: None,
        customer_id: n.customer.id.clone(),
        plan: (!n.custom).then(|| PlanRef {
            id: n.plan.id.clone(),
            key: n.plan.key.clone(),
            version: n.plan.version,
        }),
        currency: n.plan.currency.clone(),
        billing_cadence: n.plan.billing_cadence.clone(),
        pro_rating_config: n.plan.pro_rating_config.clone(),
        billing_anchor: anchor,
        settlement_mode: n
            .settlement_mode
            .unwrap_or_else(|| n.plan.settlement_mode.clone()),
        cost_basis_mode: "dynamic".into(),
        phases,
    })
}

/// The start a create's `timing` means: now, the end of the period holding now on the requested
/// anchor's grid, or a date-time no more than [`PAST_TOLERANCE`] in the past.
pub fn start_of(
    timing: &Timing,
    now: DateTime<Utc>,
    anchor: Option<DateTime<Utc>>,
    cadence: &str,
) -> Result<DateTime<Utc>, Refusal> {
    let cadence = IsoDuration::parse(cadence)
        .map_err(|m| Refusal::invalid("$.billingCadence", "billing_cadence_invalid", m))?;
    let t = timing
        .resolve(now, anchor.unwrap_or(now), &cadence)
        .map_err(|m| Refusal::invalid("$.timing", "subscription_timing_invalid", m))?;
    if t < now - PAST_TOLERANCE {
        return Err(Refusal::invalid(
            "$.timing",
            "subscription_timing_in_the_past",
            format!(
                "cannot create subscription in the past: {t} is before {}",
                now - PAST_TOLERANCE
            ),
        ));
    }
    Ok(t)
}

/// OpenMeter allows one subscription per customer at a time: refuses `candidate` when it overlaps
/// another of `others` (the customer's).
pub fn refuse_overlap(candidate: &Subscription, others: &[Subscription]) -> Result<(), Refusal> {
    if let Some(o) = others
        .iter()
        .filter(|o| o.id != candidate.id)
        .find(|o| o.overlaps(candidate.active_from, candidate.active_to))
    {
        return Err(Refusal::conflict(
            "$.customerId",
            "only_single_subscription_allowed_per_customer_at_a_time",
            format!(
                "customer {} already has subscription {} from {}{}: only one subscription per \
                 customer at a time",
                candidate.customer_id,
                o.id,
                o.active_from,
                o.active_to.map(|t| format!(" to {t}")).unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

fn refuse_status(
    sub: &Subscription,
    now: DateTime<Utc>,
    allowed: &[Status],
    what: &str,
) -> Result<(), Refusal> {
    let status = sub.status_at(now);
    if allowed.contains(&status) {
        return Ok(());
    }
    Err(Refusal::conflict(
        "$.status",
        "subscription_invalid_status",
        format!(
            "subscription {} is {}: {what} needs it {}",
            sub.id,
            status.as_str(),
            allowed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    ))
}

fn refuse_scheduled_successor(sub: &Subscription, what: &str) -> Result<(), Refusal> {
    if let Some(next) = sub.annotation(SUPERSEDING) {
        return Err(Refusal::conflict(
            "$.annotations",
            "subscription_change_scheduled",
            format!(
                "subscription {} is being replaced by subscription {next} at {}: {what} would \
                 leave both; delete subscription {next} first",
                sub.id,
                sub.active_to.map(|t| t.to_string()).unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

fn cadence(sub: &Subscription) -> Result<IsoDuration, Refusal> {
    sub.cadence()
        .map_err(|m| Refusal::invalid("$.billingCadence", "billing_cadence_invalid", m))
}

/// When a cancelation or change with `timing` takes effect: now, the end of the current billing
/// period, or a date-time that must lie on a billing-period boundary and not in the past.
pub fn end_of(
    sub: &Subscription,
    timing: &Timing,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Refusal> {
    let c = cadence(sub)?;
    let t = timing
        .resolve(now, sub.billing_anchor, &c)
        .map_err(|m| Refusal::invalid("$.timing", "subscription_timing_invalid", m))?;
    if timing.is_custom() {
        if t < now {
            return Err(Refusal::invalid(
                "$.timing",
                "subscription_timing_in_the_past",
                format!("{t} is in the past (now is {now})"),
            ));
        }
        if !is_boundary(sub.billing_anchor, &c, t) {
            let (from, to) = billing_period_at(sub.billing_anchor, &c, t).unwrap_or((t, t));
            return Err(Refusal::invalid(
                "$.timing",
                "subscription_timing_misaligned",
                format!(
                    "cannot cancel aligned subscription with custom misaligned timing: {t} is \
                     inside the billing period {from} – {to}; use one of its ends"
                ),
            ));
        }
    }
    Ok(t.max(sub.active_from))
}

/// `sub` canceled at `timing`.
pub fn cancel(
    sub: &Subscription,
    timing: &Timing,
    now: DateTime<Utc>,
) -> Result<Subscription, Refusal> {
    refuse_status(
        sub,
        now,
        &[Status::Active, Status::Canceled],
        "a cancelation",
    )?;
    refuse_scheduled_successor(sub, "canceling it")?;
    let at = end_of(sub, timing, now)?;
    let mut out = sub.clone();
    out.active_to = Some(at);
    out.updated_at = now;
    Ok(out)
}

/// `sub` with its cancelation unscheduled.
pub fn unschedule_cancelation(
    sub: &Subscription,
    now: DateTime<Utc>,
) -> Result<Subscription, Refusal> {
    refuse_status(sub, now, &[Status::Canceled], "unscheduling a cancelation")?;
    refuse_scheduled_successor(sub, "unscheduling its cancelation")?;
    let mut out = sub.clone();
    out.active_to = None;
    out.updated_at = now;
    Ok(out)
}

/// `sub` ended at `at` and `next` made to start exactly then, each naming the other.
pub fn supersede(
    sub: &Subscription,
    mut next: Subscription,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Subscription, Subscription) {
    let mut current = sub.clone();
    current.active_to = Some(at);
    current.updated_at = now;
    current
        .annotations
        .insert(SUPERSEDING.into(), json!(next.id));
    next.annotations.insert(PREVIOUS.into(), json!(sub.id));
    (current, next)
}

/// Refuses a change (or migration) of `sub` now: only an active subscription with nothing
/// scheduled changes plan.
pub fn refuse_change(sub: &Subscription, now: DateTime<Utc>) -> Result<(), Refusal> {
    refuse_status(sub, now, &[Status::Active], "a change of plan")?;
    refuse_scheduled_successor(sub, "another change")
}

/// The plan version a migration goes to: `target` (default: the newest active version), newer
/// than the current one, and active or archived.
pub fn migration_target<'a>(
    sub: &Subscription,
    versions: &'a [Plan],
    target: Option<i64>,
) -> Result<&'a Plan, Refusal> {
    let current = sub.plan.as_ref().ok_or_else(|| {
        Refusal::invalid(
            "$.plan",
            "subscription_migration_custom_plan",
            format!(
                "subscription {} is on a custom plan: change it instead of migrating",
                sub.id
            ),
        )
    })?;
    let live = |p: &&Plan| {
        p.key == current.key
            && p.deleted_at.is_none()
            && matches!(
                p.status,
                crate::catalog::Status::Active | crate::catalog::Status::Archived
            )
    };
    let plan = match target {
        Some(v) => versions
            .iter()
            .filter(live)
            .find(|p| p.version == v)
            .ok_or_else(|| {
                Refusal::invalid(
                    "$.targetVersion",
                    "subscription_migration_target_not_found",
                    format!("plan {} has no active or archived version {v}", current.key),
                )
            })?,
        None => versions
            .iter()
            .filter(live)
            .filter(|p| p.status == crate::catalog::Status::Active)
            .max_by_key(|p| p.version)
            .ok_or_else(|| {
                Refusal::invalid(
                    "$.targetVersion",
                    "subscription_migration_target_not_found",
                    format!("plan {} has no active version", current.key),
                )
            })?,
    };
    if plan.version <= current.version {
        return Err(Refusal::invalid(
            "$.targetVersion",
            "subscription_migration_target_not_newer",
            format!(
                "subscription {} is on version {} of plan {}: it migrates only to a newer \
                 version, not {}",
                sub.id, current.version, current.key, plan.version
            ),
        ));
    }
    Ok(plan)
}

/// `sub` restored (its cancelation removed) and the id of a scheduled successor to delete.
pub fn restore(
    sub: &Subscription,
    now: DateTime<Utc>,
) -> Result<(Subscription, Option<String>), Refusal> {
    refuse_status(sub, now, &[Status::Canceled, Status::Active], "restoring")?;
    let mut out = sub.clone();
    let successor = out
        .annotations
        .remove(SUPERSEDING)
        .and_then(|v| v.as_str().map(str::to_owned));
    out.active_to = None;
    out.updated_at = now;
    Ok((out, successor))
}

/// `sub` deleted (only a scheduled one).
pub fn delete(sub: &Subscription, now: DateTime<Utc>) -> Result<Subscription, Refusal> {
    refuse_status(sub, now, &[Status::Scheduled], "deleting")?;
    let mut out = sub.clone();
    out.deleted_at = Some(now);
    out.updated_at = now;
    Ok(out)
}

/// One edit (`EditOp`, discriminated by `op`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum EditOp {
    /// Adds a rate card to a phase.
    #[serde(rename_all = "camelCase")]
    AddItem {
        /// The phase.
        phase_key: String,
        /// The rate card.
        rate_card: Box<RateCard>,
    },
    /// Removes an item from a phase.
    #[serde(rename_all = "camelCase")]
    RemoveItem {
        /// The phase.
        phase_key: String,
        /// The item's key.
        item_key: String,
    },
    /// Adds a phase.
    #[serde(rename_all = "camelCase")]
    AddPhase {
        /// The phase.
        phase: NewPhase,
    },
    /// Removes a future phase.
    #[serde(rename_all = "camelCase")]
    RemovePhase {
        /// The phase.
        phase_key: String,
        /// `next`: later phases move earlier by its length; `prev`: the previous phase lasts
        /// longer.
        shift: String,
    },
    /// Makes a phase longer (later phases start later).
    #[serde(rename_all = "camelCase")]
    StretchPhase {
        /// The phase.
        phase_key: String,
        /// ISO 8601.
        extend_by: String,
    },
    /// Drops every edit that has not taken effect yet.
    UnscheduleEdit,
}

/// `add_phase`'s phase.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewPhase {
    /// Key.
    pub key: String,
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Starts this long after the subscription.
    pub start_after: Option<String>,
}

/// `sub` with `ops` applied, taking effect at `timing` (immediate or next_billing_cycle; the
/// current phase only). `has_addons` refuses it (OpenMeter: edit the add-ons instead).
pub fn edit(
    sub: &Subscription,
    ops: &[EditOp],
    timing: &Timing,
    has_addons: bool,
    now: DateTime<Utc>,
    new_id: &dyn Fn() -> String,
) -> Result<Subscription, Refusal> {
    refuse_status(
        sub,
        now,
        &[Status::Active, Status::Canceled, Status::Scheduled],
        "an edit",
    )?;
    if has_addons {
        return Err(Refusal::conflict(
            "$.addons",
            "subscription_has_addons",
            format!(
                "subscription {} has add-ons: a subscription with add-ons cannot be edited \
                 directly (change its add-ons, or change the subscription to another plan)",
                sub.id
            ),
        ));
    }
    if ops.len() > 100 {
        return Err(Refusal::invalid(
            "$.customizations",
            "too_many_edits",
            "at most 100 customizations",
        ));
    }
    if timing.is_custom() {
        return Err(Refusal::invalid(
            "$.timing",
            "subscription_edit_timing_custom",
            "an edit takes effect immediately or at next_billing_cycle, not at a custom date-time",
        ));
    }
    let c = cadence(sub)?;
    let at = timing
        .resolve(now, sub.billing_anchor, &c)
        .map_err(|m| Refusal::invalid("$.timing", "subscription_timing_invalid", m))?
        .max(sub.active_from);
    let current_phase = sub
        .phase_at(now.max(sub.active_from))
        .map(|p| p.phase.key.clone());
    if matches!(timing, Timing::Named(NamedTiming::NextBillingCycle))
        && sub.phase_at(at).map(|p| p.phase.key.clone()) != current_phase
    {
        return Err(Refusal::invalid(
            "$.timing",
            "subscription_edit_timing_other_phase",
            format!(
                "cannot edit to the next billing cycle as it falls into a different phase ({at})"
            ),
        ));
    }
    let mut out = sub.clone();
    for (i, op) in ops.iter().enumerate() {
        apply(&mut out, op, at, now, new_id)
            .map_err(|r| r.at_field(format!("$.customizations[{i}]")))?;
    }
    out.updated_at = now;
    Ok(out)
}

fn phase_index(sub: &Subscription, key: &str) -> Result<usize, Refusal> {
    sub.phases.iter().position(|p| p.key == key).ok_or_else(|| {
        Refusal::invalid(
            "$.phaseKey",
            "subscription_phase_not_found",
            format!("subscription {} has no phase {key:?}", sub.id),
        )
    })
}

/// Where an edit of phase `i` takes effect: `at` in the phase in force, its start in a future
/// phase; a phase that ended cannot be edited.
fn effect_in(
    sub: &Subscription,
    i: usize,
    at: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, Refusal> {
    let windows = sub.phase_windows();
    let w = windows
        .iter()
        .find(|w| w.phase.key == sub.phases[i].key)
        .ok_or_else(|| {
            Refusal::invalid(
                "$.phaseKey",
                "subscription_phase_not_active",
                format!(
                    "phase {} never starts: the subscription ends before it",
                    sub.phases[i].key
                ),
            )
        })?;
    if w.active_to.is_some_and(|to| to <= at) {
        return Err(Refusal::invalid(
            "$.phaseKey",
            "subscription_phase_ended",
            format!(
                "phase {} ended at {}: past phases cannot be edited",
                w.phase.key,
                w.active_to.unwrap_or(at)
            ),
        ));
    }
    Ok((w.active_from < at).then_some(at))
}

fn apply(
    sub: &mut Subscription,
    op: &EditOp,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    new_id: &dyn Fn() -> String,
) -> Result<(), Refusal> {
    match op {
        EditOp::AddItem {
            phase_key,
            rate_card,
        } => {
            let i = phase_index(sub, phase_key)?;
            if rate_card
                .feature_key
                .as_ref()
                .is_some_and(|f| f != &rate_card.key)
            {
                return Err(Refusal::invalid(
                    "$.rateCard.key",
                    "rate_card_key_feature_key_mismatch",
                    format!(
                        "rate card key {:?} must equal its featureKey",
                        rate_card.key
                    ),
                ));
            }
            let from = effect_in(sub, i, at)?;
            let windows = sub.phase_windows();
            let Some(w) = windows.iter().find(|w| w.phase.key == *phase_key) else {
                return Err(Refusal::invalid(
                    "$.phaseKey",
                    "subscription_phase_not_active",
                    "phase never starts",
                ));
            };
            let probe = from.unwrap_or(w.active_from);
            let taken = w.phase.items.iter().any(|item| {
                item.key == rate_card.key
                    && Subscription::item_window(item, w)
                        .is_some_and(|(f, t)| t.is_none_or(|t| t > probe) && f <= probe.max(f))
            });
            if taken {
                return Err(Refusal::invalid(
                    "$.rateCard.key",
                    "subscription_item_exists",
                    format!(
                        "phase {phase_key} already has item {}: remove it first",
                        rate_card.key
                    ),
                ));
            }
            sub.phases[i].items.push(Item {
                id: new_id(),
                key: rate_card.key.clone(),
                rate_card: (**rate_card).clone(),
                active_from_override: from,
                active_to_override: None,
            });
        }
        EditOp::RemoveItem {
            phase_key,
            item_key,
        } => {
            let i = phase_index(sub, phase_key)?;
            let from = effect_in(sub, i, at)?;
            let before = sub.phases[i].items.len();
            match from {
                None => sub.phases[i].items.retain(|item| {
                    item.key != *item_key || item.active_to_override.is_some_and(|t| t <= now)
                }),
                Some(t) => {
                    for item in sub.phases[i]
                        .items
                        .iter_mut()
                        .filter(|item| item.key == *item_key)
                    {
                        if item.active_to_override.is_none_or(|end| end > t) {
                            item.active_to_override = Some(t);
                        }
                    }
                    // An item that had not started yet disappears.
                    sub.phases[i].items.retain(|item| {
                        !(item.key == *item_key
                            && item.active_from_override.is_some_and(|f| f >= t))
                    });
                }
            }
            let touched = before != sub.phases[i].items.len()
                || sub.phases[i].items.iter().any(|item| {
                    item.key == *item_key && item.active_to_override == from && from.is_some()
                });
            if !touched {
                return Err(Refusal::invalid(
                    "$.itemKey",
                    "subscription_item_not_found",
                    format!("phase {phase_key} has no item {item_key:?} to remove"),
                ));
            }
        }
        EditOp::AddPhase { phase } => {
            if sub.phases.iter().any(|p| p.key == phase.key) {
                return Err(Refusal::invalid(
                    "$.phase.key",
                    "subscription_phase_duplicated_key",
                    format!("subscription {} already has phase {:?}", sub.id, phase.key),
                ));
            }
            let start = match &phase.start_after {
                None => sub.active_from,
                Some(d) => IsoDuration::parse(d)
                    .map_err(|m| Refusal::invalid("$.phase.startAfter", "duration_invalid", m))?
                    .after(sub.active_from)
                    .ok_or_else(|| {
                        Refusal::invalid("$.phase.startAfter", "duration_invalid", "too far")
                    })?,
            };
            if start <= now {
                return Err(Refusal::invalid(
                    "$.phase.startAfter",
                    "subscription_phase_in_the_past",
                    format!("a new phase must start in the future, not at {start}"),
                ));
            }
            if sub.phases.iter().any(|p| p.active_from == start) {
                return Err(Refusal::invalid(
                    "$.phase.startAfter",
                    "subscription_phase_start_taken",
                    format!("another phase already starts at {start}"),
                ));
            }
            sub.phases.push(Phase {
                id: new_id(),
                key: phase.key.clone(),
                name: phase.name.clone(),
                description: phase.description.clone(),
                metadata: None,
                active_from: start,
                items: Vec::new(),
            });
            sub.phases.sort_by_key(|p| p.active_from);
        }
        EditOp::RemovePhase { phase_key, shift } => {
            let i = phase_index(sub, phase_key)?;
            if sub.phases[i].active_from <= now {
                return Err(Refusal::invalid(
                    "$.phaseKey",
                    "subscription_phase_started",
                    format!("phase {phase_key} has started: only future phases can be removed"),
                ));
            }
            let length = sub
                .phases
                .get(i + 1)
                .map(|n| n.active_from - sub.phases[i].active_from);
            match (shift.as_str(), length) {
                ("next", Some(len)) => {
                    for p in sub.phases.iter_mut().skip(i + 1) {
                        p.active_from -= len;
                    }
                }
                ("next" | "prev", _) => {}
                (other, _) => {
                    return Err(Refusal::invalid(
                        "$.shift",
                        "subscription_phase_shift_invalid",
                        format!("shift must be next or prev, got {other:?}"),
                    ));
                }
            }
            sub.phases.remove(i);
        }
        EditOp::StretchPhase {
            phase_key,
            extend_by,
        } => {
            let i = phase_index(sub, phase_key)?;
            let d = IsoDuration::parse(extend_by)
                .map_err(|m| Refusal::invalid("$.extendBy", "duration_invalid", m))?;
            if i + 1 == sub.phases.len() {
                return Err(Refusal::invalid(
                    "$.phaseKey",
                    "subscription_phase_last",
                    format!("phase {phase_key} is the last one and has no end to stretch"),
                ));
            }
            if sub.phases[i + 1].active_from <= now {
                return Err(Refusal::invalid(
                    "$.phaseKey",
                    "subscription_phase_ended",
                    format!("phase {phase_key} has ended"),
                ));
            }
            for p in sub.phases.iter_mut().skip(i + 1) {
                p.active_from = d
                    .after(p.active_from)
                    .ok_or_else(|| Refusal::invalid("$.extendBy", "duration_invalid", "too far"))?;
            }
        }
        EditOp::UnscheduleEdit => {
            for p in &mut sub.phases {
                p.items
                    .retain(|item| item.active_from_override.is_none_or(|f| f <= now));
                for item in &mut p.items {
                    if item.active_to_override.is_some_and(|t| t > now) {
                        item.active_to_override = None;
                    }
                }
            }
        }
    }
    Ok(())
}

/// A new add-on bought on `sub`: `quantity` instances of `addon` from `at`.
#[allow(clippy::too_many_arguments)]
pub fn buy_addon(
    sub: &Subscription,
    addon: &Addon,
    offered: Option<(&str, Option<i64>)>,
    quantity: u32,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    id: String,
    name: String,
) -> Result<SubscriptionAddon, Refusal> {
    refuse_status(
        sub,
        now,
        &[Status::Active, Status::Canceled, Status::Scheduled],
        "buying an add-on",
    )?;
    check_addon(sub, addon, offered, quantity, at)?;
    let mut out = SubscriptionAddon {
        id,
        subscription_id: sub.id.clone(),
        addon: AddonRef {
            id: addon.id.clone(),
            key: addon.key.clone(),
            version: addon.version,
            instance_type: addon.instance_type.clone(),
        },
        rate_cards: addon.rate_cards.clone(),
        name,
        description: None,
        metadata: None,
        created_at: now,
        updated_at: now,
        timeline: Vec::new(),
    };
    out.set_quantity(at, quantity);
    Ok(out)
}

/// Whether `quantity` of `addon` may be on `sub` from `at`: active add-on in the subscription's
/// currency, offered by its plan (from that phase, up to the maximum), one instance of a
/// single-instance add-on.
pub fn check_addon(
    sub: &Subscription,
    addon: &Addon,
    offered: Option<(&str, Option<i64>)>,
    quantity: u32,
    at: DateTime<Utc>,
) -> Result<(), Refusal> {
    if addon.deleted_at.is_some() || addon.status != crate::catalog::Status::Active {
        return Err(Refusal::invalid(
            "$.addon.id",
            "addon_not_active",
            format!(
                "add-on {} version {} is {}: only active add-ons are bought",
                addon.key,
                addon.version,
                addon.status.as_str()
            ),
        ));
    }
    if addon.currency != sub.currency {
        return Err(Refusal::invalid(
            "$.addon.id",
            "addon_currency_mismatch",
            format!(
                "add-on {} is in {}, the subscription in {}",
                addon.key, addon.currency, sub.currency
            ),
        ));
    }
    if addon.instance_type == "single" && quantity > 1 {
        return Err(Refusal::invalid(
            "$.quantity",
            "addon_single_instance",
            format!(
                "add-on {} is single-instance: quantity is 0 or 1, not {quantity}",
                addon.key
            ),
        ));
    }
    if sub.plan.is_some() {
        let Some((from_phase, max)) = offered else {
            return Err(Refusal::invalid(
                "$.addon.id",
                "addon_not_offered",
                format!(
                    "the subscription's plan does not offer add-on {}",
                    addon.key
                ),
            ));
        };
        if let Some(max) = max
            && i64::from(quantity) > max
        {
            return Err(Refusal::invalid(
                "$.quantity",
                "addon_max_quantity_exceeded",
                format!(
                    "the plan offers at most {max} of add-on {}, not {quantity}",
                    addon.key
                ),
            ));
        }
        let from_index = sub.phases.iter().position(|p| p.key == from_phase);
        let at_index = sub
            .phase_at(at)
            .and_then(|w| sub.phases.iter().position(|p| p.key == w.phase.key));
        if let (Some(f), Some(a)) = (from_index, at_index)
            && a < f
            && quantity > 0
        {
            return Err(Refusal::invalid(
                "$.timing",
                "addon_phase_not_offered",
                format!("add-on {} is offered from phase {from_phase} on", addon.key),
            ));
        }
    }
    Ok(())
}
