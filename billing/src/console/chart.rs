//! SVG charts drawn on the server: a time series (one line per series, a dot per point with its
//! value in a `<title>`) and horizontal bars. Colours come from the stylesheet's `s0`…`s7`
//! classes (no inline styles: the console's Content-Security-Policy forbids them); labels are
//! escaped like any other text.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::layout::quantity_f64;

/// How many distinct colours there are.
pub const COLOURS: usize = 8;

/// One line of a time series.
pub struct Series {
    /// Its name (legend).
    pub name: String,
    /// `(time in Unix ms, value)`, in time order.
    pub points: Vec<(i64, f64)>,
}

const W: f64 = 800.0;
const H: f64 = 240.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// A round maximum at or above `v` (1, 2 or 5 × 10ⁿ), and never zero.
pub fn nice_max(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn label_time(ms: i64, span_ms: i64) -> String {
    let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    if span_ms <= 2 * 86_400_000 {
        t.format("%H:%M").to_string()
    } else {
        t.format("%m-%d").to_string()
    }
}

/// A time-series chart of `series` over `[from_ms, to_ms]`, with its legend. `caption` names it
/// for screen readers.
pub fn time_series(caption: &str, series: &[Series], from_ms: i64, to_ms: i64) -> Markup {
    let span = (to_ms - from_ms).max(1);
    let max = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let x = |ms: i64| LEFT + (ms - from_ms) as f64 / span as f64 * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - v / max) * (H - TOP - BOTTOM);
    let ticks: Vec<f64> = (0..=4).map(|i| max * i as f64 / 4.0).collect();
    let xticks: Vec<i64> = (0..=5).map(|i| from_ms + span * i / 5).collect();
    html! {
        div.chart-wrap {
            svg.chart viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(caption) {
                title { (caption) }
                @for t in &ticks {
                    line.grid x1=(LEFT) x2=(W - RIGHT) y1=(y(*t)) y2=(y(*t)) {}
                    text x=(LEFT - 6.0) y=(y(*t) + 4.0) text-anchor="end" { (quantity_f64(*t)) }
                }
                line.axis x1=(LEFT) x2=(LEFT) y1=(TOP) y2=(H - BOTTOM) {}
                line.axis x1=(LEFT) x2=(W - RIGHT) y1=(H - BOTTOM) y2=(H - BOTTOM) {}
                @for (i, t) in xticks.iter().enumerate() {
                    @let anchor = if i == 0 { "start" } else if i + 1 == xticks.len() { "end" } else { "middle" };
                    text x=(x(*t)) y=(H - 8.0) text-anchor=(anchor) { (label_time(*t, span)) }
                }
                @for (i, s) in series.iter().enumerate() {
                    @let class = format!("s{}", i % COLOURS);
                    @if s.points.len() > 1 {
                        polyline class=(format!("line {class}")) points=(
                            s.points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect::<Vec<_>>().join(" ")
                        ) {}
                    }
                    @for (t, v) in &s.points {
                        @let when = DateTime::<Utc>::from_timestamp_millis(*t).unwrap_or_default().format("%Y-%m-%d %H:%M").to_string();
                        circle class=(class) cx=(format!("{:.1}", x(*t))) cy=(format!("{:.1}", y(*v))) r="3"
                            data-k=(format!("{} {when}", s.name)) data-v=(quantity_f64(*v)) {
                            title { (s.name) " " (when) ": " (quantity_f64(*v)) }
                        }
                    }
                }
                @if series.iter().all(|s| s.points.is_empty()) {
                    text x=(W / 2.0) y=(H / 2.0) text-anchor="middle" { "no usage in this range" }
                }
            }
            div.legend {
                @for (i, s) in series.iter().enumerate() {
                    span class=(format!("s{}", i % COLOURS)) { (s.name) }
                }
            }
            div.chart-readout aria-live="polite" {}
        }
    }
}

/// Horizontal bars, largest first as given: `(label, value)`.
pub fn bars(caption: &str, items: &[(String, f64)]) -> Markup {
    let max = nice_max(items.iter().map(|i| i.1).fold(0.0, f64::max));
    let row = 22.0;
    let h = row * items.len().max(1) as f64 + 8.0;
    let label_w = 220.0;
    let bar_w = W - label_w - 90.0;
    html! {
        svg.chart viewBox=(format!("0 0 {W} {h}")) role="img" aria-label=(caption) {
            title { (caption) }
            @for (i, (label, v)) in items.iter().enumerate() {
                @let top = 4.0 + row * i as f64;
                text x=(label_w - 8.0) y=(top + 14.0) text-anchor="end" { (truncate(label, 32)) }
                rect class="bar s0" x=(label_w) y=(top + 3.0) height=(row - 8.0)
                    width=(format!("{:.1}", (v / max * bar_w).max(1.0))) data-k=(label) data-v=(quantity_f64(*v)) {
                    title { (label) ": " (quantity_f64(*v)) }
                }
                text x=(label_w + (v / max * bar_w).max(1.0) + 6.0) y=(top + 14.0) { (quantity_f64(*v)) }
            }
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxima_are_round_and_labels_escaped() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(5.0), 5.0);
        let svg = bars("c", &[("<script>x</script>".into(), 3.0)]).into_string();
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"));
    }
}
