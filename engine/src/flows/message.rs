//! 1:1 messages (frame 90; 92 and 93 are aliases: `odType` decides), as tim-server.md §2.3.4
//! describes them.
//!
//! A normal message (odType 1) is stored in the conversation's log (`services::chat_log`),
//! which assigns its `mid`, after the recipient's inbox names the conversation; only then is
//! it echoed, without ack request, to every session of the sender (the sender's proof of
//! acceptance), so an echoed message survives a crash. It is then pushed to the recipient with
//! ack requests; an ack moves the recipient's cursor past it, and a recipient none of whose
//! sessions acks gets it from the log when it drains. Streams (5) reach online sessions only;
//! custom kinds (> 30) are pushed like normal messages but not kept in history; recall (2)
//! and burn (3) delete a stored message.

use std::sync::Arc;

use bytes::Bytes;
use rand::Rng;
use tim_kv::RowId;
use tim_net::codec::{body_bytes, Encoding};
use tim_net::frame::encode_server;
use tim_net::proto::{ErrorCode, TimMessage, TimReq};
use tim_net::report::ErrorChain;
use tim_net::FrameType;
use tracing::warn;

use crate::error::EngineError;
use crate::flows::sending::{
    still_serving, Next, Sender, MS_ROOM, MS_USER, OD_BURN, OD_CUSTOM_ABOVE, OD_NORMAL, OD_RECALL, OD_STREAM,
};
use crate::model::ident::{pair_id, UserId};
use crate::server::Server;
use crate::services::chat_log::{Appended, Entry, Log, Span};
use crate::services::directory::Located;
use crate::services::history::{now_ns, Accepted, History};
use crate::services::push::Fallback;
use crate::session::delivery::Body;
use crate::session::registry::Known;

/// Checks and stamps a message frame; `Err` carries the code for the sender's error ack.
/// Normal 1:1 messages are returned for [`store_and_push`]; other kinds are handled here, so
/// the caller stores the normal messages before it hands over a frame that could refer to them.
///
/// The other kinds' futures are boxed: inline, their size would be allocated and copied for
/// every message.
pub async fn accept(server: &Arc<Server>, from: &Sender, mut msg: TimMessage) -> Result<Next, EngineError> {
    let od = msg.od_type;
    let custom = od > OD_CUSTOM_ABOVE;
    match msg.ms_type {
        MS_USER | MS_ROOM => {}
        // msType 1 (system) is the server's alone.
        _ => return Err(ErrorCode::ParamIncorrect.into()),
    }
    if !(matches!(od, OD_NORMAL | OD_RECALL | OD_BURN | OD_STREAM) || custom) {
        // 4 is server-made only; 6–30 are reserved.
        return Err(ErrorCode::ParamIncorrect.into());
    }
    if msg.ms_type == MS_ROOM {
        stamp(&mut msg, from);
        return Box::pin(crate::flows::group_message::send(server, from, msg)).await;
    }
    let to_node = msg.to_tid.as_ref().map(|t| t.node.clone()).ok_or(ErrorCode::AccountIncorrect)?;
    let to = UserId::parse(&to_node).ok_or(ErrorCode::AccountIncorrect)?;
    // A private message inside a group (roomTid set) needs both in the group, not friendship.
    if let Some(room) = msg.room_tid.as_ref().map(|t| t.node.clone()) {
        Box::pin(crate::flows::group_message::check_private(server, &room, from.user, to)).await?;
        return accepted(server, from, to, msg).await;
    }
    may_message(server, from.user, to).await?;
    accepted(server, from, to, msg).await
}

/// Whether `from` may send to `to`: mutual friends, or anyone existing with
/// `--message-noauth`. Unknown target 4106, not friends 4105.
pub async fn may_message(server: &Server, from: UserId, to: UserId) -> Result<(), EngineError> {
    // Friends exist (a roster entry is made for an existing account only), so the common case
    // reads the relation alone; the existence check keeps TIM's order of error codes.
    let friends = !server.cfg.message_noauth && server.rosters.are_friends(from, to).await?;
    if !friends {
        if !server.accounts.exists(to).await? {
            return Err(ErrorCode::AccountIncorrect.into());
        }
        if !server.cfg.message_noauth {
            return Err(ErrorCode::PermissionDenied.into());
        }
    }
    Ok(())
}

