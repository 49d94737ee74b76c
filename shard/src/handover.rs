//! Hands a slot to its next owner while it serves: copy, catch up, fence, switch.
//!
//! 1. **Copy**: the sender records which keys of the slot writes change from now on, then
//!    sends the slot as it is in parts, paced, while it goes on serving it. The first part
//!    clears what the receiver holds of the slot (left by an earlier, broken copy).
//! 2. **Catch up**: it sends what changed meanwhile (each changed key with its value now,
//!    or its deletion), in rounds, until a round is small or the rounds run out.
//! 3. **Fence and switch**: it fences the slot (the requests in flight finish, no new one
//!    starts: callers wait and retry), waits for the writes queued before, and sends the rest
//!    of the changes and the engine's in-memory state of the slot as the last part, which the
//!    receiver writes together with its ownership. Then it records the slot as given and
//!    deletes its copy. The slot is unavailable only for this last round.
//!
//! The receiver owns nothing of the slot until the last part, so a move cut short before the
//! fence leaves the slot served by the sender alone, and it starts over. A move cut short
//! after the fence stays fenced on the sender, which resumes it by copying the whole slot,
//! fenced (it cannot tell how far the receiver got).

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tim_kv::{Slot, SlotDelta, Store, StoreError};
use tim_net::report::ErrorChain;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::{Cluster, RouteError};
use crate::ownership::{OwnershipError, Part, SlotState};
use crate::placement::NodeId;

