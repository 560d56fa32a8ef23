//! The subscriptions suite (`subscriptions.rs`) on PostgreSQL: the same SDK-driven operations,
//! and two replicas running the real-time scheduler on one subscription.

#![allow(clippy::unwrap_used)]

#[path = "subscriptions.rs"]
mod suite;

/// The suite in `subscriptions.rs` runs on PostgreSQL here.
fn backend() -> suite::Backend {
    suite::Backend::Postgres
}