/// The server's stamp on an accepted message: sender, time, and an id when the client gave none.
pub fn stamp(msg: &mut TimMessage, from: &Sender) {
    msg.from_tid = Some(from.tid.clone());
    msg.timestamp = Some(now_ns());
    if msg.id.is_none() {
        msg.id = Some(rand::thread_rng().gen());
    }
    msg.is_offline = None;
}

/// A 1:1 message that passed its checks.
async fn accepted(server: &Arc<Server>, from: &Sender, to: UserId, mut msg: TimMessage) -> Result<Next, EngineError> {
    let dedup = msg.id.map(|id| dedup_key(from.user, id, &msg));
    stamp(&mut msg, from);
    let od = msg.od_type;
    if od == OD_RECALL || od == OD_BURN {
        Box::pin(recall_or_burn(server, from, to, msg)).await?;
        return Ok(Next::Done);
    }
    msg.mid = None;
    match od {
        OD_NORMAL => return Ok(Next::Store(Box::new(Accepted { to, msg, dedup }))),
        OD_STREAM => {
            Box::pin(server.push.frames(&[to], FrameType::Message, &msg, None)).await;
        }
        _ => Box::pin(server.push.to_user(to, msg, Fallback::Store)).await,
    }
    Ok(Next::Done)
}

/// The key of a message as its client sent it: the sender, the client's id, and a digest of
/// everything else the client set (a client that reuses ids for other messages does not
/// have them taken for repeats).
fn dedup_key(from: UserId, id: i64, msg: &TimMessage) -> [u8; 24] {
    let sent = TimMessage { id: None, mid: None, from_tid: None, timestamp: None, is_offline: None, ..msg.clone() };
    let digest = xxhash_rust::xxh3::xxh3_64(&body_bytes(&sent, Encoding::Compact));
    let mut key = [0u8; 24];
    let (a, rest) = key.split_at_mut(8);
    let (b, c) = rest.split_at_mut(8);
    a.copy_from_slice(&from.to_be_bytes());
    b.copy_from_slice(&id.to_be_bytes());
    c.copy_from_slice(&digest.to_be_bytes());
    key
}

/// Whether a message frame may join a burst of normal 1:1 messages: it cannot refer to them.
pub fn joins_burst(msg: &TimMessage) -> bool {
    msg.od_type == OD_NORMAL && msg.ms_type == MS_USER
}

