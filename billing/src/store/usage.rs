//! Usage pre-aggregation, shared by both backends: what one stored event contributes to each meter
//! (a row per meter × subject × group-by values × minute, rolled up into its hour and day), folded
//! per row before it is written, so a request's events touch each row once; and which rows a read
//! of `[from, to)` takes at which grain ([`segments`]). Beside them, the same rows with the
//! subjects folded together ([`totals`]: per meter × group-by values × minute, hour and day), so a
//! query across all subjects reads windows × groups rows, not subjects × windows × groups. Pure:
//! no database here.

use std::collections::BTreeMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::meter::{Aggregation, CompiledMeter};
use crate::store::StoredEvent;

/// Partial aggregates of one minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MinuteAgg {
    /// Events (COUNT) or events with a value.
    pub count: u64,
    /// Sum of values.
    pub sum: Decimal,
    /// Smallest value.
    pub min: Option<Decimal>,
    /// Largest value.
    pub max: Option<Decimal>,
    /// Latest value and its time (ms).
    pub latest: Option<(i64, Decimal)>,
    /// Distinct values (UNIQUE_COUNT only), sorted.
    pub uniques: Vec<String>,
}

impl MinuteAgg {
    /// Folds `other` in.
    pub fn merge(&mut self, other: &MinuteAgg) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        // The latest value; at the same instant the larger one, so the result does not depend on
        // the order rows are folded in (per subject, then across subjects, or across subjects
        // at ingest).
        self.latest = match (self.latest, other.latest) {
            (Some(a), Some(b)) => Some(if b.0 > a.0 || (b.0 == a.0 && b.1 > a.1) {
                b
            } else {
                a
            }),
            (a, b) => a.or(b),
        };
        for u in &other.uniques {
            if let Err(i) = self.uniques.binary_search(u) {
                self.uniques.insert(i, u.clone());
            }
        }
    }
}

/// The time a usage row covers: `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Start, Unix ms.
    pub start_ms: i64,
    /// End (exclusive), Unix ms.
    pub end_ms: i64,
}

/// One usage row read back: subject, group, the time it covers, aggregates.
pub type UsageRow = (String, BTreeMap<String, String>, Span, MinuteAgg);

/// A minute, in ms.
pub const MINUTE: i64 = 60_000;
/// An hour, in ms.
pub const HOUR: i64 = 3_600_000;
/// A day (UTC), in ms.
pub const DAY: i64 = 86_400_000;
/// The grains usage is kept at, finest first.
pub const GRAINS: [i64; 3] = [MINUTE, HOUR, DAY];

/// The key of a usage row: meter id, grain, subject, group-by values as canonical JSON, start.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UsageKey {
    /// The meter's id.
    pub meter_id: String,
    /// The row's length: [`MINUTE`], [`HOUR`] or [`DAY`].
    pub grain_ms: i64,
    /// The event's subject.
    pub subject: String,
    /// Group-by values, a JSON object with sorted keys.
    pub group_key: String,
    /// Start of the minute, hour or day (UTC), Unix ms.
    pub start_ms: i64,
}

/// Truncates ms to the minute.
pub fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000) * 60_000
}

/// The canonical text of group-by values (sorted keys), as stored in `group_key`.
pub fn group_key(group: &BTreeMap<String, String>) -> String {
    serde_json::to_string(group).unwrap_or_else(|_| "{}".into())
}

/// Group-by values back from their stored text.
pub fn parse_group_key(s: &str) -> BTreeMap<String, String> {
    serde_json::from_str(s).unwrap_or_default()
}

/// What `e` contributes to `meter`, if anything.
pub fn contribution(meter: &CompiledMeter, e: &StoredEvent) -> Option<(UsageKey, MinuteAgg)> {
    let m = &meter.meter;
    if e.event["type"].as_str() != Some(m.event_type.as_str()) {
        return None;
    }
    if let Some(from) = m.event_from
        && e.time_ms < from.timestamp_millis()
    {
        return None;
    }
    let subject = e.event["subject"].as_str().unwrap_or_default();
    let c = meter.extract(&e.event["data"]);
    let mut agg = MinuteAgg::default();
    match m.aggregation {
        Aggregation::Count => agg.count = 1,
        Aggregation::UniqueCount => {
            let u = c.unique?;
            agg.count = 1;
            agg.uniques = vec![u];
        }
        _ => {
            let v = c.value?;
            agg.count = 1;
            agg.sum = v;
            agg.min = Some(v);
            agg.max = Some(v);
            agg.latest = Some((e.time_ms, v));
        }
    }
    Some((
        UsageKey {
            meter_id: m.id.clone(),
            grain_ms: MINUTE,
            subject: subject.to_owned(),
            group_key: group_key(&c.group),
            start_ms: minute_of(e.time_ms),
        },
        agg,
    ))
}

