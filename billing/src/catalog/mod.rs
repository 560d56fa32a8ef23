//! The product catalog: versioned plans (phases of rate cards) and add-ons, and the add-ons a plan
//! offers — OpenMeter's v1 product catalog on billing's SQL store.
//!
//! * [`model`]: the documents in OpenMeter's JSON, and a rate card's price in the engine's terms.
//! * [`validate`]: OpenMeter's validation rules, critical or warning, each naming its field by
//!   JSONPath.
//! * [`versions`]: the lifecycle both plans and add-ons share — one draft per key, version
//!   numbers, publish (archiving the version it replaces, in the same transaction), archive,
//!   soft delete, and the status derived from `effectiveFrom`/`effectiveTo`.
//! * [`plan_addons`]: when an add-on may be offered with a plan.
//! * [`as_code`]: catalog as code — a YAML file applied to a running service (`tollgate-billing
//!   catalog apply`), and today's catalog dumped back out.
//!
//! The database enforces what must never break even under concurrent requests: one row per
//! (key, version) and one live draft per key (`migrations/*/0002_catalog.sql`).

pub mod as_code;
pub mod model;
pub mod plan_addons;
pub mod validate;
pub mod versions;

use crate::entitlement::Feature;
use crate::store::{Store, StoreError};

pub use model::{Addon, Plan, PlanAddonRecord, Status, ValidationIssue};
pub use validate::{FeatureFacts, Features};

/// Why a catalog operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Critical validation findings (400 with `validationErrors`).
    #[error("{}", summary(.0))]
    Invalid(Vec<ValidationIssue>),
    /// A request the resource's state does not allow (400).
    #[error("{0}")]
    Refused(String),
    /// No such resource (404).
    #[error("{0}")]
    NotFound(String),
    /// Already exists (409).
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn summary(issues: &[ValidationIssue]) -> String {
    let parts: Vec<String> = issues
        .iter()
        .map(|i| format!("{}: {}", i.field, i.message))
        .collect();
    format!("validation failed: {}", parts.join("; "))
}

/// What validation needs to know about every feature, by key.
pub async fn feature_facts(store: &Store) -> Result<Features, StoreError> {
    let mut out = Features::new();
    for f in store.list_entities::<Feature>("feature").await? {
        let facts = FeatureFacts {
            archived: f.archived_at.is_some(),
            has_meter: f.meter_slug.is_some(),
        };
        match out.get(&f.key) {
            Some(existing) if !existing.archived => {}
            _ => {
                out.insert(f.key.clone(), facts);
            }
        }
    }
    Ok(out)
}
