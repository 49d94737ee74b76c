//! What an application's backend reads of a user or a group: rosters, blocks, groups,
//! members, history and the offline queue (TIM's `Roster`, `BlockRosterList`, `UserRoom`,
//! `BlockRoomList`, `RoomUsers`, `BlockRoomMemberlist`, `Authroster`, `Authgroupuser`,
//! `PullUserMessage`, `PullRoomMessage`, `OfflineMsg`, `DelOfflineMsg`). No membership is
//! needed: the operator reads for the user.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tim_kv::RowId;
use tracing::info;

use super::MAX_PAGE;
use super::{engine_failed, group_node, json, parse, refuse, tim_json, user_node, Admin, Named, Reader, Writer};
use crate::error::EngineError;
use crate::flows::offline;
use crate::model::ident::{pair_id, GroupId, UserId};

type Answer = Result<Response, Response>;

pub(super) fn routes() -> Router<Arc<Admin>> {
    Router::new()
        .route("/v1/users/{node}/roster", get(roster))
        .route("/v1/users/{node}/blocks", get(blocks))
        .route("/v1/users/{node}/groups", get(groups))
        .route("/v1/users/{node}/blocked-groups", get(blocked_groups))
        .route("/v1/users/{node}/friends/{peer}", get(are_friends))
        .route("/v1/users/{node}/history/{peer}", get(user_history))
        .route("/v1/users/{node}/offline", get(offline).delete(delete_offline))
        .route("/v1/groups/{group}/members", get(members))
        .route("/v1/groups/{group}/blocked-members", get(blocked_members))
        .route("/v1/groups/{group}/members/{node}", get(is_member))
        .route("/v1/groups/{group}/history", get(group_history))
}

/// `{"nodes": [...]}`, or the failure.
fn nodes(list: Result<Vec<String>, EngineError>) -> Answer {
    let list = list.map_err(|e| engine_failed(&e, "admin list"))?;
    Ok(json(&serde_json::json!({ "nodes": list })))
}

fn user_list(list: Result<Vec<UserId>, EngineError>) -> Answer {
    nodes(list.map(|users| users.into_iter().map(UserId::node).collect()))
}

fn group_list(list: Result<Vec<GroupId>, EngineError>) -> Answer {
    nodes(list.map(|groups| groups.into_iter().map(GroupId::node).collect()))
}

async fn roster(_: Reader, State(admin): State<Arc<Admin>>, Named(user): Named) -> Answer {
    user_list(admin.server.rosters.friends(user).await)
}

async fn blocks(_: Reader, State(admin): State<Arc<Admin>>, Named(user): Named) -> Answer {
    user_list(admin.server.rosters.blocked(user).await)
}

async fn groups(_: Reader, State(admin): State<Arc<Admin>>, Named(user): Named) -> Answer {
    group_list(admin.server.groups.groups_of(user).await)
}

async fn blocked_groups(_: Reader, State(admin): State<Arc<Admin>>, Named(user): Named) -> Answer {
    group_list(admin.server.groups.blocked_groups(user).await)
}

async fn are_friends(State(admin): State<Arc<Admin>>, _: Reader, Path((node, peer)): Path<(String, String)>) -> Answer {
    let (user, peer) = (user_node(&node)?, user_node(&peer)?);
    let friends = admin.server.rosters.are_friends(user, peer).await.map_err(|e| engine_failed(&e, "admin"))?;
    Ok(json(&serde_json::json!({ "friends": friends })))
}

/// A registered group (else 404).
async fn existing_group(admin: &Admin, node: &str) -> Result<GroupId, Response> {
    let group = group_node(node)?;
    match admin.server.groups.get(group).await {
        Ok(Some(_)) => Ok(group),
        Ok(None) => Err(refuse(StatusCode::NOT_FOUND, format!("no group {node}"))),
        Err(e) => Err(engine_failed(&e, "admin")),
    }
}

async fn members(State(admin): State<Arc<Admin>>, _: Reader, Path(node): Path<String>) -> Answer {
    let group = existing_group(&admin, &node).await?;
    user_list(admin.server.groups.members_of(group).await)
}

async fn blocked_members(State(admin): State<Arc<Admin>>, _: Reader, Path(node): Path<String>) -> Answer {
    let group = existing_group(&admin, &node).await?;
    user_list(admin.server.groups.blocked_by(group).await)
}

