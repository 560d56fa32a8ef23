//! Currencies and rounding: ISO 4217 codes with their minor units, and OpenMeter's rounding rule
//! (to the currency's minor unit, half away from zero). Every amount the engine emits passes
//! through [`Currency::round`].

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};

/// An ISO 4217 currency that has minor units (USD: 2, JPY: 0, BHD: 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency {
    code: iso_currency::Currency,
    minor_units: u32,
}

/// Why a currency code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    /// Not three upper-case letters.
    #[error("currency code {0:?} is not three upper-case letters (ISO 4217)")]
    Invalid(String),
    /// Well-formed, but not an ISO 4217 currency with minor units.
    #[error("currency code {0:?} is not an ISO 4217 currency with minor units")]
    NotFound(String),
}

impl Currency {
    /// US dollars, OpenMeter's default plan currency.
    pub const USD: Currency = Currency {
        code: iso_currency::Currency::USD,
        minor_units: 2,
    };

    /// Parses an ISO 4217 code such as `USD`.
    pub fn from_code(code: &str) -> Result<Currency, CurrencyError> {
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(CurrencyError::Invalid(code.to_owned()));
        }
        let iso = iso_currency::Currency::from_code(code)
            .ok_or_else(|| CurrencyError::NotFound(code.to_owned()))?;
        let minor_units = iso
            .exponent()
            .ok_or_else(|| CurrencyError::NotFound(code.to_owned()))?;
        Ok(Currency {
            code: iso,
            minor_units: u32::from(minor_units),
        })
    }

    /// The ISO 4217 code.
    pub fn code(self) -> &'static str {
        self.code.code()
    }

    /// Digits after the decimal point of the smallest coin (USD 2, JPY 0).
    pub fn minor_units(self) -> u32 {
        self.minor_units
    }

    /// Rounds to the currency's minor unit, half away from zero (OpenMeter's `RoundToPrecision`).
    pub fn round(self, amount: Decimal) -> Decimal {
        amount.round_dp_with_strategy(self.minor_units, RoundingStrategy::MidpointAwayFromZero)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().expect("decimal literal")
    }

    #[test]
    fn minor_units_follow_iso_4217() {
        assert_eq!(Currency::from_code("USD").map(Currency::minor_units), Ok(2));
        assert_eq!(Currency::from_code("JPY").map(Currency::minor_units), Ok(0));
        assert_eq!(Currency::from_code("BHD").map(Currency::minor_units), Ok(3));
    }

    #[test]
    fn bad_codes_are_refused_with_the_reason() {
        assert_eq!(
            Currency::from_code("usd"),
            Err(CurrencyError::Invalid("usd".into()))
        );
        assert_eq!(
            Currency::from_code("ABC"),
            Err(CurrencyError::NotFound("ABC".into()))
        );
    }

    #[test]
    fn rounds_half_away_from_zero() {
        let usd = Currency::USD;
        assert_eq!(usd.round(d("0.125")), d("0.13"));
        assert_eq!(usd.round(d("-0.125")), d("-0.13"));
        assert_eq!(usd.round(d("0.124999")), d("0.12"));
        let jpy = Currency::from_code("JPY").expect("JPY");
        assert_eq!(jpy.round(d("2.5")), d("3"));
    }
}
