//! Invoices whose time has come ([`crate::invoice::lifecycle`]): a gathering invoice's lines
//! reaching their `invoiceAt` become a draft; a draft's collection time snapshots its quantities;
//! the end of its draft period issues it (auto-advance), and the app takes it on. What is due is
//! read from the database (`invoices.next_action_at`), and every step is a compare-and-set of the
//! invoice, so repeating a step after a kill -9, or two replicas acting at once, changes an
//! invoice once. The invoices due at one instant are settled together ([`batch`]): planned in
//! memory, many per transaction.
//!
//! On the simulated clock a clock advance runs this work; on real time the scheduler's runner
//! ([`super::runner`]) does.

use chrono::{DateTime, TimeDelta, Utc};
use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use serde_json::{Value, json};

use super::{Done, Due, DueQueue, DueWork, Happening, ListQueue};
use crate::invoice::model::{Invoice, stamp};
use crate::invoice::usage::Prefetched;
use crate::invoice::{batch, lifecycle, subscription};
use crate::store::{Store, StoreError};

/// At most this many invoices are taken per instant (the clock plans again after a writing
/// instant, so the rest follow a millisecond later).
pub const BATCH: usize = 500;

/// Invoices settled at once by [`run_ids`] (and subscriptions synced at once) unless the
/// environment's `TOLLGATE_INVOICING_CONCURRENCY` says otherwise (`1`: as before — one after the
/// other, each line's usage read on its own; the invoicing benchmark measures both).
pub const CONCURRENT: usize = 32;

/// On PostgreSQL (no group commit to gain; each transaction is its own round trips) fewer at
/// once, leaving most of the connection pool to the API and ingest.
pub const CONCURRENT_POSTGRES: usize = 4;

/// How many invoices `store` settles at once: `TOLLGATE_INVOICING_CONCURRENCY` (read once; at
/// least 1) if set, else [`CONCURRENT`] on SQLite and [`CONCURRENT_POSTGRES`] on PostgreSQL.
pub fn concurrency(store: &Store) -> usize {
    static N: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let set = *N.get_or_init(|| {
        std::env::var("TOLLGATE_INVOICING_CONCURRENCY")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map(|n| n.max(1))
    });
    set.unwrap_or(if store.is_exclusive() {
        CONCURRENT
    } else {
        CONCURRENT_POSTGRES
    })
}

/// The invoices work.
pub struct Invoices;

/// What planning needs of a due invoice (its document is read whole when it is settled).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DueInvoice {
    id: String,
    next_action_at: Option<String>,
}

fn happening(at: DateTime<Utc>, kind: &str, inv: &Invoice) -> Happening {
    let mut detail = serde_json::Map::new();
    detail.insert("invoiceId".into(), Value::String(inv.id.clone()));
    detail.insert("customerId".into(), Value::String(inv.customer.id.clone()));
    detail.insert("status".into(), Value::String(inv.ext().to_owned()));
    if let Some(n) = &inv.number {
        detail.insert("number".into(), Value::String(n.clone()));
    }
    detail.insert("total".into(), json!(inv.totals.total));
    Happening {
        at,
        kind: kind.into(),
        detail,
    }
}

/// Runs every invoice step due at `at` for the invoices `ids`: read in one query, their usage
/// read ahead per feature and period, their steps planned in memory and stored
/// [`batch::UNITS_PER_TRANSACTION`] invoices per transaction, each invoice's changes and
/// notifications in its own savepoint ([`batch::settle_all`]) — a kill -9 loses at most the
/// transactions not yet committed, which the next run makes again (nothing twice: the invoices
/// they moved are found moved). With `TOLLGATE_INVOICING_CONCURRENCY=1`: one invoice after the
/// other, each step its own transaction, each line's usage read on its own (the behaviour
/// before; the invoicing benchmark's baseline).
pub async fn run_ids(
    store: &Store,
    at: DateTime<Utc>,
    ids: impl IntoIterator<Item = String>,
) -> Result<Done, StoreError> {
    let ids: Vec<String> = ids.into_iter().collect();
    let mut done = Done::default();
    let settled: Vec<(String, Result<batch::Steps, lifecycle::InvoiceError>)> =
        if concurrency(store) > 1 {
            let loaded = batch::load_all(store, &ids).await?;
            let pre = read_ahead(store, at, &loaded).await?;
            // On PostgreSQL one transaction at a time: one pooled connection, the rest left to
            // the API and ingest.
            let parallel = if store.is_exclusive() { 4 } else { 1 };
            batch::settle_all(store, loaded, at, Some(&pre), parallel).await?
        } else {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let r = lifecycle::settle_with(store, &id, at, None).await;
                out.push((id, r));
            }
            out
        };
    for (id, r) in settled {
        let steps = match r {
            Ok(s) => s,
            Err(lifecycle::InvoiceError::Store(e)) => return Err(e),
            Err(e) => {
                tracing::warn!(invoice = %id, error = %e, "invoice step refused");
                continue;
            }
        };
        for (what, inv) in steps {
            done.wrote = true;
            let kind = match what.as_str() {
                "created" => "invoice.created",
                s if s.starts_with("draft.") => "invoice.draft",
                "issued" | "paid" => "invoice.issued",
                "deleted" => "invoice.deleted",
                _ => "invoice.updated",
            };
            done.happened.push(happening(at, kind, &inv));
        }
    }
    Ok(done)
}

