//! Billing-period arithmetic on a subscription's anchor and cadence, pure and shared with
//! invoicing: the period holding an instant ([`billing_period_at`]), period boundaries, and
//! OpenMeter's `SubscriptionTiming` (`immediate`, `next_billing_cycle`, a date-time) resolved to
//! an instant ([`Timing::resolve`]).
//!
//! Periods are `anchor + n × cadence` for whole `n` (negative before the anchor), always counted
//! from the anchor itself, so month ends never drift (a January 31st anchor gives February 28th
//! or 29th, then March 31st). A cadence is an ISO 8601 duration: calendar months first, then the
//! fixed part (as [`crate::duration::IsoDuration`]).

use chrono::{DateTime, Months, Utc};
use serde::{Deserialize, Serialize};

use crate::duration::IsoDuration;

/// `anchor + n × cadence`; `None` past chrono's range.
pub fn step(anchor: DateTime<Utc>, cadence: &IsoDuration, n: i64) -> Option<DateTime<Utc>> {
    let months = i64::from(cadence.months).checked_mul(n)?;
    let shifted = if months >= 0 {
        anchor.checked_add_months(Months::new(u32::try_from(months).ok()?))?
    } else {
        anchor.checked_sub_months(Months::new(u32::try_from(-months).ok()?))?
    };
    shifted.checked_add_signed(cadence.fixed.checked_mul(i32::try_from(n).ok()?)?)
}

/// A rough count of whole cadences between `anchor` and `t` (the search's starting guess).
fn estimate(anchor: DateTime<Utc>, cadence: &IsoDuration, t: DateTime<Utc>) -> i64 {
    // An average month (30.436875 days) is close enough for a guess; the search corrects it.
    let len_ms = i64::from(cadence.months) * 2_629_746_000 + cadence.fixed.num_milliseconds();
    if len_ms <= 0 {
        return 0;
    }
    (t - anchor).num_milliseconds().div_euclid(len_ms)
}

/// The billing period `[from, to)` of `cadence` on `anchor`'s grid that holds `t`; `None` for
/// a zero cadence or past chrono's range.
pub fn billing_period_at(
    anchor: DateTime<Utc>,
    cadence: &IsoDuration,
    t: DateTime<Utc>,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    if cadence.is_zero() || cadence.fixed < chrono::Duration::zero() {
        return None;
    }
    let mut n = estimate(anchor, cadence, t);
    while step(anchor, cadence, n)? > t {
        n -= 1;
    }
    while step(anchor, cadence, n + 1)? <= t {
        n += 1;
    }
    Some((step(anchor, cadence, n)?, step(anchor, cadence, n + 1)?))
}

/// Whether `t` is a period boundary on `anchor`'s grid.
pub fn is_boundary(anchor: DateTime<Utc>, cadence: &IsoDuration, t: DateTime<Utc>) -> bool {
    billing_period_at(anchor, cadence, t).is_some_and(|(from, _)| from == t)
}

/// The anchor normalised as OpenMeter stores it: the latest grid point at or before `start`
/// (an anchor after the start is moved back by whole cadences).
pub fn normalise_anchor(
    anchor: DateTime<Utc>,
    cadence: &IsoDuration,
    start: DateTime<Utc>,
) -> DateTime<Utc> {
    billing_period_at(anchor, cadence, start).map_or(anchor, |(from, _)| from)
}

/// OpenMeter's `SubscriptionTiming`: `"immediate"`, `"next_billing_cycle"` or an RFC 3339
/// date-time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Timing {
    /// A named timing.
    Named(NamedTiming),
    /// An exact instant.
    At(DateTime<Utc>),
}

/// The named timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedTiming {
    /// Now.
    Immediate,
    /// The end of the billing period holding now.
    NextBillingCycle,
}

impl Default for Timing {
    fn default() -> Self {
        Timing::Named(NamedTiming::Immediate)
    }
}

