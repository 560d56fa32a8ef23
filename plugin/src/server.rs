//! The plugin server proper: Kong's MsgPack:1 RPC over a Unix socket
//! (reference/kong-protocols.md §1.4–§1.6, §1.9).
//!
//! Kong takes a connection from its keepalive pool for every single call, so one connection
//! carries many requests back to back, and the Steps of one event may arrive on different
//! connections. Instances and in-progress events therefore live in process-wide tables
//! ([`State`]), keyed by instance id and `EventId`; an event is freed when its handler returns
//! `ret` (or after [`EVENT_TTL`], for events whose Kong worker went away mid-event).
//!
//! Metering's `log` handler makes exactly one PDK call, `kong.log.serialize`, then answers `ret`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tollgate_proto::Destination;

use crate::config::MeteringConfig;
use crate::enforcement::{CustomerSource, Decision, EnforcementConfig, Snapshot};
use crate::events::{self, Metered};
use crate::info::{ENFORCEMENT_PLUGIN, METERING_PLUGIN};
use crate::publisher::Publisher;
use crate::serialize;
use crate::wire::{self, Decoder};

/// Events whose Steps stop arriving are forgotten after this long.
pub const EVENT_TTL: Duration = Duration::from_secs(60);

/// A started plugin instance: one per Kong worker per plugin config.
struct Instance {
    name: String,
    config_json: String,
    kind: InstanceKind,
}

/// What an instance does.
enum InstanceKind {
    /// `tollgate`: meter in the log phase.
    Metering {
        config: MeteringConfig,
        destination: Option<Arc<Destination>>,
    },
    /// `tollgate-enforcement`: decide in the access phase.
    Enforcement(EnforcementConfig),
}

/// An event between `HandleEvent` and its final `ret`.
struct PendingEvent {
    instance: Arc<Instance>,
    started: Instant,
}

/// Counters of the server, for logs and tests.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests metered (log events completed).
    pub requests: AtomicU64,
    /// Requests dropped because no subject could be resolved.
    pub no_subject: AtomicU64,
    /// Serialize payloads that were not JSON of the expected shape.
    pub bad_serialize: AtomicU64,
    /// Instances started.
    pub instances_started: AtomicU64,
    /// Instances closed.
    pub instances_closed: AtomicU64,
    /// Access-phase requests allowed.
    pub allowed: AtomicU64,
    /// Access-phase requests denied.
    pub denied: AtomicU64,
}

/// Process-wide protocol state.
pub struct State {
    instances: Mutex<HashMap<i64, Arc<Instance>>>,
    events: Mutex<HashMap<i64, PendingEvent>>,
    next_instance: AtomicI64,
    next_event: AtomicI64,
    publisher: Publisher,
    source: String,
    pid: u32,
    /// The plugin this server serves (`tollgate` or `tollgate-enforcement`).
    plugin: &'static str,
    /// The entitlement snapshot (enforcement only).
    snapshot: Option<Arc<Snapshot>>,
    /// Counters.
    pub stats: ServerStats,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// New state delivering through `publisher`, stamping events with CloudEvents `source`.
    pub fn new(publisher: Publisher, source: String) -> Arc<State> {
        Self::serving(METERING_PLUGIN, publisher, source, None)
    }

    /// State serving `plugin`; enforcement decides from `snapshot`.
    pub fn serving(
        plugin: &'static str,
        publisher: Publisher,
        source: String,
        snapshot: Option<Arc<Snapshot>>,
    ) -> Arc<State> {
        // Instance ids start at a value unlikely to be one a Kong worker cached from a previous
        // run of this server; the serverPid notice makes Kong drop those anyway.
        let base = i64::from(std::process::id() % 10_000) * 100_000 + 1;
        Arc::new(State {
            instances: Mutex::new(HashMap::new()),
            events: Mutex::new(HashMap::new()),
            next_instance: AtomicI64::new(base),
            next_event: AtomicI64::new(1),
            publisher,
            source,
            pid: std::process::id(),
            plugin,
            snapshot,
            stats: ServerStats::default(),
        })
    }

