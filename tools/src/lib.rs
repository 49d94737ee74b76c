//! Operator tools of tim-rs, run as subcommands of the one `tim` binary: export/import, the
//! admin client and the `tim bench` load generator live here as they are built.
