//! kill -9 of the agent while each push source takes traffic — OpenMeter-compatible HTTP, Kong's
//! http-log, OTLP logs — with a client that behaves as the real ones do (a request not answered
//! 2xx is sent again, same ids): every event answered 2xx reaches the destination, exactly once
//! after dedup by id, and none is invented.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use serde_json::Value;
use tollgate_e2e::kong::serialize::{KongRequest, KongVersion};

const PER_BATCH: usize = 100;
const KILLS: usize = 3;

#[derive(Clone, Copy)]
enum Source {
    Http,
    KongHttpLog,
    Otlp,
}

/// One batch as the source's client sends it, with the event ids it carries.
struct Batch {
    ids: Vec<String>,
    body: Body,
}

enum Body {
    Http(String),
    KongHttpLog(String),
    Otlp(ExportLogsServiceRequest),
}

fn make_batch(source: Source, b: usize) -> Batch {
    match source {
        Source::Http => {
            let ids: Vec<String> = (0..PER_BATCH).map(|i| format!("http-{b}-{i}")).collect();
            let events: Vec<Value> = ids.iter().map(|id| cloudevent(id)).collect();
            Batch {
                ids,
                body: Body::Http(Value::Array(events).to_string()),
            }
        }
        Source::KongHttpLog => {
            let reqs: Vec<KongRequest> = (0..PER_BATCH)
                .map(|i| {
                    KongRequest::get(KongVersion::V3_9, &format!("/crash/{b}/{i}"))
                        .with_consumer("5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f", "alice")
                })
                .collect();
            let body = format!(
                "[{}]",
                reqs.iter()
                    .map(KongRequest::serialize)
                    .collect::<Vec<_>>()
                    .join(",")
            );
            Batch {
                ids: reqs.into_iter().map(|r| r.request_id).collect(),
                body: Body::KongHttpLog(body),
            }
        }
        Source::Otlp => {
            let ids: Vec<String> = (0..PER_BATCH).map(|i| format!("otlp-{b}-{i}")).collect();
            let attr = |k: &str, v: &str| KeyValue {
                key: k.into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(v.into())),
                }),
                ..Default::default()
            };
            let records = ids
                .iter()
                .map(|id| LogRecord {
                    time_unix_nano: 1_764_000_000_000_000_000,
                    attributes: vec![attr("subject", "c1"), attr("id", id)],
                    ..Default::default()
                })
                .collect();
            Batch {
                ids,
                body: Body::Otlp(ExportLogsServiceRequest {
                    resource_logs: vec![ResourceLogs {
                        scope_logs: vec![ScopeLogs {
                            log_records: records,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                }),
            }
        }
    }
}

/// Sends one batch; true when the agent answered success.
async fn send(agent_http: std::net::SocketAddr, otlp_port: u16, batch: &Batch) -> bool {
    match &batch.body {
        Body::Http(body) | Body::KongHttpLog(body) => {
            let (path, ct) = match batch.body {
                Body::Http(_) => ("/api/v1/events", "application/cloudevents-batch+json"),
                _ => ("/kong/http-log", "application/json"),
            };
            let r = http()
                .post(format!("http://{agent_http}{path}"))
                .header("content-type", ct)
                .body(body.clone())
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            matches!(r, Ok(r) if r.status().is_success())
        }
        Body::Otlp(req) => {
            let Ok(mut client) =
                LogsServiceClient::connect(format!("http://127.0.0.1:{otlp_port}")).await
            else {
                return false;
            };
            matches!(client.export(req.clone()).await, Ok(r) if r.get_ref().partial_success.is_none())
        }
    }
}

async fn kill_9_mid_stream(source: Source) {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let otlp_port = free_port();
    let extra = format!(
        "[sources.kong_http_log]\nenabled = true\n\
         [sources.otlp_logs]\nenabled = true\nevent_type = \"jobs\"\nlisten = \"127.0.0.1:{otlp_port}\"\n"
    );
    let config = write_config(dir.path(), &receiver.url(), &extra);
    let agent = Arc::new(Mutex::new(Agent::start(&config)));
    let http_addr = agent.lock().unwrap().http;

    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (agent, done, kills, config) =
            (agent.clone(), done.clone(), kills.clone(), config.clone());
        std::thread::spawn(move || {
            use rand::Rng;
            let mut rng = rand::rng();
            while !done.load(Ordering::Relaxed) && kills.load(Ordering::Relaxed) < KILLS {
                std::thread::sleep(Duration::from_millis(rng.random_range(150..600)));
                let mut a = agent.lock().unwrap();
                a.kill9();
                kills.fetch_add(1, Ordering::Relaxed);
                *a = Agent::start(&config);
            }
        })
    };

    // The client: batches keep coming until the agent was killed KILLS times; a batch not
    // answered 2xx is sent again, as http-log's queue, the SDKs and OTLP exporters do.
    let mut acked: HashSet<String> = HashSet::new();
    let mut b = 0;
    let mut failures = 0;
    while kills.load(Ordering::Relaxed) < KILLS || b < 20 {
        let batch = make_batch(source, b);
        loop {
            if send(http_addr, otlp_port, &batch).await {
                acked.extend(batch.ids.iter().cloned());
                break;
            }
            failures += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        b += 1;
    }
    done.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    assert!(failures > 0, "some requests met a dead agent");

    receiver
        .wait_for_ids(&acked, Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered = receiver.count();
    assert_eq!(
        receiver.ids(),
        acked,
        "every 2xx-answered id arrived (exactly once after dedup), none invented"
    );
    eprintln!(
        "events={} kills={KILLS} failed requests={failures} deliveries={delivered} duplicates={}",
        acked.len(),
        delivered - acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_intake_kill_9_loses_nothing_answered() {
    kill_9_mid_stream(Source::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kong_http_log_kill_9_loses_nothing_answered() {
    kill_9_mid_stream(Source::KongHttpLog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_logs_kill_9_loses_nothing_answered() {
    kill_9_mid_stream(Source::Otlp).await;
}
