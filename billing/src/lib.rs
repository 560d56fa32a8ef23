//! `tollgate-billing`: an OpenMeter-compatible central metering and entitlement service in one
//! binary with an embedded store, so Tollgate runs on one machine with no cloud account.
//!
//! * [`store`]: the SQL system of record (SQLite embedded or PostgreSQL) — events with their dedup
//!   key, per-minute usage, API documents — behind one interface, with its migrations.
//! * [`meter`]: meters and how one event contributes to them.
//! * [`query`]: meter queries over the per-minute aggregates.
//! * [`filter`]: OpenMeter's `FilterString` (`advancedMeterGroupByFilters`).
//! * [`entitlement`]: customers, features, entitlements, grants and the balance engine.
//! * [`balances`]: many entitlements of a feature evaluated with one usage read.
//! * [`catalog`]: the product catalog — versioned plans, rate cards, add-ons.
//! * [`pricing`]: the rating engine — prices, discounts and commitments into detailed lines.
//! * [`notification`]: signed webhooks — channels, rules, the outbox and its delivery worker.
//! * [`api`]: the HTTP API on OpenMeter's paths.
//! * [`console`]: the web console on the API's listener.
//! * [`config`]: the TOML config file.
//! * [`clock`]: billing's "now" — real time, or a simulated clock kept in the database.
//! * [`subscription`]: customers on plans over time, the entitlements they provision, add-ons.
//! * [`scheduler`]: what falls due when billing's time passes (run by a clock advance, or by
//!   [`scheduler::runner`] on real time).
//! * [`duration`]: ISO 8601 durations.
//! * [`invoice`]: billing profiles, invoices and their lifecycle, from usage to a paid invoice.
//! * [`app`]: installed apps (sandbox, custom invoicing) and their invoice hooks.

pub mod api;
pub mod app;
pub mod balances;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod console;
pub mod duration;
pub mod entitlement;
pub mod filter;
pub mod invoice;
pub mod meter;
pub mod notification;
pub mod pricing;
pub mod query;
pub mod scheduler;
pub mod store;
pub mod subscription;
