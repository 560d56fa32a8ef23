//! What an invoice step reads besides the invoice itself — its invoicing app, the customer's
//! invoice counts (for numbers), the features and usage its lines are rated with, and the
//! notification rules its status changes are recorded for — read from the store on first use and
//! kept for one run. A single action makes fresh lookups (nothing is kept between requests); the
//! scheduler settling many invoices at one instant ([`super::batch`]) shares one for all of them,
//! reads every customer's counts in one query, and counts the invoices it makes and issues
//! itself.

use std::collections::HashMap;

use serde::Deserialize;

use super::lifecycle::KIND;
use super::model::Invoice;
use super::usage::{Prefetched, UsageReader};
use crate::app::{self, App};
use crate::notification::model::{Channel, Rule};
use crate::store::documents::Stmt;
use crate::store::{Store, StoreError};

/// A customer's invoices: how many there are (any status), and how many were issued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every invoice of the customer (gathering, deleted… included).
    pub all: usize,
    /// Those with `issuedAt`.
    pub issued: usize,
}

/// The part of a stored invoice its customer's counts need.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Brief {
    customer: BriefCustomer,
    issued_at: Option<String>,
}

#[derive(Deserialize)]
struct BriefCustomer {
    id: String,
}

/// Lookups for invoice steps on `store` (see the module's documentation).
pub struct Lookups<'a> {
    store: &'a Store,
    /// Usage and features, answering from what was read ahead where it can.
    pub reader: UsageReader<'a>,
    apps: HashMap<String, App>,
    counts: HashMap<String, Counts>,
    rules: HashMap<&'static str, (Vec<Rule>, Vec<Channel>)>,
}

impl<'a> Lookups<'a> {
    /// Fresh lookups on `store`, taking usage read ahead from `pre` where it has it.
    pub fn new(store: &'a Store, pre: Option<&'a Prefetched>) -> Self {
        Lookups {
            store,
            reader: UsageReader::with(store, pre),
            apps: HashMap::new(),
            counts: HashMap::new(),
            rules: HashMap::new(),
        }
    }

    /// The store.
    pub fn store(&self) -> &'a Store {
        self.store
    }

    /// The invoicing app of an invoice (the sandbox when it was uninstalled).
    pub async fn app(&mut self, inv: &Invoice) -> Result<App, StoreError> {
        let id = inv.workflow.apps.invoicing["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Some(a) = self.apps.get(&id) {
            return Ok(a.clone());
        }
        let a = match self.store.get_entity::<App>(app::KIND, &id).await? {
            Some(a) => a,
            None => app::sandbox_app(inv.created_at),
        };
        self.apps.insert(id, a.clone());
        Ok(a)
    }

    /// The customer's invoice counts (read on first use).
    pub async fn counts(&mut self, customer_id: &str) -> Result<Counts, StoreError> {
        if let Some(c) = self.counts.get(customer_id) {
            return Ok(*c);
        }
        self.read_counts(&[customer_id.to_owned()]).await?;
        Ok(self.counts.get(customer_id).copied().unwrap_or_default())
    }

    /// Reads the counts of `customers` (those not known yet) in one query.
    pub async fn read_counts(&mut self, customers: &[String]) -> Result<(), StoreError> {
        let mut wanted: Vec<String> = customers
            .iter()
            .filter(|c| !self.counts.contains_key(*c))
            .cloned()
            .collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        for c in &wanted {
            self.counts.insert(c.clone(), Counts::default());
        }
        let briefs: Vec<Brief> = self
            .store
            .list_entities_where_in(KIND, "customer_id", &wanted)
            .await?;
        for b in briefs {
            let c = self.counts.entry(b.customer.id).or_default();
            c.all += 1;
            c.issued += usize::from(b.issued_at.is_some());
        }
        Ok(())
    }

    /// Counts an invoice made for the customer (when its counts are kept).
    pub fn made(&mut self, customer_id: &str) {
        if let Some(c) = self.counts.get_mut(customer_id) {
            c.all += 1;
        }
    }

    /// Counts an invoice issued to the customer (when its counts are kept).
    pub fn issued(&mut self, customer_id: &str) {
        if let Some(c) = self.counts.get_mut(customer_id) {
            c.issued += 1;
        }
    }

    /// Forgets the customer's counts (an invoice of theirs was not stored after all).
    pub fn forget(&mut self, customer_id: &str) {
        self.counts.remove(customer_id);
    }

    /// The statements recording a status change's notification for every live rule of its type
    /// ([`crate::notification::outbox::invoice_event_statements`]); the rules of each type are
    /// read once.
    pub async fn events(
        &mut self,
        before: Option<&Invoice>,
        after: &Invoice,
    ) -> Result<Vec<Stmt>, StoreError> {
        let Some(kind) = super::lifecycle::event_kind(before, after) else {
            return Ok(Vec::new());
        };
        if !self.rules.contains_key(kind) {
            let found = crate::notification::outbox::rules_and_channels(self.store, kind).await?;
            self.rules.insert(kind, found);
        }
        let Some((rules, channels)) = self.rules.get(kind) else {
            return Ok(Vec::new());
        };
        if rules.is_empty() {
            return Ok(Vec::new());
        }
        let document =
            serde_json::to_value(after).map_err(|e| StoreError::Decode(e.to_string()))?;
        Ok(crate::notification::outbox::invoice_event_statements(
            rules,
            channels,
            kind,
            &document,
            after.updated_at,
        ))
    }
}
