//! Invoices as OpenMeter's v1 API shows them and billing stores them (one JSON document each,
//! lines embedded): parties, periods, lines with their detailed lines, totals, statuses and the
//! actions each status allows. Plain data; the lifecycle lives in [`super::lifecycle`].

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::profile::{Party, Workflow};
use crate::catalog::model::{DiscountsDoc, PriceDoc};

/// A time as `nextActionAt` is stored: UTC, milliseconds, so text order is time order.
pub fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// Inclusive start.
    pub from: DateTime<Utc>,
    /// Exclusive end.
    pub to: DateTime<Utc>,
}

/// OpenMeter's `InvoiceTotals`: `total = amount + chargesTotal + taxesExclusiveTotal −
/// discountsTotal − creditsTotal`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Regular charges before discounts.
    pub amount: Decimal,
    /// Commitment top-ups (minimum spend).
    pub charges_total: Decimal,
    /// Amount discounts.
    pub discounts_total: Decimal,
    /// Credits applied.
    pub credits_total: Decimal,
    /// Taxes included in the amounts.
    pub taxes_inclusive_total: Decimal,
    /// Taxes added on top.
    pub taxes_exclusive_total: Decimal,
    /// All taxes.
    pub taxes_total: Decimal,
    /// What is owed.
    pub total: Decimal,
}

impl Totals {
    /// Adds `o` field by field.
    pub fn add(&mut self, o: &Totals) {
        self.amount += o.amount;
        self.charges_total += o.charges_total;
        self.discounts_total += o.discounts_total;
        self.credits_total += o.credits_total;
        self.taxes_inclusive_total += o.taxes_inclusive_total;
        self.taxes_exclusive_total += o.taxes_exclusive_total;
        self.taxes_total += o.taxes_total;
        self.total += o.total;
    }

    /// The same amounts without trailing zeros (`50` rather than `50.00`), as OpenMeter prints
    /// them.
    pub fn normalized(mut self) -> Totals {
        for v in [
            &mut self.amount,
            &mut self.charges_total,
            &mut self.discounts_total,
            &mut self.credits_total,
            &mut self.taxes_inclusive_total,
            &mut self.taxes_exclusive_total,
            &mut self.taxes_total,
            &mut self.total,
        ] {
            *v = v.normalize();
        }
        self
    }

    /// Whether the fields add up to `total`.
    pub fn adds_up(&self) -> bool {
        self.total
            == self.amount + self.charges_total + self.taxes_exclusive_total
                - self.discounts_total
                - self.credits_total
    }
}

/// The customer as the invoice records it (a snapshot at the invoice's creation).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceCustomer {
    /// Customer id.
    pub id: String,
    /// Customer key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Name.
    pub name: String,
    /// Subjects whose usage is the customer's.
    #[serde(default)]
    pub usage_attribution: Value,
    /// Addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Value>,
    /// Email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_email: Option<String>,
}

/// A line's rate card (`featureKey`, `price`, `discounts`, `taxConfig`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineRateCard {
    /// The feature whose meter gives the quantity (usage-based prices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_key: Option<String>,
    /// The price; `None` is free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<PriceDoc>,
    /// Discounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discounts: Option<DiscountsDoc>,
    /// Tax config, kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_config: Option<Value>,
}

/// Lines billed progressively share a group: the whole service period and what earlier lines of
/// the group billed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SplitLineGroup {
    /// Group id (the first line's id).
    pub id: String,
    /// The whole service period.
    pub period: Period,
    /// What earlier lines of the group billed, after discounts (for the maximum commitment).
    #[serde(default)]
    pub previously_billed: Decimal,
}

/// An amount taken off a detailed line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AmountDiscount {
    /// Id.
    pub id: String,
    /// `ratecard_percentage` or `maximum_spend`.
    pub reason: String,
    /// The amount.
    pub amount: Decimal,
    /// Human text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Free units taken off a usage line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UsageDiscount {
    /// Id.
    pub id: String,
    /// `ratecard_usage`.
    pub reason: String,
    /// Units taken off this line.
    pub quantity: Decimal,
    /// Units already used by the period's earlier usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_line_period_quantity: Option<Decimal>,
}

