//! Pushing messages to users: every session of the user gets the frame with an ack request;
//! when none acks (or the user has none), the message waits in the user's offline queue, once.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tim_kv::RowId;
use tim_net::codec::TimStruct;
use tim_net::frame::encode_server;
use tim_net::proto::TimMessage;
use tim_net::report::ErrorChain;
use tim_net::{Encoding, FrameType};
use tracing::warn;

use crate::delivery::{start, start_with, Body, Payload};
use crate::ident::UserId;
use crate::server::Server;
use crate::sessions::{Outbound, SessionHandle};

/// Where an undelivered message ends up.
pub enum Fallback {
    /// Stored in the offline queue if no session acks.
    Store,
    /// Already in the offline queue (written before the sender was told the message was
    /// accepted): the acking session removes it.
    Queued(RowId),
}

/// Hands the message to the user's sessions now (so pushes to one user keep their order). A
/// message that must be stored when nobody acks is watched by a tracked background task, so
/// the caller does not wait for acks; a queued one needs no watching (an ack removes it).
pub fn spawn_to_user(server: &Arc<Server>, user: UserId, msg: TimMessage, fallback: Fallback) {
    let sessions = server.sessions.of(user);
    match fallback {
        Fallback::Queued(entry) => {
            start(&sessions, FrameType::Message, Payload::Message(Box::new(msg)), vec![entry]);
        }
        Fallback::Store => spawn_to_users(server, vec![(user, sessions)], msg),
    }
}

/// Pushes one message, encoded once, to the sessions of many users (a group's members) with
/// ack requests, in one pass; one tracked task waits for the outcomes and queues the message
/// offline for each user none of whose sessions acked (a user without sessions at once).
pub fn spawn_to_users(server: &Arc<Server>, users: Vec<(UserId, Vec<SessionHandle>)>, msg: TimMessage) {
    let body = Body::new(Payload::Message(Box::new(msg.clone())));
    let outcomes: FuturesUnordered<_> = users
        .into_iter()
        .map(|(user, sessions)| {
            let outcome = start_with(&sessions, FrameType::Message, body.clone(), Vec::new());
            async move { (user, outcome.acked().await) }
        })
        .collect();
    let server_for_task = server.clone();
    server.tasks.spawn(async move {
        let mut outcomes = outcomes;
        while let Some((user, acked)) = outcomes.next().await {
            if acked {
                continue;
            }
            if let Err(e) = server_for_task.offline.push(user, &msg).await {
                warn!(error = %ErrorChain(&e), uid = %user.node(), "message lost: not delivered and not stored offline");
            }
        }
    });
}

/// Queues `body` as a frame of `kind`, without ack request, to each of `sessions`. Best
/// effort: a full queue cuts that session off (online-only frames are not kept).
pub fn frames_to<T: TimStruct>(sessions: impl IntoIterator<Item = SessionHandle>, kind: FrameType, body: &T) {
    for (session, frame) in encoded_for(sessions, kind, body) {
        let _ = session.push(Outbound::Frame(frame));
    }
}

/// Each of `sessions` with `body` as a frame of `kind` (no ack request) in its encoding,
/// encoded once per encoding in use.
pub fn encoded_for<'a, T: TimStruct, S: IntoIterator<Item = SessionHandle>>(
    sessions: S,
    kind: FrameType,
    body: &'a T,
) -> impl Iterator<Item = (SessionHandle, Bytes)> + 'a
where
    S::IntoIter: 'a,
{
    let mut encoded: [Option<Bytes>; 2] = [None, None];
    sessions.into_iter().filter_map(move |session| {
        let cache = encoded.get_mut(usize::from(session.encoding() == Encoding::Json))?;
        let frame = cache.get_or_insert_with(|| encode_server(kind, session.encoding(), body)).clone();
        Some((session, frame))
    })
}
