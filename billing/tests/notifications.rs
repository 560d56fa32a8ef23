//! Notifications end to end on the real `tollgate-billing` binary: usage ingested over HTTP
//! crosses balance thresholds, billing sends signed webhooks to a real receiver that verifies them
//! with the `standardwebhooks` reference library (tests/sdk/webhook_receiver.py), and the
//! outbox's delivery state is read back through the API. Also: a receiver down then up, a
//! disabled channel, retries given up on a simulated clock, usage-period resets, and billing
//! killed with -9 mid-delivery. `notifications_postgres.rs` runs the same tests on PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod common;

pub use common::Backend;
use common::{Billing, client, get_any, post, python};

/// This file is the suite on SQLite; `tests/notifications_postgres.rs` runs it on PostgreSQL.
#[allow(dead_code)]
fn backend() -> Backend {
    Backend::Sqlite
}

/// The webhook receiver (Python, `standardwebhooks`), killed when dropped.
pub struct Receiver {
    child: Child,
    log: PathBuf,
}

impl Receiver {
    /// Starts it on `port` verifying with `secret`, logging to `log`; with `hold_first`, the
    /// first request is held that many seconds before it is answered.
    pub fn start(port: u16, secret: &str, log: &Path, hold_first: Option<u64>) -> Receiver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/webhook_receiver.py");
        let mut cmd = Command::new(python());
        cmd.arg(script)
            .args([port.to_string(), secret.to_owned()])
            .arg(log);
        if let Some(s) = hold_first {
            cmd.args(["hold-first".to_owned(), s.to_string()]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the receiver never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Receiver {
            child,
            log: log.to_owned(),
        }
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn created(b: &Billing, path: &str, body: Value) -> Value {
    let (s, v) = post(b, path, body).await;
    assert_eq!(s, 201, "{path}: {v}");
    v
}

/// `n` calls by `subject` now.
async fn use_n(b: &Billing, subject: &str, n: usize) {
    let events: Vec<Value> = (0..n)
        .map(|_| {
            json!({"id": uuid::Uuid::new_v4().to_string(), "source": "t", "specversion": "1.0",
                        "type": "req", "subject": subject})
        })
        .collect();
    let s = client()
        .post(b.url("/api/v1/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::Array(events).to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s.as_u16(), 204);
}

/// A meter, a feature and, per subject, a customer whose entitlement grants 100 calls a month.
async fn setup(b: &Billing, subjects: &[&str]) {
    created(
        b,
        "/api/v1/meters",
        json!({"slug": "calls", "eventType": "req", "aggregation": "COUNT"}),
    )
    .await;
    created(
        b,
        "/api/v1/features",
        json!({"key": "calls", "name": "Calls", "meterSlug": "calls"}),
    )
    .await;
    for s in subjects {
        created(
            b,
            "/api/v1/customers",
            json!({"name": s, "key": s, "usageAttribution": {"subjectKeys": [s]}}),
        )
        .await;
        created(
            b,
            &format!("/api/v2/customers/{s}/entitlements"),
            json!({"type": "metered", "featureKey": "calls", "issueAfterReset": 100,
                   "usagePeriod": {"interval": "MONTH"}}),
        )
        .await;
    }
}

/// A webhook channel to `port` (its generated secret in the answer).
async fn channel(b: &Billing, port: u16, extra: Value) -> Value {
    let mut body = json!({"type": "WEBHOOK", "name": format!("hook {port}"),
                          "url": format!("http://127.0.0.1:{port}/hook"),
                          "customHeaders": {"x-tollgate-test": "yes"}});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    created(b, "/api/v1/notification/channels", body).await
}

/// The events, oldest first.
async fn events(b: &Billing) -> Vec<Value> {
    let (s, page) = get_any(b, "/api/v1/notification/events?orderBy=createdAt&order=ASC").await;
    assert_eq!(s, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

/// Waits until `f` holds, up to `secs`.
async fn until<F: AsyncFnMut() -> bool>(secs: u64, what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `kong-config/quota-webhook.py plan` makes of a payload.
fn kong_plan(payload: &Value) -> String {
    use std::io::Write;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kong-config/quota-webhook.py");
    let mut child = Command::new(python())
        .arg(script)
        .arg("plan")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(payload.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn states(event: &Value) -> Vec<(String, String)> {
    event["deliveryStatus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["channel"]["id"].as_str().unwrap().to_owned(),
                d["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_at_50_80_100_percent_fire_once_each_signed_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    setup(&b, &["acme", "burst"]).await;
    let port = tollgate_e2e::stack::free_port();
    let ch = channel(&b, port, json!({})).await;
    let secret = ch["signingSecret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{ch}");
    let rx = Receiver::start(port, &secret, &dir.path().join("hooks.jsonl"), None);
    let rule = created(
        &b,
        "/api/v1/notification/rules",
        json!({"type": "entitlements.balance.threshold", "name": "quota", "channels": [ch["id"]],
               "features": ["calls"],
               "thresholds": [{"value": 50, "type": "PERCENT"}, {"value": 80, "type": "usage_percentage"},
                              {"value": 100, "type": "usage_percentage"}]}),
    )
    .await;
    assert_eq!(rule["features"][0]["key"], "calls", "{rule}");

    // 51 calls: past 50 %. Then 80 % (81), then 100 % (101), then more: nothing new.
    let mut expected = Vec::new();
    for (n, threshold) in [(51, 50), (30, 80), (20, 100)] {
        use_n(&b, "acme", n).await;
        expected.push(threshold);
        let want = expected.len();
        until(20, &format!("the {threshold} % event"), async || {
            events(&b).await.len() == want
        })
        .await;
    }
    use_n(&b, "acme", 50).await;
    // The burst customer goes from 0 to 90 % at once: 80 % only, never 50 %.
    use_n(&b, "burst", 90).await;
    until(20, "the burst's event", async || {
        events(&b).await.len() == 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = events(&b).await;
    assert_eq!(all.len(), 4, "{all:#?}");
    let got: Vec<(String, f64)> = all
        .iter()
        .map(|e| {
            (
                e["payload"]["data"]["subject"]["key"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                e["payload"]["data"]["threshold"]["value"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("acme".into(), 50.0),
            ("acme".into(), 80.0),
            ("acme".into(), 100.0),
            ("burst".into(), 80.0)
        ]
    );
    for e in &all {
        assert_eq!(e["type"], "entitlements.balance.threshold");
        assert_eq!(e["rule"]["id"], rule["id"]);
        let data = &e["payload"]["data"];
        assert_eq!(e["payload"]["id"], e["id"]);
        assert_eq!(data["feature"]["key"], "calls");
        assert_eq!(data["entitlement"]["featureKey"], "calls");
        assert_eq!(data["entitlement"]["type"], "metered");
        assert!(
            data["entitlement"]["currentUsagePeriod"]["from"].is_string(),
            "{data}"
        );
        assert_eq!(data["customer"]["key"], data["subject"]["key"]);
        assert_eq!(data["value"]["totalAvailableGrantAmount"], 100.0, "{data}");
        assert!(
            data["value"]["usage"].as_f64().unwrap() > data["threshold"]["value"].as_f64().unwrap()
        );
    }
    assert_eq!(all[0]["payload"]["data"]["value"]["usage"], 51.0);

    // Delivered: each once, verified by the reference library, with the event's id.
    until(20, "4 deliveries", async || {
        events(&b)
            .await
            .iter()
            .all(|e| states(e).iter().all(|(_, s)| s == "SUCCESS"))
    })
    .await;
    let got = rx.received();
    assert_eq!(got.len(), 4, "{got:#?}");
    for (r, e) in got.iter().zip(&all) {
        assert_eq!(r["verified"], true, "{r}");
        assert_eq!(r["id"], e["id"]);
        assert_eq!(r["payload"], e["payload"]);
        assert_eq!(r["headers"]["x-tollgate-test"], "yes");
    }
    let attempt = &all[0]["deliveryStatus"][0]["attempts"][0];
    assert_eq!(attempt["state"], "SUCCESS", "{attempt}");
    assert_eq!(attempt["response"]["statusCode"], 200);

    // The Kong-side example (kong-config/quota-webhook.py) on the payloads as received: the
    // 100 % event moves the consumer into the over-quota group, the 80 % one changes nothing.
    assert_eq!(
        kong_plan(&got[2]["payload"]).trim(),
        r#"["POST", "/consumer_groups/over-quota/consumers", {"consumer": "acme"}]"#
    );
    assert_eq!(kong_plan(&got[1]["payload"]).trim(), "");

    // Filters: by subject and by rule.
    let (_, page) = get_any(&b, "/api/v1/notification/events?subject=burst").await;
    assert_eq!(page["totalCount"], 1, "{page}");
    let (_, page) = get_any(
        &b,
        &format!(
            "/api/v1/notification/events?rule={}",
            rule["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(page["totalCount"], 4);
}

/// A listener that accepts connections and never answers; how many it accepted.
fn hanging_listener() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for socket in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    (port, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_hangs_holds_up_only_its_own_channel() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    let subjects: Vec<String> = (0..24).map(|i| format!("c{i}")).collect();
    setup(&b, &subjects.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let (hang_port, accepted) = hanging_listener();
    let hanging = channel(&b, hang_port, json!({"name": "hangs"})).await;
    let port = tollgate_e2e::stack::free_port();
    let good = channel(&b, port, json!({})).await;
    let rx = Receiver::start(
        port,
        good["signingSecret"].as_str().unwrap(),
        &dir.path().join("hooks.jsonl"),
        None,
    );
    created(
        &b,
        "/api/v1/notification/rules",
        json!({"type": "entitlements.balance.threshold", "name": "limit",
               "channels": [hanging["id"], good["id"]],
               "thresholds": [{"value": 100, "type": "PERCENT"}]}),
    )
    .await;
    let started = Instant::now();
    for s in &subjects {
        use_n(&b, s, 101).await;
    }
    // Every event reaches the good receiver well before the hanging one's first requests time
    // out (10 s): the worker never waits on them to send the others. (On PostgreSQL it also
    // guards against deliveries starving the claim of pooled connections, which stalled it 5 s.)
    until(8, "every event at the good receiver", async || {
        rx.received().len() == subjects.len()
    })
    .await;
    let took = started.elapsed();
    eprintln!(
        "all {} events at the good receiver after {took:?}",
        subjects.len()
    );
    let held = accepted.load(std::sync::atomic::Ordering::SeqCst);
    let cap = tollgate_billing::notification::delivery::PER_CHANNEL;
    assert!(
        (1..=cap).contains(&held),
        "the hanging receiver holds at most {cap} deliveries at once, got {held} connections"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(rx.received().iter().all(|r| r["verified"] == true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_then_up_gets_it_after_and_a_disabled_channel_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    let port = tollgate_e2e::stack::free_port();
    let up = channel(&b, port, json!({})).await;
    let off = channel(
        &b,
        tollgate_e2e::stack::free_port(),
        json!({"disabled": true}),
    )
    .await;
    // Bad input is named.
    let (s, p) = post(
        &b,
        "/api/v1/notification/channels",
        json!({"type": "WEBHOOK", "name": "x", "url": "ftp://nowhere"}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(p["detail"].as_str().unwrap().contains("url"), "{p}");
    let (s, p) = post(
        &b,
        "/api/v1/notification/rules",
        json!({"type": "invoice.created", "name": "x", "channels": ["nope"]}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(p["detail"].as_str().unwrap().contains("channels[0]"), "{p}");

    let rule = created(
        &b,
        "/api/v1/notification/rules",
        json!({"type": "entitlements.reset", "name": "resets", "channels": [up["id"], off["id"]]}),
    )
    .await;
    // A channel in use is not deleted.
    let s = client()
        .delete(b.url(&format!(
            "/api/v1/notification/channels/{}",
            up["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s.as_u16(), 409);
    let ev = created(
        &b,
        &format!(
            "/api/v1/notification/rules/{}/test",
            rule["id"].as_str().unwrap()
        ),
        json!({}),
    )
    .await;
    assert_eq!(ev["annotations"]["notification.rule.test"], true, "{ev}");
    let id = ev["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/notification/events/{id}");
    // Nothing listens: the first attempt fails and is retried later; the disabled channel fails.
    until(20, "the first failed attempt", async || {
        let (_, e) = get_any(&b, &path).await;
        e["deliveryStatus"][0]["attempts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    let (_, e) = get_any(&b, &path).await;
    let by_channel = |e: &Value, c: &Value| {
        e["deliveryStatus"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["channel"]["id"] == *c)
            .unwrap()
            .clone()
    };
    let d = by_channel(&e, &up["id"]);
    assert_eq!(d["state"], "PENDING", "{d}");
    assert!(
        d["reason"].as_str().unwrap().contains("connection failed"),
        "{d}"
    );
    assert!(d["nextAttempt"].is_string(), "{d}");
    let d = by_channel(&e, &off["id"]);
    assert_eq!(d["state"], "FAILED", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("disabled"), "{d}");

    // The receiver comes up: the retry (5 s later) delivers it.
    let rx = Receiver::start(
        port,
        up["signingSecret"].as_str().unwrap(),
        &dir.path().join("hooks.jsonl"),
        None,
    );
    until(30, "delivery after the receiver came up", async || {
        let (_, e) = get_any(&b, &path).await;
        by_channel(&e, &up["id"])["state"] == "SUCCESS"
    })
    .await;
    let got = rx.received();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["verified"], true);
    assert_eq!(got[0]["id"], id.as_str());
    let (_, e) = get_any(&b, &path).await;
    let d = by_channel(&e, &up["id"]);
    assert_eq!(d["attempts"].as_array().unwrap().len(), 2, "{d}");

    // Resend: delivered again, with the same webhook-id.
    let (s, _) = post(
        &b,
        &format!("{path}/resend"),
        json!({"channels": [up["id"]]}),
    )
    .await;
    assert_eq!(s, 202);
    until(20, "the resend", async || rx.received().len() == 2).await;
    assert_eq!(rx.received()[1]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_simulated_clock_retries_give_up_with_a_reason_and_resets_notify() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "simulated_clock = true\n", None);
    setup(&b, &["acme"]).await;
    let dead = channel(&b, tollgate_e2e::stack::free_port(), json!({})).await;
    created(
        &b,
        "/api/v1/notification/rules",
        json!({"type": "entitlements.reset", "name": "resets", "channels": [dead["id"]]}),
    )
    .await;
    use_n(&b, "acme", 7).await;
    // A month later: the usage period reset, one event.
    let (s, adv) = post(&b, "/api/tollgate/v1/clock", json!({"advanceBy": "P32D"})).await;
    assert_eq!(s, 200, "{adv}");
    let all = events(&b).await;
    assert_eq!(all.len(), 1, "{all:#?}");
    let e = &all[0];
    assert_eq!(e["type"], "entitlements.reset");
    assert_eq!(e["payload"]["data"]["subject"]["key"], "acme");
    assert_eq!(e["payload"]["data"]["value"]["usage"], 0.0, "{e}");
    let path = format!("/api/v1/notification/events/{}", e["id"].as_str().unwrap());
    until(20, "the first failed attempt", async || {
        let (_, e) = get_any(&b, &path).await;
        e["deliveryStatus"][0]["attempts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    let (_, e) = get_any(&b, &path).await;
    assert_eq!(e["deliveryStatus"][0]["state"], "PENDING", "{e}");
    // Frozen time: no retry however long we wait in real time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, e) = get_any(&b, &path).await;
    assert_eq!(
        e["deliveryStatus"][0]["attempts"].as_array().unwrap().len(),
        1,
        "{e}"
    );
    // Four hours on: past the 3 h delivery window, the next attempt gives up.
    let (s, _) = post(&b, "/api/tollgate/v1/clock", json!({"advanceBy": "PT4H"})).await;
    assert_eq!(s, 200);
    until(20, "giving up", async || {
        let (_, e) = get_any(&b, &path).await;
        e["deliveryStatus"][0]["state"] == "FAILED"
    })
    .await;
    let (_, e) = get_any(&b, &path).await;
    let d = &e["deliveryStatus"][0];
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("gave up after 2 attempts") && reason.contains("connection failed"),
        "{d}"
    );
    assert_eq!(events(&b).await.len(), 1);

    // A threshold crossed, then a manual reset (committed with its reset event), then the same
    // threshold again in the new period.
    created(
        &b,
        "/api/v1/notification/rules",
        json!({"type": "entitlements.balance.threshold", "name": "half", "channels": [dead["id"]],
               "thresholds": [{"value": 50, "type": "usage_percentage"}]}),
    )
    .await;
    use_n(&b, "acme", 51).await;
    until(20, "50 %", async || events(&b).await.len() == 2).await;
    let (s, _) = post(&b, "/api/tollgate/v1/clock", json!({"advanceBy": "PT2M"})).await;
    assert_eq!(s, 200);
    let r = client()
        .post(b.url("/api/v2/customers/acme/entitlements/calls/reset"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let all = events(&b).await;
    assert_eq!(all.len(), 3, "{all:#?}");
    let reset = &all[2];
    assert_eq!(reset["type"], "entitlements.reset", "{reset}");
    assert_eq!(reset["payload"]["data"]["value"]["usage"], 0.0, "{reset}");
    assert!(reset["payload"]["data"].get("threshold").is_none());
    assert_eq!(
        kong_plan(&reset["payload"]).trim(),
        r#"["DELETE", "/consumer_groups/over-quota/consumers/acme", null]"#
    );
    use_n(&b, "acme", 51).await;
    until(20, "50 % in the new period", async || {
        events(&b).await.len() == 4
    })
    .await;
    let again = &events(&b).await[3];
    assert_eq!(
        again["payload"]["data"]["threshold"]["value"], 50.0,
        "{again}"
    );
    assert_ne!(
        again["payload"]["data"]["entitlement"]["currentUsagePeriod"]["from"],
        all[1]["payload"]["data"]["entitlement"]["currentUsagePeriod"]["from"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoice_made_and_issued_notifies_created_once_then_updated() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "simulated_clock = true\n", None);
    setup(&b, &["acme"]).await;
    let dead = channel(&b, tollgate_e2e::stack::free_port(), json!({})).await;
    for kind in ["invoice.created", "invoice.updated"] {
        created(
            &b,
            "/api/v1/notification/rules",
            json!({"type": kind, "name": kind, "channels": [dead["id"]]}),
        )
        .await;
    }
    let (_, clock) = get_any(&b, "/api/tollgate/v1/clock").await;
    let now = clock["now"].as_str().unwrap().to_owned();
    let later = (chrono::DateTime::parse_from_rfc3339(&now).unwrap() + chrono::Duration::hours(1))
        .to_rfc3339();
    let (s, r) = post(
        &b,
        "/api/v1/billing/customers/acme/invoices/pending-lines",
        json!({"currency": "USD", "lines": [{"name": "Setup", "invoiceAt": now,
               "period": {"from": now, "to": later},
               "rateCard": {"price": {"type": "flat", "amount": "100", "paymentTerm": "in_advance"}}}]}),
    )
    .await;
    assert!(s < 300, "{s} {r}");
    // A gathering invoice notifies nothing.
    assert!(events(&b).await.is_empty());
    let (s, made) = post(
        &b,
        "/api/v1/billing/invoices/invoice",
        json!({"customerId": "acme"}),
    )
    .await;
    assert!(s < 300, "{s} {made}");
    let id = made[0]["id"].as_str().unwrap().to_owned();
    // The sandbox app takes the draft through to paid: one created, then updates.
    until(20, "the invoice to be paid", async || {
        get_any(&b, &format!("/api/v1/billing/invoices/{id}"))
            .await
            .1["status"]
            == "paid"
    })
    .await;
    let all = events(&b).await;
    let of_invoice: Vec<&Value> = all
        .iter()
        .filter(|e| e["payload"]["data"]["id"] == id.as_str())
        .collect();
    let created_events: Vec<&&Value> = of_invoice
        .iter()
        .filter(|e| e["type"] == "invoice.created")
        .collect();
    assert_eq!(created_events.len(), 1, "{all:#?}");
    assert!(
        of_invoice
            .iter()
            .any(|e| e["type"] == "invoice.updated" && e["payload"]["data"]["status"] == "paid"),
        "an invoice.updated with the paid invoice: {all:#?}"
    );
    assert_eq!(
        of_invoice.len(),
        all.len(),
        "nothing else notified: {all:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_killed_mid_delivery_delivers_after_restart_with_the_same_webhook_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Billing::start(dir.path(), "", None);
    let port = tollgate_e2e::stack::free_port();
    let ch = channel(&b, port, json!({})).await;
    // The first request is held 120 s: billing is mid-delivery when it is killed.
    let rx = Receiver::start(
        port,
        ch["signingSecret"].as_str().unwrap(),
        &dir.path().join("hooks.jsonl"),
        Some(120),
    );
    let rule = created(
        &b,
        "/api/v1/notification/rules",
        json!({"type": "invoice.updated", "name": "invoices", "channels": [ch["id"]]}),
    )
    .await;
    let ev = created(
        &b,
        &format!(
            "/api/v1/notification/rules/{}/test",
            rule["id"].as_str().unwrap()
        ),
        json!({}),
    )
    .await;
    let id = ev["id"].as_str().unwrap().to_owned();
    until(20, "the first (held) request", async || {
        rx.received().len() == 1
    })
    .await;
    let (_, e) = get_any(&b, &format!("/api/v1/notification/events/{id}")).await;
    assert_eq!(e["deliveryStatus"][0]["state"], "SENDING", "{e}");
    // While a receiver hangs, ingest and balances go on (delivery is off the ingest path).
    setup(&b, &["acme"]).await;
    use_n(&b, "acme", 10).await;
    let (s, v) = get_any(&b, "/api/v2/customers/acme/entitlements/calls/value").await;
    assert_eq!((s, v["usage"].as_f64()), (200, Some(10.0)), "{v}");
    b.kill9();
    let b = Billing::start(dir.path(), "", None);
    // On SQLite the restarted process sends at once; on PostgreSQL once the lease (30 s) ends.
    until(60, "the delivery after the restart", async || {
        let (_, e) = get_any(&b, &format!("/api/v1/notification/events/{id}")).await;
        e["deliveryStatus"][0]["state"] == "SUCCESS"
    })
    .await;
    let got = rx.received();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(
        got.iter()
            .all(|r| r["id"] == id.as_str() && r["verified"] == true),
        "{got:#?}"
    );
    assert_eq!(events(&b).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmeter_python_sdk_drives_notifications_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    common::run_sdk(
        &b,
        "notifications.py",
        &[],
        "notifications: all steps passed",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_real_time_a_usage_period_reset_notifies_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = Billing::start(dir.path(), "", None);
    setup(&b, &[]).await;
    created(
        &b,
        "/api/v1/customers",
        json!({"name": "hourly", "key": "hourly", "usageAttribution": {"subjectKeys": ["hourly"]}}),
    )
    .await;
    let port = tollgate_e2e::stack::free_port();
    let ch = channel(&b, port, json!({})).await;
    let rx = Receiver::start(
        port,
        ch["signingSecret"].as_str().unwrap(),
        &dir.path().join("hooks.jsonl"),
        None,
    );
    created(
        &b,
        "/api/v1/notification/rules",
        json!({"type": "entitlements.reset", "name": "resets", "channels": [ch["id"]],
               "features": ["calls"]}),
    )
    .await;
    // An hourly period anchored so that it ends 10 s from now: the scheduler's real-time runner
    // crosses the boundary.
    let anchor = chrono::Utc::now() - chrono::Duration::seconds(3600 - 10);
    created(
        &b,
        "/api/v2/customers/hourly/entitlements",
        json!({"type": "metered", "featureKey": "calls", "issueAfterReset": 10,
               "usagePeriod": {"interval": "PT1H", "anchor": anchor}}),
    )
    .await;
    use_n(&b, "hourly", 3).await;
    until(30, "the reset's delivery", async || {
        rx.received().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = events(&b).await;
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["type"], "entitlements.reset");
    assert_eq!(
        all[0]["payload"]["data"]["value"]["usage"], 0.0,
        "{}",
        all[0]
    );
    let got = rx.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["verified"], true);
    assert_eq!(got[0]["payload"]["data"]["subject"]["key"], "hourly");
}
