//! TIMBUSINESS (41) requests, dispatched on `TimReq.rtype` (tim-protocol.md §3.4): friends,
//! groups, password.
//! Errors of the request itself come as `TimAck{ok:false, timType:41, error}` without `t`;
//! an operation's own answer carries `t = rtype` (and `n` = the node it concerned).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tim_net::proto::{ErrorCode, Tid, TimAck, TimMessage, TimNodes, TimReq};
use tim_net::FrameType;

use crate::error::EngineError;
use crate::model::ident::{GroupId, UserId};
use crate::server::Server;
use crate::services::groups::{Joined, PRIVATE};
use crate::services::push::Fallback;
use crate::services::rosters::Added;

const BUSINESS: u8 = FrameType::Business as u8;

/// Business operations by `rtype`, and the business notifications (`bnType`) they push.
const ROSTER: i32 = 1;
const ADDROSTER: i32 = 4;
const FRIEND: i32 = 5;
const REMOVEROSTER: i32 = 6;
const BLOCKROSTER: i32 = 7;
const BLOCKROSTERLIST: i32 = 18;
const MODIFYAUTH: i32 = 21;
const USERROOM: i32 = 2;
const ROOMUSERS: i32 = 3;
const NEWROOM: i32 = 8;
const ADDROOM: i32 = 9;
const PASSROOM: i32 = 10;
const NOPASSROOM: i32 = 11;
const PULLROOM: i32 = 12;
const KICKROOM: i32 = 13;
const BLOCKROOM: i32 = 14;
const BLOCKROOMMEMBER: i32 = 15;
const LEAVEROOM: i32 = 16;
const CANCELROOM: i32 = 17;
const BLOCKROOMLIST: i32 = 19;
const BLOCKROOMMEMBERLIST: i32 = 20;

/// `TimNodes.ntype` of the list replies.
const NTYPE_ROSTER: i32 = 1;
const NTYPE_USERROOM: i32 = 2;
const NTYPE_ROOMUSERS: i32 = 3;
const NTYPE_BLOCKROSTERLIST: i32 = 8;
const NTYPE_BLOCKROOMLIST: i32 = 9;
const NTYPE_BLOCKROOMMEMBERLIST: i32 = 10;

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
        Some(USERROOM) => list(groups_as_users(server.groups.groups_of(user).await), NTYPE_USERROOM),
        Some(BLOCKROOMLIST) => list(groups_as_users(server.groups.blocked_groups(user).await), NTYPE_BLOCKROOMLIST),
        Some(ROOMUSERS) => group_list(server, user, req, NTYPE_ROOMUSERS).await,
        Some(BLOCKROOMMEMBERLIST) => group_list(server, user, req, NTYPE_BLOCKROOMMEMBERLIST).await,
        Some(NEWROOM) => new_room(server, user, req).await,
        Some(ADDROOM) => add_room(server, user, req).await,
        Some(rtype @ (PULLROOM | NOPASSROOM | KICKROOM | BLOCKROOMMEMBER)) => on_member(server, user, req, rtype).await,
        Some(rtype @ (LEAVEROOM | CANCELROOM | BLOCKROOM)) => on_group(server, user, req, rtype).await,
        Some(ADDROSTER) => add_roster(server, user, req).await,
        Some(rtype @ (REMOVEROSTER | BLOCKROSTER)) => unfriend(server, user, req, rtype).await,
        Some(MODIFYAUTH) => modify_auth(server, user, req).await,
        // 5 and 10 are notification codes only; anything else is no operation at all.
        _ => Err(ErrorCode::ParamIncorrect.into()),
    };
    result.unwrap_or_else(|e| Reply::Ack(failure(None, e)))
}

