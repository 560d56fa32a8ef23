//! `tollgate-wasm-filter`: Tollgate's proxy-wasm filter, the in-proxy form of the `tollgate`
//! plugins for Kong 3.4–3.10 (ngx_wasm_module) and Envoy. Built for `wasm32-wasip1` it is
//! `tollgate_wasm.wasm`; on the host it is a library whose logic the tests run natively.
//!
//! * [`config`]: the filter config (`on_configure`), errors naming the field.
//! * [`request`]: one request's facts → `kong.api_request` / `kong.llm_request` CloudEvents, via
//!   `tollgate-events` (the external plugin's builder: same shape, same ids).
//! * [`usage`]: LLM token usage from OpenAI/Anthropic JSON bodies and SSE streams.
//! * [`enforce`]: the entitlement decision from shared data and the deny response.
//! * `filter` (wasm32 only): the proxy-wasm root and HTTP contexts — records queued from `on_log`
//!   (a bounded queue in the worker's VM, or the proxy-wasm shared queue), delivered from
//!   `on_tick` with `dispatch_http_call` to the agent's HTTP intake; entitlement values kept in
//!   shared data, refreshed from the agent's local endpoint on `on_tick`.

pub mod config;
pub mod enforce;
pub mod request;
pub mod usage;

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(target_arch = "wasm32")]
mod filter;

/// The name Kong knows the filter by (its file name without `.wasm`) and Envoy's `root_id`.
pub const FILTER_NAME: &str = "tollgate_wasm";

/// The shared queue of records (CloudEvents JSON) waiting for delivery, with
/// `delivery_queue: shared`.
pub const EVENTS_QUEUE: &str = "tollgate/events";

/// The filter's counters (proxy-wasm metrics: Kong 3.9+ exports them to Prometheus as
/// `kong_wasm_…`, Envoy as stats).
pub mod metrics {
    /// Events queued for delivery.
    pub const QUEUED: &str = "tollgate_events_queued_total";
    /// Events the agent accepted.
    pub const DELIVERED: &str = "tollgate_events_delivered_total";
    /// Events dropped: the queue was full.
    pub const DROPPED: &str = "tollgate_events_dropped_total";
    /// Delivery calls that failed (agent down, timeout, non-2xx).
    pub const DELIVERY_FAILURES: &str = "tollgate_delivery_failures_total";
    /// Requests with no subject (not metered, as Kong's plugin does).
    pub const NO_SUBJECT: &str = "tollgate_requests_without_subject_total";
    /// LLM responses whose final usage never came (cut streams): metered with what was seen and
    /// flagged `usage_complete: false`.
    pub const USAGE_MISSING: &str = "tollgate_llm_usage_missing_total";
    /// Requests denied by enforcement.
    pub const DENIED: &str = "tollgate_requests_denied_total";
    /// Entitlement refreshes that failed.
    pub const REFRESH_FAILURES: &str = "tollgate_entitlement_refresh_failures_total";
}
