//! The usage-totals suite (`usage_totals.rs`) on PostgreSQL: queries over all subjects from the
//! totals equal the per-subject rows, kept right on meter changes, backfilled by the migration.

#![allow(clippy::unwrap_used)]

#[path = "usage_totals.rs"]
mod suite;

/// The suite in `usage_totals.rs` runs on PostgreSQL here.
fn backend() -> suite::Backend {
    suite::Backend::Postgres
}
