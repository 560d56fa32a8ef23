//! Billing's notion of "now". Real time by default. With `--simulated-clock` (`simulated_clock =
//! true`) a clock kept in the database as one document (kind `clock`, id `billing`), so every
//! replica agrees and it survives restarts: it starts at the real time of the first start, stands
//! still, and moves only when advanced ([`Clock::advance`]), forward only — like Stripe's test
//! clocks.
//!
//! An advance runs what falls due between the old and the new time in time order
//! ([`crate::scheduler`]) and answers once the clock stands at the new time. Advances serialise:
//! in one process behind a lock, across replicas because every change of the document is a
//! compare-and-set ([`Store::swap_entity`]): an advance takes a lease in the document
//! (`advancing`: target, owner, renewed every few seconds), and an advance on another replica waits
//! for it, or takes it over once its holder is gone (killed: it no longer has a session in the
//! database, [`Store::instance_alive`]) or stopped renewing it ([`LEASE`]). The
//! document says how far time-driven work is done (`now`) and, while an advance runs or after one
//! was interrupted, where it is going. The clock is moved to an instant only after that instant's work ran, and that
//! work is idempotent, so a kill -9 during an advance leaves the clock at an instant whose work is
//! complete, and repeating the advance (`{"to": …}`) finishes it without doing anything twice.
//!
//! On real time the same machinery drives [`crate::scheduler::runner`]: a second document (kind
//! `clock`, id `realtime`) says how far time-driven work is done, and [`Clock::catch_up`] runs
//! what fell due between there and the real now under the same lease — a replica that finds the
//! lease held by another live one skips its turn, so one replica acts at a time.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::duration::IsoDuration;
use crate::scheduler::{self, DueWork, Happening};
use crate::store::{Store, StoreError};

/// The clock document's kind.
pub const KIND: &str = "clock";
/// The clock document's id.
pub const ID: &str = "billing";
/// The id of the document that says how far the real-time runner is done.
pub const REALTIME_ID: &str = "realtime";
/// At most this many happenings are listed in an advance's answer (all are counted).
pub const MAX_REPORTED: usize = 1000;

/// The stored state of the simulated clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    /// Billing's now: every time-driven step up to here is done.
    now: DateTime<Utc>,
    /// The advance under way (or interrupted): also the lock that serialises advances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    advancing: Option<Advancing>,
    /// Bumped on every change.
    revision: u64,
    /// The real time the clock was created.
    created_at: DateTime<Utc>,
}

/// An advance under way: where to, by which process, and when that process last said it is still
/// at it (real time). Another process takes the lock over once [`LEASE`] passed without that, or
/// at once when the owner no longer uses the database (it was killed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Advancing {
    to: DateTime<Utc>,
    owner: String,
    renewed_at: DateTime<Utc>,
}

/// How long an advance's lock holds without being renewed (renewed every third of it).
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(10);

/// What `GET /api/tollgate/v1/clock` shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct View {
    /// Billing's now.
    pub now: DateTime<Utc>,
    /// Whether it is the simulated clock.
    pub simulated: bool,
    /// An advance to this time was started and has not finished: under way, or interrupted
    /// (repeat it with `{"to": …}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advancing_to: Option<DateTime<Utc>>,
}

/// Where to move the clock.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// By an ISO 8601 duration from where it stands.
    By(IsoDuration),
    /// To an instant.
    To(DateTime<Utc>),
}

