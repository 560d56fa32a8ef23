//! Installed apps — what takes an invoice from draft to paid outside billing's own rules — and
//! the hooks the invoice lifecycle calls on them:
//!
//! * [`sandbox`]: provisioned at first start; no external system: issuing gives the invoice an
//!   `OM-SANDBOX-…` number and it is paid at once (its metadata
//!   `openmeter.io/sandbox/target-payment-status` can ask for another outcome).
//! * [`custom_invoicing`]: an integration of your own: with its hooks enabled an invoice waits at
//!   `draft.syncing` and at `issuing.syncing` until the integration calls back
//!   (`/api/v1/apps/custom-invoicing/{invoiceId}/…`), and its payment status is what the
//!   integration reports.
//!
//! Stripe needs the network and is not provided.

pub mod custom_invoicing;
pub mod sandbox;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use sandbox::sandbox_app;

/// The document kind.
pub const KIND: &str = "app";

/// An installed app as `GET /api/v1/apps` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    /// Id.
    pub id: String,
    /// `sandbox` or `custom_invoicing`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// Uninstalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// `ready`.
    pub status: String,
    /// The marketplace listing it came from.
    pub listing: Value,
    /// Custom invoicing: wait for the integration at `draft.syncing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_draft_sync_hook: Option<bool>,
    /// Custom invoicing: wait for the integration at `issuing.syncing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_issuing_sync_hook: Option<bool>,
}

/// The marketplace listing of an app type; `None` for a type billing does not provide.
pub fn listing(kind: &str) -> Option<Value> {
    let caps = |list: &[(&str, &str)]| -> Value {
        list.iter()
            .map(|(t, n)| json!({"type": t, "key": t, "name": n, "description": n}))
            .collect()
    };
    match kind {
        "sandbox" => Some(json!({
            "type": "sandbox",
            "name": "Sandbox",
            "description": "Issues invoices and marks them paid, with no external system.",
            "iconUrl": "",
            "capabilities": caps(&[("calculateTax", "Calculate tax"), ("invoiceCustomers", "Invoice customers"), ("collectPayments", "Collect payments")]),
            "installMethods": ["no_credentials_required"],
        })),
        "custom_invoicing" => Some(json!({
            "type": "custom_invoicing",
            "name": "Custom Invoicing",
            "description": "Your own integration issues invoices and reports payments through callbacks.",
            "iconUrl": "",
            "capabilities": caps(&[("calculateTax", "Calculate tax"), ("invoiceCustomers", "Invoice customers"), ("collectPayments", "Collect payments")]),
            "installMethods": ["no_credentials_required"],
        })),
        _ => None,
    }
}

/// What the invoicing app says when a draft is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DraftSync {
    /// Go on (approval or auto-advance).
    Continue,
    /// Wait at `draft.syncing` for the integration.
    Wait,
}

/// What the invoicing app says when an invoice is to be issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueSync {
    /// Issue it now with this number.
    Issue {
        /// The invoice number.
        number: String,
    },
    /// Wait at `issuing.syncing` for the integration.
    Wait,
}

impl App {
    /// The draft-sync hook.
    pub fn on_draft_ready(&self) -> DraftSync {
        if self.kind == "custom_invoicing" && self.enable_draft_sync_hook.unwrap_or(false) {
            DraftSync::Wait
        } else {
            DraftSync::Continue
        }
    }

    /// The issuing-sync hook; `seq` numbers the customer's issued invoices from 1.
    pub fn on_issue(&self, customer_ref: &str, seq: usize) -> IssueSync {
        match self.kind.as_str() {
            "custom_invoicing" if self.enable_issuing_sync_hook.unwrap_or(false) => IssueSync::Wait,
            "custom_invoicing" => IssueSync::Issue {
                number: custom_invoicing::generated_number(customer_ref, seq),
            },
            _ => IssueSync::Issue {
                number: sandbox::number(customer_ref, seq),
            },
        }
    }

    /// The extended status an issued invoice moves to (the payment side).
    pub fn after_issued(
        &self,
        metadata: Option<&std::collections::BTreeMap<String, String>>,
    ) -> String {
        match self.kind.as_str() {
            "sandbox" => sandbox::payment_outcome(metadata),
            _ => "payment_processing.pending".into(),
        }
    }
}
