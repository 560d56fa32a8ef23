//! The entitlement cache: values synced from the central service, adjusted by the usage this
//! agent holds that the central service has not counted yet.
//!
//! * Which subjects matter is learnt from the traffic the agent buffers ([`Cache::observe`]); which
//!   features, from config and from what plugins subscribe to over `Watch`. A subject seen for the
//!   first time is fetched at once, not at the next sync tick.
//! * Local accounting: for each feature the agent knows its meter (event type, COUNT or SUM, value
//!   JSONPath, group-by filters). Every ingested event adds its contribution to `ingested` for its
//!   (subject, feature); every delivered one adds to `delivered`. A sync remembers `delivered` as it
//!   was when the fetch started; until the next sync, `ingested - delivered_at_fetch` is usage the
//!   fetched value cannot contain (still buffered, or delivered after the fetch started), and it is
//!   taken off the balance. A single agent therefore never shows more balance than is left.
//!
//! Submodules: [`sync`] (fetching from the central service), [`watch`] (the gRPC stream to plugins),
//! [`http`] (the local entitlement endpoint).

pub mod http;
pub mod sync;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;
use serde_json_path::JsonPath;
use tokio::sync::{broadcast, mpsc};
use tollgate_proto::v1::Entitlement as WireEntitlement;
use tollgate_proto::v1::entitlement::Kind;

/// How a feature's usage is measured, from its meter at the central service.
#[derive(Debug, Clone)]
pub struct FeatureMeter {
    /// The feature key.
    pub feature: String,
    /// CloudEvent type the meter counts.
    pub event_type: String,
    /// COUNT (true) or SUM of `value`.
    pub count: bool,
    /// JSONPath of the value (SUM).
    pub value: Option<JsonPath>,
    /// Group-by filters: JSONPath and required value.
    pub filters: Vec<(JsonPath, String)>,
}

impl FeatureMeter {
    /// What one event contributes (0 when it does not match).
    pub fn contribution(&self, event_type: &str, data: &Value) -> f64 {
        if event_type != self.event_type {
            return 0.0;
        }
        for (path, want) in &self.filters {
            let got = path.query(data).first().map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            if got.as_deref() != Some(want.as_str()) {
                return 0.0;
            }
        }
        if self.count {
            return 1.0;
        }
        match self
            .value
            .as_ref()
            .and_then(|p| p.query(data).first().cloned())
        {
            Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(0.0),
            _ => 0.0,
        }
    }
}

/// What the central service said, and when.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Synced {
    /// Kind, as far as the value tells (a balance means metered).
    pub metered: bool,
    /// `hasAccess`.
    pub has_access: bool,
    /// `balance`.
    pub balance: f64,
    /// `usage`.
    pub usage: f64,
    /// `overage`.
    pub overage: f64,
    /// A metered entitlement with access at zero balance is a soft limit.
    pub soft_limit: bool,
    /// Unix ms of the fetch.
    pub synced_at_ms: i64,
    /// The central service has no entitlement (or no such feature) for this subject.
    pub missing: bool,
    /// Unix ms at which the current usage period ends and usage resets (`currentUsagePeriod.to`
    /// of a metered entitlement); 0 when unknown.
    pub reset_at_ms: i64,
}

#[derive(Debug, Default, Clone)]
struct Entry {
    synced: Option<Synced>,
    /// The [`FetchToken::seq`] of the fetch that gave `synced`.
    synced_seq: u64,
    ingested: f64,
    delivered: f64,
    delivered_at_fetch: f64,
}

/// One value as the agent serves it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LocalValue {
    /// Subject.
    pub subject: String,
    /// Feature key.
    pub feature: String,
    /// `metered`, `boolean` or `static` (static reads as boolean here), `none`.
    pub kind: &'static str,
    /// Access after local usage.
    pub has_access: bool,
    /// Balance after local usage.
    pub balance: f64,
    /// Usage including local usage.
    pub usage: f64,
    /// Overage including local usage.
    pub overage: f64,
    /// Soft limit.
    pub soft_limit: bool,
    /// Unix ms of the last successful sync.
    pub synced_at_ms: i64,
    /// Unix ms at which the usage period ends and usage resets; 0 when unknown.
    pub reset_at_ms: i64,
    /// Usage held here that the central value does not contain yet.
    pub local_usage: f64,
    /// The last sync is older than the stale threshold.
    pub stale: bool,
}

