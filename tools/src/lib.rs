//! Operator tools of tim-rs, run as subcommands of the one `tim` binary.

pub mod admin;
pub mod admin_auth;
pub mod admin_client;
pub mod bench;
pub mod dump;
pub mod hex;

/// The commit this binary was built from (stamped by `build.rs`), or "unknown".
pub const COMMIT: &str = env!("TIM_COMMIT");
/// `tim --version`: the release and the commit.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("TIM_COMMIT"), ")");
