//! `tollgate-demo`: the README's first command. Starts `tollgate-billing`, `tollgate-agent` and
//! the `tollgate` plugin server on loopback from `kong-config/`, sets up a demo catalog (a customer
//! per Kong consumer, a feature with a limit), plays Kong's side with the protocol driver — a
//! traffic mix of API and LLM requests from every Kong version's serialize shape — then prints the
//! usage per customer and meter as billing sees it and who is over their limit, and leaves the
//! services running until Ctrl-C (or exits at once with `--exit`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tollgate_e2e::kong::pdk::RequestPdk;
use tollgate_e2e::kong::worker::{PhaseOutcome, Worker};
use tollgate_e2e::stack::{Stack, workspace_root};

const CONSUMERS: [(&str, &str, u64); 3] = [
    ("5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f", "acme", 100),
    ("0b7e4c1a-9d2f-4e3b-8a6c-5f4e3d2c1b0a", "globex", 5000),
    ("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "initech", 5000),
];

async fn post(url: &str, body: Value) -> anyhow::Result<Value> {
    let r = reqwest::Client::new().post(url).json(&body).send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url}: {status}: {v}");
    }
    Ok(v)
}

fn age_ms(synced_at_ms: i64) -> i64 {
    tollgate_e2e::traffic::now_ms() as i64 - synced_at_ms
}

