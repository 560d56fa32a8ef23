//! kill -9 at random moments while 100k events flow: every event the agent acknowledged reaches
//! the receiver (exactly once after dedup by id), and nothing acked is lost.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rand::Rng;
use tollgate_proto::v1::batch_ack::Status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_that_was_acked() {
    const EVENTS: usize = 100_000;
    const PER_BATCH: usize = 500;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &receiver.url(), "");
    let agent = Arc::new(Mutex::new(Agent::start(&config)));
    let grpc = agent.lock().unwrap().grpc_url();

    // The killer: kill -9 and restart at random moments while traffic flows.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kills = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killer = {
        let (agent, done, kills, config) =
            (agent.clone(), done.clone(), kills.clone(), config.clone());
        std::thread::spawn(move || {
            let mut rng = rand::rng();
            while !done.load(std::sync::atomic::Ordering::Relaxed)
                && kills.load(std::sync::atomic::Ordering::Relaxed) < 5
            {
                std::thread::sleep(Duration::from_millis(rng.random_range(150..700)));
                let mut a = agent.lock().unwrap();
                a.kill9();
                kills.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *a = Agent::start(&config);
            }
        })
    };

    // The publisher behaves like the plugin: a batch is kept until acked, and resent after a
    // broken stream.
    let all: Vec<Vec<String>> = (0..EVENTS / PER_BATCH)
        .map(|b| (0..PER_BATCH).map(|i| format!("crash-{b}-{i}")).collect())
        .collect();
    let mut acked: HashSet<String> = HashSet::new();
    let mut pending: Vec<usize> = (0..all.len()).collect();
    let mut failures = 0;
    while !pending.is_empty() {
        let window: Vec<usize> = pending.iter().take(20).copied().collect();
        let batches = window
            .iter()
            .map(|&i| batch(i as u64, all[i].clone()))
            .collect();
        match publish(&grpc, batches).await {
            Ok(acks) => {
                for (seq, ack) in acks {
                    if ack.status() == Status::Durable {
                        acked.extend(all[seq as usize].iter().cloned());
                        pending.retain(|&p| p != seq as usize);
                    }
                }
            }
            Err(_) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    killer.join().unwrap();
    let kills = kills.load(std::sync::atomic::Ordering::Relaxed);
    assert!(kills >= 1, "the agent was killed mid-traffic");
    assert_eq!(acked.len(), EVENTS);

    receiver
        .wait_for_ids(&acked, Duration::from_secs(120))
        .await;
    let received = receiver.received.lock().unwrap().events.len();
    let distinct = receiver.ids();
    assert_eq!(
        distinct.len(),
        EVENTS,
        "every acked id exactly once after dedup, none invented"
    );
    eprintln!(
        "kills={kills} stream failures={failures} deliveries={received} duplicates={}",
        received - EVENTS
    );
}
