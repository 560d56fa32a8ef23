//! The engine's output: detailed lines (what was charged, for how much, with which discounts) and
//! the rating of one usage line as a whole.

use rust_decimal::Decimal;

use super::price::PaymentTerm;

/// What a detailed line charges for. Tier indexes count from 0; names and references from 1, as
/// OpenMeter's do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A flat price.
    Flat,
    /// A unit price: quantity × amount.
    Unit,
    /// The units of a graduated price that fall in one tier.
    TierUsage(usize),
    /// A graduated tier's flat price, billed when the tier is entered.
    TierFlat(usize),
    /// The whole quantity of a volume price at the tier it reached.
    VolumeUsage(usize),
    /// The flat price of the tier a volume price reached.
    VolumeFlat(usize),
    /// Whole packages started in this line.
    Package,
    /// A dynamic price: the metered cost × multiplier, as one line of quantity 1.
    Dynamic,
    /// Tops the period up to its minimum commitment (category `commitment`).
    MinimumSpend,
}

impl LineKind {
    /// A reference unique among one usage line's detailed lines, stable across re-rating.
    pub fn child_reference(self) -> String {
        match self {
            LineKind::Flat => "flat-price".into(),
            LineKind::Unit => "unit-price-usage".into(),
            LineKind::TierUsage(i) => format!("graduated-tiered-{}-price-usage", i + 1),
            LineKind::TierFlat(i) => format!("graduated-tiered-{}-flat-price", i + 1),
            LineKind::VolumeUsage(_) => "volume-tiered-price".into(),
            LineKind::VolumeFlat(_) => "volume-tiered-flat-price".into(),
            LineKind::Package => "package-price-usage".into(),
            LineKind::Dynamic => "dynamic-price-usage".into(),
            LineKind::MinimumSpend => "min-spend".into(),
        }
    }

    /// A label for invoices, appended to the rate card's name (`API calls: usage price for tier 2`).
    pub fn label(self) -> String {
        match self {
            LineKind::Flat => "flat price".into(),
            LineKind::Unit => "usage price".into(),
            LineKind::TierUsage(i) | LineKind::VolumeUsage(i) => {
                format!("usage price for tier {}", i + 1)
            }
            LineKind::TierFlat(i) | LineKind::VolumeFlat(i) => {
                format!("flat price for tier {}", i + 1)
            }
            LineKind::Package => "usage price (packages)".into(),
            LineKind::Dynamic => "usage price (dynamic)".into(),
            LineKind::MinimumSpend => "minimum spend".into(),
        }
    }

    /// `commitment` for the minimum-spend top-up (an invoice's charges), `regular` otherwise.
    pub fn category(self) -> Category {
        match self {
            LineKind::MinimumSpend => Category::Commitment,
            _ => Category::Regular,
        }
    }
}

/// OpenMeter's flat-fee line category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Usage and flat prices (an invoice's `amount`).
    Regular,
    /// A commitment top-up (an invoice's `chargesTotal`).
    Commitment,
}

/// Why an amount was taken off a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscountReason {
    /// The rate card's percentage discount.
    Percentage,
    /// The part above the maximum spend commitment.
    MaximumSpend,
}

/// An amount taken off one detailed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineDiscount {
    /// Why.
    pub reason: DiscountReason,
    /// How much (rounded to the currency, ≥ 0).
    pub amount: Decimal,
}

/// One detailed line of an invoice line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetailedLine {
    /// What it charges for.
    pub kind: LineKind,
    /// Units (1 for flat prices, packages for a package price).
    pub quantity: Decimal,
    /// Price of one unit.
    pub per_unit_amount: Decimal,
    /// `round(quantity × per_unit_amount)`, before discounts.
    pub amount: Decimal,
    /// Discounts, in the order they were applied.
    pub discounts: Vec<LineDiscount>,
    /// In advance (flat prices) or in arrears.
    pub payment_term: PaymentTerm,
}

impl DetailedLine {
    /// The sum of this line's discounts.
    pub fn discounts_total(&self) -> Decimal {
        self.discounts.iter().map(|d| d.amount).sum()
    }

    /// What the line bills: its amount less its discounts.
    pub fn total(&self) -> Decimal {
        self.amount - self.discounts_total()
    }
}

/// How much of the rate card's usage discount this line used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDiscountApplied {
    /// Free units taken off this line's quantity.
    pub quantity: Decimal,
    /// Free units already used up by the period's earlier usage.
    pub pre_period_quantity: Decimal,
}

/// The rating of one usage line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rating {
    /// Detailed lines in OpenMeter's order.
    pub lines: Vec<DetailedLine>,
    /// The usage discount this line used, if any.
    pub usage_discount: Option<UsageDiscountApplied>,
}

impl Rating {
    /// Sum of the lines' amounts before discounts, commitments excluded.
    pub fn amount(&self) -> Decimal {
        self.lines
            .iter()
            .filter(|l| l.kind.category() == Category::Regular)
            .map(|l| l.amount)
            .sum()
    }

    /// Sum of the lines' discounts.
    pub fn discounts_total(&self) -> Decimal {
        self.lines.iter().map(DetailedLine::discounts_total).sum()
    }

    /// Sum of commitment top-ups.
    pub fn charges_total(&self) -> Decimal {
        self.lines
            .iter()
            .filter(|l| l.kind.category() == Category::Commitment)
            .map(|l| l.amount)
            .sum()
    }

    /// What this usage line bills in all.
    pub fn total(&self) -> Decimal {
        self.lines.iter().map(DetailedLine::total).sum()
    }
}
