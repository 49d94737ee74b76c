//! `tim cluster remove NODE…`: takes members that are down for good out of the cluster.
//!
//! A dead member cannot hand its slots over, so others adopt them. Who must agree, and why:
//!
//! 1. **The live members, a majority.** The member asked collects, from every live member,
//!    every slot state it records and the newest owner it ever learned of every slot. It goes
//!    on only when the members that answered (itself included) are a majority of the member
//!    set (the removed nodes counted): a minority could be the side of a partition whose other
//!    side, the "dead" nodes among them, still serves.
//! 2. **The records, not one node's view.** A slot is the removed nodes' when its newest
//!    record anywhere (highest epoch; a live owner wins) is not owned by a live member and
//!    not moving between live members, and the newest owner anyone learned of it is a removed
//!    node, or no member is down besides the removed ones (then nobody else can hold it: it
//!    stayed with a node that left or founded the cluster). A slot whose newest owner may be
//!    a member that is down and not removed waits: it is adopted once that member is back, or
//!    removed too (run the removal again). With one copy per slot, the data of every slot
//!    the removed nodes held is lost, so without `--force` the removal refuses when there is
//!    any: it says how many, and how many have a copy of their data on a live member (a
//!    hand-over to the removed node that never finished).
//! 3. **Every answering member stops answering the removed nodes** (it retires them, keeps
//!    that, and gossips it), and the removal waits until each of them has answered no ping
//!    of theirs for twice the lease ([`crate::lease`]): by then no removed node can serve,
//!    and none ever will again.
//! 4. **Adoption** at the first epoch of the next era of every epoch known for the slot, so
//!    routes to the removed nodes lose, and the slot's ids start above every id issued
//!    before: by the member that holds it fenced towards a removed node (with that data), or
//!    else by its owner under the new placement (empty). A member adopts only for a node it
//!    knows is retired.
//!
//! Every step is safe to repeat, and the removal can be run again after it was cut short.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tim_kv::Slot;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::lease::majority;
use crate::membership::MemberInfo;
use crate::ownership::{next_era, SlotState};
use crate::placement::{NodeId, Placement};
use crate::wire::{Holdings, Removed, Reply, Request};
use crate::SLOTS;

/// How long the members get to learn that the nodes are retired.
const RETIRE_WAIT: Duration = Duration::from_secs(30);
/// How long, past twice the lease, the members get to fall silent to the removed nodes.
const SILENCE_SLACK: Duration = Duration::from_secs(30);

/// A slot of the removed nodes, and who takes it at which epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Orphan {
    pub(crate) slot: Slot,
    /// The member that holds it fenced towards a removed node (it keeps its data); `None`:
    /// the owner under the new placement takes it empty.
    pub(crate) fenced_at: Option<NodeId>,
    /// The removed (or long gone) node it is taken from.
    pub(crate) from: NodeId,
    pub(crate) epoch: u64,
}

/// Who is who in a removal.
pub(crate) struct Census {
    /// The nodes removed.
    pub(crate) removed: BTreeSet<NodeId>,
    /// The members that answered (their holdings are all there is to go by).
    pub(crate) answering: BTreeSet<NodeId>,
    /// The members that are down and not removed.
    pub(crate) down: BTreeSet<NodeId>,
}

/// Why a removal cannot adopt a slot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ErasUsedUp(pub(crate) u16);

