//! Leases: a node serves its slots only while enough of the member set has lately answered
//! it that the others could not remove it, so a node cut off from the others stops
//! acknowledging writes before anyone may take its slots.
//!
//! Every member pings every other member over its node link every [`PING_EVERY`]. A member
//! answers a ping unless the pinging node was removed from the cluster, and notes when it
//! answered. A node's lease runs from the send time of the newest ping that half of the
//! member set (itself counted, half rounded up) answered, for the lease's length: past it,
//! every request for its slots is refused as retryable (5102) until answers come again. A
//! request that finishes after its node's lease ended is refused too, whatever it did.
//!
//! A removal (`tim cluster remove`) needs a majority of the member set to answer it, and
//! waits, on every member that answers, until that member has answered no ping of the
//! removed node for twice the lease, after the members stopped answering it. Half of the
//! members and a majority always share a member: so by then the removed node has not been
//! able to serve for at least a lease, and never will again. The margin of one more lease
//! covers clocks that run at slightly different rates and a request between its last check
//! and its answer. Only monotonic clocks are compared, each on its own node.
//!
//! Half, not a majority: the members a node has not heard from can remove it only when they
//! are a majority, so a node that hears from half of the member set (itself counted) is safe
//! to serve, and asking for more would only stop more nodes. In a cluster of two, each node
//! serves alone (neither can ever remove the other); in one of four, two that hear each other
//! serve. A node cut off in a cluster of three or more, as the issue of a partition is, stops
//! at the end of its lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::placement::NodeId;

/// How often a member pings the others.
pub(crate) const PING_EVERY: Duration = Duration::from_millis(500);

/// Whether this node serves its slots now: open for good on a node that runs alone, else
/// until the end of its lease (closed until the node is sure of what it owns, at start).
pub struct Gate {
    base: Instant,
    /// Nanoseconds after `base` the gate is open until; `u64::MAX`: for good.
    until: AtomicU64,
}

impl Default for Gate {
    fn default() -> Self {
        Self { base: Instant::now(), until: AtomicU64::new(u64::MAX) }
    }
}

impl Gate {
    pub fn is_open(&self) -> bool {
        match self.until.load(Ordering::Acquire) {
            u64::MAX => true,
            until => (self.base.elapsed().as_nanos() as u64) < until,
        }
    }

    /// Open until `until`, `None`: for good.
    pub(crate) fn open_until(&self, until: Option<Instant>) {
        let nanos =
            until.map_or(u64::MAX, |at| (at.saturating_duration_since(self.base).as_nanos() as u64).min(u64::MAX - 1));
        self.until.store(nanos, Ordering::Release);
    }

    pub(crate) fn close(&self) {
        self.until.store(0, Ordering::Release);
    }
}

/// The pings this node sent and answered.
pub(crate) struct Leases {
    length: Duration,
    started: Instant,
    /// Per peer: the send time of the newest ping of this node it answered.
    acked: Mutex<HashMap<NodeId, Instant>>,
    /// Per peer: when this node last answered a ping of it.
    answered: Mutex<HashMap<NodeId, Instant>>,
}

/// Most peers remembered (a cluster has far fewer members).
const MAX_PEERS: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Leases {
    pub(crate) fn new(length: Duration) -> Self {
        Self { length, started: Instant::now(), acked: Mutex::default(), answered: Mutex::default() }
    }

    pub(crate) fn length(&self) -> Duration {
        self.length
    }

    /// `peer` answered a ping this node sent at `sent`.
    pub(crate) fn acked(&self, peer: NodeId, sent: Instant) {
        let mut acked = lock(&self.acked);
        if acked.len() >= MAX_PEERS && !acked.contains_key(&peer) {
            acked.clear();
        }
        let at = acked.entry(peer).or_insert(sent);
        *at = (*at).max(sent);
    }

    /// This node answers a ping of `peer` now.
    pub(crate) fn answer(&self, peer: NodeId) {
        let mut answered = lock(&self.answered);
        if answered.len() >= MAX_PEERS && !answered.contains_key(&peer) {
            answered.clear();
        }
        answered.insert(peer, Instant::now());
    }

    /// How long this node has answered no ping of `peer` (since it started, when it never did).
    pub(crate) fn silence(&self, peer: NodeId) -> Duration {
        lock(&self.answered).get(&peer).copied().unwrap_or(self.started).elapsed()
    }

    /// The end of this node's lease among `voters` (the member set, maybe with this node):
    /// the send time of the newest ping that half of them answered, plus the lease. `None`
    /// when no other member's answer is needed (a member set of one or two).
    pub(crate) fn until(&self, me: NodeId, voters: &[NodeId]) -> Result<Option<Instant>, ()> {
        let needed = needed_for_lease(me, voters);
        if needed == 0 {
            return Ok(None);
        }
        let acked = lock(&self.acked);
        let mut times: Vec<Instant> =
            voters.iter().filter(|v| **v != me).filter_map(|v| acked.get(v).copied()).collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        times.get(needed - 1).map(|at| Some(*at + self.length)).ok_or(())
    }
}

