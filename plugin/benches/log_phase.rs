//! Log-phase throughput and cost of the real `tollgate` binary, driven over its Unix socket by the
//! Kong-side driver, beside the raw IPC floor measured in the same run.
//!
//! * `floor`: `HandleEvent` for a phase the plugin does not list, answered `ret` at once — one
//!   round trip, no PDK call, no metering: the least any external plugin can cost per request.
//! * `metering`: the real log phase — `HandleEvent`, the `kong.log.serialize` Step carrying a
//!   3.9 serialize JSON (~2.3 KB), parsing, building `kong.api_request`, queueing, and streaming
//!   to an in-process gRPC ingest server that acks at once.
//!
//! Reports events/s, server CPU µs per event (utime+stime from /proc/<pid>/stat) and the
//! server's RSS before and after. Run: `cargo bench -p tollgate --bench log_phase [-- EVENTS]`.

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{RecordingAgent, metering_plugin, start_tollgate};
use rmpv::Value;
use serde_json::json;
use tollgate_e2e::kong::pdk::RequestPdk;
use tollgate_e2e::kong::serialize::{KongRequest, KongVersion};
use tollgate_e2e::kong::worker::Worker;

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        .unwrap_or(0)
}

struct Run {
    events: usize,
    secs: f64,
    cpu_us_per_event: f64,
}

async fn drive(workers: &[Arc<Worker>], per_worker: usize, pid: u32, metering: bool) -> Run {
    let plugin = Arc::new(metering_plugin(json!({})));
    let req = Arc::new(
        KongRequest::get(KongVersion::V3_9, "/orders/42")
            .with_consumer("5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f", "alice"),
    );
    // Warm the instances.
    for w in workers {
        w.instance_id(&plugin).await.unwrap();
    }
    let ticks0 = cpu_ticks(pid);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in workers {
        let (w, plugin, req) = (w.clone(), plugin.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            let id = w.instance_id(&plugin).await.unwrap();
            for _ in 0..per_worker {
                if metering {
                    w.run_phase(
                        &plugin,
                        "log",
                        &RequestPdk {
                            request: &req,
                            phase: "log",
                        },
                    )
                    .await
                    .unwrap();
                } else {
                    w.rpc()
                        .call(
                            "plugin.HandleEvent",
                            vec![Value::Map(vec![
                                (Value::from("InstanceId"), Value::from(id)),
                                (Value::from("EventName"), Value::from("access")),
                            ])],
                        )
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let ticks = cpu_ticks(pid) - ticks0;
    let events = workers.len() * per_worker;
    // USER_HZ is 100 on Linux.
    Run {
        events,
        secs,
        cpu_us_per_event: ticks as f64 * 10_000.0 / events as f64,
    }
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
        let agent = RecordingAgent::start().await;
        let dir = tempfile::tempdir().unwrap();
        let server = start_tollgate(dir.path(), &agent.url(), &[]);
        let pid = server.pid();
        let workers: Vec<Arc<Worker>> = (0..4).map(|_| Arc::new(Worker::new(dir.path().join("tollgate.socket")))).collect();
        let per_worker = events / workers.len();
        let rss0 = rss_kib(pid);
        let floor = drive(&workers, per_worker, pid, false).await;
        let metering = drive(&workers, per_worker, pid, true).await;
        let rss1 = rss_kib(pid);
        let again = drive(&workers, per_worker, pid, true).await;
        let rss2 = rss_kib(pid);
        agent.wait_for(2 * metering.events).await;
        println!("tollgate log phase, {} events per run, 4 driver workers, 2 cores", floor.events);
        println!("{:<34} {:>12} {:>16}", "run", "events/s", "server CPU µs/ev");
        for (name, r) in [("floor (1 round trip, no PDK call)", &floor), ("metering (serialize → event → agent)", &metering), ("metering, second run", &again)] {
            println!("{:<34} {:>12.0} {:>16.2}", name, r.events as f64 / r.secs, r.cpu_us_per_event);
        }
        println!(
            "metering / floor CPU: {:.2}x   RSS: start {} KiB, after run 1 {} KiB, after run 2 {} KiB",
            metering.cpu_us_per_event / floor.cpu_us_per_event.max(0.01),
            rss0,
            rss1,
            rss2
        );
    });
}
