//! The invoice state machine (OpenMeter's `billing/README.md` lifecycle):
//!
//! ```text
//! gathering ──(lines' invoiceAt reached, or "invoice now")──▶ draft.waiting_for_collection
//!   ──(collectionAt: period end + collection interval, or snapshot-quantities)──▶ quantities
//!   snapshotted ──▶ [draft.syncing: custom invoicing hook] ──▶ draft.waiting_auto_approval
//!   (auto-advance, until draftUntil) | draft.manual_approval_needed ──(approve / draftUntil)──▶
//!   [issuing.syncing: custom invoicing hook] ──▶ issued ──▶ paid (sandbox) |
//!   payment_processing.pending (custom invoicing) ──▶ paid | overdue | uncollectible | voided
//! ```
//!
//! Every change of an invoice is a compare-and-set of its document, and turning a gathering
//! invoice's lines into a draft is one transaction over both documents
//! ([`Store::swap_entities`]): whichever process (replica, or the same one after a kill -9) acts
//! first wins, and the others re-read and find nothing left to do — no invoice is made twice and
//! none is lost. Each change goes through [`commit`], which records the `invoice.created` /
//! `invoice.updated` notification in the same transaction.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::lookups::Lookups;
use super::model::{
    Invoice, InvoiceApps, InvoiceCustomer, InvoiceWorkflow, Line, Period, SplitLineGroup,
    StatusDetails, Totals, stamp,
};
use super::profile::{self, BillingProfile};
use super::rating::{self, Quantities};
use super::usage::{Prefetched, UsageReader};
use crate::app::{self, App, DraftSync, IssueSync};
use crate::catalog::model::PriceDoc;
use crate::entitlement::Customer;
use crate::meter::Aggregation;
use crate::pricing::Currency;
use crate::store::documents::Stmt;
use crate::store::{Store, StoreError};

/// The document kind.
pub const KIND: &str = "invoice";

/// Why an action cannot be done: the API turns these into problem+json.
#[derive(Debug, thiserror::Error)]
pub enum InvoiceError {
    /// No such invoice (or customer, profile…).
    #[error("{0}")]
    NotFound(String),
    /// Bad input, named.
    #[error("{0}")]
    Invalid(String),
    /// Not allowed in the invoice's status.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The notification a status change makes, if any: `invoice.created` for the first status after
/// gathering, `invoice.updated` for a later one; nothing for gathering invoices (OpenMeter).
pub(crate) fn event_kind(before: Option<&Invoice>, after: &Invoice) -> Option<&'static str> {
    if before.is_some_and(|b| b.ext() == after.ext()) {
        return None;
    }
    match before {
        _ if after.status == "gathering" => None,
        Some(b) if b.status != "gathering" => Some(crate::notification::kinds::INVOICE_UPDATED),
        // A gathering invoice emptied by collection is gone, not a new invoice.
        _ if after.status == "deleted" => None,
        _ => Some(crate::notification::kinds::INVOICE_CREATED),
    }
}

/// The statements recording the notification of a status change for every live rule of its
/// type ([`crate::notification::outbox::invoice_event_statements`]), to run in the transaction
/// that stores the change.
async fn change_events(
    store: &Store,
    before: Option<&Invoice>,
    after: &Invoice,
) -> Result<Vec<Stmt>, StoreError> {
    let Some(kind) = event_kind(before, after) else {
        return Ok(Vec::new());
    };
    let (rules, channels) = crate::notification::outbox::rules_and_channels(store, kind).await?;
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    let document = serde_json::to_value(after).map_err(|e| StoreError::Decode(e.to_string()))?;
    Ok(crate::notification::outbox::invoice_event_statements(
        &rules,
        &channels,
        kind,
        &document,
        after.updated_at,
    ))
}

/// Logs a stored status change.
pub(crate) fn log_change(before: Option<&Invoice>, after: &Invoice) {
    if let Some(line) = StatusLog::of(before, after) {
        line.log();
    }
}

/// A status change to log once it is stored.
pub(crate) struct StatusLog {
    invoice: String,
    customer: String,
    from: Option<String>,
    to: String,
}

impl StatusLog {
    /// The change from `before` to `after`, if the status changed.
    pub(crate) fn of(before: Option<&Invoice>, after: &Invoice) -> Option<StatusLog> {
        let from = before.map(|b| b.ext().to_owned());
        (from.as_deref() != Some(after.ext())).then(|| StatusLog {
            invoice: after.id.clone(),
            customer: after.customer.id.clone(),
            from,
            to: after.ext().to_owned(),
        })
    }

