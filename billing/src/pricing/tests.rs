//! The engine against the worked examples of Kong's and OpenMeter's docs and OpenMeter's rating
//! rules, one behaviour per test.

use rust_decimal::Decimal;

use super::*;

fn d(s: &str) -> Decimal {
    s.parse().expect("decimal literal")
}

fn tier(up_to: Option<&str>, flat: Option<&str>, unit: Option<&str>) -> Tier {
    Tier {
        up_to: up_to.map(d),
        flat: flat.map(d),
        unit: unit.map(d),
    }
}

/// The docs' tiers: 0–1,000 @ $0.30, 1,001–5,000 @ $0.20, 5,001+ @ $0.10.
fn docs_tiers(mode: TierMode) -> Price {
    Price::Tiered {
        mode,
        tiers: vec![
            tier(Some("1000"), None, Some("0.30")),
            tier(Some("5000"), None, Some("0.20")),
            tier(None, None, Some("0.10")),
        ],
    }
}

fn whole(price: &Price, quantity: &str) -> Rating {
    rate(&RatingInput::whole_period(
        Currency::USD,
        price,
        d(quantity),
    ))
    .expect("rates")
}

fn kinds(r: &Rating) -> Vec<(LineKind, Decimal, Decimal)> {
    r.lines
        .iter()
        .map(|l| (l.kind, l.quantity, l.total()))
        .collect()
}

#[test]
fn graduated_docs_example_costs_1200() {
    let r = whole(&docs_tiers(TierMode::Graduated), "6000");
    assert_eq!(r.total(), d("1200"));
    assert_eq!(
        kinds(&r),
        [
            (LineKind::TierUsage(0), d("1000"), d("300")),
            (LineKind::TierUsage(1), d("4000"), d("800")),
            (LineKind::TierUsage(2), d("1000"), d("100")),
        ]
    );
}

#[test]
fn volume_docs_example_costs_600() {
    let r = whole(&docs_tiers(TierMode::Volume), "6000");
    assert_eq!(r.total(), d("600"));
    assert_eq!(kinds(&r), [(LineKind::VolumeUsage(2), d("6000"), d("600"))]);
}

#[test]
fn volume_tier_bound_is_inclusive() {
    let r = whole(&docs_tiers(TierMode::Volume), "1000");
    assert_eq!(kinds(&r), [(LineKind::VolumeUsage(0), d("1000"), d("300"))]);
}

#[test]
fn package_rounds_up_to_whole_packages() {
    let price = Price::Package {
        amount: d("10"),
        quantity_per_package: d("20"),
    };
    for (qty, total) in [("20.1", "20"), ("98", "50"), ("0", "0"), ("20", "10")] {
        assert_eq!(whole(&price, qty).total(), d(total), "{qty} units");
    }
    assert_eq!(whole(&price, "20.1").lines[0].quantity, d("2"));
}

#[test]
fn usage_discount_comes_before_the_percentage_discount() {
    // 1,000 units, 900 free, $0.10 each, 10 % off: (1000 − 900) × 0.10 × 0.9 = $9.
    let price = Price::Unit { amount: d("0.10") };
    let discounts = Discounts {
        percentage: Some(d("10")),
        usage: Some(d("900")),
    };
    let r = rate(&RatingInput {
        discounts: &discounts,
        ..RatingInput::whole_period(Currency::USD, &price, d("1000"))
    })
    .expect("rates");
    assert_eq!(r.total(), d("9"));
    assert_eq!(r.lines[0].quantity, d("100"));
    assert_eq!(r.discounts_total(), d("1"));
    assert_eq!(
        r.usage_discount,
        Some(UsageDiscountApplied {
            quantity: d("900"),
            pre_period_quantity: d("0"),
        })
    );
}

#[test]
fn usage_discount_is_used_up_by_earlier_usage_first() {
    let price = Price::Unit { amount: d("1") };
    let discounts = Discounts {
        percentage: None,
        usage: Some(d("100")),
    };
    let r = rate(&RatingInput {
        discounts: &discounts,
        pre_period_quantity: d("60"),
        first_in_period: false,
        ..RatingInput::whole_period(Currency::USD, &price, d("50"))
    })
    .expect("rates");
    // 40 free units remain for this line: 10 billable.
    assert_eq!(r.total(), d("10"));
}

