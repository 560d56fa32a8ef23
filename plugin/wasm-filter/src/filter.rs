//! The proxy-wasm contexts (wasm32 only), written to what both hosts allow
//! (reference/collectors-wasm.md §B.3–B.6):
//!
//! * HTTP context: request headers → facts, subject, enforcement from shared data (a deny is
//!   `send_local_response`; no call on the request path); response headers and body chunks →
//!   status, sizes, LLM usage (never `Pause`: ngx_wasm_module cannot yield in response phases);
//!   `on_log` → events into the shared queue (Kong forbids HTTP calls in the response and log
//!   phases).
//! * Requests hand their events to the worker's root context through a bounded outbox in the VM
//!   (`delivery_queue: worker`, every host), or through the shared queue (`shared`).
//! * Root context: `on_tick` moves shared-queue events into its bounded outbox and sends one
//!   batch at a time with `dispatch_http_call` to the agent's intake; refreshes entitlement values from
//!   the agent's local endpoint and asks it about first-seen subjects. Answers arrive in
//!   `on_http_call_response`, which sends the next batch at once while full batches wait (so
//!   delivery keeps pace with traffic, not with the tick); a failed delivery is counted and its
//!   batch kept for the next tick (within the bound), a batch too large for the agent's intake
//!   (413) is sent again in halves. Nothing here ever blocks a request.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

use crate::abi;
use crate::config::FilterConfig;
use crate::enforce::{self, Decision, Stored};
use crate::request::{self, RequestFacts};
use crate::usage::UsageReader;
use crate::{EVENTS_QUEUE, metrics};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Subjects asked about per tick at most.
const LOOKUPS_PER_TICK: usize = 32;

/// Metric ids (0 = not defined: the host has no metrics).
#[derive(Default, Clone, Copy)]
struct Metrics {
    queued: u32,
    delivered: u32,
    dropped: u32,
    delivery_failures: u32,
    no_subject: u32,
    usage_missing: u32,
    denied: u32,
    refresh_failures: u32,
}

impl Metrics {
    fn define() -> Metrics {
        let c = |name| hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0);
        Metrics {
            queued: c(metrics::QUEUED),
            delivered: c(metrics::DELIVERED),
            dropped: c(metrics::DROPPED),
            delivery_failures: c(metrics::DELIVERY_FAILURES),
            no_subject: c(metrics::NO_SUBJECT),
            usage_missing: c(metrics::USAGE_MISSING),
            denied: c(metrics::DENIED),
            refresh_failures: c(metrics::REFRESH_FAILURES),
        }
    }
}

fn inc(id: u32, by: u64) {
    if id != 0 && by > 0 {
        let _ = hostcalls::increment_metric(id, by as i64);
    }
}

fn now_ms() -> i64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the contexts share inside one VM.
struct Shared {
    config: FilterConfig,
    /// The shared queue's id, with `delivery_queue: shared`.
    events_queue: Option<u32>,
    metrics: Metrics,
    /// Events waiting for a delivery (bounded by `queue_max`).
    outbox: RefCell<VecDeque<Vec<u8>>>,
    /// Subjects seen on requests that the agent must be asked about.
    wanted: RefCell<Vec<String>>,
    /// Whether the host may have `request.total_size` / `response.total_size` (see `size`).
    has_total_size: Cell<bool>,
}

impl Shared {
    /// `<which>.total_size` (headers and body: Envoy) or else `<which>.size` (ngx_wasm_module,
    /// whose `size` already counts the headers). Once the host has answered `size` where it had
    /// no `total_size`, it is asked for `size` alone: one host call per size, not two.
    fn size(&self, total_size: &[u8], size: &[u8]) -> Option<i64> {
        if self.has_total_size.get()
            && let Some(n) = prop_int(total_size)
        {
            return Some(n);
        }
        let n = prop_int(size);
        if n.is_some() {
            self.has_total_size.set(false);
        }
        n
    }

    /// Adds an event to the outbox; false (dropped) when it is full.
    fn push(&self, record: Vec<u8>) -> bool {
        let mut outbox = self.outbox.borrow_mut();
        if outbox.len() as u64 >= self.config.queue_max {
            return false;
        }
        outbox.push_back(record);
        true
    }
}