/// How long a slot whose hand-over started waits before it is started again (after a failure).
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Bytes of a slot sent in one part.
pub(crate) const PART_BYTES: usize = 1 << 20;
/// A round of changes short enough that the changes made while it goes are few: the next
/// round goes with the slot fenced.
const SMALL_ROUND: usize = 256 << 10;
/// Catch-up rounds before the slot is fenced whatever is left: a slot written faster than
/// it moves is fenced for longer rather than never.
const CATCH_UP_ROUNDS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub(crate) enum MoveError {
    #[error("the slot's data")]
    Store(#[from] StoreError),
    #[error("the ownership records")]
    Ownership(#[from] OwnershipError),
    #[error("sending a part")]
    Route(#[from] RouteError),
    #[error("a read on the blocking pool did not finish")]
    Blocking(#[from] tokio::task::JoinError),
    #[error("the receiver owns slot {0} already, before the copy ended")]
    Early(u16),
}

/// Paces the bytes this node sends in hand-overs, all moves together: the parts sent are
/// due at `rate`, and a part waits while the parts before it are more than [`BURST`] ahead
/// of their due time. A small part (an empty slot's) goes at once unless the moves are
/// behind, so thousands of small slots are not held up by a large one, and the bytes still
/// keep to the rate.
struct Pace {
    per_second: Option<NonZeroU64>,
    /// When the parts sent so far are all due.
    due: Mutex<Instant>,
}

/// How far ahead of the rate the moves may be.
const BURST: Duration = Duration::from_millis(100);

impl Pace {
    async fn wait(&self, bytes: usize) {
        let Some(rate) = self.per_second else { return };
        let start = {
            let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            *due = (*due).max(now) + Duration::from_secs_f64(bytes as f64 / rate.get() as f64);
            due.checked_sub(BURST).unwrap_or(now)
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

/// What this node's hand-overs did since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MoveTotals {
    /// Slots handed over.
    pub slots: u64,
    /// Bytes of slot data sent.
    pub bytes: u64,
}

/// The hand-overs this node is to make. The node's loop replaces the plan whenever it looks
/// at the members; a mover takes the next slot as soon as it is done with one, without
/// waiting for the loop.
#[derive(Default)]
pub(crate) struct Plan {
    state: Mutex<PlanState>,
    wake: Notify,
}

#[derive(Default)]
struct PlanState {
    queue: VecDeque<(Slot, NodeId)>,
    /// Slots being handed over now.
    moving: HashSet<Slot>,
    /// Slots not to start again before then.
    retry_at: HashMap<Slot, Instant>,
    /// Receivers a hand-over to failed: none to them before then (a node that went down
    /// fails every one at once).
    resting: HashMap<NodeId, Instant>,
}

impl Plan {
    fn lock(&self) -> std::sync::MutexGuard<'_, PlanState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hand-overs to make now, in order.
    pub(crate) fn replace(&self, todo: Vec<(Slot, NodeId)>) {
        let mut state = self.lock();
        let now = Instant::now();
        state.retry_at.retain(|_, at| *at > now);
        state.resting.retain(|_, at| *at > now);
        let PlanState { queue, moving, retry_at, .. } = &mut *state;
        *queue = todo.into_iter().filter(|(slot, _)| !moving.contains(slot) && !retry_at.contains_key(slot)).collect();
        drop(state);
        self.wake.notify_waiters();
    }

    fn next(&self) -> Option<(Slot, NodeId)> {
        let mut state = self.lock();
        let now = Instant::now();
        loop {
            let (slot, to) = state.queue.pop_front()?;
            if state.resting.get(&to).is_some_and(|at| *at > now) {
                continue;
            }
            state.moving.insert(slot);
            state.retry_at.insert(slot, now + RETRY_AFTER);
            return Some((slot, to));
        }
    }

    fn done(&self, slot: Slot, to: NodeId, moved: bool) {
        let mut state = self.lock();
        state.moving.remove(&slot);
        if !moved {
            state.resting.insert(to, Instant::now() + RETRY_AFTER);
        }
    }
}

/// Moves slots away from this node.
pub(crate) struct Mover {
    cluster: Arc<Cluster>,
    store: Arc<dyn Store>,
    pace: Pace,
    slots: AtomicU64,
    bytes: AtomicU64,
}

impl Mover {
    /// `rate`: bytes per second all moves send together; `None`: as fast as they go.
    pub(crate) fn new(cluster: Arc<Cluster>, store: Arc<dyn Store>, rate: Option<NonZeroU64>) -> Self {
        let pace = Pace { per_second: rate, due: Mutex::new(Instant::now()) };
        Self { cluster, store, pace, slots: AtomicU64::new(0), bytes: AtomicU64::new(0) }
    }

    /// Makes the plan's hand-overs one after the other, until `stop`.
    pub(crate) async fn run(self: Arc<Self>, plan: Arc<Plan>, stop: CancellationToken) {
        loop {
            let wake = plan.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let Some((slot, to)) = plan.next() else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = wake => continue,
                }
            };
            let moved = tokio::select! {
                _ = stop.cancelled() => return,
                moved = self.hand_over(slot, to) => moved,
            };
            match &moved {
                Ok(()) => info!(slot = slot.0, %to, "slot handed over"),
                Err(e) => warn!(slot = slot.0, %to, error = %ErrorChain(e), "hand-over stopped; it resumes"),
            }
            plan.done(slot, to, moved.is_ok());
        }
    }

    pub(crate) fn totals(&self) -> MoveTotals {
        MoveTotals { slots: self.slots.load(Ordering::Relaxed), bytes: self.bytes.load(Ordering::Relaxed) }
    }

    /// Hands `slot` to `to`: online when the slot is owned here, by a fenced copy when a
    /// hand-over to `to` was fenced already (cut short, resumed).
    pub(crate) async fn hand_over(&self, slot: Slot, to: NodeId) -> Result<(), MoveError> {
        match self.cluster.ownership().state(slot) {
            Some(SlotState::Fenced { to: fenced, epoch }) if fenced == to => {
                return self.copy_fenced(slot, to, epoch).await
            }
            Some(SlotState::Owned { epoch }) => {
                self.store.track_changes(slot).await?;
                let moved = self.copy_online(slot, to, epoch + 1).await;
                self.store.untrack_changes(slot);
                moved?;
            }
            state => return Err(OwnershipError::State { slot: slot.0, state, wanted: "owned" }.into()),
        }
        self.slots.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn copy_online(&self, slot: Slot, to: NodeId, epoch: u64) -> Result<(), MoveError> {
        let copy = rand::random();
        // The slot as it is now: what is written from now on comes as changes.
        let template = Part { copy, epoch, first: true, last: false, data: SlotDelta::default() };
        // The slot is owned here, not fenced: a receiver that owns it already is wrong.
        if !self.copy_as_is(slot, to, template, true).await? {
            return Err(MoveError::Early(slot.0));
        }
        // Rounds are paced while they shrink. A slot written faster than the pace would never
        // catch up: its rounds go unpaced, at the rate of its own writes.
        let (mut previous, mut paced) = (usize::MAX, true);
        for _ in 0..CATCH_UP_ROUNDS {
            let changes = self.changes(slot).await?;
            let bytes = changes.bytes();
            paced &= bytes < previous;
            for data in changes.split(PART_BYTES).into_iter().filter(|d| !d.is_empty()) {
                self.send_middle(to, slot, Part { copy, epoch, first: false, last: false, data }, paced).await?;
            }
            // What changes while a small round goes is what goes fenced.
            if bytes <= SMALL_ROUND {
                break;
            }
            previous = bytes;
        }
        let fenced = self.cluster.ownership().fence(slot, to).await?;
        let at = Instant::now();
        // Writes whose callers stopped waiting may still be queued: they are in the record
        // once the writer is past them.
        self.store.barrier().await?;
        let rest = match self.changes(slot).await {
            Ok(rest) => rest,
            Err(MoveError::Store(StoreError::ChangesLost { .. })) => return self.copy_fenced(slot, to, fenced).await,
            Err(e) => return Err(e),
        };
        let mut parts = rest.split(PART_BYTES);
        let last = parts.pop().unwrap_or_default();
        for data in parts {
            self.send_middle(to, slot, Part { copy, epoch, first: false, last: false, data }, false).await?;
        }
        let state = self.cluster.slot_state(slot);
        self.send(to, slot, Part { copy, epoch, first: false, last: true, data: last }, state, false).await?;
        self.cluster.ownership().give(slot, to, fenced).await?;
        debug!(slot = slot.0, %to, fenced_us = at.elapsed().as_micros() as u64, "slot handed over online");
        Ok(())
    }

    /// Copies the whole slot with it fenced at `epoch`, then switches. Not paced: the slot is
    /// unavailable until it ends.
    async fn copy_fenced(&self, slot: Slot, to: NodeId, epoch: u64) -> Result<(), MoveError> {
        let copy = rand::random();
        let template = Part { copy, epoch, first: true, last: false, data: SlotDelta::default() };
        // A receiver that owns the slot already got the last part of the hand-over cut short
        // (its answer was lost): nothing more to send.
        if self.copy_as_is(slot, to, template, false).await? {
            let last = Part { copy, epoch, first: false, last: true, data: SlotDelta::default() };
            self.send(to, slot, last, self.cluster.slot_state(slot), false).await?;
        }
        self.cluster.ownership().give(slot, to, epoch).await?;
        self.slots.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends the slot as it is now (one snapshot, read on the blocking pool at most two
    /// parts ahead), each part like `template`, the first one marked first; `Ok(false)` when
    /// the receiver owns the slot already (nothing more was sent).
    async fn copy_as_is(&self, slot: Slot, to: NodeId, template: Part, paced: bool) -> Result<bool, MoveError> {
        let (parts, mut read) = tokio::sync::mpsc::channel(2);
        let store = self.store.clone();
        let reader = tokio::task::spawn_blocking(move || {
            store.export_slot(slot, PART_BYTES, &mut |entries| parts.blocking_send(entries).is_ok())
        });
        let mut first = template.first;
        while let Some(entries) = read.recv().await {
            let data = SlotDelta { entries, removed: Vec::new() };
            if !self.send(to, slot, Part { first, data, ..template.clone() }, Bytes::new(), paced).await? {
                return Ok(false);
            }
            first = false;
        }
        reader.await??;
        Ok(true)
    }

    /// What changed in the slot since the last call, read on the blocking pool.
    async fn changes(&self, slot: Slot) -> Result<SlotDelta, MoveError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.changes(slot)).await??)
    }

    /// Sends a part of an online copy before its last: the receiver cannot own the slot yet.
    async fn send_middle(&self, to: NodeId, slot: Slot, part: Part, paced: bool) -> Result<(), MoveError> {
        match self.send(to, slot, part, Bytes::new(), paced).await? {
            true => Ok(()),
            false => Err(MoveError::Early(slot.0)),
        }
    }

    /// Sends a part, `paced` or not; `Ok(false)` when the receiver owned the slot already
    /// (it got the last part of a hand-over cut short after its fence).
    async fn send(&self, to: NodeId, slot: Slot, part: Part, state: Bytes, paced: bool) -> Result<bool, MoveError> {
        let bytes = part.data.bytes();
        if paced {
            self.pace.wait(bytes).await;
        }
        let imported = self.cluster.send_part(to, slot, part, state).await?;
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(imported)
    }
}
