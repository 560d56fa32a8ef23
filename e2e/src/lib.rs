//! End-to-end harness for Tollgate.
//!
//! [`kong`] plays Kong's side of the external-plugin protocol exactly as Kong behaves
//! (reference/kong-protocols.md §1.4–§1.9): it is the only stand-in in the system, since Kong
//! itself cannot run here. Everything it talks to is the real binary over a real socket.
//! [`stack`] starts those binaries — billing, agent, plugin server — from `kong-config/`;
//! [`postgres`] starts a throwaway PostgreSQL cluster for billing's second backend.

pub mod deck;
pub mod kong;
pub mod postgres;
pub mod stack;
pub mod traffic;
