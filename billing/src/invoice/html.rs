//! The printable invoice: an HTML page (what a customer is sent) with the supplier, the
//! customer, number, dates and period, each line with its detailed lines (tiers, discounts) and
//! the totals. Built with maud, which escapes every value, so names and metadata from the API
//! can never inject markup.

use maud::{DOCTYPE, Markup, html};
use rust_decimal::Decimal;

use super::model::{Invoice, Totals};
use super::profile::Party;

fn money(amount: Decimal, currency: &str) -> String {
    format!("{} {currency}", amount.normalize().round_dp(12))
}

fn party(p: &Party) -> Markup {
    html! {
        strong { (p.name.as_deref().unwrap_or("")) }
        @for a in p.addresses.iter().flatten() {
            @for part in [&a.line1, &a.line2, &a.city, &a.state, &a.postal_code, &a.country].into_iter().flatten() {
                br; (part)
            }
        }
        @if let Some(code) = p.tax_id.as_ref().and_then(|t| t["code"].as_str()) {
            br; "Tax id: " (code)
        }
    }
}

fn totals_rows(t: &Totals, cur: &str) -> Markup {
    html! {
        tr { th { "Amount" } td.num { (money(t.amount, cur)) } }
        @if !t.charges_total.is_zero() { tr { th { "Commitment charges" } td.num { (money(t.charges_total, cur)) } } }
        @if !t.discounts_total.is_zero() { tr { th { "Discounts" } td.num { "−" (money(t.discounts_total, cur)) } } }
        @if !t.credits_total.is_zero() { tr { th { "Credits" } td.num { "−" (money(t.credits_total, cur)) } } }
        tr { th { "Taxes" } td.num { (money(t.taxes_total, cur)) } }
        tr.total { th { "Total due" } td.num { (money(t.total, cur)) } }
    }
}

/// The invoice as a page.
pub fn page(inv: &Invoice) -> String {
    let cur = inv.currency.as_str();
    let date = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_else(|| "—".into())
    };
    let title = format!(
        "Invoice {}",
        inv.number.as_deref().unwrap_or(inv.id.as_str())
    );
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}\
                    table{border-collapse:collapse;width:100%}td,th{padding:.3rem .5rem;text-align:left;border-bottom:1px solid #ddd}\
                    .num{text-align:right;font-variant-numeric:tabular-nums}.child td{color:#555;font-size:.9em}\
                    .child td:first-child{padding-left:2rem}.total th,.total td{font-weight:bold;border-top:2px solid #222}\
                    .parties{display:flex;gap:4rem;margin:1rem 0}@media print{body{margin:0}}" }
            }
            body {
                h1 { (title) }
                p { "Status: " strong { (inv.status) } " (" (inv.ext()) ")" }
                div.parties {
                    div { "From" br; (party(&inv.supplier)) }
                    div { "Bill to" br; strong { (inv.customer.name) }
                        @if let Some(k) = &inv.customer.key { br; "Customer " (k) }
                        @if let Some(e) = &inv.customer.primary_email { br; (e) } }
                }
                table {
                    tr { th { "Issued" } td { (date(inv.issued_at)) } }
                    tr { th { "Due" } td { (date(inv.due_at)) } }
                    @if let Some(p) = &inv.period {
                        tr { th { "Period" } td { (date(Some(p.from))) " – " (date(Some(p.to))) } }
                    }
                    tr { th { "Currency" } td { (cur) } }
                }
                h2 { "Lines" }
                table {
                    tr { th { "Description" } th { "Period" } th.num { "Quantity" } th.num { "Unit price" } th.num { "Amount" } }
                    @for line in inv.live_lines() {
                        tr {
                            td { strong { (line.name) } }
                            td { (line.period.from.format("%Y-%m-%d")) " – " (line.period.to.format("%Y-%m-%d")) }
                            td.num { (line.quantity.map(|q| q.normalize().to_string()).unwrap_or_default()) }
                            td {}
                            td.num { (money(line.totals.total, cur)) }
                        }
                        @for c in &line.children {
                            tr.child {
                                td { (c.name) }
                                td {}
                                td.num { (c.quantity.normalize()) }
                                td.num { (money(c.per_unit_amount, cur)) }
                                td.num { (money(c.totals.amount + c.totals.charges_total, cur)) }
                            }
                            @for d in &c.discounts.amount {
                                tr.child { td { "Discount (" (d.reason) ")" } td {} td {} td {} td.num { "−" (money(d.amount, cur)) } }
                            }
                        }
                        @for u in &line.discounts.usage {
                            tr.child { td { "Free units (" (u.reason) ")" } td {} td.num { (u.quantity.normalize()) } td {} td {} }
                        }
                    }
                }
                h2 { "Totals" }
                table { (totals_rows(&inv.totals, cur)) }
                p { small { "Invoice id " (inv.id) } }
            }
        }
    }
    .into_string()
}
