//! Placement: which nodes hold each slot, from the member set alone.
//!
//! Weighted rendezvous (highest-random-weight) hashing: for every slot each member gets a
//! score from a hash of `(slot, node id)` scaled by its weight, and the `R` highest scores form
//! the slot's preference list, its owner first. A join takes from every other member only the
//! slots the newcomer now wins (about `1/N` of them), and a removal moves only the removed
//! member's slots. The result depends on the member set only, never on who is alive, so a
//! restart or a flapping link moves nothing.

use std::fmt;

use serde::{Deserialize, Serialize};
use tim_kv::Slot;

use crate::SLOTS;

/// A node's identity: created once and kept in its data dir, so it survives restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

/// Serde for a 64-bit id: human-readable formats (JSON) carry it as the 16 hex digits logs
/// and tables show; binary ones (postcard, on links and disk) as a number.
macro_rules! hex_id_serde {
    ($id:ident) => {
        impl Serialize for $id {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.collect_str(&format_args!("{:016x}", self.0))
                } else {
                    serializer.serialize_u64(self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $id {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let hex = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                    u64::from_str_radix(&hex, 16)
                        .map($id)
                        .map_err(|_| serde::de::Error::custom(format_args!("{hex:?} is not 16 hex digits")))
                } else {
                    u64::deserialize(deserializer).map($id)
                }
            }
        }
    };
}

hex_id_serde!(NodeId);
hex_id_serde!(PlacementVersion);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(NodeId)
    }
}

/// One member as placement sees it: its id and its share of slots relative to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// Relative capacity (1..=1000); a member of weight 2 gets about twice the slots.
    pub weight: u16,
}

/// A digest of the member set (ids, weights) and the copy count: equal on two nodes exactly
/// when they compute the same placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlacementVersion(pub u64);

impl fmt::Display for PlacementVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The preference list of every slot for one member set.
#[derive(Debug, Clone)]
pub struct Placement {
    members: Vec<Member>,
    replicas: usize,
    version: PlacementVersion,
    /// `replicas` node ids per slot, slot after slot (fewer when there are fewer members:
    /// the row is padded with the owner, never read past `copies`).
    table: Vec<NodeId>,
    copies: usize,
}

/// Seed of the slot-node hash: fixed for the life of a deployment (it decides placement).
const SCORE_SEED: u64 = 0x7469_6d2d_7273_2d70;

impl Placement {
    /// The placement of `members` with `replicas` copies per slot (at least 1). Duplicate
    /// ids count once, with the larger weight; weight 0 counts as 1.
    pub fn new(members: impl IntoIterator<Item = Member>, replicas: usize) -> Self {
        let mut members: Vec<Member> = members.into_iter().collect();
        members.sort_by_key(|m| (m.id, std::cmp::Reverse(m.weight)));
        members.dedup_by_key(|m| m.id);
        for m in &mut members {
            m.weight = m.weight.clamp(1, 1000);
        }
        let replicas = replicas.max(1);
        let copies = replicas.min(members.len());
        let version = digest(&members, replicas);
        let mut table = Vec::with_capacity(usize::from(SLOTS) * replicas);
        let mut scored: Vec<(f64, NodeId)> = Vec::with_capacity(members.len());
        for slot in 0..SLOTS {
            scored.clear();
            scored.extend(members.iter().map(|m| (score(Slot(slot), *m), m.id)));
            // Highest score first; equal scores (not seen in practice) by id, so every node
            // sorts the same way.
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let top = scored.iter().take(copies).map(|(_, id)| *id);
            let owner = scored.first().map_or(NodeId(0), |(_, id)| *id);
            table.extend(top.chain(std::iter::repeat(owner)).take(replicas));
        }
        Self { members, replicas, version, table, copies }
    }

    pub fn version(&self) -> PlacementVersion {
        self.version
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The slot's preference list: up to `replicas` distinct members, its owner first; empty
    /// without members.
    pub fn preference(&self, slot: Slot) -> &[NodeId] {
        let start = usize::from(slot.0) * self.replicas;
        self.table.get(start..start + self.copies).unwrap_or_default()
    }

    /// The member that should own the slot.
    pub fn owner(&self, slot: Slot) -> Option<NodeId> {
        self.preference(slot).first().copied()
    }

    /// The slots `node` should own.
    pub fn owned_by(&self, node: NodeId) -> impl Iterator<Item = Slot> + '_ {
        (0..SLOTS).map(Slot).filter(move |s| self.owner(*s) == Some(node))
    }
}

/// `weight / -ln(u)` with `u` uniform in (0, 1) from the hash: the member with the highest
/// score wins, and each wins in proportion to its weight.
fn score(slot: Slot, member: Member) -> f64 {
    let mut key = [0u8; 10];
    let (s, n) = key.split_at_mut(2);
    s.copy_from_slice(&slot.0.to_be_bytes());
    n.copy_from_slice(&member.id.0.to_be_bytes());
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(&key, SCORE_SEED);
    // 53 bits of the hash as a float in (0, 1): never 0, so the logarithm is finite.
    let u = ((h >> 11) | 1) as f64 / (1u64 << 53) as f64;
    f64::from(member.weight) / -u.ln()
}

