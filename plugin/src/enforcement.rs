//! `tollgate-enforcement`: entitlement enforcement in Kong's access phase, decided from an
//! in-memory snapshot that the agent streams over `tollgate.v1.Entitlements/Watch` — no network
//! call on the request path.
//!
//! Config mirrors Kong's `entitlement-enforcement` plugin (reference/konnect-metering.md §9):
//! `customer{look_up_value_in, field}`, `feature{key}`, `fail_policy`, `deny_unknown_customers`,
//! `max_stale_seconds`, `response_codes`. The decision: a stale snapshot or an unreachable agent →
//! the fail policy; no value for the subject → `deny_unknown_customers`; no access → 429 for a
//! metered limit reached, 403 for a missing feature; otherwise allowed, and for a metered feature
//! the admitted request is counted locally until the agent's next value covers it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tollgate_proto::v1::entitlement::Kind;
use tollgate_proto::v1::entitlements_client::EntitlementsClient;
use tollgate_proto::v1::{Entitlement, LookupRequest, WatchRequest};

/// How long a subject's first request may wait for the agent's lookup.
pub const COLD_LOOKUP_TIMEOUT: Duration = Duration::from_millis(100);

use crate::publisher::{AgentAddr, connect};

/// Where the customer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CustomerSource {
    /// The authenticated consumer: subject `consumer:<uuid>`.
    #[default]
    Consumer,
    /// A request header named by `field`.
    Header,
    /// A query argument named by `field`.
    Query,
}

#[derive(Debug, Deserialize, Default)]
struct RawCustomer {
    #[serde(default)]
    look_up_value_in: Option<CustomerSource>,
    #[serde(default)]
    field: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct RawFeature {
    #[serde(default)]
    key: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct RawCodes {
    #[serde(default)]
    usage_limit_reached: Option<u16>,
    #[serde(default)]
    no_access: Option<u16>,
    #[serde(default)]
    unavailable: Option<u16>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    customer: Option<RawCustomer>,
    #[serde(default)]
    feature: Option<RawFeature>,
    #[serde(default)]
    fail_policy: Option<String>,
    #[serde(default)]
    deny_unknown_customers: Option<bool>,
    #[serde(default)]
    max_stale_seconds: Option<f64>,
    #[serde(default)]
    response_codes: Option<RawCodes>,
}

/// A validated enforcement config.
#[derive(Debug, Clone)]
pub struct EnforcementConfig {
    /// Where the subject comes from.
    pub source: CustomerSource,
    /// Header or query name.
    pub field: Option<String>,
    /// The feature enforced.
    pub feature: String,
    /// Allow (true) or deny when the snapshot is stale or the agent unreachable.
    pub fail_open: bool,
    /// Deny subjects the agent has no value for.
    pub deny_unknown: bool,
    /// A snapshot older than this is stale.
    pub max_stale_ms: i64,
    /// Status for a metered limit reached.
    pub limit_status: u16,
    /// Status for no access (missing feature, unknown customer).
    pub no_access_status: u16,
    /// Status when the fail policy denies.
    pub unavailable_status: u16,
}

impl EnforcementConfig {
    /// Parses the `Config` JSON of a `StartInstance`; errors name the field.
    pub fn from_json(json: &[u8]) -> Result<Self, String> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            format!(
                "invalid tollgate-enforcement config: config.{}: {}",
                e.path(),
                e.inner()
            )
        })?;
        let customer = raw.customer.unwrap_or_default();
        let source = customer.look_up_value_in.unwrap_or_default();
        let field = customer.field.filter(|f| !f.is_empty());
        if source != CustomerSource::Consumer && field.is_none() {
            return Err("invalid tollgate-enforcement config: config.customer.field: required for header and query lookups".into());
        }
        let feature = raw
            .feature
            .and_then(|f| f.key)
            .filter(|k| !k.is_empty())
            .ok_or("invalid tollgate-enforcement config: config.feature.key: required")?;
        let fail_open = match raw.fail_policy.as_deref() {
            None | Some("allow") => true,
            Some("deny") => false,
            Some(other) => {
                return Err(format!(
                    "invalid tollgate-enforcement config: config.fail_policy: {other:?} is not allow or deny"
                ));
            }
        };
        let codes = raw.response_codes.unwrap_or_default();
        Ok(EnforcementConfig {
            source,
            field,
            feature,
            fail_open,
            deny_unknown: raw.deny_unknown_customers.unwrap_or(true),
            max_stale_ms: (raw.max_stale_seconds.unwrap_or(60.0) * 1000.0) as i64,
            limit_status: codes.usage_limit_reached.unwrap_or(429),
            no_access_status: codes.no_access.unwrap_or(403),
            unavailable_status: codes.unavailable.unwrap_or(503),
        })
    }
}