/// The least number of `count` members that is more than half of them.
pub(crate) fn majority(count: usize) -> usize {
    count / 2 + 1
}

/// How many of `voters` other than `me` must answer for `me` to hold a lease: the members it
/// does not hear from must be fewer than a majority.
pub(crate) fn needed_for_lease(me: NodeId, voters: &[NodeId]) -> usize {
    let count = voters.len() + usize::from(!voters.contains(&me));
    (count - majority(count) + 1).saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_is_open_until_its_time() {
        let gate = Gate::default();
        assert!(gate.is_open());
        gate.close();
        assert!(!gate.is_open());
        gate.open_until(Some(Instant::now() + Duration::from_secs(60)));
        assert!(gate.is_open());
        gate.open_until(Some(Instant::now() - Duration::from_millis(1)));
        assert!(!gate.is_open());
        gate.open_until(None);
        assert!(gate.is_open());
    }

    #[test]
    fn a_lease_rests_on_a_majority_of_the_members() {
        let (me, a, b, c, d) = (NodeId(1), NodeId(2), NodeId(3), NodeId(4), NodeId(5));
        let leases = Leases::new(Duration::from_secs(4));
        assert_eq!(leases.until(me, &[me]), Ok(None), "alone: no one else needed");
        assert_eq!(leases.until(me, &[me, a]), Ok(None), "two: the other one can never remove this one");
        assert_eq!(leases.until(me, &[me, a, b]), Err(()), "three: one other is needed");
        let t0 = Instant::now();
        leases.acked(a, t0);
        assert_eq!(leases.until(me, &[me, a, b]), Ok(Some(t0 + Duration::from_secs(4))));
        assert_eq!(leases.until(me, &[me, a, b, c]), Ok(Some(t0 + Duration::from_secs(4))), "four: half is two");
        // Five members: two others needed; the lease runs from the older of the two newest.
        leases.acked(b, t0 + Duration::from_secs(1));
        leases.acked(c, t0 + Duration::from_secs(2));
        assert_eq!(leases.until(me, &[me, a, b, c, d]), Ok(Some(t0 + Duration::from_secs(5))));
        // An older answer arriving late changes nothing.
        leases.acked(c, t0);
        assert_eq!(leases.until(me, &[me, a, b, c, d]), Ok(Some(t0 + Duration::from_secs(5))));
        assert_eq!(leases.until(me, &[a, b, c, d]), Ok(Some(t0 + Duration::from_secs(5))), "this node counts");
    }

    #[test]
    fn half_of_the_members_and_a_majority_always_meet() {
        for count in 1..12usize {
            let ids: Vec<NodeId> = (1..=count as u64).map(NodeId).collect();
            let lease = needed_for_lease(NodeId(1), &ids) + 1;
            assert!(lease + majority(count) > count, "{count} members: {lease} and {} may not meet", majority(count));
            assert!(count - lease < majority(count), "{count}: the unheard could remove it");
        }
    }

    #[test]
    fn silence_counts_from_the_last_answer() {
        let leases = Leases::new(Duration::from_secs(4));
        assert!(leases.silence(NodeId(2)) < Duration::from_secs(5), "since the start");
        leases.answer(NodeId(2));
        assert!(leases.silence(NodeId(2)) < Duration::from_secs(1));
    }
}
