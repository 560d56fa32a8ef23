//! Settling every invoice due at one instant together — the scheduler's way of running
//! [`lifecycle::settle`] for many invoices. The invoices are read in one query per 500, their
//! customers' invoice counts in one more, and each invoice's due steps are then taken in memory
//! (a gathering invoice's lines collected into a new draft, and that draft's steps that fall due
//! at once — rated, issued, paid) with one set of [`Lookups`] (the app, features, rules read
//! once). Each invoice's result is one unit: the compare-and-set of every document it changes and
//! the notifications of every status change it went through (the same `invoice.created` /
//! `invoice.updated` events, with the same documents, as storing each step on its own would
//! record). Many units are stored per transaction ([`Store::swap_entities_each`]), each in its
//! own savepoint: a unit whose compare-and-set finds another text (another replica, an API call
//! meanwhile) is rolled back alone and that invoice is settled again the one-by-one way, from
//! what is stored. A kill -9 loses a whole transaction or nothing, and the next run finds what
//! was stored moved on: nothing is done twice.

use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};

use super::lifecycle::{self, Collect, InvoiceError, KIND, StatusLog};
use super::lookups::Lookups;
use super::model::Invoice;
use super::usage::Prefetched;
use crate::store::documents::Stmt;
use crate::store::{Store, StoreError};

/// The statuses an invoice went through with the invoice after each (as [`lifecycle::settle`]
/// answers).
pub type Steps = Vec<(String, Invoice)>;

/// Units stored per transaction.
pub const UNITS_PER_TRANSACTION: usize = 64;

/// The invoices `ids` with their stored text (those that exist), in one read per 500.
pub async fn load_all(store: &Store, ids: &[String]) -> Result<Vec<(String, Invoice)>, StoreError> {
    let raws = store.get_entities_raw(KIND, ids).await?;
    raws.into_iter()
        .map(|raw| {
            let inv: Invoice = serde_json::from_str(&raw)
                .map_err(|e| StoreError::Decode(format!("invoice: {e}")))?;
            Ok((raw, inv))
        })
        .collect()
}

/// One invoice's steps, planned in memory, to be stored at once.
struct Unit {
    /// The invoice settled.
    id: String,
    /// Each changed document: its stored text (`None`: new) and what it becomes.
    docs: Vec<(Option<String>, Invoice)>,
    /// Every status change, for the log once stored.
    logged: Vec<StatusLog>,
    /// Their notifications.
    events: Vec<Stmt>,
    steps: Steps,
}

/// A transaction's units and whether each was stored.
type Stored = (Vec<Box<Unit>>, Vec<bool>);

/// What planning an invoice gave.
enum Planned {
    /// Nothing due.
    Nothing,
    /// Steps to store.
    Unit(Box<Unit>),
    /// Left to the one-by-one way (nothing billable on a due gathering invoice, a refused step).
    OneByOne,
}

/// The notifications of the status changes `(before, after)`.
async fn events_of(
    lk: &mut Lookups<'_>,
    changes: &[(Option<&Invoice>, &Invoice)],
) -> Result<Vec<Stmt>, StoreError> {
    let mut events = Vec::new();
    for (before, after) in changes {
        events.extend(lk.events(*before, after).await?);
    }
    Ok(events)
}

/// Plans the due steps of one stored invoice.
async fn plan(
    lk: &mut Lookups<'_>,
    raw: String,
    inv: Invoice,
    now: DateTime<Utc>,
) -> Result<Planned, InvoiceError> {
    if !lifecycle::is_due(&inv, now) {
        return Ok(Planned::Nothing);
    }
    let id = inv.id.clone();
    let unit = if inv.ext() == "gathering" {
        let how = Collect {
            as_of: now,
            line_ids: None,
            progressive: None,
        };
        let Some((rest, made)) = lifecycle::plan_collect(lk, &inv, &how, now).await? else {
            return Ok(Planned::OneByOne);
        };
        let mut draft = made.clone();
        let went = if lifecycle::is_due(&draft, now) {
            lifecycle::advance_due(lk, &mut draft, now).await?
        } else {
            Vec::new()
        };
        // The draft's creation and its later steps are recorded as storing them one after the
        // other would: invoice.created with the new draft, invoice.updated with the draft after.
        let mut changes = vec![(Some(&inv), &rest), (None, &made)];
        if !went.is_empty() {
            changes.push((Some(&made), &draft));
        }
        let events = events_of(lk, &changes).await?;
        let logged = changes
            .iter()
            .filter_map(|(b, a)| StatusLog::of(*b, a))
            .collect();
        let mut steps = Vec::with_capacity(went.len() + 1);
        steps.extend(went.into_iter().map(|s| (s, draft.clone())));
        steps.insert(0, ("created".to_owned(), made));
        Unit {
            id,
            docs: vec![(Some(raw), rest), (None, draft)],
            logged,
            events,
            steps,
        }
    } else {
        let mut after = inv.clone();
        let went = lifecycle::advance_due(lk, &mut after, now).await?;
        let events = events_of(lk, &[(Some(&inv), &after)]).await?;
        let logged = StatusLog::of(Some(&inv), &after).into_iter().collect();
        let steps = went.into_iter().map(|s| (s, after.clone())).collect();
        Unit {
            id,
            docs: vec![(Some(raw), after)],
            logged,
            events,
            steps,
        }
    };
    Ok(Planned::Unit(Box::new(unit)))
}