/// A line's discounts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LineDiscounts {
    /// Amount discounts.
    #[serde(default)]
    pub amount: Vec<AmountDiscount>,
    /// Usage discounts.
    #[serde(default)]
    pub usage: Vec<UsageDiscount>,
}

/// A detailed line: one charge of a usage line (`flat_fee`), as the rating engine made it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DetailedLine {
    /// Id (stable: derived from the parent and the reference).
    pub id: String,
    /// Rate card name and what the charge is for.
    pub name: String,
    /// Always `flat_fee`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `valid`.
    pub status: String,
    /// `system`.
    pub managed_by: String,
    /// `regular` or `commitment`.
    pub category: String,
    /// Stable reference, e.g. `graduated-tiered-2-price-usage`.
    pub child_unique_reference_id: String,
    /// Currency.
    pub currency: String,
    /// Service period.
    pub period: Period,
    /// When invoiced.
    pub invoice_at: DateTime<Utc>,
    /// Price of one unit.
    pub per_unit_amount: Decimal,
    /// Units.
    pub quantity: Decimal,
    /// `in_advance` or `in_arrears`.
    pub payment_term: String,
    /// `{price: {type: flat, amount}, quantity}`.
    pub rate_card: Value,
    /// Totals.
    pub totals: Totals,
    /// Discounts.
    pub discounts: LineDiscounts,
}

/// An invoice line (usage-based or flat, manual or from a subscription).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// Deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// `manual`, `subscription` or `system`.
    pub managed_by: String,
    /// `valid`.
    pub status: String,
    /// `usage_based` (deprecated, kept for old clients).
    #[serde(rename = "type")]
    pub kind: String,
    /// Currency.
    pub currency: String,
    /// Service period.
    pub period: Period,
    /// When the line is to be invoiced.
    pub invoice_at: DateTime<Utc>,
    /// The invoice it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<Value>,
    /// What it charges.
    pub rate_card: LineRateCard,
    /// Deprecated copy of `rateCard.featureKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_key: Option<String>,
    /// Deprecated copy of `rateCard.price`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<PriceDoc>,
    /// Quantity after the usage discount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<Decimal>,
    /// Metered quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metered_quantity: Option<Decimal>,
    /// Usage before this line in its split group (after the usage discount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_line_period_quantity: Option<Decimal>,
    /// Metered usage before this line in its split group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metered_pre_line_period_quantity: Option<Decimal>,
    /// Totals.
    #[serde(default)]
    pub totals: Totals,
    /// Detailed lines.
    #[serde(default)]
    pub children: Vec<DetailedLine>,
    /// Discounts on the line itself (usage discounts).
    #[serde(default)]
    pub discounts: LineDiscounts,
    /// The subscription item it comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Value>,
    /// Its progressive-billing group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_line_group: Option<SplitLineGroup>,
    /// Identity of a generated line (`{subscription}/{phase}/{item}/v[..]/period[..]`): a line
    /// generated twice is stored once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_unique_reference_id: Option<String>,
    /// External ids given by an invoicing app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ids: Option<Value>,
}

impl Line {
    /// A flat price (billed as quantity 1, never from a meter).
    pub fn is_flat(&self) -> bool {
        matches!(self.rate_card.price, Some(PriceDoc::Flat { .. }) | None)
    }

    /// Whether the line counts (not deleted).
    pub fn live(&self) -> bool {
        self.deleted_at.is_none()
    }
}

/// What can be done to an invoice now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AvailableActions {
    /// `{resultingState}` of each action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advance: Option<Value>,
    /// Approve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve: Option<Value>,
    /// Delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<Value>,
    /// Retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Value>,
    /// Snapshot quantities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_quantities: Option<Value>,
    /// Void.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub void: Option<Value>,
    /// Invoice (gathering invoices: invoice pending lines now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<Value>,
}

/// `statusDetails`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    /// Issued or later: lines can no longer change.
    pub immutable: bool,
    /// A step failed.
    pub failed: bool,
    /// The full status, e.g. `draft.waiting_auto_approval`.
    pub extended_status: String,
    /// What can be done now.
    pub available_actions: AvailableActions,
}

/// The apps an invoice runs on (ids).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InvoiceApps {
    /// Tax app.
    pub tax: Value,
    /// Invoicing app.
    pub invoicing: Value,
    /// Payment app.
    pub payment: Value,
}