enum Call {
    Deliver(Vec<Vec<u8>>),
    Refresh,
    Lookup(String),
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
    calls: HashMap<u32, Call>,
    delivering: bool,
    refreshing: bool,
    /// Records per call now: `batch_max`, halved each time the agent answers 413 (its intake
    /// takes bodies up to `[sources.http] max_body_bytes`), so a refused batch goes through in
    /// smaller ones instead of being retried whole forever; doubled again after
    /// [`GROW_AFTER`] deliveries in a row (one oversized event does not shrink batches forever).
    batch_limit: Option<usize>,
    /// Deliveries in a row since the last 413.
    delivered_in_a_row: u32,
}

/// Successful deliveries at a reduced batch size before it is doubled.
const GROW_AFTER: u32 = 8;

impl Root {
    fn log(level: LogLevel, msg: &str) {
        let _ = hostcalls::log(level, msg);
    }

    /// Events from the shared queue into the outbox; past the bound they are dropped and counted.
    fn drain_queue(&mut self, s: &Shared) {
        let Some(queue) = s.events_queue else {
            return;
        };
        let mut dropped = 0;
        while let Ok(Some(record)) = hostcalls::dequeue_shared_queue(queue) {
            if !s.push(record) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            inc(s.metrics.dropped, dropped);
            Self::log(
                LogLevel::Warn,
                &format!(
                    "tollgate: outbox full ({} events): dropped {dropped} events",
                    s.config.queue_max
                ),
            );
        }
    }

