//! The batched-balances suite (`balances.rs`) on PostgreSQL: a feature's balances read together
//! equal the balance engine one entitlement at a time.

#![allow(clippy::unwrap_used)]

#[path = "balances.rs"]
mod suite;

/// The suite in `balances.rs` runs on PostgreSQL here.
fn backend() -> suite::Backend {
    suite::Backend::Postgres
}