/// The usage rows `events` add to `meters` at every grain, folded per row, in key order (the order
/// both backends write them in, so concurrent writers lock rows in one order).
pub fn fold<'a>(
    meters: &[Arc<CompiledMeter>],
    events: impl IntoIterator<Item = &'a StoredEvent>,
) -> BTreeMap<UsageKey, MinuteAgg> {
    let mut rows: BTreeMap<UsageKey, MinuteAgg> = BTreeMap::new();
    for e in events {
        for m in meters {
            if let Some((key, agg)) = contribution(m, e) {
                match rows.get_mut(&key) {
                    Some(row) => row.merge(&agg),
                    None => {
                        rows.insert(key, agg);
                    }
                }
            }
        }
    }
    with_rollups(rows)
}

/// Minute rows plus the hour and day rows they roll up into.
fn with_rollups(minutes: BTreeMap<UsageKey, MinuteAgg>) -> BTreeMap<UsageKey, MinuteAgg> {
    let mut out = BTreeMap::new();
    for grain in [HOUR, DAY] {
        for (k, a) in &minutes {
            let key = UsageKey {
                grain_ms: grain,
                start_ms: k.start_ms.div_euclid(grain) * grain,
                ..k.clone()
            };
            match out.get_mut(&key) {
                Some(row) => MinuteAgg::merge(row, a),
                None => {
                    out.insert(key, a.clone());
                }
            }
        }
    }
    out.extend(minutes);
    out
}

/// How a read of usage in `[from_ms, to_ms)` is answered: `(grain, lo, hi)` parts, each read as
/// the rows of that grain starting in `[lo, hi)` — the coarsest grain up to `coarsest` that fits,
/// finer ones only at the edges — so every minute in the range is counted exactly once.
pub fn segments(from_ms: i64, to_ms: i64, coarsest: i64) -> Vec<(i64, i64, i64)> {
    let grains: Vec<i64> = GRAINS
        .iter()
        .rev()
        .copied()
        .filter(|g| *g <= coarsest)
        .collect();
    let mut out = Vec::new();
    split(from_ms, to_ms, &grains, &mut out);
    out
}

fn split(from: i64, to: i64, grains: &[i64], out: &mut Vec<(i64, i64, i64)>) {
    if from >= to {
        return;
    }
    let Some((&g, finer)) = grains.split_first() else {
        return;
    };
    if finer.is_empty() {
        out.push((g, from, to));
        return;
    }
    // First and last whole rows of this grain inside the range (open ends stay open).
    let a = if from == i64::MIN {
        i64::MIN
    } else {
        from.div_euclid(g) * g + if from.rem_euclid(g) == 0 { 0 } else { g }
    };
    let b = if to == i64::MAX {
        i64::MAX
    } else {
        to.div_euclid(g) * g
    };
    if a < b {
        out.push((g, a, b));
        split(from, a, finer, out);
        split(b, to, finer, out);
    } else {
        split(from, to, finer, out);
    }
}

/// The parts `(grain, lo, hi)` that read every minute of the union of `ranges` once, none
/// straddling a range's end: the ranges cut at every range's ends, each piece read as
/// [`segments`] does. Sorted by grain, then start.
pub fn pieces(ranges: &[(i64, i64)]) -> Vec<(i64, i64, i64)> {
    let mut ends: Vec<i64> = ranges
        .iter()
        .filter(|(a, b)| a < b)
        .flat_map(|(a, b)| [*a, *b])
        .collect();
    ends.sort_unstable();
    ends.dedup();
    let mut sorted: Vec<(i64, i64)> = ranges.iter().copied().filter(|(a, b)| a < b).collect();
    sorted.sort_unstable();
    let mut out = Vec::new();
    let mut next = 0; // ranges starting at or before the current piece
    let mut reach = i64::MIN; // furthest end among them
    for w in ends.windows(2) {
        let (lo, hi) = (w[0], w[1]);
        while next < sorted.len() && sorted[next].0 <= lo {
            reach = reach.max(sorted[next].1);
            next += 1;
        }
        if reach >= hi {
            out.extend(segments(lo, hi, DAY));
        }
    }
    out.sort_unstable();
    out
}

