//! `tim cluster found`: makes a stopped node the founder of a new cluster from its data dir.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct FoundArgs {
    /// Data dir of the node, which must be stopped.
    #[arg(long, env = "TIM_DATA_DIR", default_value = "./tim-data")]
    data_dir: PathBuf,
    /// The deployment secret, when not the data dir's `secret.key`.
    #[arg(long, env = "TIM_SECRET_FILE")]
    secret_file: Option<PathBuf>,
}

pub fn found(args: FoundArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tim cluster found: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tim_engine::founding::found(&args.data_dir, args.secret_file.as_deref())) {
        Ok((node, founded)) => {
            println!(
                "node {node} founds cluster incarnation {:016x}: it kept the {} slots it owned with their data and \
                 owns the other {} empty (their data stays with the old cluster's members). Start it with `tim serve` \
                 without --seeds; add nodes with --seeds pointing at it. Members of its old cluster are never heard \
                 again, nor it by them.",
                founded.incarnation, founded.kept, founded.taken
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tim cluster found: {e:#}");
            ExitCode::FAILURE
        }
    }
}
