//! Kong's MsgPack-RPC client side (`kong/runloop/plugin_servers/rpc/mp_rpc.lua`, `Rpc:call`).
//!
//! Every call takes a connection from a keepalive pool (or opens one), sends
//! `[0, msgid, method, params]`, reads msgpack values with a fresh streaming unpacker until the
//! `[1, msgid, err, result]` reply (handling `[2, label, args]` notifications that come first),
//! and puts the connection back. `msgid` counts up from 1 per plugin per nginx worker: one [`Rpc`]
//! is one plugin in one worker. With [`Rpc::set_scatter`] each call goes on a different pooled
//! connection, so the Steps of one event are spread across connections as they can be in Kong.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::msgpack;

/// What can go wrong with one call.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Connecting, writing or reading failed (Kong logs it and the request goes on).
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an error string.
    #[error("server error: {0}")]
    Server(String),
    /// The server broke the protocol (wrong type, wrong msgid, not msgpack).
    #[error("protocol: {0}")]
    Protocol(String),
}

impl RpcError {
    /// Kong resets instances and retries on any error containing `no plugin instance`.
    pub fn is_no_plugin_instance(&self) -> bool {
        matches!(self, RpcError::Server(e) if e.to_ascii_lowercase().contains("no plugin instance"))
    }
}

/// A `serverPid` notice seen by the client.
pub type PidObserver = Box<dyn Fn(u64) + Send + Sync>;

/// One plugin's RPC channel in one worker.
pub struct Rpc {
    socket: PathBuf,
    pool: Mutex<VecDeque<UnixStream>>,
    msgid: AtomicU64,
    scatter: AtomicBool,
    on_server_pid: Mutex<Option<PidObserver>>,
}

impl Rpc {
    /// A client for the server listening on `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Rpc {
        Rpc {
            socket: socket.as_ref().to_owned(),
            pool: Mutex::new(VecDeque::new()),
            msgid: AtomicU64::new(0),
            scatter: AtomicBool::new(false),
            on_server_pid: Mutex::new(None),
        }
    }

    /// Spread consecutive calls over different pooled connections.
    pub fn set_scatter(&self, on: bool) {
        self.scatter.store(on, Ordering::Relaxed);
    }

    /// Called with the pid of every `serverPid` notice.
    pub fn on_server_pid(&self, f: PidObserver) {
        *self.pool_lock_observer() = Some(f);
    }

    fn pool_lock_observer(&self) -> std::sync::MutexGuard<'_, Option<PidObserver>> {
        self.on_server_pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, VecDeque<UnixStream>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pooled connections currently idle.
    pub fn idle_connections(&self) -> usize {
        self.pool().len()
    }

    /// Drops every pooled connection (as when a worker restarts).
    pub fn drop_pool(&self) {
        self.pool().clear();
    }

    async fn checkout(&self) -> std::io::Result<UnixStream> {
        let pooled = {
            let mut pool = self.pool();
            // With scatter on and a single idle connection, open a second one so consecutive
            // calls really use different connections.
            if self.scatter.load(Ordering::Relaxed) && pool.len() < 2 {
                None
            } else {
                pool.pop_front()
            }
        };
        match pooled {
            Some(s) => Ok(s),
            None => UnixStream::connect(&self.socket).await,
        }
    }

    fn checkin(&self, stream: UnixStream) {
        let mut pool = self.pool();
        if pool.len() < 64 {
            pool.push_back(stream);
        }
    }

    /// Sends bytes that are not a well-formed request (for bad-input tests) on a fresh
    /// connection and returns whatever the server answered before closing or going quiet.
    pub async fn send_raw(&self, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = UnixStream::connect(&self.socket).await?;
        s.write_all(bytes).await?;
        s.shutdown().await?;
        let mut out = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut out)).await;
        Ok(out)
    }

    /// One call. The connection returns to the pool after a reply, error reply included.
    pub async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, RpcError> {
        self.call_inner(method, params, true).await
    }

    /// A call whose reply Kong never reads (`kong.response.exit` answered as a Step never is;
    /// this is for the Step that carries the exit). The connection goes back to the pool.
    pub async fn send_only(&self, method: &str, params: Vec<Value>) -> Result<(), RpcError> {
        self.call_inner(method, params, false).await.map(|_| ())
    }

    async fn call_inner(
        &self,
        method: &str,
        params: Vec<Value>,
        wait: bool,
    ) -> Result<Value, RpcError> {
        let msgid = self.msgid.fetch_add(1, Ordering::Relaxed) + 1;
        let mut stream = self.checkout().await?;
        let mut out = Vec::with_capacity(256);
        msgpack::encode_request(&mut out, msgid, method, params);
        stream.write_all(&out).await?;
        if !wait {
            self.checkin(stream);
            return Ok(Value::Nil);
        }
        // A fresh streaming unpacker per call, reading what arrives (receiveany(4096) in Kong).
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        loop {
            let mut reader: &[u8] = &buf;
            match rmpv::decode::read_value(&mut reader) {
                Ok(v) => {
                    let used = buf.len() - reader.len();
                    buf.drain(..used);
                    match self.classify(v, msgid)? {
                        Some(result) => {
                            if buf.is_empty() {
                                self.checkin(stream);
                            }
                            return result;
                        }
                        None => continue,
                    }
                }
                Err(
                    rmpv::decode::Error::InvalidMarkerRead(e)
                    | rmpv::decode::Error::InvalidDataRead(e),
                ) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(RpcError::Protocol(e.to_string())),
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(RpcError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                )));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// `Some(result)` for the reply to `msgid`; `None` for a notification.
    fn classify(&self, v: Value, msgid: u64) -> Result<Option<Result<Value, RpcError>>, RpcError> {
        let Value::Array(mut parts) = v else {
            return Err(RpcError::Protocol(format!("reply is not an array: {v}")));
        };
        match parts.first().and_then(Value::as_u64) {
            Some(2) => {
                let label = parts.get(1).and_then(Value::as_str).unwrap_or_default();
                if label == "serverPid"
                    && let Some(pid) = parts.get(2).and_then(Value::as_u64)
                    && let Some(f) = self.pool_lock_observer().as_ref()
                {
                    f(pid);
                }
                Ok(None)
            }
            Some(1) if parts.len() == 4 => {
                let got = parts[1].as_u64();
                if got != Some(msgid) {
                    return Err(RpcError::Protocol(format!(
                        "reply msgid {got:?}, expected {msgid}"
                    )));
                }
                let result = parts.pop().unwrap_or(Value::Nil);
                let err = parts.pop().unwrap_or(Value::Nil);
                Ok(Some(match err {
                    Value::Nil => Ok(result),
                    e => Err(RpcError::Server(
                        e.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| e.to_string()),
                    )),
                }))
            }
            _ => Err(RpcError::Protocol(format!(
                "unexpected message type: {parts:?}"
            ))),
        }
    }
}
