//! `[sources.kubernetes]` against a FAKE Kubernetes API server: there is no kube-apiserver to
//! run here (Debian has none; envtest, kind and k3s need downloads), so an axum server on
//! loopback answers `GET /api/v1/pods` and `GET /api/v1/namespaces/{ns}/pods` with `PodList`
//! JSON shaped as the API server sends it (paged with `metadata.continue`), reached through a
//! real kubeconfig file and the `kube` client. What it shows: which pods are metered, the
//! subject and data annotations, requests and limits summed in millicores/bytes/GPUs, ids that
//! a second agent evaluating the same tick reproduces, and a failing API server that blocks
//! nothing else.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use common::{Agent, Receiver, write_config};

/// The namespace of a pod list request (empty for all) and its query parameters.
type NamespacedQuery = (String, HashMap<String, String>);

#[derive(Clone, Default)]
struct Fake {
    /// Query strings received, in order.
    queries: Arc<Mutex<Vec<NamespacedQuery>>>,
    failing: Arc<AtomicBool>,
}

fn pod(name: &str, uid: &str, phase: Option<&str>, annotations: Value, containers: Value) -> Value {
    let mut status = json!({
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-26T09:00:00Z"}],
        "hostIP": "10.0.0.4", "podIP": "10.244.1.7", "startTime": "2026-11-26T09:00:00Z",
        "containerStatuses": [{"name": "main", "ready": true, "restartCount": 0, "image": "nginx:1.27",
            "imageID": "docker.io/library/nginx@sha256:00", "containerID": "containerd://abc", "started": true,
            "state": {"running": {"startedAt": "2026-11-26T09:00:01Z"}}}],
        "qosClass": "Burstable"
    });
    if let Some(p) = phase {
        status["phase"] = json!(p);
    }
    json!({
        "metadata": {"name": name, "namespace": "ml", "uid": uid, "resourceVersion": "4711",
            "creationTimestamp": "2026-11-26T09:00:00Z", "labels": {"billing": "metered"},
            "annotations": annotations},
        "spec": {"containers": containers, "restartPolicy": "Always", "nodeName": "node-1",
            "serviceAccountName": "default", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst"},
        "status": status
    })
}

fn container(name: &str, resources: Value) -> Value {
    json!({"name": name, "image": "nginx:1.27", "resources": resources,
        "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"})
}

fn page(items: Vec<Value>, next: Option<&str>) -> Value {
    let mut meta = json!({"resourceVersion": "4712"});
    if let Some(c) = next {
        meta["continue"] = json!(c);
        meta["remainingItemCount"] = json!(2);
    }
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items})
}

async fn pods(
    State(f): State<Fake>,
    ns: Option<Path<String>>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let ns = ns.map(|Path(n)| n).unwrap_or_default();
    f.queries.lock().unwrap().push((ns, q.clone()));
    if f.failing.load(Ordering::Relaxed) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500});
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(status));
    }
    let body = if q.get("continue").map(String::as_str) == Some("page-2") {
        page(
            vec![
                pod(
                    "done",
                    "uid-d",
                    Some("Succeeded"),
                    json!({}),
                    json!([container("main", json!({}))]),
                ),
                // No phase: metered when every container runs.
                pod(
                    "no-phase",
                    "uid-e",
                    None,
                    json!({}),
                    json!([container("main", json!({}))]),
                ),
            ],
            None,
        )
    } else {
        page(
            vec![
                pod(
                    "trainer-0",
                    "uid-a",
                    Some("Running"),
                    json!({"openmeter.io/subject": "acme", "data.openmeter.io/team": "vision",
                           "kubectl.kubernetes.io/last-applied-configuration": "{}"}),
                    json!([
                        container(
                            "main",
                            json!({
                            "requests": {"cpu": "250m", "memory": "64Mi", "nvidia.com/gpu": "1"},
                            "limits": {"cpu": "1", "memory": "128Mi", "nvidia.com/gpu": "1"}})
                        ),
                        container(
                            "sidecar",
                            json!({"requests": {"cpu": "0.5", "memory": "1G"}})
                        ),
                    ]),
                ),
                pod(
                    "web-1",
                    "uid-b",
                    Some("Running"),
                    json!({}),
                    json!([container("main", json!({}))]),
                ),
                pod(
                    "queued",
                    "uid-c",
                    Some("Pending"),
                    json!({}),
                    json!([container("main", json!({}))]),
                ),
            ],
            Some("page-2"),
        )
    };
    (StatusCode::OK, axum::Json(body))
}

async fn start_fake() -> (Fake, String) {
    let fake = Fake::default();
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .route("/api/v1/namespaces/{ns}/pods", get(pods))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, url)
}

