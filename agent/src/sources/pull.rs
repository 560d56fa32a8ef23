//! What the pull sources share: storing a tick's events through the same [`Intake`] as the push
//! sources (waiting while the buffer is full instead of dropping: a pull source can always ask
//! again later, but a tick it skipped is lost), ids derived from what is measured, their
//! `tollgate_agent_source_*` metrics, and sleeping until a tick unless the agent stops.

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::watch;

use super::{Intake, Refusal};
use crate::buffer::StoredEvent;
use crate::metrics::{SourceLabels, SourceMetrics};

/// The namespace of the pull sources' derived ids (fixed: the same measurement always gets the
/// same id, in this agent and any other).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x8f3e_61a2_0c4d_4b7e_a915_2d6c_7e40_b318);

/// An id derived from `parts` (each length-prefixed, so `("ab","c")` ≠ `("a","bc")`).
pub fn derive_id(parts: &[&str]) -> String {
    let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for p in parts {
        bytes.extend_from_slice(&(p.len() as u64).to_be_bytes());
        bytes.extend_from_slice(p.as_bytes());
    }
    uuid::Uuid::new_v5(&ID_NAMESPACE, &bytes).to_string()
}

/// RFC 3339 with milliseconds and `Z`, the form every pull source writes `time` in.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The agent stopped while a source waited.
#[derive(Debug)]
pub struct Stopped;

/// One running pull source's handle on the agent.
#[derive(Clone)]
pub struct Pull {
    /// Where events go.
    pub intake: Intake,
    /// `prometheus`, `s3`, `kubernetes`, `runai`.
    pub kind: &'static str,
    /// The source's name (metrics label, progress keys).
    pub name: String,
    labels: SourceLabels,
    stop: watch::Receiver<bool>,
}

impl Pull {
    /// A handle for source `name` of `kind`, stopping when `stop` turns true.
    pub fn new(
        intake: Intake,
        kind: &'static str,
        name: &str,
        stop: watch::Receiver<bool>,
    ) -> Pull {
        Pull {
            intake,
            kind,
            name: name.to_owned(),
            labels: SourceMetrics::labels(kind, name),
            stop,
        }
    }

    fn metrics(&self) -> &SourceMetrics {
        &self.intake.metrics.sources
    }

    /// A progress key of this source: `<kind>/<name>/<what>`.
    pub fn key(&self, what: &str) -> String {
        format!("{}/{}/{what}", self.kind, self.name)
    }

    /// Counts `n` failures.
    pub fn errors(&self, n: u64) {
        self.metrics().errors.get_or_create(&self.labels).inc_by(n);
    }

    /// Counts a completed tick whose data is as of `as_of`.
    pub fn tick_done(&self, as_of: DateTime<Utc>) {
        self.metrics().ticks.get_or_create(&self.labels).inc();
        self.lag(as_of);
    }

    /// Sets the lag to now − `as_of`.
    pub fn lag(&self, as_of: DateTime<Utc>) {
        let lag = (Utc::now() - as_of).num_milliseconds().max(0) as f64 / 1000.0;
        self.metrics()
            .lag_seconds
            .get_or_create(&self.labels)
            .set(lag);
    }

    /// Whether the agent is stopping.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps until `t`; `Err` when the agent stops first.
    pub async fn sleep_until(&mut self, t: DateTime<Utc>) -> Result<(), Stopped> {
        let wait = (t - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(()),
            _ = self.stop.wait_for(|s| *s) => Err(Stopped),
        }
    }

    /// Stores `events` durably, waiting (and asking again each second) while the buffer is full
    /// or failing; `Err` only when the agent stops first, with nothing of them acknowledged.
    pub async fn store(&mut self, events: &[StoredEvent]) -> Result<(), Stopped> {
        for chunk in events.chunks(1000) {
            loop {
                match self.intake.store(chunk).await {
                    Ok(()) => break,
                    Err(r) => {
                        self.errors(1);
                        let why = match r {
                            Refusal::Full => "disk buffer full".to_owned(),
                            Refusal::Unavailable(e) => e,
                        };
                        tracing::warn!(source = self.kind, name = %self.name, reason = %why, "cannot store this tick's events yet; retrying in 1s");
                        let again = Utc::now() + chrono::TimeDelta::seconds(1);
                        self.sleep_until(again).await?;
                    }
                }
            }
            self.metrics()
                .events
                .get_or_create(&self.labels)
                .inc_by(chunk.len() as u64);
        }
        Ok(())
    }

    /// Reads an `i64` progress value (a tick time in Unix ms).
    pub fn progress_ms(&self, what: &str) -> Option<i64> {
        match self.intake.buffer.progress_get(&self.key(what)) {
            Ok(Some(v)) => v.try_into().ok().map(i64::from_be_bytes),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(source = self.kind, name = %self.name, error = %e, "reading progress");
                None
            }
        }
    }

    /// Saves an `i64` progress value durably.
    pub async fn save_progress_ms(&self, what: &str, ms: i64) {
        if let Err(e) = self
            .intake
            .buffer
            .progress_put(&self.key(what), &ms.to_be_bytes())
            .await
        {
            self.errors(1);
            tracing::error!(source = self.kind, name = %self.name, error = %e, "saving progress");
        }
    }
}

/// A JSON value as the text of a subject or id (`"a"` → `a`, `7` → `7`); `None` for
/// null, objects, arrays and empty strings.
pub fn scalar_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_length_prefixed() {
        assert_eq!(derive_id(&["a", "bc"]), derive_id(&["a", "bc"]));
        assert_ne!(derive_id(&["ab", "c"]), derive_id(&["a", "bc"]));
    }
}
