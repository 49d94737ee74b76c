//! `tim cluster found`: makes a stopped node the founder of a new cluster from its data dir
//! (`tim_shard::found_again` says what that keeps and what it costs).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tim_kv::StoreConfig;
use tim_shard::{Founded, NodeId};

use crate::secret::Secret;

/// Founds a new cluster from the stopped node's data dir: the node, and what it kept and took.
pub async fn found(data_dir: &Path, secret_file: Option<&Path>) -> anyhow::Result<(NodeId, Founded)> {
    let secret = Secret::load(secret_file, data_dir)?;
    let node = tim_shard::identity::load_or_create(data_dir)
        .with_context(|| format!("reading the node id in {}", data_dir.display()))?;
    let store_cfg = StoreConfig::new(data_dir.join("store"));
    let store = crate::node::open_store(&store_cfg, &secret)
        .context("is the node stopped? (its store is in use while it runs)")?;
    let founded = tim_shard::found_again(Arc::new(store), node).await?;
    Ok((node, founded))
}