/// The slots the removed nodes hold (see the module's rule 2), and the slots that may be on a
/// member that is down.
pub(crate) fn orphans(
    census: &Census,
    holdings: &[(NodeId, Holdings)],
) -> Result<(Vec<Orphan>, Vec<Slot>), ErasUsedUp> {
    // The newest state of each slot (the highest epoch, an owner winning a tie: a switch seen
    // half-way) with the member that records it; the newest owner anyone learned; the highest
    // epoch known at all.
    let rank = |state: &SlotState| match *state {
        SlotState::Owned { epoch } => (epoch, 1),
        SlotState::Fenced { epoch, .. } | SlotState::Given { epoch, .. } => (epoch, 0),
    };
    let mut newest: HashMap<u16, (SlotState, NodeId)> = HashMap::new();
    let mut learned: HashMap<u16, (NodeId, u64)> = HashMap::new();
    let mut top: HashMap<u16, u64> = HashMap::new();
    let mut raise = |slot: u16, epoch: u64| {
        let known = top.entry(slot).or_insert(epoch);
        *known = (*known).max(epoch);
    };
    for (member, held) in holdings {
        for &(slot, state) in &held.states {
            raise(slot, rank(&state).0);
            if newest.get(&slot).is_none_or(|(best, _)| rank(best) < rank(&state)) {
                newest.insert(slot, (state, *member));
            }
        }
        for &(slot, node, epoch) in &held.newest {
            raise(slot, epoch);
            if learned.get(&slot).is_none_or(|(_, at)| *at < epoch) {
                learned.insert(slot, (node, epoch));
            }
        }
    }
    let stays = |node: &NodeId| census.answering.contains(node) || census.down.contains(node);
    let any_removed = census.removed.first().copied().unwrap_or(NodeId(0));
    let (mut found, mut waiting) = (Vec::new(), Vec::new());
    for slot in 0..SLOTS {
        let (fenced_at, from) = match newest.get(&slot) {
            Some((SlotState::Owned { .. }, _)) => continue,
            Some((SlotState::Fenced { to, .. }, fencer)) if census.removed.contains(to) => (Some(*fencer), *to),
            Some((SlotState::Fenced { to, .. }, _)) if stays(to) => continue,
            state => {
                // Given away, fenced towards a node gone since, or held by nobody live: its
                // holder is the newest owner anyone learned of it.
                let given = match state {
                    Some((SlotState::Given { to, epoch }, _)) => Some((*to, *epoch)),
                    _ => None,
                };
                let holder = [given, learned.get(&slot).copied()].into_iter().flatten().max_by_key(|(_, e)| *e);
                match holder {
                    Some((node, _)) if census.removed.contains(&node) => (None, node),
                    Some((node, _)) if census.down.contains(&node) => continue,
                    _ if census.down.is_empty() => (None, holder.map_or(any_removed, |(node, _)| node)),
                    _ => {
                        waiting.push(Slot(slot));
                        continue;
                    }
                }
            }
        };
        let known = top.get(&slot).copied().unwrap_or(1);
        let epoch = next_era(known).ok_or(ErasUsedUp(slot))?;
        found.push(Orphan { slot: Slot(slot), fenced_at, from, epoch });
    }
    Ok((found, waiting))
}

impl Cluster {
    /// What this node holds, for a removal.
    pub(crate) fn holdings(&self) -> Holdings {
        let states = self.ownership().all().into_iter().map(|(slot, state)| (slot.0, state)).collect();
        Holdings { states, newest: self.routes().newest() }
    }

