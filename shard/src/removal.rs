//! `tim cluster remove NODE`: takes a member that is down for good out of the cluster.
//!
//! A dead member cannot hand its slots over. The node asked finds the slots it held, from
//! what every other member records (their own states, and their routes to it), retires it
//! (every member drops it from the member set, and no member ever adds it back), and has
//! each of its slots adopted by one member:
//!
//! - a slot some member holds fenced towards it (a hand-over the dead node never finished,
//!   as far as anyone live knows) is adopted by that member, with its data;
//! - any other slot it held is adopted, empty, by its owner under the new placement: with
//!   one copy per slot its data is gone, so the command refuses without `--force` when
//!   there is any.
//!
//! An adopted slot is owned at an epoch above every epoch any member knows for it, so routes
//! to the dead node lose to the new owner's. Removal needs every other member live: a slot a
//! down member owns would otherwise look orphaned. Every step is safe to repeat, and the
//! command can be run again after it was cut short.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tim_kv::Slot;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::membership::MemberInfo;
use crate::ownership::SlotState;
use crate::placement::NodeId;
use crate::wire::{Reply, Request};
use crate::SLOTS;

/// How long the members get to learn that the node is retired.
const RETIRE_WAIT: Duration = Duration::from_secs(30);

/// What one member holds: every slot state it records, and the routes it knows to the node
/// being removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Holdings {
    pub(crate) states: Vec<(u16, SlotState)>,
    pub(crate) routes_to: Vec<(u16, u64)>,
}

/// A slot of the removed node, and who takes it at which epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Orphan {
    pub(crate) slot: Slot,
    /// The member that holds it fenced towards the removed node (it keeps its data);
    /// `None`: the owner under the new placement takes it empty.
    pub(crate) fenced_at: Option<NodeId>,
    pub(crate) epoch: u64,
}

/// The slots `removed` held, from the holdings of every other member (all of them). A slot
/// is the removed node's when its newest state anywhere points at it (given or fenced
/// towards it), or at a node that has left (which handed everything on before it went, and
/// not to anyone here, or their newer state would be the newest), or when no member holds it
/// at all (the removed node founded the cluster and kept it).
pub(crate) fn orphans(removed: NodeId, holdings: &[(NodeId, Holdings)]) -> Vec<Orphan> {
    let member = |node: &NodeId| holdings.iter().any(|(m, _)| m == node);
    // The newest state of each slot: the highest epoch, an owner winning a tie (a switch
    // seen half-way), and the member that records it; and the highest epoch known.
    let mut newest: HashMap<u16, (SlotState, NodeId)> = HashMap::new();
    let mut known: HashMap<u16, u64> = HashMap::new();
    let rank = |state: &SlotState| match *state {
        SlotState::Owned { epoch } => (epoch, 1),
        SlotState::Fenced { epoch, .. } | SlotState::Given { epoch, .. } => (epoch, 0),
    };
    for (member, held) in holdings {
        for &(slot, state) in &held.states {
            let epoch = rank(&state).0;
            let top = known.entry(slot).or_insert(epoch);
            *top = (*top).max(epoch);
            match newest.get(&slot) {
                Some((best, _)) if rank(best) >= rank(&state) => {}
                _ => {
                    newest.insert(slot, (state, *member));
                }
            }
        }
        for &(slot, epoch) in &held.routes_to {
            let top = known.entry(slot).or_insert(epoch);
            *top = (*top).max(epoch);
        }
    }
    (0..SLOTS)
        .filter_map(|slot| {
            let epoch = known.get(&slot).copied().unwrap_or(1) + 1;
            let fenced_at = match newest.get(&slot) {
                None => None,
                Some((SlotState::Given { to, .. }, _)) if *to == removed || !member(to) => None,
                Some((SlotState::Fenced { to, .. }, fencer)) if *to == removed => Some(*fencer),
                Some(_) => return None,
            };
            Some(Orphan { slot: Slot(slot), fenced_at, epoch })
        })
        .collect()
}

impl Cluster {
    /// What this node holds, for a removal of `removed`.
    pub(crate) fn holdings(&self, removed: NodeId) -> Holdings {
        let states = self.ownership().all().into_iter().map(|(slot, state)| (slot.0, state)).collect();
        Holdings { states, routes_to: self.routes_to(removed) }
    }

