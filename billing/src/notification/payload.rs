//! Event payloads shaped as OpenMeter's (`{id, type, timestamp, data}`): the balance-threshold
//! and reset payloads carry the entitlement, feature, subject, customer and value (and the
//! threshold crossed); invoice payloads carry the invoice as the invoicing module shows it.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::model::Threshold;
use crate::entitlement::{Customer, Entitlement, EntitlementValue, Feature};

/// The entitlement the payload is about, with what it was measured against.
pub struct EntitlementContext<'a> {
    /// The entitlement (with its current usage period filled in).
    pub entitlement: &'a Entitlement,
    /// Its feature.
    pub feature: &'a Feature,
    /// The subject key its usage is metered for.
    pub subject: &'a str,
    /// The customer, when it belongs to one.
    pub customer: Option<&'a Customer>,
    /// Its value when the event was made.
    pub value: &'a EntitlementValue,
}

/// `{entitlement, feature, subject, customer?, value}` (the reset payload's `data`).
pub fn entitlement_data(c: &EntitlementContext<'_>) -> Value {
    let mut data = json!({
        "entitlement": c.entitlement,
        "feature": c.feature,
        "subject": {"id": c.subject, "key": c.subject},
        "value": c.value,
    });
    if let Some(customer) = c.customer {
        data["customer"] = json!(customer);
    }
    data
}

/// The balance-threshold payload's `data`: [`entitlement_data`] and the threshold crossed.
pub fn threshold_data(c: &EntitlementContext<'_>, threshold: &Threshold) -> Value {
    let mut data = entitlement_data(c);
    data["threshold"] = json!(threshold);
    data
}

/// `{id, type, timestamp, data}`.
pub fn payload(id: &str, kind: &str, timestamp: DateTime<Utc>, data: Value) -> Value {
    json!({"id": id, "type": kind, "timestamp": timestamp, "data": data})
}
