//! Entitlements' time-driven events, as [`DueWork`]s: usage-period boundaries (the automatic
//! reset: usage back to zero, grants rolled over, `issueAfterReset` issued again) and grants
//! becoming effective, expiring and refilling at their recurrence. The balance engine derives all
//! of these from time, so these works only report what the advance crossed — except that a reset
//! records its `entitlements.reset` notifications ([`crate::notification::reset`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use chrono::{DateTime, Duration, Utc};
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Done, Due, DueQueue, DueWork, Happening};
use crate::entitlement::{Entitlement, Grant};
use crate::store::{Store, StoreError};

/// One recurring (or one-off) source of due items: its next instant after a given one.
struct Series {
    next: Box<dyn Fn(DateTime<Utc>) -> Option<DateTime<Utc>> + Send>,
    /// The item at an instant (`type` and the rest).
    detail: Box<dyn Fn(DateTime<Utc>) -> Value + Send>,
}

/// Many series merged in time order within `(after, until]`.
struct SeriesQueue {
    series: Vec<Series>,
    heap: BinaryHeap<Reverse<(DateTime<Utc>, usize)>>,
    until: DateTime<Utc>,
}

impl SeriesQueue {
    fn new(series: Vec<Series>, after: DateTime<Utc>, until: DateTime<Utc>) -> SeriesQueue {
        let heap = series
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                (s.next)(after)
                    .filter(|t| *t > after && *t <= until)
                    .map(|t| Reverse((t, i)))
            })
            .collect();
        SeriesQueue {
            series,
            heap,
            until,
        }
    }
}

impl DueQueue for SeriesQueue {
    fn peek(&self) -> Option<DateTime<Utc>> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    fn pop(&mut self) -> Vec<Due> {
        let Some(at) = self.peek() else {
            return Vec::new();
        };
        let mut indices = Vec::new();
        while let Some(Reverse((t, i))) = self.heap.peek().copied()
            && t == at
        {
            self.heap.pop();
            indices.push(i);
        }
        indices.sort_unstable();
        indices
            .into_iter()
            .map(|i| {
                let s = &self.series[i];
                if let Some(n) = (s.next)(at).filter(|n| *n > at && *n <= self.until) {
                    self.heap.push(Reverse((n, i)));
                }
                Due {
                    at,
                    detail: (s.detail)(at),
                }
            })
            .collect()
    }
}

/// Items reported as they are: `detail` holds `type` and the rest.
fn report(at: DateTime<Utc>, items: Vec<Due>) -> Done {
    let happened = items
        .into_iter()
        .filter_map(|d| {
            let Value::Object(mut detail) = d.detail else {
                return None;
            };
            let kind = detail.remove("type")?.as_str()?.to_owned();
            Some(Happening { at, kind, detail })
        })
        .collect();
    Done {
        happened,
        wrote: false,
    }
}

/// A decimal as a JSON number, as the API shows amounts.
fn number(d: rust_decimal::Decimal) -> Value {
    d.normalize()
        .to_string()
        .parse::<serde_json::Number>()
        .map_or(Value::Null, Value::Number)
}

/// Whose entitlement, for reports.
fn owner_of(e: &Entitlement) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("entitlementId".into(), json!(e.id));
    m.insert("featureKey".into(), json!(e.feature_key));
    for (k, v) in [
        ("customerId", &e.customer_id),
        ("customerKey", &e.customer_key),
        ("subjectKey", &e.subject_key),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    m
}

/// The report of `e`'s usage period ending at `at`: the period began at the previous grid point,
/// or where usage is measured from, or at a manual reset, whichever is latest.
fn ended_period(e: &Entitlement, at: DateTime<Utc>) -> Value {
    let (interval, anchor, measure_from) = e.period_basis();
    let mut from = interval
        .period_at(anchor, at - Duration::milliseconds(1))
        .0
        .max(measure_from);
    if let Some(r) = e.resets.iter().map(|r| r.at).filter(|r| *r < at).max() {
        from = from.max(r);
    }
    let mut detail = owner_of(e);
    detail.insert("type".into(), json!("entitlement.reset"));
    detail.insert("endedPeriod".into(), json!({"from": from, "to": at}));
    Value::Object(detail)
}

/// The detail key marking a reset some rule is notified of (removed before it is reported).
const NOTIFY: &str = "_notify";

/// Metered entitlements' usage-period boundaries: `entitlement.reset`, with the period that
/// ended (`endedPeriod`).
pub struct UsagePeriods;