/// One entry as the plugin holds it, with the requests it admitted since the agent's value.
#[derive(Debug, Clone)]
struct Local {
    value: Entitlement,
    /// Usage as the plugin counts it: the agent's usage, raised by every admitted request.
    local_usage: f64,
    /// When a request last asked the agent again about this value (stale, or its period over).
    asked_ms: i64,
}

/// A value that is stale or from an ended period is asked about again at most this often, so an
/// outage of the central service does not put a lookup on every request.
const ASK_AGAIN_MS: i64 = 1_000;

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Let it through.
    Allow,
    /// Answer with this status and reason.
    Deny {
        /// HTTP status.
        status: u16,
        /// Machine-readable reason.
        reason: &'static str,
        /// Balance left (metered).
        balance: f64,
        /// Unix ms at which usage resets (a reached limit with a known period); 0 otherwise.
        reset_at_ms: i64,
    },
}

/// The in-memory snapshot and the Watch client that feeds it.
pub struct Snapshot {
    agent: AgentAddr,
    client: tokio::sync::Mutex<Option<EntitlementsClient<tonic::transport::Channel>>>,
    /// Feature key → subject → value: looked up by `&str` with no key to build per request.
    entries: RwLock<HashMap<String, HashMap<String, Mutex<Local>>>>,
    features: Mutex<HashSet<String>>,
    last_update_ms: AtomicI64,
    connected: AtomicBool,
    resubscribe: tokio::sync::Notify,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Snapshot {
    /// An empty snapshot of the agent at `agent`; call [`Snapshot::run`] to fill it.
    pub fn new(agent: AgentAddr) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            agent,
            client: tokio::sync::Mutex::new(None),
            entries: RwLock::new(HashMap::new()),
            features: Mutex::new(HashSet::new()),
            last_update_ms: AtomicI64::new(0),
            connected: AtomicBool::new(false),
            resubscribe: tokio::sync::Notify::new(),
        })
    }

    /// Subscribes to a feature (an instance started with it).
    pub fn want(&self, feature: &str) {
        let added = self
            .features
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(feature.to_owned());
        if added {
            self.resubscribe.notify_one();
        }
    }

    /// Applies an update. A snapshot upserts like a change: an entry it lacks may hold requests
    /// this plugin admitted that the agent has not seen yet (learnt by a cold lookup while the
    /// stream was connecting), and dropping it would forget them. Old entries age out by
    /// `synced_at` (the staleness check).
    pub fn apply(&self, entries: Vec<Entitlement>) {
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        for e in entries {
            let subjects = match map.get_mut(e.feature_key.as_str()) {
                Some(subjects) => subjects,
                None => map.entry(e.feature_key.clone()).or_default(),
            };
            match subjects.get(e.subject.as_str()) {
                Some(slot) => {
                    let mut l = slot.lock().unwrap_or_else(|e| e.into_inner());
                    // A period reset moves usage down: start over from the agent's figure.
                    // Otherwise keep what this plugin admitted that the agent has not seen yet.
                    let local_usage = if e.usage < l.value.usage {
                        e.usage
                    } else {
                        l.local_usage.max(e.usage)
                    };
                    *l = Local {
                        local_usage,
                        value: e,
                        asked_ms: l.asked_ms,
                    };
                }
                None => {
                    let local_usage = e.usage;
                    subjects.insert(
                        e.subject.clone(),
                        Mutex::new(Local {
                            value: e,
                            local_usage,
                            asked_ms: 0,
                        }),
                    );
                }
            }
        }
        self.last_update_ms.store(now_ms(), Ordering::Release);
    }

    /// Decides for `subject` under `config`, counting an admitted metered request.
    pub fn decide(&self, subject: Option<&str>, config: &EnforcementConfig) -> Decision {
        let fail = |reason| {
            if config.fail_open {
                Decision::Allow
            } else {
                Decision::Deny {
                    status: config.unavailable_status,
                    reason,
                    balance: 0.0,
                    reset_at_ms: 0,
                }
            }
        };
        let now = now_ms();
        let fresh = self.connected.load(Ordering::Acquire)
            || now - self.last_update_ms.load(Ordering::Acquire) <= config.max_stale_ms;
        if self.last_update_ms.load(Ordering::Acquire) == 0 || !fresh {
            return fail("entitlements_unavailable");
        }
        let unknown = || {
            if config.deny_unknown {
                Decision::Deny {
                    status: config.no_access_status,
                    reason: "unknown_customer",
                    balance: 0.0,
                    reset_at_ms: 0,
                }
            } else {
                Decision::Allow
            }
        };
        let Some(subject) = subject else {
            return unknown();
        };
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = map
            .get(config.feature.as_str())
            .and_then(|subjects| subjects.get(subject))
        else {
            return unknown();
        };
        let mut l = slot.lock().unwrap_or_else(|e| e.into_inner());
        if now - l.value.synced_at_unix_ms > config.max_stale_ms {
            return fail("entitlements_stale");
        }
        match l.value.kind() {
            Kind::Metered => {
                let balance = l.value.balance - (l.local_usage - l.value.usage);
                if l.value.soft_limit || balance > 0.0 {
                    l.local_usage += 1.0;
                    Decision::Allow
                } else {
                    Decision::Deny {
                        status: config.limit_status,
                        reason: "usage_limit_reached",
                        balance: 0.0,
                        reset_at_ms: l.value.reset_at_unix_ms,
                    }
                }
            }
            _ if l.value.has_access => Decision::Allow,
            _ => Decision::Deny {
                status: config.no_access_status,
                reason: "no_access",
                balance: 0.0,
                reset_at_ms: 0,
            },
        }
    }

    /// Whether `(subject, feature)` should be asked of the agent before deciding: the snapshot has
    /// no value for it, or only a stale one, and the agent is connected (when it is not, asking
    /// would only add latency: the fail policy decides at once).
    pub fn needs_lookup(&self, subject: &str, feature: &str, max_stale_ms: i64) -> bool {
        if !self.connected.load(Ordering::Acquire)
            && self.last_update_ms.load(Ordering::Acquire) != 0
        {
            return false;
        }
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        match map.get(feature).and_then(|subjects| subjects.get(subject)) {
            None => true,
            Some(slot) => {
                let mut l = slot.lock().unwrap_or_else(|e| e.into_inner());
                let now = now_ms();
                let stale = now - l.value.synced_at_unix_ms > max_stale_ms;
                // A value from a usage period that has ended: usage has reset centrally.
                let period_over = l.value.reset_at_unix_ms > 0 && now >= l.value.reset_at_unix_ms;
                let ask = (stale || period_over) && now - l.asked_ms >= ASK_AGAIN_MS;
                if ask {
                    l.asked_ms = now;
                }
                ask
            }
        }
    }

    /// A subject's first request (or a stale value): ask the agent once (bounded by [`COLD_LOOKUP_TIMEOUT`]) instead of
    /// treating a customer the agent simply has not fetched yet as unknown. The only call to the
    /// agent on the request path, and once per subject and feature.
    pub async fn lookup_cold(&self, subject: &str, feature: &str) {
        let ask = async {
            let mut client = self.client.lock().await;
            if client.is_none() {
                *client = Some(EntitlementsClient::new(connect(&self.agent).await.ok()?));
            }
            let reply = client
                .as_mut()?
                .lookup(LookupRequest {
                    subject: subject.to_owned(),
                    feature_key: feature.to_owned(),
                })
                .await;
            match reply {
                Ok(r) => Some(r.into_inner()),
                Err(_) => {
                    *client = None;
                    None
                }
            }
        };
        if let Ok(Some(reply)) = tokio::time::timeout(COLD_LOOKUP_TIMEOUT, ask).await
            && let Some(e) = reply.entitlement.filter(|_| reply.found)
        {
            self.apply(vec![e]);
        }
    }

    /// Keeps a Watch stream to the agent open for the wanted features, forever.
    pub async fn run(self: Arc<Self>, client_name: String) {
        let agent = self.agent.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let features: Vec<String> = self
                .features
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            if features.is_empty() {
                self.resubscribe.notified().await;
                continue;
            }
            let result = async {
                let channel = connect(&agent).await.map_err(|e| e.to_string())?;
                let mut stream = EntitlementsClient::new(channel)
                    .watch(WatchRequest {
                        feature_keys: features.clone(),
                        client: client_name.clone(),
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                loop {
                    tokio::select! {
                        msg = stream.message() => match msg {
                            Ok(Some(update)) => {
                                self.connected.store(true, Ordering::Release);
                                self.apply(update.entries);
                            }
                            Ok(None) => return Err("agent closed the stream".to_owned()),
                            Err(e) => return Err(e.to_string()),
                        },
                        _ = self.resubscribe.notified() => return Ok(()),
                    }
                }
            }
            .await;
            self.connected.store(false, Ordering::Release);
            match result {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "entitlement stream to the agent is down; deciding from the last snapshot until it is stale");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_proto::v1::entitlement::Kind;

    fn exhausted(reset_at_unix_ms: i64) -> Entitlement {
        Entitlement {
            subject: "consumer:a".into(),
            feature_key: "api_calls".into(),
            kind: Kind::Metered.into(),
            has_access: false,
            balance: 0.0,
            usage: 100.0,
            overage: 0.0,
            soft_limit: false,
            synced_at_unix_ms: now_ms(),
            reset_at_unix_ms,
        }
    }

    fn config() -> EnforcementConfig {
        EnforcementConfig::from_json(br#"{"feature":{"key":"api_calls"}}"#).unwrap()
    }

    #[test]
    fn a_reached_limit_carries_its_reset_time() {
        let snap = Snapshot::new(AgentAddr::Tcp("http://127.0.0.1:1".into()));
        let reset = now_ms() + 3_600_000;
        snap.apply(vec![exhausted(reset)]);
        assert_eq!(
            snap.decide(Some("consumer:a"), &config()),
            Decision::Deny {
                status: 429,
                reason: "usage_limit_reached",
                balance: 0.0,
                reset_at_ms: reset,
            }
        );
    }

    #[test]
    fn a_value_from_an_ended_period_is_asked_again_but_not_on_every_request() {
        let snap = Snapshot::new(AgentAddr::Tcp("http://127.0.0.1:1".into()));
        snap.connected.store(true, Ordering::Release);
        let max_stale = 60_000;
        snap.apply(vec![exhausted(now_ms() + 3_600_000)]);
        assert!(!snap.needs_lookup("consumer:a", "api_calls", max_stale));
        // The period ended a moment ago: usage has reset at the central service.
        snap.apply(vec![exhausted(now_ms() - 1)]);
        assert!(snap.needs_lookup("consumer:a", "api_calls", max_stale));
        // Asked once; the next requests within ASK_AGAIN_MS decide from what is there.
        assert!(!snap.needs_lookup("consumer:a", "api_calls", max_stale));
        // Unknown reset time: only staleness counts.
        snap.apply(vec![Entitlement {
            subject: "consumer:b".into(),
            ..exhausted(0)
        }]);
        assert!(!snap.needs_lookup("consumer:b", "api_calls", max_stale));
    }
}
