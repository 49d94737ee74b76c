//! Which slots this node may serve, persisted, and the guard every request of a slot holds.
//!
//! A slot's state on a node is one of: absent (never held), `Owned { epoch }`, `Fenced { to,
//! epoch }` (being handed to `to`, who will own it at `epoch`) or `Given { to, epoch }` (handed
//! over; kept to point callers to the new owner). Only `Owned` serves. The state lives in a
//! node-local record of the store and in memory behind a per-slot lock: requests hold it for
//! reading while they run ([`Ownership::serve`]), a hand-over takes it for writing, so fencing
//! waits for the requests in flight and no request starts after it. The receiver persists
//! `Owned` in the same atomic write as the last part of the slot's data.
//!
//! A request that runs here may call requests of other slots, which never call further: the
//! guards of one node are never waited for in a cycle. A request that reaches its own slot
//! again (an engine operation reading its slot's rows) runs under the guard its task holds
//! already: taking it twice would wait behind a queued hand-over that waits for the first.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use tim_kv::{RawWrite, RowId, Slot, SlotDelta, Store, StoreError};
use tokio::sync::{watch, RwLock, RwLockReadGuard};

use crate::lease::Gate;
use crate::placement::NodeId;
use crate::{SlotSet, SLOTS};

/// An epoch is `era << ERA_SHIFT | count`: a hand-over counts one up, an adoption (the slot
/// starts over on another node, without its old owner) begins the next era. The era is also
/// the slot's id era ([`tim_kv::era_entry`]), so ids issued after an adoption are above every
/// id issued before, on any node.
const ERA_SHIFT: u32 = 40;

/// The era of an epoch.
pub fn era(epoch: u64) -> u64 {
    epoch >> ERA_SHIFT
}

/// The first epoch of the era after `epoch`'s, for an adoption; `None` once the slot's id
/// eras are used up (ids must stay below 2^53).
pub(crate) fn next_era(epoch: u64) -> Option<u64> {
    let era = era(epoch) + 1;
    (era <= RowId::MAX_ERA).then_some(era << ERA_SHIFT)
}

tokio::task_local! {
    /// The slots whose guards the current task holds.
    static HELD: Vec<Slot>;
}

/// A slot's ownership on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotState {
    Owned {
        epoch: u64,
    },
    /// Being handed to `to`, which owns it at `epoch` once the copy is complete.
    Fenced {
        to: NodeId,
        epoch: u64,
    },
    /// Handed to `to` at `epoch`.
    Given {
        to: NodeId,
        epoch: u64,
    },
}

/// Why this node does not serve a slot, as the caller learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// Not here; the node it went to, and at which epoch, when this node handed it over.
    #[error("slot {slot} is not owned here")]
    NotOwner { slot: u16, moved_to: Option<(NodeId, u64)> },
    /// Being handed over: try again shortly.
    #[error("slot {slot} is moving")]
    Moving { slot: u16 },
    /// This node serves nothing now: it is starting (not yet sure of what it owns), or it has
    /// not heard from most of the cluster lately (its lease ended). Try again.
    #[error("slot {slot} is not served now: its node is starting or cut off from most of the cluster")]
    Unready { slot: u16 },
}