/// Stores accepted messages of one sender, one commit per conversation slot, then echoes each
/// to the sender's sessions and pushes it to its recipient, in order. Durable before the echo:
/// the recipient's inbox mark (written once in a while per conversation), the history row
/// (which gives the mid) and, for a recipient's first message, its cursor. A failed write
/// refuses all of them. A message sent again (same client id and content) is echoed with its
/// first `mid` and not pushed again.
///
/// The sending session (`own`, in `encoding`) gets its echoes back to write itself rather than
/// through its own outbound queue, which it does not drain while it handles a burst.
pub async fn store_and_push(
    server: &Arc<Server>,
    from: UserId,
    own: u64,
    encoding: Encoding,
    accepted: Vec<Accepted>,
) -> Result<Vec<Bytes>, EngineError> {
    let marks: Vec<(UserId, UserId)> = accepted.iter().map(|a| (a.to, from)).collect();
    server.inbox.ensure(&marks).await?;
    let entries = accepted
        .iter()
        .map(|a| Entry {
            log: Log::pair(from, a.to),
            from,
            stored: History::stored_form(&a.msg),
            id: a.msg.id,
            to: vec![(a.to, RowId(0))],
            dedup: a.dedup,
        })
        .collect();
    let appended = server.chat_log.append(entries).await?;
    let fresh = appended.iter().filter(|a| a.fresh).count();
    crate::metrics::add(&server.metrics.messages, fresh as u64);
    // The sender's sessions (its other sessions get a copy, like the echo, without ack), as
    // this node knows them or else looked up, and the recipients', in one look-up.
    let mut wanted: Vec<UserId> = accepted.iter().map(|a| a.to).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut located = Located::new();
    let ticket = match server.sessions.known(from) {
        Known::Sessions(mut leases) => {
            leases.retain(server.directory.live());
            located.insert(from, leases);
            None
        }
        Known::Ask(ticket) => {
            wanted.push(from);
            Some(ticket)
        }
    };
    match server.directory.locate(&wanted).await {
        Ok(found) => located.extend(found),
        Err(e) => warn!(error = %ErrorChain(&e), "sessions not found; messages wait for the recipients' drains"),
    }
    if let (Some(ticket), Some(leases)) = (ticket, located.get(&from)) {
        server.sessions.remember(from, ticket, leases.clone());
    }
    still_serving(server)?;
    let others = located.get(&from).is_some_and(|l| l.iter().any(|l| l.node != server.data.node() || l.conn != own));
    let mine: Located = located.get(&from).map(|l| (from, l.clone())).into_iter().collect();
    let mut echoes = Vec::with_capacity(accepted.len());
    let mut pushes = Vec::with_capacity(accepted.len());
    for (Accepted { to, mut msg, .. }, Appended { mid, prev, fresh }) in accepted.into_iter().zip(appended) {
        msg.mid = Some(mid);
        echoes.push(encode_server(FrameType::Message, encoding, &msg));
        if others {
            let (compact, json) = (
                encode_server(FrameType::Message, Encoding::Compact, &msg),
                encode_server(FrameType::Message, Encoding::Json, &msg),
            );
            server.push.encoded_located(&mine, compact, json, Some(own)).await;
        }
        // A repeat was pushed when it came first, and waits in the log until acked.
        if fresh {
            let span = Span { log: Log::pair(from, to), prev, mid };
            pushes.push((to, Body::message(msg), Fallback::Logged(span)));
        }
    }
    server.push.messages_located(pushes, &located).await;
    Ok(echoes)
}

/// Recall (odType 2, by the message's sender) and burn-after-reading (odType 3, by its
/// recipient): the stored message is deleted (a recipient who has not had it never gets it:
/// its drain reads the history), along with copies still waiting in the recipient's offline
/// queue from before the logs, and both sides are told with the same frame, offline sides
/// included.
async fn recall_or_burn(server: &Arc<Server>, from: &Sender, to: UserId, msg: TimMessage) -> Result<(), EngineError> {
    let mid = msg.mid.filter(|m| *m > 0).ok_or(ErrorCode::ParamIncorrect)?;
    // Recall: I sent it and the peer holds it; burn: the peer sent it and I hold it.
    let (author, holder) = if msg.od_type == OD_RECALL { (from.user, to) } else { (to, from.user) };
    server.history.remove(pair_id(from.user, to), author, mid).await?;
    server.offline.remove_message(holder, mid).await?;
    let body = Body::message(msg);
    server.push.messages(vec![(from.user, body.clone(), Fallback::Store), (to, body, Fallback::Store)]).await;
    Ok(())
}

/// PULLMESSAGE (21) of a 1:1 chat: `node` = peer, `reqInt` = newest `mid` wanted (0: the
/// newest), `reqInt2` = how many (capped), `node2` = optional ns timestamp bound.
pub async fn pull(server: &Server, me: UserId, req: &TimReq) -> Result<Vec<TimMessage>, EngineError> {
    let (Some(rtype), Some(node), Some(upto), Some(limit)) =
        (req.rtype, req.node.as_deref(), req.req_int, req.req_int2)
    else {
        return Err(ErrorCode::ParamIncorrect.into());
    };
    let chat = match rtype {
        1 => pair_id(me, UserId::parse(node).ok_or(ErrorCode::AccountIncorrect)?),
        2 => crate::flows::group_message::history_of(server, node, me).await?,
        _ => return Err(ErrorCode::ParamIncorrect.into()),
    };
    let before_ns = match req.node2.as_deref().filter(|s| !s.is_empty()) {
        Some(ns) => Some(ns.parse::<i64>().map_err(|_| ErrorCode::ParamIncorrect)?),
        None => None,
    };
    let limit = usize::try_from(limit).unwrap_or(0).min(server.cfg.max_history_page);
    if limit == 0 {
        return Ok(Vec::new());
    }
    server.history.page(chat, upto, limit, before_ns).await
}