fn kubeconfig(dir: &std::path::Path, server: &str) -> String {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: meter\n\
             current-context: fake\nusers:\n- name: meter\n  user:\n    token: fake-token\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn source(kubeconfig: &str) -> String {
    format!(
        "[sources.kubernetes]\nenabled = true\nkubeconfig = \"{kubeconfig}\"\n\
         label_selector = \"billing=metered\"\ninterval = \"1s\"\n"
    )
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn events(r: &Receiver) -> Vec<Value> {
    r.received.lock().unwrap().events.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn running_pods_give_one_event_per_interval_with_requests_and_limits() {
    let (fake, server) = start_fake().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &receiver.url(),
        &source(&kubeconfig(dir.path(), &server)),
    );
    let agent = Agent::start(&config);
    wait_until("two ticks", || {
        events(&receiver)
            .iter()
            .map(|e| e["time"].clone())
            .collect::<HashSet<_>>()
            .len()
            >= 2
    })
    .await;
    let all = events(&receiver);
    let names: HashSet<&str> = all
        .iter()
        .map(|e| e["data"]["pod_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        HashSet::from(["trainer-0", "web-1", "no-phase"]),
        "Pending and Succeeded pods are not metered"
    );
    let t = all
        .iter()
        .find(|e| e["data"]["pod_name"] == "trainer-0")
        .unwrap();
    assert_eq!(t["type"], "kube-pod-exec-time");
    assert_eq!(t["source"], "kubernetes-api");
    assert_eq!(t["subject"], "acme");
    let d = &t["data"];
    assert_eq!(d["team"], "vision");
    assert!(
        d.get("kubectl.kubernetes.io/last-applied-configuration")
            .is_none()
    );
    assert_eq!(d["pod_namespace"], "ml");
    assert_eq!(d["duration_seconds"], 1);
    assert_eq!(d["cpu_request_millicores"], 750);
    assert_eq!(d["cpu_limit_millicores"], 1000);
    assert_eq!(d["memory_request_bytes"], 67_108_864 + 1_000_000_000u64);
    assert_eq!(d["memory_limit_bytes"], 134_217_728);
    assert_eq!(d["gpu_request_count"], 1);
    assert_eq!(d["gpu_limit_count"], 1);
    assert_eq!(d["cpu_request_millicore_seconds"], 750);
    let w = all
        .iter()
        .find(|e| e["data"]["pod_name"] == "web-1")
        .unwrap();
    assert_eq!(w["subject"], "web-1", "no annotation: the pod's name");
    assert_eq!(w["data"]["cpu_request_millicores"], 0);
    // Ticks on whole seconds; one id per pod per tick.
    assert!(t["time"].as_str().unwrap().ends_with(".000Z"));
    let mut per: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for e in &all {
        per.entry((
            e["data"]["pod_name"].as_str().unwrap().into(),
            e["time"].as_str().unwrap().into(),
        ))
        .or_default()
        .insert(e["id"].as_str().unwrap().into());
    }
    assert!(per.values().all(|ids| ids.len() == 1));
    // Every namespace, the selector, paged.
    let queries = fake.queries.lock().unwrap().clone();
    assert_eq!(queries[0].0, "", "no namespace: /api/v1/pods");
    assert_eq!(queries[0].1["labelSelector"], "billing=metered");
    assert_eq!(queries[0].1["limit"], "500");
    assert!(
        queries
            .iter()
            .any(|(_, q)| q.get("continue").map(String::as_str) == Some("page-2"))
    );

    // The API server failing: errors counted, and the agent's other intake unaffected.
    fake.failing.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, metrics) = agent.get("/metrics").await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("tollgate_agent_source_errors_total{kind=\"kubernetes\"")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    let (status, _, body) = common::post_to(
        agent.http,
        "/api/v1/events",
        "application/cloudevents+json",
        common::cloudevent("pushed-while-k8s-fails").to_string(),
    )
    .await;
    assert!(status < 300, "{status} {body}");
    receiver
        .wait_for_ids(
            &HashSet::from(["pushed-while-k8s-fails".to_owned()]),
            Duration::from_secs(10),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_agent_metering_the_same_tick_makes_the_same_ids_and_restarts_keep_them() {
    let (_fake, server) = start_fake().await;
    let receiver = Receiver::start().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let configs: Vec<_> = dirs
        .iter()
        .map(|d| {
            write_config(
                d.path(),
                &receiver.url(),
                &source(&kubeconfig(d.path(), &server)),
            )
        })
        .collect();
    let mut a = Agent::start(&configs[0]);
    let b = Agent::start(&configs[1]);
    let per_tick = |r: &Receiver| {
        let mut per: HashMap<(String, String), (usize, HashSet<String>)> = HashMap::new();
        for e in events(r) {
            let k = (
                e["data"]["pod_name"].as_str().unwrap().into(),
                e["time"].as_str().unwrap().into(),
            );
            let v = per.entry(k).or_default();
            v.0 += 1;
            v.1.insert(e["id"].as_str().unwrap().into());
        }
        per
    };
    wait_until("ticks metered by both agents", || {
        per_tick(&receiver)
            .values()
            .filter(|(n, _)| *n >= 2)
            .count()
            >= 6
    })
    .await;
    // One agent killed and restarted: its ticks after the restart still agree with the other's.
    a.kill9();
    let before = per_tick(&receiver).len();
    let a = Agent::start(&configs[0]);
    wait_until("ticks after the restart", || {
        per_tick(&receiver).len() >= before + 6
    })
    .await;
    drop((a, b));
    for ((pod, time), (_, ids)) in per_tick(&receiver) {
        assert_eq!(ids.len(), 1, "{pod} at {time}: {ids:?}");
    }
}
