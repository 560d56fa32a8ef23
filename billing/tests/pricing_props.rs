//! Property tests of the rating engine (`tollgate_billing::pricing`):
//! * graduated pricing bills the sum of each tier's contribution, computed independently;
//! * a period split into several lines bills the same total as one line;
//! * a maximum spend commitment is never exceeded, however the period is split.
//!
//! Amounts are whole cents and quantities whole units, so that every product is exact and the
//! split property is not blurred by per-line rounding (which OpenMeter applies too).

#![allow(missing_docs)]

use proptest::prelude::*;
use rust_decimal::Decimal;
use tollgate_billing::pricing::*;

fn cents() -> impl Strategy<Value = Decimal> {
    (0i64..10_000).prop_map(|c| Decimal::new(c, 2))
}

/// 1–5 tiers with ascending bounds, the last open-ended, each with a unit and/or flat price.
fn tiers() -> impl Strategy<Value = Vec<Tier>> {
    prop::collection::vec(
        (
            1i64..500,
            prop::option::of(cents()),
            prop::option::of(cents()),
        ),
        1..=5,
    )
    .prop_map(|raw| {
        let n = raw.len();
        let mut bound = Decimal::ZERO;
        raw.into_iter()
            .enumerate()
            .map(|(i, (width, flat, unit))| {
                bound += Decimal::from(width);
                let unit = if flat.is_none() && unit.is_none() {
                    Some(Decimal::ONE)
                } else {
                    unit
                };
                Tier {
                    up_to: (i + 1 < n).then_some(bound),
                    flat,
                    unit,
                }
            })
            .collect()
    })
}

fn price() -> impl Strategy<Value = Price> {
    prop_oneof![
        cents().prop_map(|amount| Price::Flat {
            amount,
            payment_term: PaymentTerm::InAdvance
        }),
        cents().prop_map(|amount| Price::Flat {
            amount,
            payment_term: PaymentTerm::InArrears
        }),
        cents().prop_map(|amount| Price::Unit { amount }),
        tiers().prop_map(|tiers| Price::Tiered {
            mode: TierMode::Graduated,
            tiers
        }),
        tiers().prop_map(|tiers| Price::Tiered {
            mode: TierMode::Volume,
            tiers
        }),
        (cents(), 1i64..50).prop_map(|(amount, size)| Price::Package {
            amount,
            quantity_per_package: Decimal::from(size)
        }),
        (0i64..300).prop_map(|m| Price::Dynamic {
            multiplier: Decimal::new(m, 2)
        }),
    ]
}

/// A period's usage split into 1–6 lines of whole units.
fn splits() -> impl Strategy<Value = Vec<Decimal>> {
    prop::collection::vec((0i64..800).prop_map(Decimal::from), 1..=6)
}

/// Rates a period line by line, carrying usage and billed amounts forward; returns each line's
/// total.
fn rate_split(
    price: &Price,
    discounts: &Discounts,
    commitments: &Commitments,
    lines: &[Decimal],
) -> Vec<Decimal> {
    let mut pre = Decimal::ZERO;
    let mut billed = Decimal::ZERO;
    let mut totals = Vec::new();
    for (i, quantity) in lines.iter().enumerate() {
        let rating = rate(&RatingInput {
            currency: Currency::USD,
            price,
            discounts,
            commitments,
            quantity: *quantity,
            pre_period_quantity: pre,
            previously_billed: billed,
            first_in_period: i == 0,
            last_in_period: i + 1 == lines.len(),
        })
        .expect("a valid price rates");
        pre += quantity;
        billed += rating.total();
        totals.push(rating.total());
    }
    totals
}

/// What one tier contributes to a graduated price for `q` units, from the tier's definition.
fn tier_contribution(tiers: &[Tier], i: usize, q: Decimal) -> Decimal {
    let lower = if i == 0 {
        Decimal::ZERO
    } else {
        tiers[i - 1].up_to.unwrap_or_default()
    };
    let in_tier = match tiers[i].up_to {
        Some(upper) => q.min(upper) - lower,
        None => q - lower,
    };
    let entered = in_tier > Decimal::ZERO || (i == 0);
    let flat = if entered {
        tiers[i].flat.unwrap_or_default()
    } else {
        Decimal::ZERO
    };
    flat + in_tier.max(Decimal::ZERO) * tiers[i].unit.unwrap_or_default()
}

proptest! {
    #[test]
    fn graduated_is_the_sum_of_tier_contributions(tiers in tiers(), q in 0i64..3000) {
        let q = Decimal::from(q);
        let price = Price::Tiered { mode: TierMode::Graduated, tiers: tiers.clone() };
        let rating = rate(&RatingInput::whole_period(Currency::USD, &price, q)).expect("rates");
        let expected: Decimal = (0..tiers.len()).map(|i| tier_contribution(&tiers, i, q)).sum();
        prop_assert_eq!(rating.total(), expected);
    }

    #[test]
    fn a_split_period_bills_the_same_as_one_line(
        price in price(),
        lines in splits(),
        free in prop::option::of((0i64..1000).prop_map(Decimal::from)),
        minimum in prop::option::of(cents()),
        maximum in prop::option::of((0i64..1_000_000).prop_map(|c| Decimal::new(c, 2))),
    ) {
        let discounts = Discounts {
            percentage: None,
            usage: if price.is_flat() { None } else { free },
        };
        let commitments = Commitments {
            minimum: minimum.filter(|m| maximum.is_none_or(|max| *m <= max)),
            maximum,
        };
        let total: Decimal = lines.iter().copied().sum();
        let split: Decimal = rate_split(&price, &discounts, &commitments, &lines).into_iter().sum();
        let whole: Decimal = rate_split(&price, &discounts, &commitments, &[total]).into_iter().sum();
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn a_maximum_commitment_is_never_exceeded(
        price in price().prop_filter("usage prices carry commitments", |p| !p.is_flat()),
        lines in splits(),
        maximum in (0i64..100_000).prop_map(|c| Decimal::new(c, 2)),
        percentage in prop::option::of((0i64..=100).prop_map(Decimal::from)),
    ) {
        let discounts = Discounts { percentage, usage: None };
        let commitments = Commitments { minimum: None, maximum: Some(maximum) };
        let mut billed = Decimal::ZERO;
        for total in rate_split(&price, &discounts, &commitments, &lines) {
            prop_assert!(total >= Decimal::ZERO, "a line never bills a negative amount");
            billed += total;
            prop_assert!(billed <= maximum, "billed {} above the maximum {}", billed, maximum);
        }
    }
}
