//! What Tollgate's three binaries (`tollgate`, `tollgate-agent`, `tollgate-billing`) share about
//! the way they report on themselves: [`logging`] sets up their logs (text or JSON lines, the same
//! fields everywhere, colour only on a terminal), and [`redact`] keeps secrets out of them.

pub mod logging;
pub mod redact;