/// Whether a row of `grain` starting at `start_ms` is read by one of `pieces` (from [`pieces`]).
pub fn in_pieces(pieces: &[(i64, i64, i64)], start_ms: i64, grain: i64) -> bool {
    let i = pieces.partition_point(|p| (p.0, p.1) <= (grain, start_ms));
    i > 0 && {
        let (g, lo, hi) = pieces[i - 1];
        g == grain && start_ms >= lo && start_ms < hi
    }
}

/// `pieces` of one grain joined into a few reads: pieces closer than a day's worth of rows of
/// their grain apart (24 minutes, a day, 24 days) are read as one span, the rows between them
/// dropped after the read ([`in_pieces`]); a batch of balances reads a handful of spans.
pub fn coalesce(pieces: &[(i64, i64, i64)]) -> Vec<(i64, i64, i64)> {
    let mut out: Vec<(i64, i64, i64)> = Vec::new();
    for &(g, lo, hi) in pieces {
        match out.last_mut() {
            Some(last) if last.0 == g && lo <= last.2.saturating_add(24 * g) => {
                last.2 = last.2.max(hi);
            }
            _ => out.push((g, lo, hi)),
        }
    }
    out
}

/// The subject in the keys of [`totals`] rows (never stored: totals have no subject column).
pub const ALL_SUBJECTS: &str = "";

/// Per-subject rows folded across subjects: the rows the totals tables get, keyed with
/// [`ALL_SUBJECTS`], in key order. UNIQUE_COUNT stays exact: a total keeps the union of its
/// subjects' distinct values.
pub fn totals(rows: &BTreeMap<UsageKey, MinuteAgg>) -> BTreeMap<UsageKey, MinuteAgg> {
    let mut out: BTreeMap<UsageKey, MinuteAgg> = BTreeMap::new();
    for (k, a) in rows {
        let key = UsageKey {
            meter_id: k.meter_id.clone(),
            grain_ms: k.grain_ms,
            subject: ALL_SUBJECTS.to_owned(),
            group_key: k.group_key.clone(),
            start_ms: k.start_ms,
        };
        match out.get_mut(&key) {
            Some(row) => row.merge(a),
            None => {
                out.insert(key, a.clone());
            }
        }
    }
    out
}

