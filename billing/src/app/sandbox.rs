//! The sandbox app: provisioned at first start with a fixed id (replicas starting at once make
//! one), no external sync; issued invoices are paid at once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{App, listing};

/// The sandbox app's id.
pub const SANDBOX_APP_ID: &str = "01900000000070008000000000000001";

/// Invoice metadata that asks the sandbox for another payment outcome.
pub const TARGET_PAYMENT_STATUS: &str = "openmeter.io/sandbox/target-payment-status";

/// The sandbox app as provisioned.
pub fn sandbox_app(now: DateTime<Utc>) -> App {
    App {
        id: SANDBOX_APP_ID.into(),
        kind: "sandbox".into(),
        name: "Sandbox".into(),
        description: Some("Issues invoices and marks them paid, with no external system.".into()),
        metadata: None,
        created_at: now,
        updated_at: now,
        deleted_at: None,
        status: "ready".into(),
        listing: listing("sandbox").unwrap_or_default(),
        enable_draft_sync_hook: None,
        enable_issuing_sync_hook: None,
    }
}

/// `OM-SANDBOX-{customer}-{n}`.
pub fn number(customer_ref: &str, seq: usize) -> String {
    format!("OM-SANDBOX-{customer_ref}-{seq}")
}

/// `paid`, unless the invoice's metadata asks for `failed`, `uncollectible` or `action_required`.
pub fn payment_outcome(metadata: Option<&BTreeMap<String, String>>) -> String {
    match metadata
        .and_then(|m| m.get(TARGET_PAYMENT_STATUS))
        .map(String::as_str)
    {
        Some("failed") => "payment_processing.failed".into(),
        Some("uncollectible") => "uncollectible".into(),
        Some("action_required") => "payment_processing.action_required".into(),
        _ => "paid".into(),
    }
}