impl Timing {
    /// The instant this timing means at `now` on `anchor`'s `cadence` grid.
    pub fn resolve(
        &self,
        now: DateTime<Utc>,
        anchor: DateTime<Utc>,
        cadence: &IsoDuration,
    ) -> Result<DateTime<Utc>, String> {
        match self {
            Timing::Named(NamedTiming::Immediate) => Ok(now),
            Timing::Named(NamedTiming::NextBillingCycle) => billing_period_at(anchor, cadence, now)
                .map(|(_, to)| to)
                .ok_or_else(|| "the billing cadence has no next billing cycle".to_owned()),
            Timing::At(t) => Ok(*t),
        }
    }

    /// Whether it is a custom date-time.
    pub fn is_custom(&self) -> bool {
        matches!(self, Timing::At(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn d(s: &str) -> IsoDuration {
        IsoDuration::parse(s).unwrap()
    }

    #[test]
    fn monthly_periods_keep_the_anchor_day_without_drift() {
        let anchor = t("2026-01-31T10:00:00Z");
        let p = billing_period_at(anchor, &d("P1M"), t("2026-03-15T00:00:00Z")).unwrap();
        assert_eq!(p, (t("2026-02-28T10:00:00Z"), t("2026-03-31T10:00:00Z")));
        let p = billing_period_at(anchor, &d("P1M"), t("2026-03-31T10:00:00Z")).unwrap();
        assert_eq!(
            p.0,
            t("2026-03-31T10:00:00Z"),
            "a boundary starts its period"
        );
    }

    #[test]
    fn periods_before_the_anchor_and_fixed_cadences() {
        let anchor = t("2026-05-01T00:00:00Z");
        let p = billing_period_at(anchor, &d("P1M"), t("2026-03-10T00:00:00Z")).unwrap();
        assert_eq!(p, (t("2026-03-01T00:00:00Z"), t("2026-04-01T00:00:00Z")));
        let p = billing_period_at(anchor, &d("P2W"), t("2026-05-20T00:00:00Z")).unwrap();
        assert_eq!(p, (t("2026-05-15T00:00:00Z"), t("2026-05-29T00:00:00Z")));
        let p = billing_period_at(anchor, &d("P1Y"), t("2030-02-01T00:00:00Z")).unwrap();
        assert_eq!(p, (t("2029-05-01T00:00:00Z"), t("2030-05-01T00:00:00Z")));
        assert!(
            billing_period_at(
                anchor,
                &IsoDuration {
                    months: 0,
                    fixed: chrono::Duration::zero()
                },
                anchor
            )
            .is_none()
        );
    }

    #[test]
    fn boundaries_and_anchor_normalisation() {
        let anchor = t("2026-01-15T00:00:00Z");
        assert!(is_boundary(anchor, &d("P1M"), t("2026-04-15T00:00:00Z")));
        assert!(!is_boundary(anchor, &d("P1M"), t("2026-04-16T00:00:00Z")));
        assert_eq!(
            normalise_anchor(
                t("2026-03-01T00:00:00Z"),
                &d("P1M"),
                t("2026-01-20T00:00:00Z")
            ),
            t("2026-01-01T00:00:00Z")
        );
    }

    #[test]
    fn timings_resolve_on_the_grid() {
        let anchor = t("2026-01-01T00:00:00Z");
        let now = t("2026-02-10T12:00:00Z");
        let cadence = d("P1M");
        let parse = |s: &str| serde_json::from_str::<Timing>(s).unwrap();
        assert_eq!(
            parse("\"immediate\"")
                .resolve(now, anchor, &cadence)
                .unwrap(),
            now
        );
        assert_eq!(
            parse("\"next_billing_cycle\"")
                .resolve(now, anchor, &cadence)
                .unwrap(),
            t("2026-03-01T00:00:00Z")
        );
        assert_eq!(
            parse("\"2026-05-01T00:00:00Z\"")
                .resolve(now, anchor, &cadence)
                .unwrap(),
            t("2026-05-01T00:00:00Z")
        );
        assert!(serde_json::from_str::<Timing>("\"tomorrow\"").is_err());
    }
}