/// Folds already computed (minute) contributions per row and adds their rollups, in key order.
pub fn fold_contributions<'a>(
    contributions: impl IntoIterator<Item = &'a (UsageKey, MinuteAgg)>,
) -> BTreeMap<UsageKey, MinuteAgg> {
    let mut rows: BTreeMap<UsageKey, MinuteAgg> = BTreeMap::new();
    for (key, agg) in contributions {
        match rows.get_mut(key) {
            Some(row) => row.merge(agg),
            None => {
                rows.insert(key.clone(), agg.clone());
            }
        }
    }
    with_rollups(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every minute of `[from, to)` is in exactly one part, and parts are whole rows.
    fn check(from: i64, to: i64, coarsest: i64) {
        let parts = segments(from, to, coarsest);
        for (g, lo, hi) in &parts {
            assert!(*g <= coarsest);
            if *g > MINUTE {
                assert_eq!(lo.rem_euclid(*g), 0, "{parts:?}");
                assert_eq!(hi.rem_euclid(*g), 0, "{parts:?}");
            }
        }
        let mut m = minute_of(from)
            + if from.rem_euclid(MINUTE) == 0 {
                0
            } else {
                MINUTE
            };
        while m < to {
            let n = parts
                .iter()
                .filter(|(g, lo, hi)| {
                    let start = m.div_euclid(*g) * *g;
                    start >= *lo && start < *hi && (*g == MINUTE || start + *g <= to)
                })
                .count();
            assert_eq!(n, 1, "minute {m} in {n} parts of {parts:?}");
            m += MINUTE;
        }
    }

    #[test]
    fn a_range_is_read_at_the_coarsest_grain_that_fits_and_minutes_at_the_edges() {
        let d = 1_700_006_400_000; // a UTC midnight
        check(d + 7 * MINUTE, d + 3 * DAY + 5 * HOUR + 2 * MINUTE, DAY);
        check(d + 30_000, d + HOUR + 90_000, DAY);
        check(d, d + 2 * DAY, HOUR);
        check(d - 3 * MINUTE, d + 3 * MINUTE, MINUTE);
        assert_eq!(segments(d, d + 2 * DAY, DAY), vec![(DAY, d, d + 2 * DAY)]);
        assert_eq!(
            segments(i64::MIN, i64::MAX, DAY),
            vec![(DAY, i64::MIN, i64::MAX)]
        );
        let parts = segments(d + 5 * MINUTE, i64::MAX, DAY);
        assert_eq!(parts[0], (DAY, d + DAY, i64::MAX));
    }

    #[test]
    fn ranges_are_read_once_in_pieces_that_never_straddle_their_ends() {
        let d = 1_700_006_400_000;
        let ranges = [
            (d + 7 * MINUTE, d + 3 * DAY + 5 * HOUR),
            (d + DAY + 2 * HOUR + 3 * MINUTE, d + 3 * DAY + 5 * HOUR),
            (d + 10 * DAY, d + 11 * DAY),
            (d + 5 * MINUTE, d + 5 * MINUTE),
        ];
        let pieces = pieces(&ranges);
        // Every minute of the union in one piece, minutes outside in none.
        let mut m = d;
        while m < d + 12 * DAY {
            let inside = ranges.iter().any(|(a, b)| m >= *a && m < *b);
            let n = pieces
                .iter()
                .filter(|(g, lo, hi)| {
                    let start = m.div_euclid(*g) * *g;
                    start >= *lo && start < *hi
                })
                .count();
            assert_eq!(n, usize::from(inside), "minute {m}");
            // A piece's rows never cross a range's end.
            for (g, lo, hi) in &pieces {
                for (a, b) in ranges {
                    for end in [a, b] {
                        assert!(!(*lo < end && end < *hi && end.rem_euclid(*g) != 0));
                    }
                }
            }
            let start_of = |g: i64| m.div_euclid(g) * g;
            let read = GRAINS
                .iter()
                .filter(|g| in_pieces(&pieces, start_of(**g), **g))
                .count();
            assert_eq!(read, usize::from(inside), "minute {m}");
            m += MINUTE;
        }
        // Few reads: the day pieces of the two overlapping ranges and the separate one join.
        let reads = coalesce(&pieces);
        assert!(reads.len() <= 6, "{reads:?}");
        assert_eq!(reads.iter().filter(|r| r.0 == DAY).count(), 1);
    }

    #[test]
    fn totals_fold_subjects_and_keep_uniques_exact() {
        let key = |subject: &str, group: &str| UsageKey {
            meter_id: "m".into(),
            grain_ms: MINUTE,
            subject: subject.into(),
            group_key: group.into(),
            start_ms: 0,
        };
        let agg = |v: i64, t: i64, u: &[&str]| MinuteAgg {
            count: 1,
            sum: Decimal::from(v),
            min: Some(Decimal::from(v)),
            max: Some(Decimal::from(v)),
            latest: Some((t, Decimal::from(v))),
            uniques: u.iter().map(|s| s.to_string()).collect(),
        };
        let rows: BTreeMap<UsageKey, MinuteAgg> = [
            (key("a", "{}"), agg(2, 5, &["x", "y"])),
            (key("b", "{}"), agg(7, 5, &["y", "z"])),
            (key("c", "{}"), agg(1, 3, &["x"])),
            (key("a", "{\"r\":\"1\"}"), agg(4, 1, &[])),
        ]
        .into_iter()
        .collect();
        let t = totals(&rows);
        assert_eq!(t.len(), 2);
        let all = &t[&key(ALL_SUBJECTS, "{}")];
        assert_eq!(all.count, 3);
        assert_eq!(all.sum, Decimal::from(10));
        assert_eq!((all.min, all.max), (Some(1.into()), Some(7.into())));
        // Same instant in two subjects: the larger value, whatever the order.
        assert_eq!(all.latest, Some((5, Decimal::from(7))));
        assert_eq!(all.uniques, vec!["x", "y", "z"]);
    }

    #[test]
    fn rollups_carry_the_minutes_totals() {
        let key = |start_ms| UsageKey {
            meter_id: "m".into(),
            grain_ms: MINUTE,
            subject: "s".into(),
            group_key: "{}".into(),
            start_ms,
        };
        let agg = |v: i64| MinuteAgg {
            count: 1,
            sum: Decimal::from(v),
            ..MinuteAgg::default()
        };
        let d = 1_700_006_400_000;
        let rows = fold_contributions(&[
            (key(d), agg(2)),
            (key(d + MINUTE), agg(3)),
            (key(d + HOUR), agg(5)),
        ]);
        let sum = |g: i64| -> Decimal {
            rows.iter()
                .filter(|(k, _)| k.grain_ms == g)
                .map(|(_, a)| a.sum)
                .sum()
        };
        assert_eq!(
            (sum(MINUTE), sum(HOUR), sum(DAY)),
            (10.into(), 10.into(), 10.into())
        );
        assert_eq!(rows.iter().filter(|(k, _)| k.grain_ms == HOUR).count(), 2);
    }
}