    /// Removes `node`, which is down for good: retires it and has its slots adopted. Refused
    /// while it is live, while another member is down, and, without `force`, when it held
    /// slots (their data is lost). The number of its slots the others adopted.
    pub(crate) async fn remove(&self, node: NodeId, force: bool) -> Result<u32, String> {
        let Some(membership) = self.membership() else { return Err("this node runs alone".into()) };
        if node == self.node() {
            return Err("a node cannot remove itself: ask it to leave (`tim cluster leave`)".into());
        }
        let members = crate::node::newest(membership.members().await);
        let retired_here = self.is_retired(node);
        if !retired_here && !self.placement().members().iter().any(|m| m.id == node) {
            return Err(format!("node {node} is not a member of this cluster"));
        }
        if members.iter().any(|m| m.node == node && m.live) {
            return Err(format!("node {node} is live: stop it first, or let it leave with `tim cluster leave`"));
        }
        let others: Vec<NodeId> = self.placement().members().iter().map(|m| m.id).filter(|id| *id != node).collect();
        if let Some(down) = others.iter().find(|id| !members.iter().any(|m| m.node == **id && m.live)) {
            return Err(format!(
                "member {down} is down too: start it first (the slots of {node} are found from every other member)"
            ));
        }
        let mut holdings = Vec::with_capacity(others.len());
        for member in &others {
            let held = if *member == self.node() {
                self.holdings(node)
            } else {
                match self.send(*member, &Request::Holdings { removed: node }).await {
                    Ok(Reply::Holdings(held)) => held,
                    Ok(other) => return Err(format!("member {member} answered {other:?} when asked what it holds")),
                    Err(e) => return Err(format!("member {member} did not say what it holds: {e}")),
                }
            };
            holdings.push((*member, held));
        }
        let orphans = orphans(node, &holdings);
        if !orphans.is_empty() && !force && !retired_here {
            let empty = orphans.iter().filter(|o| o.fenced_at.is_none()).count();
            return Err(format!(
                "node {node} holds {} slots ({empty} of them with no copy on any other member): with one copy per \
                 slot, their data is lost unless {node} comes back. Start it again, or run this again with --force \
                 to give its slots to the other members",
                orphans.len()
            ));
        }
        self.retire(node);
        self.wait_retired(node, &others).await?;
        let placement = self.placement();
        for orphan in &orphans {
            let Some(to) = orphan.fenced_at.or_else(|| placement.owner(orphan.slot)) else {
                return Err("no member is left to take the slots".into());
            };
            let reply = if to == self.node() {
                self.adopt(orphan.slot, orphan.epoch, node).await
            } else {
                let request = Request::Adopt { slot: orphan.slot.0, epoch: orphan.epoch, from: node };
                self.send(to, &request)
                    .await
                    .map_err(|e| format!("member {to} did not adopt slot {}: {e}", orphan.slot.0))?
            };
            match reply {
                Reply::Adopted => {}
                other => return Err(format!("member {to} did not adopt slot {}: {other:?}", orphan.slot.0)),
            }
        }
        let lost = orphans.iter().filter(|o| o.fenced_at.is_none()).count();
        warn!(%node, slots = orphans.len(), lost, "member removed: its slots are adopted by the others");
        Ok(orphans.len() as u32)
    }

    /// Waits until every other member gossips `node` as retired.
    async fn wait_retired(&self, node: NodeId, others: &[NodeId]) -> Result<(), String> {
        let Some(membership) = self.membership() else { return Err("this node runs alone".into()) };
        let deadline = Instant::now() + RETIRE_WAIT;
        let mut changes = membership.changes().await;
        loop {
            let members = crate::node::newest(membership.members().await);
            let knows = |id: &NodeId| members.iter().any(|m: &MemberInfo| m.node == *id && m.retired.contains(&node));
            if others.iter().all(knows) {
                info!(%node, "every member knows the node is removed");
                return Ok(());
            }
            if Instant::now() > deadline {
                let slow: Vec<String> = others.iter().filter(|id| !knows(id)).map(ToString::to_string).collect();
                return Err(format!(
                    "members {} did not learn of the removal in time: run this again",
                    slow.join(", ")
                ));
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: NodeId = NodeId(0xD);
    const A: NodeId = NodeId(0xA);
    const B: NodeId = NodeId(0xB);

    fn held(states: &[(u16, SlotState)], routes_to: &[(u16, u64)]) -> Holdings {
        Holdings { states: states.to_vec(), routes_to: routes_to.to_vec() }
    }

    #[test]
    fn the_dead_nodes_slots_are_found_from_the_others_records() {
        let owned = |epoch| SlotState::Owned { epoch };
        let a = held(
            &[
                (0, owned(1)),
                // Handed to the dead node, which handed it on to B (B owns it at 3).
                (1, SlotState::Given { to: DEAD, epoch: 2 }),
                // Handed to the dead node, which holds it still.
                (2, SlotState::Given { to: DEAD, epoch: 4 }),
                // Fenced towards the dead node, never finished.
                (3, SlotState::Fenced { to: DEAD, epoch: 6 }),
                // Moving from A to B right now.
                (4, SlotState::Fenced { to: B, epoch: 2 }),
            ],
            &[(2, 4), (5, 9)],
        );
        let b = held(
            &[
                (1, owned(3)),
                // Handed to a node that has left since, which handed it to the dead node.
                (6, SlotState::Given { to: NodeId(0xE), epoch: 3 }),
                // Handed to A, which owns it.
                (7, SlotState::Given { to: A, epoch: 2 }),
            ],
            &[(2, 4)],
        );
        let a = Holdings { states: [a.states, vec![(7, owned(2))]].concat(), ..a };
        let mut found = orphans(DEAD, &[(A, a), (B, b)]);
        found.retain(|o| o.slot.0 < 8);
        assert_eq!(
            found,
            [
                Orphan { slot: Slot(2), fenced_at: None, epoch: 5 },
                Orphan { slot: Slot(3), fenced_at: Some(A), epoch: 7 },
                // Nobody records slot 5; a route says the dead node held it at 9.
                Orphan { slot: Slot(5), fenced_at: None, epoch: 10 },
                Orphan { slot: Slot(6), fenced_at: None, epoch: 4 },
            ]
        );
    }
}