    /// Logs it.
    pub(crate) fn log(&self) {
        tracing::info!(
            invoice = %self.invoice, customer = %self.customer,
            from = self.from.as_deref().unwrap_or("-"), to = %self.to,
            "invoice status changed"
        );
    }
}

/// One invoice change to store: the stored text it replaces (`None`: a new invoice), the
/// invoice before (`None`: new) and after.
pub type Change<'a> = (Option<&'a str>, Option<&'a Invoice>, &'a Invoice);

/// The hook every invoice change goes through: stores `changes` (each a compare-and-set of the
/// invoice against its stored text) and `extra` documents' compare-and-sets in **one**
/// transaction, together with the `invoice.created` / `invoice.updated` notifications the status
/// changes make for every live rule of that type — an event is recorded in the same transaction
/// as the change that caused it, so a kill -9 can lose neither without the other.
/// `invoice.created` is keyed per rule and invoice, so it is never recorded twice. Whether it was
/// stored (`false`: someone changed one of the documents first; nothing was stored).
pub async fn commit(
    store: &Store,
    changes: &[Change<'_>],
    extra: Vec<(&str, &str, Option<&str>, Value)>,
) -> Result<bool, StoreError> {
    let mut swaps = Vec::with_capacity(changes.len() + extra.len());
    let mut events = Vec::new();
    for (raw, before, after) in changes {
        let doc = serde_json::to_value(after).map_err(|e| StoreError::Decode(e.to_string()))?;
        swaps.push((KIND, after.id.as_str(), *raw, doc));
        events.extend(change_events(store, *before, after).await?);
    }
    swaps.extend(extra);
    let stored = store.swap_entities_then(&swaps, events).await?;
    if stored {
        for (_, before, after) in changes {
            log_change(*before, after);
        }
    }
    Ok(stored)
}

/// Reads an invoice with its stored text (for compare-and-set).
pub async fn load(store: &Store, id: &str) -> Result<Option<(String, Invoice)>, StoreError> {
    let Some(raw) = store.get_entity_raw(KIND, id).await? else {
        return Ok(None);
    };
    let inv: Invoice =
        serde_json::from_str(&raw).map_err(|e| StoreError::Decode(format!("invoice {id}: {e}")))?;
    Ok(Some((raw, inv)))
}

/// Stores `after` if the invoice is still `raw` (with its notification, see [`commit`]).
async fn save(
    store: &Store,
    raw: &str,
    before: &Invoice,
    after: &Invoice,
) -> Result<bool, StoreError> {
    commit(store, &[(Some(raw), Some(before), after)], Vec::new()).await
}

/// The invoice's customer's subjects (its key and usage attribution).
pub fn subjects_of(c: &InvoiceCustomer) -> Vec<String> {
    let mut s: Vec<String> = c.key.iter().cloned().collect();
    s.extend(
        c.usage_attribution["subjectKeys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned)),
    );
    s.sort();
    s.dedup();
    s
}

/// A short reference to a customer for invoice numbers: its key (or id) in capitals.
fn customer_ref(c: &InvoiceCustomer) -> String {
    let base = c
        .key
        .clone()
        .unwrap_or_else(|| c.id.chars().take(8).collect());
    base.to_uppercase()
        .chars()
        .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' })
        .collect()
}

/// The customer as an invoice records it.
pub fn invoice_customer(c: &Customer) -> InvoiceCustomer {
    InvoiceCustomer {
        id: c.id.clone(),
        key: c.key.clone(),
        name: c.name.clone(),
        usage_attribution: json!({ "subjectKeys": c.usage_attribution.subject_keys }),
        addresses: None,
        primary_email: c.primary_email.clone(),
    }
}

/// The invoicing app of an invoice (the sandbox when it was uninstalled).
async fn invoicing_app(store: &Store, inv: &Invoice) -> Result<App, StoreError> {
    let id = inv.workflow.apps.invoicing["id"]
        .as_str()
        .unwrap_or_default();
    Ok(match store.get_entity::<App>(app::KIND, id).await? {
        Some(a) => a,
        None => app::sandbox_app(inv.created_at),
    })
}

fn currency(inv: &Invoice) -> Result<Currency, String> {
    Currency::from_code(&inv.currency).map_err(|e| format!("currency: {e}"))
}

/// A new, empty invoice of `customer` in `currency` under `profile`.
pub fn new_invoice(
    id: String,
    customer: InvoiceCustomer,
    currency: &str,
    profile: &BillingProfile,
    now: DateTime<Utc>,
) -> Invoice {
    let mut inv = Invoice {
        id,
        kind: "standard".into(),
        number: None,
        description: None,
        metadata: None,
        status: String::new(),
        status_details: StatusDetails::default(),
        supplier: profile.supplier.clone(),
        customer,
        currency: currency.to_owned(),
        created_at: now,
        updated_at: now,
        deleted_at: None,
        issued_at: None,
        draft_until: None,
        quantity_snapshoted_at: None,
        collection_at: None,
        due_at: None,
        period: None,
        voided_at: None,
        sent_to_customer_at: None,
        workflow: InvoiceWorkflow {
            apps: InvoiceApps {
                tax: profile.apps.tax.clone(),
                invoicing: profile.apps.invoicing.clone(),
                payment: profile.apps.payment.clone(),
            },
            source_billing_profile_id: profile.id.clone(),
            workflow: profile.workflow.clone(),
        },
        lines: Vec::new(),
        totals: Totals::default(),
        payment: Some(
            json!({"terms": {"type": "due_date", "dueAfter": profile.workflow.invoicing.due_after}}),
        ),
        validation_issues: Vec::new(),
        external_ids: None,
        gathering_key: None,
        next_action_at: None,
    };
    inv.set_status("gathering");
    inv
}

/// The gathering key of a customer and currency.
pub fn gathering_key(customer_id: &str, currency: &str) -> String {
    format!("{customer_id}/{currency}")
}

/// A gathering invoice's next action: the earliest `invoiceAt` of its lines.
pub(crate) fn gathering_next(inv: &mut Invoice) {
    inv.next_action_at = inv.live_lines().map(|l| l.invoice_at).min().map(stamp);
}

/// The customer's invoices.
pub async fn invoices_of(store: &Store, customer_id: &str) -> Result<Vec<Invoice>, StoreError> {
    store
        .list_entities_where(KIND, "customer_id", customer_id)
        .await
}

/// The customer's gathering invoice in `currency`, with its stored text.
pub async fn gathering_of(
    store: &Store,
    customer_id: &str,
    currency: &str,
) -> Result<Option<(String, Invoice)>, StoreError> {
    let key = gathering_key(customer_id, currency);
    let found: Vec<Invoice> = store
        .list_entities_where(KIND, "gathering_key", &key)
        .await?;
    match found.first() {
        Some(inv) => load(store, &inv.id).await,
        None => Ok(None),
    }
}

/// Adds `lines` to the customer's gathering invoice in `currency`, creating it if missing.
/// Returns the invoice, the stored lines and whether the invoice is new. A line with a
/// `childUniqueReferenceId` already on the invoice is not added again.
pub async fn add_pending_lines(
    store: &Store,
    customer: &Customer,
    currency: &str,
    mut lines: Vec<Line>,
    now: DateTime<Utc>,
) -> Result<(Invoice, Vec<Line>, bool), InvoiceError> {
    Currency::from_code(currency).map_err(|e| InvoiceError::Invalid(format!("currency: {e}")))?;
    for l in &mut lines {
        l.currency = currency.to_owned();
    }
    loop {
        let (raw, mut inv, is_new) = match gathering_of(store, &customer.id, currency).await? {
            Some((raw, inv)) => (Some(raw), inv, false),
            None => {
                let profile = profile::profile_for(store, &customer.id)
                    .await?
                    .ok_or_else(|| {
                        InvoiceError::Conflict(
                            "there is no default billing profile: create one with \
                             POST /api/v1/billing/profiles (\"default\": true)"
                                .into(),
                        )
                    })?;
                let mut inv = new_invoice(
                    super::new_id(),
                    invoice_customer(customer),
                    currency,
                    &profile,
                    now,
                );
                inv.gathering_key = Some(gathering_key(&customer.id, currency));
                (None, inv, true)
            }
        };
        let before = inv.clone();
        let mut added = Vec::new();
        for l in &lines {
            if l.child_unique_reference_id.is_some()
                && inv
                    .lines
                    .iter()
                    .any(|x| x.child_unique_reference_id == l.child_unique_reference_id)
            {
                continue;
            }
            let mut l = l.clone();
            l.invoice = Some(json!({ "id": inv.id }));
            added.push(l.clone());
            inv.lines.push(l);
        }
        if added.is_empty() && !is_new {
            return Ok((inv, added, false));
        }
        let n = invoices_of(store, &customer.id).await?.len();
        if inv.number.is_none() {
            inv.number = Some(format!(
                "GATHER-{}-{}-{}",
                customer_ref(&inv.customer),
                currency,
                n + 1
            ));
        }
        inv.updated_at = now;
        gathering_next(&mut inv);
        inv.recompute();
        // A lost compare-and-set: another request made or changed this customer's gathering
        // invoice first — add to it.
        let before = (!is_new).then_some(&before);
        if commit(store, &[(raw.as_deref(), before, &inv)], Vec::new()).await? {
            return Ok((inv, added, is_new));
        }
    }
}

/// Whether a usage line may be billed before its period ends.
async fn progressive_allowed(
    reader: &mut UsageReader<'_>,
    line: &Line,
    enabled: bool,
) -> Result<bool, StoreError> {
    if !enabled || line.is_flat() {
        return Ok(false);
    }
    if matches!(&line.rate_card.price, Some(PriceDoc::Tiered { mode, .. }) if mode == "volume") {
        return Ok(false);
    }
    let Some(key) = line.rate_card.feature_key.as_deref() else {
        return Ok(false);
    };
    Ok(matches!(
        reader.aggregation(key).await?,
        Some(Aggregation::Sum | Aggregation::Count | Aggregation::Max | Aggregation::UniqueCount)
    ))
}

/// How lines leave a gathering invoice.
#[derive(Debug, Clone)]
pub struct Collect {
    /// Bill up to here.
    pub as_of: DateTime<Utc>,
    /// Only these lines (all when `None`).
    pub line_ids: Option<Vec<String>>,
    /// Split usage lines at `as_of` (progressive billing); otherwise only lines whose
    /// `invoiceAt` has come are taken.
    pub progressive: Option<bool>,
}

/// Moves the billable lines of gathering invoice `id` into a new draft invoice, in one
/// transaction with the gathering invoice's change. `None` when nothing is billable (or another
/// process took the lines first).
pub async fn collect(
    store: &Store,
    id: &str,
    how: &Collect,
    now: DateTime<Utc>,
) -> Result<Option<Invoice>, InvoiceError> {
    loop {
        let Some((raw, gathering)) = load(store, id).await? else {
            return Ok(None);
        };
        if gathering.ext() != "gathering" {
            return Ok(None);
        }
        let mut lk = Lookups::new(store, None);
        let Some((rest, draft)) = plan_collect(&mut lk, &gathering, how, now).await? else {
            return Ok(None);
        };
        if commit(
            store,
            &[(Some(&raw), Some(&gathering), &rest), (None, None, &draft)],
            Vec::new(),
        )
        .await?
        {
            return Ok(Some(draft));
        }
        // The gathering invoice changed under us (new lines, or another process collected):
        // look again.
    }
}

/// What collecting `gathering` as `how` says makes, in memory: the gathering invoice after (its
/// lines left, or deleted when none is) and the new draft; `None` when nothing is billable.
/// The draft's number counts the customer's invoices in `lk` (and counts the draft there).
pub(crate) async fn plan_collect(
    lk: &mut Lookups<'_>,
    gathering: &Invoice,
    how: &Collect,
    now: DateTime<Utc>,
) -> Result<Option<(Invoice, Invoice)>, InvoiceError> {
    {
        let reader = &mut lk.reader;
        // Usage is kept per minute: a split falls on a minute boundary.
        let as_of = how
            .as_of
            .duration_trunc(TimeDelta::minutes(1))
            .unwrap_or(how.as_of);
        let mut left = Vec::new();
        let mut taken = Vec::new();
        for line in gathering.lines.iter().cloned() {
            let chosen = how
                .line_ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&line.id));
            if !chosen || !line.live() {
                left.push(line);
                continue;
            }
            if line.is_flat() {
                if line.invoice_at <= how.as_of {
                    taken.push(line);
                } else {
                    left.push(line);
                }
                continue;
            }
            if line.period.to <= how.as_of && line.invoice_at <= how.as_of.max(line.period.to) {
                taken.push(line);
                continue;
            }
            // Only "invoice now" splits a line; the scheduler bills whole lines when their
            // invoiceAt comes.
            if how.progressive == Some(true)
                && progressive_allowed(reader, &line, true).await?
                && as_of > line.period.from
                && as_of < line.period.to
            {
                let group = line.split_line_group.clone().unwrap_or(SplitLineGroup {
                    id: line.id.clone(),
                    period: line.period,
                    previously_billed: Decimal::ZERO,
                });
                let mut head = line.clone();
                head.id = super::new_id();
                head.period.to = as_of;
                head.invoice_at = as_of;
                head.split_line_group = Some(group.clone());
                head.created_at = now;
                let mut tail = line;
                tail.period.from = as_of;
                tail.split_line_group = Some(group);
                tail.updated_at = now;
                taken.push(head);
                left.push(tail);
                continue;
            }
            left.push(line);
        }
        if taken.is_empty() {
            return Ok(None);
        }
        let profile_wf = &gathering.workflow.workflow;
        let durations = profile_wf.durations();
        let n = lk.counts(&gathering.customer.id).await?.all;
        lk.made(&gathering.customer.id);
        let mut draft = gathering.clone();
        draft.id = super::new_id();
        draft.number = Some(format!("DRAFT-{}-{}", customer_ref(&draft.customer), n + 1));
        draft.created_at = now;
        draft.updated_at = now;
        draft.gathering_key = None;
        for l in &mut taken {
            l.invoice = Some(json!({ "id": draft.id }));
        }
        draft.lines = taken;
        let metered_at = draft
            .live_lines()
            .filter(|l| !l.is_flat())
            .map(|l| l.invoice_at)
            .max();
        let collection_at = match metered_at {
            Some(t) => durations.collection.after(t).unwrap_or(t).max(now),
            None => now,
        };
        draft.collection_at = Some(collection_at);
        draft.set_status("draft.waiting_for_collection");
        draft.next_action_at = Some(stamp(collection_at));
        draft.recompute();

        let mut rest = gathering.clone();
        rest.lines = left;
        rest.updated_at = now;
        if rest.live_lines().next().is_none() {
            // At most one gathering invoice per customer and currency, deleted when empty.
            rest.gathering_key = None;
            rest.deleted_at = Some(now);
            rest.set_status("deleted");
            rest.next_action_at = None;
        } else {
            gathering_next(&mut rest);
        }
        rest.recompute();
        Ok(Some((rest, draft)))
    }
}

