//! `[sources.runai]` against a FAKE Run:ai control plane (Run:ai is a commercial product with no
//! server to run here): an axum server on loopback speaking its documented JSON — `POST
//! /api/v1/token` answering a JWT with `exp`, `GET /api/v1/workloads` paged with `next`, and
//! `GET /api/v1/workloads/{id}/metrics` answering `measurements`. What it shows: paging by the
//! server's offsets (OpenMeter's collector counted them after its own filter), at most 9
//! metric types a request, the last sample of each, a revoked token replaced, a workload whose
//! metrics fail skipped alone, and ids that a second agent metering the same tick reproduces.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};

use common::{Agent, Receiver, write_config};

/// A workload's id, the metric types asked for, start and end.
type MetricRequest = (String, Vec<String>, String, String);

#[derive(Clone, Default)]
struct Fake {
    tokens_issued: Arc<Mutex<Vec<String>>>,
    valid: Arc<Mutex<HashSet<String>>>,
    /// Offsets asked for, in order.
    offsets: Arc<Mutex<Vec<u64>>>,
    /// (workload, metric types, start, end) of each metrics request.
    metric_requests: Arc<Mutex<Vec<MetricRequest>>>,
    unauthorized: Arc<Mutex<usize>>,
}

fn jwt(exp: i64, n: usize) -> String {
    let b = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        b(r#"{"alg":"RS256","typ":"JWT"}"#.into()),
        b(format!(
            r#"{{"exp":{exp},"sub":"tollgate-metering","n":{n}}}"#
        )),
        b("signature".into())
    )
}

async fn token(State(f): State<Fake>, body: axum::Json<Value>) -> impl IntoResponse {
    if body["grantType"] != "app_token" || body["AppId"] != "meter" || body["AppSecret"] != "s3cret"
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": 401, "message": "invalid credentials"})),
        );
    }
    let mut issued = f.tokens_issued.lock().unwrap();
    // Expires in an hour.
    let t = jwt(chrono::Utc::now().timestamp() + 3600, issued.len());
    issued.push(t.clone());
    f.valid.lock().unwrap().insert(t.clone());
    (StatusCode::OK, axum::Json(json!({"accessToken": t})))
}

fn authorized(f: &Fake, headers: &HeaderMap) -> bool {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = f.valid.lock().unwrap().contains(given);
    if !ok {
        *f.unauthorized.lock().unwrap() += 1;
    }
    ok
}

fn workload(n: u32, running_pods: u32) -> Value {
    json!({"tenantId": 1001, "clusterId": "c-1", "id": format!("w{n}"), "name": format!("train-w{n}"),
        "type": "Training", "phase": "Running", "k8sPhase": "Running", "projectId": "7", "projectName": "vision",
        "departmentId": "3", "departmentName": "research", "runningPods": running_pods,
        "allocatedResources": {"gpu": 1.0, "gpuMemory": "0", "cpu": 0.5, "cpuMemory": "1G"},
        "createdAt": "2026-11-26T09:00:00Z"})
}

async fn workloads(
    State(f): State<Fake>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    if !authorized(&f, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": 401, "message": "token expired"})),
        );
    }
    let offset: u64 = q["offset"].parse().unwrap();
    assert!(q["filterBy"].contains("phase!=Pending"));
    f.offsets.lock().unwrap().push(offset);
    // Pages of 3 whatever the limit; w2 and w5 have no running pods (filtered by the client).
    let (items, next) = match offset {
        0 => (vec![workload(1, 1), workload(2, 0), workload(3, 2)], 3),
        3 => (vec![workload(4, 1), workload(5, 0)], 5),
        5 => (vec![workload(6, 1)], 0),
        _ => (vec![], 0),
    };
    (
        StatusCode::OK,
        axum::Json(json!({"workloads": items, "next": next})),
    )
}

async fn metrics(
    State(f): State<Fake>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    if !authorized(&f, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": 401, "message": "token expired"})),
        );
    }
    let types: Vec<String> = q["metricType"].split(',').map(str::to_owned).collect();
    assert_eq!(q["numberOfSamples"], "1");
    let mut requests = f.metric_requests.lock().unwrap();
    requests.push((
        id.clone(),
        types.clone(),
        q["start"].clone(),
        q["end"].clone(),
    ));
    // Revoke every token once, after a few requests: the collector must get a new one.
    if requests.len() == 8 {
        f.valid.lock().unwrap().clear();
    }
    if id == "w4" {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"code": 500, "message": "prometheus unavailable"})),
        );
    }
    let n: f64 = id.trim_start_matches('w').parse().unwrap();
    let measurements: Vec<Value> = types
        .iter()
        .map(|t| {
            if t == "GPU_UTILIZATION" {
                // No samples: counts 0.
                json!({"type": t, "labels": null, "values": []})
            } else {
                json!({"type": t, "labels": null, "values": [
                    {"value": "0.25", "timestamp": q["start"]},
                    {"value": format!("{n}"), "timestamp": q["end"]}]})
            }
        })
        .collect();
    (
        StatusCode::OK,
        axum::Json(json!({"measurements": measurements})),
    )
}

