//! Cost of one access-phase decision in `tollgate-enforcement`: a lookup in the in-memory snapshot
//! (100,000 subjects) plus the local count of an admitted metered request, beside the raw cost of
//! the same two-level `HashMap` lookup (feature → subject, by `&str`) alone in the same run.
//!
//! Run: `cargo bench -p tollgate --bench decision`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use tollgate::enforcement::{EnforcementConfig, Snapshot};
use tollgate::publisher::AgentAddr;
use tollgate_proto::v1::Entitlement;
use tollgate_proto::v1::entitlement::Kind;

fn main() {
    const SUBJECTS: usize = 100_000;
    const DECISIONS: usize = 5_000_000;
    let snapshot = Snapshot::new(AgentAddr::Tcp("http://127.0.0.1:1".into()));
    let now = chrono::Utc::now().timestamp_millis();
    let entries: Vec<Entitlement> = (0..SUBJECTS)
        .map(|i| Entitlement {
            subject: format!("consumer:{i:08}"),
            feature_key: "api_calls".into(),
            kind: Kind::Metered.into(),
            has_access: true,
            balance: 1e12,
            usage: 0.0,
            overage: 0.0,
            soft_limit: false,
            synced_at_unix_ms: now + 3_600_000,
            reset_at_unix_ms: 0,
        })
        .collect();
    snapshot.apply(entries);
    let config = EnforcementConfig::from_json(
        br#"{"feature":{"key":"api_calls"},"max_stale_seconds":86400}"#,
    )
    .unwrap();
    let subjects: Vec<String> = (0..SUBJECTS).map(|i| format!("consumer:{i:08}")).collect();

    let t0 = Instant::now();
    for i in 0..DECISIONS {
        black_box(snapshot.decide(Some(&subjects[i % SUBJECTS]), &config));
    }
    let decide_ns = t0.elapsed().as_nanos() as f64 / DECISIONS as f64;

    // The raw limit: the same two-level map (feature → subject) looked up by `&str`.
    let mut raw: HashMap<String, HashMap<String, f64>> = HashMap::new();
    let inner: HashMap<String, f64> = subjects.iter().map(|s| (s.clone(), 1.0)).collect();
    raw.insert("api_calls".to_owned(), inner);
    let t0 = Instant::now();
    for i in 0..DECISIONS {
        black_box(
            raw.get(black_box("api_calls"))
                .and_then(|m| m.get(subjects[i % SUBJECTS].as_str())),
        );
    }
    let raw_ns = t0.elapsed().as_nanos() as f64 / DECISIONS as f64;

    println!(
        "tollgate-enforcement decision, {SUBJECTS} subjects in the snapshot, {DECISIONS} decisions, 1 thread"
    );
    println!("{:<52} {:>10}", "run", "ns/op");
    println!(
        "{:<52} {:>10.1}",
        "Snapshot::decide (lookup + staleness + local count)", decide_ns
    );
    println!(
        "{:<52} {:>10.1}",
        "raw feature → subject HashMap lookup by &str", raw_ns
    );
    println!("decide / raw lookup: {:.2}x", decide_ns / raw_ns);
}
