//! The simulated clock's suite (`clock.rs`) on PostgreSQL: the clock document shared by replicas,
//! two replicas advancing at once, a kill -9 mid-advance.

#![allow(clippy::unwrap_used)]

#[path = "clock.rs"]
mod suite;

/// The suite in `clock.rs` runs on PostgreSQL here.
fn backend() -> suite::Backend {
    suite::Backend::Postgres
}