/// The usage the invoices `loaded` will be rated with at `at`, read ahead in one store read per
/// feature and period for all their customers: the metered lines a gathering invoice hands to
/// a draft now (whole lines whose period has ended) and those of drafts whose collection time
/// has come. Lines of a progressive-billing split group are read on their own, as before.
async fn read_ahead(
    store: &Store,
    at: DateTime<Utc>,
    loaded: &[(String, Invoice)],
) -> Result<Prefetched, StoreError> {
    if loaded.len() < 2 {
        return Ok(Prefetched::default());
    }
    let mut asks = Vec::new();
    for (_, inv) in loaded {
        let collecting = inv.ext() == "draft.waiting_for_collection"
            && inv.collection_at.is_none_or(|c| c <= at);
        let gathering = inv.ext() == "gathering";
        if !collecting && !gathering {
            continue;
        }
        let subjects = lifecycle::subjects_of(&inv.customer);
        for l in inv.live_lines() {
            let Some(key) = &l.rate_card.feature_key else {
                continue;
            };
            let whole = !gathering || (l.invoice_at <= at && l.period.to <= at);
            if l.is_flat() || l.split_line_group.is_some() || !whole {
                continue;
            }
            asks.push((key.clone(), subjects.clone(), l.period.from, l.period.to));
        }
    }
    Prefetched::read(store, asks).await
}

impl DueWork for Invoices {
    fn name(&self) -> &'static str {
        "invoices"
    }

    fn plan<'a>(
        &'a self,
        store: &'a Store,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Box<dyn DueQueue>, StoreError>> {
        Box::pin(async move {
            let due: Vec<DueInvoice> = store.invoices_due(&stamp(until), BATCH).await?;
            // Anything already overdue (made while the clock stood still) is done first thing.
            let first = after + TimeDelta::milliseconds(1);
            let mut items: Vec<Due> = due
                .into_iter()
                .filter_map(|inv| {
                    let at: DateTime<Utc> = inv.next_action_at.as_deref()?.parse().ok()?;
                    Some(Due {
                        at: at.max(first),
                        detail: Value::String(inv.id),
                    })
                })
                .collect();
            // Subscriptions' lines: at once when new or changed, then at each period's start.
            for (at, id) in subscription::sync_due(store, after, until).await? {
                items.push(Due {
                    at,
                    detail: json!({ "subscription": id }),
                });
            }
            Ok(Box::new(ListQueue::new(items)) as Box<dyn DueQueue>)
        })
    }

    fn run<'a>(
        &'a self,
        store: &'a Store,
        at: DateTime<Utc>,
        items: Vec<Due>,
    ) -> BoxFuture<'a, Result<Done, StoreError>> {
        Box::pin(async move {
            // Subscriptions' lines first: a line due now is then invoiced at this instant.
            // Several at once (as invoices are, see `run_ids`); two subscriptions of one
            // customer meet on its gathering invoice's compare-and-set, the loser retries.
            let subs: Vec<String> = items
                .iter()
                .filter_map(|d| d.detail["subscription"].as_str().map(str::to_owned))
                .collect();
            let results: Vec<_> = stream::iter(subs)
                .map(|sub_id: String| async move {
                    let Some(sub) = crate::subscription::load(store, &sub_id).await? else {
                        return Ok(false);
                    };
                    match subscription::sync(store, &sub, at).await {
                        Ok(changed) => Ok(changed),
                        Err(lifecycle::InvoiceError::Store(e)) => Err(e),
                        Err(e) => {
                            tracing::warn!(subscription = %sub_id, error = %e, "subscription lines not generated");
                            Ok(false)
                        }
                    }
                })
                .buffer_unordered(concurrency(store))
                .collect()
                .await;
            let mut synced = false;
            for r in results {
                synced |= r?;
            }
            let ids: Vec<String> = items
                .iter()
                .filter_map(|d| d.detail.as_str().map(str::to_owned))
                .collect();
            let mut done = run_ids(store, at, ids).await?;
            // The sync record always moves on: the clock must look again from here.
            done.wrote |= synced || items.iter().any(|d| d.detail["subscription"].is_string());
            Ok(done)
        })
    }
}
