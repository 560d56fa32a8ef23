//! User-space cost of one log-phase event inside `tollgate`, with no socket in the way: the
//! `HandleEvent` request and the `kong.log.serialize` Step (a Kong 3.9 serialize JSON, encoded as
//! Kong's lua-MessagePack encodes it) fed to a [`Session`], answered, metered and queued for a
//! real in-process gRPC ingest server that acks at once.
//!
//! Beside it in the same run, the raw limits of the two pieces of work every external plugin
//! server must do for this event: reading the serialize JSON once (`serde_json` into
//! `IgnoredAny`, which validates and skips), and the protocol alone (`HandleEvent` for a phase
//! the plugin does not list, answered `ret`).
//!
//! Run: `cargo bench -p tollgate --bench hot_path [-- EVENTS [log|floor|read]]` (a part name runs
//! that part alone). Instruction counts of the log phase alone, repeatable on a noisy machine:
//! `valgrind --tool=callgrind target/release/deps/hot_path-* 20000 log`, then divide the main
//! thread's total by 20,000.

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{AgentMode, RecordingAgent};
use rmpv::Value;
use serde::de::IgnoredAny;
use tollgate::publisher::{Publisher, PublisherConfig};
use tollgate::server::{Session, State};
use tollgate_e2e::kong::msgpack;
use tollgate_e2e::kong::serialize::{KongRequest, KongVersion};

fn request(msgid: u64, method: &str, arg: Value) -> Vec<u8> {
    let mut out = Vec::new();
    msgpack::encode_request(&mut out, msgid, method, vec![arg]);
    out
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

/// Feeds `bytes`, answers, and returns the result of the (last) response.
async fn call(session: &mut Session, state: &State, bytes: &[u8]) -> Value {
    session.feed(bytes);
    session.answer(state).await.unwrap();
    let mut reply: &[u8] = session.output();
    let mut last = Value::Nil;
    while !reply.is_empty() {
        last = rmpv::decode::read_value(&mut reply).unwrap();
    }
    session.clear_output();
    match last {
        Value::Array(mut parts) if parts.len() == 4 => parts.pop().unwrap(),
        other => panic!("not a response: {other:?}"),
    }
}

fn field<'v>(v: &'v Value, key: &str) -> &'v Value {
    v.as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
        .unwrap()
}

/// The Step answering `kong.log.serialize` for event `event_id`, encoded once with a fixed-width
/// (uint32) EventId so that each event only patches four bytes.
struct StepTemplate {
    bytes: Vec<u8>,
    id_at: usize,
}

impl StepTemplate {
    fn new(serialize: &str) -> StepTemplate {
        const MARK: u32 = 0xDEAD_BEEF;
        let bytes = request(
            3,
            "plugin.Step",
            map(vec![
                ("EventId", Value::from(MARK)),
                ("Data", Value::from(serialize)),
            ]),
        );
        let needle = [0xce, 0xde, 0xad, 0xbe, 0xef];
        let id_at = bytes.windows(5).position(|w| w == needle).unwrap() + 1;
        StepTemplate { bytes, id_at }
    }

    fn for_event(&mut self, event_id: i64) -> &[u8] {
        let id = u32::try_from(event_id).unwrap().to_be_bytes();
        self.bytes[self.id_at..self.id_at + 4].copy_from_slice(&id);
        &self.bytes
    }
}

/// The EventId of a Step reply, read in place.
fn reply_event_id(reply: &[u8]) -> i64 {
    let mut r = reply;
    let v = rmpv::decode::read_value_ref(&mut r).unwrap();
    let rmpv::ValueRef::Array(parts) = v else {
        panic!("not a response")
    };
    let rmpv::ValueRef::Map(fields) = &parts[3] else {
        panic!("not a step reply: {parts:?}")
    };
    fields
        .iter()
        .find(|(k, _)| matches!(k, rmpv::ValueRef::String(s) if s.as_str() == Some("EventId")))
        .and_then(|(_, v)| match v {
            rmpv::ValueRef::Integer(i) => i.as_i64(),
            _ => None,
        })
        .unwrap()
}

