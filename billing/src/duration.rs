//! ISO 8601 durations (`P1M`, `P2W`, `PT1H30M`, `P1DT12H`, `PT45S`): the parser behind usage
//! periods ([`crate::entitlement::Interval`]) and the clock's `advanceBy`. A duration is calendar
//! months plus a fixed length, applied in that order (`P1M1D` from January 31st is March 1st in a
//! leap year: one month to February 29th, then one day), as java.time and PostgreSQL do.

use chrono::{DateTime, Duration, Months, Utc};

/// A parsed ISO 8601 duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsoDuration {
    /// Calendar months (`Y` counts 12).
    pub months: u32,
    /// Weeks, days, hours, minutes and seconds.
    pub fixed: Duration,
}

impl IsoDuration {
    /// Parses `PnYnMnWnDTnHnMnS` (each part optional, whole numbers, at least one part).
    pub fn parse(s: &str) -> Result<IsoDuration, String> {
        let bad = || format!("{s:?} is not an ISO 8601 duration like P1M, P1D or PT1H");
        let rest = s.strip_prefix('P').ok_or_else(bad)?;
        let (date, time) = match rest.split_once('T') {
            Some((_, "")) => return Err(bad()),
            Some((d, t)) => (d, t),
            None => (rest, ""),
        };
        let mut fixed = Duration::zero();
        let mut months: u32 = 0;
        let mut parts = 0;
        for (part, is_time) in [(date, false), (time, true)] {
            let mut num = String::new();
            for c in part.chars() {
                if c.is_ascii_digit() {
                    num.push(c);
                    continue;
                }
                let n: u32 = num.parse().map_err(|_| bad())?;
                num.clear();
                parts += 1;
                let too_long = || format!("{s:?} is too long");
                let n64 = i64::from(n);
                match (c, is_time) {
                    ('Y', false) => {
                        months = n
                            .checked_mul(12)
                            .and_then(|y| months.checked_add(y))
                            .ok_or_else(too_long)?
                    }
                    ('M', false) => months = months.checked_add(n).ok_or_else(too_long)?,
                    ('W', false) => fixed += Duration::try_weeks(n64).ok_or_else(too_long)?,
                    ('D', false) => fixed += Duration::try_days(n64).ok_or_else(too_long)?,
                    ('H', true) => fixed += Duration::try_hours(n64).ok_or_else(too_long)?,
                    ('M', true) => fixed += Duration::try_minutes(n64).ok_or_else(too_long)?,
                    ('S', true) => fixed += Duration::try_seconds(n64).ok_or_else(too_long)?,
                    _ => return Err(bad()),
                }
            }
            if !num.is_empty() {
                return Err(bad());
            }
        }
        if parts == 0 {
            return Err(bad());
        }
        Ok(IsoDuration { months, fixed })
    }

    /// Whether it is zero long.
    pub fn is_zero(&self) -> bool {
        self.months == 0 && self.fixed.is_zero()
    }

    /// `t` plus this duration (months first, then the fixed part); `None` past chrono's range.
    pub fn after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        t.checked_add_months(Months::new(self.months))?
            .checked_add_signed(self.fixed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn parts_parse_and_apply_months_first() {
        let d = IsoDuration::parse("P1Y2M3W4DT5H6M7S").unwrap();
        assert_eq!(d.months, 14);
        assert_eq!(
            d.fixed,
            Duration::weeks(3)
                + Duration::days(4)
                + Duration::hours(5)
                + Duration::minutes(6)
                + Duration::seconds(7)
        );
        let d = IsoDuration::parse("P1M1D").unwrap();
        assert_eq!(
            d.after(t("2028-01-31T00:00:00Z")),
            Some(t("2028-03-01T00:00:00Z"))
        );
        assert_eq!(
            IsoDuration::parse("PT90M")
                .unwrap()
                .after(t("2026-01-01T00:00:00Z")),
            Some(t("2026-01-01T01:30:00Z"))
        );
        assert!(IsoDuration::parse("P0D").unwrap().is_zero());
    }

    #[test]
    fn malformed_durations_are_named() {
        for s in [
            "", "P", "PT", "1M", "P1", "P1H", "PT1D", "P-1D", "P1.5D", "month",
        ] {
            let e = IsoDuration::parse(s).unwrap_err();
            assert!(e.contains(&format!("{s:?}")), "{s}: {e}");
        }
        assert!(IsoDuration::parse("P99999999999D").is_err());
        assert_eq!(
            IsoDuration::parse("P999999Y")
                .unwrap()
                .after(t("2026-01-01T00:00:00Z")),
            None
        );
    }
}
