//! TIMBUSINESS (41) requests, dispatched on `TimReq.rtype` (tim-protocol.md §3.4).
//! Errors of the request itself come as `TimAck{ok:false, timType:41, error}` without `t`;
//! an operation's own answer carries `t = rtype` (and `n` = the node it concerned).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tim_net::proto::{ErrorCode, Tid, TimAck, TimMessage, TimNodes, TimReq};
use tim_net::FrameType;
use tracing::warn;

use crate::error::EngineError;
use crate::ident::UserId;
use crate::push::{spawn_to_user, Fallback};
use crate::roster::Added;
use crate::server::Server;

const BUSINESS: u8 = FrameType::Business as u8;

/// Business operations by `rtype`, and the business notifications (`bnType`) they push.
const ROSTER: i32 = 1;
const ADDROSTER: i32 = 4;
const FRIEND: i32 = 5;
const REMOVEROSTER: i32 = 6;
const BLOCKROSTER: i32 = 7;
const BLOCKROSTERLIST: i32 = 18;
const MODIFYAUTH: i32 = 21;
/// Operations TIM defines that this server does not offer yet (groups).
const NOT_YET: &[i32] = &[2, 3, 8, 9, 11, 12, 13, 14, 15, 16, 17, 19, 20];

/// `TimNodes.ntype` of the list replies.
const NTYPE_ROSTER: i32 = 1;
const NTYPE_BLOCKROSTERLIST: i32 = 8;

/// What the caller gets back.
pub enum Reply {
    Ack(TimAck),
    Nodes(TimNodes),
    /// Nothing (a successful ADDROSTER, as in TIM).
    Nothing,
}

/// Handles one request of `user`.
pub async fn handle(server: &Arc<Server>, user: UserId, req: &TimReq) -> Reply {
    let result = match req.rtype {
        Some(ROSTER) => list(server.rosters.friends(user).await, NTYPE_ROSTER),
        Some(BLOCKROSTERLIST) => list(server.rosters.blocked(user).await, NTYPE_BLOCKROSTERLIST),
        Some(ADDROSTER) => add_roster(server, user, req).await,
        Some(rtype @ (REMOVEROSTER | BLOCKROSTER)) => unfriend(server, user, req, rtype).await,
        Some(MODIFYAUTH) => modify_auth(server, user, req).await,
        Some(rtype) if NOT_YET.contains(&rtype) => Err(ErrorCode::InterfaceIncorrect.into()),
        // 5 and 10 are notification codes only; anything else is no operation at all.
        _ => Err(ErrorCode::ParamIncorrect.into()),
    };
    result.unwrap_or_else(|e| Reply::Ack(failure(None, e)))
}

/// A failed reply; `done` is the operation's own ack (with `t`, `n`) when it has one.
fn failure(done: Option<TimAck>, e: EngineError) -> TimAck {
    if e.is_internal() {
        warn!(error = %e, "business operation failed");
    }
    let error = TimAck::error(BUSINESS, e.wire_code()).error;
    TimAck { ok: false, error, ..done.unwrap_or_else(|| TimAck::ok(BUSINESS)) }
}

fn list(users: Result<Vec<UserId>, EngineError>, ntype: i32) -> Result<Reply, EngineError> {
    let nodelist = users?.into_iter().map(UserId::node).collect();
    Ok(Reply::Nodes(TimNodes { ntype, nodelist: Some(nodelist), ..TimNodes::default() }))
}

/// The target of a roster operation: `node`, well-formed (else 4106) and registered (4106).
async fn target(server: &Server, req: &TimReq) -> Result<(UserId, String), EngineError> {
    let node = req.node.as_deref().filter(|n| !n.is_empty()).ok_or(ErrorCode::ParamIncorrect)?;
    let user = UserId::parse(node).ok_or(ErrorCode::AccountIncorrect)?;
    if !server.accounts.exists(user).await? {
        return Err(ErrorCode::AccountIncorrect.into());
    }
    Ok((user, node.to_owned()))
}

/// A business notification (odType 4) from `from` to `to`.
fn notice(from: UserId, to: &str, bn_type: i32, text: Option<String>) -> TimMessage {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    TimMessage {
        ms_type: 2,
        od_type: 4,
        bn_type: Some(bn_type),
        from_tid: Some(Tid { node: from.node(), ..Tid::default() }),
        to_tid: Some(Tid { node: to.to_owned(), ..Tid::default() }),
        data_string: text,
        timestamp: Some(now),
        ..TimMessage::default()
    }
}

/// ADDROSTER: `node`, and `reqStr` (the request text) required. The target gets bnType 4
/// (request) or 5 (now friends); the caller gets nothing on success.
async fn add_roster(server: &Arc<Server>, me: UserId, req: &TimReq) -> Result<Reply, EngineError> {
    let text = req.req_str.clone().ok_or(ErrorCode::ParamIncorrect)?;
    let (other, node) = target(server, req).await?;
    let push = match server.rosters.add(me, other).await? {
        Added::Requested => notice(me, &node, ADDROSTER, Some(text)),
        Added::Friends => notice(me, &node, FRIEND, None),
    };
    spawn_to_user(server, other, push, Fallback::Store);
    Ok(Reply::Nothing)
}

/// REMOVEROSTER (6) and BLOCKROSTER (7): answered with their own ack (`t`, `n`); the other
/// side gets the notice with bnType = rtype when the roster says so.
async fn unfriend(server: &Arc<Server>, me: UserId, req: &TimReq, rtype: i32) -> Result<Reply, EngineError> {
    let (other, node) = target(server, req).await?;
    let done = TimAck { t: Some(i64::from(rtype)), n: Some(node.clone()), ..TimAck::ok(BUSINESS) };
    let outcome = if rtype == BLOCKROSTER {
        server.rosters.block(me, other).await
    } else {
        server.rosters.remove(me, other).await
    };
    match outcome {
        Ok(tell) => {
            if tell {
                spawn_to_user(server, other, notice(me, &node, rtype, None), Fallback::Store);
            }
            Ok(Reply::Ack(done))
        }
        Err(e) => Ok(Reply::Ack(failure(Some(done), e))),
    }
}

/// MODIFYAUTH: `reqStr` = old password, `reqStr2` = new one.
async fn modify_auth(server: &Server, user: UserId, req: &TimReq) -> Result<Reply, EngineError> {
    let (Some(old), Some(new)) = (req.req_str.as_deref(), req.req_str2.as_deref()) else {
        return Err(ErrorCode::ParamIncorrect.into());
    };
    let done = TimAck { t: Some(i64::from(MODIFYAUTH)), ..TimAck::ok(BUSINESS) };
    Ok(Reply::Ack(match server.accounts.change_password(user, old, new).await {
        Ok(()) => done,
        Err(e) => failure(Some(done), e),
    }))
}