/// What earlier lines of each split group billed (from the customer's other invoices).
async fn billed_before(
    store: &Store,
    inv: &Invoice,
) -> Result<BTreeMap<String, Decimal>, StoreError> {
    let mut out = BTreeMap::new();
    if !inv.lines.iter().any(|l| l.split_line_group.is_some()) {
        return Ok(out);
    }
    for other in invoices_of(store, &inv.customer.id).await? {
        if other.id == inv.id
            || other.status == "gathering"
            || other.status == "deleted"
            || other.status == "voided"
        {
            continue;
        }
        for l in other.live_lines() {
            if let Some(g) = &l.split_line_group {
                *out.entry(g.id.clone()).or_default() += l.totals.total;
            }
        }
    }
    Ok(out)
}

/// Rates every live line of `inv` with the meters' usage now.
pub async fn rate_all(
    store: &Store,
    inv: &mut Invoice,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    rate_all_with(store, inv, now, None).await
}

/// [`rate_all`], taking usage read ahead for many invoices from `pre` where it has it.
pub async fn rate_all_with(
    store: &Store,
    inv: &mut Invoice,
    now: DateTime<Utc>,
    pre: Option<&Prefetched>,
) -> Result<(), StoreError> {
    rate_all_in(&mut Lookups::new(store, pre), inv, now).await
}

