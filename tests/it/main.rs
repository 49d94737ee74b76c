//! End-to-end tests: real `tim serve` processes on loopback ports and temp data dirs, driven
//! by the Rust client of `tim-net`.

mod auth;
mod durability;
mod frames;
mod node;
