//! Group messages (msType 3 with `roomTid`), group history and group recall, and the checks
//! of private messages inside a group (tim-protocol.md §3.4).
//!
//! A normal group message is stored in the group's log (its history, where each member has a
//! cursor: `services::chat_log`); then it is pushed, encoded once, with ack requests to every
//! session of every member, the sender's included (that copy is the sender's echo). A
//! session's ack moves its member's cursor past it; a member none of whose sessions acks, or
//! whose session's node is lost before it does, gets it offline from the log.

use std::sync::Arc;

use tim_net::proto::{ErrorCode, TimAck, TimMessage};
use tim_net::FrameType;

use crate::error::EngineError;
use crate::flows::sending::{still_serving, Next, Sender, OD_NORMAL, OD_RECALL, OD_STREAM};
use crate::model::ident::{group_chat_id, GroupId, UserId};
use crate::server::Server;
use crate::services::chat_log::{Entry, Log, Span};
use crate::services::history::History;
use crate::services::push::Fallback;
use crate::session::delivery::Body;

/// The group named by `node`, for one of its members: malformed or unknown 4106, cancelled
/// 4108, not a member 4105.
async fn member_of(server: &Server, node: &str, user: UserId) -> Result<GroupId, EngineError> {
    let group = GroupId::parse(node).ok_or(ErrorCode::AccountIncorrect)?;
    let found = server.groups.get(group).await?.ok_or(ErrorCode::AccountIncorrect)?;
    if found.cancelled {
        return Err(ErrorCode::Cancelled.into());
    }
    if !server.groups.is_member(group, user).await? {
        return Err(ErrorCode::PermissionDenied.into());
    }
    Ok(group)
}

/// A private message inside a group: both sides must be members (4105).
pub async fn check_private(server: &Server, room: &str, from: UserId, to: UserId) -> Result<(), EngineError> {
    let group = member_of(server, room, from).await?;
    if !server.groups.is_member(group, to).await? {
        return Err(ErrorCode::PermissionDenied.into());
    }
    Ok(())
}

/// The conversation id of group `node` for history paging by a member.
pub async fn history_of(server: &Server, node: &str, me: UserId) -> Result<[u8; 16], EngineError> {
    Ok(group_chat_id(member_of(server, node, me).await?))
}

/// A stamped message of msType 3 from a member.
pub async fn send(server: &Arc<Server>, from: &Sender, mut msg: TimMessage) -> Result<Next, EngineError> {
    let node = msg.room_tid.as_ref().map(|t| t.node.clone()).ok_or(ErrorCode::ParamIncorrect)?;
    let group = member_of(server, &node, from.user).await?;
    let memberships = server.groups.memberships(group).await?;
    let members: Vec<UserId> = memberships.iter().map(|(member, _)| *member).collect();
    match msg.od_type {
        OD_NORMAL => {
            msg.mid = None;
            let stored = History::stored_form(&msg);
            let entry =
                Entry { log: Log::Group(group), from: from.user, stored, id: msg.id, to: memberships, dedup: None };
            let appended = server.chat_log.append(vec![entry]).await?;
            let (mid, prev) = appended.first().map(|a| (a.mid, a.prev)).ok_or(EngineError::Internal("no append"))?;
            still_serving(server)?;
            crate::metrics::add(&server.metrics.messages, 1);
            msg.mid = Some(mid);
            let body = Body::message(msg);
            let span = Fallback::Logged(Span { log: Log::Group(group), prev, mid });
            server.push.messages(members.into_iter().map(|m| (m, body.clone(), span)).collect()).await;
            Ok(Next::Done)
        }
        OD_RECALL => recall(server, from.user, group, node, members, msg).await,
        OD_STREAM => {
            msg.mid = None;
            server.push.frames(&members, FrameType::Message, &msg, None).await;
            Ok(Next::Done)
        }
        // Burn-after-reading is between two users, and custom kinds too (as TIM).
        _ => Err(ErrorCode::ParamIncorrect.into()),
    }
}

/// Group recall by the message's sender: the message leaves the history and the queues of
/// members who have not received it; every member is told, and the sender's session gets
/// `TimAck{ok, timType 92, n: group, t: 3, t2: mid}`.
async fn recall(
    server: &Arc<Server>,
    author: UserId,
    group: GroupId,
    node: String,
    members: Vec<UserId>,
    msg: TimMessage,
) -> Result<Next, EngineError> {
    let mid = msg.mid.filter(|m| *m > 0).ok_or(ErrorCode::ParamIncorrect)?;
    server.history.remove(group_chat_id(group), author, mid).await?;
    for member in &members {
        server.offline.remove_message(*member, mid).await?;
    }
    let body = Body::message(msg);
    server.push.messages(members.into_iter().map(|m| (m, body.clone(), Fallback::Store)).collect()).await;
    let ack = TimAck { n: Some(node), t: Some(3), t2: Some(mid), ..TimAck::ok(FrameType::RevokeMessage as u8) };
    Ok(Next::Reply(ack))
}