    /// Removes `nodes`, which are down for good: retires them and has their slots adopted
    /// (see the module's rules). Refused while one is live, while the members that answer are
    /// no majority, and, without `force`, when they held slots (their data is lost).
    pub(crate) async fn remove(&self, nodes: Vec<NodeId>, force: bool) -> Result<Removed, String> {
        let Some(membership) = self.membership() else { return Err("this node runs alone".into()) };
        let removed: BTreeSet<NodeId> = nodes.into_iter().collect();
        if removed.is_empty() {
            return Err("name a node to remove".into());
        }
        if removed.contains(&self.node()) {
            return Err("a node cannot remove itself: ask it to leave (`tim cluster leave`)".into());
        }
        let placement = self.placement();
        let gossip = crate::membership::newest(membership.members().await);
        for node in &removed {
            if !self.is_retired(*node) && !placement.members().iter().any(|m| m.id == *node) {
                return Err(format!("node {node} is not a member of this cluster"));
            }
            if gossip.iter().any(|m| m.node == *node && m.live) {
                return Err(format!("node {node} is live: stop it first, or let it leave with `tim cluster leave`"));
            }
        }
        let voters: BTreeSet<NodeId> =
            placement.members().iter().map(|m| m.id).chain(removed.iter().copied()).collect();
        let mut holdings = vec![(self.node(), self.holdings())];
        let mut down = BTreeSet::new();
        for member in voters.iter().filter(|m| **m != self.node() && !removed.contains(m)) {
            let live = gossip.iter().any(|m| m.node == *member && m.live);
            let held = match live {
                true => self.send(*member, &Request::Holdings).await,
                false => Err(crate::cluster::RouteError::Unavailable { slot: 0, reason: "down".into() }),
            };
            match held {
                Ok(Reply::Holdings(held)) => holdings.push((*member, held)),
                Ok(other) => return Err(format!("member {member} answered {other:?} when asked what it holds")),
                Err(e) => {
                    if live {
                        warn!(%member, error = %e, "a live member did not say what it holds: counted as down");
                    }
                    down.insert(*member);
                }
            }
        }
        let answering: BTreeSet<NodeId> = holdings.iter().map(|(m, _)| *m).collect();
        if answering.len() < majority(voters.len()) {
            return Err(format!(
                "only {} of the {} members answer ({}), and a removal needs a majority: the others may be serving on \
                 the other side of a partition. Start them again; if they are gone for good, start the cluster anew \
                 from one node's data with `tim cluster found`",
                answering.len(),
                voters.len(),
                list(&answering)
            ));
        }
        let census = Census { removed: removed.clone(), answering: answering.clone(), down };
        let (orphans, waiting) = orphans(&census, &holdings)
            .map_err(|ErasUsedUp(slot)| format!("slot {slot} cannot be adopted again: its ids are used up"))?;
        let with_data = orphans.iter().filter(|o| o.fenced_at.is_some()).count();
        if !orphans.is_empty() && !force {
            return Err(format!(
                "{} {} {} slots ({} of them with a copy of their data on a live member, from a hand-over that never \
                 finished; {} with their data on {} alone): with one copy per slot, that data is lost unless {} \
                 comes back. Start it again, or run this again with --force to give the slots to the other members",
                list(&removed),
                if removed.len() == 1 { "holds" } else { "hold" },
                orphans.len(),
                with_data,
                orphans.len() - with_data,
                list(&removed),
                list(&removed),
            ));
        }
        self.remove_all(removed.iter().copied());
        let others: Vec<NodeId> = answering.iter().copied().filter(|m| *m != self.node()).collect();
        self.wait_retired(&removed, &others).await?;
        self.wait_silent(&removed, &answering).await?;
        let live: Vec<_> = placement.members().iter().copied().filter(|m| answering.contains(&m.id)).collect();
        let fallback = Placement::new(live, 1);
        for orphan in &orphans {
            let to = orphan.fenced_at.or_else(|| {
                placement.owner(orphan.slot).filter(|o| answering.contains(o)).or_else(|| fallback.owner(orphan.slot))
            });
            let Some(to) = to else { return Err("no member is left to take the slots".into()) };
            let request = Request::Adopt { slot: orphan.slot.0, epoch: orphan.epoch, from: orphan.from };
            let reply = if to == self.node() {
                self.adopt(orphan.slot, orphan.epoch, orphan.from).await
            } else {
                self.send(to, &request)
                    .await
                    .map_err(|e| format!("member {to} did not adopt slot {}: {e}", orphan.slot.0))?
            };
            match reply {
                Reply::Adopted => self.routes().learn(orphan.slot, to, orphan.epoch),
                other => return Err(format!("member {to} did not adopt slot {}: {other:?}", orphan.slot.0)),
            }
        }
        let cost = Removed {
            with_data: with_data as u32,
            empty: (orphans.len() - with_data) as u32,
            waiting: waiting.len() as u32,
        };
        warn!(nodes = %list(&removed), with_data = cost.with_data, empty = cost.empty, waiting = cost.waiting, "members removed: their slots are adopted by the others");
        Ok(cost)
    }

