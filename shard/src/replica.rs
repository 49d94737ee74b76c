//! Replication of a slot over its replicas: the protocol, as a state machine per replica.
//!
//! Each slot has a configuration of voters (three, or fewer when the cluster has fewer
//! members) and learners, kept in the slot's log. One voter is the primary, at a ballot (an
//! epoch and its node id). It appends the slot's writes to its log and sends them to the
//! others; a write is committed, and only then applied and answered, once a quorum of the
//! voters holds it durably. Who must agree:
//!
//! - **A commit**: a quorum of the voters (of both sets under a joint configuration) holds the
//!   entry under the primary's ballot. Only entries of the primary's own ballot are counted;
//!   earlier ones commit with them.
//! - **An election**: a quorum of the voters promises the candidate's ballot, synced before
//!   they answer, and never forgotten. A voter promises only a ballot above every one it
//!   promised, only to a candidate whose log is at least as advanced as its own (last
//!   ballot, then last index), and not while it heard a live primary within the lease. The
//!   new primary appends a start entry and serves once that is committed: everything before
//!   it is committed then, in every quorum.
//! - **A truncation**: a replica drops entries only where they differ from the primary's,
//!   which happens only above what was committed (found through the ballots of the entries,
//!   never through a local mark). Dropping a committed entry is refused and logged.
//! - **A configuration change**: the log carries it in two steps (joint, then settled); a new
//!   voter holds the log up to the commit index before it may vote.
//! - **Serving reads**: the primary answers while a quorum of voters answered an append it
//!   sent less than a lease ago (minus a margin); each of those voters promises no one else
//!   for a lease after it heard the primary, a restarted one for a lease after it started.
//!
//! Where this departs from `reference/replication.md`: a voter refuses a candidate whose log
//! is behind its own (Raft's rule) instead of the candidate fetching the most advanced log of
//! its quorum. It is the same guarantee (the new primary holds every committed entry) with
//! one round fewer; the voter that refused stands itself soon after.

mod ballot;
mod conf;
mod log;
mod machine;
mod message;

pub use ballot::{Ballot, Index, Position};
pub use conf::{Conf, ConfError};
pub use log::{Entry, Kind, Log};
pub use machine::{ProposeError, Replica, RoleKind, Timing};
pub use message::{Ask, Message, Ready, Write};

#[cfg(test)]
mod sim;