#[test]
fn graduated_flat_prices_bill_when_a_tier_is_entered() {
    let price = Price::Tiered {
        mode: TierMode::Graduated,
        tiers: vec![
            tier(Some("10"), Some("5"), None),
            tier(None, Some("7"), Some("1")),
        ],
    };
    // No usage still bills the first tier's flat price.
    assert_eq!(
        kinds(&whole(&price, "0")),
        [(LineKind::TierFlat(0), d("1"), d("5"))]
    );
    // Crossing into tier 2 bills its flat price and its units.
    assert_eq!(
        kinds(&whole(&price, "12")),
        [
            (LineKind::TierFlat(0), d("1"), d("5")),
            (LineKind::TierUsage(1), d("2"), d("2")),
            (LineKind::TierFlat(1), d("1"), d("7")),
        ]
    );
    // A later line already inside tier 2 does not bill its flat price again, nor tier 1's.
    let later = rate(&RatingInput {
        pre_period_quantity: d("12"),
        first_in_period: false,
        ..RatingInput::whole_period(Currency::USD, &price, d("3"))
    })
    .expect("rates");
    assert_eq!(kinds(&later), [(LineKind::TierUsage(1), d("3"), d("3"))]);
}

#[test]
fn graduated_tiers_at_unit_price_zero_still_get_a_line() {
    let price = Price::Tiered {
        mode: TierMode::Graduated,
        tiers: vec![
            tier(Some("100"), None, Some("0")),
            tier(None, None, Some("0.01")),
        ],
    };
    assert_eq!(
        kinds(&whole(&price, "150")),
        [
            (LineKind::TierUsage(0), d("100"), d("0")),
            (LineKind::TierUsage(1), d("50"), d("0.5")),
        ]
    );
}

#[test]
fn volume_bills_only_on_the_periods_last_line_with_its_total() {
    let price = docs_tiers(TierMode::Volume);
    let early = rate(&RatingInput {
        last_in_period: false,
        ..RatingInput::whole_period(Currency::USD, &price, d("3000"))
    })
    .expect("rates");
    assert!(early.lines.is_empty());
    let last = rate(&RatingInput {
        pre_period_quantity: d("3000"),
        first_in_period: false,
        ..RatingInput::whole_period(Currency::USD, &price, d("3000"))
    })
    .expect("rates");
    assert_eq!(last.total(), d("600"));
}

#[test]
fn volume_flat_price_bills_even_without_usage() {
    let price = Price::Tiered {
        mode: TierMode::Volume,
        tiers: vec![
            tier(Some("10"), Some("3"), Some("1")),
            tier(None, Some("2"), Some("0.5")),
        ],
    };
    assert_eq!(
        kinds(&whole(&price, "0")),
        [(LineKind::VolumeFlat(0), d("1"), d("3"))]
    );
    assert_eq!(whole(&price, "20").total(), d("12"));
}

#[test]
fn flat_price_bills_in_advance_on_the_first_line_and_in_arrears_on_the_last() {
    let advance = Price::Flat {
        amount: d("49"),
        payment_term: PaymentTerm::InAdvance,
    };
    let arrears = Price::Flat {
        amount: d("49"),
        payment_term: PaymentTerm::InArrears,
    };
    let first_only = |p: &Price| {
        rate(&RatingInput {
            last_in_period: false,
            ..RatingInput::whole_period(Currency::USD, p, d("0"))
        })
        .expect("rates")
        .total()
    };
    assert_eq!(first_only(&advance), d("49"));
    assert_eq!(first_only(&arrears), d("0"));
    assert_eq!(
        whole(&arrears, "0").lines[0].payment_term,
        PaymentTerm::InArrears
    );
}

