//! Operator tools of tim-rs, run as subcommands of the one `tim` binary.

pub mod bench;
