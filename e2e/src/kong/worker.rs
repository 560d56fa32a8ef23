//! One Kong nginx worker running one external plugin (`kong/runloop/plugin_servers/plugin.lua`,
//! reference/kong-protocols.md §1.6): instance lifecycle keyed by the plugin entity id and
//! matched on `__seq__`, then `HandleEvent` and the Step loop that answers the plugin's PDK calls.
//!
//! Kong's behaviours kept here: a new `__seq__` starts a new instance and closes the old one; an
//! error containing `no plugin instance` drops every cached instance and re-runs the whole event;
//! a new `serverPid` drops every cached instance; the Step method is chosen by Kong's table; a
//! nil PDK result is sent with `Data` left out; after `kong.response.exit`/`error` nothing more is
//! sent for the event.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rmpv::Value;
use serde_json::json;

use super::pdk::Pdk;
use super::rpc::{Rpc, RpcError};

/// A plugin entity as Kong holds it: its name, id, scope and config.
#[derive(Debug, Clone)]
pub struct PluginEntity {
    /// The plugin's `Name`.
    pub name: String,
    /// The plugin entity UUID (`__plugin_id`).
    pub id: String,
    /// The plugin's `config` record as decK/Admin API gave it.
    pub config: serde_json::Value,
    /// Scope.
    pub route_id: Option<String>,
    /// Scope.
    pub service_id: Option<String>,
    /// Bumped on every config rebuild; Kong's `__seq__`.
    pub seq: i64,
}

impl PluginEntity {
    /// The `Config` JSON Kong sends: the config record plus Kong's injected keys (§1.3).
    pub fn start_config(&self) -> String {
        let mut conf = self.config.as_object().cloned().unwrap_or_default();
        conf.insert("route_id".into(), json!(self.route_id));
        conf.insert("service_id".into(), json!(self.service_id));
        conf.insert("consumer_id".into(), serde_json::Value::Null);
        conf.insert("plugin_instance_name".into(), serde_json::Value::Null);
        conf.insert("__plugin_id".into(), json!(self.id));
        conf.insert(
            "__ws_id".into(),
            json!("0dc6f45b-8f8d-40d2-a504-473544ee190b"),
        );
        conf.insert(
            "__key__".into(),
            json!(format!(
                "plugins:{}:{}:{}::::{}",
                self.name,
                self.route_id.as_deref().unwrap_or(""),
                self.service_id.as_deref().unwrap_or(""),
                "0dc6f45b-8f8d-40d2-a504-473544ee190b"
            )),
        );
        conf.insert("__seq__".into(), json!(self.seq));
        serde_json::Value::Object(conf).to_string()
    }
}

/// How a phase handler ended.
#[derive(Debug, Clone, PartialEq)]
pub enum PhaseOutcome {
    /// The handler returned (`"ret"`).
    Returned,
    /// The handler called `kong.response.exit` or `kong.response.error`.
    Exited {
        /// Status code.
        status: i64,
        /// Body argument as sent.
        body: Value,
        /// Headers argument as sent.
        headers: Value,
    },
}

/// Errors of a phase run.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    /// A call failed (Kong logs it; MsgPack fails open).
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// Kong retries `no plugin instance` without a cap; we stop after this many to fail a test
    /// rather than spin.
    #[error("plugin kept answering `no plugin instance` after {0} resets")]
    ResetLoop(u32),
}

#[derive(Debug, Clone)]
struct CachedInstance {
    id: i64,
    seq: i64,
}

/// Counters of what the worker saw.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// StartInstance calls made.
    pub starts: AtomicU64,
    /// CloseInstance calls made.
    pub closes: AtomicU64,
    /// Resets after `no plugin instance`.
    pub resets: AtomicU64,
    /// Resets after a new `serverPid`.
    pub pid_resets: AtomicU64,
}

/// One worker's view of one plugin server.
pub struct Worker {
    rpc: Rpc,
    instances: Arc<Mutex<HashMap<String, CachedInstance>>>,
    server_pid: Arc<Mutex<Option<u64>>>,
    /// Counters.
    pub stats: Arc<WorkerStats>,
}

