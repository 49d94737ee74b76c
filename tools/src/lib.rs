//! Operator tools of tim-rs, run as subcommands of the one `tim` binary.

pub mod admin_auth;
pub mod bench;
pub mod dump;
