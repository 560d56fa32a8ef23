//! `[[sources.s3]]` against a real S3-compatible server (PyPI `moto[server]`, installed into
//! `target/py-venv` by `scripts/install-test-deps`) started here on loopback, with objects
//! uploaded by boto3 (the AWS SDK for Python): CloudEvents from JSON-lines and JSON-array
//! objects, a malformed line dead-lettered with its key and line number, objects read once
//! across a `kill -9`, a restart in the middle of a bucket, and listings that start after the
//! last key read (seen in moto's own request log).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, Receiver, free_port, python, write_config};

const CREDENTIALS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
];

/// A moto S3 server on loopback, killed on drop.
struct Moto {
    child: Child,
    url: String,
    /// Its request log (werkzeug's, one line a request).
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// The object listings of `bucket` moto has answered so far, as request lines.
    fn listings(&self, bucket: &str) -> Vec<String> {
        let needle = format!("\"GET /{bucket}?list-type=2");
        std::fs::read_to_string(self.log.path())
            .unwrap()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> PathBuf {
    let bin = python().parent().unwrap().join("moto_server");
    if !bin.exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-test-deps");
        assert!(Command::new("bash").arg(script).status().unwrap().success());
    }
    bin
}

async fn start_moto() -> Moto {
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let m = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(&m.url).await.is_err() {
        assert!(Instant::now() < deadline, "moto_server never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    m
}

/// Uploads `objects` (key, body) with boto3.
fn put(moto: &Moto, bucket: &str, objects: &[(&str, String)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![moto.url.clone(), bucket.to_owned()];
    for (i, (key, body)) in objects.iter().enumerate() {
        let path = dir.path().join(format!("{i}"));
        std::fs::write(&path, body).unwrap();
        args.push(format!("{key}={}", path.display()));
    }
    common::run_python("s3_put.py", &args);
}

fn event(id: &str, subject: &str) -> serde_json::Value {
    serde_json::json!({"specversion": "1.0", "id": id, "source": "exporter", "type": "storage",
        "subject": subject, "time": "2026-11-26T10:00:00Z", "data": {"gb": 3}})
}

fn source(moto: &Moto, bucket: &str, format: &str) -> String {
    format!(
        "[[sources.s3]]\nbucket = \"{bucket}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
         prefix = \"usage/\"\ninterval = \"200ms\"\nformat = \"{format}\"\n",
        moto.url
    )
}

fn raw_counts(r: &Receiver) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for e in r.received.lock().unwrap().events.iter() {
        *out.entry(e["id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    out
}

async fn wait_count(r: &Receiver, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while raw_counts(r).len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} ids arrived",
            raw_counts(r).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the agent has finished `n` listings of its S3 source.
async fn wait_ticks(agent: &Agent, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = agent.get("/metrics").await;
        let ticks: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("tollgate_agent_source_ticks_total{kind=\"s3\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if ticks >= n as f64 {
            return;
        }
        assert!(Instant::now() < deadline, "only {ticks} listings");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn jsonl_objects_are_read_once_and_a_bad_line_is_dead_lettered_with_its_place() {
    let moto = start_moto().await;
    let good = [event("e-1", "acme"), event("e-2", "globex")];
    let mut no_id = event("x", "initech");
    no_id.as_object_mut().unwrap().remove("id");
    no_id.as_object_mut().unwrap().remove("source");
    put(
        &moto,
        "usage",
        &[
            (
                "usage/2026/a.jsonl",
                format!("{}\n{{not json\n\n{}\n{}\n", good[0], good[1], no_id),
            ),
            ("other/ignored.jsonl", format!("{}\n", event("e-9", "acme"))),
        ],
    );
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &receiver.url(),
        &source(&moto, "usage", "cloudevents-jsonl"),
    );
    let mut agent = Agent::start_with_env(&config, &CREDENTIALS);
    wait_count(&receiver, 3).await;
    let events = receiver.received.lock().unwrap().events.clone();
    let e1 = events.iter().find(|e| e["id"] == "e-1").unwrap();
    assert_eq!(e1["source"], "exporter");
    assert_eq!(e1["subject"], "acme");
    assert_eq!(e1["data"]["gb"], 3);
    // Without an id: one derived from bucket, key and line, and the configured source.
    let derived = events.iter().find(|e| e["subject"] == "initech").unwrap();
    assert_eq!(derived["source"], "s3");
    assert!(
        !events.iter().any(|e| e["id"] == "e-9"),
        "outside the prefix"
    );
    let (_, letters) = agent.get("/v1/dead-letters").await;
    assert!(
        letters.contains("s3://usage/usage/2026/a.jsonl line 2"),
        "{letters}"
    );
    assert!(letters.contains("not JSON"), "{letters}");

    // Read once: more listings, and after a kill -9 and restart, nothing is read again; a new
    // object is.
    // A listing finished: the object's progress is on disk.
    wait_ticks(&agent, 1).await;
    agent.kill9();
    put(
        &moto,
        "usage",
        &[("usage/2026/b.jsonl", format!("{}\n", event("e-3", "acme")))],
    );
    let agent = Agent::start_with_env(&config, &CREDENTIALS);
    wait_count(&receiver, 4).await;
    // Several listings since the restart, any of which would have read the old object again.
    wait_ticks(&agent, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Delivery is at least once (a kill -9 between the receiver's 2xx and the buffer letting the
    // batch go sends it again, with the same ids, which billing dedupes), so what tells whether
    // an object was read again is what the restarted agent's S3 source stored: b.jsonl's one
    // event, nothing of a.jsonl.
    let counts = raw_counts(&receiver);
    for id in ["e-1", "e-2", "e-3"] {
        assert!(counts[id] >= 1, "{id} never delivered");
    }
    assert!(counts[derived["id"].as_str().unwrap()] >= 1);
    let (_, metrics) = agent.get("/metrics").await;
    let stored: f64 = metrics
        .lines()
        .find(|l| l.starts_with("tollgate_agent_source_events_total{kind=\"s3\""))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no S3 events counter in {metrics}"));
    assert_eq!(
        stored, 1.0,
        "the restarted agent read only the new object: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_array_objects_and_a_restart_in_the_middle_of_the_bucket() {
    let moto = start_moto().await;
    let objects: Vec<(String, String)> = (0..40)
        .map(|i| {
            let events: Vec<_> = (0..50)
                .map(|j| event(&format!("o{i}-{j}"), "acme"))
                .collect();
            (
                format!("usage/{i:03}.json"),
                serde_json::to_string(&events).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, String)> = objects
        .iter()
        .map(|(k, b)| (k.as_str(), b.clone()))
        .collect();
    put(&moto, "arrays", &refs);
    put(
        &moto,
        "arrays",
        &[("usage/zz-broken.json", "{\"not\": \"an array\"}".into())],
    );
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &receiver.url(),
        &source(&moto, "arrays", "cloudevents-json"),
    );
    let mut agent = Agent::start_with_env(&config, &CREDENTIALS);
    // Killed while reading the bucket.
    let deadline = Instant::now() + Duration::from_secs(30);
    while raw_counts(&receiver).len() < 100 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    agent.kill9();
    let partial = raw_counts(&receiver).len();
    let agent = Agent::start_with_env(&config, &CREDENTIALS);
    wait_count(&receiver, 2000).await;
    assert!(
        partial < 2000,
        "the kill came after the whole bucket: {partial}"
    );
    let (_, letters) = agent.get("/v1/dead-letters").await;
    assert!(
        letters.contains("s3://arrays/usage/zz-broken.json"),
        "{letters}"
    );
    assert!(letters.contains("not a JSON array"), "{letters}");
    // The restarted agent read only what the first had not finished: the objects the first
    // delivered from are not read again (one object in flight at the kill may be, with the
    // same ids). Its own counter says how many events it made.
    let (_, metrics) = agent.get("/metrics").await;
    let made: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tollgate_agent_source_events_total{kind=\"s3\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        made <= (2000 - partial + 100) as f64,
        "the restarted agent made {made} events; {partial} were delivered before the kill"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_start_after_last_key_each_listing_asks_only_for_keys_after_the_last_one_read() {
    let moto = start_moto().await;
    put(
        &moto,
        "grow",
        &[
            (
                "usage/2026/11/26/1000.jsonl",
                format!("{}\n", event("g-1", "acme")),
            ),
            (
                "usage/2026/11/26/1005.jsonl",
                format!("{}\n", event("g-2", "acme")),
            ),
        ],
    );
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &receiver.url(),
        &format!(
            "{}start_after_last_key = true\n",
            source(&moto, "grow", "cloudevents-jsonl")
        ),
    );
    let mut agent = Agent::start_with_env(&config, &CREDENTIALS);
    wait_count(&receiver, 2).await;
    wait_ticks(&agent, 3).await;
    let listings = moto.listings("grow");
    // The first listing has nothing to start after; every one after the reads starts after the
    // last key.
    assert!(!listings[0].contains("start-after"), "{listings:#?}");
    assert!(
        listings
            .last()
            .unwrap()
            .contains("start-after=usage/2026/11/26/1005.jsonl"),
        "{listings:#?}"
    );

    // A newer key is read; one written late under an older key is not (the documented cost of
    // the setting) — and a restarted agent goes on from the key it kept.
    put(
        &moto,
        "grow",
        &[
            (
                "usage/2026/11/26/1010.jsonl",
                format!("{}\n", event("g-3", "acme")),
            ),
            (
                "usage/2026/11/26/0900.jsonl",
                format!("{}\n", event("late", "acme")),
            ),
        ],
    );
    wait_count(&receiver, 3).await;
    wait_ticks(&agent, 6).await;
    agent.kill9();
    let before = moto.listings("grow").len();
    let agent = Agent::start_with_env(&config, &CREDENTIALS);
    wait_ticks(&agent, 2).await;
    let after = moto.listings("grow");
    assert!(after.len() > before, "{after:#?}");
    for l in &after[before..] {
        assert!(
            l.contains("start-after=usage/2026/11/26/1010.jsonl"),
            "the restarted agent listed from the start: {l}"
        );
    }
    assert!(!raw_counts(&receiver).contains_key("late"));
    let (_, metrics) = agent.get("/metrics").await;
    assert!(
        !metrics.lines().any(
            |l| l.starts_with("tollgate_agent_source_events_total{kind=\"s3\"")
                && !l.ends_with(" 0")
        ),
        "the restarted agent read an object again: {metrics}"
    );
}