impl DueWork for UsagePeriods {
    fn name(&self) -> &'static str {
        "entitlement usage periods"
    }

    fn plan<'a>(
        &'a self,
        store: &'a Store,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Box<dyn DueQueue>, StoreError>> {
        Box::pin(async move {
            // Whether resets notify anyone: asked once per plan, not at each of (maybe) thousands
            // of instants.
            let notify = !crate::notification::outbox::rules_and_channels(
                store,
                crate::notification::kinds::RESET,
            )
            .await?
            .0
            .is_empty();
            let series = store
                .list_entities::<Entitlement>("entitlement")
                .await?
                .into_iter()
                .filter(|e| e.kind == "metered" && e.usage_period.is_some())
                .map(|e| {
                    let e = std::sync::Arc::new(e);
                    let of = e.clone();
                    Series {
                        next: Box::new(move |t| Some(e.next_period_boundary(t))),
                        detail: Box::new(move |at| {
                            let mut d = ended_period(&of, at);
                            if notify {
                                d[NOTIFY] = json!(true);
                            }
                            d
                        }),
                    }
                })
                .collect();
            Ok(Box::new(SeriesQueue::new(series, after, until)) as Box<dyn DueQueue>)
        })
    }

    fn run<'a>(
        &'a self,
        store: &'a Store,
        at: DateTime<Utc>,
        items: Vec<Due>,
    ) -> BoxFuture<'a, Result<Done, StoreError>> {
        Box::pin(async move {
            // `entitlements.reset` notifications, recorded once per rule, entitlement and instant.
            let mut items = items;
            let mut notify = Vec::new();
            for d in &mut items {
                if let Some(o) = d.detail.as_object_mut()
                    && o.remove(NOTIFY).is_some()
                {
                    notify.push(d.detail.clone());
                }
            }
            let recorded = if notify.is_empty() {
                0
            } else {
                crate::notification::reset::record_resets(store, at, &notify).await?
            };
            let mut done = report(at, items);
            done.wrote = recorded > 0;
            Ok(done)
        })
    }
}

/// Grants: `grant.effective`, `grant.expired` and `grant.recurred` (refilled to its amount).
pub struct GrantTimes;

impl DueWork for GrantTimes {
    fn name(&self) -> &'static str {
        "grant times"
    }

    fn plan<'a>(
        &'a self,
        store: &'a Store,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Box<dyn DueQueue>, StoreError>> {
        Box::pin(async move {
            let mut series = Vec::new();
            for g in store.list_entities::<Grant>("grant").await? {
                let detail = |kind: &'static str| -> Box<dyn Fn(DateTime<Utc>) -> Value + Send> {
                    let v = json!({"type": kind, "grantId": g.id, "entitlementId": g.entitlement_id,
                                   "amount": number(g.amount)});
                    Box::new(move |_| v.clone())
                };
                // Nothing happens to a grant once it is voided.
                let live = {
                    let voided = g.voided_at;
                    move |t: DateTime<Utc>| voided.is_none_or(|v| t < v)
                };
                let effective = g.effective_at;
                series.push(Series {
                    next: Box::new(move |t| Some(effective).filter(|e| *e > t && live(*e))),
                    detail: detail("grant.effective"),
                });
                if let Some(expires) = g.expires_at {
                    series.push(Series {
                        next: Box::new(move |t| Some(expires).filter(|e| *e > t && live(*e))),
                        detail: detail("grant.expired"),
                    });
                }
                if g.recurrence.is_some() {
                    let grant = g.clone();
                    series.push(Series {
                        next: Box::new(move |t| {
                            grant
                                .next_recurrence(t)
                                .filter(|n| grant.active_at(*n - Duration::milliseconds(1)))
                                .filter(|n| grant.active_at(*n))
                        }),
                        detail: detail("grant.recurred"),
                    });
                }
            }
            Ok(Box::new(SeriesQueue::new(series, after, until)) as Box<dyn DueQueue>)
        })
    }

    fn run<'a>(
        &'a self,
        _store: &'a Store,
        at: DateTime<Utc>,
        items: Vec<Due>,
    ) -> BoxFuture<'a, Result<Done, StoreError>> {
        Box::pin(async move { Ok(report(at, items)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn series_merge_in_time_order_within_the_window() {
        let every = |h: i64, name: &'static str| Series {
            next: Box::new(move |t: DateTime<Utc>| {
                let step = Duration::hours(h).num_milliseconds();
                let ms = (t.timestamp_millis().div_euclid(step) + 1) * step;
                DateTime::from_timestamp_millis(ms)
            }),
            detail: Box::new(move |_| json!(name)),
        };
        let mut q = SeriesQueue::new(
            vec![every(2, "two"), every(3, "three")],
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T06:00:00Z"),
        );
        let mut seen = Vec::new();
        while let Some(at) = q.peek() {
            let items: Vec<Value> = q.pop().into_iter().map(|d| d.detail).collect();
            seen.push((at.format("%H").to_string(), items));
        }
        let names = |v: &[&str]| v.iter().map(|s| json!(s)).collect::<Vec<_>>();
        assert_eq!(
            seen,
            vec![
                ("02".into(), names(&["two"])),
                ("03".into(), names(&["three"])),
                ("04".into(), names(&["two"])),
                ("06".into(), names(&["two", "three"])),
            ]
        );
    }
}
