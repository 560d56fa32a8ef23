//! Kong's side of the external-plugin protocol, written from Kong's own behaviour
//! (reference/kong-protocols.md §1.8):
//!
//! 1. [`process::query_info`] runs the query command and validates the dump as Kong does.
//! 2. [`process::PluginServer`] spawns the start command and waits for the socket.
//! 3. [`rpc::Rpc`] pools connections and can scatter one event's Steps across them.
//! 4. [`worker::Worker`] starts instances with Kong's injected config keys, runs
//!    `HandleEvent` and the Step loop, picking the Step method by Kong's table.
//! 5. Exits (`kong.response.exit`/`error`) end the event with nothing more sent.
//! 6. `no plugin instance` resets and re-runs; `serverPid` changes drop instances.
//! 7. [`pdk::RequestPdk`] answers log-phase calls from a snapshot; [`serialize::KongRequest`]
//!    produces every Kong version's `kong.log.serialize()` shape.

pub mod msgpack;
pub mod pdk;
pub mod process;
pub mod rpc;
pub mod schema;
pub mod serialize;
pub mod worker;