fn main() {
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let only = std::env::args()
        .skip(1)
        .find(|a| a.parse::<usize>().is_err() && !a.starts_with('-'));
    let runs = |part: &str| only.as_deref().is_none_or(|o| o == part);
    // The agent stand-in runs on its own thread, as the real agent is another process.
    let agent_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let agent = agent_rt.block_on(RecordingAgent::start());
    *agent.mode.lock().unwrap() = AgentMode::AckOnly;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let publisher = Publisher::start(PublisherConfig::new(agent.url().parse().unwrap()));
        let state = State::new(publisher.clone(), "kong-bench".into());
        let mut session = Session::default();
        let started = call(
            &mut session,
            &state,
            &request(
                1,
                "plugin.StartInstance",
                map(vec![
                    ("Name", Value::from("tollgate")),
                    ("Config", Value::from("{}")),
                ]),
            ),
        )
        .await;
        let instance = field(&started, "Id").as_i64().unwrap();
        let serialize = KongRequest::get(KongVersion::V3_9, "/orders/42")
            .with_consumer("5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f", "alice")
            .serialize();
        let handle = |phase: &str| {
            request(
                2,
                "plugin.HandleEvent",
                map(vec![
                    ("InstanceId", Value::from(instance)),
                    ("EventName", Value::from(phase)),
                ]),
            )
        };
        let (log, access) = (handle("log"), handle("access"));

        // The protocol alone: one round trip answered `ret`.
        let t0 = Instant::now();
        for _ in 0..if runs("floor") { events } else { 0 } {
            session.feed(&access);
            session.answer(&state).await.unwrap();
            black_box(session.output());
            session.clear_output();
            // The real server goes back to the runtime after every read.
            tokio::task::yield_now().await;
        }
        let floor_ns = t0.elapsed().as_nanos() as f64 / events as f64;

        // Reading the serialize JSON once.
        let t0 = Instant::now();
        for _ in 0..if runs("read") { events } else { 0 } {
            black_box(serde_json::from_str::<IgnoredAny>(black_box(&serialize)).unwrap());
        }
        let read_ns = t0.elapsed().as_nanos() as f64 / events as f64;

        // The whole log phase.
        let mut step = StepTemplate::new(&serialize);
        let log_events = if runs("log") { events } else { 0 };
        let t0 = Instant::now();
        for _ in 0..log_events {
            session.feed(&log);
            session.answer(&state).await.unwrap();
            let event_id = reply_event_id(session.output());
            session.clear_output();
            session.feed(step.for_event(event_id));
            session.answer(&state).await.unwrap();
            black_box(session.output());
            session.clear_output();
            tokio::task::yield_now().await;
        }
        let log_ns = t0.elapsed().as_nanos() as f64 / events as f64;
        assert_eq!(
            state.stats.requests.load(Ordering::Relaxed) as usize,
            log_events
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while (publisher.stats().acked.load(Ordering::Relaxed) as usize) < log_events {
            assert!(
                Instant::now() < deadline,
                "the agent did not ack every event"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        println!(
            "tollgate log phase in process ({events} events, serialize {} bytes)",
            serialize.len()
        );
        println!("{:<58} {:>10}", "work", "ns/event");
        for (name, ns) in [
            ("protocol alone: HandleEvent answered ret", floor_ns),
            (
                "raw read of the serialize JSON (serde_json IgnoredAny)",
                read_ns,
            ),
            ("log phase: HandleEvent + Step, parse, event, queue", log_ns),
        ] {
            println!("{name:<58} {ns:>10.0}");
        }
        println!(
            "log phase / (2 x protocol + raw read) = {:.2}x",
            log_ns / (2.0 * floor_ns + read_ns)
        );
    });
}