impl Refusal {
    /// The slot refused.
    pub fn slot(&self) -> u16 {
        match *self {
            Self::NotOwner { slot, .. } | Self::Moving { slot } | Self::Unready { slot } => slot,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error("slot {slot} is in state {state:?}, not {wanted}")]
    State { slot: u16, state: Option<SlotState>, wanted: &'static str },
    #[error("slot {0} is outside the slot range")]
    NoSuchSlot(u16),
    #[error("ownership record of slot {0} does not decode")]
    Record(u16),
    #[error("a part of slot {0} from a copy that is no longer the current one")]
    StalePart(u16),
    #[error("slot {0} was adopted as often as its ids allow")]
    ErasUsedUp(u16),
    #[error("store failed")]
    Store(#[from] StoreError),
}

fn record_name(slot: Slot) -> String {
    format!("own/{}", slot.0)
}

fn record(slot: Slot, state: SlotState) -> Result<(String, Option<Vec<u8>>), OwnershipError> {
    let raw = postcard::to_stdvec(&state).map_err(|_| OwnershipError::Record(slot.0))?;
    Ok((record_name(slot), Some(raw)))
}

/// Guards of owned slots, held until dropped ([`Ownership::hold`]).
pub struct Held<'a> {
    _guards: Vec<RwLockReadGuard<'a, ()>>,
    /// Every slot the task holds with these guards, when they add any.
    slots: Option<Vec<Slot>>,
    gate: &'a Gate,
    /// The first slot held, named in a refusal.
    first: Slot,
}

impl<'a> Held<'a> {
    /// Runs `work` under the guards; what it calls on these slots does not take them again.
    /// Refused when this node's lease ended while it ran: its result is not given out (a
    /// write may have been made; callers send writes again safely).
    ///
    /// Combinators rather than an `async fn`, here and in [`Ownership::serve`]: a future keeps
    /// its argument beside the future it moves it into, so each `async` layer would hold
    /// another copy of `work` (kilobytes, for the engine's operations).
    pub fn run<F: Future>(self, work: F) -> impl Future<Output = Result<F::Output, Refusal>> + use<'a, F> {
        let Held { _guards: guards, slots, gate, first } = self;
        let work = match slots {
            Some(slots) => Either::Left(HELD.scope(slots, work)),
            None => Either::Right(work),
        };
        work.map(move |done| {
            drop(guards);
            if gate.is_open() {
                Ok(done)
            } else {
                Err(Refusal::Unready { slot: first.0 })
            }
        })
    }
}

/// Every slot's state, and the sets of those owned and held, kept together.
struct States {
    each: Vec<Option<SlotState>>,
    owned: SlotSet,
    /// Owned, or fenced for a hand-over that has not ended.
    held: SlotSet,
}

impl States {
    fn set(&mut self, slot: Slot, state: Option<SlotState>) {
        if let Some(s) = self.each.get_mut(usize::from(slot.0)) {
            *s = state;
            self.owned.put(slot, matches!(state, Some(SlotState::Owned { .. })));
            self.held.put(slot, matches!(state, Some(SlotState::Owned { .. } | SlotState::Fenced { .. })));
        }
    }
}

/// Every slot's state on this node.
pub struct Ownership {
    store: Arc<dyn Store>,
    guards: Vec<RwLock<()>>,
    /// The states, for reads that must not wait (routing, status); written under the slot's
    /// guard held for writing.
    states: Mutex<States>,
    /// Counts changes of the owned set: gossiped, so peers know to fetch the new list.
    version_tx: watch::Sender<u64>,
    /// The copy each slot being received here comes from, and when its last part came:
    /// parts of an earlier copy that arrive late (their sender gave up waiting and started
    /// over) are refused, and a copy that stopped coming is removed.
    copies: Mutex<HashMap<Slot, (u64, Instant)>>,
    gate: Gate,
}

impl Ownership {
    /// Loads the states recorded in the store.
    pub fn load(store: Arc<dyn Store>) -> Result<Self, OwnershipError> {
        let mut states =
            States { each: vec![None; usize::from(SLOTS)], owned: SlotSet::default(), held: SlotSet::default() };
        for slot in (0..SLOTS).map(Slot) {
            let state = match store.local(&record_name(slot))? {
                Some(raw) => Some(postcard::from_bytes(&raw).map_err(|_| OwnershipError::Record(slot.0))?),
                None => None,
            };
            states.set(slot, state);
        }
        Ok(Self {
            store,
            guards: (0..SLOTS).map(|_| RwLock::new(())).collect(),
            states: Mutex::new(states),
            version_tx: watch::channel(0).0,
            copies: Mutex::default(),
            gate: Gate::default(),
        })
    }

