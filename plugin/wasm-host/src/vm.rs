//! One VM: the filter instantiated once (as one nginx worker or one Envoy thread has it), its
//! root context configured, and requests driven through its HTTP contexts in the order the
//! proxies call them. HTTP calls the filter dispatches are started after the callback returns and
//! answered on [`Vm::poll_calls`] / [`Vm::tick`], between requests.
//!
//! As a proxy does, the host keeps the request as it came and answers the filter's reads on
//! demand: properties are looked up when asked for (nothing is prepared per request beyond the
//! few numbers the proxy knows), and the module's memory and allocator are found once, after
//! instantiation, not on every host call.

use std::path::Path;
use std::time::{Duration, Instant};

use wasmtime::{Config, Engine, Instance, Linker, Memory, Module, Store, TypedFunc};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::calls::{CallRequest, CallResult, Dispatcher};
use crate::shared::SharedStore;

/// Which proxy the host plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Kong 3.4–3.10 (ngx_wasm_module): properties are strings (`kong.route_id`,
    /// `ngx.kong_request_id`…), HTTP calls only from request phases, ticks and call responses.
    Kong,
    /// Envoy: integer properties as 8-byte little-endian values, `xds.*` names, `request.id`.
    Envoy,
}

/// The callback running (for Kong's phase rule on HTTP calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Start, configure.
    Configure,
    /// `on_http_request_headers`.
    RequestHeaders,
    /// `on_http_request_body`.
    RequestBody,
    /// `on_http_response_headers`.
    ResponseHeaders,
    /// `on_http_response_body`.
    ResponseBody,
    /// `on_log`, `on_done`.
    Log,
    /// `on_tick`.
    Tick,
    /// `on_http_call_response`.
    CallResponse,
}

/// A response the filter produced itself (`send_local_response`).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalResponse {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The state of the HTTP context being driven.
#[derive(Default)]
pub struct Stream {
    pub(crate) request_headers: Vec<(String, String)>,
    pub(crate) response_headers: Vec<(String, String)>,
    pub(crate) request_body: Vec<u8>,
    pub(crate) response_body: Vec<u8>,
    /// Properties the filter set (`proxy_set_property`), read first.
    pub(crate) set_properties: Vec<(String, Vec<u8>)>,
    /// The proxy's own properties for this request ([`Request::properties`]), then what the
    /// host derives from the request: read in that order, on demand.
    pub(crate) properties: Vec<(String, Vec<u8>)>,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) client: String,
    /// `request.id` (Envoy: the `x-request-id` header).
    pub(crate) request_id: Option<String>,
    /// `request.size` and, on Envoy, `request.total_size`.
    pub(crate) request_size: Option<Int>,
    pub(crate) request_total_size: Option<Int>,
    /// `response.code`, `response.size`, `response.total_size`, known from the log phase.
    pub(crate) response_code: Option<Int>,
    pub(crate) response_size: Option<Int>,
    pub(crate) response_total_size: Option<Int>,
    pub(crate) local_response: Option<LocalResponse>,
}

/// An integer property as the flavor encodes it (Kong: decimal text; Envoy: 8 bytes little
/// endian), kept inline: no allocation per request.
#[derive(Clone, Copy)]
pub struct Int {
    buf: [u8; 20],
    len: u8,
}

