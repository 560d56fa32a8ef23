//! The notification suite (`notifications.rs`) on PostgreSQL: the outbox, its dedup keys and its
//! delivery leases (`FOR UPDATE SKIP LOCKED`) on a database of a real PostgreSQL cluster.

#![allow(clippy::unwrap_used)]

#[path = "notifications.rs"]
mod suite;

/// The suite in `notifications.rs` runs on PostgreSQL here.
fn backend() -> suite::Backend {
    suite::Backend::Postgres
}