/// A failed reply; `done` is the operation's own ack (with `t`, `n`) when it has one.
fn failure(done: Option<TimAck>, e: EngineError) -> TimAck {
    let error = TimAck::error(BUSINESS, e.answer("business")).error;
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

/// The group named by `node`: required (4104), well-formed (else 4106).
fn group_of(req: &TimReq) -> Result<(GroupId, String), EngineError> {
    let node = req.node.as_deref().filter(|n| !n.is_empty()).ok_or(ErrorCode::ParamIncorrect)?;
    Ok((GroupId::parse(node).ok_or(ErrorCode::AccountIncorrect)?, node.to_owned()))
}

fn groups_as_users(groups: Result<Vec<GroupId>, EngineError>) -> Result<Vec<UserId>, EngineError> {
    Ok(groups?.into_iter().map(GroupId::party).collect())
}

/// ROOMUSERS (3) and BLOCKROOMMEMBERLIST (20): `node` = the group.
async fn group_list(server: &Server, me: UserId, req: &TimReq, ntype: i32) -> Result<Reply, EngineError> {
    let (group, node) = group_of(req)?;
    let users = if ntype == NTYPE_ROOMUSERS {
        server.groups.members(me, group).await
    } else {
        server.groups.blocked_members(me, group).await
    };
    let reply = list(users, ntype)?;
    Ok(match reply {
        Reply::Nodes(nodes) if ntype == NTYPE_ROOMUSERS => Reply::Nodes(TimNodes { node: Some(node), ..nodes }),
        other => other,
    })
}

/// NEWROOM: `node` = the group's name (its topic), `reqInt` = 1 for a private group.
async fn new_room(server: &Server, me: UserId, req: &TimReq) -> Result<Reply, EngineError> {
    let topic = req.node.clone().filter(|n| !n.is_empty()).ok_or(ErrorCode::ParamIncorrect)?;
    let gtype = if req.req_int == Some(i64::from(PRIVATE)) { PRIVATE } else { 0 };
    let done = TimAck { t: Some(i64::from(NEWROOM)), ..TimAck::ok(BUSINESS) };
    Ok(Reply::Ack(match server.groups.create(me, topic, gtype).await {
        Ok(group) => TimAck { n: Some(group.node()), ..done },
        Err(e) => failure(Some(done), e),
    }))
}

/// ADDROOM: `node` = the group, `reqStr` (the request text) required. An open group is joined
/// (bnType 10 to me); a private one tells its founder and managers (bnType 9). Nothing comes
/// back on success; a failure is acked with `t` and `n`.
async fn add_room(server: &Arc<Server>, me: UserId, req: &TimReq) -> Result<Reply, EngineError> {
    let text = req.req_str.clone().ok_or(ErrorCode::ParamIncorrect)?;
    let (group, node) = group_of(req)?;
    let done = TimAck { t: Some(i64::from(ADDROOM)), n: Some(node.clone()), ..TimAck::ok(BUSINESS) };
    match server.groups.join(me, group).await {
        Ok(Joined::Member) => {
            server.push.to_user(me, group_notice(me, me, &node, PASSROOM, None), Fallback::Store).await;
        }
        Ok(Joined::Asked(admins)) => {
            for admin in admins {
                let push = group_notice(me, admin, &node, ADDROOM, Some(text.clone()));
                server.push.to_user(admin, push, Fallback::Store).await;
            }
        }
        Err(e) => return Ok(Reply::Ack(failure(Some(done), e))),
    }
    Ok(Reply::Nothing)
}

/// PULLROOM (12), NOPASSROOM (11), KICKROOM (13), BLOCKROOMMEMBER (15): `node` = the group,
/// `node2` = the user, who is told with bnType = rtype (a pulled user whose request it
/// approves gets 10); answered with `t`, `n`, `n2`.
async fn on_member(server: &Arc<Server>, me: UserId, req: &TimReq, rtype: i32) -> Result<Reply, EngineError> {
    let (group, node) = group_of(req)?;
    let user_node = req.node2.as_deref().filter(|n| !n.is_empty()).ok_or(ErrorCode::ParamIncorrect)?;
    let user = UserId::parse(user_node).ok_or(ErrorCode::AccountIncorrect)?;
    let done = TimAck {
        t: Some(i64::from(rtype)),
        n: Some(node.clone()),
        n2: Some(user_node.to_owned()),
        ..TimAck::ok(BUSINESS)
    };
    let outcome = match rtype {
        PULLROOM => match server.accounts.exists(user).await {
            Ok(true) => server
                .groups
                .pull(me, group, user)
                .await
                .map(|approved| Some(if approved { PASSROOM } else { PULLROOM })),
            Ok(false) => Err(ErrorCode::AccountIncorrect.into()),
            Err(e) => Err(e),
        },
        NOPASSROOM => server.groups.reject(me, group, user).await.map(|()| Some(NOPASSROOM)),
        KICKROOM => server.groups.kick(me, group, user).await.map(|()| Some(KICKROOM)),
        _ => server.groups.block_member(me, group, user).await.map(|()| None),
    };
    Ok(Reply::Ack(match outcome {
        Ok(tell) => {
            if let Some(bn_type) = tell {
                server.push.to_user(user, group_notice(me, user, &node, bn_type, None), Fallback::Store).await;
            }
            done
        }
        Err(e) => failure(Some(done), e),
    }))
}

/// LEAVEROOM (16), CANCELROOM (17), BLOCKROOM (14): `node` = the group; answered with `t`, `n`.
async fn on_group(server: &Server, me: UserId, req: &TimReq, rtype: i32) -> Result<Reply, EngineError> {
    let (group, node) = group_of(req)?;
    let done = TimAck { t: Some(i64::from(rtype)), n: Some(node), ..TimAck::ok(BUSINESS) };
    let outcome = match rtype {
        LEAVEROOM => server.groups.leave(me, group).await,
        CANCELROOM => server.groups.cancel(me, group).await,
        _ => server.groups.block_group(me, group).await,
    };
    Ok(Reply::Ack(match outcome {
        Ok(()) => done,
        Err(e) => failure(Some(done), e),
    }))
}

/// A group business notification: `from` acted on group `group` concerning `to`.
fn group_notice(from: UserId, to: UserId, group: &str, bn_type: i32, text: Option<String>) -> TimMessage {
    TimMessage {
        room_tid: Some(Tid { node: group.to_owned(), ..Tid::default() }),
        ..notice(from, &to.node(), bn_type, text)
    }
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
    server.push.to_user(other, push, Fallback::Store).await;
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
                server.push.to_user(other, notice(me, &node, rtype, None), Fallback::Store).await;
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
    Ok(Reply::Ack(match server.accounts.change_password(user, Some(old), new).await {
        Ok(()) => done,
        Err(e) => failure(Some(done), e),
    }))
}
