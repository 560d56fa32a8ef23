//! The gRPC contract between the Kong side of Tollgate and `tollgate-agent`: package `tollgate.v1`.
//!
//! * [`v1::ingest_server::Ingest`] / [`v1::ingest_client::IngestClient`]: the plugin streams
//!   [`v1::EventBatch`]es; the agent answers one [`v1::BatchAck`] per batch once it is durable.
//! * [`v1::entitlements_server::Entitlements`] / [`v1::entitlements_client::EntitlementsClient`]:
//!   the agent streams [`v1::EntitlementUpdate`]s, a snapshot first and changes after.
//!
//! * [`encoded`]: the plugin's hot path — events encoded once as they are made, batches sent as
//!   those bytes (the agent decodes them as ordinary `EventBatch`es).
//!
//! The source of truth is `proto/tollgate/v1/tollgate.proto`; this crate compiles it.

pub mod encoded;

/// Generated messages, clients and servers for `tollgate.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("tollgate.v1");
}

pub use v1::{BatchAck, Destination, EventBatch, UsageEvent};
