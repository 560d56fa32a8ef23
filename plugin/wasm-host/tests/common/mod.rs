//! What the filter tests share: the built filter, Kong-shaped requests and upstream responses,
//! and reading billing's events.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_wasm_host::shared::SharedStore;
use tollgate_wasm_host::{Flavor, Request, Response, Vm};

/// A VM of the freshly built filter with `config`.
pub fn vm(config: &Value, flavor: Flavor) -> Vm {
    vm_in(config, flavor, SharedStore::default())
}

/// The filter, built and compiled once per test process.
pub fn module() -> &'static (wasmtime::Engine, wasmtime::Module) {
    static MODULE: OnceLock<(wasmtime::Engine, wasmtime::Module)> = OnceLock::new();
    MODULE.get_or_init(|| {
        let wasm = tollgate_wasm_host::build::filter_wasm().unwrap();
        tollgate_wasm_host::vm::compile(&wasm).unwrap()
    })
}

/// As [`vm`], in a host whose shared store is `shared`.
pub fn vm_in(config: &Value, flavor: Flavor, shared: SharedStore) -> Vm {
    let (engine, module) = module();
    Vm::from_module(engine, module, &config.to_string(), flavor, shared).unwrap()
}

/// A request as Kong hands it to a filter chain at the end of its access phase: the consumer's
/// headers set by an auth plugin, Kong's request id and route/service properties.
pub fn kong_request(consumer: &str, request_id: &str, path: &str) -> Request {
    Request {
        method: "GET".into(),
        path: path.into(),
        authority: "api.example.com".into(),
        headers: vec![
            ("user-agent".into(), "curl/8.5".into()),
            ("x-consumer-id".into(), consumer.into()),
            ("x-consumer-username".into(), "acme-app".into()),
        ],
        body: vec![],
        properties: vec![
            ("ngx.kong_request_id".into(), request_id.as_bytes().to_vec()),
            (
                "kong.route_id".into(),
                b"0b0c6f3e-5b7a-4c1e-9f2d-1a2b3c4d5e6f".to_vec(),
            ),
            ("kong.route_name".into(), b"orders".to_vec()),
            (
                "kong.service_id".into(),
                b"7e1d2c3b-4a59-4f68-8e7d-6c5b4a392817".to_vec(),
            ),
            ("kong.service_name".into(), b"orders-svc".to_vec()),
        ],
        client: "10.1.2.3:51234".into(),
    }
}

/// A plain upstream answer.
pub fn ok_json(body: &str) -> Response {
    Response {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: vec![body.as_bytes().to_vec()],
    }
}

/// Billing's events whose id contains `id_part`, polled until `n` are there (or `within`).
pub async fn billing_events(
    billing: &str,
    id_part: &str,
    n: usize,
    within: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let url = format!("{billing}/api/v1/events?id={id_part}&limit=100");
        let list: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        let events: Vec<Value> = list
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e["event"].clone())
            .collect();
        if events.len() >= n || Instant::now() >= deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The filter's counters and log, for assertion messages.
pub fn counters(vm: &Vm) -> String {
    use tollgate_wasm::metrics::*;
    let names = [
        QUEUED,
        DELIVERED,
        DROPPED,
        DELIVERY_FAILURES,
        NO_SUBJECT,
        USAGE_MISSING,
        DENIED,
        REFRESH_FAILURES,
    ];
    let counts: Vec<String> = names
        .iter()
        .map(|n| format!("{n}={}", vm.metric(n)))
        .collect();
    format!(
        "{}; in flight {}; log: {:?}",
        counts.join(" "),
        vm.calls_in_flight(),
        vm.logs()
    )
}
