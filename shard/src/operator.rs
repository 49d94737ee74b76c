//! An operator's calls to one node (`tim cluster …`): the caller proves the deployment secret
//! like a node, under node id 0.

use std::net::SocketAddr;
use std::time::Duration;

use tim_net::rpc::{RpcClient, RpcConfig, RpcError};
use tokio_util::sync::CancellationToken;

use crate::membership::MemberInfo;
use crate::placement::NodeId;
use crate::wire::Removed;
use crate::wire::{self, Reply, Request};

/// How long an operator's call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a removal may take: the members learn of it by gossip, fall silent to the removed
/// nodes for twice their lease, then adopt their slots.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(600);

/// Why an operator's call failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{addr} did not answer")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: RpcError,
    },
    #[error("{addr} refused: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    #[error("{addr} answered with a message this tool does not understand: {reason}")]
    Wire { addr: SocketAddr, reason: String },
}

/// The members as the node at `addr` sees them.
pub async fn status(addr: SocketAddr, cluster_id: &str, rpc_key: [u8; 32]) -> Result<Vec<MemberInfo>, OperatorError> {
    match call(addr, cluster_id, rpc_key, &Request::Status).await? {
        Reply::Status(members) => Ok(members),
        other => Err(unexpected(addr, other)),
    }
}

/// The slots the node at `addr` owns, with their epochs, from its own records.
pub async fn owned(addr: SocketAddr, cluster_id: &str, rpc_key: [u8; 32]) -> Result<Vec<(u16, u64)>, OperatorError> {
    match call(addr, cluster_id, rpc_key, &Request::Owned).await? {
        Reply::Owned(slots) => Ok(slots),
        other => Err(unexpected(addr, other)),
    }
}

/// Asks the node at `addr` to leave the cluster: it hands its slots to the other members,
/// then stops. Its id and the number of slots it owned when asked.
pub async fn leave(addr: SocketAddr, cluster_id: &str, rpc_key: [u8; 32]) -> Result<(NodeId, u32), OperatorError> {
    match call(addr, cluster_id, rpc_key, &Request::Leave).await? {
        Reply::Leaving { node, slots } => Ok((node, slots)),
        other => Err(unexpected(addr, other)),
    }
}

/// Asks the node at `addr` to remove `nodes`, members that are down for good (`force`: even
/// when their slots' data is lost with them). What it cost.
pub async fn remove(
    addr: SocketAddr,
    cluster_id: &str,
    rpc_key: [u8; 32],
    nodes: Vec<NodeId>,
    force: bool,
) -> Result<Removed, OperatorError> {
    match call_within(addr, cluster_id, rpc_key, &Request::Remove { nodes, force }, REMOVE_TIMEOUT).await? {
        Reply::Removed(cost) => Ok(cost),
        other => Err(unexpected(addr, other)),
    }
}

fn unexpected(addr: SocketAddr, reply: Reply) -> OperatorError {
    match reply {
        Reply::Failed { reason, .. } => OperatorError::Refused { addr, reason },
        other => OperatorError::Wire { addr, reason: format!("unexpected answer {other:?}") },
    }
}

async fn call(
    addr: SocketAddr,
    cluster_id: &str,
    rpc_key: [u8; 32],
    request: &Request,
) -> Result<Reply, OperatorError> {
    call_within(addr, cluster_id, rpc_key, request, CALL_TIMEOUT).await
}

async fn call_within(
    addr: SocketAddr,
    cluster_id: &str,
    rpc_key: [u8; 32],
    request: &Request,
    timeout: Duration,
) -> Result<Reply, OperatorError> {
    let wire_error = |reason| OperatorError::Wire { addr, reason };
    let stop = CancellationToken::new();
    let rpc = RpcClient::new(RpcConfig::new(cluster_id, 0, rpc_key), stop.clone(), Default::default());
    let body = wire::encode(request).map_err(wire_error)?;
    let result = rpc.call(addr, None, body, timeout).await;
    stop.cancel();
    let raw = result.map_err(|source| OperatorError::Unreachable { addr, source })?;
    wire::decode::<Reply>(&raw).map_err(wire_error)
}