    /// Live instances.
    pub fn instance_count(&self) -> usize {
        lock(&self.instances).len()
    }

    /// Events in progress.
    pub fn pending_events(&self) -> usize {
        lock(&self.events).len()
    }

    /// Forgets events older than `ttl`; returns how many.
    pub fn sweep_events(&self, ttl: Duration) -> usize {
        let mut events = lock(&self.events);
        let before = events.len();
        events.retain(|_, e| e.started.elapsed() < ttl);
        before - events.len()
    }

    /// Answers one RPC call.
    pub async fn dispatch(&self, method: &str, params: &[Value]) -> Result<Value, String> {
        let arg = params.first().unwrap_or(&Value::Nil);
        match method {
            "plugin.StartInstance" => self.start_instance(arg),
            "plugin.CloseInstance" => self.close_instance(arg),
            "plugin.HandleEvent" => self.handle_event(arg),
            m if m.starts_with("plugin.Step") => self.step(arg).await,
            other => Err(format!("unknown method {other}")),
        }
    }

    fn start_instance(&self, arg: &Value) -> Result<Value, String> {
        let name = map_get(arg, "Name")
            .and_then(as_str)
            .ok_or("StartInstance: missing Name")?;
        if name != self.plugin {
            return Err(format!(
                "StartInstance: this server serves {}, not {name}",
                self.plugin
            ));
        }
        let config_json = map_get(arg, "Config")
            .and_then(as_str)
            .unwrap_or("{}")
            .to_owned();
        let kind = if self.plugin == ENFORCEMENT_PLUGIN {
            let config = EnforcementConfig::from_json(config_json.as_bytes())?;
            if let Some(snapshot) = &self.snapshot {
                snapshot.want(&config.feature);
            }
            InstanceKind::Enforcement(config)
        } else {
            let config =
                MeteringConfig::from_json(config_json.as_bytes()).map_err(|e| e.to_string())?;
            let destination = config.destination.clone().map(Arc::new);
            InstanceKind::Metering {
                config,
                destination,
            }
        };
        let id = self.next_instance.fetch_add(1, Ordering::Relaxed);
        tracing::info!(id, plugin = self.plugin, "instance started");
        let instance = Arc::new(Instance {
            name: name.to_owned(),
            config_json,
            kind,
        });
        let reply = instance_reply(id, &instance);
        lock(&self.instances).insert(id, instance);
        self.stats.instances_started.fetch_add(1, Ordering::Relaxed);
        Ok(reply)
    }

    fn close_instance(&self, arg: &Value) -> Result<Value, String> {
        let id = as_int(arg).ok_or("CloseInstance: instance id must be an integer")?;
        match lock(&self.instances).remove(&id) {
            Some(instance) => {
                self.stats.instances_closed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(id, "instance closed");
                Ok(instance_reply(id, &instance))
            }
            None => Err(format!("no plugin instance #{id}")),
        }
    }

