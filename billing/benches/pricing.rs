//! Rating speed: `pricing::rate` on a graduated price with 4 tiers (detailed lines, rounding, a
//! percentage discount and a maximum commitment) beside a raw loop — the same graduated total
//! computed inline with `Decimal` arithmetic, no lines, no allocation: the floor the engine's
//! structure costs over. One core, one thread.
//!
//! Run: `cargo bench -p tollgate-billing --bench pricing [-- LINES]` (default 2,000,000).

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use rust_decimal::Decimal;
use tollgate_billing::pricing::*;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn tiers() -> Vec<Tier> {
    vec![
        Tier {
            up_to: Some(d("1000")),
            flat: Some(d("10")),
            unit: Some(d("0.30")),
        },
        Tier {
            up_to: Some(d("5000")),
            flat: None,
            unit: Some(d("0.20")),
        },
        Tier {
            up_to: Some(d("20000")),
            flat: None,
            unit: Some(d("0.10")),
        },
        Tier {
            up_to: None,
            flat: None,
            unit: Some(d("0.05")),
        },
    ]
}

/// Usage quantities spread over all four tiers (0 … 29,999 units, some with fractions).
fn quantities(n: usize) -> Vec<Decimal> {
    (0..n)
        .map(|i| Decimal::new(((i * 7919) % 3_000_000) as i64, 2))
        .collect()
}

fn engine(
    price: &Price,
    discounts: &Discounts,
    commitments: &Commitments,
    qs: &[Decimal],
) -> (f64, Decimal, usize) {
    let start = Instant::now();
    let mut total = Decimal::ZERO;
    let mut detailed = 0;
    for q in qs {
        let rating = rate(&RatingInput {
            currency: Currency::USD,
            price,
            discounts,
            commitments,
            quantity: *q,
            pre_period_quantity: Decimal::ZERO,
            previously_billed: Decimal::ZERO,
            first_in_period: true,
            last_in_period: true,
        })
        .unwrap();
        detailed += rating.lines.len();
        total += black_box(rating).total();
    }
    (start.elapsed().as_secs_f64(), total, detailed)
}

fn raw(tiers: &[Tier], qs: &[Decimal]) -> (f64, Decimal) {
    let currency = Currency::USD;
    let start = Instant::now();
    let mut total = Decimal::ZERO;
    for q in qs {
        let q = black_box(*q);
        let mut lower = Decimal::ZERO;
        for (i, t) in tiers.iter().enumerate() {
            if i > 0 && lower >= q {
                break;
            }
            let upper = t.up_to.map_or(q, |u| u.min(q));
            if let Some(f) = t.flat {
                total += f;
            }
            if let Some(u) = t.unit {
                total += currency.round((upper - lower) * u);
            }
            match t.up_to {
                Some(u) => lower = u,
                None => break,
            }
        }
    }
    (start.elapsed().as_secs_f64(), total)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let qs = quantities(n);
    let tiers = tiers();
    let price = Price::Tiered {
        mode: TierMode::Graduated,
        tiers: tiers.clone(),
    };
    let none = Discounts::default();
    let no_commitments = Commitments::default();
    let discounts = Discounts {
        percentage: Some(d("10")),
        usage: None,
    };
    let capped = Commitments {
        minimum: Some(d("50")),
        maximum: Some(d("2500")),
    };

    // Warm-up.
    engine(&price, &none, &no_commitments, &qs[..n.min(100_000)]);
    raw(&tiers, &qs[..n.min(100_000)]);

    let (t_raw, raw_total) = raw(&tiers, &qs);
    let (t_plain, plain_total, plain_lines) = engine(&price, &none, &no_commitments, &qs);
    let (t_full, _, full_lines) = engine(&price, &discounts, &capped, &qs);
    assert_eq!(
        plain_total, raw_total,
        "the engine and the raw loop must agree"
    );

    let rate_of = |t: f64| n as f64 / t;
    println!("rating {n} usage lines, graduated price with 4 tiers, one thread");
    println!(
        "  raw loop (total only, no lines)        {:>12.0} lines/s",
        rate_of(t_raw)
    );
    println!(
        "  pricing::rate                          {:>12.0} lines/s  ({:.2}x raw; {:.1} detailed lines each)",
        rate_of(t_plain),
        t_raw / t_plain,
        plain_lines as f64 / n as f64
    );
    println!(
        "  pricing::rate + 10% off + min/max      {:>12.0} lines/s  ({:.2}x raw; {:.1} detailed lines each)",
        rate_of(t_full),
        t_raw / t_full,
        full_lines as f64 / n as f64
    );
}
