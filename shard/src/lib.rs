//! How the nodes of a cluster share the data: every partition key maps to one of [`SLOTS`]
//! slots, and placement maps slots to nodes (see README.md beside this crate).

mod cluster;
mod export;
mod founding;
mod gossip;
mod handover;
pub mod identity;
mod incarnation;
mod lease;
mod members;
mod membership;
mod node;
mod operator;
mod ownership;
mod placement;
mod removal;
pub mod replica;
pub mod replication;
mod routes;
mod slot_set;
mod wire;

use tim_kv::Slot;

pub use cluster::{
    Calls, Cluster, ClusterFigures, EngineAnswer, EngineHandler, HandlerError, RouteError, Seen, Timeouts,
};
pub use founding::{found_again, Founded};
pub use lease::Gate;
pub use membership::{MemberInfo, MemberState, Membership, MembershipConfig, MembershipError};
pub use node::{ClusterNode, Ended, JoinConfig, JoinError, Load};
pub use operator::{leave, owned, remove, status, OperatorError};
pub use ownership::{Held, Ownership, OwnershipError, Part, Refusal, SlotState};
pub use placement::{Member, NodeId, Placement, PlacementVersion};
pub use slot_set::SlotSet;
pub use wire::Removed;

/// Number of slots. Fixed for the life of a deployment: it is part of every stored key.
pub const SLOTS: u16 = 4096;

/// The slot of a partition key (a user id, a conversation id, a group id).
pub fn slot_of(partition_key: &[u8]) -> Slot {
    Slot((xxhash_rust::xxh3::xxh3_64(partition_key) % u64::from(SLOTS)) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_spread() {
        assert_eq!(slot_of(b"alice"), slot_of(b"alice"));
        let mut seen = std::collections::HashSet::new();
        for i in 0u32..10_000 {
            let slot = slot_of(&i.to_be_bytes());
            assert!(slot.0 < SLOTS);
            seen.insert(slot);
        }
        assert!(seen.len() > 3_500, "10k keys cover most of the 4096 slots, got {}", seen.len());
    }
}
