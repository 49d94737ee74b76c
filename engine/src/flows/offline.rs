//! Where a user's offline messages wait besides its queue: the conversations (1:1 ones its
//! inbox names, then its groups) whose messages past its cursors it has not had. The offline
//! drain (frame 17) and the admin API's look at a user's offline messages share this.

use tim_kv::RowId;

use crate::error::EngineError;
use crate::model::ident::{GroupId, UserId};
use crate::server::Server;
use crate::services::chat_log::Log;

/// A conversation of the user's with a log: with a peer, or in a group.
#[derive(Debug, Clone, Copy)]
pub enum With {
    Peer(UserId),
    Group(GroupId),
}

impl With {
    /// The conversation's log, for `user`.
    pub fn log(self, user: UserId) -> Log {
        match self {
            Self::Peer(peer) => Log::pair(user, peer),
            Self::Group(group) => Log::Group(group),
        }
    }

    /// The peer or the group as clients name them.
    pub fn node(self) -> String {
        match self {
            Self::Peer(peer) => peer.node(),
            Self::Group(group) => group.node(),
        }
    }
}

/// The conversations where `user` may have messages waiting: 1:1 ones first, then groups.
pub async fn conversations_of(server: &Server, user: UserId) -> Result<Vec<With>, EngineError> {
    let peers = server.inbox.peers(user).await?;
    let groups = server.groups.groups_of(user).await?;
    Ok(peers.into_iter().map(With::Peer).chain(groups.into_iter().map(With::Group)).collect())
}

/// `user`'s row of the conversation its cursor belongs to: 0 in a 1:1, its membership of a
/// group; `None` once it is no longer a member.
pub async fn membership(server: &Server, user: UserId, with: With) -> Result<Option<RowId>, EngineError> {
    match with {
        With::Peer(_) => Ok(Some(RowId(0))),
        With::Group(group) => server.groups.membership(group, user).await,
    }
}
