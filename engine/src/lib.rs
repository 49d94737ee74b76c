//! The IM engine of tim-rs: accounts, sessions and the client listeners, and the `tim`
//! command line.

mod accounts;
mod admin;
mod admins;
mod bans;
mod big_data;
mod business;
mod calls;
mod chat;
pub mod cli;
mod config;
mod delivery;
mod directory;
mod error;
mod founding;
mod group_chat;
mod groups;
mod ident;
mod inbound;
mod limits;
mod listener;
mod metrics;
mod node;
mod offline;
mod outbound;
mod pairs;
mod partition;
mod presence;
mod profiles;
mod push;
mod restore;
mod roster;
mod secret;
mod server;
mod session;
mod sessions;
mod status;
mod tables;
#[cfg(test)]
mod testing;
mod tokens;
mod vrooms;
mod web;

pub use config::ServeConfig;
pub use node::{start, NodeHandle};
