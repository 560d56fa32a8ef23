//! The real-time runner: on billing's real clock, a background task that every `interval`
//! (config `scheduler_interval_ms`, default 1 s) runs every [`super::DueWork`] due in
//! `(last done, now]` through [`Clock::catch_up`] — the clock's own lease and compare-and-set on
//! the `clock/realtime` document, so with several replicas on one PostgreSQL database one acts
//! at a time and a stretch of time is never run twice by two of them; if the acting replica is
//! killed, another takes over at once (the holder no longer has a session in the database) or
//! once its lease ran out ([`crate::clock::LEASE`]). Where it stopped
//! is in the database, so after a restart it catches up on what fell due while it was down.
//! With the simulated clock the runner is not started: advances run the works.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;

/// The default interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the runner; it stops when the returned handle is aborted (or the runtime ends).
pub fn spawn(clock: Arc<Clock>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match clock.catch_up().await {
                Ok(Some(done)) if done.happened_count > 0 => {
                    tracing::debug!(from = %done.previous, to = %done.now, happened = done.happened_count, "scheduler ran due work");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler: running due work failed; retrying next tick")
                }
            }
        }
    })
}