impl Int {
    fn new(flavor: Flavor, n: i64) -> Int {
        let mut buf = [0u8; 20];
        let len = match flavor {
            Flavor::Kong => {
                // An i64 takes at most 20 bytes of text.
                let mut text = itoa::Buffer::new();
                let text = text.format(n).as_bytes();
                buf[..text.len()].copy_from_slice(text);
                text.len()
            }
            Flavor::Envoy => {
                buf[..8].copy_from_slice(&n.to_le_bytes());
                8
            }
        };
        Int {
            buf,
            len: len as u8,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// Whether a property path as the ABI passes it (parts separated by NUL) names `dotted`.
fn path_is(path: &[u8], dotted: &str) -> bool {
    path.len() == dotted.len()
        && path
            .iter()
            .zip(dotted.bytes())
            .all(|(&p, d)| p == d || (p == 0 && d == b'.'))
}

impl Stream {
    /// The property at `path` (NUL-separated parts), as the proxy would answer it.
    pub(crate) fn property(&self, path: &[u8]) -> Option<&[u8]> {
        let given = |list: &'_ [(String, Vec<u8>)]| -> Option<usize> {
            list.iter().position(|(k, _)| path_is(path, k))
        };
        if let Some(i) = given(&self.set_properties) {
            return Some(&self.set_properties[i].1);
        }
        if let Some(i) = given(&self.properties) {
            return Some(&self.properties[i].1);
        }
        for (name, value) in [
            ("request.path", Some(self.path.as_bytes())),
            ("request.method", Some(self.method.as_bytes())),
            ("request.scheme", Some(b"http".as_slice())),
            ("source.address", Some(self.client.as_bytes())),
            ("request.id", self.request_id.as_deref().map(str::as_bytes)),
            ("request.size", self.request_size.as_ref().map(Int::bytes)),
            (
                "request.total_size",
                self.request_total_size.as_ref().map(Int::bytes),
            ),
            ("response.code", self.response_code.as_ref().map(Int::bytes)),
            ("response.size", self.response_size.as_ref().map(Int::bytes)),
            (
                "response.total_size",
                self.response_total_size.as_ref().map(Int::bytes),
            ),
        ] {
            if path_is(path, name) {
                return value;
            }
        }
        None
    }
}

/// A header map.
pub type Headers = Vec<(String, String)>;

/// What host functions see.
pub struct HostState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) shared: SharedStore,
    pub(crate) flavor: Flavor,
    pub(crate) phase: Phase,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) plugin_config: Vec<u8>,
    pub(crate) stream: Stream,
    pub(crate) call_response: Option<(Headers, Vec<u8>)>,
    pub(crate) call_failure: Option<String>,
    pub(crate) tick_period_ms: u32,
    pub(crate) next_token: u32,
    pub(crate) new_calls: Vec<(u32, CallRequest)>,
    pub(crate) refused_calls: u64,
    pub(crate) metrics: Vec<(String, i64)>,
    pub(crate) logs: Vec<(u32, String)>,
    /// The module's memory, found once after instantiation.
    pub(crate) memory: Option<Memory>,
    /// `proxy_on_memory_allocate`, found once after instantiation. Taken out while it runs and
    /// put back (cloning a `TypedFunc` clones its registered type, which costs more than the
    /// call).
    pub(crate) allocate: Option<TypedFunc<i32, i32>>,
}

/// A request as the proxy hands it to the filter.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Host.
    pub authority: String,
    /// Headers (lowercase names).
    pub headers: Vec<(String, String)>,
    /// Body chunks.
    pub body: Vec<Vec<u8>>,
    /// Properties the proxy knows for this request (dotted path → value), beyond those the
    /// host derives itself (request.*, source.address, response.*).
    pub properties: Vec<(String, Vec<u8>)>,
    /// The client's address.
    pub client: String,
}

/// The upstream's answer.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// Status.
    pub status: u16,
    /// Headers (lowercase names).
    pub headers: Vec<(String, String)>,
    /// Body chunks as they arrive.
    pub body: Vec<Vec<u8>>,
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The filter answered itself (enforcement): the upstream was not called.
    pub local_response: Option<LocalResponse>,
    /// The request headers as forwarded upstream (after the filter).
    pub forwarded_headers: Vec<(String, String)>,
}

struct Callbacks {
    context_create: TypedFunc<(i32, i32), ()>,
    request_headers: TypedFunc<(i32, i32, i32), i32>,
    request_body: TypedFunc<(i32, i32, i32), i32>,
    response_headers: TypedFunc<(i32, i32, i32), i32>,
    response_body: TypedFunc<(i32, i32, i32), i32>,
    log: TypedFunc<i32, ()>,
    done: TypedFunc<i32, i32>,
    delete: TypedFunc<i32, ()>,
    tick: TypedFunc<i32, ()>,
    call_response: TypedFunc<(i32, i32, i32, i32, i32), ()>,
}

