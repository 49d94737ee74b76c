//! Accounts for an application's backend: register, look up, profile, password, login
//! tokens, bans and the cluster's online users (TIM's `Register`, `Token`, `ModifyPwd`,
//! `ModifyUserInfo`, `SysBlockUser`, `OnlineUser`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use serde::{Deserialize, Serialize};
use tim_net::proto::TimUserBean;
use tim_net::report::ErrorChain;
use tracing::{info, warn};

use super::MAX_PAGE;
use super::{
    engine_failed, from_tim_json, json, parse, refuse, registered, tim_json, user_node, Admin, Named, Reader, Writer,
};
use crate::model::ident::UserId;
use crate::seam::ask_node;
use crate::session::registry::SessionsQuery;

type Answer = Result<Response, Response>;

pub(super) fn routes() -> Router<Arc<Admin>> {
    Router::new()
        .route("/v1/users", post(register).get(find_by_name))
        .route("/v1/users/{node}", get(lookup).patch(modify_profile))
        .route("/v1/users/{node}/password", put(set_password))
        .route("/v1/tokens", post(token))
        .route("/v1/bans", post(ban))
        .route("/v1/bans/{node}", delete(unban))
        .route("/v1/cluster", get(cluster))
        .route("/v1/online", get(online))
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    domain: String,
}

async fn register(State(admin): State<Arc<Admin>>, Writer(caller): Writer, body: Bytes) -> Answer {
    let new: NewUser = parse(&body)?;
    let user = admin.server.accounts.register(&new.name, &new.password, &new.domain).await;
    let user = user.map_err(|e| engine_failed(&e, "admin register"))?;
    info!(user = %user.node(), by = caller.who(), "user registered");
    Ok((StatusCode::CREATED, json(&serde_json::json!({ "node": user.node() }))).into_response())
}

#[derive(Deserialize)]
struct ByName {
    name: String,
    #[serde(default)]
    domain: String,
}

async fn find_by_name(State(admin): State<Arc<Admin>>, _: Reader, Query(by): Query<ByName>) -> Answer {
    let user = admin.server.accounts.user_of(&by.name, &by.domain).await.map_err(|e| engine_failed(&e, "admin"))?;
    let user = user.ok_or_else(|| refuse(StatusCode::NOT_FOUND, format!("no user named {:?}", by.name)))?;
    user_info(&admin, user).await
}

async fn lookup(State(admin): State<Arc<Admin>>, _: Reader, Named(user): Named) -> Answer {
    user_info(&admin, user).await
}

/// One session of a user, as an operator sees it.
#[derive(Serialize)]
struct SessionView {
    /// The node it is connected to.
    node: tim_shard::NodeId,
    termtyp: Option<i8>,
}

/// A user's profile, sessions and ban.
async fn user_info(admin: &Admin, user: UserId) -> Answer {
    let server = &admin.server;
    let failed = |e| engine_failed(&e, "admin lookup");
    let profile = server.accounts.profile(user).await.map_err(failed)?;
    let sessions = server.directory.locate(&[user]).await.map_err(failed)?;
    let sessions: Vec<SessionView> = sessions
        .get(&user)
        .into_iter()
        .flatten()
        .map(|lease| SessionView { node: lease.node, termtyp: lease.termtyp })
        .collect();
    let banned_until = server.bans.until(user).await.map_err(failed)?;
    Ok(json(&serde_json::json!({
        "node": user.node(),
        "profile": profile.as_ref().map(tim_json),
        "sessions": sessions,
        "banned_until_unix": banned_until,
    })))
}

