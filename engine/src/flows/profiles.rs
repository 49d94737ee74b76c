//! TIMNODES (42): profiles of users and groups (tim-server.md §2.3.9). Anyone reads any
//! profile; I change my own, and a group's founder or managers change the group's.

use std::collections::BTreeMap;

use tim_net::proto::{ErrorCode, TimAck, TimNodes};
use tim_net::FrameType;

use crate::error::EngineError;
use crate::flows::business::Reply;
use crate::model::ident::{GroupId, UserId};
use crate::server::Server;

const USERINFO: i32 = 4;
const ROOMINFO: i32 = 5;
const MODIFYUSER: i32 = 6;
const MODIFYROOM: i32 = 7;
/// Most profiles one request may ask for.
const MAX_NODES: usize = 1000;

const NODES: u8 = FrameType::Nodes as u8;

/// Handles one request of `me`; errors of the request itself come as `TimAck{ok false,
/// timType 42, error}`.
pub async fn handle(server: &Server, me: UserId, req: TimNodes) -> Reply {
    let done = |ntype: i32| TimAck { t: Some(i64::from(ntype)), ..TimAck::ok(NODES) };
    let result = match req.ntype {
        USERINFO => user_info(server, req.nodelist).await,
        ROOMINFO => room_info(server, req.nodelist).await,
        MODIFYUSER => match only_entry(req.usermap) {
            Ok((_, bean)) => server.accounts.modify_profile(me, bean).await.map(|()| Reply::Ack(done(MODIFYUSER))),
            Err(e) => Err(e),
        },
        MODIFYROOM => match only_entry(req.roommap) {
            Ok((node, bean)) => match GroupId::parse(&node) {
                Some(group) => server.groups.modify(me, group, bean).await.map(|()| Reply::Ack(done(MODIFYROOM))),
                None => Err(ErrorCode::AccountIncorrect.into()),
            },
            Err(e) => Err(e),
        },
        _ => Err(ErrorCode::ParamIncorrect.into()),
    };
    result.unwrap_or_else(|e| {
        let mut ack = TimAck::error(NODES, e.answer("profiles"));
        if matches!(req.ntype, MODIFYUSER | MODIFYROOM) {
            ack.t = Some(i64::from(req.ntype));
        }
        Reply::Ack(ack)
    })
}

/// The single entry of a modify request's map (exactly one, else 4104).
fn only_entry<V>(map: Option<BTreeMap<String, V>>) -> Result<(String, V), EngineError> {
    let mut map = map.unwrap_or_default();
    match (map.pop_first(), map.is_empty()) {
        (Some(entry), true) => Ok(entry),
        _ => Err(ErrorCode::ParamIncorrect.into()),
    }
}

fn wanted(nodes: Option<Vec<String>>) -> Result<Vec<String>, EngineError> {
    let nodes = nodes.unwrap_or_default();
    if nodes.is_empty() || nodes.len() > MAX_NODES {
        return Err(ErrorCode::ParamIncorrect.into());
    }
    Ok(nodes)
}

/// USERINFO: the profiles of the listed users (with their creation time); unknown or
/// malformed nodes are left out.
async fn user_info(server: &Server, nodes: Option<Vec<String>>) -> Result<Reply, EngineError> {
    let mut usermap = BTreeMap::new();
    for node in wanted(nodes)? {
        let Some(user) = UserId::parse(&node) else { continue };
        if let Some(bean) = server.accounts.profile(user).await? {
            usermap.insert(node, bean);
        }
    }
    Ok(Reply::Nodes(TimNodes { ntype: USERINFO, usermap: Some(usermap), ..TimNodes::default() }))
}

/// ROOMINFO: the profiles of the listed groups; unknown and cancelled groups are left out.
async fn room_info(server: &Server, nodes: Option<Vec<String>>) -> Result<Reply, EngineError> {
    let mut roommap = BTreeMap::new();
    for node in wanted(nodes)? {
        let Some(group) = GroupId::parse(&node) else { continue };
        if let Some(found) = server.groups.get(group).await?.filter(|g| !g.cancelled) {
            roommap.insert(node, found.bean);
        }
    }
    Ok(Reply::Nodes(TimNodes { ntype: ROOMINFO, roommap: Some(roommap), ..TimNodes::default() }))
}
