//! The cluster's incarnation: a random id made when a node founds a cluster, kept by every
//! member in its store, and carried by every gossip datagram and every node-link handshake.
//! Two clusters that share a deployment secret (a node that once founded its own cluster, a
//! seed whose data dir was wiped and which founded a new one with its seedless command line)
//! never hear each other: each side drops the other's datagrams and refuses its links, and
//! says so.
//!
//! Who decides a node's incarnation:
//! - a node that founds a cluster makes a new one (only on a data dir that never belonged to
//!   a cluster, or by the operator's `tim cluster found`);
//! - a node that joins (empty data dir, seeds) takes its seeds' incarnation from the first
//!   datagram one of them sends it, and keeps it before it takes any slot;
//! - a data dir written before incarnations existed has the deployment's legacy incarnation,
//!   derived from the secret and the cluster id, the same on every node of that cluster.
//!
//! Incarnation 0 is "not known yet" (a node joining): it is heard by everyone, and refused
//! any slot.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tim_kv::{RawWrite, Store, StoreError};
use tokio::sync::watch;

/// The store record of the node's incarnation.
const RECORD: &str = "incarnation";

/// Gossip of another cluster heard here: its incarnation, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stranger {
    pub incarnation: u64,
    pub from: SocketAddr,
}

/// This node's incarnation, as gossip and links use it.
pub struct Incarnation {
    /// Shared with the node links, which prove it in their handshakes.
    own: Arc<AtomicU64>,
    /// Whether the store keeps `own`: a node takes no slot before.
    saved: AtomicBool,
    /// The seeds a node that does not know its incarnation takes it from.
    seeds: HashSet<SocketAddr>,
    /// The incarnation once known (0 before).
    learned: watch::Sender<u64>,
    /// The last datagram of another incarnation.
    stranger: watch::Sender<Option<Stranger>>,
    /// Whether a datagram of this node's own (known) incarnation arrived.
    heard_own: AtomicBool,
}

impl Incarnation {
    /// A node's incarnation as its store keeps it (0: not known yet).
    pub fn new(own: u64, seeds: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self {
            own: Arc::new(AtomicU64::new(own)),
            saved: AtomicBool::new(own != 0),
            seeds: seeds.into_iter().collect(),
            learned: watch::Sender::new(own),
            stranger: watch::Sender::new(None),
            heard_own: AtomicBool::new(false),
        }
    }

    /// The incarnation, 0 while not known.
    pub fn get(&self) -> u64 {
        self.own.load(Ordering::Acquire)
    }

    /// Sets it, kept in the store already (a node founding a cluster).
    pub(crate) fn set(&self, incarnation: u64) {
        self.own.store(incarnation, Ordering::Release);
        self.saved.store(true, Ordering::Release);
        self.learned.send_replace(incarnation);
    }

    /// The incarnation, for the node links' handshakes.
    pub(crate) fn shared(&self) -> Arc<AtomicU64> {
        self.own.clone()
    }

    /// Whether the store keeps it.
    pub(crate) fn is_saved(&self) -> bool {
        self.saved.load(Ordering::Acquire)
    }

    /// The store keeps it now.
    pub(crate) fn mark_saved(&self) {
        self.saved.store(true, Ordering::Release);
    }

    /// Watches it: fires when a joining node learns it.
    pub(crate) fn learned(&self) -> watch::Receiver<u64> {
        self.learned.subscribe()
    }

    /// Watches the gossip of other incarnations heard here.
    pub(crate) fn strangers(&self) -> watch::Receiver<Option<Stranger>> {
        self.stranger.subscribe()
    }

    /// Whether a datagram of this node's own incarnation arrived since it started.
    pub(crate) fn heard_own(&self) -> bool {
        self.heard_own.load(Ordering::Acquire)
    }

    /// Whether a datagram of incarnation `theirs` from `from` is heard: one of the same
    /// incarnation, or of a node that does not know its own yet; and, by a joining node that
    /// does not know its own, one from a seed, whose incarnation it takes (one from another
    /// node it leaves unheard until then). Any other is a stranger's: refused and remembered.
    pub fn admits(&self, theirs: u64, from: SocketAddr) -> Admitted {
        let own = self.get();
        if theirs == own || theirs == 0 {
            if own != 0 && theirs == own {
                self.heard_own.store(true, Ordering::Release);
            }
            return Admitted::Heard;
        }
        if own == 0 && self.seeds.contains(&from) {
            let taken = match self.own.compare_exchange(0, theirs, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.learned.send_replace(theirs);
                    true
                }
                Err(now) => now == theirs,
            };
            if taken {
                self.heard_own.store(true, Ordering::Release);
                return Admitted::Heard;
            }
        }
        if own == 0 && !self.seeds.is_empty() {
            return Admitted::NotYet;
        }
        self.stranger.send_replace(Some(Stranger { incarnation: theirs, from }));
        Admitted::Stranger
    }
}

/// What becomes of a datagram ([`Incarnation::admits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    Heard,
    /// A joining node does not know its cluster yet: dropped, quietly.
    NotYet,
    /// Another cluster's: refused.
    Stranger,
}

/// The incarnation kept in the store, if any.
pub(crate) fn load(store: &dyn Store) -> Result<Option<u64>, StoreError> {
    Ok(store.local(RECORD)?.and_then(|raw| raw.as_slice().try_into().ok().map(u64::from_be_bytes)))
}

/// The store record of `incarnation`, for a write.
pub(crate) fn record(incarnation: u64) -> (String, Option<Vec<u8>>) {
    (RECORD.to_owned(), Some(incarnation.to_be_bytes().to_vec()))
}

/// Keeps the incarnation in the store (synced when the store syncs).
pub(crate) async fn save(store: &dyn Store, incarnation: u64) -> Result<(), StoreError> {
    store.write_raw(RawWrite::local(vec![record(incarnation)])).await.map(drop)
}

/// A new incarnation: random, never 0.
pub(crate) fn new_id() -> u64 {
    rand::random::<u64>().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_member_hears_its_own_incarnation_and_joiners_only() {
        let member = Incarnation::new(7, []);
        assert_eq!(member.admits(7, addr(1)), Admitted::Heard);
        assert!(member.heard_own());
        assert_eq!(member.admits(0, addr(2)), Admitted::Heard, "a joining node that does not know it yet");
        assert_eq!(member.admits(8, addr(3)), Admitted::Stranger);
        assert_eq!(*member.strangers().borrow(), Some(Stranger { incarnation: 8, from: addr(3) }));
        assert_eq!(member.get(), 7);
    }

    #[test]
    fn a_joiner_takes_its_seeds_incarnation_and_no_other() {
        let joiner = Incarnation::new(0, [addr(1)]);
        assert_eq!(joiner.admits(9, addr(2)), Admitted::NotYet, "not from a seed");
        assert_eq!((joiner.get(), *joiner.strangers().borrow()), (0, None));
        assert!(!joiner.heard_own());
        assert_eq!(joiner.admits(7, addr(1)), Admitted::Heard);
        assert_eq!((joiner.get(), *joiner.learned().borrow()), (7, 7));
        assert_eq!(joiner.admits(9, addr(1)), Admitted::Stranger, "a seed of another cluster later on");
        assert_eq!(joiner.admits(7, addr(2)), Admitted::Heard);
    }

    #[test]
    fn a_founder_takes_none() {
        let founder = Incarnation::new(0, []);
        assert_eq!(founder.admits(5, addr(1)), Admitted::Stranger);
        assert_eq!(founder.get(), 0);
        assert_eq!(founder.strangers().borrow().map(|s| s.incarnation), Some(5));
    }
}
