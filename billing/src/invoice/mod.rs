//! Invoicing: from rated usage to an issued, paid invoice, as OpenMeter's billing does it.
//!
//! * [`profile`]: billing profiles (supplier, workflow) with OpenMeter's defaults, customer
//!   overrides, and the default profile provisioned at first start.
//! * [`model`]: invoices, lines and detailed lines, totals, statuses and their actions.
//! * [`rating`]: a line rated by the catalog's pricing engine into detailed lines and totals.
//! * [`usage`]: a line's quantities from the meters.
//! * [`lifecycle`]: the state machine (gathering → draft → issuing → issued → paid, void, delete),
//!   progressive billing ("invoice now"), the apps' hooks, and the status-change hook.
//! * [`lookups`]: what a step reads besides the invoice, kept for a run.
//! * [`batch`]: every invoice due at one instant settled together, many per transaction.
//! * [`subscription`]: what invoicing needs from subscriptions, and their lines.
//! * [`html`]: the printable page.
//!
//! The scheduler's [`crate::scheduler::invoices`] work moves invoices on when their time comes.

pub mod batch;
pub mod html;
pub mod lifecycle;
pub mod lookups;
pub mod model;
pub mod profile;
pub mod rating;
pub mod subscription;
pub mod usage;

pub use lifecycle::{Action, Collect, InvoiceError, commit};
pub use model::Invoice;

/// A new time-ordered id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}