    fn handle_event(&self, arg: &Value) -> Result<Value, String> {
        let id = map_get(arg, "InstanceId")
            .and_then(as_int)
            .ok_or("HandleEvent: missing InstanceId")?;
        let phase = map_get(arg, "EventName").and_then(as_str).unwrap_or("");
        let instance = lock(&self.instances)
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("no plugin instance #{id}"))?;
        let event_id = self.next_event.fetch_add(1, Ordering::Relaxed);
        let call = match (&instance.kind, phase) {
            (InstanceKind::Metering { .. }, "log") => pdk_call("kong.log.serialize", Vec::new()),
            (InstanceKind::Enforcement(config), "access") => match config.source {
                CustomerSource::Consumer => pdk_call("kong.client.get_consumer", Vec::new()),
                CustomerSource::Header => pdk_call(
                    "kong.request.get_header",
                    vec![Value::from(config.field.as_deref().unwrap_or(""))],
                ),
                CustomerSource::Query => pdk_call(
                    "kong.request.get_query_arg",
                    vec![Value::from(config.field.as_deref().unwrap_or(""))],
                ),
            },
            // Not a phase we list in -dump: nothing to do.
            _ => return Ok(step_reply(event_id, Value::from("ret"))),
        };
        lock(&self.events).insert(
            event_id,
            PendingEvent {
                instance,
                started: Instant::now(),
            },
        );
        Ok(step_reply(event_id, call))
    }

    /// The access-phase decision for the PDK answer `data` (a consumer map, or a header/query
    /// value): `ret`, or `kong.response.exit(status, body, headers)`.
    async fn enforce(
        &self,
        event_id: i64,
        config: &EnforcementConfig,
        data: Option<&Value>,
    ) -> Value {
        let subject = match config.source {
            CustomerSource::Consumer => data
                .and_then(|c| map_get(c, "id"))
                .and_then(as_str)
                .map(|id| format!("consumer:{id}")),
            _ => data
                .and_then(as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
        };
        let decision = match &self.snapshot {
            Some(s) => {
                if let Some(subject) = &subject
                    && s.needs_lookup(subject, &config.feature, config.max_stale_ms)
                {
                    s.lookup_cold(subject, &config.feature).await;
                }
                s.decide(subject.as_deref(), config)
            }
            None => Decision::Allow,
        };
        match decision {
            Decision::Allow => {
                self.stats.allowed.fetch_add(1, Ordering::Relaxed);
                step_reply(event_id, Value::from("ret"))
            }
            Decision::Deny {
                status,
                reason,
                balance,
            } => {
                self.stats.denied.fetch_add(1, Ordering::Relaxed);
                let message = match reason {
                    "usage_limit_reached" => "Usage limit reached for this feature",
                    "no_access" => "No access to this feature",
                    "unknown_customer" => "Unknown customer",
                    _ => "Entitlements are unavailable",
                };
                let body = Value::Map(vec![
                    (Value::from("message"), Value::from(message)),
                    (Value::from("reason"), Value::from(reason)),
                    (Value::from("feature"), Value::from(config.feature.as_str())),
                ]);
                let headers = Value::Map(vec![
                    (
                        Value::from("X-Tollgate-Feature"),
                        Value::from(config.feature.as_str()),
                    ),
                    (Value::from("X-Tollgate-Reason"), Value::from(reason)),
                    (
                        Value::from("X-Tollgate-Balance"),
                        Value::from(balance.to_string()),
                    ),
                ]);
                step_reply(
                    event_id,
                    pdk_call(
                        "kong.response.exit",
                        vec![Value::from(status), body, headers],
                    ),
                )
            }
        }
    }

    async fn step(&self, arg: &Value) -> Result<Value, String> {
        let event_id = map_get(arg, "EventId")
            .and_then(as_int)
            .ok_or("Step: missing EventId")?;
        let pending = lock(&self.events)
            .remove(&event_id)
            .ok_or_else(|| format!("Step: no event #{event_id} in progress"))?;
        let data = map_get(arg, "Data");
        let (config, destination) = match &pending.instance.kind {
            InstanceKind::Enforcement(config) => {
                return Ok(self.enforce(event_id, config, data).await);
            }
            InstanceKind::Metering {
                config,
                destination,
            } => (config, destination),
        };
        let json = data.and_then(as_str_or_bin);
        match json.map(|j| serialize::parse(j).map_err(|e| e.to_string())) {
            Some(Ok(entry)) => {
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                match events::meter(&entry, config, &self.source) {
                    Metered::Events(list) => self.publisher.submit(list, destination.clone()),
                    Metered::NoSubject => {
                        self.stats.no_subject.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some(Err(e)) => {
                self.stats.bad_serialize.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(event_id, error = %e, "kong.log.serialize returned something that is not a log entry; request not metered");
            }
            None => {
                self.stats.bad_serialize.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    event_id,
                    "kong.log.serialize returned no string; request not metered"
                );
            }
        }
        Ok(step_reply(event_id, Value::from("ret")))
    }
}

fn instance_reply(id: i64, instance: &Instance) -> Value {
    Value::Map(vec![
        (Value::from("Id"), Value::from(id)),
        (Value::from("Name"), Value::from(instance.name.as_str())),
        (
            Value::from("Config"),
            Value::from(instance.config_json.as_str()),
        ),
    ])
}

fn pdk_call(method: &str, args: Vec<Value>) -> Value {
    Value::Map(vec![
        (Value::from("Method"), Value::from(method)),
        (Value::from("Args"), Value::Array(args)),
    ])
}

fn step_reply(event_id: i64, data: Value) -> Value {
    Value::Map(vec![
        (Value::from("EventId"), Value::from(event_id)),
        (Value::from("Data"), data),
    ])
}

fn map_get<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    v.as_map()?
        .iter()
        .find(|(k, _)| as_str(k) == Some(key))
        .map(|(_, v)| v)
}

/// A str (or, as Kong's encoder may produce, a bin holding UTF-8).
fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => s.as_str(),
        Value::Binary(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

/// The raw text of a str or bin, even when it is not valid UTF-8 (`serde_json` then reports it).
fn as_str_or_bin(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s.as_str().unwrap_or("\u{fffd}")),
        Value::Binary(b) => Some(std::str::from_utf8(b).unwrap_or("\u{fffd}")),
        _ => None,
    }
}

