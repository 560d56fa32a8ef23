//! `tollgate-demo`: the README's first command. Starts `tollgate-billing` (on its simulated
//! clock), `tollgate-agent`, and the `tollgate` and `tollgate-enforcement` plugin servers on
//! loopback from `kong-config/`; builds a demo catalog as plans (a free tier with a hard limit, a
//! paid tier with a flat fee and graduated usage prices) and subscribes a customer per Kong
//! consumer; plays Kong's side with the protocol driver — every request through the access phase
//! first (refused ones answered 429 by the gateway) and then the log phase, a traffic mix of API
//! and LLM requests from every Kong version's serialize shape; prints the usage per customer as
//! billing sees it and how many requests the gateway refused; then advances billing's clock past
//! the end of the billing period and prints each customer's invoice (lines, tiers, totals) with
//! the URL of its printable page. Leaves the services running until Ctrl-C (or exits at once with
//! `--exit`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tollgate_e2e::kong::pdk::RequestPdk;
use tollgate_e2e::kong::worker::{PhaseOutcome, Worker};
use tollgate_e2e::stack::{Stack, workspace_root};

/// Kong consumers (id, username) and the plan each one's customer is subscribed to.
const CONSUMERS: [(&str, &str, &str); 3] = [
    ("5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f", "acme", "free"),
    ("0b7e4c1a-9d2f-4e3b-8a6c-5f4e3d2c1b0a", "globex", "growth"),
    ("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "initech", "growth"),
];

/// The free tier's monthly API calls, refused at the gateway beyond that.
const FREE_CALLS: u64 = 100;

/// Billing's HTTP API, as the demo uses it.
struct Billing {
    base: String,
    http: reqwest::Client,
}

impl Billing {
    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let r = req.send().await.with_context(|| what.to_owned())?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{what}: {status}: {v}");
        }
        Ok(v)
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.post(&url).json(&body), &format!("POST {url}"))
            .await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), &format!("GET {url}")).await
    }
}

fn age_ms(synced_at_ms: i64) -> i64 {
    tollgate_e2e::traffic::now_ms() as i64 - synced_at_ms
}

/// A usage-based rate card for `feature`, billed monthly.
fn usage_card(feature: &str, name: &str, price: Value, entitlement: Value) -> Value {
    json!({"type": "usage_based", "key": feature, "name": name, "featureKey": feature,
           "billingCadence": "P1M", "price": price, "entitlementTemplate": entitlement})
}