/// The workflow an invoice was made under (snapshotted from its profile).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceWorkflow {
    /// The apps.
    pub apps: InvoiceApps,
    /// The profile it came from.
    pub source_billing_profile_id: String,
    /// The settings.
    pub workflow: Workflow,
}

/// An invoice.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invoice {
    /// Id.
    pub id: String,
    /// `standard`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Number (`GATHER-…`, `DRAFT-…`, then the app's on issuing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Short status: `gathering`, `draft`, `issuing`, `issued`, `payment_processing`, `paid`,
    /// `overdue`, `uncollectible`, `voided` (and `deleted` for deleted drafts).
    pub status: String,
    /// Extended status and available actions.
    pub status_details: StatusDetails,
    /// The seller.
    pub supplier: Party,
    /// The buyer.
    pub customer: InvoiceCustomer,
    /// Currency.
    pub currency: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// Deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// Issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<DateTime<Utc>>,
    /// End of the draft period (auto-advance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_until: Option<DateTime<Utc>>,
    /// When quantities were taken from the meters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity_snapshoted_at: Option<DateTime<Utc>>,
    /// When usage is collected (period end + collection interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection_at: Option<DateTime<Utc>>,
    /// Payment due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    /// Span of the lines' service periods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    /// Voided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voided_at: Option<DateTime<Utc>>,
    /// Sent to the customer (issued by the app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_to_customer_at: Option<DateTime<Utc>>,
    /// Workflow and apps.
    pub workflow: InvoiceWorkflow,
    /// Lines.
    #[serde(default)]
    pub lines: Vec<Line>,
    /// Totals.
    pub totals: Totals,
    /// Payment terms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<Value>,
    /// Problems found while validating.
    #[serde(default)]
    pub validation_issues: Vec<Value>,
    /// Ids in the apps' systems.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ids: Option<Value>,
    /// `customer/currency` while gathering (one gathering invoice per pair, kept by the database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gathering_key: Option<String>,
    /// When the scheduler must act on it next (see [`stamp`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_action_at: Option<String>,
}

impl Invoice {
    /// The extended status.
    pub fn ext(&self) -> &str {
        &self.status_details.extended_status
    }

    /// Live lines.
    pub fn live_lines(&self) -> impl Iterator<Item = &Line> {
        self.lines.iter().filter(|l| l.live())
    }

    /// Sets the extended status; the short status, immutability and actions follow from it.
    pub fn set_status(&mut self, extended: &str) {
        let short = extended.split('.').next().unwrap_or(extended);
        self.status = short.to_owned();
        self.status_details.extended_status = extended.to_owned();
        self.status_details.immutable = !matches!(short, "gathering" | "draft");
        self.status_details.failed = extended.ends_with("failed");
        self.status_details.available_actions = actions(extended);
    }

    /// Totals and period recomputed from the live lines.
    pub fn recompute(&mut self) {
        let mut t = Totals::default();
        let mut period: Option<Period> = None;
        for l in self.lines.iter().filter(|l| l.live()) {
            t.add(&l.totals);
            period = Some(match period {
                None => l.period,
                Some(p) => Period {
                    from: p.from.min(l.period.from),
                    to: p.to.max(l.period.to),
                },
            });
        }
        self.totals = t.normalized();
        self.period = period;
    }
}

fn state(s: &str) -> Option<Value> {
    Some(serde_json::json!({ "resultingState": s }))
}

/// What each extended status allows.
pub fn actions(extended: &str) -> AvailableActions {
    let mut a = AvailableActions::default();
    match extended {
        "gathering" => a.invoice = Some(serde_json::json!({})),
        "draft.waiting_for_collection" => {
            a.snapshot_quantities = state("draft.waiting_auto_approval");
            a.advance = state("draft.waiting_auto_approval");
            a.delete = state("deleted");
        }
        "draft.waiting_auto_approval" => {
            a.advance = state("issued");
            a.approve = state("issued");
            a.delete = state("deleted");
        }
        "draft.manual_approval_needed" => {
            a.approve = state("issued");
            a.delete = state("deleted");
        }
        s if s.starts_with("draft.") => a.delete = state("deleted"),
        "issued"
        | "payment_processing.pending"
        | "payment_processing.failed"
        | "payment_processing.action_required"
        | "overdue" => a.void = state("voided"),
        _ => {}
    }
    a
}
