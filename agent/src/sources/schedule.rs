//! When pull sources tick: a cron expression with seconds (`0 * * * * *`, five fields also
//! accepted) or `@every 15s`. `@every` ticks are aligned to the Unix epoch (every 15 s means
//! :00, :15, :30, :45), so a restarted agent ticks at the same instants as before and its ids,
//! derived from the tick time, match.

use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression (UTC).
    Cron(Box<Cron>),
    /// A fixed period, aligned to the epoch.
    Every(TimeDelta),
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

impl Schedule {
    /// Parses `text`, saying what is wrong.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if let Some(period) = text.strip_prefix("@every") {
            let d = humantime::parse_duration(period.trim())
                .map_err(|e| format!("{text:?}: @every needs a duration like 15s or 1m ({e})"))?;
            if d.as_millis() < 1000 {
                return Err(format!("{text:?}: @every must be at least 1s"));
            }
            let d = TimeDelta::from_std(d).map_err(|e| format!("{text:?}: {e}"))?;
            return Ok(Schedule::Every(d));
        }
        CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(text)
            .map(|c| Schedule::Cron(Box::new(c)))
            .map_err(|e| {
                format!("{text:?} is neither a cron expression (sec min hour dom mon dow) nor @every <duration>: {e}")
            })
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron(c) => c.find_next_occurrence(&t, false).ok(),
            Schedule::Every(d) => {
                let step = d.num_milliseconds();
                let ms = t.timestamp_millis();
                DateTime::from_timestamp_millis((ms.div_euclid(step) + 1) * step)
            }
        }
    }

    /// The latest tick at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron(c) => c.find_previous_occurrence(&t, true).ok(),
            Schedule::Every(d) => {
                let step = d.num_milliseconds();
                DateTime::from_timestamp_millis(t.timestamp_millis().div_euclid(step) * step)
            }
        }
    }

    /// The ticks in `(after, upto]`, the latest `limit` of them, oldest first; and how many
    /// earlier ones were left out (counted up to a million for a cron schedule).
    pub fn ticks_between(
        &self,
        after: DateTime<Utc>,
        upto: DateTime<Utc>,
        limit: usize,
    ) -> (Vec<DateTime<Utc>>, u64) {
        // Backwards from `upto`, so a long outage costs `limit` steps, not one per tick.
        let mut ticks = Vec::new();
        let mut t = self.latest_at_or_before(upto);
        while let Some(tick) = t {
            if tick <= after || ticks.len() == limit {
                break;
            }
            ticks.push(tick);
            t = match self {
                Schedule::Every(d) => Some(tick - *d),
                Schedule::Cron(c) => c.find_previous_occurrence(&tick, false).ok(),
            };
        }
        ticks.reverse();
        let Some(first) = ticks.first().copied() else {
            return (ticks, 0);
        };
        let skipped = match self {
            Schedule::Every(d) => {
                let step = d.num_milliseconds();
                let first_after = after.timestamp_millis().div_euclid(step) + 1;
                (first.timestamp_millis() / step - first_after).max(0) as u64
            }
            Schedule::Cron(_) => {
                let mut n = 0u64;
                let mut t = after;
                while let Some(next) = self.next_after(t) {
                    if next >= first || n >= 1_000_000 {
                        break;
                    }
                    n += 1;
                    t = next;
                }
                n
            }
        };
        (ticks, skipped)
    }

    /// The gap between the tick at `t` and the next one (the interval a tick covers).
    pub fn interval_at(&self, t: DateTime<Utc>) -> TimeDelta {
        match self {
            Schedule::Every(d) => *d,
            Schedule::Cron(_) => self
                .next_after(t)
                .map(|n| n - t)
                .unwrap_or(TimeDelta::zero()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_is_aligned_to_the_epoch() {
        let s = Schedule::parse("@every 15s").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-26T10:00:07Z")),
            Some(at("2026-11-26T10:00:15Z"))
        );
        assert_eq!(
            s.next_after(at("2026-11-26T10:00:15Z")),
            Some(at("2026-11-26T10:00:30Z"))
        );
    }

    #[test]
    fn cron_with_seconds_and_catch_up_limit() {
        let s = Schedule::parse("*/10 * * * * *").unwrap();
        let (ticks, skipped) =
            s.ticks_between(at("2026-11-26T10:00:00Z"), at("2026-11-26T10:01:00Z"), 3);
        assert_eq!(
            ticks,
            vec![
                at("2026-11-26T10:00:40Z"),
                at("2026-11-26T10:00:50Z"),
                at("2026-11-26T10:01:00Z")
            ]
        );
        assert_eq!(skipped, 3);
        assert_eq!(s.interval_at(at("2026-11-26T10:00:40Z")).num_seconds(), 10);
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(
            Schedule::parse("@every soon")
                .unwrap_err()
                .contains("@every")
        );
        assert!(
            Schedule::parse("@every 10ms")
                .unwrap_err()
                .contains("at least 1s")
        );
        assert!(
            Schedule::parse("61 * * * * *")
                .unwrap_err()
                .contains("cron")
        );
    }
}
