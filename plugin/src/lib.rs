//! `tollgate`: a Kong external plugin server that meters every request and every AI Gateway LLM
//! call into CloudEvents shaped like Kong's own `metering-and-billing` plugin, and hands them to
//! `tollgate-agent` over gRPC.
//!
//! The pieces, in the order a request meets them:
//! * [`wire`]: Kong's MsgPack-RPC framing on the Unix socket (no length prefix, partial reads).
//! * [`socket`]: a Kong connection registered for readability only (no wakeup per reply read).
//! * [`server`]: instances, events and the RPC methods Kong calls; the `log` handler.
//! * [`config`]: the plugin config Kong sends at `StartInstance`, with Kong's field names.
//! * [`tollgate_events`] (a crate of its own, shared with the agent's http-log intake): reading
//!   `kong.log.serialize()` in every Kong version's shape and building the `kong.api_request`
//!   and `kong.llm_request` CloudEvents.
//! * [`publisher`]: the bounded queue and the gRPC stream to the agent, acked once durable.
//! * [`enforcement`]: `tollgate-enforcement`, the access-phase decision from the agent's snapshot.
//! * [`info`]: what `tollgate -dump` prints, including the config schema Kong validates against.

pub mod config;
pub mod enforcement;
pub mod info;
pub mod publisher;
pub mod server;
pub mod socket;
pub mod wire;
