//! Operator tools of tim-rs, run as subcommands of the one `tim` binary.

pub mod admin;
pub mod admin_auth;
pub mod admin_client;
pub mod bench;
pub mod dump;
pub mod hex;
