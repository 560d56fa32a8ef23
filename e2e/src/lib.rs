//! End-to-end harness for Tollgate.