/// One VM running the filter.
pub struct Vm {
    store: Store<HostState>,
    cb: Callbacks,
    root_id: i32,
    next_context: i32,
    dispatcher: Dispatcher,
    last_tick: Instant,
}

/// Compiles the module once for many VMs. With `TOLLGATE_WASM_PERFMAP` set, wasmtime writes
/// `/tmp/perf-<pid>.map` so `perf report` names the filter's compiled functions.
pub fn compile(wasm: &Path) -> anyhow::Result<(Engine, Module)> {
    let mut config = Config::new();
    if std::env::var_os("TOLLGATE_WASM_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&config).map_err(anyhow::Error::from)?;
    let module = Module::from_file(&engine, wasm).map_err(anyhow::Error::from)?;
    Ok((engine, module))
}

fn wasm_err(e: wasmtime::Error) -> anyhow::Error {
    anyhow::Error::from(e)
}

impl Vm {
    /// Loads the filter at `wasm` with `config` (the JSON Kong/Envoy pass), as a VM of a host
    /// whose shared data and queues are `shared`.
    pub fn new(
        wasm: &Path,
        config: &str,
        flavor: Flavor,
        shared: SharedStore,
    ) -> anyhow::Result<Vm> {
        let (engine, module) = compile(wasm)?;
        Self::from_module(&engine, &module, config, flavor, shared)
    }

    /// As [`Vm::new`] from a compiled module.
    pub fn from_module(
        engine: &Engine,
        module: &Module,
        config: &str,
        flavor: Flavor,
        shared: SharedStore,
    ) -> anyhow::Result<Vm> {
        let mut linker: Linker<HostState> = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut HostState| &mut s.wasi)
            .map_err(wasm_err)?;
        crate::abi::add_to_linker(&mut linker).map_err(wasm_err)?;
        let state = HostState {
            wasi: WasiCtxBuilder::new().inherit_stderr().build_p1(),
            shared,
            flavor,
            phase: Phase::Configure,
            vm_config: Vec::new(),
            plugin_config: config.as_bytes().to_vec(),
            stream: Stream::default(),
            call_response: None,
            call_failure: None,
            tick_period_ms: 0,
            next_token: 0,
            new_calls: Vec::new(),
            refused_calls: 0,
            metrics: Vec::new(),
            logs: Vec::new(),
            memory: None,
            allocate: None,
        };
        let mut store = Store::new(engine, state);
        let instance: Instance = linker.instantiate(&mut store, module).map_err(wasm_err)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| anyhow::anyhow!("the module exports no memory"))?;
        let allocate = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .map_err(wasm_err)?;
        store.data_mut().memory = Some(memory);
        store.data_mut().allocate = Some(allocate);
        for start in ["_initialize", "_start"] {
            if let Ok(f) = instance.get_typed_func::<(), ()>(&mut store, start) {
                f.call(&mut store, ()).map_err(wasm_err)?;
                break;
            }
        }
        let f2 = |store: &mut Store<HostState>, name: &str| {
            instance
                .get_typed_func::<(i32, i32, i32), i32>(store, name)
                .map_err(wasm_err)
        };
        let cb = Callbacks {
            context_create: instance
                .get_typed_func(&mut store, "proxy_on_context_create")
                .map_err(wasm_err)?,
            request_headers: f2(&mut store, "proxy_on_request_headers")?,
            request_body: f2(&mut store, "proxy_on_request_body")?,
            response_headers: f2(&mut store, "proxy_on_response_headers")?,
            response_body: f2(&mut store, "proxy_on_response_body")?,
            log: instance
                .get_typed_func(&mut store, "proxy_on_log")
                .map_err(wasm_err)?,
            done: instance
                .get_typed_func(&mut store, "proxy_on_done")
                .map_err(wasm_err)?,
            delete: instance
                .get_typed_func(&mut store, "proxy_on_delete")
                .map_err(wasm_err)?,
            tick: instance
                .get_typed_func(&mut store, "proxy_on_tick")
                .map_err(wasm_err)?,
            call_response: instance
                .get_typed_func(&mut store, "proxy_on_http_call_response")
                .map_err(wasm_err)?,
        };
        let vm_start: TypedFunc<(i32, i32), i32> = instance
            .get_typed_func(&mut store, "proxy_on_vm_start")
            .map_err(wasm_err)?;
        let configure: TypedFunc<(i32, i32), i32> = instance
            .get_typed_func(&mut store, "proxy_on_configure")
            .map_err(wasm_err)?;
        let root_id = 1;
        cb.context_create
            .call(&mut store, (root_id, 0))
            .map_err(wasm_err)?;
        if vm_start.call(&mut store, (root_id, 0)).map_err(wasm_err)? == 0 {
            anyhow::bail!("the filter refused to start (on_vm_start returned false)");
        }
        let size = store.data().plugin_config.len() as i32;
        if configure
            .call(&mut store, (root_id, size))
            .map_err(wasm_err)?
            == 0
        {
            let logs: Vec<String> = store.data().logs.iter().map(|(_, m)| m.clone()).collect();
            anyhow::bail!(
                "the filter refused its configuration (on_configure returned false): {}",
                logs.join("; ")
            );
        }
        let mut vm = Vm {
            store,
            cb,
            root_id,
            next_context: root_id + 1,
            dispatcher: Dispatcher::new()?,
            last_tick: Instant::now(),
        };
        vm.start_calls();
        Ok(vm)
    }

    fn start_calls(&mut self) {
        for (token, call) in std::mem::take(&mut self.store.data_mut().new_calls) {
            self.dispatcher.start(token, call);
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        self.store.data_mut().phase = phase;
    }

    /// Runs one request through the filter: request headers, body chunks, then (unless the
    /// filter answered itself) the upstream's response headers and body chunks, then the log
    /// phase. Upstream sizes and status are exposed as properties the way the flavor does.
    pub fn exchange(&mut self, req: &Request, resp: &Response) -> anyhow::Result<Exchange> {
        self.exchange_owned(req.clone(), resp)
    }

    /// As [`Vm::exchange`], taking the request (as the proxy owns the request it drives: no
    /// copy of it is made).
    pub fn exchange_owned(&mut self, req: Request, resp: &Response) -> anyhow::Result<Exchange> {
        let ctx = self.next_context;
        self.next_context += 1;
        let flavor = self.store.data().flavor;
        let Request {
            method,
            path,
            authority,
            headers: request_headers,
            body,
            properties,
            client,
        } = req;
        let body_len: usize = body.iter().map(Vec::len).sum();
        let head_len: usize = request_headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
            + method.len()
            + path.len()
            + 12;
        let int = |n: usize| Some(Int::new(flavor, n as i64));
        let (request_size, request_total_size, request_id) = match flavor {
            Flavor::Kong => (int(head_len + body_len), None, None),
            Flavor::Envoy => (
                int(body_len),
                int(head_len + body_len),
                request_headers
                    .iter()
                    .find(|(k, _)| k == "x-request-id")
                    .map(|(_, id)| id.clone()),
            ),
        };
        let mut headers = Vec::with_capacity(request_headers.len() + 4);
        headers.extend([
            (":method".to_owned(), method.clone()),
            (":path".to_owned(), path.clone()),
            (":authority".to_owned(), authority),
            (":scheme".to_owned(), "http".to_owned()),
        ]);
        headers.extend(request_headers);
        {
            let s = self.store.data_mut();
            let mut request_body = std::mem::take(&mut s.stream.request_body);
            let mut response_body = std::mem::take(&mut s.stream.response_body);
            request_body.clear();
            response_body.clear();
            s.stream = Stream {
                request_headers: headers,
                request_body,
                response_body,
                properties,
                method,
                path,
                client,
                request_id,
                request_size,
                request_total_size,
                ..Stream::default()
            };
        }
        self.cb
            .context_create
            .call(&mut self.store, (ctx, self.root_id))
            .map_err(wasm_err)?;
        self.set_phase(Phase::RequestHeaders);
        let n = self.store.data().stream.request_headers.len() as i32;
        self.cb
            .request_headers
            .call(&mut self.store, (ctx, n, 0))
            .map_err(wasm_err)?;
        self.start_calls();
        let local = self.store.data_mut().stream.local_response.take();
        if local.is_none() {
            let chunks = body.len();
            for (i, chunk) in body.into_iter().enumerate() {
                self.set_phase(Phase::RequestBody);
                let len = chunk.len() as i32;
                self.store.data_mut().stream.request_body = chunk;
                let eos = i32::from(i + 1 == chunks);
                self.cb
                    .request_body
                    .call(&mut self.store, (ctx, len, eos))
                    .map_err(wasm_err)?;
                self.start_calls();
            }
        }
        let mut sent = 0usize;
        if local.is_none() {
            {
                let rh = &mut self.store.data_mut().stream.response_headers;
                rh.reserve(resp.headers.len() + 1);
                rh.push((":status".to_owned(), resp.status.to_string()));
                rh.extend(resp.headers.iter().cloned());
            }
            self.set_phase(Phase::ResponseHeaders);
            let n = self.store.data().stream.response_headers.len() as i32;
            // eof is always false in the headers callbacks on ngx_wasm_module.
            self.cb
                .response_headers
                .call(&mut self.store, (ctx, n, 0))
                .map_err(wasm_err)?;
            self.start_calls();
            let chunks: &[Vec<u8>] = if resp.body.is_empty() {
                &[Vec::new()]
            } else {
                &resp.body
            };
            for (i, chunk) in chunks.iter().enumerate() {
                self.set_phase(Phase::ResponseBody);
                {
                    let buf = &mut self.store.data_mut().stream.response_body;
                    buf.clear();
                    buf.extend_from_slice(chunk);
                }
                sent += chunk.len();
                let eos = i32::from(i + 1 == chunks.len());
                self.cb
                    .response_body
                    .call(&mut self.store, (ctx, chunk.len() as i32, eos))
                    .map_err(wasm_err)?;
                self.start_calls();
            }
        }
        let status = local.as_ref().map_or(resp.status, |l| l.status);
        let resp_head: usize = resp
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
            + 17;
        {
            let s = &mut self.store.data_mut().stream;
            s.response_code = int(usize::from(status));
            let size = local.as_ref().map_or(sent, |l| l.body.len());
            match flavor {
                Flavor::Kong => s.response_size = int(resp_head + size),
                Flavor::Envoy => {
                    s.response_size = int(size);
                    s.response_total_size = int(resp_head + size);
                }
            }
        }
        self.set_phase(Phase::Log);
        self.cb.log.call(&mut self.store, ctx).map_err(wasm_err)?;
        self.cb.done.call(&mut self.store, ctx).map_err(wasm_err)?;
        self.cb
            .delete
            .call(&mut self.store, ctx)
            .map_err(wasm_err)?;
        self.start_calls();
        // Moved out once the request is over rather than copied when it went upstream (a proxy
        // forwards what the request phases left; the filter changes request headers only
        // there, so these are the same headers).
        let forwarded_headers = std::mem::take(&mut self.store.data_mut().stream.request_headers);
        Ok(Exchange {
            local_response: local,
            forwarded_headers,
        })
    }

    /// Calls `on_tick` on the root context now.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        self.set_phase(Phase::Tick);
        self.cb
            .tick
            .call(&mut self.store, self.root_id)
            .map_err(wasm_err)?;
        self.last_tick = Instant::now();
        self.start_calls();
        Ok(())
    }

    /// Calls `on_tick` if the filter's tick period has passed since the last one (what the
    /// proxy's timer does).
    pub fn tick_if_due(&mut self) -> anyhow::Result<bool> {
        let period = self.store.data().tick_period_ms;
        if period > 0 && self.last_tick.elapsed() >= Duration::from_millis(u64::from(period)) {
            self.tick()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Hands the answers of finished HTTP calls to the filter (`on_http_call_response`),
    /// waiting up to `wait` for one if any is in flight. Returns how many were handed.
    pub fn poll_calls(&mut self, wait: Duration) -> anyhow::Result<usize> {
        let done = if wait.is_zero() {
            self.dispatcher.completed()
        } else {
            self.dispatcher.wait(wait)
        };
        let n = done.len();
        for (token, result) in done {
            let (headers, body, failure) = match result {
                CallResult::Answer { headers, body } => (headers, body, None),
                CallResult::Failed(why) => (Vec::new(), Vec::new(), Some(why)),
            };
            let (nh, nb) = (headers.len() as i32, body.len() as i32);
            {
                let s = self.store.data_mut();
                s.call_response = Some((headers, body));
                s.call_failure = failure;
            }
            self.set_phase(Phase::CallResponse);
            self.cb
                .call_response
                .call(&mut self.store, (self.root_id, token as i32, nh, nb, 0))
                .map_err(wasm_err)?;
            {
                let s = self.store.data_mut();
                s.call_response = None;
                s.call_failure = None;
            }
            self.start_calls();
        }
        Ok(n)
    }

    /// Ticks and answers calls until `done` holds or `within` passes; true if it held.
    pub fn run_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&mut Vm) -> bool,
    ) -> anyhow::Result<bool> {
        let deadline = Instant::now() + within;
        loop {
            if done(self) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.tick_if_due()?;
            self.poll_calls(Duration::from_millis(5))?;
            if self.dispatcher.in_flight() == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// A counter the filter defined (`proxy_define_metric`), 0 if never defined.
    pub fn metric(&self, name: &str) -> i64 {
        self.store
            .data()
            .metrics
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }

    /// Messages the filter logged.
    pub fn logs(&self) -> Vec<String> {
        self.store
            .data()
            .logs
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// HTTP calls the filter tried from a phase where Kong forbids them.
    pub fn refused_calls(&self) -> u64 {
        self.store.data().refused_calls
    }

    /// HTTP calls not answered yet.
    pub fn calls_in_flight(&self) -> usize {
        self.dispatcher.in_flight()
    }

    /// The tick period the filter asked for, ms.
    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_are_read_on_demand_in_order_and_integers_per_flavor() {
        let mut s = Stream {
            path: "/a?b".into(),
            client: "10.0.0.1:5000".into(),
            properties: vec![("kong.route_id".into(), b"r-1".to_vec())],
            request_size: Some(Int::new(Flavor::Kong, 1234)),
            response_size: Some(Int::new(Flavor::Envoy, -2)),
            ..Stream::default()
        };
        assert_eq!(s.property(b"request\0path"), Some(b"/a?b".as_slice()));
        assert_eq!(s.property(b"kong\0route_id"), Some(b"r-1".as_slice()));
        assert_eq!(s.property(b"request\0size"), Some(b"1234".as_slice()));
        assert_eq!(
            s.property(b"response\0size"),
            Some((-2i64).to_le_bytes().as_slice())
        );
        assert_eq!(s.property(b"response\0code"), None);
        assert_eq!(s.property(b"kong\0route"), None);
        assert_eq!(s.property(b"request\0pathx"), None);
        // What the filter sets wins; the proxy's own properties come before derived ones.
        s.properties
            .push(("source.address".into(), b"given".to_vec()));
        s.set_properties
            .push(("kong.route_id".into(), b"set".to_vec()));
        assert_eq!(s.property(b"kong\0route_id"), Some(b"set".as_slice()));
        assert_eq!(s.property(b"source\0address"), Some(b"given".as_slice()));
        assert_eq!(
            Int::new(Flavor::Kong, i64::MIN).bytes(),
            i64::MIN.to_string().as_bytes()
        );
    }
}