async fn modify_profile(
    State(admin): State<Arc<Admin>>,
    Writer(caller): Writer,
    Named(user): Named,
    body: Bytes,
) -> Answer {
    let changes: TimUserBean = from_tim_json(&parse(&body)?)?;
    admin.server.accounts.modify_profile(user, changes).await.map_err(|e| engine_failed(&e, "admin profile"))?;
    info!(user = %user.node(), by = caller.who(), "profile changed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct NewPassword {
    password: String,
    /// Checked when given; without it the password is reset.
    old_password: Option<String>,
}

async fn set_password(
    State(admin): State<Arc<Admin>>,
    Writer(caller): Writer,
    Named(user): Named,
    body: Bytes,
) -> Answer {
    let change: NewPassword = parse(&body)?;
    let changed = admin.server.accounts.change_password(user, change.old_password.as_deref(), &change.password).await;
    changed.map_err(|e| engine_failed(&e, "admin password"))?;
    info!(user = %user.node(), by = caller.who(), reset = change.old_password.is_none(), "password changed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct TokenRequest {
    name: String,
    #[serde(default)]
    domain: String,
    /// Checked when given; without it any registered name gets a token.
    password: Option<String>,
}

async fn token(State(admin): State<Arc<Admin>>, _: Writer, body: Bytes) -> Answer {
    let request: TokenRequest = parse(&body)?;
    let accounts = &admin.server.accounts;
    let failed = |e| engine_failed(&e, "admin token");
    let token = accounts.issue_token(&request.name, request.password.as_deref(), &request.domain).await;
    let token = token.map_err(failed)?;
    let user = accounts.user_of(&request.name, &request.domain).await.map_err(failed)?;
    Ok(json(&serde_json::json!({ "node": user.map(UserId::node), "token": token })))
}

#[derive(Deserialize)]
struct BanRequest {
    nodes: Vec<String>,
    /// How long, from now (at most a hundred years).
    seconds: u64,
}

/// Bans users: each is refused logins until the ban ends, and its sessions get TIMLOGOUT
/// and close, wherever they are.
async fn ban(State(admin): State<Arc<Admin>>, Writer(caller): Writer, body: Bytes) -> Answer {
    let request: BanRequest = parse(&body)?;
    if request.seconds == 0 {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "seconds must be at least 1 (DELETE /v1/bans/{node} lifts a ban)".into(),
        ));
    }
    let server = &admin.server;
    let (users, unknown) = registered(server, &request.nodes).await?;
    let mut banned = Vec::with_capacity(users.len());
    let mut failed = None;
    for user in users {
        match server.bans.ban(user, request.seconds).await {
            Ok(_) => banned.push(user),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // Banned first, then logged out: a login racing the ban reads it, or is closed here. The
    // users banned before a failure are logged out too.
    let closed = server.push.log_out(&banned).await.map_err(|e| engine_failed(&e, "admin ban"))?;
    if let Some(e) = failed {
        return Err(engine_failed(&e, "admin ban"));
    }
    info!(users = banned.len(), sessions = closed, seconds = request.seconds, by = caller.who(), "users banned");
    Ok(json(&serde_json::json!({ "banned": banned.len(), "sessions_closed": closed, "unknown": unknown })))
}

async fn unban(State(admin): State<Arc<Admin>>, Writer(caller): Writer, Path(node): Path<String>) -> Answer {
    let user = user_node(&node)?;
    let lifted = admin.server.bans.lift(user).await.map_err(|e| engine_failed(&e, "admin unban"))?;
    if !lifted {
        return Err(refuse(StatusCode::NOT_FOUND, format!("{node} is not banned")));
    }
    info!(user = %node, by = caller.who(), "ban lifted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The members as gossip shows them; a node that runs alone shows itself.
async fn cluster(State(admin): State<Arc<Admin>>, _: Reader) -> Answer {
    let server = &admin.server;
    let me = server.data.node();
    let (alone, members) = match server.data.members().await {
        Some(members) => (false, serde_json::to_value(members).unwrap_or_default()),
        None => (
            true,
            serde_json::json!([{
                "node": me,
                "client": server.cfg.listen,
                "state": "ready",
                "slots": server.data.ownership().owned().len(),
                "sessions": server.sessions.online(),
                "live": true,
            }]),
        ),
    };
    Ok(json(&serde_json::json!({ "node": me, "slots": tim_shard::SLOTS, "alone": alone, "members": members })))
}

#[derive(Deserialize)]
struct OnlinePage {
    /// The `next` of the page before.
    after: Option<String>,
    limit: Option<usize>,
}

/// A page of the cluster's online users, in id order: every live node gives its first
/// `limit` users after the cursor, and the first `limit` of them all are the page.
async fn online(State(admin): State<Arc<Admin>>, _: Reader, Query(page): Query<OnlinePage>) -> Answer {
    let server = &admin.server;
    let after = page.after.as_deref().filter(|a| !a.is_empty()).map(user_node).transpose()?;
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let mut nodes = server.data.live_peers();
    nodes.push(server.data.node());
    let asked = nodes.into_iter().map(|node| async move {
        (node, ask_node::<Vec<(UserId, usize)>, _>(&server.data, node, SessionsQuery::Online { after, limit }).await)
    });
    let (mut users, mut more, mut missing) = (BTreeMap::<UserId, usize>::new(), false, Vec::new());
    for (node, answer) in futures_util::future::join_all(asked).await {
        match answer {
            Ok(page) => {
                more |= page.len() >= limit;
                for (user, sessions) in page {
                    *users.entry(user).or_default() += sessions;
                }
            }
            Err(e) => {
                warn!(%node, error = %ErrorChain(&e), "a node's online users could not be read");
                missing.push(node);
            }
        }
    }
    more |= users.len() > limit;
    let page: Vec<_> = users
        .into_iter()
        .take(limit)
        .map(|(user, sessions)| serde_json::json!({ "node": user.node(), "sessions": sessions }))
        .collect();
    let next = if more { page.last().and_then(|u| u.get("node").cloned()) } else { None };
    Ok(json(&serde_json::json!({ "users": page, "next": next, "unreachable": missing })))
}
