//! The web console in a real headless browser: Debian's `chromium` driven through
//! `chromedriver` (both installed by `scripts/install-test-deps`) with a WebDriver client, against
//! the real `tollgate-billing` binary with API tokens and a simulated clock. Every page loads with
//! demo data and leaves nothing in the browser's console log (CSP violations included); the
//! numbers on the pages equal the API's; creating a customer, adding a grant, subscribing and
//! resending a webhook work end to end
//! and a refusal shows the API's error; a customer name with `<script>` stays text; a page
//! without the token is refused. `TOLLGATE_SCREENSHOTS=DIR` saves the screenshots there (the
//! README's are made so: `TOLLGATE_SCREENSHOTS=docs cargo test -p tollgate-billing --test console`).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const TOKEN: &str = "om_console_token";
const EVIL: &str = "Evil <script>window.__pwned=1</script> & \"Co\"";

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} never listened on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_billing(dir: &Path) -> (Proc, SocketAddr) {
    let port = tollgate_e2e::stack::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.join("billing.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "{addr}"
data_dir = "{}"
api_tokens = ["{TOKEN}"]
simulated_clock = true

[[meters]]
slug = "api_requests"
eventType = "kong.api_request"
aggregation = "COUNT"
groupBy = {{ method = "$.request_method", route = "$.route_name" }}

[[meters]]
slug = "llm_tokens"
eventType = "kong.llm_request"
aggregation = "SUM"
valueProperty = "$.tokens"
groupBy = {{ model = "$.model" }}
"#,
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate-billing"))
        .args(["--config", config.to_str().unwrap()])
        .env("TOLLGATE_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    wait_listening(addr, "billing");
    (p, addr)
}

/// chromedriver on a free port (Debian's, which drives Debian's chromium).
fn start_chromedriver() -> (Proc, u16) {
    let bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromedriver is missing: run scripts/install-test-deps (apt: chromium chromium-driver)");
    let port = tollgate_e2e::stack::free_port();
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap(), "chromedriver");
    (p, port)
}

async fn browser(port: u16, profile: &Path) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1280,1100", format!("--user-data-dir={}", profile.display())]
        },
        "goog:loggingPrefs": {"browser": "ALL"}
    });
    let caps = caps.as_object().unwrap().clone();
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap()
}

/// chromedriver's browser log (what the page wrote to its console, errors included), drained.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

async fn browser_log(c: &Client) -> Vec<Value> {
    match c.issue_cmd(BrowserLog).await.unwrap() {
        Value::Array(entries) => entries,
        other => panic!("browser log: {other}"),
    }
}

/// Errors and warnings the page logged since the last call.
async fn console_problems(c: &Client) -> Vec<String> {
    browser_log(c)
        .await
        .into_iter()
        .filter(|e| matches!(e["level"].as_str(), Some("SEVERE") | Some("WARNING")))
        .map(|e| e["message"].as_str().unwrap_or("").to_owned())
        .collect()
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(addr: SocketAddr) -> Api {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        Api {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .default_headers(h)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path}: {status} {v}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }
}

