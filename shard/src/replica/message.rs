//! What the replicas of a slot tell each other, and what a step asks its driver to do.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ballot::{Ballot, Index, Position};
use super::conf::Conf;
use super::log::Entry;
use crate::placement::NodeId;

/// A message between two replicas of one slot. `sent` is the sender's clock when it sent an
/// append, echoed in the answer: the primary measures its lease from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<P> {
    /// A candidate asks for a promise: nothing under a lower ballot is accepted any more.
    Prepare {
        ballot: Ballot,
        last: Position,
        ask: Ask,
    },
    Promise {
        ballot: Ballot,
        probe: bool,
    },
    /// The primary hands the slot to the receiver, caught up: it serves no more, so the
    /// receiver's candidacy need not wait for the primary's lease to end.
    StandNow {
        ballot: Ballot,
    },
    /// A ballot refused: the sender promised `promised` (at least this ballot), or it hears a
    /// live primary, or its log (ending at `last`) is ahead of the candidate's.
    Refuse {
        ballot: Ballot,
        promised: Ballot,
        last: Position,
    },
    /// Entries after `prev`, and how far the primary knows them committed.
    Append {
        ballot: Ballot,
        prev: Position,
        entries: Vec<Entry<P>>,
        commit: Index,
        sent: Duration,
    },
    /// The sender holds the primary's log up to `matched`, durably.
    Accepted {
        ballot: Ballot,
        matched: Index,
        sent: Duration,
    },
    /// The sender's log does not hold `prev`; it may agree up to `at` (its last entry, or the
    /// one before its entries of the ballot it holds at `prev`'s index).
    Mismatch {
        ballot: Ballot,
        at: Position,
        sent: Duration,
    },
}

impl<P> Message<P> {
    /// Whether the message vouches for what the step wrote: it goes out only once the step's
    /// writes are durable. Others may go out at once (a primary's appends, while its own
    /// copy is being synced).
    pub fn needs_durable_writes(&self) -> bool {
        matches!(self, Message::Promise { .. } | Message::Accepted { .. } | Message::Refuse { .. })
    }
}

/// What a candidate asks of a voter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ask {
    /// Whether it would promise; nothing changes there. A candidate cut off from most voters
    /// never raises a ballot that would unseat the primary when it returns.
    Probe,
    Promise,
    /// A promise for the replica the primary hands the slot to: the primary's lease does
    /// not hold it back.
    Transfer,
}

/// A change to a replica's durable state, written in order, atomically per step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write<P> {
    /// Nothing under a lower ballot is accepted any more: never lowered, never pruned.
    Promise(Ballot),
    /// The entries from this index on are dropped (never committed).
    Truncate(Index),
    Append(Index, Entry<P>),
    /// The log starts over at a snapshot's position, with its configuration; the slot's data
    /// comes with the snapshot.
    Install(Position, Conf),
}

/// What a step asks of its driver: make `writes` durable, send `messages` (those that
/// [`Message::needs_durable_writes`] after the writes), send a snapshot to each of
/// `snapshots`, and apply the log up to `commit`.
#[derive(Debug)]
pub struct Ready<P> {
    pub writes: Vec<Write<P>>,
    pub messages: Vec<(NodeId, Message<P>)>,
    /// Replicas whose next entries this log no longer holds.
    pub snapshots: Vec<NodeId>,
    /// The commit index, when it moved.
    pub commit: Option<Index>,
}

impl<P> Default for Ready<P> {
    fn default() -> Self {
        Self { writes: Vec::new(), messages: Vec::new(), snapshots: Vec::new(), commit: None }
    }
}

impl<P> Ready<P> {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.messages.is_empty() && self.snapshots.is_empty() && self.commit.is_none()
    }
}
