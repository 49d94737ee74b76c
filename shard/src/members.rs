//! The member set as a node records it: every node it ever learned of that did not leave, with
//! its weight, and the nodes that left (retired, never members again). Placement is a function
//! of it, so every live member must end with the same one:
//!
//! - a node learns members from gossip, and from the member set of any live member that
//!   computes another placement (a member dead so long that gossip forgot it is known that
//!   way to a node that joined since);
//! - retirements only add up, on every node, and win over membership;
//! - a member's weight is what it last said: each weight is recorded with the generation of
//!   the node that gossiped it, and the newer generation wins, whoever relays it.
//!
//! Merging is a union with those two rules, the same whatever the order: members that have
//! heard of each other, directly or through others, converge to one set and one placement.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tim_kv::{RawWrite, Store, StoreError};

use crate::placement::{Member, NodeId};

/// The store record of the member set.
const RECORD: &str = "member_set";
/// The records of the member set written before weights had generations.
const OLD_MEMBERS: &str = "members";
const OLD_RETIRED: &str = "retired";

/// One member as recorded: its weight, and the generation it said so in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Recorded {
    pub(crate) id: NodeId,
    pub(crate) weight: u16,
    pub(crate) since: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberSet {
    pub(crate) members: Vec<Recorded>,
    /// Nodes that left or were removed: never members again.
    pub(crate) retired: BTreeSet<NodeId>,
    /// Those of them an operator removed (`tim cluster remove`): nobody answers them.
    pub(crate) removed: BTreeSet<NodeId>,
}

impl MemberSet {
    pub(crate) fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let corrupt = |table| move |_| StoreError::Corrupt { table, id: 0 };
        if let Some(raw) = store.local(RECORD)? {
            return postcard::from_bytes(&raw).map_err(corrupt(RECORD));
        }
        let members: Vec<Member> = match store.local(OLD_MEMBERS)? {
            Some(raw) => postcard::from_bytes(&raw).map_err(corrupt(OLD_MEMBERS))?,
            None => Vec::new(),
        };
        let retired = match store.local(OLD_RETIRED)? {
            Some(raw) => postcard::from_bytes(&raw).map_err(corrupt(OLD_RETIRED))?,
            None => BTreeSet::new(),
        };
        let members = members.into_iter().map(|m| Recorded { id: m.id, weight: m.weight, since: 0 }).collect();
        Ok(Self { members, retired, removed: BTreeSet::new() })
    }

    pub(crate) async fn save(&self, store: &dyn Store) -> Result<(), StoreError> {
        let raw = postcard::to_stdvec(self).map_err(|_| StoreError::Corrupt { table: RECORD, id: 0 })?;
        store.write_raw(RawWrite::local(vec![(RECORD.to_owned(), Some(raw))])).await.map(drop)
    }

    /// The members placement is computed over.
    pub(crate) fn placement_members(&self) -> impl Iterator<Item = Member> + '_ {
        self.members.iter().map(|m| Member { id: m.id, weight: m.weight })
    }

    pub(crate) fn contains(&self, node: NodeId) -> bool {
        self.members.iter().any(|m| m.id == node)
    }

    /// Takes in members, retirements and removals learned elsewhere; whether anything
    /// changed.
    pub(crate) fn merge(
        &mut self,
        members: impl IntoIterator<Item = Recorded>,
        retired: impl IntoIterator<Item = NodeId>,
        removed: impl IntoIterator<Item = NodeId>,
    ) -> bool {
        let before = self.clone();
        self.retired.extend(retired);
        self.removed.extend(removed);
        self.retired.extend(self.removed.iter().copied());
        for seen in members {
            match self.members.iter_mut().find(|m| m.id == seen.id) {
                Some(known) if seen.since > known.since => *known = seen,
                Some(_) => {}
                None => self.members.push(seen),
            }
        }
        let retired = &self.retired;
        self.members.retain(|m| !retired.contains(&m.id));
        self.members.sort_by_key(|m| m.id);
        *self != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, weight: u16, since: u64) -> Recorded {
        Recorded { id: NodeId(id), weight, since }
    }

    #[test]
    fn merges_converge_whatever_the_order() {
        let views = [
            (vec![rec(1, 1, 10), rec(2, 1, 5)], vec![], vec![]),
            (vec![rec(2, 3, 7), rec(3, 1, 1), rec(5, 1, 1)], vec![], vec![NodeId(5)]),
            (vec![rec(4, 1, 2)], vec![NodeId(3)], vec![]),
        ];
        let mut results = Vec::new();
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let mut set = MemberSet::default();
            for i in order {
                let (members, retired, removed) = views[i].clone();
                set.merge(members, retired, removed);
            }
            results.push(set);
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        let set = &results[0];
        assert_eq!(set.members, vec![rec(1, 1, 10), rec(2, 3, 7), rec(4, 1, 2)], "newest weight, no retired member");
        assert!(set.retired.contains(&NodeId(5)), "a removed node is retired");
        let again = set.clone().merge(set.members.clone(), set.retired.clone(), set.removed.clone());
        assert!(!again, "nothing new: no change");
    }
}