    /// Whether this node serves its slots now ([`crate::lease`]).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    fn states(&self) -> std::sync::MutexGuard<'_, States> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn guard(&self, slot: Slot) -> Result<&RwLock<()>, OwnershipError> {
        self.guards.get(usize::from(slot.0)).ok_or(OwnershipError::NoSuchSlot(slot.0))
    }

    pub fn state(&self, slot: Slot) -> Option<SlotState> {
        self.states().each.get(usize::from(slot.0)).copied().flatten()
    }

    fn set(&self, slot: Slot, state: Option<SlotState>) {
        self.states().set(slot, state);
        self.version_tx.send_modify(|v| *v += 1);
    }

    /// The slots owned here, with their epochs.
    pub fn owned(&self) -> Vec<(Slot, u64)> {
        self.states()
            .each
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Some(SlotState::Owned { epoch }) => Some((Slot(i as u16), *epoch)),
                _ => None,
            })
            .collect()
    }

    /// The slots owned here, as a set.
    pub fn owned_set(&self) -> SlotSet {
        self.states().owned.clone()
    }

    /// The slots owned here or fenced for a hand-over that has not ended: the slots whose
    /// in-memory state (the session directory) this node still keeps, to carry with the last
    /// part of the hand-over.
    pub fn held_set(&self) -> SlotSet {
        self.states().held.clone()
    }

    /// Every slot this node holds any state of.
    pub fn all(&self) -> Vec<(Slot, SlotState)> {
        self.states().each.iter().enumerate().filter_map(|(i, s)| s.map(|s| (Slot(i as u16), s))).collect()
    }

    /// Watches the count of changes of the owned set.
    pub fn version(&self) -> watch::Receiver<u64> {
        self.version_tx.subscribe()
    }

    /// Whether this node has never held any slot (a new node, which must not claim them).
    pub fn is_empty(&self) -> bool {
        self.states().each.iter().all(Option::is_none)
    }

    /// Makes this node the owner of every slot at epoch 1: the first node of a new cluster,
    /// with `records` (its incarnation) in the same write. Refused unless the node never held
    /// a slot.
    pub async fn bootstrap(&self, records: Vec<(String, Option<Vec<u8>>)>) -> Result<(), OwnershipError> {
        if !self.is_empty() {
            return Err(OwnershipError::State { slot: 0, state: self.state(Slot(0)), wanted: "absent" });
        }
        let state = SlotState::Owned { epoch: 1 };
        let mut all = (0..SLOTS).map(|s| record(Slot(s), state)).collect::<Result<Vec<_>, _>>()?;
        all.extend(records);
        self.store.write_raw(RawWrite::local(all)).await?;
        let mut states = self.states();
        (0..SLOTS).for_each(|s| states.set(Slot(s), Some(state)));
        drop(states);
        self.version_tx.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Runs `work` while `slot` is owned here, holding the slot's guard so no hand-over
    /// begins meanwhile; a slot not owned here is refused with what this node knows of it.
    pub fn serve<F: Future>(
        &self,
        slot: Slot,
        work: F,
    ) -> impl Future<Output = Result<F::Output, Refusal>> + use<'_, F> {
        self.hold_one(slot).then(move |held| match held {
            Ok(held) => Either::Left(held.run(work)),
            Err(refusal) => Either::Right(std::future::ready(Err(refusal))),
        })
    }

    /// [`Ownership::hold`] of one slot, in a future that owns the slot list it borrows.
    async fn hold_one(&self, slot: Slot) -> Result<Held<'_>, Refusal> {
        self.hold(&[slot]).await
    }

    /// Takes the guards of `slots` while they are owned here; refused at the first slot not
    /// owned here. The guards this task holds already are not taken again.
    ///
    /// No cycle of waits: a task takes its guards in slot order, and a task that holds some
    /// already never waits for more (a fence queued on one it wants would otherwise wait for
    /// a task that waits, in turn, for a fence queued on one this task holds). It is refused
    /// as [`Refusal::Moving`] instead, which is what waiting behind that fence would end in.
    pub async fn hold(&self, slots: &[Slot]) -> Result<Held<'_>, Refusal> {
        let first = slots.first().copied().unwrap_or(Slot(0));
        if !self.gate.is_open() {
            return Err(Refusal::Unready { slot: first.0 });
        }
        let held = HELD.try_with(|h| h.clone()).unwrap_or_default();
        let mut wanted: Vec<Slot> = slots.iter().copied().filter(|s| !held.contains(s)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut guards = Vec::with_capacity(wanted.len());
        for &slot in &wanted {
            let guard = self.guard(slot).map_err(|_| Refusal::NotOwner { slot: slot.0, moved_to: None })?;
            guards.push(if held.is_empty() {
                guard.read().await
            } else {
                guard.try_read().map_err(|_| Refusal::Moving { slot: slot.0 })?
            });
            match self.state(slot) {
                Some(SlotState::Owned { .. }) => {}
                Some(SlotState::Fenced { .. }) => return Err(Refusal::Moving { slot: slot.0 }),
                Some(SlotState::Given { to, epoch }) => {
                    return Err(Refusal::NotOwner { slot: slot.0, moved_to: Some((to, epoch)) })
                }
                None => return Err(Refusal::NotOwner { slot: slot.0, moved_to: None }),
            }
        }
        let fresh = !wanted.is_empty();
        let mut now_held = held;
        now_held.extend(wanted);
        Ok(Held { _guards: guards, slots: fresh.then_some(now_held), gate: &self.gate, first })
    }

    /// Fences an owned slot for a hand-over to `to`, after the requests in flight: from now
    /// on it is refused as moving. Returns the epoch the receiver will own it at. A slot
    /// already fenced towards `to` (a hand-over resumed after a restart) keeps its epoch.
    pub async fn fence(&self, slot: Slot, to: NodeId) -> Result<u64, OwnershipError> {
        let _held = self.guard(slot)?.write().await;
        let state = self.state(slot);
        let epoch = match state {
            Some(SlotState::Owned { epoch }) => epoch + 1,
            Some(SlotState::Fenced { to: already, epoch }) if already == to => return Ok(epoch),
            _ => return Err(OwnershipError::State { slot: slot.0, state, wanted: "owned" }),
        };
        let fenced = SlotState::Fenced { to, epoch };
        self.store.write_raw(RawWrite::local(vec![record(slot, fenced)?])).await?;
        self.set(slot, Some(fenced));
        Ok(epoch)
    }

    /// Ends a hand-over whose receiver owns the slot now: the slot is recorded as given, and
    /// its data here is deleted in the same write.
    pub async fn give(&self, slot: Slot, to: NodeId, epoch: u64) -> Result<(), OwnershipError> {
        let _held = self.guard(slot)?.write().await;
        let state = self.state(slot);
        if state != Some(SlotState::Fenced { to, epoch }) {
            return Err(OwnershipError::State { slot: slot.0, state, wanted: "fenced" });
        }
        self.let_go(slot, to, epoch).await
    }

    /// Records `slot` as given to `to` at `epoch` and deletes what this node holds of it, in
    /// one write; the caller holds the slot's guard for writing.
    async fn let_go(&self, slot: Slot, to: NodeId, epoch: u64) -> Result<(), OwnershipError> {
        let given = SlotState::Given { to, epoch };
        self.store.write_raw(RawWrite::clearing(slot, vec![record(slot, given)?])).await?;
        self.set(slot, Some(given));
        Ok(())
    }

    /// Takes one part of a copy of a slot handed to this node at `part.epoch`: the first part
    /// clears what this node holds of the slot (left from an earlier, broken copy) and makes
    /// its copy the current one; a later part of another copy is refused (it was sent before
    /// its sender started over); the last part makes this node the owner, atomically with its
    /// data, and runs `adopt` before the slot serves its first request. `Ok(false)`: this
    /// node held the slot at that epoch already (the sender missed the answer to its last
    /// part, or the part is older than a hand-over since): nothing is written.
    pub async fn receive(&self, slot: Slot, part: Part, adopt: impl FnOnce()) -> Result<bool, OwnershipError> {
        let _held = self.guard(slot)?.write().await;
        let state = self.state(slot);
        match state {
            Some(SlotState::Owned { epoch: held }) if held >= part.epoch => return Ok(false),
            // Handing it on, or handed on: it was here at `fenced - 1` or `given - 1`.
            Some(SlotState::Fenced { epoch: later, .. } | SlotState::Given { epoch: later, .. })
                if later > part.epoch =>
            {
                return Ok(false);
            }
            Some(SlotState::Owned { .. } | SlotState::Fenced { .. }) => {
                return Err(OwnershipError::State { slot: slot.0, state, wanted: "absent or given" });
            }
            _ => {}
        }
        {
            let mut copies = self.copies();
            if part.first {
                copies.insert(slot, (part.copy, Instant::now()));
            } else {
                match copies.get_mut(&slot) {
                    Some((copy, at)) if *copy == part.copy => *at = Instant::now(),
                    _ => return Err(OwnershipError::StalePart(slot.0)),
                }
            }
        }
        let owned = SlotState::Owned { epoch: part.epoch };
        let local = if part.last { vec![record(slot, owned)?] } else { Vec::new() };
        let write = RawWrite { slot, clear: part.first, entries: part.data.entries, removed: part.data.removed, local };
        self.store.write_raw(write).await?;
        if part.last {
            self.copies().remove(&slot);
            adopt();
            self.set(slot, Some(owned));
        }
        Ok(true)
    }

    /// Takes a slot whose owner `from` was removed from the cluster: owned here at `epoch`,
    /// the first of a new era, which the slot's ids start in. Held fenced towards `from`, the
    /// slot keeps its data (the hand-over never ended, as far as anyone live knows); otherwise
    /// what this node holds of it (an unfinished copy) is dropped. Done already, nothing
    /// changes.
    pub async fn adopt(&self, slot: Slot, epoch: u64, from: NodeId) -> Result<(), OwnershipError> {
        let _held = self.guard(slot)?.write().await;
        let state = self.state(slot);
        let clear = match state {
            Some(SlotState::Owned { epoch: held }) if held == epoch => return Ok(()),
            Some(SlotState::Fenced { to, epoch: fenced }) if to == from && fenced < epoch => false,
            None => true,
            Some(SlotState::Given { epoch: given, .. }) if given < epoch => true,
            _ => {
                return Err(OwnershipError::State {
                    slot: slot.0,
                    state,
                    wanted: "absent, given, or fenced to the removed node",
                })
            }
        };
        self.own_anew(slot, epoch, clear).await
    }

    /// Owns `slot` at `epoch`, in that epoch's id era, with or without the data held here;
    /// the caller holds the slot's guard for writing.
    async fn own_anew(&self, slot: Slot, epoch: u64, clear: bool) -> Result<(), OwnershipError> {
        let owned = SlotState::Owned { epoch };
        let write = RawWrite {
            slot,
            clear,
            entries: vec![tim_kv::era_entry(slot, era(epoch))],
            removed: Vec::new(),
            local: vec![record(slot, owned)?],
        };
        self.store.write_raw(write).await?;
        self.copies().remove(&slot);
        self.set(slot, Some(owned));
        Ok(())
    }

    /// Makes this node the owner of every slot in a new cluster it founds from its data dir
    /// (`tim cluster found`): the slots it owns keep their data and epochs, any other is owned
    /// empty from the era after `known` (the newest epoch known for it), so its ids stay above
    /// every id it issued anywhere. The slots taken empty.
    pub async fn found_again(&self, known: impl Fn(Slot) -> u64) -> Result<Vec<Slot>, OwnershipError> {
        let mut taken = Vec::new();
        for slot in (0..SLOTS).map(Slot) {
            let _held = self.guard(slot)?.write().await;
            let epoch = match self.state(slot) {
                Some(SlotState::Owned { .. }) => continue,
                Some(SlotState::Fenced { epoch, .. } | SlotState::Given { epoch, .. }) => epoch,
                None => 0,
            };
            let epoch = next_era(epoch.max(known(slot))).ok_or(OwnershipError::ErasUsedUp(slot.0))?;
            self.own_anew(slot, epoch, true).await?;
            taken.push(slot);
        }
        Ok(taken)
    }

    /// Stops serving `slot` when `by` owns it at `epoch`, above this node's own epoch for it
    /// (a peer said so): recorded as given to `by`, and what this node holds of it deleted in
    /// the same write, after the requests in flight. Whether it held the slot at a lower epoch
    /// (checked first without the guard: callers pass every slot a peer owns).
    pub async fn supersede(&self, slot: Slot, by: NodeId, epoch: u64) -> Result<bool, OwnershipError> {
        let below = || match self.state(slot) {
            Some(SlotState::Owned { epoch: held } | SlotState::Fenced { epoch: held, .. }) => held < epoch,
            _ => false,
        };
        if !below() {
            return Ok(false);
        }
        let _held = self.guard(slot)?.write().await;
        if !below() {
            return Ok(false);
        }
        self.let_go(slot, by, epoch).await?;
        Ok(true)
    }

    /// Deletes what this node holds of slots it does not own and no copy brings any more (a
    /// hand-over to it that stopped more than `quiet` ago and will not resume: its sender
    /// starts any copy over with its first part). The slots cleared.
    pub async fn drop_partial_copies(&self, quiet: Duration) -> Result<Vec<Slot>, OwnershipError> {
        let candidates: Vec<Slot> = (0..SLOTS).map(Slot).filter(|slot| self.is_partial(*slot, quiet)).collect();
        // Thousands of look-ups in the store: on the blocking pool.
        let store = self.store.clone();
        let holding = tokio::task::spawn_blocking(move || -> Result<Vec<Slot>, StoreError> {
            let held = candidates.into_iter().map(|slot| store.holds(slot).map(|holds| holds.then_some(slot)));
            held.filter_map(Result::transpose).collect()
        });
        let holding: Vec<Slot> = holding.await.map_err(|_| StoreError::Interrupted)??;
        let mut dropped = Vec::new();
        for slot in holding {
            let _held = self.guard(slot)?.write().await;
            if !self.is_partial(slot, quiet) {
                continue;
            }
            self.store.write_raw(RawWrite::clearing(slot, Vec::new())).await?;
            self.copies().remove(&slot);
            dropped.push(slot);
        }
        Ok(dropped)
    }

    /// Whether `slot` is not served here, and no part of a copy of it came within `quiet`.
    fn is_partial(&self, slot: Slot, quiet: Duration) -> bool {
        let receiving = self.copies().get(&slot).is_some_and(|(_, at)| at.elapsed() < quiet);
        !receiving && matches!(self.state(slot), None | Some(SlotState::Given { .. }))
    }

    fn copies(&self) -> std::sync::MutexGuard<'_, HashMap<Slot, (u64, Instant)>> {
        self.copies.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One part of a copy of a slot on its way to its next owner.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Part {
    /// Tells the attempts of a hand-over apart.
    pub copy: u64,
    /// The epoch the receiver owns the slot at after the last part.
    pub epoch: u64,
    /// Clears what the receiver holds of the slot first.
    pub first: bool,
    /// Makes the receiver the owner.
    pub last: bool,
    /// Entries of the slot, and keys deleted since an earlier part.
    pub data: SlotDelta,
}

#[cfg(test)]
mod tests;
