//! Durable ingest of the real `tollgate-agent` over gRPC with group commit, beside the raw speed
//! of sled on the same disk in the same run, and flush throughput to a local HTTP receiver.
//!
//! * `sled, flush per batch`: insert a batch of 500 encoded events, `flush_async`, repeat — what
//!   durability costs without group commit.
//! * `sled, one flush per 8 batches`: the same with 8 batches sharing each flush — the raw
//!   ceiling group commit can approach.
//! * `agent gRPC, N streams`: the real binary, N concurrent `Publish` streams of 500-event
//!   batches, counting events acked `DURABLE`.
//! * `flush`: the agent delivering its backlog to a local receiver that answers 204.
//! * `flush, 20 ms away`: the same to a receiver that answers each request after 20 ms (a
//!   remote billing service), with one request in flight and with four, beside that round trip's
//!   limit for one request at a time (1,000 events per 20 ms = 50,000 events/s).
//!
//! Run: `cargo bench -p tollgate-agent --bench ingest [-- EVENTS]`.

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use tollgate_agent::buffer::StoredEvent;

const PER_BATCH: usize = 500;

fn stored(i: usize) -> StoredEvent {
    let e = event(&format!("raw-{i}"));
    StoredEvent {
        id: e.id,
        source: e.source,
        ty: e.r#type,
        subject: e.subject,
        time: e.time,
        data: String::from_utf8(e.data).unwrap(),
        received_ms: 0,
    }
}

async fn raw_sled(events: usize, batches_per_flush: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let tree = db.open_tree("queue/0").unwrap();
    let t0 = Instant::now();
    let mut key = 0u64;
    for b in 0..events / PER_BATCH {
        let mut batch = sled::Batch::default();
        for _ in 0..PER_BATCH {
            key += 1;
            batch.insert(
                &key.to_be_bytes(),
                rmp_serde::to_vec_named(&stored(key as usize)).unwrap(),
            );
        }
        tree.apply_batch(batch).unwrap();
        if (b + 1) % batches_per_flush == 0 {
            db.flush_async().await.unwrap();
        }
    }
    db.flush_async().await.unwrap();
    events as f64 / t0.elapsed().as_secs_f64()
}

async fn agent_grpc(events: usize, streams: usize, url: &str) -> f64 {
    let per_stream = events / streams;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..streams {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let batches: Vec<_> = (0..per_stream / PER_BATCH)
                .map(|b| batch(b as u64, (0..PER_BATCH).map(|i| format!("g{s}-{b}-{i}"))))
                .collect();
            // Windows of 8 batches in flight per stream, as the plugin's publisher keeps.
            let mut durable_events = 0;
            for window in batches.chunks(8) {
                let acks = publish(&url, window.to_vec()).await.unwrap();
                durable_events += durable(&acks) * PER_BATCH;
            }
            durable_events
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, per_stream * streams / PER_BATCH * PER_BATCH);
    total as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let raw_each = raw_sled(events, 1).await;
        let raw_grouped = raw_sled(events, 8).await;

        // The receiver is down during ingest so the backlog builds; then it comes up.
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::start(&write_config(
            dir.path(),
            &format!("http://127.0.0.1:{port}"),
            "[flush]\nretry_max_ms = 100\n",
        ));
        let one = agent_grpc(events / 2, 1, &agent.grpc_url()).await;
        let four = agent_grpc(events / 2, 4, &agent.grpc_url()).await;
        let backlog =
            (events / 2 / PER_BATCH) * PER_BATCH + (events / 2 / 4 / PER_BATCH) * PER_BATCH * 4;
        let receiver = Receiver::start_on(port).await;
        let t0 = Instant::now();
        while receiver.count() < backlog {
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "flush stalled at {}",
                receiver.count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let flush = backlog as f64 / t0.elapsed().as_secs_f64();

        // A remote destination: every answer takes 20 ms.
        let mut remote = Vec::new();
        for in_flight in [1, 4] {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap();
            let agent = Agent::start(&write_config(
                dir.path(),
                &format!("http://127.0.0.1:{port}"),
                &format!("[flush]\nretry_max_ms = 100\nmax_in_flight = {in_flight}\n"),
            ));
            agent_grpc(events / 2, 4, &agent.grpc_url()).await;
            let backlog = (events / 2 / 4 / PER_BATCH) * PER_BATCH * 4;
            let receiver = Receiver::start_on(port).await;
            receiver.behaviour.lock().unwrap().delay = Duration::from_millis(20);
            let t0 = Instant::now();
            while receiver.count() < backlog {
                assert!(t0.elapsed() < Duration::from_secs(300), "flush stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            remote.push(backlog as f64 / t0.elapsed().as_secs_f64());
        }

        println!("tollgate-agent durable ingest, {events} events, batches of {PER_BATCH}, 2 cores");
        println!("{:<44} {:>12}", "run", "events/s");
        println!("{:<44} {:>12.0}", "raw sled, flush per batch", raw_each);
        println!(
            "{:<44} {:>12.0}",
            "raw sled, one flush per 8 batches", raw_grouped
        );
        println!(
            "{:<44} {:>12.0}",
            "agent gRPC, 1 stream (acked durable)", one
        );
        println!(
            "{:<44} {:>12.0}",
            "agent gRPC, 4 streams (acked durable)", four
        );
        println!(
            "{:<44} {:>12.0}",
            "agent flush to local HTTP receiver (204)", flush
        );
        println!(
            "{:<44} {:>12.0}",
            "agent flush, receiver 20 ms away, 1 in flight", remote[0]
        );
        println!(
            "{:<44} {:>12.0}",
            "agent flush, receiver 20 ms away, 4 in flight", remote[1]
        );
        println!(
            "agent 4 streams / raw sled flush-per-batch: {:.2}x; flush 20 ms away, 4 in flight / one request's limit (50,000/s): {:.2}x",
            four / raw_each,
            remote[1] / 50_000.0
        );
    });
}
