//! The lifecycle plans and add-ons share: a key has versions 1, 2, …; at most one is a draft;
//! publishing a draft makes it active and archives the version it replaces (one transaction);
//! archiving ends an active version; deleting is soft and only for drafts, scheduled and archived
//! versions. Status is never stored as truth: it is derived from `effectiveFrom`/`effectiveTo` and
//! the clock on every read.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::model::{Addon, Plan, Status};
use super::{CatalogError, ValidationIssue};
use crate::store::{Store, StoreError};

/// A versioned catalog document.
pub trait Versioned: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Store kind.
    const KIND: &'static str;
    /// For messages: `Plan`, `Addon`.
    const NAME: &'static str;
    /// Id.
    fn id(&self) -> &str;
    /// Key.
    fn key(&self) -> &str;
    /// Version.
    fn version(&self) -> i64;
    /// `(effectiveFrom, effectiveTo)`.
    fn effective(&self) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    /// Sets `(effectiveFrom, effectiveTo)`.
    fn set_effective(&mut self, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>);
    /// Soft-deleted at.
    fn deleted_at(&self) -> Option<DateTime<Utc>>;
    /// Soft-deletes.
    fn set_deleted_at(&mut self, at: DateTime<Utc>);
    /// Sets the derived status.
    fn set_status(&mut self, status: Status);
    /// Sets `updatedAt`.
    fn touch(&mut self, at: DateTime<Utc>);
    /// Saved warnings.
    fn warnings(&self) -> &[ValidationIssue];
    /// Takes what an update of a draft keeps from the stored version: id, version, creation
    /// time, effective dates and status.
    fn keep_identity_of(&mut self, stored: &Self);

    /// Status now.
    fn status_at(&self, now: DateTime<Utc>) -> Status {
        let (from, to) = self.effective();
        Status::at(from, to, now)
    }
}

macro_rules! versioned {
    ($t:ty, $kind:literal, $name:literal) => {
        impl Versioned for $t {
            const KIND: &'static str = $kind;
            const NAME: &'static str = $name;
            fn id(&self) -> &str {
                &self.id
            }
            fn key(&self) -> &str {
                &self.key
            }
            fn version(&self) -> i64 {
                self.version
            }
            fn effective(&self) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
                (self.effective_from, self.effective_to)
            }
            fn set_effective(&mut self, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) {
                self.effective_from = from;
                self.effective_to = to;
            }
            fn deleted_at(&self) -> Option<DateTime<Utc>> {
                self.deleted_at
            }
            fn set_deleted_at(&mut self, at: DateTime<Utc>) {
                self.deleted_at = Some(at);
            }
            fn set_status(&mut self, status: Status) {
                self.status = status;
            }
            fn touch(&mut self, at: DateTime<Utc>) {
                self.updated_at = at;
            }
            fn warnings(&self) -> &[ValidationIssue] {
                self.validation_errors.as_deref().unwrap_or_default()
            }
            fn keep_identity_of(&mut self, stored: &Self) {
                self.id = stored.id.clone();
                self.version = stored.version;
                self.created_at = stored.created_at;
                self.effective_from = stored.effective_from;
                self.effective_to = stored.effective_to;
                self.status = stored.status;
            }
        }
    };
}

versioned!(Plan, "plan", "Plan");
versioned!(Addon, "addon", "Addon");

/// Every version of every key (deleted ones included), status derived at `now`, in
/// (key, version) order.
pub async fn all<T: Versioned>(store: &Store, now: DateTime<Utc>) -> Result<Vec<T>, StoreError> {
    let mut items: Vec<T> = store.list_entities(T::KIND).await?;
    for item in &mut items {
        let status = item.status_at(now);
        item.set_status(status);
    }
    items.sort_by(|a, b| (a.key(), a.version()).cmp(&(b.key(), b.version())));
    Ok(items)
}

/// By id, or by key: the active version, or with `include_latest` the newest live version.
/// Deleted versions are found by id only.
pub fn resolve<T: Versioned>(
    items: &[T],
    id_or_key: &str,
    include_latest: bool,
    now: DateTime<Utc>,
) -> Option<T> {
    if let Some(found) = items.iter().find(|i| i.id() == id_or_key) {
        return Some(found.clone());
    }
    let live = items
        .iter()
        .filter(|i| i.key() == id_or_key && i.deleted_at().is_none());
    if include_latest {
        live.max_by_key(|i| i.version()).cloned()
    } else {
        live.filter(|i| i.status_at(now) == Status::Active)
            .max_by_key(|i| i.version())
            .cloned()
    }
}

/// The version a new draft of `key` gets; refused while a live draft exists.
pub fn next_version<T: Versioned>(
    items: &[T],
    key: &str,
    now: DateTime<Utc>,
) -> Result<i64, CatalogError> {
    let versions: Vec<&T> = items.iter().filter(|i| i.key() == key).collect();
    if versions
        .iter()
        .any(|i| i.deleted_at().is_none() && i.status_at(now) == Status::Draft)
    {
        return Err(CatalogError::Refused(format!(
            "only a single draft version is allowed for {} {key}: update or delete the draft",
            T::NAME
        )));
    }
    Ok(versions.iter().map(|i| i.version()).max().unwrap_or(0) + 1)
}

