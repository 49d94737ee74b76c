//! The `tim` command line: `tim serve` (the engine) and the operator tools, its other
//! subcommands.

pub mod admin;
pub mod admin_client;
pub mod bench;
pub mod cli;
mod cluster;
pub mod dump;
mod found;

/// The commit this binary was built from (stamped by `build.rs`), or "unknown".
pub const COMMIT: &str = env!("TIM_COMMIT");
/// `tim --version`: the release and the commit.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("TIM_COMMIT"), ")");
