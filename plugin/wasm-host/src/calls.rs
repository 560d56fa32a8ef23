//! `dispatch_http_call`, performed for real: each call is an HTTP/1.1 request over loopback
//! (reqwest on a background tokio runtime), bounded by the call's timeout. The answer waits in a
//! channel until the VM polls, so the filter's callback runs on the VM's thread between
//! requests, as an event loop would run it — a slow or dead agent never holds a request up.

use std::sync::mpsc;
use std::time::Duration;

/// A call as the filter made it.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// `upstream` as given: `host:port` here (ngx_wasm_module's form).
    pub upstream: String,
    /// Headers, pseudo-headers included (`:method`, `:path`, `:authority`).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Timeout.
    pub timeout: Duration,
}

/// How a call ended.
#[derive(Debug, Clone)]
pub enum CallResult {
    /// An HTTP answer: headers start with `:status`.
    Answer {
        /// Headers.
        headers: Vec<(String, String)>,
        /// Body.
        body: Vec<u8>,
    },
    /// No answer: ngx_wasm_module's `:dispatch_status` (`timeout`, `broken connection`…).
    Failed(String),
}

/// Performs calls in the background.
pub struct Dispatcher {
    runtime: Option<tokio::runtime::Runtime>,
    client: reqwest::Client,
    tx: mpsc::Sender<(u32, CallResult)>,
    rx: mpsc::Receiver<(u32, CallResult)>,
    in_flight: usize,
}

impl Dispatcher {
    /// A dispatcher with its own runtime (one thread).
    pub fn new() -> anyhow::Result<Dispatcher> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let client = reqwest::Client::builder().no_proxy().build()?;
        let (tx, rx) = mpsc::channel();
        Ok(Dispatcher {
            runtime: Some(runtime),
            client,
            tx,
            rx,
            in_flight: 0,
        })
    }

    /// Starts a call; its result comes back from [`Dispatcher::completed`] under `token`.
    pub fn start(&mut self, token: u32, call: CallRequest) {
        let client = self.client.clone();
        let tx = self.tx.clone();
        self.in_flight += 1;
        if let Some(rt) = &self.runtime {
            rt.spawn(async move {
                let result = perform(&client, call).await;
                let _ = tx.send((token, result));
            });
        }
    }

    /// Calls that ended since the last look.
    pub fn completed(&mut self) -> Vec<(u32, CallResult)> {
        let done: Vec<_> = self.rx.try_iter().collect();
        self.in_flight -= done.len();
        done
    }

    /// Waits up to `max` for at least one call to end.
    pub fn wait(&mut self, max: Duration) -> Vec<(u32, CallResult)> {
        if self.in_flight == 0 {
            return Vec::new();
        }
        match self.rx.recv_timeout(max) {
            Ok(first) => {
                let mut done = vec![first];
                done.extend(self.rx.try_iter());
                self.in_flight -= done.len();
                done
            }
            Err(_) => Vec::new(),
        }
    }

    /// Calls not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        // Without waiting: a VM may be dropped inside an async test.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn perform(client: &reqwest::Client, call: CallRequest) -> CallResult {
    let get = |name: &str| {
        call.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let method = get(":method").unwrap_or("GET");
    let path = get(":path").unwrap_or("/");
    let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return CallResult::Failed("bad method".into());
    };
    let mut req = client
        .request(method, format!("http://{}{path}", call.upstream))
        .timeout(call.timeout)
        .body(call.body);
    for (k, v) in &call.headers {
        if !k.starts_with(':') {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    if let Some(authority) = get(":authority") {
        req = req.header("host", authority);
    }
    match req.send().await {
        Ok(resp) => {
            let mut headers = vec![(":status".to_owned(), resp.status().as_u16().to_string())];
            for (k, v) in resp.headers() {
                headers.push((k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()));
            }
            match resp.bytes().await {
                Ok(body) => CallResult::Answer {
                    headers,
                    body: body.to_vec(),
                },
                Err(e) if e.is_timeout() => CallResult::Failed("timeout".into()),
                Err(_) => CallResult::Failed("reader failure".into()),
            }
        }
        Err(e) if e.is_timeout() => CallResult::Failed("timeout".into()),
        Err(_) => CallResult::Failed("broken connection".into()),
    }
}
