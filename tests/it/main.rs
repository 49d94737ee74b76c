//! End-to-end tests: real `tim serve` processes on loopback ports and temp data dirs, driven
//! by the Rust client of `tim-net`.
// Test code: a failed unwrap or assertion is a failed test, which is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod admin;
mod admin_api;
mod auth;
mod bench;
mod browser;
mod chat;
mod cluster;
mod cut;
mod durability;
mod frames;
mod groups;
mod limits;
mod memory;
mod node;
mod presence;
mod profiles;
mod rebalance;
mod roster;
mod split;
mod topology;
mod transfer;
mod vrooms;
mod wait;