#[test]
fn dynamic_price_is_cost_times_multiplier_rounded() {
    let price = Price::Dynamic {
        multiplier: d("1.5"),
    };
    let r = whole(&price, "0.333");
    assert_eq!(kinds(&r), [(LineKind::Dynamic, d("1"), d("0.50"))]);
}

#[test]
fn rounding_is_half_away_from_zero_per_line() {
    let price = Price::Unit { amount: d("0.005") };
    assert_eq!(whole(&price, "1").total(), d("0.01"));
    let jpy = Currency::from_code("JPY").expect("JPY");
    let yen = Price::Unit { amount: d("2.5") };
    let r = rate(&RatingInput::whole_period(jpy, &yen, d("1"))).expect("rates");
    assert_eq!(r.total(), d("3"));
}

#[test]
fn maximum_spend_caps_the_period_across_lines() {
    let price = Price::Unit { amount: d("1") };
    let commitments = Commitments {
        minimum: None,
        maximum: Some(d("100")),
    };
    let r = rate(&RatingInput {
        commitments: &commitments,
        previously_billed: d("80"),
        pre_period_quantity: d("80"),
        first_in_period: false,
        ..RatingInput::whole_period(Currency::USD, &price, d("50"))
    })
    .expect("rates");
    assert_eq!(r.total(), d("20"));
    assert_eq!(
        r.lines[0].discounts,
        [LineDiscount {
            reason: DiscountReason::MaximumSpend,
            amount: d("30"),
        }]
    );
}

#[test]
fn minimum_spend_tops_up_on_the_last_line_only() {
    let price = Price::Unit { amount: d("1") };
    let commitments = Commitments {
        minimum: Some(d("100")),
        maximum: None,
    };
    let early = rate(&RatingInput {
        commitments: &commitments,
        last_in_period: false,
        ..RatingInput::whole_period(Currency::USD, &price, d("10"))
    })
    .expect("rates");
    assert_eq!(early.total(), d("10"));
    let last = rate(&RatingInput {
        commitments: &commitments,
        previously_billed: d("10"),
        pre_period_quantity: d("10"),
        first_in_period: false,
        ..RatingInput::whole_period(Currency::USD, &price, d("15"))
    })
    .expect("rates");
    assert_eq!(
        kinds(&last),
        [
            (LineKind::Unit, d("15"), d("15")),
            (LineKind::MinimumSpend, d("1"), d("75")),
        ]
    );
    assert_eq!(last.charges_total(), d("75"));
    assert_eq!(last.lines[1].kind.category(), Category::Commitment);
}

#[test]
fn percentage_discount_applies_to_flat_prices_too() {
    let price = Price::Flat {
        amount: d("10"),
        payment_term: PaymentTerm::InAdvance,
    };
    let discounts = Discounts {
        percentage: Some(d("100")),
        usage: None,
    };
    let r = rate(&RatingInput {
        discounts: &discounts,
        ..RatingInput::whole_period(Currency::USD, &price, d("0"))
    })
    .expect("rates");
    // A 100 % discount shows the original value.
    assert_eq!(
        (r.amount(), r.discounts_total(), r.total()),
        (d("10"), d("10"), d("0"))
    );
}

#[test]
fn bad_input_is_refused_not_rated() {
    let price = Price::Unit { amount: d("1") };
    assert_eq!(
        rate(&RatingInput::whole_period(Currency::USD, &price, d("-1"))),
        Err(RatingError::NegativeQuantity {
            field: "quantity",
            value: d("-1"),
        })
    );
    let package = Price::Package {
        amount: d("1"),
        quantity_per_package: d("0"),
    };
    assert!(matches!(
        rate(&RatingInput::whole_period(Currency::USD, &package, d("1"))),
        Err(RatingError::InvalidPrice { .. })
    ));
    let too_much = Discounts {
        percentage: Some(d("120")),
        usage: None,
    };
    assert!(matches!(
        rate(&RatingInput {
            discounts: &too_much,
            ..RatingInput::whole_period(Currency::USD, &price, d("1"))
        }),
        Err(RatingError::InvalidPrice { .. })
    ));
}
