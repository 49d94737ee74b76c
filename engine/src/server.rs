//! What every connection of a node shares.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServeConfig;
use crate::model::ident::encode_base58;
use crate::services::accounts::Accounts;
use crate::services::groups::Groups;
use crate::services::history::History;
use crate::services::offline::OfflineQueue;
use crate::services::rooms::Rooms;
use crate::services::rosters::Rosters;
use crate::session::registry::Sessions;

/// What every connection of the node shares.
pub struct Server {
    pub cfg: ServeConfig,
    /// Data and calls, routed to the owners of slots.
    pub data: Arc<tim_shard::Cluster>,
    pub accounts: Arc<Accounts>,
    pub bans: crate::services::bans::Bans,
    pub sessions: Arc<Sessions>,
    /// The sessions of the users whose slots this node owns, wherever they are connected.
    pub directory: Arc<crate::services::directory::Directory>,
    pub offline: Arc<OfflineQueue>,
    pub rosters: Arc<Rosters>,
    pub groups: Arc<Groups>,
    pub rooms: Arc<Rooms>,
    pub history: Arc<History>,
    pub push: Arc<crate::services::push::Push>,
    pub restorer: Arc<crate::services::restore::Restorer>,
    pub metrics: crate::metrics::Metrics,
    /// Cancelled at shutdown; every session's token is a child of it.
    pub shutdown: CancellationToken,
    /// Every session task, awaited at shutdown.
    pub tasks: TaskTracker,
    pub(crate) next_conn: AtomicU64,
    /// Message-class frames clients sent to this node (its load, as gossip carries it).
    pub(crate) messages: AtomicU64,
    pub(crate) next_ack: AtomicU32,
    /// Connection ids are shown to clients masked, so they do not reveal the connection count.
    pub(crate) conn_mask: u64,
    /// Opaque per-process value sent as `t` in login acks.
    pub instance_tag: i64,
}

impl Server {
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A fresh ack id (never 0), for one send attempt of a frame that asks for an ack.
    pub fn next_ack_id(&self) -> u32 {
        loop {
            let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// The session id shown to the client (`n2` of the login ack).
    pub fn public_session_id(&self, conn_id: u64) -> String {
        encode_base58(conn_id ^ self.conn_mask)
    }
}