/// Refuses an update of a draft whose body changes its `key` or `currency` (fixed for every
/// version of a key): `noun` names what to create instead.
pub fn refuse_changed_identity(
    noun: &str,
    fields: [(&str, Option<&String>, &String); 2],
) -> Result<(), CatalogError> {
    for (field, given, stored) in fields {
        if given.is_some_and(|g| g != stored) {
            return Err(CatalogError::Refused(format!(
                "{field} cannot be changed (it is {stored:?}): create a new {noun} instead"
            )));
        }
    }
    Ok(())
}

/// Refuses a change unless the version is in one of `allowed` states.
pub fn require_status<T: Versioned>(
    item: &T,
    allowed: &[Status],
    action: &str,
    now: DateTime<Utc>,
) -> Result<(), CatalogError> {
    let status = item.status_at(now);
    if item.deleted_at().is_some() {
        return Err(CatalogError::Refused(format!(
            "{} {} is deleted",
            T::NAME,
            item.id()
        )));
    }
    if allowed.contains(&status) {
        Ok(())
    } else {
        let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        Err(CatalogError::Refused(format!(
            "cannot {action} {} {} in status {}: only {}",
            T::NAME,
            item.id(),
            status.as_str(),
            names.join(" or ")
        )))
    }
}

fn doc<T: Versioned>(item: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(item).map_err(|e| StoreError::Decode(e.to_string()))
}

/// Stores one version; a taken (key, version) or a second draft is a conflict.
pub async fn save<T: Versioned>(store: &Store, item: &T) -> Result<(), CatalogError> {
    store
        .put_entities(&[(T::KIND, item.id(), doc(item)?)])
        .await
        .map_err(conflict::<T>)
}

fn conflict<T: Versioned>(e: StoreError) -> CatalogError {
    match e {
        StoreError::Conflict(_) => CatalogError::Conflict(format!(
            "{} changed concurrently: another version or draft of this key was just saved; retry",
            T::NAME
        )),
        other => CatalogError::Store(other),
    }
}

/// Publishes a draft (or reschedules a scheduled version) effective `now`: refused while it has
/// warnings; the active version of the key is archived as of `now` in the same transaction.
pub async fn publish<T: Versioned>(
    store: &Store,
    items: &[T],
    mut item: T,
    now: DateTime<Utc>,
) -> Result<T, CatalogError> {
    require_status(&item, &[Status::Draft, Status::Scheduled], "publish", now)?;
    if !item.warnings().is_empty() {
        return Err(CatalogError::Invalid(item.warnings().to_vec()));
    }
    let mut writes = Vec::new();
    for previous in items.iter().filter(|i| {
        i.key() == item.key()
            && i.id() != item.id()
            && i.deleted_at().is_none()
            && matches!(i.status_at(now), Status::Active | Status::Scheduled)
    }) {
        let mut previous = previous.clone();
        let (from, _) = previous.effective();
        previous.set_effective(from, Some(now));
        previous.set_status(Status::Archived);
        previous.touch(now);
        writes.push(previous);
    }
    item.set_effective(Some(now), None);
    item.set_status(Status::Active);
    item.touch(now);
    writes.push(item.clone());
    let docs = writes
        .iter()
        .map(|w| Ok((T::KIND, w.id(), doc(w)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    store.put_entities(&docs).await.map_err(conflict::<T>)?;
    Ok(item)
}

/// Archives an active version as of `now`.
pub async fn archive<T: Versioned>(
    store: &Store,
    mut item: T,
    now: DateTime<Utc>,
) -> Result<T, CatalogError> {
    require_status(&item, &[Status::Active], "archive", now)?;
    let (from, _) = item.effective();
    item.set_effective(from, Some(now));
    item.set_status(Status::Archived);
    item.touch(now);
    save(store, &item).await?;
    Ok(item)
}

/// Soft-deletes a draft, scheduled or archived version.
pub async fn delete<T: Versioned>(
    store: &Store,
    mut item: T,
    now: DateTime<Utc>,
) -> Result<(), CatalogError> {
    require_status(
        &item,
        &[Status::Draft, Status::Scheduled, Status::Archived],
        "delete",
        now,
    )?;
    item.set_deleted_at(now);
    item.touch(now);
    save(store, &item).await
}

/// List filters shared by plans and add-ons (`key`, `keyVersion`, `status`, `currency`, `id`,
/// `includeDeleted`).
#[derive(Debug, Default)]
pub struct ListFilter {
    /// Ids.
    pub ids: Vec<String>,
    /// Keys.
    pub keys: Vec<String>,
    /// `keyVersion[key]=version`.
    pub key_versions: Vec<(String, i64)>,
    /// Statuses.
    pub statuses: Vec<Status>,
    /// Currencies.
    pub currencies: Vec<String>,
    /// Include soft-deleted versions.
    pub include_deleted: bool,
}

impl ListFilter {
    /// Whether `item` (with currency `currency`) passes.
    pub fn matches<T: Versioned>(&self, item: &T, currency: &str, now: DateTime<Utc>) -> bool {
        (self.include_deleted || item.deleted_at().is_none())
            && (self.ids.is_empty() || self.ids.iter().any(|i| i == item.id()))
            && (self.keys.is_empty() || self.keys.iter().any(|k| k == item.key()))
            && (self.key_versions.is_empty()
                || self
                    .key_versions
                    .iter()
                    .any(|(k, v)| k == item.key() && *v == item.version()))
            && (self.statuses.is_empty() || self.statuses.contains(&item.status_at(now)))
            && (self.currencies.is_empty() || self.currencies.iter().any(|c| c == currency))
    }
}
