//! The README's first command (`tollgate-demo`) runs end to end and tells a newcomer what happened:
//! services up, every request through the access phase then the log phase, the free customer
//! stopped at exactly its limit, and month-end invoices issued and paid with amounts worked by hand.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use tollgate_e2e::stack::binary;

#[test]
fn the_demo_stops_the_free_customer_at_its_limit_and_ends_with_paid_invoices() {
    let out = Command::new(binary("tollgate-demo"))
        .args(["--exit", "--requests", "1000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "tollgate-billing  http://127.0.0.1:",
        "1000 requests through access and log phases",
        "the gateway admitted exactly 100 and refused 234",
        "acme (free): no invoice issued for the period",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // customer, plan, admitted, refused, api_requests, prompt, output, access
    assert_eq!(&row("acme")[1..5], ["free", "100", "234", "334"]);
    assert_eq!(row("acme")[7], "BLOCKED");
    assert_eq!(&row("globex")[1..5], ["growth", "333", "0", "333"]);
    assert_eq!(row("globex")[7], "yes");
    assert_eq!(&row("initech")[1..5], ["growth", "333", "0", "333"]);

    // Each growth customer: the first month's fee in advance, then usage and the next fee. Worked
    // by hand: 333 calls = 200 free + 133 x $0.01 = $1.33; globex's 8,405 tokens x $0.00002 =
    // $0.1681, rounded to the cent $0.17; + $29 = $30.50.
    for name in ["globex", "initech"] {
        for (n, total) in [(1, "total USD 29"), (2, "total USD 30.5")] {
            let head = format!(
                "{name} (growth)  invoice OM-SANDBOX-{}-{n}  status paid",
                name.to_uppercase()
            );
            let at = stdout
                .find(&head)
                .unwrap_or_else(|| panic!("no {head:?} in\n{stdout}"));
            let block: String = stdout[at..]
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("\n");
            assert!(block.contains(total), "{block}");
            assert!(block.contains("/api/tollgate/v1/invoices/"), "{block}");
            if n == 2 {
                for part in [
                    "API calls: usage price for tier 1             200 x 0",
                    "API calls: usage price for tier 2             133 x 0.01           1.33",
                ] {
                    assert!(block.contains(part), "missing {part:?} in\n{block}");
                }
            }
        }
    }
    assert!(stdout.contains("LLM tokens                                     8405     USD 0.17"));
}
