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

use rmpv::{Value, ValueRef};
use tokio::net::{UnixListener, UnixStream};
use tollgate_proto::Destination;

use crate::config::MeteringConfig;
use crate::enforcement::{CustomerSource, Decision, EnforcementConfig, Snapshot};
use crate::info::{ENFORCEMENT_PLUGIN, METERING_PLUGIN};
use crate::publisher::Publisher;
use crate::socket::KongSocket;
use crate::wire::{self, Decoder, Reply, WireError};
use tollgate_events::meter::{self as events, Metered};
use tollgate_events::serialize;

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
    pub async fn dispatch(&self, method: &str, params: &[ValueRef<'_>]) -> Result<Reply, String> {
        let arg = params.first().unwrap_or(&ValueRef::Nil);
        match method {
            "plugin.StartInstance" => self.start_instance(arg),
            "plugin.CloseInstance" => self.close_instance(arg),
            "plugin.HandleEvent" => self.handle_event(arg),
            m if m.starts_with("plugin.Step") => self.step(arg).await,
            other => Err(format!("unknown method {other}")),
        }
    }

    fn start_instance(&self, arg: &ValueRef<'_>) -> Result<Reply, String> {
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
        Ok(Reply::Value(reply))
    }

    fn close_instance(&self, arg: &ValueRef<'_>) -> Result<Reply, String> {
        let id = as_int(arg).ok_or("CloseInstance: instance id must be an integer")?;
        match lock(&self.instances).remove(&id) {
            Some(instance) => {
                self.stats.instances_closed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(id, "instance closed");
                Ok(Reply::Value(instance_reply(id, &instance)))
            }
            None => Err(format!("no plugin instance #{id}")),
        }
    }

    fn handle_event(&self, arg: &ValueRef<'_>) -> Result<Reply, String> {
        let id = map_get(arg, "InstanceId")
            .and_then(as_int)
            .ok_or("HandleEvent: missing InstanceId")?;
        let phase = map_get(arg, "EventName").and_then(as_str).unwrap_or("");
        let instance = lock(&self.instances)
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("no plugin instance #{id}"))?;
        let event_id = self.next_event.fetch_add(1, Ordering::Relaxed);
        let (method, args) = match (&instance.kind, phase) {
            (InstanceKind::Metering { .. }, "log") => ("kong.log.serialize", Vec::new()),
            (InstanceKind::Enforcement(config), "access") => match config.source {
                CustomerSource::Consumer => ("kong.client.get_consumer", Vec::new()),
                CustomerSource::Header => (
                    "kong.request.get_header",
                    vec![Value::from(config.field.as_deref().unwrap_or(""))],
                ),
                CustomerSource::Query => (
                    "kong.request.get_query_arg",
                    vec![Value::from(config.field.as_deref().unwrap_or(""))],
                ),
            },
            // Not a phase we list in -dump: nothing to do.
            _ => return Ok(Reply::Ret { event_id }),
        };
        lock(&self.events).insert(
            event_id,
            PendingEvent {
                instance,
                started: Instant::now(),
            },
        );
        Ok(Reply::Call {
            event_id,
            method,
            args,
        })
    }

    /// The access-phase decision for the PDK answer `data` (a consumer map, or a header/query
    /// value): `ret`, or `kong.response.exit(status, body, headers)`.
    async fn enforce(
        &self,
        event_id: i64,
        config: &EnforcementConfig,
        data: Option<&ValueRef<'_>>,
    ) -> Reply {
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
                Reply::Ret { event_id }
            }
            Decision::Deny {
                status,
                reason,
                balance,
                reset_at_ms,
            } => {
                self.stats.denied.fetch_add(1, Ordering::Relaxed);
                let message = match reason {
                    "usage_limit_reached" => "Usage limit reached for this feature",
                    "no_access" => "No access to this feature",
                    "unknown_customer" => "Unknown customer",
                    _ => "Entitlements are unavailable",
                };
                let mut body = vec![
                    (Value::from("message"), Value::from(message)),
                    (Value::from("reason"), Value::from(reason)),
                    (Value::from("feature"), Value::from(config.feature.as_str())),
                ];
                let mut headers = vec![
                    (
                        Value::from("X-Tollgate-Feature"),
                        Value::from(config.feature.as_str()),
                    ),
                    (Value::from("X-Tollgate-Reason"), Value::from(reason)),
                    (
                        Value::from("X-Tollgate-Balance"),
                        Value::from(balance.to_string()),
                    ),
                ];
                // A reached limit with a known usage period: say when usage resets, as HTTP's
                // Retry-After (whole seconds, rounded up) and as a timestamp.
                let now_ms = chrono::Utc::now().timestamp_millis();
                if reset_at_ms > now_ms
                    && let Some(reset) = chrono::DateTime::from_timestamp_millis(reset_at_ms)
                {
                    let at = reset.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                    let retry_after = (reset_at_ms - now_ms + 999) / 1000;
                    headers.push((
                        Value::from("Retry-After"),
                        Value::from(retry_after.to_string()),
                    ));
                    headers.push((Value::from("X-Tollgate-Reset"), Value::from(at.as_str())));
                    body.push((Value::from("reset_at"), Value::from(at)));
                }
                Reply::Call {
                    event_id,
                    method: "kong.response.exit",
                    args: vec![Value::from(status), Value::Map(body), Value::Map(headers)],
                }
            }
        }
    }

    async fn step(&self, arg: &ValueRef<'_>) -> Result<Reply, String> {
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
        let json = data.and_then(as_text);
        match json.map(|j| j.and_then(|j| serialize::parse(j).map_err(|e| e.to_string()))) {
            Some(Ok(entry)) => {
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                match events::meter(&entry, &config.rules, &self.source) {
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
        Ok(Reply::Ret { event_id })
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

fn map_get<'a, 'v>(v: &'v ValueRef<'a>, key: &str) -> Option<&'v ValueRef<'a>> {
    match v {
        ValueRef::Map(entries) => entries
            .iter()
            .find(|(k, _)| as_str(k) == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// A str (or, as Kong's encoder may produce, a bin holding UTF-8).
fn as_str<'a>(v: &ValueRef<'a>) -> Option<&'a str> {
    as_text(v)?.ok()
}

/// The text of a str or bin; `Err` says where it stops being UTF-8.
fn as_text<'a>(v: &ValueRef<'a>) -> Option<Result<&'a str, String>> {
    match *v {
        ValueRef::String(s) => Some(s.into_str().ok_or_else(|| match s.as_err() {
            Some(e) => e.to_string(),
            None => "invalid utf-8".to_owned(),
        })),
        ValueRef::Binary(b) => Some(std::str::from_utf8(b).map_err(|e| e.to_string())),
        _ => None,
    }
}

/// An integer, also when Kong's encoder sent it as a float.
fn as_int(v: &ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => i.as_i64(),
        ValueRef::F64(f) if f.fract() == 0.0 => Some(*f as i64),
        ValueRef::F32(f) if f.fract() == 0.0 => Some(*f as i64),
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
async fn connection(stream: UnixStream, state: Arc<State>) {
    let socket = match KongSocket::new(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot register a Kong connection");
            return;
        }
    };
    let mut session = Session::default();
    loop {
        match socket.read(session.read_space()).await {
            Ok(0) => return,
            Ok(n) => session.filled(n),
            Err(e) => {
                tracing::debug!(error = %e, "connection read failed");
                return;
            }
        }
        let outcome = session.answer(&state).await;
        if !session.output().is_empty() {
            if let Err(e) = socket.write_all(session.output()).await {
                tracing::debug!(error = %e, "connection write failed");
                return;
            }
            session.clear_output();
        }
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "closing connection: bad input from Kong");
            return;
        }
    }
}

/// Why a connection is closed: Kong sent something that is not a request.
#[derive(Debug, thiserror::Error)]
pub enum BadInput {
    /// Not msgpack, or too large.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Msgpack, but not `[0, msgid, method, params]`.
    #[error("not a [0, msgid, method, params] request: {0}")]
    NotARequest(String),
}

/// The protocol side of one connection, without the socket: bytes in, answers out. Requests
/// are read in place from the buffer and answered in order.
pub struct Session {
    decoder: Decoder,
    out: Vec<u8>,
    announced: bool,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            decoder: Decoder::default(),
            out: Vec::with_capacity(512),
            announced: false,
        }
    }
}

