//! What every connection of a node shares.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServeConfig;
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
    /// Group messages and how far each member has them.
    pub chat_log: Arc<crate::services::chat_log::ChatLog>,
    pub inbox: Arc<crate::services::inbox::Inbox>,
    pub push: Arc<crate::services::push::Push>,
    pub restorer: Arc<crate::services::restore::Restorer>,
    pub metrics: crate::metrics::Metrics,
    /// Cancelled at shutdown; every session's token is a child of it.
    pub shutdown: CancellationToken,
    /// Every session task, awaited at shutdown.
    pub tasks: TaskTracker,
}
