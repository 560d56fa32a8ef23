//! The invoicing suite (`invoices.rs`) on PostgreSQL: the same tests on a database of the shared
//! test cluster (the gathering invoice's uniqueness, compare-and-set moves of lines into drafts,
//! and the kill -9 during an advance).

#![allow(clippy::unwrap_used)]

#[path = "invoices.rs"]
mod suite;

/// The suite in `invoices.rs` runs on PostgreSQL here.
fn backend() -> suite::Backend {
    suite::Backend::Postgres
}
