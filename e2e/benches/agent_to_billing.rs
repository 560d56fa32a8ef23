//! Flush throughput of `tollgate-agent` into the real `tollgate-billing`, beside billing's own
//! ingest rate for the same events posted straight to it in the same run.
//!
//! * `agent → billing`: the agent (config from `kong-config/`) is given a backlog of EVENTS
//!   `kong.api_request` events over gRPC while billing is down; billing then starts and the
//!   clock runs until the agent has delivered them all (its `events_sent` counter).
//! * `direct → billing`: a fresh billing takes the same events as CloudEvents batches of the
//!   agent's size (1,000) from one client posting back to back — the agent's flusher is one
//!   in-order stream per destination — and from 4 clients in parallel: what billing itself can
//!   take.
//!
//! Run: `cargo bench -p tollgate-e2e --bench agent_to_billing [-- EVENTS]` (default 100,000; build
//! the binaries first with `cargo build --release --workspace --bins`).

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_stream::wrappers::ReceiverStream;
use tollgate_e2e::stack::{Proc, binary, free_port, wait_tcp, workspace_root};
use tollgate_proto::v1::batch_ack::Status;
use tollgate_proto::v1::ingest_client::IngestClient;
use tollgate_proto::{EventBatch, UsageEvent};

const BATCH: usize = 1000;

fn event(i: usize) -> UsageEvent {
    let data = serde_json::json!({
        "request_method": "GET",
        "request_uri": "/orders/42",
        "response_http_status": 200,
        "request_size_bytes": 180,
        "response_size_bytes": 512,
        "route_name": "orders-api",
        "service_name": "orders",
        "consumer_id": format!("5d1b8c3e-2a4f-4b6d-9e8a-{:012}", i % 100),
        "subject_type": "consumer_id",
    });
    UsageEvent {
        id: format!("bench-{i}"),
        source: "kong-gateway/bench".into(),
        r#type: "kong.api_request".into(),
        subject: format!("consumer:5d1b8c3e-2a4f-4b6d-9e8a-{:012}", i % 100),
        time: "2026-11-24T10:00:00.000Z".into(),
        data: serde_json::to_vec(&data).unwrap(),
    }
}

fn cloudevent(e: &UsageEvent) -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0",
        "id": e.id,
        "source": e.source,
        "type": e.r#type,
        "subject": e.subject,
        "time": e.time,
        "data": serde_json::from_slice::<serde_json::Value>(&e.data).unwrap(),
    })
}

fn billing(dir: &Path, addr: SocketAddr) -> Proc {
    let config = workspace_root().join("kong-config/tollgate-billing.toml");
    let p = Proc::spawn(
        &binary("tollgate-billing"),
        &[
            "--config".into(),
            config.display().to_string(),
            "--listen".into(),
            addr.to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
        ],
        &[],
    )
    .unwrap();
    wait_tcp(addr, Duration::from_secs(20)).unwrap();
    p
}

async fn events_sent(client: &reqwest::Client, admin: SocketAddr) -> u64 {
    let Ok(r) = client.get(format!("http://{admin}/metrics")).send().await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("tollgate_agent_events_sent_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Posts `batches` to billing from `clients` concurrent clients; events per second.
async fn direct(addr: SocketAddr, batches: &[Vec<u8>], clients: usize) -> f64 {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mine: Vec<Vec<u8>> = batches.iter().skip(c).step_by(clients).cloned().collect();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for body in mine {
                let r = client
                    .post(format!("http://{addr}/api/v1/events"))
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (batches.len() * BATCH) as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000)
        / BATCH
        * BATCH;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let billing_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let _agent = Proc::spawn(
            &binary("tollgate-agent"),
            &[
                "--config".into(),
                workspace_root()
                    .join("kong-config/tollgate-agent.toml")
                    .display()
                    .to_string(),
                "--grpc-listen".into(),
                grpc.to_string(),
                "--http-listen".into(),
                admin.to_string(),
                "--data-dir".into(),
                dir.path().join("agent").display().to_string(),
                "--destination-url".into(),
                format!("http://{billing_addr}"),
            ],
            &[("TOLLGATE_AGENT__FLUSH__RETRY_MAX_MS", "100")],
        )
        .unwrap();
        wait_tcp(grpc, Duration::from_secs(20)).unwrap();

        // The backlog, acked durable while billing is down.
        let all: Vec<UsageEvent> = (0..events).map(event).collect();
        let mut client = IngestClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut acks = client
            .publish(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let batches: Vec<EventBatch> = all
            .chunks(BATCH)
            .enumerate()
            .map(|(i, chunk)| EventBatch {
                sequence: i as u64 + 1,
                events: chunk.to_vec(),
                destination: None,
            })
            .collect();
        let n = batches.len();
        tokio::spawn(async move {
            for b in batches {
                tx.send(b).await.unwrap();
            }
        });
        for _ in 0..n {
            let ack = acks.message().await.unwrap().unwrap();
            assert_eq!(ack.status(), Status::Durable, "{}", ack.reason);
        }

        let http = reqwest::Client::new();
        let _billing = billing(&dir.path().join("billing-1"), billing_addr);
        let t0 = Instant::now();
        while events_sent(&http, admin).await < events as u64 {
            assert!(t0.elapsed() < Duration::from_secs(600), "flush stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let flushed = events as f64 / t0.elapsed().as_secs_f64();

        let bodies: Vec<Vec<u8>> = all
            .chunks(BATCH)
            .map(|c| serde_json::to_vec(&c.iter().map(cloudevent).collect::<Vec<_>>()).unwrap())
            .collect();
        let addr2: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let _b2 = billing(&dir.path().join("billing-2"), addr2);
        let one = direct(addr2, &bodies, 1).await;
        let addr3: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let _b3 = billing(&dir.path().join("billing-3"), addr3);
        let four = direct(addr3, &bodies, 4).await;

        println!("agent flush into tollgate-billing, {events} events, batches of {BATCH}, 2 cores");
        println!("{:<46} {:>10}", "run", "events/s");
        println!("{:<46} {:>10.0}", "agent backlog → billing", flushed);
        println!("{:<46} {:>10.0}", "direct → billing, 1 client", one);
        println!("{:<46} {:>10.0}", "direct → billing, 4 clients", four);
        println!(
            "agent flush / direct 1 client: {:.2}x; / direct 4 clients: {:.2}x",
            flushed / one,
            flushed / four
        );
    });
}