impl Worker {
    /// A worker talking to the plugin server at `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Worker {
        let rpc = Rpc::new(socket);
        let instances: Arc<Mutex<HashMap<String, CachedInstance>>> = Arc::default();
        let server_pid: Arc<Mutex<Option<u64>>> = Arc::default();
        let stats: Arc<WorkerStats> = Arc::default();
        {
            let instances = instances.clone();
            let server_pid = server_pid.clone();
            let stats = stats.clone();
            rpc.on_server_pid(Box::new(move |pid| {
                let mut known = server_pid.lock().unwrap_or_else(|e| e.into_inner());
                if known.is_some_and(|k| k != pid) {
                    instances.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    stats.pid_resets.fetch_add(1, Ordering::Relaxed);
                }
                *known = Some(pid);
            }));
        }
        Worker {
            rpc,
            instances,
            server_pid,
            stats,
        }
    }

    /// The RPC channel (for scatter mode and raw bad-input sends).
    pub fn rpc(&self) -> &Rpc {
        &self.rpc
    }

    /// The last `serverPid` seen.
    pub fn server_pid(&self) -> Option<u64> {
        *self.server_pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached(&self, plugin_id: &str) -> Option<CachedInstance> {
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(plugin_id)
            .cloned()
    }

    /// Drops every cached instance (Kong's `reset_instances`).
    pub fn reset_instances(&self) {
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The instance id for `plugin`, starting one (and closing a stale one) as Kong does.
    pub async fn instance_id(&self, plugin: &PluginEntity) -> Result<i64, RpcError> {
        let old = self.cached(&plugin.id);
        if let Some(c) = &old
            && c.seq == plugin.seq
        {
            return Ok(c.id);
        }
        let reply = self
            .rpc
            .call(
                "plugin.StartInstance",
                vec![Value::Map(vec![
                    (Value::from("Name"), Value::from(plugin.name.as_str())),
                    (Value::from("Config"), Value::from(plugin.start_config())),
                ])],
            )
            .await?;
        self.stats.starts.fetch_add(1, Ordering::Relaxed);
        let id = map_get(&reply, "Id")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                RpcError::Protocol(format!("StartInstance reply without Id: {reply}"))
            })?;
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                plugin.id.clone(),
                CachedInstance {
                    id,
                    seq: plugin.seq,
                },
            );
        if let Some(old) = old {
            // Kong ignores errors here.
            let _ = self
                .rpc
                .call("plugin.CloseInstance", vec![Value::from(old.id)])
                .await;
            self.stats.closes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(id)
    }

    /// Runs one phase of `plugin` for one request, answering PDK calls from `pdk`.
    pub async fn run_phase(
        &self,
        plugin: &PluginEntity,
        phase: &str,
        pdk: &dyn Pdk,
    ) -> Result<PhaseOutcome, PhaseError> {
        let mut resets = 0;
        loop {
            match self.run_once(plugin, phase, pdk).await {
                Err(e) if e.is_no_plugin_instance() => {
                    resets += 1;
                    self.stats.resets.fetch_add(1, Ordering::Relaxed);
                    self.reset_instances();
                    if resets > 5 {
                        return Err(PhaseError::ResetLoop(resets));
                    }
                }
                other => return other.map_err(PhaseError::from),
            }
        }
    }

    async fn run_once(
        &self,
        plugin: &PluginEntity,
        phase: &str,
        pdk: &dyn Pdk,
    ) -> Result<PhaseOutcome, RpcError> {
        let instance = self.instance_id(plugin).await?;
        let mut reply = self
            .rpc
            .call(
                "plugin.HandleEvent",
                vec![Value::Map(vec![
                    (Value::from("InstanceId"), Value::from(instance)),
                    (Value::from("EventName"), Value::from(phase)),
                ])],
            )
            .await?;
        loop {
            let event_id = map_get(&reply, "EventId")
                .and_then(Value::as_i64)
                .ok_or_else(|| {
                    RpcError::Protocol(format!("event reply without EventId: {reply}"))
                })?;
            let data = map_get(&reply, "Data").cloned().unwrap_or(Value::Nil);
            if data.as_str() == Some("ret") {
                return Ok(PhaseOutcome::Returned);
            }
            let method = map_get(&data, "Method")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    RpcError::Protocol(format!("Data is neither ret nor a PDK call: {data}"))
                })?
                .to_owned();
            let args = match map_get(&data, "Args") {
                Some(Value::Array(a)) => a.clone(),
                _ => Vec::new(),
            };
            if method == "kong.response.exit" || method == "kong.response.error" {
                // Kong runs the exit and never sends another Step for this event; the
                // connection goes back to the pool.
                return Ok(PhaseOutcome::Exited {
                    status: args.first().and_then(Value::as_i64).unwrap_or(0),
                    body: args.get(1).cloned().unwrap_or(Value::Nil),
                    headers: args.get(2).cloned().unwrap_or(Value::Nil),
                });
            }
            let result = pdk.call(&method, &args);
            let mut step = vec![(Value::from("EventId"), Value::from(event_id))];
            if let Some(v) = result {
                step.push((Value::from("Data"), v));
            }
            reply = self
                .rpc
                .call(step_method(&method), vec![Value::Map(step)])
                .await?;
        }
    }
}

/// Kong's `get_step_method` (mp_rpc.lua).
pub fn step_method(pdk_method: &str) -> &'static str {
    match pdk_method {
        "kong.client.get_credential" | "kong.client.authenticate" => "plugin.StepCredential",
        "kong.client.get_consumer" | "kong.client.load_consumer" => "plugin.StepConsumer",
        "kong.router.get_route" => "plugin.StepRoute",
        "kong.router.get_service" => "plugin.StepService",
        "kong.node.get_memory_stats" => "plugin.StepMemoryStats",
        "kong.request.get_query"
        | "kong.request.get_headers"
        | "kong.response.get_headers"
        | "kong.service.response.get_headers" => "plugin.StepMultiMap",
        _ => "plugin.Step",
    }
}

/// A key of a msgpack map.
pub fn map_get<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}