impl Session {
    /// Where to read bytes from Kong into; then call [`Session::filled`].
    pub fn read_space(&mut self) -> &mut [u8] {
        self.decoder.read_space()
    }

    /// `n` bytes were read into [`Session::read_space`].
    pub fn filled(&mut self, n: usize) {
        self.decoder.filled(n);
    }

    /// Appends bytes received some other way.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.decoder.extend(bytes);
    }

    /// Answers every complete request in the buffer, appending the replies to the output. A
    /// partial request waits for more bytes. On bad input the replies so far stay in the output
    /// and the connection should be closed.
    pub async fn answer(&mut self, state: &State) -> Result<(), BadInput> {
        loop {
            let Some(frame) = self.decoder.peek()? else {
                return Ok(());
            };
            let Some((msgid, method, params)) = as_request(&frame.value) else {
                return Err(BadInput::NotARequest(format!("{:?}", frame.value)));
            };
            let result = state.dispatch(method, params).await;
            if let Err(e) = &result {
                tracing::debug!(method, error = %e, "call failed");
            }
            if !self.announced {
                // Kong drops every instance bound to this server when the pid changes: this is how
                // a restarted server makes Kong start fresh instances.
                wire::encode_notification(&mut self.out, "serverPid", Value::from(state.pid));
                self.announced = true;
            }
            wire::encode_response(&mut self.out, msgid, &result);
            let len = frame.len;
            self.decoder.consume(len);
        }
    }

    /// The replies not yet written to Kong.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Forgets the output once written.
    pub fn clear_output(&mut self) {
        self.out.clear();
    }
}

fn as_request<'m, 'a>(message: &'m ValueRef<'a>) -> Option<(u64, &'a str, &'m [ValueRef<'a>])> {
    let ValueRef::Array(parts) = message else {
        return None;
    };
    if parts.len() != 4 || as_int(&parts[0])? != 0 {
        return None;
    }
    let msgid = u64::try_from(as_int(&parts[1])?).ok()?;
    let method = as_str(&parts[2])?;
    let params = match &parts[3] {
        ValueRef::Array(p) => p.as_slice(),
        _ => &[],
    };
    Some((msgid, method, params))
}
