//! `tollgate-events`: one Kong request, as `kong.log.serialize()` describes it, turned into the
//! usage events Kong's `metering-and-billing` plugin makes. Every path that meters Kong traffic
//! uses this crate — the `tollgate` external plugin and the agent's Kong http-log intake — so the
//! same request makes the same events with the same ids whichever way it arrives, and the paths
//! dedupe at billing on (`source`, `id`).
//!
//! * [`serialize`]: reading the serialize JSON in every Kong version's shape (3.4–3.9+).
//! * [`rules`]: the config fields that decide the events (what to meter, the subject, attributes).
//! * [`meter`]: building `kong.api_request` and `kong.llm_request` CloudEvents.

pub mod meter;
pub mod rules;
pub mod serialize;