/// Why an advance was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdvanceError {
    /// Real time cannot be moved.
    #[error(
        "billing runs on real time, which cannot be moved: start tollgate-billing with \
         --simulated-clock (or simulated_clock = true in its config file, or \
         TOLLGATE_BILLING_SIMULATED_CLOCK=true) to use a simulated clock"
    )]
    NotSimulated,
    /// The target is before the clock.
    #[error("the clock is at {now} and only moves forward: {to} is in its past")]
    Backwards {
        /// Where the clock stands.
        now: DateTime<Utc>,
        /// The refused target.
        to: DateTime<Utc>,
    },
    /// The target cannot be represented.
    #[error("advanceBy: from {0} it ends past the last representable time")]
    OutOfRange(DateTime<Utc>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an advance did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Advanced {
    /// Where the clock stood before.
    pub previous: DateTime<Utc>,
    /// Where it stands now.
    pub now: DateTime<Utc>,
    /// Whether it is the simulated clock (false for a real-time catch-up).
    pub simulated: bool,
    /// What happened, in time order (at most [`MAX_REPORTED`]).
    pub happened: Vec<Happening>,
    /// How many things happened in all.
    pub happened_count: usize,
    /// Whether `happened` was cut at [`MAX_REPORTED`].
    pub truncated: bool,
}

/// Billing's clock.
pub struct Clock {
    store: Arc<Store>,
    simulated: bool,
    /// The document this clock keeps its state in ([`ID`] or [`REALTIME_ID`]).
    doc_id: &'static str,
    /// This process, as the owner of an advance's lock.
    owner: String,
    advancing: tokio::sync::Mutex<()>,
    works: Vec<Arc<dyn DueWork>>,
    /// The clock's time as this process last read or wrote it, used by [`Clock::now`] when the
    /// database is this process's alone (SQLite): nobody else can have moved it.
    cached: std::sync::Mutex<Option<DateTime<Utc>>>,
}

/// `t` to the millisecond (what the document keeps).
fn to_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

impl Clock {
    /// Real time; logs a warning if this database ran on a simulated clock before (its data may
    /// be dated in the future).
    pub async fn real(store: Arc<Store>) -> Result<Clock, StoreError> {
        if let Some(raw) = store.get_entity_raw(KIND, ID).await?
            && let Ok(st) = serde_json::from_str::<State>(&raw)
        {
            tracing::warn!(
                simulated_now = %st.now,
                "this database ran on a simulated clock; running on real time now \
                 (start with --simulated-clock to keep using it)"
            );
        }
        Ok(Clock {
            owner: store.instance().to_owned(),
            store,
            simulated: false,
            doc_id: REALTIME_ID,
            advancing: tokio::sync::Mutex::new(()),
            works: scheduler::registry(),
            cached: std::sync::Mutex::new(None),
        })
    }

    /// The simulated clock kept in `store`, created at the real time now if it does not exist.
    pub async fn simulated(store: Arc<Store>) -> Result<Clock, StoreError> {
        let clock = Clock {
            owner: store.instance().to_owned(),
            store,
            simulated: true,
            doc_id: ID,
            advancing: tokio::sync::Mutex::new(()),
            works: scheduler::registry(),
            cached: std::sync::Mutex::new(None),
        };
        let (_, st) = clock.load().await?;
        if let Some(Advancing { to, .. }) = st.advancing {
            tracing::warn!(
                now = %st.now, advancing_to = %to,
                "an advance of the simulated clock did not finish: repeat it with \
                 POST /api/tollgate/v1/clock {{\"to\": \"{}\"}}",
                to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            );
        }
        Ok(clock)
    }

    /// Whether this is the simulated clock.
    pub fn is_simulated(&self) -> bool {
        self.simulated
    }

    /// Billing's now.
    pub async fn now(&self) -> Result<DateTime<Utc>, StoreError> {
        if !self.simulated {
            return Ok(Utc::now());
        }
        if self.store.is_exclusive()
            && let Some(now) = *self.cached.lock().unwrap_or_else(|e| e.into_inner())
        {
            return Ok(now);
        }
        Ok(self.load().await?.1.now)
    }

    fn remember(&self, now: DateTime<Utc>) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
    }

    /// What `GET /api/tollgate/v1/clock` shows.
    pub async fn view(&self) -> Result<View, StoreError> {
        if !self.simulated {
            return Ok(View {
                now: Utc::now(),
                simulated: false,
                advancing_to: None,
            });
        }
        let (_, st) = self.load().await?;
        Ok(View {
            now: st.now,
            simulated: true,
            advancing_to: st.advancing.map(|a| a.to),
        })
    }

    /// The document's text and state, creating it (at the real time now) if missing.
    async fn load(&self) -> Result<(String, State), StoreError> {
        loop {
            if let Some(raw) = self.store.get_entity_raw(KIND, self.doc_id).await? {
                let st: State = serde_json::from_str(&raw)
                    .map_err(|e| StoreError::Decode(format!("the clock document: {e}")))?;
                self.remember(st.now);
                return Ok((raw, st));
            }
            let now = to_ms(Utc::now());
            let st = State {
                now,
                advancing: None,
                revision: 1,
                created_at: now,
            };
            // Of replicas starting at once, one creates it; the others read theirs.
            self.store.swap_entity(KIND, self.doc_id, None, &st).await?;
        }
    }

    /// Applies `change` to the stored state by compare-and-set, re-reading and re-applying it
    /// when another writer got there first, until it is stored or `change` says nothing is left
    /// to change (returns false). Returns the state as stored afterwards.
    async fn update(&self, change: impl Fn(&mut State) -> bool) -> Result<State, StoreError> {
        let mut lost_to: Option<String> = None;
        loop {
            let (raw, mut st) = self.load().await?;
            if lost_to.as_deref() == Some(raw.as_str()) {
                // Refused although nobody changed it: never spin on that.
                return Err(StoreError::Database(
                    "the clock document's compare-and-set fails without a concurrent change".into(),
                ));
            }
            if !change(&mut st) {
                return Ok(st);
            }
            st.revision += 1;
            if self
                .store
                .swap_entity(KIND, self.doc_id, Some(&raw), &st)
                .await?
            {
                self.remember(st.now);
                return Ok(st);
            }
            lost_to = Some(raw);
        }
    }

    /// Moves the simulated clock forward to `target`, running what falls due on the way in time
    /// order; answers once the clock stands there. Moving to where it stands does nothing (so a
    /// `to` can be repeated safely).
    pub async fn advance(&self, target: Target) -> Result<Advanced, AdvanceError> {
        if !self.simulated {
            return Err(AdvanceError::NotSimulated);
        }
        self.run_to(target, true).await?.ok_or_else(|| {
            AdvanceError::Store(StoreError::Database("an advance gave up its turn".into()))
        })
    }

    /// On real time: runs what fell due since the last catch-up (on any replica) up to the real
    /// now, under the same lease as an advance. `None` when another replica holds the lease (it
    /// is catching up) or there is nothing new; on the simulated clock always `None` (only an
    /// advance moves it).
    pub async fn catch_up(&self) -> Result<Option<Advanced>, AdvanceError> {
        if self.simulated {
            return Ok(None);
        }
        match self.run_to(Target::To(Utc::now()), false).await {
            // Another replica's real clock is a little ahead: it did this stretch.
            Err(AdvanceError::Backwards { .. }) => Ok(None),
            other => other,
        }
    }

    /// Takes the lease and runs what falls due up to `target`; with `wait` false, gives up
    /// (`None`) instead of waiting while another process holds a live lease.
    async fn run_to(&self, target: Target, wait: bool) -> Result<Option<Advanced>, AdvanceError> {
        let _one_at_a_time = self.advancing.lock().await;
        // Take the lock in the document: wait while another process advances (its lease is
        // fresh); the target of `advanceBy` counts from where the clock stands once it is ours.
        let mut lost_to: Option<String> = None;
        let (previous, to) = loop {
            let (raw, st) = self.load().await?;
            if lost_to.as_deref() == Some(raw.as_str()) {
                return Err(StoreError::Database(
                    "the clock document's compare-and-set fails without a concurrent change".into(),
                )
                .into());
            }
            if let Some(a) = &st.advancing
                && a.owner != self.owner
                && !self.holder_gone(a).await?
            {
                if !wait {
                    return Ok(None);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            let to = match target {
                Target::By(d) => d.after(st.now).ok_or(AdvanceError::OutOfRange(st.now))?,
                Target::To(t) => t,
            };
            let to = to_ms(to);
            if to < st.now {
                return Err(AdvanceError::Backwards { now: st.now, to });
            }
            if to == st.now {
                break (st.now, to);
            }
            let mut mine = st.clone();
            mine.advancing = Some(Advancing {
                to,
                owner: self.owner.clone(),
                renewed_at: Utc::now(),
            });
            mine.revision += 1;
            if self
                .store
                .swap_entity(KIND, self.doc_id, Some(&raw), &mine)
                .await?
            {
                break (st.now, to);
            }
            lost_to = Some(raw);
        };
        let mut report = Report::default();
        if to > previous {
            self.run_due(previous, to, &mut report).await?;
        }
        let owner = self.owner.clone();
        let st = self
            .update(|s| {
                let before = (s.now, s.advancing.clone());
                s.now = s.now.max(to);
                if s.advancing.as_ref().is_some_and(|a| a.owner == owner) {
                    s.advancing = None;
                }
                before != (s.now, s.advancing.clone())
            })
            .await?;
        if report.count > 0 {
            tracing::info!(from = %previous, to = %st.now, happened = report.count, "clock advanced");
        }
        Ok(Some(Advanced {
            previous,
            now: st.now,
            simulated: self.simulated,
            truncated: report.count > report.items.len(),
            happened_count: report.count,
            happened: report.items,
        }))
    }

    /// Renews this process's lease on the advance (if it still holds it).
    async fn renew(&self) -> Result<(), StoreError> {
        self.update(|s| match &mut s.advancing {
            Some(a) if a.owner == self.owner => {
                a.renewed_at = Utc::now();
                true
            }
            _ => false,
        })
        .await
        .map(drop)
    }

    /// Runs every work's items in `(from, to]` in time order. After an instant whose work wrote,
    /// the clock is moved there (that instant is done) and every work is asked again from there.
    async fn run_due(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        report: &mut Report,
    ) -> Result<(), StoreError> {
        let mut pos = from;
        let mut renewed = std::time::Instant::now();
        'plan: while pos < to {
            let mut queues = Vec::with_capacity(self.works.len());
            for w in &self.works {
                queues.push((w.clone(), w.plan(&self.store, pos, to).await?));
            }
            while let Some(at) = queues.iter().filter_map(|(_, q)| q.peek()).min() {
                let mut wrote = false;
                for (work, queue) in &mut queues {
                    if queue.peek() != Some(at) {
                        continue;
                    }
                    let items = queue.pop();
                    tracing::debug!(work = work.name(), %at, items = items.len(), "due");
                    let done = work.run(&self.store, at, items).await?;
                    report.add(done.happened);
                    wrote |= done.wrote;
                }
                if renewed.elapsed() > LEASE / 3 {
                    self.renew().await?;
                    renewed = std::time::Instant::now();
                }
                if wrote {
                    let st = self
                        .update(|s| {
                            let moved = s.now < at;
                            s.now = s.now.max(at);
                            moved
                        })
                        .await?;
                    // Another replica may be further on: its work up to there is done.
                    pos = st.now.max(at);
                    continue 'plan;
                }
            }
            break;
        }
        Ok(())
    }
}

impl Clock {
    /// Whether an advance's holder is gone: it no longer uses the database (killed: see
    /// [`Store::instance_alive`]), or it stopped renewing its lease.
    async fn holder_gone(&self, a: &Advancing) -> Result<bool, StoreError> {
        let expired = (Utc::now() - a.renewed_at)
            .to_std()
            .is_ok_and(|age| age > LEASE);
        Ok(expired || !self.store.instance_alive(&a.owner).await?)
    }
}

#[derive(Default)]
struct Report {
    items: Vec<Happening>,
    count: usize,
}

impl Report {
    fn add(&mut self, happened: Vec<Happening>) {
        self.count += happened.len();
        let room = MAX_REPORTED.saturating_sub(self.items.len());
        self.items.extend(happened.into_iter().take(room));
    }
}
