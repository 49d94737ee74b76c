//! The session directory: where each user's sessions are, kept in memory by the owner of the
//! user's slot, so TIM's multi-device limits (tim-server.md §2.3.2, minus its off-by-one) and
//! "the user's last session ended" hold across the cluster.
//!
//! A session is a lease `(node, generation, connection)`: a node that restarts runs a new
//! generation, and a node that left, or that gossip has shown down for a while, is out, so
//! their leases no longer count and are dropped as they are met ([`tim_shard::Cluster::runs`]).
//! The directory moves with its slot (taken with the slot fenced, carried by the last part of
//! the hand-over). A slot that arrives without it (adopted after its owner was removed), and
//! every slot of a member that starts, is filled by asking every node for the sessions of its
//! users ([`Directory::restore`]); until then, a push may find fewer sessions, and its message
//! waits in the offline queue for the user's next drain.

mod entries;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tim_kv::Slot;
use tim_net::proto::ErrorCode;
use tim_net::report::ErrorChain;
use tim_shard::{Cluster, EngineAnswer, NodeId};
use tokio_util::task::TaskTracker;
use tracing::debug;

pub use entries::DeviceLimits;
use entries::{Entries, OverEntry};

use crate::error::EngineError;
use crate::model::ident::UserId;
use crate::model::lease::Lease;
use crate::model::partition;
use crate::seam::{self, ask_node, at_node, at_slot, Arrivals, CarriedState, Service, SlotOp};
use crate::session::registry::{Sessions, SessionsOp, SessionsQuery};

/// Where users' sessions are, by user.
pub type Located = HashMap<UserId, Vec<Lease>>;

/// A login the directory admitted: the sessions it replaces, and the nodes of the user's other
/// sessions, which are told that the user's sessions changed.
#[derive(Debug, Serialize, Deserialize)]
struct Admitted {
    replaced: Vec<Lease>,
    others: Vec<NodeId>,
}

/// A session the directory took out: whether it was the user's last, and the nodes of the
/// user's other sessions, which are told that the user's sessions changed.
#[derive(Debug, Serialize, Deserialize)]
struct Left {
    last: bool,
    others: Vec<NodeId>,
}

/// The operations on the entries of users, run on the owner of the users' slot.
#[derive(Debug, Serialize, Deserialize)]
enum DirectoryOp {
    /// A login: the sessions it replaces ([`Admitted`]).
    Admit { user: UserId, lease: Lease },
    /// A session ended: whether it was the user's last ([`Left`]).
    Leave { user: UserId, node: NodeId, conn: u64 },
    /// The sessions of users of the slot.
    Locate { users: Vec<UserId> },
}

impl SlotOp for DirectoryOp {
    fn service(&self) -> Service {
        Service::Directory
    }
}

impl Arrivals for Directory {
    fn at_slot(self: Arc<Self>, _slot: Slot, op: Bytes) -> EngineAnswer {
        let answer = match seam::decode(&op) {
            Ok(DirectoryOp::Admit { user, lease }) => seam::answer(self.admit_here(user, lease), "admit"),
            Ok(DirectoryOp::Leave { user, node, conn }) => seam::answer(Ok(self.leave_here(user, node, conn)), "leave"),
            Ok(DirectoryOp::Locate { users }) => seam::answer(Ok(self.locate_here(users)), "locate"),
            Err(e) => Err(e),
        };
        Box::pin(std::future::ready(answer))
    }
}

impl CarriedState for Directory {
    fn carry(&self, slot: Slot) -> Result<Vec<u8>, postcard::Error> {
        self.entries.carry(slot)
    }

    fn adopt(&self, slot: Slot, state: &[u8]) -> Result<(), postcard::Error> {
        self.entries.adopt(slot, state)
    }
}

pub struct Directory {
    data: Arc<Cluster>,
    /// This node's sessions.
    sessions: Arc<Sessions>,
    entries: Entries,
    /// The node's background tasks (notices to other nodes).
    tasks: TaskTracker,
}

impl Directory {
    pub fn new(data: Arc<Cluster>, sessions: Arc<Sessions>, limits: DeviceLimits, tasks: TaskTracker) -> Self {
        Self { data, sessions, entries: Entries::new(limits), tasks }
    }

