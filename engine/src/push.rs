//! Pushing messages to users: every session of the user gets the frame with an ack request;
//! when none acks (or the user has none), the message waits in the user's offline queue, once.

use std::sync::Arc;

use tim_kv::RowId;
use tim_net::proto::TimMessage;
use tim_net::FrameType;
use tracing::warn;

use crate::delivery::{deliver, Payload};
use crate::ident::UserId;
use crate::server::Server;

/// Where an undelivered message ends up.
pub enum Fallback {
    /// Stored in the offline queue if no session acks.
    Store,
    /// Already in the offline queue (written before the sender was told the message was
    /// accepted): the acking session removes it.
    Queued(RowId),
}

/// Delivers in a tracked background task, so the caller does not wait for acks.
pub fn spawn_to_user(server: &Arc<Server>, user: UserId, msg: TimMessage, fallback: Fallback) {
    let server_for_task = server.clone();
    server.tasks.spawn(async move { to_user(&server_for_task, user, msg, fallback).await });
}

async fn to_user(server: &Server, user: UserId, msg: TimMessage, fallback: Fallback) {
    let sessions = server.sessions.of(user);
    let entries = match fallback {
        Fallback::Store => Vec::new(),
        Fallback::Queued(entry) => vec![entry],
    };
    let store = entries.is_empty();
    let acked = deliver(&sessions, FrameType::Message, Payload::Message(Box::new(msg.clone())), entries).await;
    if !acked && store {
        if let Err(e) = server.offline.push(user, &msg).await {
            warn!(error = %e, uid = %user.node(), "message lost: not delivered and not stored offline");
        }
    }
}