/// The demo catalog: meters' features, a free plan and a paid one, both published.
async fn catalog(billing: &Billing) -> anyhow::Result<()> {
    billing
        .post(
            "/api/v1/features",
            json!({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"}),
        )
        .await?;
    billing
        .post(
            "/api/v1/features",
            json!({"key": "llm_tokens", "name": "LLM tokens", "meterSlug": "llm_tokens"}),
        )
        .await?;
    let free = json!({
    "key": "free", "name": "Free", "currency": "USD", "billingCadence": "P1M",
    "phases": [{"key": "free", "name": "Free", "duration": null, "rateCards": [
        usage_card("api_calls", "API calls", Value::Null,
            json!({"type": "metered", "issueAfterReset": FREE_CALLS, "isSoftLimit": false, "usagePeriod": "P1M"})),
    ]}]});
    let growth = json!({
    "key": "growth", "name": "Growth", "currency": "USD", "billingCadence": "P1M",
    "phases": [{"key": "paid", "name": "Paid", "duration": null, "rateCards": [
        {"type": "flat_fee", "key": "platform", "name": "Platform fee", "billingCadence": "P1M",
         "price": {"type": "flat", "amount": "29", "paymentTerm": "in_advance"}},
        usage_card("api_calls", "API calls",
            json!({"type": "tiered", "mode": "graduated", "tiers": [
                {"upToAmount": "200", "unitPrice": {"type": "unit", "amount": "0"}},
                {"upToAmount": "600", "unitPrice": {"type": "unit", "amount": "0.01"}},
                {"unitPrice": {"type": "unit", "amount": "0.005"}}]}),
            json!({"type": "metered", "issueAfterReset": 100000, "isSoftLimit": true, "usagePeriod": "P1M"})),
        usage_card("llm_tokens", "LLM tokens",
            json!({"type": "unit", "amount": "0.00002"}),
            json!({"type": "metered", "issueAfterReset": 0, "isSoftLimit": true, "usagePeriod": "P1M"})),
    ]}]});
    for plan in [free, growth] {
        let created = billing.post("/api/v1/plans", plan).await?;
        let id = created["id"].as_str().context("a created plan has an id")?;
        billing
            .post(&format!("/api/v1/plans/{id}/publish"), json!({}))
            .await?;
    }
    Ok(())
}

/// What the gateway did with one consumer's requests.
#[derive(Default, Clone)]
struct Answered {
    admitted: u64,
    refused: u64,
    /// The first refusal's request number, status and body.
    first_refusal: Option<(usize, u16, String)>,
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
        "Tollgate demo: metering, limiting and billing Kong traffic with a self-hosted, OpenMeter-compatible service.\n"
    );
    println!(
        "1. Starting the services from kong-config/ (data under {}):",
        dir.path().display()
    );
    let stack = Stack::start_with_env(
        dir.path(),
        &[("TOLLGATE_BILLING_SIMULATED_CLOCK", "true")],
        &[],
    )
    .context("starting billing, agent and plugin server")?;
    println!(
        "   tollgate-billing  http://{}      OpenMeter API, meters api_requests + llm_tokens, simulated clock",
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
        "   tollgate-enforcement {}   Kong's access phase: limits from the agent's snapshot",
        stack.enforcement_socket().display()
    );
    println!(
        "   tollgate          {}   Kong's log phase: metering",
        stack.socket().display()
    );
    let billing = Billing {
        base: format!("http://{}", stack.billing_addr),
        http: reqwest::Client::new(),
    };

    println!("\n2. Demo catalog at billing, as plans, and a subscription per Kong consumer:");
    catalog(&billing).await?;
    println!(
        "   plan free    {FREE_CALLS} API calls a month, refused at the gateway beyond that (429)"
    );
    println!(
        "   plan growth  $29/month in advance; API calls graduated: 200 included, then $0.01 up to 600, then $0.005;"
    );
    println!("                LLM tokens $0.00002 each");
    for (id, name, plan) in CONSUMERS {
        billing
            .post(
                "/api/v1/customers",
                json!({"name": name, "key": name,
            "usageAttribution": {"subjectKeys": [format!("consumer:{id}")]}}),
            )
            .await?;
        billing
            .post(
                "/api/v1/subscriptions",
                json!({"customerKey": name, "plan": {"key": plan}}),
            )
            .await?;
        println!("   customer {name:<8} subject consumer:{id}  on {plan}");
    }

    // The subscriptions provisioned each customer's `api_calls` entitlement; wait until the
    // agent's snapshot has them, as a gateway would before its first request.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (id, name, _) in CONSUMERS {
        let url = format!(
            "http://{}/v1/entitlements/consumer:{id}/api_calls",
            stack.agent_http
        );
        loop {
            let local: Value = billing.send(billing.http.get(&url), &url).await?;
            if local["has_access"] == Value::Bool(true) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the agent has no access for {name} after 30 s: {local}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!(
        "   the agent's entitlement snapshot has every customer's api_calls: the gateway follows the plans"
    );

    let deck = workspace_root().join("kong-config/deck");
    let api = tollgate_e2e::deck::plugins(&deck.join("01-consumers-key-auth.yaml"), "tollgate")?
        .remove(0);
    let ai = tollgate_e2e::deck::plugins(&deck.join("03-ai-gateway.yaml"), "tollgate")?.remove(0);
    let limit =
        tollgate_e2e::deck::plugins(&deck.join("04-route-limit.yaml"), "tollgate-enforcement")?
            .remove(0);
    println!(
        "\n3. Playing Kong: {requests} requests from 3 consumers over 4 nginx workers, Kong 3.4 to 3.9+ log shapes,"
    );
    println!(
        "   every one through the access phase first (decK: kong-config/deck/04-route-limit.yaml), then the"
    );
    println!(
        "   log phase; every 4th an AI Gateway chat call (01-consumers-key-auth.yaml, 03-ai-gateway.yaml)."
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
        let access = Worker::new(stack.enforcement_socket());
        let log = Arc::new(Worker::new(stack.socket()));
        let (api, ai, limit, bar) = (api.clone(), ai.clone(), limit.clone(), bar.clone());
        let consumers: Vec<(&str, &str)> =
            CONSUMERS.iter().map(|(id, name, _)| (*id, *name)).collect();
        tasks.push(tokio::spawn(async move {
            let mut answered: BTreeMap<String, Answered> = BTreeMap::new();
            let mut failed = 0;
            for k in (w..requests).step_by(4) {
                let g = tollgate_e2e::traffic::request(
                    k,
                    &consumers,
                    Some(tollgate_e2e::traffic::now_ms()),
                );
                let mut request = g.request;
                let tally = answered.entry(g.subject.clone()).or_default();
                let access_pdk = RequestPdk {
                    request: &request,
                    phase: "access",
                };
                match access.run_phase(&limit, "access", &access_pdk).await {
                    Ok(PhaseOutcome::Returned) => tally.admitted += 1,
                    Ok(PhaseOutcome::Exited { status, body, .. }) => {
                        // Kong answered itself: no upstream, and the log phase still runs.
                        let status = u16::try_from(status).unwrap_or(500);
                        tally.refused += 1;
                        tally
                            .first_refusal
                            .get_or_insert_with(|| (k, status, body.to_string()));
                        request.status = status;
                        request.upstream_status = None;
                    }
                    Err(_) => failed += 1,
                }
                let plugin = if g.ai { &ai } else { &api };
                let log_pdk = RequestPdk {
                    request: &request,
                    phase: "log",
                };
                if log.run_phase(plugin, "log", &log_pdk).await.is_err() {
                    failed += 1;
                }
                bar.inc(1);
            }
            (answered, failed)
        }));
    }
    let mut failed = 0;
    let mut answered: BTreeMap<String, Answered> = BTreeMap::new();
    for t in tasks {
        let (a, f) = t.await?;
        failed += f;
        for (subject, n) in a {
            let total = answered.entry(subject).or_default();
            total.admitted += n.admitted;
            total.refused += n.refused;
            total.first_refusal = [total.first_refusal.take(), n.first_refusal]
                .into_iter()
                .flatten()
                .min_by_key(|f| f.0);
        }
    }
    bar.finish();
    println!(
        "   {} requests through access and log phases in {:.1}s ({} phase calls failed)",
        requests,
        started.elapsed().as_secs_f64(),
        failed
    );

    println!("\n4. Waiting for the agent to deliver everything to billing ...");
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected_api = (requests - failed) as f64;
    loop {
        let v = billing.get("/api/v1/meters/api_requests/query").await?;
        let total = v["data"][0]["value"].as_f64().unwrap_or(0.0);
        if total >= expected_api {
            break;
        }
        if Instant::now() > deadline {
            bail!("billing has {total} of {expected_api} API requests after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    println!(
        "\n5. What the gateway did, and the usage billing metered (refused requests are logged too, as Kong does):\n"
    );
    println!(
        "   {:<9} {:<7} {:>9} {:>8} {:>13} {:>14} {:>14} {:>8}",
        "customer",
        "plan",
        "admitted",
        "refused",
        "api_requests",
        "prompt tokens",
        "output tokens",
        "access"
    );
    for (id, name, plan) in CONSUMERS {
        let subject = format!("consumer:{id}");
        let calls = billing
            .get(&format!(
                "/api/v1/meters/api_requests/query?subject={subject}"
            ))
            .await?;
        let tokens = billing
            .get(&format!(
                "/api/v1/meters/llm_tokens/query?subject={subject}&groupBy=type"
            ))
            .await?;
        let mut by_type: BTreeMap<String, f64> = BTreeMap::new();
        for row in tokens["data"].as_array().into_iter().flatten() {
            by_type.insert(
                row["groupBy"]["type"].as_str().unwrap_or("").to_owned(),
                row["value"].as_f64().unwrap_or(0.0),
            );
        }
        let value = billing
            .get(&format!(
                "/api/v2/customers/{name}/entitlements/api_calls/value"
            ))
            .await?;
        let access = value["hasAccess"].as_bool().unwrap_or(false);
        let a = answered.get(&subject).cloned().unwrap_or_default();
        println!(
            "   {:<9} {:<7} {:>9} {:>8} {:>13} {:>14} {:>14} {:>8}",
            name,
            plan,
            a.admitted,
            a.refused,
            calls["data"][0]["value"].as_f64().unwrap_or(0.0),
            by_type.get("request").copied().unwrap_or(0.0),
            by_type.get("response").copied().unwrap_or(0.0),
            if access { "yes" } else { "BLOCKED" }
        );
        if !access {
            blocked_detail(&stack, id, name, &a, &value).await?;
        } else if let Some((k, status, body)) = &a.first_refusal {
            println!(
                "             refused although billing grants access — request {k}: HTTP {status} {body}"
            );
        }
    }

    invoices(&billing).await?;

    println!("\n8. Try it yourself while the services run:");
    println!(
        "   curl -s {}/api/v1/meters/api_requests/query?groupBy=subject",
        billing.base
    );
    println!(
        "   curl -s {}/api/v2/customers/acme/entitlements/api_calls/value",
        billing.base
    );
    println!(
        "   curl -s '{}/api/v1/billing/invoices?expand=lines'",
        billing.base
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

/// Why a customer is blocked: billing's value, the agent's cached one, and how the gateway answers.
async fn blocked_detail(
    stack: &Stack,
    id: &str,
    name: &str,
    answered: &Answered,
    value: &Value,
) -> anyhow::Result<()> {
    println!(
        "             {name} used its {FREE_CALLS} calls: the gateway admitted exactly {} and refused {}; billing: usage {}, hasAccess=false.",
        answered.admitted, answered.refused, value["usage"]
    );
    let local: Value = reqwest::get(format!(
        "http://{}/v1/entitlements/consumer:{id}/api_calls",
        stack.agent_http
    ))
    .await?
    .json()
    .await?;
    println!(
        "             The sidecar agrees, from its cache: has_access={} balance={} (synced {} ms ago).",
        local["has_access"],
        local["balance"],
        age_ms(local["synced_at_ms"].as_i64().unwrap_or(0)),
    );
    Ok(())
}

/// Advances billing's simulated clock past the billing period's end (plus the default profile's
/// collection interval and draft period), then prints each customer's invoice.
async fn invoices(billing: &Billing) -> anyhow::Result<()> {
    println!(
        "\n6. Month end: advancing billing's simulated clock by one month and a day (POST /api/tollgate/v1/clock) ..."
    );
    let advanced = billing
        .post("/api/tollgate/v1/clock", json!({"advanceBy": "P1M1D"}))
        .await?;
    let happened = advanced["happened"].as_array().map_or(0, Vec::len);
    println!(
        "   billing's time is now {} ({happened} scheduled steps ran)",
        advanced["now"].as_str().unwrap_or("?")
    );

    println!("\n7. The invoices billing issued for the period (paid by the sandbox app):");
    for (_, name, plan) in CONSUMERS {
        let customer = billing.get(&format!("/api/v1/customers/{name}")).await?;
        let customer_id = customer["id"]
            .as_str()
            .with_context(|| format!("customer {name} has an id"))?
            .to_owned();
        let list = billing
            .get(&format!(
                "/api/v1/billing/invoices?customers={customer_id}&expand=lines&statuses=paid&statuses=issued"
            ))
            .await?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            println!("\n   {name} ({plan}): no invoice issued for the period");
            continue;
        }
        for inv in items {
            print_invoice(billing, name, plan, &inv);
        }
    }
    Ok(())
}

fn print_invoice(billing: &Billing, name: &str, plan: &str, inv: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    println!(
        "\n   {name} ({plan})  invoice {}  status {}  period {} .. {}",
        s(&inv["number"]),
        s(&inv["status"]),
        s(&inv["period"]["from"]),
        s(&inv["period"]["to"])
    );
    for line in inv["lines"].as_array().into_iter().flatten() {
        println!(
            "     {:<40} {:>10} {:>12}",
            s(&line["name"]),
            line["quantity"].as_str().unwrap_or(""),
            format!("{} {}", s(&line["currency"]), s(&line["totals"]["total"]))
        );
        for detail in line["detailedLines"].as_array().into_iter().flatten() {
            println!(
                "       {:<38} {:>10} {:>12}",
                s(&detail["name"]),
                detail["quantity"].as_str().unwrap_or(""),
                s(&detail["totals"]["total"])
            );
        }
    }
    let t = &inv["totals"];
    println!(
        "     amount {}  discounts {}  taxes {}  total {} {}",
        s(&t["amount"]),
        s(&t["discountsTotal"]),
        s(&t["taxesTotal"]),
        s(&inv["currency"]),
        s(&t["total"])
    );
    println!(
        "     printable page: {}/api/tollgate/v1/invoices/{}/html",
        billing.base,
        s(&inv["id"])
    );
}
