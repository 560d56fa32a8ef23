//! The README's first command (`tollgate-demo`) runs end to end and tells a newcomer what happened:
//! services up, traffic through, a usage table per customer, the customer over its limit named.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use tollgate_e2e::stack::binary;

#[test]
fn the_demo_meters_traffic_and_names_the_customer_over_its_limit() {
    let out = Command::new(binary("tollgate-demo"))
        .args(["--exit", "--requests", "400"])
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
        "400 log phases",
        "customer   api_requests",
        "acme is over its limit",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    let acme = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("acme "))
        .unwrap();
    assert!(acme.ends_with("BLOCKED"), "{acme}");
    let globex = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("globex "))
        .unwrap();
    assert!(globex.ends_with("yes"), "{globex}");
}
