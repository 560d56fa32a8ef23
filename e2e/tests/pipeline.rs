//! The user's whole path with real processes: `tollgate-billing`, `tollgate-agent` and the
//! `tollgate` plugin server started from `kong-config/`, the plugin configured from the decK files,
//! and Kong's side played by the protocol driver with a traffic mix of consumers, Kong versions,
//! API and LLM requests — through faults: the agent killed with -9, billing down then up, the
//! plugin server restarted (Kong's respawn), a config change, malformed traffic. At the end the
//! meter queries at billing equal exactly what Kong metered.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_e2e::kong::pdk::RequestPdk;
use tollgate_e2e::kong::worker::{PluginEntity, Worker};
use tollgate_e2e::stack::{Stack, wait_tcp, wait_unix};

const CONSUMERS: [(&str, &str); 3] = [
    ("5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f", "acme"),
    ("0b7e4c1a-9d2f-4e3b-8a6c-5f4e3d2c1b0a", "globex"),
    ("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "initech"),
];

/// The `tollgate` plugin entries of a decK file, as Kong would hold them.
fn deck_plugins(file: &str) -> Vec<PluginEntity> {
    let path = tollgate_e2e::stack::workspace_root()
        .join("kong-config/deck")
        .join(file);
    let found = tollgate_e2e::deck::plugins(&path, "tollgate").unwrap();
    assert!(!found.is_empty(), "{file} declares tollgate");
    found
}

#[derive(Default)]
struct Expected {
    api: BTreeMap<String, f64>,
    tokens: BTreeMap<String, f64>,
}

/// Sends `n` requests through `workers` (round robin), recording what Kong metered.
async fn traffic(
    workers: &[Arc<Worker>],
    api: &PluginEntity,
    ai: &PluginEntity,
    n: usize,
    offset: usize,
    expected: &mut Expected,
) {
    let mut tasks = Vec::new();
    for (w, worker) in workers.iter().enumerate() {
        let worker = worker.clone();
        let (api, ai) = (api.clone(), ai.clone());
        tasks.push(tokio::spawn(async move {
            let mut metered = Vec::new();
            for i in (w..n).step_by(3) {
                let g = tollgate_e2e::traffic::request(offset + i, &CONSUMERS, None);
                let plugin = if g.ai { &ai } else { &api };
                // A failed log phase is a request Kong did not meter (it logs and moves on).
                if worker
                    .run_phase(
                        plugin,
                        "log",
                        &RequestPdk {
                            request: &g.request,
                            phase: "log",
                        },
                    )
                    .await
                    .is_ok()
                {
                    metered.push((g.subject, g.tokens as f64));
                }
            }
            metered
        }));
    }
    for t in tasks {
        for (subject, tokens) in t.await.unwrap() {
            *expected.api.entry(subject.clone()).or_default() += 1.0;
            if tokens > 0.0 {
                *expected.tokens.entry(subject).or_default() += tokens;
            }
        }
    }
}

async fn totals(stack: &Stack, meter: &str) -> BTreeMap<String, f64> {
    let url = stack.billing_url(&format!("/api/v1/meters/{meter}/query?groupBy=subject"));
    let Ok(resp) = reqwest::get(url).await else {
        return BTreeMap::new();
    };
    let Ok(v) = resp.json::<Value>().await else {
        return BTreeMap::new();
    };
    v["data"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r["subject"].as_str().unwrap_or_default().to_owned(),
                        r["value"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (up to a minute) until billing's totals per subject equal what Kong metered.
async fn billed_exactly(stack: &Stack, expected: &Expected) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (api_totals, token_totals) = (
            totals(stack, "api_requests").await,
            totals(stack, "llm_tokens").await,
        );
        if api_totals == expected.api && token_totals == expected.tokens {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "billing totals never matched\napi: billed {api_totals:?}\n     sent   {:?}\ntokens: billed {token_totals:?}\n        sent   {:?}",
            expected.api,
            expected.tokens
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn new_workers(socket: &Path) -> Vec<Arc<Worker>> {
    (0..3)
        .map(|_| {
            let w = Worker::new(socket);
            w.rpc().set_scatter(true);
            Arc::new(w)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kong_traffic_through_faults_is_billed_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut stack = Stack::start(dir.path()).unwrap();
    let mut api = deck_plugins("01-consumers-key-auth.yaml").remove(0);
    let ai = deck_plugins("03-ai-gateway.yaml").remove(0);
    let mut workers = new_workers(&stack.socket());
    let mut expected = Expected::default();

    traffic(&workers, &api, &ai, 150, 0, &mut expected).await;

    // The agent dies mid-traffic and comes back: the plugin keeps and resends what was not acked.
    stack.agent.kill9();
    traffic(&workers, &api, &ai, 90, 1000, &mut expected).await;
    stack.agent.restart().unwrap();
    wait_tcp(stack.agent_grpc, Duration::from_secs(20)).unwrap();
    traffic(&workers, &api, &ai, 90, 2000, &mut expected).await;

    // Billing down, then up: the agent's disk holds the events.
    stack.billing.kill9();
    traffic(&workers, &api, &ai, 90, 3000, &mut expected).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.billing.restart().unwrap();
    wait_tcp(stack.billing_addr, Duration::from_secs(20)).unwrap();

    // Kong respawns the plugin server (SIGTERM from a worker exit, then a new process).
    stack.plugin.terminate();
    stack.plugin.restart().unwrap();
    wait_unix(&stack.socket(), Duration::from_secs(20)).unwrap();
    traffic(&workers, &api, &ai, 90, 4000, &mut expected).await;
    // New workers, as after a Kong reload.
    workers = new_workers(&stack.socket());

    // A config change: new __seq__, new instance, same metering.
    api.seq += 1;
    let garbage = workers[0]
        .rpc()
        .send_raw(&[0x94, 0x00, 0xc1, 0xff])
        .await
        .unwrap();
    assert!(garbage.is_empty());
    traffic(&workers, &api, &ai, 90, 5000, &mut expected).await;

    let metered: f64 = expected.api.values().sum();
    assert!(metered >= 500.0, "most requests were metered ({metered})");
    eprintln!(
        "metered {metered} requests; expected tokens {:?}",
        expected.tokens
    );
    billed_exactly(&stack, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kong_traffic_while_postgres_is_away_for_30_s_is_billed_exactly() {
    // Billing on its own PostgreSQL cluster, which goes away mid-traffic: billing answers 503 with
    // Retry-After, the agent keeps the events on disk and retries, and billing recovers by itself.
    let cluster = tollgate_e2e::postgres::Cluster::create().unwrap();
    cluster.start().unwrap();
    let url = cluster.database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start_with_env(
        dir.path(),
        &[("TOLLGATE_BILLING_DATABASE_URL", &url)],
        &[("TOLLGATE_AGENT__FLUSH__RETRY_MAX_MS", "2000")],
    )
    .unwrap();
    let api = deck_plugins("01-consumers-key-auth.yaml").remove(0);
    let ai = deck_plugins("03-ai-gateway.yaml").remove(0);
    let workers = new_workers(&stack.socket());
    let mut expected = Expected::default();
    traffic(&workers, &api, &ai, 150, 0, &mut expected).await;
    cluster.stop();
    let away = Instant::now();
    traffic(&workers, &api, &ai, 150, 1000, &mut expected).await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(away.elapsed())).await;
    traffic(&workers, &api, &ai, 60, 2000, &mut expected).await;
    cluster.start().unwrap();
    traffic(&workers, &api, &ai, 90, 3000, &mut expected).await;
    billed_exactly(&stack, &expected).await;
}
