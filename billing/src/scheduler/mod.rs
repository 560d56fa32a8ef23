//! What falls due when billing's time passes: the hook a clock advance runs
//! ([`crate::clock::Clock::advance`]). Each kind of time-driven work is a [`DueWork`]: asked for
//! what falls due in a window, it answers with a [`DueQueue`] (lazily, in time order), and runs
//! one instant's items. The clock merges every work's queue and runs instants in time order; at
//! one instant the works run in [`registry`] order.
//!
//! Today's works report what the balance engine derives from time (usage-period resets, grants
//! starting, expiring and refilling: [`entitlements`]), make entitlements follow
//! subscriptions ([`subscriptions`]) and move invoices on ([`invoices`]). On real time, [`runner`]
//! runs them every second. Subscriptions, invoices and notifications
//! plug in as further works: a work whose step writes (an invoice issued…) says so in
//! [`Done::wrote`], and the clock then records that instant as done before going on, so a crash
//! never loses or repeats finished work — provided each step is idempotent (keyed by what it is
//! for, e.g. one invoice per subscription period), because a step that ran just before a crash
//! runs again when the advance is repeated. The clock renews its lease between instants, so one
//! instant's work should take well under [`crate::clock::LEASE`]; if it does not, another replica
//! may take the advance over and run the same steps at the same time, which idempotent steps and the
//! clock's compare-and-set make harmless but wasteful.

pub mod entitlements;
pub mod invoices;
pub mod runner;
pub mod subscriptions;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

use crate::store::{Store, StoreError};

/// Something that happened at an instant, as reported by an advance.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Happening {
    /// When.
    pub at: DateTime<Utc>,
    /// What, e.g. `entitlement.reset`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The rest (ids, periods…), flattened into the report item.
    #[serde(flatten)]
    pub detail: serde_json::Map<String, Value>,
}

/// One item of work due at an instant.
#[derive(Debug, Clone)]
pub struct Due {
    /// When it falls due.
    pub at: DateTime<Utc>,
    /// The work's own description of it (what [`DueWork::run`] needs).
    pub detail: Value,
}

/// What running an instant's items did.
#[derive(Debug, Default)]
pub struct Done {
    /// What to report.
    pub happened: Vec<Happening>,
    /// Whether it changed stored state: the clock then records the instant as done before
    /// running later ones, and asks every work again (the change may make new work due).
    pub wrote: bool,
}

/// A work's items in a window, in time order, produced lazily (a year of hourly usage periods
/// is never materialised at once).
pub trait DueQueue: Send {
    /// The earliest instant with items left.
    fn peek(&self) -> Option<DateTime<Utc>>;
    /// Every item at [`DueQueue::peek`]'s instant, removed from the queue.
    fn pop(&mut self) -> Vec<Due>;
}

/// A kind of time-driven work.
pub trait DueWork: Send + Sync {
    /// Its name, for logs.
    fn name(&self) -> &'static str;
    /// What falls due in `(after, until]`.
    fn plan<'a>(
        &'a self,
        store: &'a Store,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Box<dyn DueQueue>, StoreError>>;
    /// Runs the items due at one instant (all from this work's queue). Must be idempotent.
    fn run<'a>(
        &'a self,
        store: &'a Store,
        at: DateTime<Utc>,
        items: Vec<Due>,
    ) -> BoxFuture<'a, Result<Done, StoreError>>;
}

/// Every work, in the order they run at one instant.
pub fn registry() -> Vec<Arc<dyn DueWork>> {
    vec![
        Arc::new(entitlements::UsagePeriods),
        Arc::new(entitlements::GrantTimes),
        Arc::new(subscriptions::Provisioning),
        Arc::new(invoices::Invoices),
    ]
}

/// A queue that is a sorted list (for works with few items).
pub struct ListQueue {
    items: std::collections::VecDeque<Due>,
}

impl ListQueue {
    /// The items, sorted by time (stable: same-instant items keep their order).
    pub fn new(mut items: Vec<Due>) -> ListQueue {
        items.sort_by_key(|d| d.at);
        ListQueue {
            items: items.into(),
        }
    }
}

impl DueQueue for ListQueue {
    fn peek(&self) -> Option<DateTime<Utc>> {
        self.items.front().map(|d| d.at)
    }

    fn pop(&mut self) -> Vec<Due> {
        let Some(at) = self.peek() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while self.items.front().is_some_and(|d| d.at == at) {
            out.extend(self.items.pop_front());
        }
        out
    }
}
