//! Enforcement inside the proxy: the decision for one request from the entitlement values the
//! root context keeps in shared data (refreshed from the agent's local endpoint on `on_tick`),
//! and the deny response — the same status, JSON body and headers as `tollgate-enforcement`
//! (plugin/src/server.rs) so clients cannot tell the two forms apart.
//!
//! Shared data (one store for every worker of the host):
//! * `tollgate/ent/<feature>/<subject>`: the agent's value ([`Stored`], JSON), `kind` `pending`
//!   while a first-seen subject waits for the next tick's lookup, `none` when the agent has no
//!   entitlement for it.
//! * `tollgate/used/<feature>/<subject>`: requests admitted since that value (decimal text),
//!   so a limit holds between refreshes.
//! * `tollgate/updated/<feature>`: Unix ms of the last answer from the agent.
//!
//! No call is made on the request path: a first-seen subject is decided by the fail policy
//! until the next tick has asked the agent (one flush period at most).

use serde::{Deserialize, Serialize};

use crate::config::Enforcement;

/// An entitlement value as the filter keeps it (the agent's `/v1/entitlements` fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// `metered`, `boolean`, `static`, `none` (the agent has none), `pending` (not asked yet).
    pub kind: String,
    /// Access (after the agent's local usage).
    #[serde(default)]
    pub has_access: bool,
    /// Balance (after the agent's local usage).
    #[serde(default)]
    pub balance: f64,
    /// Soft limit: never deny.
    #[serde(default)]
    pub soft_limit: bool,
    /// When the agent last synced it with the central service, Unix ms.
    #[serde(default)]
    pub synced_at_ms: i64,
    /// When usage resets, Unix ms (0 unknown).
    #[serde(default)]
    pub reset_at_ms: i64,
}

/// Shared-data key of a subject's value.
pub fn value_key(feature: &str, subject: &str) -> String {
    format!("tollgate/ent/{feature}/{subject}")
}

/// Shared-data key of a subject's admitted-request count.
pub fn used_key(feature: &str, subject: &str) -> String {
    format!("tollgate/used/{feature}/{subject}")
}

/// Shared-data key of the last answer from the agent for `feature`.
pub fn updated_key(feature: &str) -> String {
    format!("tollgate/updated/{feature}")
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Let it through; `count` when it uses a metered balance.
    Allow {
        /// Count it against the subject's local usage.
        count: bool,
    },
    /// Answer with this status and reason.
    Deny {
        /// HTTP status.
        status: u16,
        /// Machine-readable reason.
        reason: &'static str,
        /// Balance left.
        balance: f64,
        /// Unix ms at which usage resets (0 unknown).
        reset_at_ms: i64,
    },
}

/// Decides for `subject` (None: the request has none) from its stored value, the requests
/// admitted since, and the last time the agent answered (`updated_ms`, 0 never).
pub fn decide(
    config: &Enforcement,
    subject: Option<&str>,
    value: Option<&Stored>,
    used: f64,
    updated_ms: i64,
    now_ms: i64,
) -> Decision {
    let fail = |reason| {
        if config.fail_open {
            Decision::Allow { count: false }
        } else {
            Decision::Deny {
                status: config.unavailable_status,
                reason,
                balance: 0.0,
                reset_at_ms: 0,
            }
        }
    };
    if updated_ms == 0 || now_ms - updated_ms > config.max_stale_ms {
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
            Decision::Allow { count: false }
        }
    };
    if subject.is_none() {
        return unknown();
    }
    let Some(v) = value else {
        return fail("entitlements_unavailable");
    };
    match v.kind.as_str() {
        "pending" => fail("entitlements_unavailable"),
        "none" => unknown(),
        _ if now_ms - v.synced_at_ms > config.max_stale_ms => fail("entitlements_stale"),
        "metered" => {
            let balance = v.balance - used;
            if v.soft_limit || balance > 0.0 {
                Decision::Allow { count: true }
            } else {
                Decision::Deny {
                    status: config.limit_status,
                    reason: "usage_limit_reached",
                    balance: 0.0,
                    reset_at_ms: v.reset_at_ms,
                }
            }
        }
        _ if v.has_access => Decision::Allow { count: false },
        _ => Decision::Deny {
            status: config.no_access_status,
            reason: "no_access",
            balance: 0.0,
            reset_at_ms: 0,
        },
    }
}

/// A deny as `tollgate-enforcement` answers it through `kong.response.exit`: status, headers
/// (Kong adds the JSON content type for a table body) and the JSON body.
pub fn deny_response(
    feature: &str,
    status: u16,
    reason: &str,
    balance: f64,
    reset_at_ms: i64,
    now_ms: i64,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let message = match reason {
        "usage_limit_reached" => "Usage limit reached for this feature",
        "no_access" => "No access to this feature",
        "unknown_customer" => "Unknown customer",
        _ => "Entitlements are unavailable",
    };
    let mut body = serde_json::Map::new();
    body.insert("message".into(), message.into());
    body.insert("reason".into(), reason.into());
    body.insert("feature".into(), feature.into());
    let mut headers = vec![
        (
            "Content-Type".to_owned(),
            "application/json; charset=utf-8".to_owned(),
        ),
        ("X-Tollgate-Feature".to_owned(), feature.to_owned()),
        ("X-Tollgate-Reason".to_owned(), reason.to_owned()),
        ("X-Tollgate-Balance".to_owned(), balance.to_string()),
    ];
    if reset_at_ms > now_ms
        && let Some(reset) = chrono::DateTime::from_timestamp_millis(reset_at_ms)
    {
        let at = reset.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let retry_after = (reset_at_ms - now_ms + 999) / 1000;
        headers.push(("Retry-After".to_owned(), retry_after.to_string()));
        headers.push(("X-Tollgate-Reset".to_owned(), at.clone()));
        body.insert("reset_at".into(), at.into());
    }
    let body = serde_json::Value::Object(body).to_string().into_bytes();
    (status, headers, body)
}