/// [`rate_all`] with the features and usage of `lk`.
pub(crate) async fn rate_all_in(
    lk: &mut Lookups<'_>,
    inv: &mut Invoice,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let subjects = subjects_of(&inv.customer);
    let before = billed_before(lk.store(), inv).await?;
    let reader = &mut lk.reader;
    let cur = currency(inv);
    let mut issues = Vec::new();
    for line in inv.lines.iter_mut().filter(|l| l.deleted_at.is_none()) {
        if let Some(g) = &mut line.split_line_group {
            g.previously_billed = before.get(&g.id).copied().unwrap_or_default();
        }
        let q = if line.is_flat() {
            Quantities::default()
        } else {
            reader.quantities(line, &subjects).await?
        };
        let result = match &cur {
            Ok(c) => rating::rate_line(line, *c, q, now),
            Err(e) => Err(e.clone()),
        };
        if let Err(message) = result {
            issues.push(json!({
                "id": rating::child_id(&line.id, "rating"),
                "severity": "critical",
                "field": format!("lines[?(@.id=='{}')].rateCard", line.id),
                "code": "rating_failed",
                "component": "billing",
                "message": message,
            }));
        }
    }
    inv.validation_issues = issues;
    inv.recompute();
    Ok(())
}

/// After quantities are snapshotted: the app's draft hook, then approval or auto-advance.
fn after_snapshot(inv: &mut Invoice, app: &App, now: DateTime<Utc>) {
    if !inv.validation_issues.is_empty() {
        inv.set_status("draft.invalid");
        inv.next_action_at = None;
        return;
    }
    match app.on_draft_ready() {
        DraftSync::Wait => {
            inv.set_status("draft.syncing");
            inv.next_action_at = None;
        }
        DraftSync::Continue => ready_for_approval(inv, now),
    }
}