    fn deliver(&mut self, s: &Shared) {
        if self.delivering || s.outbox.borrow().is_empty() {
            return;
        }
        let limit = self.batch_limit.unwrap_or(s.config.batch_max);
        let batch: Vec<Vec<u8>> = {
            let mut outbox = s.outbox.borrow_mut();
            // `[` + records + `,` between + `]`, within `batch_max_bytes` (one record at least).
            let (mut n, mut bytes) = (0, 1);
            for record in outbox.iter().take(limit) {
                bytes += record.len() + 1;
                if n > 0 && bytes > s.config.batch_max_bytes {
                    break;
                }
                n += 1;
            }
            outbox.drain(..n).collect()
        };
        let body = request::batch_body(batch.iter().map(Vec::as_slice));
        let agent = &s.config.agent;
        let auth = agent.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            (":method", "POST"),
            (":path", agent.events_path.as_str()),
            (":authority", agent.authority.as_str()),
            ("content-type", "application/cloudevents-batch+json"),
        ];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        match hostcalls::dispatch_http_call(
            &agent.upstream,
            headers,
            Some(&body),
            vec![],
            Duration::from_millis(agent.timeout_ms),
        ) {
            Ok(token) => {
                self.delivering = true;
                self.calls.insert(token, Call::Deliver(batch));
            }
            Err(status) => {
                inc(s.metrics.delivery_failures, 1);
                Self::log(
                    LogLevel::Warn,
                    &format!(
                        "tollgate: cannot call the agent at {}: {status:?}",
                        agent.upstream
                    ),
                );
                self.put_back(s, batch);
            }
        }
    }

    /// A batch that did not reach the agent goes back to the front, within the bound.
    fn put_back(&mut self, s: &Shared, batch: Vec<Vec<u8>>) {
        let mut outbox = s.outbox.borrow_mut();
        for record in batch.into_iter().rev() {
            outbox.push_front(record);
        }
        let max = s.config.queue_max as usize;
        if outbox.len() > max {
            // The newest go: the oldest have waited longest for their turn.
            let over = outbox.len() - max;
            outbox.truncate(max);
            inc(s.metrics.dropped, over as u64);
        }
    }

    fn get(&mut self, s: &Shared, path: String, call: Call) -> bool {
        let agent = &s.config.agent;
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", agent.authority.as_str()),
        ];
        match hostcalls::dispatch_http_call(
            &agent.upstream,
            headers,
            None,
            vec![],
            Duration::from_millis(agent.timeout_ms),
        ) {
            Ok(token) => {
                self.calls.insert(token, call);
                true
            }
            Err(_) => {
                inc(s.metrics.refresh_failures, 1);
                false
            }
        }
    }

    fn refresh(&mut self, s: &Shared) {
        let Some(e) = &s.config.enforcement else {
            return;
        };
        let feature = enc(&e.feature);
        if !self.refreshing {
            let path = format!("{}?feature={feature}", s.config.agent.entitlements_path);
            self.refreshing = self.get(s, path, Call::Refresh);
        }
        let wanted: Vec<String> = {
            let mut w = s.wanted.borrow_mut();
            let n = w.len().min(LOOKUPS_PER_TICK);
            w.drain(..n).collect()
        };
        for subject in wanted {
            let path = format!(
                "{}/{}/{feature}",
                s.config.agent.entitlements_path,
                enc(&subject)
            );
            if !self.get(s, path, Call::Lookup(subject.clone())) {
                // Asked again on a later request.
                let _ = hostcalls::set_shared_data(
                    &enforce::value_key(&e.feature, &subject),
                    None,
                    None,
                );
            }
        }
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Stores a value from the agent and starts its local count over.
fn store(feature: &str, subject: &str, value: &Stored) {
    if let Ok(bytes) = serde_json::to_vec(value) {
        let _ =
            hostcalls::set_shared_data(&enforce::value_key(feature, subject), Some(&bytes), None);
        let _ = hostcalls::set_shared_data(&enforce::used_key(feature, subject), Some(b"0"), None);
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(s) = self.shared.clone() else {
            return;
        };
        let Some(call) = self.calls.remove(&token) else {
            return;
        };
        let status = self
            .get_http_call_response_header(":status")
            .and_then(|v| v.parse::<u16>().ok())
            .unwrap_or(0);
        let why = self
            .get_http_call_response_header(":dispatch_status")
            .unwrap_or_else(|| format!("status {status}"));
        match call {
            Call::Deliver(batch) => {
                self.delivering = false;
                if (200..300).contains(&status) {
                    inc(s.metrics.delivered, batch.len() as u64);
                    if let Some(limit) = self.batch_limit {
                        self.delivered_in_a_row += 1;
                        if self.delivered_in_a_row >= GROW_AFTER {
                            self.delivered_in_a_row = 0;
                            self.batch_limit = Some(limit * 2).filter(|l| *l < s.config.batch_max);
                        }
                    }
                    // A full batch waiting goes now, not at the next tick: delivery keeps up
                    // with traffic at the agent's pace instead of one batch per tick
                    // (`batch_max` / `flush_period_ms` events/s, past which the outbox filled
                    // and dropped).
                    self.drain_queue(&s);
                    let limit = self.batch_limit.unwrap_or(s.config.batch_max);
                    if s.outbox.borrow().len() >= limit {
                        self.deliver(&s);
                    }
                } else if status == 413 && batch.len() > 1 {
                    // Larger than the intake takes: the same events again in halves.
                    inc(s.metrics.delivery_failures, 1);
                    let half = batch.len() / 2;
                    self.batch_limit = Some(half);
                    self.delivered_in_a_row = 0;
                    Self::log(
                        LogLevel::Warn,
                        &format!(
                            "tollgate: the agent refused a batch of {} events as too large (413); sending at most {half} per call",
                            batch.len()
                        ),
                    );
                    self.put_back(&s, batch);
                    self.deliver(&s);
                } else if status == 400 || status == 413 {
                    // A 400 names events the agent will never take, and a single event larger
                    // than its intake never fits: do not retry them forever.
                    inc(s.metrics.delivery_failures, 1);
                    inc(s.metrics.dropped, batch.len() as u64);
                    Self::log(
                        LogLevel::Warn,
                        &format!(
                            "tollgate: the agent refused {} events ({}); dropped",
                            batch.len(),
                            why
                        ),
                    );
                } else {
                    inc(s.metrics.delivery_failures, 1);
                    Self::log(
                        LogLevel::Warn,
                        &format!(
                            "tollgate: delivery of {} events to the agent failed ({}); kept for the next tick",
                            batch.len(),
                            why
                        ),
                    );
                    self.put_back(&s, batch);
                }
            }
            Call::Refresh | Call::Lookup(_) => {
                let Some(e) = &s.config.enforcement else {
                    return;
                };
                let is_refresh = matches!(call, Call::Refresh);
                if is_refresh {
                    self.refreshing = false;
                }
                let now = now_ms();
                let body = self
                    .get_http_call_response_body(0, body_size)
                    .unwrap_or_default();
                match (status, &call) {
                    (200, _) => match enforce::parse_agent_values(&body) {
                        Ok(values) => {
                            for (subject, feature, value) in values {
                                if feature == e.feature {
                                    store(&feature, &subject, &value);
                                }
                            }
                        }
                        Err(err) => {
                            inc(s.metrics.refresh_failures, 1);
                            Self::log(LogLevel::Warn, &format!("tollgate: {err}"));
                            return;
                        }
                    },
                    (404, Call::Lookup(subject)) => {
                        let none = Stored {
                            kind: "none".into(),
                            has_access: false,
                            balance: 0.0,
                            soft_limit: false,
                            synced_at_ms: now,
                            reset_at_ms: 0,
                        };
                        store(&e.feature, subject, &none);
                    }
                    _ => {
                        inc(s.metrics.refresh_failures, 1);
                        if let Call::Lookup(subject) = &call {
                            let _ = hostcalls::set_shared_data(
                                &enforce::value_key(&e.feature, subject),
                                None,
                                None,
                            );
                        }
                        Self::log(
                            LogLevel::Warn,
                            &format!(
                                "tollgate: entitlement refresh from the agent failed ({})",
                                why
                            ),
                        );
                        return;
                    }
                }
                let _ = hostcalls::set_shared_data(
                    &enforce::updated_key(&e.feature),
                    Some(now.to_string().as_bytes()),
                    None,
                );
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match FilterConfig::from_json(&bytes) {
            Ok(c) => c,
            Err(e) => {
                Self::log(LogLevel::Error, &e);
                return false;
            }
        };
        self.set_tick_period(Duration::from_millis(u64::from(config.flush_period_ms)));
        let events_queue = config
            .shared_queue
            .then(|| self.register_shared_queue(EVENTS_QUEUE));
        self.shared = Some(Rc::new(Shared {
            config,
            events_queue,
            metrics: Metrics::define(),
            outbox: RefCell::new(VecDeque::new()),
            wanted: RefCell::new(Vec::new()),
            has_total_size: Cell::new(true),
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(s) = self.shared.clone() else {
            return;
        };
        self.drain_queue(&s);
        self.deliver(&s);
        self.refresh(&s);
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            shared: self.shared.clone(),
            facts: RequestFacts::default(),
            reader: None,
            body_bytes: 0,
            denied: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    shared: Option<Rc<Shared>>,
    facts: RequestFacts,
    reader: Option<UsageReader>,
    body_bytes: i64,
    denied: bool,
}

/// A property as text (`path`: segments joined by NUL, as the ABI passes it): ngx_wasm_module
/// gives strings, Envoy 8-byte little-endian integers.
fn prop_str(path: &[u8]) -> Option<String> {
    let bytes = abi::property(path)?;
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

fn prop_int(path: &[u8]) -> Option<i64> {
    let bytes = abi::property(path)?;
    if let Some(n) = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return Some(n);
    }
    let arr: [u8; 8] = bytes.as_slice().try_into().ok()?;
    Some(i64::from_le_bytes(arr))
}

impl Http {
    fn enforce(&mut self, s: &Shared) -> Action {
        let Some(e) = &s.config.enforcement else {
            return Action::Continue;
        };
        let now = now_ms();
        let subject = self.facts.subject(&s.config.rules);
        let updated = hostcalls::get_shared_data(&enforce::updated_key(&e.feature))
            .ok()
            .and_then(|(v, _)| v)
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .unwrap_or(0);
        let mut value: Option<Stored> = None;
        let mut used = 0.0;
        if let Some(subject) = &subject {
            let key = enforce::value_key(&e.feature, subject);
            value = hostcalls::get_shared_data(&key)
                .ok()
                .and_then(|(v, _)| v)
                .filter(|v| !v.is_empty())
                .and_then(|v| serde_json::from_slice(&v).ok());
            let ask = match &value {
                None => true,
                // Unknown or still not answered after the stale bound: ask again.
                Some(v) => {
                    (v.kind == "none" || v.kind == "pending")
                        && now - v.synced_at_ms > e.max_stale_ms
                }
            };
            if ask {
                let pending = Stored {
                    kind: "pending".into(),
                    has_access: false,
                    balance: 0.0,
                    soft_limit: false,
                    synced_at_ms: now,
                    reset_at_ms: 0,
                };
                if let Ok(bytes) = serde_json::to_vec(&pending) {
                    let _ = hostcalls::set_shared_data(&key, Some(&bytes), None);
                }
                s.wanted.borrow_mut().push(subject.clone());
                value = Some(pending);
            }
            if value.as_ref().is_some_and(|v| v.kind == "metered") {
                used = hostcalls::get_shared_data(&enforce::used_key(&e.feature, subject))
                    .ok()
                    .and_then(|(v, _)| v)
                    .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
                    .unwrap_or(0.0);
            }
        }
        match enforce::decide(e, subject.as_deref(), value.as_ref(), used, updated, now) {
            Decision::Allow { count } => {
                if count && let Some(subject) = &subject {
                    count_admitted(&enforce::used_key(&e.feature, subject));
                }
                Action::Continue
            }
            Decision::Deny {
                status,
                reason,
                balance,
                reset_at_ms,
            } => {
                inc(s.metrics.denied, 1);
                self.denied = true;
                let (status, headers, body) =
                    enforce::deny_response(&e.feature, status, reason, balance, reset_at_ms, now);
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let _ = hostcalls::send_http_response(u32::from(status), headers, Some(&body));
                Action::Pause
            }
        }
    }
}

/// `used += 1` with compare-and-swap, so workers sharing the store never lose a count.
fn count_admitted(key: &str) {
    for _ in 0..8 {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let n: f64 = value
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .unwrap_or(0.0);
        let next = (n + 1.0).to_string();
        match hostcalls::set_shared_data(key, Some(next.as_bytes()), cas) {
            Ok(()) => return,
            Err(_) => continue,
        }
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let Some(s) = self.shared.clone() else {
            return Action::Continue;
        };
        let meters = s.config.meters();
        if !meters && s.config.enforcement.is_none() {
            // Nothing to meter or enforce: nothing to read.
            return Action::Continue;
        }
        // One host call for the map, read in place: only the headers the events or the
        // decision can read are copied out (`request::reads_header`).
        let map = abi::header_map(MapType::HttpRequestHeaders);
        let rules = &s.config.rules;
        let f = &mut self.facts;
        f.started_at_ms = now_ms();
        for (k, v) in request::header_pairs(&map) {
            match k {
                ":method" => f.method = Some(v.to_owned()),
                ":path" => f.path = Some(v.to_owned()),
                ":authority" => f.headers.push((Cow::Borrowed("host"), v.to_owned())),
                k if k.starts_with(':') => {}
                // HTTP/2 names are lowercase already, HTTP/1 ones usually: no copy then.
                k if k.bytes().any(|b| b.is_ascii_uppercase()) => {
                    let k = k.to_ascii_lowercase();
                    if request::reads_header(&k, rules) {
                        let name = request::known_header(&k).map_or(Cow::Owned(k), Cow::Borrowed);
                        f.headers.push((name, v.to_owned()));
                    }
                }
                k => {
                    if let Some(name) = request::known_header(k) {
                        f.headers.push((Cow::Borrowed(name), v.to_owned()));
                    } else if request::reads_header(k, rules) {
                        f.headers.push((Cow::Owned(k.to_owned()), v.to_owned()));
                    }
                }
            }
        }
        if let Some(path) = &s.config.consumer_property {
            f.consumer_id = prop_str(path.join("\0").as_bytes());
        }
        if meters {
            // What only the events carry (enforcement needs the subject alone).
            f.id = prop_str(b"ngx\0kong_request_id")
                .or_else(|| prop_str(b"request\0id"))
                .or_else(|| f.header("x-request-id").map(str::to_owned));
            f.client_ip = prop_str(b"source\0address").map(strip_port);
            f.route_id = prop_str(b"kong\0route_id");
            f.route_name = prop_str(b"kong\0route_name").or_else(|| prop_str(b"xds\0route_name"));
            f.service_id = prop_str(b"kong\0service_id");
            f.service_name =
                prop_str(b"kong\0service_name").or_else(|| prop_str(b"xds\0cluster_name"));
        }
        if s.config.llm && s.config.rules.meter_ai_token_usage {
            self.set_http_request_header("accept-encoding", None);
        }
        self.enforce(&s)
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let Some(s) = self.shared.clone() else {
            return Action::Continue;
        };
        if !s.config.meters() {
            return Action::Continue;
        }
        if !s.config.rules.meter_ai_token_usage || self.denied {
            self.facts.status = self
                .get_http_response_header(":status")
                .and_then(|v| v.parse().ok());
            return Action::Continue;
        }
        // Four headers are read: one host call for the map rather than one per header, read in
        // place.
        let map = abi::header_map(MapType::HttpResponseHeaders);
        let (mut content_type, mut encoded, mut kong_llm) = ("", false, false);
        for (k, v) in request::header_pairs(&map) {
            if k == ":status" {
                self.facts.status = v.parse().ok();
            } else if k.eq_ignore_ascii_case("content-type") {
                if content_type.is_empty() {
                    content_type = v;
                }
            } else if k.eq_ignore_ascii_case("content-encoding") {
                encoded |= !v.eq_ignore_ascii_case("identity");
            } else if k.eq_ignore_ascii_case("x-kong-llm-model") {
                kong_llm = true;
            }
        }
        let reader = UsageReader::new(content_type, s.config.max_llm_body_bytes);
        let llm = reader.is_stream() || s.config.llm || kong_llm;
        if llm && !encoded {
            self.reader = Some(reader);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, _eos: bool) -> Action {
        self.body_bytes += size as i64;
        if self.reader.is_some()
            && size > 0
            && let Some(chunk) = self.get_http_response_body(0, size)
            && let Some(reader) = self.reader.as_mut()
        {
            reader.feed(&chunk);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(s) = self.shared.clone() else {
            return;
        };
        if self.denied || !s.config.meters() {
            // Kong's plugin meters only requests that reached the log phase through the proxy;
            // a request refused at the gateway is not usage.
            return;
        }
        let f = &mut self.facts;
        f.finished_at_ms = now_ms();
        if f.status.is_none() {
            f.status = prop_int(b"response\0code");
        }
        f.request_size = s.size(b"request\0total_size", b"request\0size");
        f.response_size = s
            .size(b"response\0total_size", b"response\0size")
            .or(Some(self.body_bytes));
        f.llm = self.reader.take().and_then(UsageReader::finish);
        let m = request::meter(f, &s.config.rules, &s.config.source);
        if m.no_subject {
            inc(s.metrics.no_subject, 1);
        }
        if m.usage_missing {
            inc(s.metrics.usage_missing, 1);
        }
        let mut queued = 0;
        for event in m.events {
            let ok = match s.events_queue {
                Some(q) => hostcalls::enqueue_shared_queue(q, Some(&event)).is_ok(),
                None => s.push(event),
            };
            if ok {
                queued += 1;
            } else {
                inc(s.metrics.dropped, 1);
            }
        }
        inc(s.metrics.queued, queued);
    }
}

/// The address without its port (`[v6]:port`, `v4:port`), cut in place.
fn strip_port(mut addr: String) -> String {
    if addr.starts_with('[') {
        addr.remove(0);
        if let Some(end) = addr.find(']') {
            addr.truncate(end);
        }
        return addr;
    }
    let host_len = match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host.len(),
        _ => addr.len(),
    };
    addr.truncate(host_len);
    addr
}