/// Reads the agent's `/v1/entitlements` answers: one value or an array of them, each with its
/// `subject` and `feature`.
pub fn parse_agent_values(body: &[u8]) -> Result<Vec<(String, String, Stored)>, String> {
    #[derive(Deserialize)]
    struct Agent {
        subject: String,
        feature: String,
        #[serde(flatten)]
        value: Stored,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Agent),
        Many(Vec<Agent>),
    }
    let parsed: OneOrMany = serde_json::from_slice(body)
        .map_err(|e| format!("the agent's entitlement answer is not understood: {e}"))?;
    let list = match parsed {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(v) => v,
    };
    Ok(list
        .into_iter()
        .map(|a| (a.subject, a.feature, a.value))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(fail_open: bool) -> Enforcement {
        Enforcement {
            feature: "api_calls".into(),
            fail_open,
            deny_unknown: true,
            max_stale_ms: 60_000,
            limit_status: 429,
            no_access_status: 403,
            unavailable_status: 503,
        }
    }

    fn metered(balance: f64) -> Stored {
        Stored {
            kind: "metered".into(),
            has_access: balance > 0.0,
            balance,
            soft_limit: false,
            synced_at_ms: 1_000,
            reset_at_ms: 5_000,
        }
    }

    #[test]
    fn a_limit_holds_at_exactly_the_balance() {
        let c = config(true);
        let v = metered(3.0);
        for used in 0..3 {
            assert_eq!(
                decide(&c, Some("s"), Some(&v), used as f64, 1_000, 2_000),
                Decision::Allow { count: true }
            );
        }
        assert_eq!(
            decide(&c, Some("s"), Some(&v), 3.0, 1_000, 2_000),
            Decision::Deny {
                status: 429,
                reason: "usage_limit_reached",
                balance: 0.0,
                reset_at_ms: 5_000
            }
        );
    }

    #[test]
    fn unknown_pending_stale_and_boolean_values() {
        let c = config(false);
        let none = Stored {
            kind: "none".into(),
            ..metered(0.0)
        };
        let deny = |status, reason| Decision::Deny {
            status,
            reason,
            balance: 0.0,
            reset_at_ms: 0,
        };
        assert_eq!(
            decide(&c, Some("s"), Some(&none), 0.0, 1_000, 2_000),
            deny(403, "unknown_customer")
        );
        assert_eq!(
            decide(&c, None, None, 0.0, 1_000, 2_000),
            deny(403, "unknown_customer")
        );
        let pending = Stored {
            kind: "pending".into(),
            ..metered(0.0)
        };
        assert_eq!(
            decide(&c, Some("s"), Some(&pending), 0.0, 1_000, 2_000),
            deny(503, "entitlements_unavailable")
        );
        assert_eq!(
            decide(&config(true), Some("s"), Some(&pending), 0.0, 1_000, 2_000),
            Decision::Allow { count: false }
        );
        assert_eq!(
            decide(
                &c,
                Some("s"),
                Some(&metered(5.0)),
                0.0,
                1_000,
                1_000 + 60_001
            ),
            deny(503, "entitlements_unavailable")
        );
        let no = Stored {
            kind: "boolean".into(),
            has_access: false,
            ..metered(0.0)
        };
        assert_eq!(
            decide(&c, Some("s"), Some(&no), 0.0, 1_000, 2_000),
            deny(403, "no_access")
        );
    }

    #[test]
    fn the_deny_response_matches_the_external_plugin() {
        let (status, headers, body) =
            deny_response("api_calls", 429, "usage_limit_reached", 0.0, 10_500, 9_000);
        assert_eq!(status, 429);
        let h = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(h("X-Tollgate-Reason"), Some("usage_limit_reached"));
        assert_eq!(h("X-Tollgate-Balance"), Some("0"));
        assert_eq!(h("Retry-After"), Some("2"));
        assert_eq!(h("X-Tollgate-Reset"), Some("1970-01-01T00:00:10.500Z"));
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"message": "Usage limit reached for this feature", "reason": "usage_limit_reached", "feature": "api_calls", "reset_at": "1970-01-01T00:00:10.500Z"})
        );
    }

    #[test]
    fn agent_answers_one_or_many() {
        let one = br#"{"subject":"consumer:a","feature":"api_calls","kind":"metered","has_access":true,"balance":4,"usage":6,"overage":0,"soft_limit":false,"synced_at_ms":1,"reset_at_ms":2,"local_usage":0,"stale":false}"#;
        let v = parse_agent_values(one).unwrap();
        assert_eq!(v[0].0, "consumer:a");
        assert_eq!(v[0].2.balance, 4.0);
        let many = format!("[{}]", std::str::from_utf8(one).unwrap());
        assert_eq!(parse_agent_values(many.as_bytes()).unwrap().len(), 1);
        assert!(parse_agent_values(b"{\"x\":1}").is_err());
    }
}
