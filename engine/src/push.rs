//! Pushing messages to users: every session of the user gets the frame with an ack request;
//! when none acks (or the user has none), the message goes to the user's offline queue, once.

use std::sync::Arc;

use tim_net::proto::TimMessage;
use tim_net::FrameType;
use tracing::warn;

use crate::delivery::{deliver, Payload};
use crate::ident::UserId;
use crate::server::Server;

/// Delivers in a tracked background task, so the caller does not wait for acks.
pub fn spawn_to_user(server: &Arc<Server>, user: UserId, msg: TimMessage) {
    let server_for_task = server.clone();
    server.tasks.spawn(async move { to_user(&server_for_task, user, msg).await });
}

async fn to_user(server: &Server, user: UserId, msg: TimMessage) {
    let sessions = server.sessions.of(user);
    if deliver(&sessions, FrameType::Message, Payload::Message(Box::new(msg.clone()))).await {
        return;
    }
    if let Err(e) = server.offline.push(user, &msg).await {
        warn!(error = %e, uid = %user.node(), "message lost: not delivered and not stored offline");
    }
}
