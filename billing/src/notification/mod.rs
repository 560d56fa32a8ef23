//! Notifications: webhooks when entitlement balances cross thresholds, when usage periods reset
//! and when invoices are created or updated, on OpenMeter's model (channels, rules, events with a
//! delivery status per channel).
//!
//! * [`model`]: channels and rules as the API shows and stores them, and their validation.
//! * [`payload`]: event payloads shaped as OpenMeter's (`{id, type, timestamp, data}`).
//! * [`threshold`]: the balance-threshold evaluator (OpenMeter's §4.5 rules) and the background
//!   task that runs it after usage commits.
//! * [`reset`]: `entitlements.reset` events when a usage period resets.
//! * [`outbox`]: recording events durably in billing's database (with their delivery rows, in
//!   one transaction) — what every producer calls, invoices included.
//! * [`delivery`]: the worker that claims due deliveries (a row lease, at most a few in flight per
//!   channel), sends them and records each attempt, with retries and backoff.
//! * [`signing`]: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature`).

pub mod delivery;
pub mod model;
pub mod outbox;
pub mod payload;
pub mod reset;
pub mod signing;
pub mod threshold;

pub use model::{Channel, Rule};

/// The store kind of channels.
pub const CHANNEL: &str = "notification_channel";
/// The store kind of rules.
pub const RULE: &str = "notification_rule";

/// Event (and rule) types.
pub mod kinds {
    /// A balance threshold was crossed.
    pub const BALANCE_THRESHOLD: &str = "entitlements.balance.threshold";
    /// A usage period reset.
    pub const RESET: &str = "entitlements.reset";
    /// An invoice was created.
    pub const INVOICE_CREATED: &str = "invoice.created";
    /// An invoice was updated.
    pub const INVOICE_UPDATED: &str = "invoice.updated";
    /// All of them.
    pub const ALL: [&str; 4] = [BALANCE_THRESHOLD, RESET, INVOICE_CREATED, INVOICE_UPDATED];
}