    /// Whether a lease's session may still run (its node runs that generation).
    pub fn live(&self) -> impl Fn(&Lease) -> bool + '_ {
        |l: &Lease| self.data.runs(l.node, l.generation)
    }

    /// The nodes of `user`'s sessions but `node`.
    fn other_nodes(&self, user: UserId, node: NodeId) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> =
            self.entries.sessions(user, self.live()).into_iter().map(|l| l.node).filter(|n| *n != node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Admits a login into the directory (on the owner of the user's slot); 4111 over the
    /// device limits within `--auth-min-unix` of the previous login.
    fn admit_here(&self, user: UserId, lease: Lease) -> Result<Admitted, EngineError> {
        let replaced = self
            .entries
            .admit(user, lease, self.live())
            .map_err(|OverEntry| EngineError::from(ErrorCode::OverEntry))?;
        Ok(Admitted { replaced, others: self.other_nodes(user, lease.node) })
    }

    /// Takes an ended session out of the directory.
    fn leave_here(&self, user: UserId, node: NodeId, conn: u64) -> Left {
        let last = self.entries.leave(user, node, conn, self.live());
        Left { last, others: self.other_nodes(user, node) }
    }

    /// The sessions of `users` (all of one slot owned here).
    pub fn locate_here(&self, users: Vec<UserId>) -> Vec<Vec<Lease>> {
        users.into_iter().map(|user| self.entries.sessions(user, self.live())).collect()
    }

    /// Admits a login of this node's session `conn` (wherever the user's directory is): the
    /// sessions it replaces.
    pub async fn admit(&self, user: UserId, conn: u64, termtyp: Option<i8>) -> Result<Vec<Lease>, EngineError> {
        let lease = Lease::here(&self.data, conn, termtyp);
        let here = async { self.admit_here(user, lease) };
        let admitted: Admitted =
            at_slot(&self.data, partition::user(user), here, DirectoryOp::Admit { user, lease }).await?;
        self.sessions_changed(user, admitted.others);
        Ok(admitted.replaced)
    }

    /// Takes this node's ended session out of the user's directory; whether it was the last.
    pub async fn leave(&self, user: UserId, conn: u64) -> Result<bool, EngineError> {
        let node = self.data.node();
        let here = async { Ok(self.leave_here(user, node, conn)) };
        let left: Left =
            at_slot(&self.data, partition::user(user), here, DirectoryOp::Leave { user, node, conn }).await?;
        self.sessions_changed(user, left.others);
        Ok(left.last)
    }

    /// Where `users`' sessions are: one look-up per slot owner, all at once.
    pub async fn locate(&self, users: &[UserId]) -> Result<Located, EngineError> {
        let mut by_slot: HashMap<Slot, Vec<UserId>> = HashMap::new();
        for user in users {
            let of_slot = by_slot.entry(partition::user(*user)).or_default();
            if !of_slot.contains(user) {
                of_slot.push(*user);
            }
        }
        let lookups = by_slot.into_iter().map(|(slot, users)| async move {
            let here = async { Ok(self.locate_here(users.clone())) };
            let leases: Vec<Vec<Lease>> =
                at_slot(&self.data, slot, here, DirectoryOp::Locate { users: users.clone() }).await?;
            Ok::<_, EngineError>(users.into_iter().zip(leases))
        });
        let mut located = Located::new();
        for found in join_all(lookups).await {
            located.extend(found?);
        }
        Ok(located)
    }

    /// `user`'s sessions changed: this node and `others` forget where they are
    /// ([`crate::session::registry::Sessions::known`]). The others are told in the background, in order
    /// with this node's other calls to them; a notice lost with a link is made up for by
    /// [`crate::session::registry::KNOWN_FOR`].
    fn sessions_changed(&self, user: UserId, others: Vec<NodeId>) {
        self.sessions.forget_where(user);
        let me = self.data.node();
        for node in others {
            if node == me {
                continue;
            }
            let data = self.data.clone();
            self.tasks.spawn(async move {
                if let Err(e) = at_node(&data, node, SessionsOp::Changed { user }).await {
                    debug!(%node, error = %ErrorChain(&e), "a node was not told of a change of sessions");
                }
            });
        }
    }

    /// Closes sessions a login replaced, wherever they are.
    pub async fn kick(&self, user: UserId, replaced: Vec<Lease>) {
        let me = self.data.node();
        let mut by_node: HashMap<NodeId, Vec<u64>> = HashMap::new();
        for lease in replaced {
            by_node.entry(lease.node).or_default().push(lease.conn);
        }
        for (node, conns) in by_node {
            if node == me {
                self.sessions.kick(user, &conns);
            } else if let Err(e) = at_node(&self.data, node, SessionsOp::Kick { user, conns }).await {
                debug!(%node, error = %ErrorChain(&e), "replaced sessions not closed");
            }
        }
    }

    /// Fills the directory of slots that just arrived with the sessions every live node
    /// holds of their users.
    pub async fn restore(&self, slots: &[Slot]) {
        let slots: Vec<u16> = slots.iter().map(|s| s.0).collect();
        let mut found = self.sessions.sessions_in(&slots);
        for node in self.data.session_peers() {
            match ask_node::<Vec<(UserId, Lease)>, _>(&self.data, node, SessionsQuery::In { slots: slots.clone() })
                .await
            {
                Ok(sessions) => found.extend(sessions),
                Err(e) => debug!(%node, error = %ErrorChain(&e), "sessions of arrived slots not fetched"),
            }
        }
        self.entries.restore(found);
    }

    /// Drops the entries of a slot that left.
    pub fn forget(&self, slot: Slot) {
        self.entries.forget(slot);
    }

    /// Whether `slot` arrived with its entries (once): nothing to ask the nodes for.
    pub fn take_carried(&self, slot: Slot) -> bool {
        self.entries.take_carried(slot)
    }
}
