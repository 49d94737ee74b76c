//! `tim cluster found`: makes a stopped node the founder of a new cluster from its data dir
//! (`tim_shard::found_again` says what that keeps and what it costs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tim_kv::StoreConfig;

use crate::secret::Secret;

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
    let run = async {
        let secret = Secret::load(args.secret_file.as_deref(), &args.data_dir)?;
        let node = tim_shard::identity::load_or_create(&args.data_dir)
            .with_context(|| format!("reading the node id in {}", args.data_dir.display()))?;
        let store_cfg = StoreConfig::new(args.data_dir.join("store"));
        let store = crate::node::open_store(&store_cfg, &secret)
            .context("is the node stopped? (its store is in use while it runs)")?;
        let founded = tim_shard::found_again(Arc::new(store), node).await?;
        anyhow::Ok((node, founded))
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tim cluster found: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
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
