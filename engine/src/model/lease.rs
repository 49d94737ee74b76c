//! A client session as the cluster knows it: a lease `(node, generation, connection)`. A node
//! that restarts runs a new generation, so the leases of its earlier sessions no longer count.

use serde::{Deserialize, Serialize};
use tim_shard::{Cluster, NodeId};

/// One session, wherever it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub node: NodeId,
    pub generation: u64,
    pub conn: u64,
    pub termtyp: Option<i8>,
}

impl Lease {
    /// The lease of this node's session `conn`.
    pub fn here(data: &Cluster, conn: u64, termtyp: Option<i8>) -> Self {
        Self { node: data.node(), generation: data.generation(), conn, termtyp }
    }
}