/// Taken when a fetch starts ([`Cache::fetch_started`]) and handed back with its answer
/// ([`Cache::store`]).
#[derive(Debug, Clone, Copy)]
pub struct FetchToken {
    /// Usage delivered when the fetch started: the fetched value contains at least that much.
    delivered: f64,
    /// Fetches are numbered as they start. Fetches of one value overlap (the periodic sync, a
    /// first lookup, a refresh after a watcher connects) and may answer out of order; an answer
    /// from a fetch that started before the stored one's is older news and is dropped, so a slow
    /// periodic fetch that began before a subscription was provisioned never overwrites the newer
    /// value a lookup already stored.
    seq: u64,
}

/// The cache.
pub struct Cache {
    entries: Mutex<HashMap<(String, String), Entry>>,
    fetches: std::sync::atomic::AtomicU64,
    subjects: Mutex<HashSet<String>>,
    features: Mutex<HashMap<String, Option<FeatureMeter>>>,
    new_subjects: mpsc::UnboundedSender<String>,
    changes: broadcast::Sender<Vec<WireEntitlement>>,
    stale_after_ms: i64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Cache {
    /// A cache for `features` (more can be added); the receiver yields subjects seen for the first
    /// time, for the syncer to fetch at once.
    pub fn new(
        features: &[String],
        stale_after_ms: i64,
    ) -> (Cache, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (changes, _) = broadcast::channel(1024);
        let cache = Cache {
            entries: Mutex::new(HashMap::new()),
            fetches: std::sync::atomic::AtomicU64::new(0),
            subjects: Mutex::new(HashSet::new()),
            features: Mutex::new(features.iter().map(|f| (f.clone(), None)).collect()),
            new_subjects: tx,
            changes,
            stale_after_ms,
        };
        (cache, rx)
    }

    /// Feature keys tracked.
    pub fn features(&self) -> Vec<String> {
        let mut f: Vec<String> = lock(&self.features).keys().cloned().collect();
        f.sort();
        f
    }

    /// Subjects seen.
    pub fn subjects(&self) -> Vec<String> {
        let mut s: Vec<String> = lock(&self.subjects).iter().cloned().collect();
        s.sort();
        s
    }

    /// Tracks more features (from a plugin's Watch).
    pub fn track_features(&self, keys: &[String]) -> bool {
        let mut f = lock(&self.features);
        let mut added = false;
        for k in keys {
            if !f.contains_key(k) {
                f.insert(k.clone(), None);
                added = true;
            }
        }
        added
    }

    /// Features whose meter is not known yet.
    pub fn features_without_meter(&self) -> Vec<String> {
        lock(&self.features)
            .iter()
            .filter(|(_, m)| m.is_none())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Records a feature's meter.
    pub fn set_meter(&self, meter: FeatureMeter) {
        lock(&self.features).insert(meter.feature.clone(), Some(meter));
    }

    /// Notes a subject from traffic; a new one is queued for an immediate fetch.
    pub fn observe(&self, subject: &str) {
        let mut s = lock(&self.subjects);
        if !s.contains(subject) {
            s.insert(subject.to_owned());
            let _ = self.new_subjects.send(subject.to_owned());
        }
    }

    /// Adds the usage of events ingested (`delivered = false`) or delivered (`true`).
    pub fn account<'e>(
        &self,
        events: impl IntoIterator<Item = (&'e str, &'e str, &'e [u8])>,
        delivered: bool,
    ) {
        let meters: Vec<FeatureMeter> = lock(&self.features).values().flatten().cloned().collect();
        if meters.is_empty() {
            return;
        }
        let mut changed = Vec::new();
        {
            let mut entries = lock(&self.entries);
            for (subject, ty, data) in events {
                if !meters.iter().any(|m| m.event_type == ty) {
                    continue;
                }
                let Ok(data) = serde_json::from_slice::<Value>(data) else {
                    continue;
                };
                for m in &meters {
                    let c = m.contribution(ty, &data);
                    if c == 0.0 {
                        continue;
                    }
                    let e = entries
                        .entry((subject.to_owned(), m.feature.clone()))
                        .or_default();
                    if delivered {
                        e.delivered += c;
                    } else {
                        e.ingested += c;
                        changed.push((subject.to_owned(), m.feature.clone()));
                    }
                }
            }
        }
        if !changed.is_empty() {
            changed.sort();
            changed.dedup();
            self.publish(&changed);
        }
    }

    /// Marks the start of a fetch for `(subject, feature)`: returns the token to pass to
    /// [`Cache::store`].
    pub fn fetch_started(&self, subject: &str, feature: &str) -> FetchToken {
        let seq = self
            .fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let delivered = lock(&self.entries)
            .get(&(subject.to_owned(), feature.to_owned()))
            .map_or(0.0, |e| e.delivered);
        FetchToken { delivered, seq }
    }

    /// Stores a fetched value, unless a fetch that started later has already stored one.
    pub fn store(&self, subject: &str, feature: &str, synced: Synced, token: FetchToken) {
        let key = (subject.to_owned(), feature.to_owned());
        let changed = {
            let mut entries = lock(&self.entries);
            let e = entries.entry(key.clone()).or_default();
            if token.seq < e.synced_seq {
                return;
            }
            let before = e.synced.clone();
            e.synced_seq = token.seq;
            e.delivered_at_fetch = token.delivered;
            let changed = before.as_ref().map(|b| (b.has_access, b.balance, b.usage))
                != Some((synced.has_access, synced.balance, synced.usage));
            e.synced = Some(synced);
            changed
        };
        if changed {
            self.publish(&[key]);
        }
    }

    /// Usage of `feature` held here for `subject` and not delivered yet: what a value fetched from
    /// the central service right now cannot contain.
    pub fn buffered_usage(&self, subject: &str, feature: &str) -> f64 {
        lock(&self.entries)
            .get(&(subject.to_owned(), feature.to_owned()))
            .map_or(0.0, |e| (e.ingested - e.delivered).max(0.0))
    }

    /// The value for `(subject, feature)`, if ever synced.
    pub fn get(&self, subject: &str, feature: &str) -> Option<LocalValue> {
        let entries = lock(&self.entries);
        let e = entries.get(&(subject.to_owned(), feature.to_owned()))?;
        let s = e.synced.as_ref()?;
        let local = (e.ingested - e.delivered_at_fetch).max(0.0);
        let (balance, usage, overage, has_access, kind) = if s.missing {
            (0.0, 0.0, 0.0, false, "none")
        } else if s.metered {
            let balance = (s.balance - local).max(0.0);
            let overage = s.overage + (local - s.balance).max(0.0);
            (
                balance,
                s.usage + local,
                overage,
                s.soft_limit || balance > 0.0,
                "metered",
            )
        } else {
            (0.0, 0.0, 0.0, s.has_access, "boolean")
        };
        Some(LocalValue {
            subject: subject.to_owned(),
            feature: feature.to_owned(),
            kind,
            has_access,
            balance,
            usage,
            overage,
            soft_limit: s.soft_limit,
            synced_at_ms: s.synced_at_ms,
            reset_at_ms: s.reset_at_ms,
            local_usage: local,
            stale: now_ms() - s.synced_at_ms > self.stale_after_ms,
        })
    }

    /// Every synced value of `subject`.
    pub fn for_subject(&self, subject: &str) -> Vec<LocalValue> {
        let features = self.features();
        features
            .iter()
            .filter_map(|f| self.get(subject, f))
            .collect()
    }

    /// Every synced value, for a snapshot.
    pub fn all(&self) -> Vec<LocalValue> {
        let keys: Vec<(String, String)> = lock(&self.entries).keys().cloned().collect();
        keys.iter().filter_map(|(s, f)| self.get(s, f)).collect()
    }

    /// Subscribes to changes (sent as wire entries).
    pub fn subscribe(&self) -> broadcast::Receiver<Vec<WireEntitlement>> {
        self.changes.subscribe()
    }

    fn publish(&self, keys: &[(String, String)]) {
        if self.changes.receiver_count() == 0 {
            return;
        }
        let entries: Vec<WireEntitlement> = keys
            .iter()
            .filter_map(|(s, f)| self.get(s, f))
            .map(|v| to_wire(&v))
            .collect();
        if !entries.is_empty() {
            let _ = self.changes.send(entries);
        }
    }
}

/// A local value on the wire.
pub fn to_wire(v: &LocalValue) -> WireEntitlement {
    WireEntitlement {
        subject: v.subject.clone(),
        feature_key: v.feature.clone(),
        kind: match v.kind {
            "metered" => Kind::Metered,
            "boolean" => Kind::Boolean,
            _ => Kind::Unspecified,
        }
        .into(),
        has_access: v.has_access,
        balance: v.balance,
        usage: v.usage,
        overage: v.overage,
        soft_limit: v.soft_limit,
        synced_at_unix_ms: v.synced_at_ms,
        reset_at_unix_ms: v.reset_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter() -> FeatureMeter {
        FeatureMeter {
            feature: "calls".into(),
            event_type: "kong.api_request".into(),
            count: true,
            value: None,
            filters: vec![(JsonPath::parse("$.request_method").unwrap(), "GET".into())],
        }
    }

    #[test]
    fn an_answer_from_a_fetch_that_started_earlier_never_overwrites_a_newer_one() {
        let (cache, _rx) = Cache::new(&[], 60_000);
        let value = |has_access, missing| Synced {
            metered: has_access,
            has_access,
            balance: if has_access { 100.0 } else { 0.0 },
            synced_at_ms: now_ms(),
            missing,
            ..Default::default()
        };
        // A periodic sync asks before the entitlement exists; a lookup asks after, and answers
        // first; the slow periodic answer ("no such entitlement") arrives last.
        let periodic = cache.fetch_started("s", "calls");
        let lookup = cache.fetch_started("s", "calls");
        cache.store("s", "calls", value(true, false), lookup);
        cache.store("s", "calls", value(false, true), periodic);
        let v = cache.get("s", "calls").unwrap();
        assert!(v.has_access, "the older answer was dropped: {v:?}");
        // A fetch that starts later replaces it, whatever it says.
        let next = cache.fetch_started("s", "calls");
        cache.store("s", "calls", value(false, true), next);
        assert!(!cache.get("s", "calls").unwrap().has_access);
    }

    #[test]
    fn local_usage_comes_off_the_synced_balance_until_the_next_fetch_covers_it() {
        let (cache, _rx) = Cache::new(&[], 60_000);
        cache.set_meter(meter());
        let synced = Synced {
            metered: true,
            has_access: true,
            balance: 10.0,
            usage: 90.0,
            synced_at_ms: now_ms(),
            ..Default::default()
        };
        let token = cache.fetch_started("s", "calls");
        cache.store("s", "calls", synced, token);
        let get = br#"{"request_method":"GET"}"#.as_slice();
        let post = br#"{"request_method":"POST"}"#.as_slice();
        let events: Vec<(&str, &str, &[u8])> = (0..4)
            .map(|_| ("s", "kong.api_request", get))
            .chain([("s", "kong.api_request", post)])
            .collect();
        cache.account(events.clone(), false);
        let v = cache.get("s", "calls").unwrap();
        assert_eq!(
            (v.balance, v.usage, v.local_usage),
            (6.0, 94.0, 4.0),
            "POST is filtered out"
        );
        // Delivered, then a fetch that includes them: nothing local any more.
        cache.account(events, true);
        let token = cache.fetch_started("s", "calls");
        cache.store(
            "s",
            "calls",
            Synced {
                metered: true,
                has_access: true,
                balance: 6.0,
                usage: 94.0,
                synced_at_ms: now_ms(),
                ..Default::default()
            },
            token,
        );
        let v = cache.get("s", "calls").unwrap();
        assert_eq!((v.balance, v.local_usage), (6.0, 0.0));
        // 7 more than the balance: no access on a hard limit, overage shown.
        let events: Vec<(&str, &str, &[u8])> =
            (0..7).map(|_| ("s", "kong.api_request", get)).collect();
        cache.account(events, false);
        let v = cache.get("s", "calls").unwrap();
        assert_eq!((v.has_access, v.balance, v.overage), (false, 0.0, 1.0));
    }
}
