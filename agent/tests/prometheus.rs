//! `[[sources.prometheus]]` against a real Prometheus (Debian's `prometheus` package, installed
//! by `scripts/install-test-deps`), started here on a loopback port and scraping itself every
//! second: events per series per tick, a failing query that does not lose the others, catch-up
//! of the ticks missed across a `kill -9`, and ids that are the same when the same tick is
//! evaluated again by another process.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, Receiver, free_port, write_config};

/// A Prometheus on loopback, killed and its data removed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_bin() -> String {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-test-deps");
        let status = Command::new("bash").arg(script).status().unwrap();
        assert!(status.success(), "scripts/install-test-deps failed");
    }
    "prometheus".into()
}

async fn start_prometheus() -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let child = Command::new(prometheus_bin())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    // Ready, and `up` has its first sample.
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = common::http();
    loop {
        assert!(Instant::now() < deadline, "prometheus never answered `up`");
        if let Ok(r) = client
            .get(format!("{}/api/v1/query?query=up", p.url))
            .send()
            .await
            && let Ok(v) = r.json::<serde_json::Value>().await
            && v["data"]["result"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn source(prom: &Prometheus, extra: &str) -> String {
    format!(
        r#"[[sources.prometheus]]
url = "{}"
schedule = "@every 1s"
subject_label = "instance"
{extra}
queries = [
  {{ name = "up", promql = "up" }},
  {{ name = "broken", promql = "sum(" }},
  {{ name = "build", promql = "prometheus_build_info" }},
]
"#,
        prom.url
    )
}

/// Events of type `ty` by time: the distinct ids seen for each tick.
fn by_tick(r: &Receiver, ty: &str) -> BTreeMap<String, HashSet<String>> {
    let mut out: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for e in r.received.lock().unwrap().events.iter() {
        if e["type"] == ty {
            out.entry(e["time"].as_str().unwrap().to_owned())
                .or_default()
                .insert(e["id"].as_str().unwrap().to_owned());
        }
    }
    out
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn metric(text: &str, name: &str, needle: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_event_per_series_per_tick_and_a_failing_query_loses_nothing_else() {
    let prom = start_prometheus().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &receiver.url(), &source(&prom, ""));
    let agent = Agent::start(&config);
    wait_until("three ticks of `up`", Duration::from_secs(30), || {
        by_tick(&receiver, "up").len() >= 3
    })
    .await;
    let events = receiver.received.lock().unwrap().events.clone();
    let up = events.iter().find(|e| e["type"] == "up").unwrap();
    let instance = prom.url.trim_start_matches("http://");
    assert_eq!(up["source"], "prometheus");
    assert_eq!(up["subject"], instance);
    assert_eq!(up["data"]["value"], 1.0, "{up}");
    assert_eq!(up["data"]["metric"]["job"], "self", "{up}");
    assert_eq!(up["data"]["metric"]["instance"], instance, "{up}");
    // Ticks on whole seconds (`@every 1s` is aligned), the evaluation time.
    let time = up["time"].as_str().unwrap();
    assert!(time.ends_with(".000Z"), "{time}");
    // The query beside the broken one has its events every tick too.
    assert!(events.iter().any(|e| e["type"] == "build"));
    assert!(!events.iter().any(|e| e["type"] == "broken"));
    for (tick, ids) in by_tick(&receiver, "up") {
        assert_eq!(ids.len(), 1, "one series, one id per tick ({tick})");
    }
    let (_, metrics) = agent.get("/metrics").await;
    assert!(
        metric(
            &metrics,
            "tollgate_agent_source_errors_total",
            "kind=\"prometheus\""
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "tollgate_agent_source_ticks_total",
            "kind=\"prometheus\""
        ) >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "tollgate_agent_source_events_total",
            "kind=\"prometheus\""
        ) >= 3.0
    );
    assert!(
        metrics.contains("tollgate_agent_source_lag_seconds{"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ticks_missed_across_a_kill_9_are_caught_up_and_a_second_evaluation_has_the_same_ids() {
    let prom = start_prometheus().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &receiver.url(),
        &source(&prom, "max_catch_up = 100"),
    );
    let mut agent = Agent::start(&config);
    wait_until("two ticks", Duration::from_secs(30), || {
        by_tick(&receiver, "up").len() >= 2
    })
    .await;
    agent.kill9();
    let before = by_tick(&receiver, "up").len();
    // Down for several ticks.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let agent = Agent::start(&config);
    wait_until("ticks after the restart", Duration::from_secs(30), || {
        by_tick(&receiver, "up").len() >= before + 7
    })
    .await;
    // No tick lost: every second from the first to the last has its event.
    let ticks: Vec<i64> = by_tick(&receiver, "up")
        .keys()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp())
        .collect();
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], 1, "a tick is missing: {ticks:?}");
    }
    drop(agent);

    // Another agent (its own buffer, no progress) evaluating the same tick gives the same id:
    // both deliver to the same receiver, and every tick they share has one id.
    let receiver2 = Receiver::start().await;
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = Agent::start(&write_config(
        dir_a.path(),
        &receiver2.url(),
        &source(&prom, ""),
    ));
    let b = Agent::start(&write_config(
        dir_b.path(),
        &receiver2.url(),
        &source(&prom, ""),
    ));
    wait_until("ticks from both agents", Duration::from_secs(30), || {
        let events = receiver2.received.lock().unwrap().events.clone();
        let mut per_tick: HashMap<String, usize> = HashMap::new();
        for e in events.iter().filter(|e| e["type"] == "up") {
            *per_tick
                .entry(e["time"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        per_tick.values().filter(|n| **n >= 2).count() >= 3
    })
    .await;
    drop((a, b));
    let events = receiver2.received.lock().unwrap().events.clone();
    let mut per_tick: HashMap<String, HashSet<String>> = HashMap::new();
    let mut raw: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| e["type"] == "up") {
        let t = e["time"].as_str().unwrap().to_owned();
        per_tick
            .entry(t.clone())
            .or_default()
            .insert(e["id"].as_str().unwrap().into());
        *raw.entry(t).or_default() += 1;
    }
    for (t, ids) in &per_tick {
        assert_eq!(
            ids.len(),
            1,
            "tick {t} evaluated by two agents has {} ids",
            ids.len()
        );
    }
    assert!(raw.values().filter(|n| **n >= 2).count() >= 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn catch_up_stops_at_max_catch_up_and_counts_what_it_skipped() {
    let prom = start_prometheus().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &receiver.url(),
        &source(&prom, "max_catch_up = 2"),
    );
    let mut agent = Agent::start(&config);
    wait_until("a tick", Duration::from_secs(30), || {
        !by_tick(&receiver, "up").is_empty()
    })
    .await;
    // A whole round done — every query evaluated and its progress saved — before the kill: `up`'s
    // events can reach the receiver while `build` is still being evaluated, and a query with no
    // saved progress starts afresh at the newest tick, skipping (and counting) nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = agent.get("/metrics").await;
        let ticks = metric(
            &metrics,
            "tollgate_agent_source_ticks_total",
            "kind=\"prometheus\"",
        );
        if ticks >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no round finished: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.kill9();
    let last_before = by_tick(&receiver, "up").keys().last().unwrap().clone();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let agent = Agent::start(&config);
    wait_until("ticks after the restart", Duration::from_secs(30), || {
        by_tick(&receiver, "up")
            .range(last_before.clone()..)
            .count()
            >= 4
    })
    .await;
    let secs = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp();
    let ticks: Vec<i64> = by_tick(&receiver, "up")
        .range(last_before.clone()..)
        .map(|(t, _)| secs(t))
        .collect();
    // Down about 6 s: the two newest missed ticks were caught up, the older ones skipped.
    let gap = ticks[1] - ticks[0];
    assert!(
        gap >= 3,
        "expected skipped ticks after {last_before}: {ticks:?}"
    );
    let (_, metrics) = agent.get("/metrics").await;
    // The broken query fails each tick; the skipped ticks of `up` and `build` count too.
    let errors = metric(
        &metrics,
        "tollgate_agent_source_errors_total",
        "kind=\"prometheus\"",
    );
    assert!(
        errors >= 2.0 * (gap - 1) as f64,
        "{errors} errors for a gap of {gap}: {metrics}"
    );
}
