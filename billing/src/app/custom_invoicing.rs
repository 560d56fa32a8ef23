//! The custom invoicing app: an integration of the user's own. Installed from the marketplace
//! (`POST /api/v1/marketplace/listings/custom_invoicing/install`); with `enableDraftSyncHook` an
//! invoice waits at `draft.syncing` until `…/draft/synchronized`, with `enableIssuingSyncHook` at
//! `issuing.syncing` until `…/issuing/synchronized`; then it waits at
//! `payment_processing.pending` for `…/payment/status`.

/// The number given when the integration names none: `INV-{customer}-{n}`.
pub fn generated_number(customer_ref: &str, seq: usize) -> String {
    format!("INV-{customer_ref}-{seq}")
}

/// The extended status a `payment/status` trigger moves an invoice to; `None` for an unknown
/// trigger.
pub fn payment_status(trigger: &str) -> Option<&'static str> {
    Some(match trigger {
        "paid" => "paid",
        "payment_failed" => "payment_processing.failed",
        "payment_uncollectible" => "uncollectible",
        "payment_overdue" => "overdue",
        "action_required" => "payment_processing.action_required",
        "void" => "voided",
        _ => return None,
    })
}