async fn is_member(State(admin): State<Arc<Admin>>, _: Reader, Path((group, node)): Path<(String, String)>) -> Answer {
    let (group, user) = (group_node(&group)?, user_node(&node)?);
    let member = admin.server.groups.is_member(group, user).await.map_err(|e| engine_failed(&e, "admin"))?;
    Ok(json(&serde_json::json!({ "member": member })))
}

#[derive(Deserialize)]
struct HistoryPage {
    /// Messages older than this `mid` (absent: from the newest).
    before: Option<i64>,
    limit: Option<usize>,
    /// Only messages stamped before this time (ns since the epoch).
    before_ns: Option<i64>,
}

/// A page of a conversation, newest first.
async fn history(admin: &Admin, chat: [u8; 16], page: HistoryPage) -> Answer {
    let limit = page.limit.unwrap_or(20).min(admin.server.cfg.max_history_page).clamp(1, MAX_PAGE);
    // The store's page starts at its `mid` inclusive, 0 meaning the newest.
    let upto = match page.before {
        None => 0,
        Some(before) if before <= 1 => return Ok(json(&serde_json::json!({ "messages": [] }))),
        Some(before) => before - 1,
    };
    let messages = admin.server.history.page(chat, upto, limit, page.before_ns).await;
    let messages = messages.map_err(|e| engine_failed(&e, "admin history"))?;
    Ok(json(&serde_json::json!({ "messages": messages.iter().map(tim_json).collect::<Vec<_>>() })))
}

async fn user_history(
    State(admin): State<Arc<Admin>>,
    _: Reader,
    Path((node, peer)): Path<(String, String)>,
    Query(page): Query<HistoryPage>,
) -> Answer {
    let (user, peer) = (user_node(&node)?, user_node(&peer)?);
    history(&admin, pair_id(user, peer), page).await
}

async fn group_history(
    State(admin): State<Arc<Admin>>,
    _: Reader,
    Path(node): Path<String>,
    Query(page): Query<HistoryPage>,
) -> Answer {
    let group = existing_group(&admin, &node).await?;
    history(&admin, crate::model::ident::group_chat_id(group), page).await
}

#[derive(Deserialize)]
struct OfflinePage {
    limit: Option<usize>,
}

/// The oldest entries of a user's offline queue, and the oldest messages waiting for it in
/// its conversations, each up to `limit`, left in place.
async fn offline(
    State(admin): State<Arc<Admin>>,
    _: Reader,
    Named(user): Named,
    Query(page): Query<OfflinePage>,
) -> Answer {
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let entries = admin.server.offline.oldest(user, limit).await.map_err(|e| engine_failed(&e, "admin offline"))?;
    let entries: Vec<_> =
        entries.iter().map(|(id, msg)| serde_json::json!({ "id": id.0, "message": tim_json(msg) })).collect();
    let waiting = waiting(&admin, user, limit).await.map_err(|e| engine_failed(&e, "admin offline"))?;
    Ok(json(&serde_json::json!({ "entries": entries, "waiting": waiting })))
}

/// Up to `limit` messages waiting for `user` in its conversations (past its cursors), as
/// `{conversation, message}`, conversation by conversation.
async fn waiting(admin: &Admin, user: UserId, limit: usize) -> Result<Vec<serde_json::Value>, EngineError> {
    let mut out = Vec::new();
    for with in offline::conversations_of(&admin.server, user).await? {
        let Some(left) = limit.checked_sub(out.len()).filter(|left| *left > 0) else { break };
        let Some(membership) = offline::membership(&admin.server, user, with).await? else { continue };
        let found = admin.server.chat_log.look(with.log(user), user, membership, left).await?;
        for msg in found.decoded() {
            out.push(serde_json::json!({ "conversation": with.node(), "message": tim_json(&msg) }));
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct OfflineIds {
    ids: Vec<u64>,
}

/// Deletes entries of a user's offline queue by the ids its read gave.
async fn delete_offline(
    State(admin): State<Arc<Admin>>,
    Writer(caller): Writer,
    Named(user): Named,
    body: Bytes,
) -> Answer {
    let request: OfflineIds = parse(&body)?;
    if request.ids.len() > MAX_PAGE {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("at most {MAX_PAGE} ids per request")));
    }
    let ids: Vec<RowId> = request.ids.into_iter().map(RowId).collect();
    let deleted = admin.server.offline.remove_listed(user, &ids).await;
    let deleted = deleted.map_err(|e| engine_failed(&e, "admin offline"))?;
    info!(user = %user.node(), deleted, by = caller.who(), "offline entries deleted");
    Ok(json(&serde_json::json!({ "deleted": deleted })))
}