async fn get(url: &str) -> anyhow::Result<Value> {
    Ok(reqwest::get(url).await?.json().await?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let exit = std::env::args().any(|a| a == "--exit");
    let requests: usize = std::env::args()
        .skip_while(|a| a != "--requests")
        .nth(1)
        .map(|n| n.parse())
        .transpose()
        .context("--requests takes a number")?
        .unwrap_or(3000);
    let dir = tempfile::Builder::new()
        .prefix("tollgate-demo-")
        .tempdir()?;

    println!(
        "Tollgate demo: metering Kong traffic into a self-hosted, OpenMeter-compatible billing service.\n"
    );
    println!(
        "1. Starting the three services from kong-config/ (data under {}):",
        dir.path().display()
    );
    let stack = Stack::start(dir.path()).context("starting billing, agent and plugin server")?;
    println!(
        "   tollgate-billing  http://{}      OpenMeter API, meters api_requests + llm_tokens",
        stack.billing_addr
    );
    println!(
        "   tollgate-agent    grpc {}  admin http://{}  durable buffer on disk",
        stack.agent_grpc, stack.agent_http
    );
    let _enforcement = stack
        .start_enforcement()
        .context("starting the enforcement plugin server")?;
    println!(
        "   tollgate-enforcement {}   blocks at the limit in Kong's access phase",
        stack.enforcement_socket().display()
    );
    println!(
        "   tollgate          {}   the Kong plugin server",
        stack.socket().display()
    );

    println!(
        "\n2. Demo catalog at billing: a customer per Kong consumer, feature `api_calls` with a monthly limit."
    );
    let billing = |p: &str| stack.billing_url(p);
    post(
        &billing("/api/v1/features"),
        json!({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"}),
    )
    .await?;
    for (id, name, limit) in CONSUMERS {
        post(&billing("/api/v1/customers"), json!({"name": name, "key": name, "usageAttribution": {"subjectKeys": [format!("consumer:{id}")]}})).await?;
        post(
            &billing(&format!("/api/v2/customers/{name}/entitlements")),
            json!({"type": "metered", "featureKey": "api_calls", "usagePeriod": {"interval": "MONTH"}, "issueAfterReset": limit}),
        )
        .await?;
        println!("   customer {name:<8} subject consumer:{id}  limit {limit} API calls / month");
    }

    let deck = workspace_root().join("kong-config/deck");
    let api = tollgate_e2e::deck::plugins(&deck.join("01-consumers-key-auth.yaml"), "tollgate")?
        .remove(0);
    let ai = tollgate_e2e::deck::plugins(&deck.join("03-ai-gateway.yaml"), "tollgate")?.remove(0);
    println!(
        "\n3. Playing Kong: {requests} requests from 3 consumers over 4 nginx workers, Kong 3.4 to 3.9+ log shapes,"
    );
    println!(
        "   every 4th an AI Gateway chat call (decK: kong-config/deck/01-consumers-key-auth.yaml, 03-ai-gateway.yaml)."
    );
    let bar = ProgressBar::new(requests as u64);
    bar.set_style(
        ProgressStyle::with_template("   [{bar:40}] {pos}/{len} requests  {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let worker = Arc::new(Worker::new(stack.socket()));
        let (api, ai, bar) = (api.clone(), ai.clone(), bar.clone());
        let consumers: Vec<(&str, &str)> =
            CONSUMERS.iter().map(|(id, name, _)| (*id, *name)).collect();
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            for k in (w..requests).step_by(4) {
                let g = tollgate_e2e::traffic::request(
                    k,
                    &consumers,
                    Some(tollgate_e2e::traffic::now_ms()),
                );
                let plugin = if g.ai { &ai } else { &api };
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
                    .is_err()
                {
                    failed += 1;
                }
                bar.inc(1);
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await?;
    }
    bar.finish();
    println!(
        "   {} log phases in {:.1}s ({} failed)",
        requests,
        started.elapsed().as_secs_f64(),
        failed
    );

    println!("\n4. Waiting for the agent to deliver everything to billing ...");
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected_api = (requests - failed) as f64;
    loop {
        let v = get(&billing("/api/v1/meters/api_requests/query")).await?;
        let total = v["data"][0]["value"].as_f64().unwrap_or(0.0);
        if total >= expected_api {
            break;
        }
        if Instant::now() > deadline {
            bail!("billing has {total} of {expected_api} API requests after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    println!("\n5. Usage per customer, as billing's meters see it:\n");
    println!(
        "   {:<9} {:>13} {:>15} {:>15} {:>11} {:>9}",
        "customer", "api_requests", "prompt tokens", "output tokens", "limit", "access"
    );
    let mut over = Vec::new();
    for (id, name, limit) in CONSUMERS {
        let subject = format!("consumer:{id}");
        let calls = get(&billing(&format!(
            "/api/v1/meters/api_requests/query?subject={subject}"
        )))
        .await?;
        let tokens = get(&billing(&format!(
            "/api/v1/meters/llm_tokens/query?subject={subject}&groupBy=type"
        )))
        .await?;
        let mut by_type: BTreeMap<String, f64> = BTreeMap::new();
        for row in tokens["data"].as_array().into_iter().flatten() {
            by_type.insert(
                row["groupBy"]["type"].as_str().unwrap_or("").to_owned(),
                row["value"].as_f64().unwrap_or(0.0),
            );
        }
        let value = get(&billing(&format!(
            "/api/v2/customers/{name}/entitlements/api_calls/value"
        )))
        .await?;
        let access = value["hasAccess"].as_bool().unwrap_or(false);
        if !access {
            over.push((name, value.clone()));
        }
        println!(
            "   {:<9} {:>13} {:>15} {:>15} {:>11} {:>9}",
            name,
            calls["data"][0]["value"].as_f64().unwrap_or(0.0),
            by_type.get("request").copied().unwrap_or(0.0),
            by_type.get("response").copied().unwrap_or(0.0),
            limit,
            if access { "yes" } else { "BLOCKED" }
        );
    }
    for (name, v) in &over {
        println!(
            "\n   {name} is over its limit: usage {}, balance {}, overage {} — hasAccess=false at billing.",
            v["usage"], v["balance"], v["overage"]
        );
        let id = CONSUMERS
            .iter()
            .find(|c| c.1 == *name)
            .map(|c| c.0)
            .unwrap_or_default();
        let local = get(&format!(
            "http://{}/v1/entitlements/consumer:{id}/api_calls",
            stack.agent_http
        ))
        .await?;
        println!(
            "   The sidecar agrees, from its cache: has_access={} balance={} usage={} (synced {} ms ago).",
            local["has_access"],
            local["balance"],
            local["usage"],
            age_ms(local["synced_at_ms"].as_i64().unwrap_or(0)),
        );
        // Kong's access phase for this customer's next request, through tollgate-enforcement
        // configured from kong-config/deck/04-route-limit.yaml.
        let enforce =
            tollgate_e2e::deck::plugins(&deck.join("04-route-limit.yaml"), "tollgate-enforcement")?
                .remove(0);
        let worker = Worker::new(stack.enforcement_socket());
        let req =
            tollgate_e2e::traffic::request(0, &[(id, name)], Some(tollgate_e2e::traffic::now_ms()))
                .request;
        match worker
            .run_phase(
                &enforce,
                "access",
                &RequestPdk {
                    request: &req,
                    phase: "access",
                },
            )
            .await?
        {
            PhaseOutcome::Exited {
                status,
                body,
                headers,
            } => {
                let retry_after = headers
                    .as_map()
                    .and_then(|h| h.iter().find(|(k, _)| k.as_str() == Some("Retry-After")))
                    .and_then(|(_, v)| v.as_str())
                    .map(|s| format!(" Retry-After: {s} s"))
                    .unwrap_or_default();
                println!(
                    "   Its next request through Kong is blocked in the access phase: HTTP {status}{retry_after} {body}"
                )
            }
            PhaseOutcome::Returned => println!(
                "   Its next request through Kong would still pass (the snapshot has not caught up)."
            ),
        }
    }

    println!("\n6. Try it yourself while the services run:");
    println!(
        "   curl -s {}",
        billing("/api/v1/meters/api_requests/query?groupBy=subject")
    );
    println!(
        "   curl -s {}",
        billing("/api/v2/customers/acme/entitlements/api_calls/value")
    );
    println!(
        "   curl -s http://{}/v1/entitlements/consumer:{}/api_calls",
        stack.agent_http, CONSUMERS[0].0
    );
    println!(
        "   curl -s http://{}/metrics | grep tollgate_agent_events",
        stack.agent_http
    );
    if exit {
        println!("\nDone (--exit): stopping the services.");
        return Ok(());
    }
    println!("\nPress Ctrl-C to stop the services.");
    tokio::signal::ctrl_c().await?;
    println!("Stopping.");
    Ok(())
}