/// Waits for approval, or for the end of the draft period when auto-advancing.
pub fn ready_for_approval(inv: &mut Invoice, now: DateTime<Utc>) {
    let wf = &inv.workflow.workflow;
    if wf.invoicing.auto_advance {
        let base = inv
            .collection_at
            .unwrap_or(inv.created_at)
            .max(inv.created_at);
        let until = wf.durations().draft.after(base).unwrap_or(base).max(now);
        inv.draft_until = Some(until);
        inv.set_status("draft.waiting_auto_approval");
        inv.next_action_at = Some(stamp(until));
    } else {
        inv.set_status("draft.manual_approval_needed");
        inv.next_action_at = None;
    }
}

/// Issues `inv` through its app: deleted when it has no lines, waits at `issuing.syncing` for a
/// custom-invoicing hook, else finalized.
async fn issue(
    lk: &mut Lookups<'_>,
    inv: &mut Invoice,
    app: &App,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if inv.live_lines().next().is_none() {
        inv.deleted_at = Some(now);
        inv.set_status("deleted");
        inv.next_action_at = None;
        return Ok(());
    }
    // A draft has no `issuedAt`: the customer's issued invoices are all others.
    let seq = lk.counts(&inv.customer.id).await?.issued + 1;
    match app.on_issue(&customer_ref(&inv.customer), seq) {
        IssueSync::Wait => {
            inv.set_status("issuing.syncing");
            inv.next_action_at = None;
        }
        IssueSync::Issue { number } => {
            finalize(inv, app, number, None, now);
            lk.issued(&inv.customer.id);
        }
    }
    Ok(())
}