fn digest(members: &[Member], replicas: usize) -> PlacementVersion {
    let mut bytes = Vec::with_capacity(8 + members.len() * 10);
    bytes.extend_from_slice(&(replicas as u64).to_be_bytes());
    for m in members {
        bytes.extend_from_slice(&m.id.0.to_be_bytes());
        bytes.extend_from_slice(&m.weight.to_be_bytes());
    }
    PlacementVersion(xxhash_rust::xxh3::xxh3_64(&bytes))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn node_ids_are_hex_in_json_and_numbers_on_the_wire() {
        let id = NodeId(0x5b67_211c_90da_3496);
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""5b67211c90da3496""#);
        assert_eq!(serde_json::from_str::<NodeId>(r#""5b67211c90da3496""#).unwrap(), id);
        assert!(serde_json::from_str::<NodeId>(r#""not hex""#).is_err());
        let raw = postcard::to_stdvec(&id).unwrap();
        assert!(raw.len() <= 10, "a varint, not a string: {raw:?}");
        assert_eq!(postcard::from_bytes::<NodeId>(&raw).unwrap(), id);
    }

    fn members(ids: &[u64]) -> Vec<Member> {
        ids.iter().map(|&id| Member { id: NodeId(id), weight: 1 }).collect()
    }

    fn moved(a: &Placement, b: &Placement) -> Vec<(Slot, Option<NodeId>, Option<NodeId>)> {
        (0..SLOTS).map(Slot).filter(|s| a.owner(*s) != b.owner(*s)).map(|s| (s, a.owner(s), b.owner(s))).collect()
    }

    #[test]
    fn one_member_owns_everything_and_none_owns_nothing() {
        let one = Placement::new(members(&[7]), 1);
        assert_eq!(one.owned_by(NodeId(7)).count(), usize::from(SLOTS));
        let none = Placement::new([], 3);
        assert_eq!(none.owner(Slot(5)), None);
        assert!(none.preference(Slot(5)).is_empty());
    }

    #[test]
    fn slots_spread_evenly_and_by_weight() {
        let p = Placement::new(members(&[1, 2, 3, 4]), 1);
        for id in 1..=4 {
            let n = p.owned_by(NodeId(id)).count();
            assert!((850..=1200).contains(&n), "node {id} owns {n} of 4096");
        }
        let weighted = Placement::new([Member { id: NodeId(1), weight: 2 }, Member { id: NodeId(2), weight: 1 }], 1);
        let heavy = weighted.owned_by(NodeId(1)).count();
        assert!((2550..=2900).contains(&heavy), "weight 2 of 3 owns {heavy} of 4096");
    }

    proptest! {
        #[test]
        fn preference_lists_hold_distinct_members(ids in proptest::collection::hash_set(any::<u64>(), 1..8), r in 1usize..4) {
            let ids: Vec<u64> = ids.into_iter().collect();
            let p = Placement::new(members(&ids), r);
            for slot in (0..SLOTS).step_by(97).map(Slot) {
                let list = p.preference(slot);
                prop_assert_eq!(list.len(), r.min(ids.len()));
                let distinct: HashSet<_> = list.iter().collect();
                prop_assert_eq!(distinct.len(), list.len());
            }
        }

        #[test]
        fn a_join_moves_only_slots_to_the_newcomer(ids in proptest::collection::hash_set(1u64..u64::MAX, 1..8), new in any::<u64>()) {
            prop_assume!(!ids.contains(&new));
            let before: Vec<u64> = ids.iter().copied().collect();
            let mut after = before.clone();
            after.push(new);
            let (a, b) = (Placement::new(members(&before), 1), Placement::new(members(&after), 1));
            let moves = moved(&a, &b);
            prop_assert!(moves.iter().all(|(_, _, to)| *to == Some(NodeId(new))));
            // About 1/N of the slots, N the new member count.
            let expected = usize::from(SLOTS) / after.len();
            prop_assert!(moves.len() < expected * 2 && moves.len() > expected / 2, "{} moved, ~{} expected", moves.len(), expected);
        }

        #[test]
        fn a_removal_moves_only_the_removed_members_slots(ids in proptest::collection::hash_set(any::<u64>(), 2..8)) {
            let before: Vec<u64> = ids.into_iter().collect();
            let gone = before[0];
            let after: Vec<u64> = before[1..].to_vec();
            let (a, b) = (Placement::new(members(&before), 1), Placement::new(members(&after), 1));
            prop_assert!(moved(&a, &b).iter().all(|(_, from, _)| *from == Some(NodeId(gone))));
        }

        #[test]
        fn the_version_is_the_member_set(mut ids in proptest::collection::vec(any::<u64>(), 1..8)) {
            let a = Placement::new(members(&ids), 1);
            ids.reverse();
            let b = Placement::new(members(&ids), 1);
            prop_assert_eq!(a.version(), b.version());
            ids.push(ids[0].wrapping_add(1));
            let c = Placement::new(members(&ids), 1);
            prop_assert!(ids.iter().filter(|&&x| x == ids[0].wrapping_add(1)).count() > 1 || c.version() != a.version());
        }
    }
}
