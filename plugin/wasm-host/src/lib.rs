//! `tollgate-wasm-host`: a proxy-wasm host on wasmtime that runs Tollgate's filter the way nginx
//! (ngx_wasm_module, Kong 3.4–3.10) and Envoy do, for tests and benchmarks, since neither proxy
//! can run here (reference/collectors-wasm.md §B.3, §B.9).
//!
//! * [`shared`]: shared data (with CAS) and shared queues, one store for every VM of a host —
//!   nginx's workers share them through shm.
//! * [`calls`]: `dispatch_http_call` performed for real over loopback on a background runtime;
//!   its answer reaches the filter on a later [`Vm::poll_calls`], never during a request.
//! * [`abi`]: the `env.proxy_*` host functions of ABI 0.2.1 (what the Rust SDK 0.2.5 imports),
//!   with the statuses ngx_wasm_module documents (`get_log_level`, gRPC and `done` unsupported).
//! * [`vm`]: one VM (one worker): `_initialize`, root context, `on_vm_start`, `on_configure`;
//!   per request `on_context_create` → request headers → body chunks → response headers → body
//!   chunks → `on_log` → `on_done` → `on_delete`; `on_tick` on the root.
//! * [`build`]: builds the filter's `.wasm` with cargo (`--target wasm32-wasip1 --profile wasm`).

pub mod abi;
pub mod build;
pub mod calls;
pub mod shared;
pub mod vm;

pub use vm::{Exchange, Flavor, LocalResponse, Request, Response, Vm};
