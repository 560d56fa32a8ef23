//! Starting a plugin server the way Kong does (reference/kong-protocols.md §1.1–§1.2): run the
//! query command and validate its JSON, spawn the start command, wait for the socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A dump that Kong would refuse, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The command failed or printed no JSON.
    #[error("query command: {0}")]
    Command(String),
    /// A check of `kong/db/dao/plugins.lua` / `plugin_loader.lua` failed.
    #[error("invalid plugin info: {0}")]
    Invalid(String),
}

/// The plugin info Kong keeps from the dump.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// `Protocol` (`MsgPack:1` when absent).
    pub protocol: String,
    /// `Name`.
    pub name: String,
    /// `Priority`.
    pub priority: i64,
    /// `Version`.
    pub version: String,
    /// `Phases`.
    pub phases: Vec<String>,
    /// `Schema`.
    pub schema: Value,
}

/// Runs `cmd args…` and validates the dump as Kong does. Kong 3.9+ uses only the first plugin.
pub fn query_info(cmd: &Path, args: &[&str]) -> Result<PluginInfo, DumpError> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| DumpError::Command(format!("{}: {e}", cmd.display())))?;
    if !out.status.success() {
        return Err(DumpError::Command(format!(
            "exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let dump: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| DumpError::Command(format!("stdout is not JSON: {e}")))?;
    validate_dump(&dump)
}

/// Kong's checks on a decoded dump.
pub fn validate_dump(dump: &Value) -> Result<PluginInfo, DumpError> {
    let bad = |m: &str| DumpError::Invalid(m.to_owned());
    let protocol = dump
        .get("Protocol")
        .and_then(Value::as_str)
        .unwrap_or("MsgPack:1")
        .to_owned();
    if protocol != "MsgPack:1" && protocol != "ProtoBuf:1" {
        return Err(bad(&format!("unknown Protocol {protocol}")));
    }
    let info = dump
        .get("Plugins")
        .unwrap_or(dump)
        .get(0)
        .ok_or_else(|| bad("no plugin in dump"))?;
    let name = info
        .get("Name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("Name missing"))?
        .to_owned();
    let priority = info
        .get("Priority")
        .and_then(|p| {
            p.as_i64()
                .or_else(|| p.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
        })
        .ok_or_else(|| bad("Priority must be an integer"))?;
    let version = info
        .get("Version")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("Version missing"))?
        .to_owned();
    let parts: Vec<&str> = version.split('.').collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(bad(&format!("Version {version} is not x.y.z")));
    }
    let phases: Vec<String> = info
        .get("Phases")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("Phases missing"))?
        .iter()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    if phases.iter().any(|p| p == "response")
        && phases
            .iter()
            .any(|p| p == "header_filter" || p == "body_filter")
    {
        return Err(bad(
            "response cannot be combined with header_filter/body_filter",
        ));
    }
    let schema = info
        .get("Schema")
        .cloned()
        .ok_or_else(|| bad("Schema missing"))?;
    if schema.get("name").and_then(Value::as_str) != Some(name.as_str()) {
        return Err(bad("Schema.name must equal Name"));
    }
    let config = schema
        .get("fields")
        .and_then(Value::as_array)
        .and_then(|f| f.iter().find_map(|f| f.get("config")))
        .ok_or_else(|| bad("Schema.fields has no config field"))?;
    if config.get("type").and_then(Value::as_str) != Some("record")
        || config.get("fields").is_none()
    {
        return Err(bad("Schema config must be a record with fields"));
    }
    Ok(PluginInfo {
        protocol,
        name,
        priority,
        version,
        phases,
        schema,
    })
}

/// A running plugin server, killed when dropped.
pub struct PluginServer {
    /// The child process.
    pub child: Child,
    /// The socket it serves.
    pub socket: PathBuf,
}

impl PluginServer {
    /// Spawns `cmd args…` and waits up to `timeout` for `socket` to accept connections.
    pub fn spawn(
        cmd: &Path,
        args: &[String],
        socket: &Path,
        timeout: Duration,
    ) -> std::io::Result<PluginServer> {
        let child = Command::new(cmd).args(args).stdin(Stdio::null()).spawn()?;
        let mut server = PluginServer {
            child,
            socket: socket.to_owned(),
        };
        server.wait_ready(timeout)?;
        Ok(server)
    }

    /// Waits until the socket accepts a connection.
    pub fn wait_ready(&mut self, timeout: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "plugin server exited: {status}"
                )));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "socket never came up",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PluginServer {
    fn drop(&mut self) {
        self.kill();
    }
}
