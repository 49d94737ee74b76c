//! The one seam between the engine's services and the cluster.
//!
//! A service's operation on a slot runs where the slot's owner is. [`at_slot`] decides "here or
//! there" in one place: on this node it runs the service's own future under the slot's guard,
//! else it sends the operation, tagged with its [`Service`], to the owner, whose [`Dispatch`]
//! hands the untouched bytes to the service's [`Arrivals`]. Operations for a node's sessions
//! ([`at_node`], [`ask_node`]) travel the same way.
//!
//! A service owns its operations: their type (a [`SlotOp`] or [`NodeOp`]), what runs here,
//! and what runs when one arrives. Adding one touches the service's own file only.

mod dispatch;
mod failure;

use std::future::Future;

use bytes::Bytes;
use futures_util::future::Either;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tim_kv::Slot;
use tim_shard::{Cluster, HandlerError, NodeId};

pub use dispatch::{Arrivals, CarriedState, Dispatch};
pub use failure::Failure;

use crate::error::EngineError;

/// The services whose operations travel between nodes: a call's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Service {
    Inbox = 1,
    Push,
    Rosters,
    Groups,
    FriendPlaces,
    MemberPlaces,
    Directory,
    Accounts,
    Rooms,
    Restore,
    Sessions,
    ChatLog,
}

impl Service {
    const ALL: [Service; 12] = [
        Self::Inbox,
        Self::Push,
        Self::Rosters,
        Self::Groups,
        Self::FriendPlaces,
        Self::MemberPlaces,
        Self::Directory,
        Self::Accounts,
        Self::Rooms,
        Self::Restore,
        Self::Sessions,
        Self::ChatLog,
    ];

    fn of(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == tag)
    }

    fn index(self) -> usize {
        usize::from(self as u8 - 1)
    }
}

/// An operation of a service for the owner of a slot.
pub trait SlotOp: Serialize {
    fn service(&self) -> Service;
}

/// An operation of a service for a node (its sessions).
pub trait NodeOp: Serialize {
    fn service(&self) -> Service;
}

/// The tag, then the operation (postcard).
fn tagged<T: Serialize>(service: Service, op: &T) -> Result<Bytes, EngineError> {
    postcard::to_extend(op, vec![service as u8])
        .map(Bytes::from)
        .map_err(|_| EngineError::Internal("an operation did not encode"))
}

/// Runs `here` if this node owns `slot` (under its guard), else `op` on the owner.
///
/// A combinator rather than an `async fn`, so the future holds `here` once
/// ([`tim_shard::Held::run`] says why).
pub fn at_slot<T: DeserializeOwned, F: Future<Output = Result<T, EngineError>>, O: SlotOp>(
    data: &Cluster,
    slot: Slot,
    here: F,
    op: O,
) -> impl Future<Output = Result<T, EngineError>> + use<'_, T, F, O> {
    data.ownership().serve(slot, here).then(move |served| match served {
        Ok(result) => Either::Left(std::future::ready(result)),
        Err(_) => Either::Right(at_owner(data, slot, op)),
    })
}

/// Runs `op` on the owner of `slot`, another node.
async fn at_owner<T: DeserializeOwned, O: SlotOp>(data: &Cluster, slot: Slot, op: O) -> Result<T, EngineError> {
    let raw = data.call(slot, tagged(op.service(), &op)?).await?;
    Failure::unpack(&raw, slot)
}

/// Runs `op` on `node` (this one included), in order with the others sent to it.
pub async fn at_node<O: NodeOp>(data: &Cluster, node: NodeId, op: O) -> Result<(), EngineError> {
    let raw = data.call_node_in_order(node, tagged(op.service(), &op)?).await?;
    Failure::unpack(&raw, Slot(0))
}

/// Asks `node` a question (this one included); the answer decoded as `T`.
pub async fn ask_node<T: DeserializeOwned, O: NodeOp>(data: &Cluster, node: NodeId, op: O) -> Result<T, EngineError> {
    let raw = data.call_node(node, tagged(op.service(), &op)?).await?;
    Failure::unpack(&raw, Slot(0))
}

/// An arrived operation of a service, decoded.
pub fn decode<T: DeserializeOwned>(op: &[u8]) -> Result<T, HandlerError> {
    postcard::from_bytes(op).map_err(|e| HandlerError::Failed(format!("undecodable operation: {e}")))
}

/// The answer to an arrived operation, for its caller ([`Failure`] says how a failure travels).
pub fn answer<T: Serialize>(result: Result<T, EngineError>, op: &'static str) -> Result<Bytes, HandlerError> {
    Failure::pack(result, op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tag_names_its_service_and_only_one() {
        for service in Service::ALL {
            assert_eq!(Service::of(service as u8), Some(service));
            assert_eq!(Service::ALL.get(service.index()), Some(&service));
        }
        assert_eq!(Service::of(0), None);
        assert_eq!(Service::of(Service::ALL.len() as u8 + 1), None);
    }
}