    /// Waits until every member of `others` gossips every node of `nodes` as removed.
    async fn wait_retired(&self, nodes: &BTreeSet<NodeId>, others: &[NodeId]) -> Result<(), String> {
        let Some(membership) = self.membership() else { return Err("this node runs alone".into()) };
        let deadline = Instant::now() + RETIRE_WAIT;
        let mut changes = membership.changes().await;
        loop {
            let members = crate::membership::newest(membership.members().await);
            let knows = |id: &NodeId| {
                members.iter().any(|m: &MemberInfo| m.node == *id && nodes.iter().all(|n| m.removed.contains(n)))
            };
            if others.iter().all(knows) {
                info!(nodes = %list(nodes), "every member that answers knows the nodes are removed");
                return Ok(());
            }
            if Instant::now() > deadline {
                let slow: BTreeSet<NodeId> = others.iter().copied().filter(|id| !knows(id)).collect();
                return Err(format!("members {} did not learn of the removal in time: run this again", list(&slow)));
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Waits until every member of `members` has answered no ping of the removed `nodes` for
    /// twice the lease.
    async fn wait_silent(&self, nodes: &BTreeSet<NodeId>, members: &BTreeSet<NodeId>) -> Result<(), String> {
        let needed = self.leases().length() * 2;
        let deadline = Instant::now() + needed + SILENCE_SLACK;
        loop {
            let mut heard = None;
            for member in members {
                for node in nodes {
                    let silence = if *member == self.node() {
                        self.leases().silence(*node)
                    } else {
                        match self.send(*member, &Request::Silence { node: *node }).await {
                            Ok(Reply::Silence { ms }) => Duration::from_millis(ms),
                            Ok(other) => return Err(format!("member {member} answered {other:?} about node {node}")),
                            Err(e) => return Err(format!("member {member} did not answer about node {node}: {e}")),
                        }
                    };
                    if silence < needed && heard.is_none_or(|(_, _, s)| silence < s) {
                        heard = Some((*member, *node, silence));
                    }
                }
            }
            let Some((member, node, silence)) = heard else { return Ok(()) };
            if Instant::now() > deadline {
                return Err(format!(
                    "member {member} answered node {node} {} ms ago: it is alive (cut off from some members only?). \
                     Stop it, then run this again",
                    silence.as_millis()
                ));
            }
            tokio::time::sleep((needed - silence).min(Duration::from_millis(500))).await;
        }
    }
}

/// Node ids, comma-separated.
fn list(nodes: &BTreeSet<NodeId>) -> String {
    nodes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: NodeId = NodeId(0xD);
    const DOWN: NodeId = NodeId(0xE);
    const A: NodeId = NodeId(0xA);
    const B: NodeId = NodeId(0xB);

    fn held(states: &[(u16, SlotState)], newest: &[(u16, NodeId, u64)]) -> Holdings {
        Holdings { states: states.to_vec(), newest: newest.to_vec() }
    }

    fn census(down: &[NodeId]) -> Census {
        Census { removed: [DEAD].into(), answering: [A, B].into(), down: down.iter().copied().collect() }
    }

    fn owned(epoch: u64) -> SlotState {
        SlotState::Owned { epoch }
    }

    fn holdings() -> Vec<(NodeId, Holdings)> {
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
                (7, owned(2)),
                // Handed to the member that is down.
                (8, SlotState::Given { to: DOWN, epoch: 2 }),
            ],
            &[(5, DEAD, 9), (9, DOWN, 3)],
        );
        let b = held(
            &[
                (1, owned(3)),
                // Handed to a node that has left since, which handed it to the dead node.
                (6, SlotState::Given { to: NodeId(0xF), epoch: 3 }),
                // Handed to A, which owns it.
                (7, SlotState::Given { to: A, epoch: 2 }),
            ],
            &[(6, DEAD, 4)],
        );
        vec![(A, a), (B, b)]
    }

    #[test]
    fn the_dead_nodes_slots_are_found_from_the_others_records() {
        let (mut found, waiting) = orphans(&census(&[]), &holdings()).unwrap();
        assert!(waiting.is_empty());
        found.retain(|o| o.slot.0 < 10);
        let next = |epoch| next_era(epoch).unwrap();
        assert_eq!(
            found,
            [
                Orphan { slot: Slot(2), fenced_at: None, from: DEAD, epoch: next(4) },
                Orphan { slot: Slot(3), fenced_at: Some(A), from: DEAD, epoch: next(6) },
                // Nobody records slot 5; the newest owner anyone learned is the dead node.
                Orphan { slot: Slot(5), fenced_at: None, from: DEAD, epoch: next(9) },
                Orphan { slot: Slot(6), fenced_at: None, from: DEAD, epoch: next(4) },
                // Nobody else is down: slots 8 and 9 could be on no one else.
                Orphan { slot: Slot(8), fenced_at: None, from: DOWN, epoch: next(2) },
                Orphan { slot: Slot(9), fenced_at: None, from: DOWN, epoch: next(3) },
            ]
        );
        assert!(found.iter().all(|o| crate::ownership::era(o.epoch) == 1), "adopted in the next era");
    }

    #[test]
    fn slots_that_may_be_on_a_member_that_is_down_wait() {
        let (found, waiting) = orphans(&census(&[DOWN]), &holdings()).unwrap();
        let found: Vec<u16> = found.iter().map(|o| o.slot.0).filter(|s| *s < 10).collect();
        assert_eq!(found, [2, 3, 5, 6], "the dead node's, by the records and the newest owners");
        assert!(!waiting.contains(&Slot(8)) && !waiting.contains(&Slot(9)), "the down member's own slots are its own");
        // Slots no member records at all could be on either: they wait.
        assert_eq!(waiting.len(), usize::from(SLOTS) - 10);
    }
}
