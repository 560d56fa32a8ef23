//! Billing profiles (the supplier and the workflow an invoice runs on: collection, draft period,
//! auto-advance, due date, progressive billing, payment method, tax) with OpenMeter's defaults
//! (`billing/defaults.go`), customer overrides (which profile a customer's invoices use), and the
//! default profile and sandbox app billing provisions at first start.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::app::{self, App};
use crate::duration::IsoDuration;
use crate::store::{Store, StoreError};

/// The document kind of profiles.
pub const KIND: &str = "billing_profile";
/// The document kind of customer overrides.
pub const OVERRIDE_KIND: &str = "billing_override";
/// The default profile billing provisions at first start (a fixed id, so replicas starting at
/// once provision one).
pub const DEFAULT_PROFILE_ID: &str = "01900000000070008000000000000002";

/// An address.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    /// ISO 3166 alpha-2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Postal code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// State.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// City.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Line 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line1: Option<String>,
    /// Line 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    /// Phone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
}

/// `BillingParty`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Party {
    /// Id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `{code}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_id: Option<Value>,
    /// At most one address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<Address>>,
}

fn subscription_alignment() -> Value {
    json!({"type": "subscription"})
}
fn pt1h() -> String {
    "PT1H".into()
}
fn p0d() -> String {
    "P0D".into()
}
fn p30d() -> String {
    "P30D".into()
}
fn yes() -> bool {
    true
}
fn bill_actual_period() -> String {
    "bill_actual_period".into()
}
fn charge_automatically() -> String {
    "charge_automatically".into()
}

/// `workflow.collection`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Collection {
    /// `{type: subscription}` or `{type: anchored, recurringPeriod}`.
    #[serde(default = "subscription_alignment")]
    pub alignment: Value,
    /// Grace after a period's end for late events (ISO 8601), default PT1H.
    #[serde(default = "pt1h")]
    pub interval: String,
}

/// `workflow.invoicing`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invoicing {
    /// Issue after the draft period without approval.
    #[serde(default = "yes")]
    pub auto_advance: bool,
    /// How long a draft waits (ISO 8601), default P0D.
    #[serde(default = "p0d")]
    pub draft_period: String,
    /// Payment due after (ISO 8601), default P30D.
    #[serde(default = "p30d")]
    pub due_after: String,
    /// Usage may be invoiced before the period ends.
    #[serde(default = "yes")]
    pub progressive_billing: bool,
    /// `bill_actual_period` or `bill_full_period`.
    #[serde(default = "bill_actual_period")]
    pub subscription_end_proration_mode: String,
    /// Default tax config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tax_config: Option<Value>,
}

/// `workflow.payment`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    /// `charge_automatically` or `send_invoice`.
    #[serde(default = "charge_automatically")]
    pub collection_method: String,
}

/// `workflow.tax`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tax {
    /// Taxes calculated.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Invoices without tax refused.
    #[serde(default)]
    pub enforced: bool,
}

/// `BillingWorkflow`, each part defaulted as OpenMeter does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workflow {
    /// Collection.
    #[serde(default = "default_collection")]
    pub collection: Collection,
    /// Invoicing.
    #[serde(default = "default_invoicing")]
    pub invoicing: Invoicing,
    /// Payment.
    #[serde(default = "default_payment")]
    pub payment: Payment,
    /// Tax.
    #[serde(default = "default_tax")]
    pub tax: Tax,
}

fn from_empty<T: for<'de> Deserialize<'de>>() -> T {
    // Every field of these parts has a default, so an empty object always decodes.
    serde_json::from_value(json!({})).unwrap_or_else(|_| unreachable!("defaults decode"))
}
fn default_collection() -> Collection {
    from_empty()
}
fn default_invoicing() -> Invoicing {
    from_empty()
}
fn default_payment() -> Payment {
    from_empty()
}
fn default_tax() -> Tax {
    from_empty()
}

impl Default for Workflow {
    fn default() -> Self {
        Workflow {
            collection: default_collection(),
            invoicing: default_invoicing(),
            payment: default_payment(),
            tax: default_tax(),
        }
    }
}

/// The durations of a workflow, parsed.
#[derive(Debug, Clone, Copy)]
pub struct Durations {
    /// Collection interval.
    pub collection: IsoDuration,
    /// Draft period.
    pub draft: IsoDuration,
    /// Due after.
    pub due: IsoDuration,
}

impl Workflow {
    /// Problems with the workflow, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (field, v) in [
            ("workflow.collection.interval", &self.collection.interval),
            (
                "workflow.invoicing.draftPeriod",
                &self.invoicing.draft_period,
            ),
            ("workflow.invoicing.dueAfter", &self.invoicing.due_after),
        ] {
            if let Err(e) = IsoDuration::parse(v) {
                out.push(format!("{field}: {e}"));
            }
        }
        match self.collection.alignment["type"].as_str() {
            Some("subscription") => {}
            Some("anchored") => {
                if IsoDuration::parse(
                    self.collection.alignment["recurringPeriod"]["interval"]
                        .as_str()
                        .unwrap_or(""),
                )
                .is_err()
                {
                    out.push(
                        "workflow.collection.alignment.recurringPeriod.interval: an ISO 8601 \
                         duration is required for anchored alignment"
                            .into(),
                    );
                }
            }
            _ => out.push(
                "workflow.collection.alignment.type: must be subscription or anchored".into(),
            ),
        }
        if !matches!(
            self.invoicing.subscription_end_proration_mode.as_str(),
            "bill_actual_period" | "bill_full_period"
        ) {
            out.push(
                "workflow.invoicing.subscriptionEndProrationMode: must be bill_actual_period or \
                 bill_full_period"
                    .into(),
            );
        }
        if !matches!(
            self.payment.collection_method.as_str(),
            "charge_automatically" | "send_invoice"
        ) {
            out.push(
                "workflow.payment.collectionMethod: must be charge_automatically or send_invoice"
                    .into(),
            );
        }
        if self.tax.enforced && !self.tax.enabled {
            out.push("workflow.tax.enforced: tax cannot be enforced when it is not enabled".into());
        }
        out
    }

    /// The durations (the defaults where a stored one does not parse: it was checked on write).
    pub fn durations(&self) -> Durations {
        let d = |s: &str, fallback: &str| {
            IsoDuration::parse(s)
                .or_else(|_| IsoDuration::parse(fallback))
                .unwrap_or_else(|_| unreachable!("the fallback durations parse"))
        };
        Durations {
            collection: d(&self.collection.interval, "PT1H"),
            draft: d(&self.invoicing.draft_period, "P0D"),
            due: d(&self.invoicing.due_after, "P30D"),
        }
    }
}

