//! `tollgate-agent`: the sidecar between Kong and the billing service. It takes events from the
//! `tollgate` plugin over gRPC, keeps them durable on disk, and delivers them to OpenMeter,
//! Konnect or `tollgate-billing`, losing nothing it acknowledged.
//!
//! Components, in the order an event meets them:
//! * [`sources`]: where events come in, one module each — gRPC ingest from the `tollgate`
//!   plugin, OpenMeter-compatible HTTP, Kong's http-log, OTLP logs — all acking once durable;
//!   and the pull sources (Prometheus, S3, Kubernetes pod time, Run:ai) asking on a schedule.
//! * [`buffer`]: the sled disk buffer: per-destination queues, group commit, dead letters.
//! * [`sink`]: the HTTP flushers: batching, retries, bisection of poison events.
//! * [`entitlements`]: the entitlement cache synced from the central service, local accounting,
//!   the `Watch` stream to plugins and the local entitlement endpoint.
//! * [`admin`]: health, readiness, metrics and dead-letter endpoints on loopback HTTP.
//! * [`config`] and [`metrics`]: settings and counters.
//! * [`app`]: wiring them into a running agent with graceful shutdown.

pub mod admin;
pub mod app;
pub mod buffer;
pub mod config;
pub mod entitlements;
pub mod metrics;
pub mod sink;
pub mod sources;
