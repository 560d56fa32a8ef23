//! The `tollgate-billing` binary.
fn main() {}