/// Runs every step due at `now` on the invoices `loaded` (as read by [`load_all`]), storing
/// [`UNITS_PER_TRANSACTION`] invoices' steps per transaction, `parallel` transactions at once.
/// Each invoice's steps (or why it refused), in the order given. A store failure fails the run.
pub async fn settle_all(
    store: &Store,
    loaded: Vec<(String, Invoice)>,
    now: DateTime<Utc>,
    pre: Option<&Prefetched>,
    parallel: usize,
) -> Result<Vec<(String, Result<Steps, InvoiceError>)>, StoreError> {
    let mut lk = Lookups::new(store, pre);
    let customers: Vec<String> = loaded
        .iter()
        .filter(|(_, inv)| lifecycle::is_due(inv, now))
        .map(|(_, inv)| inv.customer.id.clone())
        .collect();
    lk.read_counts(&customers).await?;

    let mut out: Vec<(String, Result<Steps, InvoiceError>)> = Vec::with_capacity(loaded.len());
    let mut units = Vec::new();
    let mut one_by_one = Vec::new();
    for (raw, inv) in loaded {
        let id = inv.id.clone();
        match plan(&mut lk, raw, inv, now).await {
            Ok(Planned::Nothing) => out.push((id, Ok(Vec::new()))),
            Ok(Planned::Unit(u)) => units.push(u),
            Ok(Planned::OneByOne) => one_by_one.push(id),
            Err(InvoiceError::Store(e)) => return Err(e),
            Err(_) => one_by_one.push(id),
        }
    }

    let chunks: Vec<Vec<Box<Unit>>> = {
        let mut chunks = Vec::new();
        let mut it = units.into_iter().peekable();
        while it.peek().is_some() {
            chunks.push(it.by_ref().take(UNITS_PER_TRANSACTION).collect());
        }
        chunks
    };
    let stored: Vec<Result<Stored, StoreError>> = stream::iter(chunks)
        .map(|mut chunk| async move {
            let events: Vec<Vec<Stmt>> = chunk
                .iter_mut()
                .map(|u| std::mem::take(&mut u.events))
                .collect();
            let batch = chunk
                .iter()
                .zip(events)
                .map(|(u, events)| {
                    let swaps = u
                        .docs
                        .iter()
                        .map(|(raw, after)| {
                            // Straight to text: no JSON value tree built and dropped.
                            let doc = serde_json::to_string(after)
                                .map_err(|e| StoreError::Decode(e.to_string()))?;
                            Ok((KIND, after.id.as_str(), raw.as_deref(), doc))
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    Ok((swaps, events))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let stored = store.swap_entities_each(batch).await?;
            Ok((chunk, stored))
        })
        .buffered(parallel.max(1))
        .collect()
        .await;

    let mut again = Vec::new();
    for r in stored {
        let (chunk, stored) = r?;
        for (u, ok) in chunk.into_iter().zip(stored) {
            if !ok {
                // Someone changed it meanwhile: settle it again from what is stored.
                if let Some((_, after)) = u.docs.first() {
                    lk.forget(&after.customer.id);
                }
                one_by_one.push(u.id);
                continue;
            }
            for line in &u.logged {
                line.log();
            }
            // A step left due at this instant (more than 8 at once, lines left due on the
            // gathering invoice) is taken the one-by-one way.
            again.extend(
                u.docs
                    .iter()
                    .filter(|(_, after)| lifecycle::is_due(after, now))
                    .map(|(_, after)| after.id.clone()),
            );
            out.push((u.id, Ok(u.steps)));
        }
    }
    for id in one_by_one.into_iter().chain(again) {
        let r = lifecycle::settle_with(store, &id, now, pre).await;
        if let Err(InvoiceError::Store(e)) = r {
            return Err(e);
        }
        match out.iter_mut().find(|(i, _)| *i == id) {
            Some((_, Ok(steps))) => {
                if let Ok(more) = r {
                    steps.extend(more);
                }
            }
            _ => out.push((id, r)),
        }
    }
    Ok(out)
}