/// Gives the invoice its number and issues it; the app then takes payment.
pub fn finalize(
    inv: &mut Invoice,
    app: &App,
    number: String,
    sent_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) {
    let wf = inv.workflow.workflow.clone();
    inv.number = Some(number);
    inv.issued_at = Some(now);
    inv.sent_to_customer_at = Some(sent_at.unwrap_or(now));
    let base = if wf.invoicing.auto_advance {
        inv.draft_until.unwrap_or(now)
    } else {
        now
    };
    let due = wf.durations().due.after(base).unwrap_or(base);
    inv.due_at = Some(due.duration_trunc(TimeDelta::seconds(1)).unwrap_or(due));
    inv.updated_at = now;
    inv.next_action_at = None;
    inv.set_status("issued");
    let paid = app.after_issued(inv.metadata.as_ref());
    inv.set_status(&paid);
}

/// Runs what is due on invoice `id` at `now`, step after step, until it waits for a later time,
/// for someone else (approval, an integration's callback) or is final. Returns the extended
/// statuses it went through. Safe to call from any number of processes at once.
pub async fn settle(
    store: &Store,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<(String, Invoice)>, InvoiceError> {
    settle_with(store, id, now, None).await
}

/// [`settle`], rating with usage read ahead in `pre` where it has it.
pub async fn settle_with(
    store: &Store,
    id: &str,
    now: DateTime<Utc>,
    pre: Option<&Prefetched>,
) -> Result<Vec<(String, Invoice)>, InvoiceError> {
    let mut out = Vec::new();
    for _ in 0..64 {
        let Some((raw, inv)) = load(store, id).await? else {
            break;
        };
        let due = inv
            .next_action_at
            .as_deref()
            .is_some_and(|t| t <= stamp(now).as_str());
        if !due {
            break;
        }
        if inv.ext() == "gathering" {
            let made = collect(
                store,
                id,
                &Collect {
                    as_of: now,
                    line_ids: None,
                    progressive: None,
                },
                now,
            )
            .await?;
            match made {
                Some(draft) => {
                    out.push(("created".to_owned(), draft.clone()));
                    out.extend(Box::pin(settle_with(store, &draft.id, now, pre)).await?);
                }
                None => {
                    // Nothing billable after all (lines changed): move the next action on.
                    let mut after = inv.clone();
                    gathering_next(&mut after);
                    if after
                        .next_action_at
                        .as_deref()
                        .is_some_and(|t| t <= stamp(now).as_str())
                    {
                        after.next_action_at = None;
                    }
                    save(store, &raw, &inv, &after).await?;
                }
            }
            continue;
        }
        // Steps that fall due at once (a P0D draft period: collected, then issued) are taken in
        // memory and stored by one compare-and-set.
        let mut after = inv.clone();
        let went = advance_due(&mut Lookups::new(store, pre), &mut after, now).await?;
        if save(store, &raw, &inv, &after).await? {
            out.extend(went.into_iter().map(|s| (s, after.clone())));
        }
    }
    Ok(out)
}

/// Takes in memory the steps of `inv` that fall due at `now` one after the other (a P0D draft
/// period: collected, then issued), at most 8; the extended statuses it went through.
pub(crate) async fn advance_due(
    lk: &mut Lookups<'_>,
    inv: &mut Invoice,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let mut went = Vec::new();
    loop {
        advance_step(lk, inv, now).await?;
        went.push(inv.ext().to_owned());
        if !is_due(inv, now) || went.len() >= 8 {
            return Ok(went);
        }
    }
}

/// Whether the invoice's next action is at or before `now`.
pub(crate) fn is_due(inv: &Invoice, now: DateTime<Utc>) -> bool {
    inv.next_action_at
        .as_deref()
        .is_some_and(|t| t <= stamp(now).as_str())
}

/// The automatic step of a draft whose time has come.
async fn advance_step(
    lk: &mut Lookups<'_>,
    inv: &mut Invoice,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let app = lk.app(inv).await?;
    inv.updated_at = now;
    match inv.ext() {
        "draft.waiting_for_collection" => {
            rate_all_in(lk, inv, now).await?;
            inv.quantity_snapshoted_at = Some(now);
            after_snapshot(inv, &app, now);
        }
        "draft.waiting_auto_approval" => issue(lk, inv, &app, now).await?,
        _ => inv.next_action_at = None,
    }
    Ok(())
}

/// A user's or integration's action on an invoice.
#[derive(Debug, Clone)]
pub enum Action {
    /// Next automatic step now.
    Advance,
    /// Approve a draft.
    Approve,
    /// Take quantities now instead of waiting for the collection time.
    SnapshotQuantities,
    /// Retry a failed step.
    Retry,
    /// Void an issued invoice.
    Void,
    /// Delete a draft.
    Delete,
    /// Custom invoicing: the draft is synchronised.
    DraftSynchronized {
        /// Number given by the integration.
        number: Option<String>,
        /// External id.
        external_id: Option<String>,
    },
    /// Custom invoicing: issued in the integration.
    IssuingSynchronized {
        /// Number given by the integration.
        number: Option<String>,
        /// When it was sent.
        sent_at: Option<DateTime<Utc>>,
        /// Payment external id.
        payment_external_id: Option<String>,
    },
    /// Custom invoicing: the payment status.
    PaymentStatus(String),
}

/// Applies `action` to invoice `id` (by compare-and-set, retried if someone else changed it
/// meanwhile), then settles it. Refused with a reason naming the status when not allowed.
pub async fn act(
    store: &Store,
    id: &str,
    action: Action,
    now: DateTime<Utc>,
) -> Result<Invoice, InvoiceError> {
    loop {
        let (raw, inv) = load(store, id)
            .await?
            .ok_or_else(|| InvoiceError::NotFound(format!("invoice {id} not found")))?;
        let ext = inv.ext().to_owned();
        let refuse = |what: &str| {
            Err(InvoiceError::Conflict(format!(
                "invoice {id} is {ext}: it cannot be {what} now"
            )))
        };
        let mut after = inv.clone();
        after.updated_at = now;
        let app = invoicing_app(store, &inv).await?;
        match &action {
            Action::Advance => match ext.as_str() {
                "draft.waiting_for_collection" => {
                    after.collection_at = Some(now);
                    advance_step(&mut Lookups::new(store, None), &mut after, now).await?
                }
                "draft.waiting_auto_approval" => {
                    advance_step(&mut Lookups::new(store, None), &mut after, now).await?
                }
                _ => return refuse("advanced"),
            },
            Action::SnapshotQuantities => match ext.as_str() {
                "draft.waiting_for_collection" => {
                    // Collected now rather than at the collection time.
                    after.collection_at = Some(now);
                    advance_step(&mut Lookups::new(store, None), &mut after, now).await?
                }
                _ => return refuse("snapshotted"),
            },
            Action::Approve => match ext.as_str() {
                "draft.manual_approval_needed" | "draft.waiting_auto_approval" => {
                    issue(&mut Lookups::new(store, None), &mut after, &app, now).await?
                }
                _ => return refuse("approved"),
            },
            Action::Retry => match ext.as_str() {
                "draft.invalid" => {
                    rate_all(store, &mut after, now).await?;
                    after_snapshot(&mut after, &app, now);
                }
                _ => return refuse("retried"),
            },
            Action::Delete => {
                if !ext.starts_with("draft.") {
                    return Err(InvoiceError::Conflict(format!(
                        "invoice {id} is {ext}: only drafts can be deleted (void an issued invoice)"
                    )));
                }
                after.deleted_at = Some(now);
                after.set_status("deleted");
                after.next_action_at = None;
            }
            Action::Void => {
                if after.status_details.available_actions.void.is_none() {
                    return refuse("voided");
                }
                after.voided_at = Some(now);
                after.set_status("voided");
                after.next_action_at = None;
            }
            Action::DraftSynchronized {
                number,
                external_id,
            } => {
                if ext != "draft.syncing" {
                    return refuse("synchronized as a draft");
                }
                if let Some(n) = number {
                    after.number = Some(n.clone());
                }
                if let Some(e) = external_id {
                    after.external_ids = Some(json!({ "invoicing": e }));
                }
                ready_for_approval(&mut after, now);
            }
            Action::IssuingSynchronized {
                number,
                sent_at,
                payment_external_id,
            } => {
                if ext != "issuing.syncing" {
                    return refuse("synchronized as issued");
                }
                let seq = invoices_of(store, &inv.customer.id)
                    .await?
                    .iter()
                    .filter(|i| i.issued_at.is_some())
                    .count()
                    + 1;
                let number = number.clone().unwrap_or_else(|| {
                    app::custom_invoicing::generated_number(&customer_ref(&inv.customer), seq)
                });
                if let Some(p) = payment_external_id {
                    let mut ids = after.external_ids.clone().unwrap_or_else(|| json!({}));
                    ids["payment"] = Value::String(p.clone());
                    after.external_ids = Some(ids);
                }
                finalize(&mut after, &app, number, *sent_at, now);
            }
            Action::PaymentStatus(trigger) => {
                let Some(to) = app::custom_invoicing::payment_status(trigger) else {
                    return Err(InvoiceError::Invalid(format!(
                        "trigger: {trigger:?} is not one of paid, payment_failed, \
                         payment_uncollectible, payment_overdue, action_required, void"
                    )));
                };
                if !matches!(
                    inv.status.as_str(),
                    "issued" | "payment_processing" | "overdue"
                ) {
                    return refuse("given a payment status");
                }
                if to == "voided" {
                    after.voided_at = Some(now);
                }
                after.set_status(to);
            }
        }
        if save(store, &raw, &inv, &after).await? {
            settle(store, id, now).await?;
            let (_, fin) = load(store, id)
                .await?
                .ok_or_else(|| InvoiceError::NotFound(format!("invoice {id} not found")))?;
            return Ok(fin);
        }
    }
}

/// The view of an invoice whose quantities are not taken yet (gathering, or a draft waiting for
/// collection): its lines rated with the usage so far (not stored).
pub async fn live_view(
    store: &Store,
    mut inv: Invoice,
    now: DateTime<Utc>,
) -> Result<Invoice, StoreError> {
    if inv.status == "gathering" || inv.ext() == "draft.waiting_for_collection" {
        rate_all(store, &mut inv, now).await?;
    }
    Ok(inv)
}

/// An invoice of hand-made lines rated as they would be, stored nowhere
/// (`customer_invoice.simulate_invoice`): each line's quantity is given.
pub fn simulate(
    mut inv: Invoice,
    quantities: &[(Decimal, Decimal)],
    now: DateTime<Utc>,
) -> Result<Invoice, InvoiceError> {
    let cur = currency(&inv).map_err(InvoiceError::Invalid)?;
    for (i, (line, (q, pre))) in inv.lines.iter_mut().zip(quantities).enumerate() {
        let q = Quantities {
            metered: *q,
            metered_pre: *pre,
        };
        if !pre.is_zero() && line.split_line_group.is_none() {
            // A line with usage before it is a later line of its period.
            line.split_line_group = Some(SplitLineGroup {
                id: line.id.clone(),
                period: Period {
                    from: line.period.from - TimeDelta::seconds(1),
                    to: line.period.to,
                },
                previously_billed: Decimal::ZERO,
            });
        }
        rating::rate_line(line, cur, q, now)
            .map_err(|e| InvoiceError::Invalid(format!("lines[{i}]: {e}")))?;
    }
    inv.recompute();
    inv.set_status("draft.created");
    Ok(inv)
}
