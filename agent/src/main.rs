//! The `tollgate-agent` binary.
fn main() {}