/// An integer, also when Kong's encoder sent it as a float.
fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => i.as_i64(),
        Value::F64(f) if f.fract() == 0.0 => Some(*f as i64),
        Value::F32(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

/// Binds the socket, replacing a stale socket file left by a previous run but refusing to take
/// over one that a live server still answers on.
pub async fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running server", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

/// Accepts connections forever, one task each.
pub async fn serve(listener: UnixListener, state: Arc<State>) {
    let sweeper = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVENT_TTL / 6);
        loop {
            tick.tick().await;
            let n = sweeper.sweep_events(EVENT_TTL);
            if n > 0 {
                tracing::warn!(events = n, "forgot events whose Steps never came");
            }
        }
    });
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, state.clone()));
            }
            Err(e) => {
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One Kong connection: requests back to back, each answered in order.
async fn connection(mut stream: UnixStream, state: Arc<State>) {
    let mut decoder = Decoder::default();
    let mut out = Vec::with_capacity(512);
    let mut announced = false;
    loop {
        match stream.read_buf(decoder.buffer(8192)).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "connection read failed");
                return;
            }
        }
        loop {
            let message = match decoder.next_value() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "closing connection: bad input from Kong");
                    let _ = stream.write_all(&out).await;
                    return;
                }
            };
            let Some((msgid, method, params)) = as_request(&message) else {
                tracing::warn!(
                    ?message,
                    "closing connection: not a [0, msgid, method, params] request"
                );
                let _ = stream.write_all(&out).await;
                return;
            };
            let result = state.dispatch(method, params).await;
            if let Err(e) = &result {
                tracing::debug!(method, error = %e, "call failed");
            }
            if !announced {
                // Kong drops every instance bound to this server when the pid changes: this is how
                // a restarted server makes Kong start fresh instances.
                wire::encode_notification(&mut out, "serverPid", Value::from(state.pid));
                announced = true;
            }
            wire::encode_response(&mut out, msgid, result);
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

fn as_request(message: &Value) -> Option<(u64, &str, &[Value])> {
    let parts = message.as_array()?;
    if parts.len() != 4 || as_int(&parts[0])? != 0 {
        return None;
    }
    let msgid = u64::try_from(as_int(&parts[1])?).ok()?;
    let method = as_str(&parts[2])?;
    let params = match &parts[3] {
        Value::Array(p) => p.as_slice(),
        _ => &[],
    };
    Some((msgid, method, params))
}
