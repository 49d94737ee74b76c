//! Ballots and log positions.

use serde::{Deserialize, Serialize};

use crate::placement::NodeId;

/// A position in a slot's log: 1 is the first entry, 0 the empty log.
pub type Index = u64;

/// The right to be a slot's primary: an epoch and the node that stood at it. Ordered by
/// epoch, then node, so two candidates never hold the same ballot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    pub epoch: u64,
    pub node: NodeId,
}

impl Ballot {
    /// Below every ballot anyone stands at.
    pub const ZERO: Ballot = Ballot { epoch: 0, node: NodeId(0) };

    /// The ballot `node` stands at after every ballot up to `above`.
    pub fn above(above: Ballot, node: NodeId) -> Ballot {
        Ballot { epoch: above.epoch.saturating_add(1), node }
    }
}

/// An entry's place: its index and the ballot it was appended under. Logs compare by their
/// last position, ballot first: the more advanced log is the one whose last entry came from
/// the later primary, or, under one primary, the longer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub ballot: Ballot,
    pub index: Index,
}

impl Position {
    pub const START: Position = Position { ballot: Ballot::ZERO, index: 0 };
}