async fn pods(
    State(f): State<Fake>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    if !authorized(&f, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": 401, "message": "token expired"})),
        );
    }
    assert_eq!(q["verbosity"], "full");
    assert_eq!(q["completed"], "false");
    let offset: u64 = q["offset"].parse().unwrap();
    f.offsets.lock().unwrap().push(offset);
    let pod = |n: u32, w: u32| {
        json!({"id": format!("p{n}"), "name": format!("train-w{w}-{n}"), "workloadId": format!("w{w}"),
            "workloadName": format!("train-w{w}"), "projectId": "7", "projectName": "vision", "tenantId": 1001,
            "clusterId": "c-1", "nodeName": "gpu-node-1", "phase": "Running", "k8sPhase": "Running"})
    };
    let (items, next) = match offset {
        0 => (vec![pod(1, 1), pod(2, 1)], 2),
        2 => (vec![pod(3, 3)], 0),
        _ => (vec![], 0),
    };
    (
        StatusCode::OK,
        axum::Json(json!({"pods": items, "next": next})),
    )
}

async fn pod_metrics(
    State(f): State<Fake>,
    headers: HeaderMap,
    Path((wid, pid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    if !authorized(&f, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": 401, "message": "token expired"})),
        );
    }
    let types: Vec<String> = q["metricType"].split(',').map(str::to_owned).collect();
    f.metric_requests.lock().unwrap().push((
        format!("{wid}/{pid}"),
        types.clone(),
        q["start"].clone(),
        q["end"].clone(),
    ));
    let n: f64 = pid.trim_start_matches('p').parse().unwrap();
    let measurements: Vec<Value> = types
        .iter()
        .map(|t| json!({"type": t, "values": [{"value": format!("{}", n * 10.0), "timestamp": q["end"]}]}))
        .collect();
    (
        StatusCode::OK,
        axum::Json(json!({"measurements": measurements})),
    )
}

async fn start_fake() -> (Fake, String) {
    let fake = Fake::default();
    let app = Router::new()
        .route("/api/v1/token", post(token))
        .route("/api/v1/workloads", get(workloads))
        .route("/api/v1/workloads/{id}/metrics", get(metrics))
        .route("/api/v1/workloads/pods", get(pods))
        .route(
            "/api/v1/workloads/{wid}/pods/{pid}/metrics",
            get(pod_metrics),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, url)
}

fn source(url: &str) -> String {
    format!(
        "[sources.runai]\nenabled = true\nurl = \"{url}\"\napp_id = \"meter\"\napp_secret = \"s3cret\"\n\
         schedule = \"@every 1s\"\npage_size = 100\n"
    )
}

fn events(r: &Receiver) -> Vec<Value> {
    r.received.lock().unwrap().events.clone()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn running_workloads_metered_with_server_offsets_and_a_token_that_is_replaced() {
    let (fake, url) = start_fake().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &receiver.url(), &source(&url));
    let agent = Agent::start(&config);
    wait_until("four ticks", || {
        events(&receiver)
            .iter()
            .map(|e| e["time"].clone())
            .collect::<HashSet<_>>()
            .len()
            >= 4
    })
    .await;
    let all = events(&receiver);
    let names: HashSet<&str> = all
        .iter()
        .map(|e| e["data"]["name"].as_str().unwrap())
        .collect();
    // w2 and w5 run no pods; w4's metrics fail (skipped alone, counted).
    assert_eq!(names, HashSet::from(["train-w1", "train-w3", "train-w6"]));
    // Every page read at the server's offsets, never a filtered count.
    let offsets = fake.offsets.lock().unwrap().clone();
    assert_eq!(&offsets[..3], &[0, 3, 5], "{offsets:?}");
    assert!(
        offsets.chunks(3).all(|c| c == [0, 3, 5] || c.len() < 3),
        "{offsets:?}"
    );
    let e = all
        .iter()
        .find(|e| e["data"]["name"] == "train-w3")
        .unwrap();
    assert_eq!(e["type"], "run-ai");
    assert_eq!(e["source"], "run_ai");
    assert_eq!(e["subject"], "train-w3");
    let d = &e["data"];
    assert_eq!(d["resource_type"], "workload");
    assert_eq!(d["projectName"], "vision");
    assert_eq!(d["tenantId"], 1001);
    assert_eq!(d["duration_seconds"], 1);
    assert_eq!(d["metrics"]["GPU_ALLOCATION"], 3.0, "the last sample");
    assert_eq!(d["metrics"]["GPU_UTILIZATION"], 0.0, "no samples count 0");
    assert_eq!(d["metrics"].as_object().unwrap().len(), 12);
    assert_eq!(d["metric_seconds"]["CPU_USAGE_CORES"], 3.0);
    // The 12 default metrics in two requests (9 + 3), over [tick − 1s, tick], time = tick.
    let requests = fake.metric_requests.lock().unwrap().clone();
    let (_, types, start, end) = requests.iter().find(|r| r.0 == "w3").unwrap();
    assert_eq!(types.len(), 9);
    assert!(requests.iter().any(|r| r.0 == "w3" && r.1.len() == 3));
    let (s, t) = (
        chrono::DateTime::parse_from_rfc3339(start).unwrap(),
        chrono::DateTime::parse_from_rfc3339(end).unwrap(),
    );
    assert_eq!((t - s).num_seconds(), 1);
    // The token was revoked once: a 401, a new token, and no tick lost after it.
    assert!(*fake.unauthorized.lock().unwrap() >= 1);
    assert!(fake.tokens_issued.lock().unwrap().len() >= 2);
    let mut ticks: Vec<i64> = all
        .iter()
        .filter(|e| e["data"]["name"] == "train-w1")
        .map(|e| {
            chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap())
                .unwrap()
                .timestamp()
        })
        .collect();
    ticks.sort();
    ticks.dedup();
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], 1, "{ticks:?}");
    }
    let (_, m) = agent.get("/metrics").await;
    assert!(
        m.lines().any(
            |l| l.starts_with("tollgate_agent_source_errors_total{kind=\"runai\"")
                && !l.ends_with(" 0")
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_agents_metering_the_same_tick_make_the_same_ids() {
    let (_fake, url) = start_fake().await;
    let receiver = Receiver::start().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let agents: Vec<Agent> = dirs
        .iter()
        .map(|d| Agent::start(&write_config(d.path(), &receiver.url(), &source(&url))))
        .collect();
    let per = |r: &Receiver| {
        let mut per: HashMap<(String, String), (usize, HashSet<String>)> = HashMap::new();
        for e in events(r) {
            let v = per
                .entry((
                    e["data"]["id"].as_str().unwrap().into(),
                    e["time"].as_str().unwrap().into(),
                ))
                .or_default();
            v.0 += 1;
            v.1.insert(e["id"].as_str().unwrap().into());
        }
        per
    };
    wait_until("ticks from both", || {
        per(&receiver).values().filter(|(n, _)| *n >= 2).count() >= 6
    })
    .await;
    drop(agents);
    for ((w, t), (_, ids)) in per(&receiver) {
        assert_eq!(ids.len(), 1, "{w} at {t}: {ids:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_are_metered_through_their_workload_with_the_chosen_metrics() {
    let (fake, url) = start_fake().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}resource_type = \"pod\"\nmetrics = [\"GPU_UTILIZATION_PER_GPU\", \"CPU_USAGE_CORES\"]\n\
         subject_field = \"projectName\"\nevent_type = \"gpu-pod\"\n",
        source(&url)
    );
    let _agent = Agent::start(&write_config(dir.path(), &receiver.url(), &extra));
    wait_until("a tick of three pods", || {
        let mut per: HashMap<String, usize> = HashMap::new();
        for e in events(&receiver) {
            *per.entry(e["time"].as_str().unwrap().into()).or_default() += 1;
        }
        per.values().any(|n| *n == 3)
    })
    .await;
    let all = events(&receiver);
    let e = all.iter().find(|e| e["data"]["id"] == "p3").unwrap();
    assert_eq!(e["type"], "gpu-pod");
    assert_eq!(e["subject"], "vision");
    assert_eq!(e["data"]["resource_type"], "pod");
    assert_eq!(e["data"]["workloadId"], "w3");
    assert_eq!(e["data"]["metrics"]["GPU_UTILIZATION_PER_GPU"], 30.0);
    assert_eq!(e["data"]["metrics"].as_object().unwrap().len(), 2);
    let requests = fake.metric_requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|r| r.0 == "w3/p3" && r.1 == ["GPU_UTILIZATION_PER_GPU", "CPU_USAGE_CORES"])
    );
    assert_eq!(&fake.offsets.lock().unwrap()[..2], &[0, 2]);
}
