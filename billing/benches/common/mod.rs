//! What the billing benchmarks on the real binary share: a release `tollgate-billing` on a data
//! directory and a free loopback port (flags and logging chosen per bench), killed when dropped,
//! with its CPU time and peak memory read from `/proc`; JSON posts that must succeed; and
//! CloudEvents batches ingested from 4 concurrent senders.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running billing, killed (-9) when dropped.
pub struct Billing {
    pub child: Child,
    /// Its base URL.
    pub base: String,
}

impl Drop for Billing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Billing {
    /// Billing on `dir` with `flags` (e.g. `--simulated-clock`), logging errors only.
    pub fn start(dir: &Path, flags: &[&str]) -> Billing {
        Billing::spawn(dir, flags, None)
    }

    /// As [`Billing::start`], logging at info level as JSON lines into `log`.
    pub fn start_logging(dir: &Path, flags: &[&str], log: &Path) -> Billing {
        Billing::spawn(dir, flags, Some(log))
    }

    fn spawn(dir: &Path, flags: &[&str], log: Option<&Path>) -> Billing {
        let port = tollgate_e2e::stack::free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate-billing"));
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .args(flags)
        .env_remove("TOLLGATE_BILLING_SIMULATED_CLOCK")
        .stdin(Stdio::null());
        match log {
            Some(path) => {
                cmd.env("TOLLGATE_LOG", "info")
                    .env("TOLLGATE_LOG_FORMAT", "json")
                    .stderr(std::fs::File::create(path).unwrap());
            }
            None => {
                cmd.env("TOLLGATE_LOG", "error");
            }
        }
        let child = cmd.spawn().unwrap();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        Billing {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Its user + system CPU time so far, seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    /// Its peak resident memory (VmHWM), MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

/// CPU seconds (user + system) `pid` has used so far, its waited-for children's included, from
/// `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12, 13, 14]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// POSTs `body` to `url`, asserting a 2xx; the JSON answer (null when there is none).
pub async fn post(c: &reqwest::Client, url: String, body: Value) -> Value {
    let r = c.post(&url).json(&body).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "{url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Ingests the CloudEvents batch `bodies` (`events` in all) into `base` from 4 concurrent
/// senders, each request answered 204; events per second.
pub async fn ingest(base: &str, bodies: &[bytes::Bytes], events: usize) -> f64 {
    ingest_spread(&[base.to_owned()], bodies, events).await
}

/// As [`ingest`], the 4 senders spread over `bases` (replicas of one database) in turn.
pub async fn ingest_spread(bases: &[String], bodies: &[bytes::Bytes], events: usize) -> f64 {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (client, base) = (client.clone(), bases[w % bases.len()].clone());
        let mine: Vec<bytes::Bytes> = bodies.iter().skip(w).step_by(4).cloned().collect();
        tasks.push(tokio::spawn(async move {
            for body in mine {
                let r = client
                    .post(format!("{base}/api/v1/events"))
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 204);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    events as f64 / start.elapsed().as_secs_f64()
}