/// Demo data: features, customers (one with a hostile name), entitlements with grants, events
/// over the last hour, a plan with a tiered price and an add-on it offers.
async fn seed(api: &Api) -> (String, String) {
    let now: chrono::DateTime<chrono::Utc> = api.get("/api/tollgate/v1/clock").await["now"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    api.post(
        "/api/v1/features",
        json!({"key": "api_calls", "name": "API calls", "meterSlug": "api_requests"}),
    )
    .await;
    api.post(
        "/api/v1/features",
        json!({"key": "support", "name": "Support"}),
    )
    .await;
    let acme = api
        .post(
            "/api/v1/customers",
            json!({"name": "Acme Corp", "key": "acme", "usageAttribution": {"subjectKeys": ["consumer:acme"]}, "currency": "USD"}),
        )
        .await;
    let evil = api
        .post(
            "/api/v1/customers",
            json!({"name": EVIL, "key": "evil", "usageAttribution": {"subjectKeys": ["consumer:evil"]}}),
        )
        .await;
    for c in ["acme", "evil"] {
        let e = api
            .post(
                &format!("/api/v2/customers/{c}/entitlements"),
                json!({"type": "metered", "featureKey": "api_calls", "usagePeriod": {"interval": "MONTH"},
                       "measureUsageFrom": now - chrono::Duration::hours(2)}),
            )
            .await;
        api.post(
            &format!(
                "/api/v2/customers/{c}/entitlements/{}/grants",
                e["id"].as_str().unwrap()
            ),
            json!({"amount": if c == "acme" { 1000 } else { 50 }, "priority": 1,
                   "effectiveAt": now - chrono::Duration::hours(2),
                   "expiration": {"duration": "MONTH", "count": 1}}),
        )
        .await;
    }
    // A webhook channel nobody listens on, and a rule on the quota: crossing it makes an event.
    let ch = api
        .post(
            "/api/v1/notification/channels",
            json!({"type": "WEBHOOK", "name": "ops hook", "url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    api.post(
        "/api/v1/notification/rules",
        json!({"type": "entitlements.balance.threshold", "name": "quota", "channels": [ch["id"]],
               "features": ["api_calls"], "thresholds": [{"value": 100, "type": "usage_percentage"}]}),
    )
    .await;
    // 40 requests for acme and 60 for evil (over its 50), and tokens, over the last 40 minutes.
    let mut events = Vec::new();
    for i in 0..100 {
        let subject = if i % 5 < 2 {
            "consumer:acme"
        } else {
            "consumer:evil"
        };
        let t = now - chrono::Duration::minutes(i % 40) - chrono::Duration::seconds(5);
        events.push(json!({"specversion": "1.0", "id": format!("r{i}"), "source": "test", "type": "kong.api_request",
            "subject": subject, "time": t, "data": {"request_method": if i % 2 == 0 { "GET" } else { "POST" }, "route_name": "orders"}}));
        events.push(json!({"specversion": "1.0", "id": format!("l{i}"), "source": "test", "type": "kong.llm_request",
            "subject": subject, "time": t, "data": {"tokens": 10 + i, "model": if i % 3 == 0 { "gpt-4o" } else { "claude" }}}));
    }
    let r = api
        .http
        .post(format!("{}/api/v1/events", api.base))
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::Array(events).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let plan = api.post("/api/v1/plans", json!({
        "key": "pro", "name": "Pro", "currency": "USD", "billingCadence": "P1M",
        "phases": [
            {"key": "trial", "name": "Trial", "duration": "P14D", "rateCards": [
                {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
                 "price": {"type": "flat", "amount": "0", "paymentTerm": "in_advance"}}]},
            {"key": "default", "name": "Default", "duration": null, "rateCards": [
                {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
                 "price": {"type": "flat", "amount": "49", "paymentTerm": "in_advance"},
                 "discounts": {"percentage": {"percentage": 10}}},
                {"type": "usage_based", "key": "api_calls", "name": "API calls", "featureKey": "api_calls",
                 "billingCadence": "P1M",
                 "price": {"type": "tiered", "mode": "graduated", "tiers": [
                    {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0.30"}},
                    {"upToAmount": "5000", "unitPrice": {"type": "unit", "amount": "0.20"}},
                    {"unitPrice": {"type": "unit", "amount": "0.10"}}]},
                 "discounts": {"usage": {"quantity": "100"}},
                 "entitlementTemplate": {"type": "metered", "issueAfterReset": 10000, "usagePeriod": "P1M"}}]}
        ]})).await;
    let plan_id = plan["id"].as_str().unwrap().to_owned();
    api.post(&format!("/api/v1/plans/{plan_id}/publish"), json!({}))
        .await;
    let addon = api.post("/api/v1/addons", json!({"key": "priority_support", "name": "Priority support", "currency": "USD",
        "instanceType": "single", "rateCards": [
            {"type": "flat_fee", "key": "support", "name": "Support", "featureKey": "support",
             "billingCadence": "P1M", "price": {"type": "flat", "amount": "99", "paymentTerm": "in_advance"},
             "entitlementTemplate": {"type": "boolean"}}]})).await;
    let addon_id = addon["id"].as_str().unwrap().to_owned();
    api.post(&format!("/api/v1/addons/{addon_id}/publish"), json!({}))
        .await;
    (
        acme["id"].as_str().unwrap().to_owned(),
        evil["id"].as_str().unwrap().to_owned(),
    )
}

fn screenshots_dir() -> Option<PathBuf> {
    std::env::var_os("TOLLGATE_SCREENSHOTS").map(|d| {
        let d = PathBuf::from(d);
        if d.is_absolute() {
            d
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(d)
        }
    })
}

/// Clicks `el` (a submit button) and waits for the page it leads to: the old page's marker
/// gone and the new one loaded.
async fn click_through(
    c: &Client,
    el: fantoccini::elements::Element,
) -> Result<(), fantoccini::error::CmdError> {
    c.execute("window.__old_page = true;", vec![]).await?;
    el.click().await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let done = c
            .execute(
                "return window.__old_page === undefined && document.readyState === 'complete';",
                vec![],
            )
            .await
            .unwrap_or(Value::Bool(false));
        if done == Value::Bool(true) {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "the form never led to a new page"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn data_values(c: &Client, css: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for e in c.find_all(Locator::Css(css)).await.unwrap() {
        out.push(
            e.attr("data-value")
                .await
                .unwrap()
                .unwrap()
                .parse::<f64>()
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (_billing, addr) = start_billing(dir.path());
    let api = Api::new(addr);
    let (acme, evil) = seed(&api).await;
    let base = format!("http://{addr}");

    // Without the token nothing is reachable: pages, the CSV, and actions (nothing is stored).
    let anon = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in [
        "/",
        "/meters",
        "/meters/api_requests",
        "/meters/api_requests/query.csv",
        "/customers",
        &format!("/customers/{acme}"),
        "/plans",
        "/addons",
        "/features",
    ] {
        let r = anon.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without a token");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("Sign in") && !body.contains("Acme"),
            "{path}: {body}"
        );
        let r = anon
            .get(format!("{base}{path}"))
            .header("cookie", "tollgate_console=wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
    }
    let r = anon
        .post(format!("{base}/customers"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=Sneaky&key=sneaky")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        api.get("/api/v1/customers").await["totalCount"],
        2,
        "a refused form stores nothing"
    );
    // The API's own Bearer auth is unchanged.
    assert_eq!(
        anon.get(format!("{base}/api/v1/meters"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let (_driver, port) = start_chromedriver();
    let profile = dir.path().join("chromium-profile");
    let c = browser(port, &profile).await;
    let result = drive(&c, &api, &base, &acme, &evil).await;
    let _ = c.close().await;
    result.unwrap();
}

async fn drive(
    c: &Client,
    api: &Api,
    base: &str,
    acme: &str,
    evil: &str,
) -> Result<(), fantoccini::error::CmdError> {
    // The login form, then where we were going.
    c.goto(&format!("{base}/meters")).await?;
    assert_eq!(text_of(c, "h1").await, "Sign in");
    // The 401 itself is logged as a failed load: proof the browser's log is collected.
    let log = browser_log(c).await;
    assert!(
        log.iter()
            .any(|e| e["message"].as_str().unwrap_or("").contains("401")),
        "browser log: {log:?}"
    );
    c.find(Locator::Css("input[name=token]"))
        .await?
        .send_keys("not-the-token")
        .await?;
    click_through(c, c.find(Locator::Css("button[type=submit]")).await?).await?;
    assert!(text_of(c, "p.error").await.contains("not one of"));
    browser_log(c).await;
    c.find(Locator::Css("input[name=token]"))
        .await?
        .send_keys(TOKEN)
        .await?;
    click_through(c, c.find(Locator::Css("button[type=submit]")).await?).await?;
    assert_eq!(c.current_url().await?.path(), "/meters");
    assert_eq!(text_of(c, "h1").await, "Meters");

    // Every page loads, with nothing in the browser's console.
    let clock = api.get("/api/tollgate/v1/clock").await;
    let now: chrono::DateTime<chrono::Utc> = clock["now"].as_str().unwrap().parse().unwrap();
    let plans = api.get("/api/v1/plans").await;
    let plan_id = plans["items"][0]["id"].as_str().unwrap().to_owned();
    let addons = api.get("/api/v1/addons").await;
    let addon_id = addons["items"][0]["id"].as_str().unwrap().to_owned();
    let pages = [
        ("/", "Overview"),
        ("/meters", "Meters"),
        ("/meters/api_requests", "Meter api_requests"),
        (
            "/meters/llm_tokens?range=1h&groupBy=model",
            "Meter llm_tokens",
        ),
        ("/customers", "Customers"),
        (&format!("/customers/{acme}"), "Acme Corp"),
        (&format!("/customers/{evil}"), EVIL),
        ("/features", "Features"),
        ("/plans", "Plans"),
        (&format!("/plans/{plan_id}"), "Plan Pro v1"),
        ("/addons", "Add-ons"),
        ("/invoices", "Invoices"),
        ("/notifications", "Notifications"),
        (&format!("/addons/{addon_id}"), "Add-on Priority support v1"),
    ];
    let shots = screenshots_dir();
    for (path, title) in pages {
        c.goto(&format!("{base}{path}")).await?;
        assert_eq!(text_of(c, "h1").await, title, "{path}");
        assert!(
            c.find_all(Locator::Css("p.error")).await?.is_empty(),
            "{path} shows an error"
        );
        // The header shows billing's clock: the simulated one, at the API's time.
        assert_eq!(
            c.find(Locator::Css("#clock-now"))
                .await?
                .attr("datetime")
                .await?
                .unwrap()
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap(),
            now,
            "{path}"
        );
        let problems = console_problems(c).await;
        assert!(problems.is_empty(), "{path}: browser console: {problems:?}");
    }

    // The overview's numbers are the API's.
    c.goto(&format!("{base}/")).await?;
    let customers = api.get("/api/v1/customers").await;
    assert_eq!(
        text_of(c, "#customers-count").await,
        customers["totalCount"].to_string()
    );
    let month_start = format!("{}", now.format("%Y-%m-01T00:00:00Z"));
    let to = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (id, name) in [(acme, "Acme Corp"), (evil, EVIL)] {
        let q = api
            .get(&format!(
                "/api/v1/meters/api_requests/query?from={month_start}&to={}&filterCustomerId={id}",
                to.replace('+', "%2B")
            ))
            .await;
        let expected = q["data"][0]["value"].as_f64().unwrap();
        let rows = c
            .find_all(Locator::Css("table.top[data-meter=api_requests] tbody tr"))
            .await?;
        let mut found = None;
        for r in rows {
            if r.find(Locator::Css("td a")).await?.text().await? == name {
                let v = r
                    .find(Locator::Css("td.num"))
                    .await?
                    .attr("data-value")
                    .await?;
                found = v.map(|v| v.parse::<f64>().unwrap());
            }
        }
        assert_eq!(found, Some(expected), "top consumer {name}");
    }
    let over = text_of(c, "#limits").await;
    assert!(over.contains("over") && over.contains(EVIL), "{over}");
    if let Some(d) = &shots {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("console-overview.png"), c.screenshot().await?).unwrap();
    }

    // A meter page's table is the API's answer to the query string it shows; the CSV link is
    // the API's CSV.
    c.goto(&format!(
        "{base}/meters/llm_tokens?range=24h&windowSize=HOUR&groupBy=model"
    ))
    .await?;
    let shown = text_of(c, "#api-query").await;
    let path = shown.strip_prefix("GET ").unwrap().to_owned();
    let q = api.get(&path).await;
    let expected: Vec<f64> = q["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_f64().unwrap())
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(data_values(c, "#usage td.num").await, expected);
    assert!(
        !c.find_all(Locator::Css("svg.chart circle"))
            .await?
            .is_empty(),
        "a chart is drawn"
    );
    let csv_href = c
        .find(Locator::Css("#csv-link"))
        .await?
        .attr("href")
        .await?
        .unwrap();
    let console_csv = reqwest::Client::new()
        .get(format!("{base}{csv_href}"))
        .header("cookie", format!("tollgate_console={TOKEN}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let api_csv = api
        .http
        .get(format!("{}{path}", api.base))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(console_csv, api_csv);
    assert!(
        api_csv.starts_with("window_start,window_end,model,value"),
        "{api_csv}"
    );

    // A customer page's balance and usage are the API's value.
    c.goto(&format!("{base}/customers/{acme}")).await?;
    let value = api
        .get("/api/v1/customers/acme/entitlements/api_calls/value")
        .await;
    let panel = "div.entitlement[data-feature=api_calls]";
    assert_eq!(
        data_values(c, &format!("{panel} .balance")).await,
        vec![value["balance"].as_f64().unwrap()]
    );
    assert_eq!(
        data_values(c, &format!("{panel} .usage")).await,
        vec![value["usage"].as_f64().unwrap()]
    );
    assert_eq!(value["usage"].as_f64(), Some(40.0));

    // Add a grant now, through the form: the API's balance grows by it, and so does the page's.
    let before = value["balance"].as_f64().unwrap();
    let form = c
        .find(Locator::Css(&format!("{panel} form.add-grant")))
        .await?;
    form.find(Locator::Css("input[name=amount]"))
        .await?
        .send_keys("500")
        .await?;
    click_through(c, form.find(Locator::Css("button[type=submit]")).await?).await?;
    assert!(
        text_of(c, "p.notice")
            .await
            .contains("Grant added, effective from")
    );
    // Grants start on the next whole minute (the API's rounding): move the clock there.
    api.post("/api/tollgate/v1/clock", json!({"advanceBy": "PT1M"}))
        .await;
    c.refresh().await?;
    let after = api
        .get("/api/v1/customers/acme/entitlements/api_calls/value")
        .await["balance"]
        .as_f64()
        .unwrap();
    assert_eq!(after, before + 500.0);
    assert_eq!(
        data_values(c, &format!("{panel} .balance")).await,
        vec![after]
    );
    let problems = console_problems(c).await;
    assert!(problems.is_empty(), "after the grant: {problems:?}");
    // A refused grant shows the API's error (a negative amount).
    c.execute(
        "document.querySelector('div.entitlement[data-feature=api_calls] input[name=amount]').removeAttribute('min');",
        vec![],
    )
    .await?;
    let form = c
        .find(Locator::Css(&format!("{panel} form.add-grant")))
        .await?;
    form.find(Locator::Css("input[name=amount]"))
        .await?
        .send_keys("-5")
        .await?;
    click_through(c, form.find(Locator::Css("button[type=submit]")).await?).await?;
    let err = text_of(c, "p.error").await;
    assert!(err.contains("400") && err.contains("amount"), "{err}");
    browser_log(c).await; // the 400 is logged as a failed load

    // Subscribe Acme to the plan through the form: the API has the subscription, the page its
    // phases with the trial current.
    c.goto(&format!("{base}/customers/{acme}")).await?;
    let form = c.find(Locator::Css("form.subscribe")).await?;
    click_through(c, form.find(Locator::Css("button[type=submit]")).await?).await?;
    assert!(text_of(c, "p.notice").await.contains("Subscribed"));
    let subs = api.get("/api/v1/customers/acme/subscriptions").await;
    let sub_id = subs["items"][0]["id"].as_str().unwrap().to_owned();
    let section = text_of(c, &format!("div.subscription[data-id='{sub_id}']")).await;
    assert!(
        section.contains("active") && section.contains("pro v1"),
        "{section}"
    );
    assert_eq!(
        text_of(c, "table.phases tr.current td code").await,
        "trial",
        "the trial is the current phase"
    );
    assert!(
        c.find_all(Locator::Css("form.subscribe")).await?.is_empty(),
        "no second subscription offered"
    );
    let problems = console_problems(c).await;
    assert!(problems.is_empty(), "after subscribing: {problems:?}");

    // Notifications: the channel, the rule, and the event of Evil's quota with its delivery;
    // resending it goes through the API (its delivery is queued again).
    let deadline = Instant::now() + Duration::from_secs(20);
    let event_id = loop {
        let evs = api.get("/api/v1/notification/events").await;
        if let Some(id) = evs["items"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "no notification event: {evs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    c.goto(&format!("{base}/notifications")).await?;
    assert!(text_of(c, "#channels").await.contains("ops hook"));
    assert!(text_of(c, "#rules").await.contains("quota"));
    let row = format!("#events tr[data-event='{event_id}']");
    assert!(
        text_of(c, &row)
            .await
            .contains("entitlements.balance.threshold"),
        "the event is listed"
    );
    let updated_at = |ev: &Value| -> chrono::DateTime<chrono::Utc> {
        ev["deliveryStatus"][0]["updatedAt"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    // The clock stands still: move it so the resend's time differs from the first attempt's.
    api.post("/api/tollgate/v1/clock", json!({"advanceBy": "PT1S"}))
        .await;
    let before = updated_at(
        &api.get(&format!("/api/v1/notification/events/{event_id}"))
            .await,
    );
    let form = c.find(Locator::Css(&format!("{row} form.resend"))).await?;
    click_through(c, form.find(Locator::Css("button[type=submit]")).await?).await?;
    assert!(text_of(c, "p.notice").await.contains("Queued"));
    let ev = api
        .get(&format!("/api/v1/notification/events/{event_id}"))
        .await;
    assert!(
        updated_at(&ev) > before,
        "the delivery was queued again: {ev}"
    );
    browser_log(c).await;

    // An invoice: a flat fee for Acme invoiced now; its page shows the API's total, its
    // printable page loads, and the list has it.
    let period_from = now - chrono::Duration::days(1);
    api.post(
        "/api/v1/billing/customers/acme/invoices/pending-lines",
        json!({"currency": "USD", "lines": [
            {"name": "Platform fee", "period": {"from": period_from, "to": now + chrono::Duration::days(29)},
             "invoiceAt": period_from,
             "rateCard": {"price": {"type": "flat", "amount": "49", "paymentTerm": "in_advance"}}}]}),
    )
    .await;
    let made = api
        .post(
            "/api/v1/billing/invoices/invoice",
            json!({"customerId": "acme"}),
        )
        .await;
    let invoice_id = made[0]["id"].as_str().unwrap().to_owned();
    let inv = api
        .get(&format!("/api/v1/billing/invoices/{invoice_id}"))
        .await;
    c.goto(&format!("{base}/invoices")).await?;
    assert!(
        !c.find_all(Locator::Css(&format!("tr[data-invoice='{invoice_id}']")))
            .await?
            .is_empty(),
        "the invoice is listed"
    );
    c.goto(&format!("{base}/invoices/{invoice_id}")).await?;
    assert_eq!(
        data_values(c, "#invoice-total").await,
        vec![
            inv["totals"]["total"]
                .as_str()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        ]
    );
    let problems = console_problems(c).await;
    assert!(problems.is_empty(), "invoice page: {problems:?}");
    if let Some(d) = &shots {
        std::fs::write(d.join("console-invoice.png"), c.screenshot().await?).unwrap();
    }
    c.goto(&format!("{base}/invoices/{invoice_id}/print"))
        .await?;
    assert!(c.source().await?.contains("Platform fee"));
    let problems = console_problems(c).await;
    assert!(problems.is_empty(), "printable page: {problems:?}");

    // Create a customer through the form; a second with the same key shows the API's 409.
    c.goto(&format!("{base}/customers")).await?;
    let form = c.find(Locator::Css("#new-customer form")).await?;
    for (name, v) in [
        ("name", "Globex"),
        ("key", "globex"),
        ("subjects", "consumer:globex, consumer:globex-2"),
    ] {
        form.find(Locator::Css(&format!("input[name={name}]")))
            .await?
            .send_keys(v)
            .await?;
    }
    click_through(c, form.find(Locator::Css("button[type=submit]")).await?).await?;
    assert_eq!(text_of(c, "h1").await, "Globex");
    assert!(text_of(c, "p.notice").await.contains("created"));
    let globex = api.get("/api/v1/customers/globex").await;
    assert_eq!(
        globex["usageAttribution"]["subjectKeys"],
        json!(["consumer:globex", "consumer:globex-2"])
    );
    assert_eq!(
        text_of(c, "#customer-id").await,
        globex["id"].as_str().unwrap()
    );
    c.goto(&format!("{base}/customers")).await?;
    let form = c.find(Locator::Css("#new-customer form")).await?;
    form.find(Locator::Css("input[name=name]"))
        .await?
        .send_keys("Globex again")
        .await?;
    form.find(Locator::Css("input[name=key]"))
        .await?
        .send_keys("globex")
        .await?;
    click_through(c, form.find(Locator::Css("button[type=submit]")).await?).await?;
    let err = text_of(c, "p.error").await;
    assert!(
        err.contains("409") && err.contains("globex already exists"),
        "{err}"
    );
    assert_eq!(api.get("/api/v1/customers").await["totalCount"], 3);
    browser_log(c).await;

    // A name with <script> stays text everywhere it is shown.
    for path in [
        format!("/customers/{evil}"),
        "/customers".into(),
        "/".into(),
    ] {
        c.goto(&format!("{base}{path}")).await?;
        let pwned = c
            .execute("return window.__pwned === undefined;", vec![])
            .await?;
        assert_eq!(pwned, json!(true), "{path}: the name's script ran");
        let source = c.source().await?;
        assert!(!source.contains("<script>window.__pwned"), "{path}");
        assert!(
            c.find(Locator::Css("body"))
                .await?
                .text()
                .await?
                .contains(EVIL),
            "{path}: the name is shown as text"
        );
        let problems = console_problems(c).await;
        assert!(problems.is_empty(), "{path}: {problems:?}");
    }

    // Logging out forgets the token.
    c.goto(&format!("{base}/customers")).await?;
    click_through(c, c.find(Locator::Css("form.logout button")).await?).await?;
    assert_eq!(c.current_url().await?.path(), "/login");
    c.goto(&format!("{base}/customers")).await?;
    assert_eq!(text_of(c, "h1").await, "Sign in");
    Ok(())
}