/// The apps of a profile (`{id}` each, or whole apps when expanded).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileApps {
    /// Tax.
    pub tax: Value,
    /// Invoicing.
    pub invoicing: Value,
    /// Payment.
    pub payment: Value,
}

impl ProfileApps {
    /// The invoicing app's id.
    pub fn invoicing_id(&self) -> &str {
        self.invoicing["id"].as_str().unwrap_or_default()
    }
}

/// `BillingProfile`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BillingProfile {
    /// Id.
    pub id: String,
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
    /// Deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// The seller on its invoices.
    pub supplier: Party,
    /// Settings.
    pub workflow: Workflow,
    /// Apps (immutable).
    pub apps: ProfileApps,
    /// The default profile.
    pub default: bool,
}

/// A customer override: `{billingProfileId?, customerId, createdAt, updatedAt}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerOverride {
    /// Pinned profile; none means the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_profile_id: Option<String>,
    /// Customer.
    pub customer_id: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
}

/// Problems with a supplier (OpenMeter requires a name and a country).
pub fn supplier_problems(p: &Party) -> Vec<String> {
    let mut out = Vec::new();
    if p.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
        out.push("supplier.name: required".into());
    }
    let addresses = p.addresses.as_deref().unwrap_or_default();
    if addresses.len() > 1 {
        out.push("supplier.addresses: at most one address".into());
    }
    match addresses.first().and_then(|a| a.country.as_deref()) {
        None => out.push("supplier.addresses[0].country: required".into()),
        Some(c) if c.len() != 2 || !c.chars().all(|c| c.is_ascii_uppercase()) => out.push(format!(
            "supplier.addresses[0].country: {c:?} is not an ISO 3166 alpha-2 code"
        )),
        Some(_) => {}
    }
    out
}

/// The live default profile.
pub async fn default_profile(store: &Store) -> Result<Option<BillingProfile>, StoreError> {
    Ok(store
        .list_entities_where::<BillingProfile>(KIND, "is_default", "true")
        .await?
        .into_iter()
        .find(|p| p.deleted_at.is_none()))
}

/// The profile a customer's invoices use: its override's, else the default.
pub async fn profile_for(
    store: &Store,
    customer_id: &str,
) -> Result<Option<BillingProfile>, StoreError> {
    if let Some(o) = store
        .get_entity::<CustomerOverride>(OVERRIDE_KIND, customer_id)
        .await?
        && let Some(pid) = o.billing_profile_id
        && let Some(p) = store.get_entity::<BillingProfile>(KIND, &pid).await?
        && p.deleted_at.is_none()
    {
        return Ok(Some(p));
    }
    default_profile(store).await
}

/// At first start: the sandbox app and a default profile using it (supplier "Tollgate", country
/// US, default workflow). Idempotent, and safe with replicas starting at once: both documents
/// have fixed ids and are created by compare-and-set, so one replica creates each. Nothing is
/// created when a default profile exists already (an operator may have made another one default).
pub async fn provision(store: &Store, now: DateTime<Utc>) -> Result<(), StoreError> {
    let sandbox = app::sandbox_app(now);
    store
        .swap_entity(app::KIND, &sandbox.id, None, &sandbox)
        .await?;
    if default_profile(store).await?.is_some()
        || store
            .get_entity_raw(KIND, DEFAULT_PROFILE_ID)
            .await?
            .is_some()
    {
        return Ok(());
    }
    let id_of = |a: &App| json!({ "id": a.id });
    let profile = BillingProfile {
        id: DEFAULT_PROFILE_ID.into(),
        name: "Tollgate sandbox".into(),
        description: Some(
            "Created at first start: invoices are issued and paid by the sandbox app.".into(),
        ),
        metadata: None,
        created_at: now,
        updated_at: now,
        deleted_at: None,
        supplier: Party {
            name: Some("Tollgate".into()),
            addresses: Some(vec![Address {
                country: Some("US".into()),
                ..Address::default()
            }]),
            ..Party::default()
        },
        workflow: Workflow::default(),
        apps: ProfileApps {
            tax: id_of(&sandbox),
            invoicing: id_of(&sandbox),
            payment: id_of(&sandbox),
        },
        default: true,
    };
    // A replica that lost the race (same id, or the default index taken) has nothing to do.
    store
        .swap_entity(KIND, DEFAULT_PROFILE_ID, None, &profile)
        .await
        .map(drop)
        .or_else(|e| match e {
            StoreError::Conflict(_) => Ok(()),
            e => Err(e),
        })
}
