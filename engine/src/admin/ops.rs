//! What an application's backend sends: system messages, presence, pings, virtual rooms,
//! and client operations run as a user (TIM's `TimMessageBroadcast`, `TimPresenceBroadcast`,
//! `Detect`, `Vroom`, `ProxyMessage`, and the roster and group calls).
//!
//! Acting for a user runs the very code a client frame of that user runs, with its checks
//! (friendship, membership, blocks) and its pushes; the answer is what the client would get.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use tim_net::codec::{body_bytes, TimStruct};
use tim_net::frame::encode_server_empty;
use tim_net::proto::{Tid, TimMessage, TimNodes, TimPresence, TimReq};
use tim_net::{Encoding, FrameType};
use tracing::info;

use super::{
    engine_failed, existing_user, from_tim_json, json, parse, refuse, registered, tim_json, Admin, Named, Writer,
};
use crate::flows::business::Reply;
use crate::flows::sending::{Next, Sender, OD_NORMAL};
use crate::model::ident::UserId;
use crate::server::Server;
use crate::services::offline::Stanza;
use crate::services::push::Fallback;
use crate::session::delivery::Body;

type Answer = Result<Response, Response>;

/// msType 1 (system), which the server sets on a system message (with odType 1).
const MS_SYSTEM: i8 = 1;

/// Most bytes the copies of one system message may take in offline queues (users × size).
const MAX_FAN_OUT_BYTES: usize = 256 << 20;

/// Refuses (413) a struct for `copies` users that is larger than a client's frame may be, or
/// whose copies together pass [`MAX_FAN_OUT_BYTES`].
#[allow(clippy::result_large_err)]
fn fits<T: TimStruct>(server: &Server, value: &T, copies: usize) -> Result<(), Response> {
    let size = body_bytes(value, Encoding::Compact).len();
    if size > server.cfg.max_frame {
        let why = format!("it has {size} bytes; a frame has at most {} (--max-frame)", server.cfg.max_frame);
        return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, why));
    }
    if size.saturating_mul(copies) > MAX_FAN_OUT_BYTES {
        let why = format!("{copies} copies of {size} bytes pass the {MAX_FAN_OUT_BYTES} bytes one request may queue");
        return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, why));
    }
    Ok(())
}

pub(super) fn routes() -> Router<Arc<Admin>> {
    Router::new()
        .route("/v1/system-messages", post(system_message))
        .route("/v1/presence", post(presence))
        .route("/v1/ping", post(ping))
        .route("/v1/vrooms", post(new_vroom))
        .route("/v1/as/{node}/message", post(as_message))
        .route("/v1/as/{node}/business", post(as_business))
        .route("/v1/as/{node}/nodes", post(as_nodes))
}

#[derive(Deserialize)]
struct SystemMessage {
    nodes: Vec<String>,
    /// A `TimMessage` in TIM's JSON; msType and odType are the server's.
    message: serde_json::Value,
}

/// A system message to each registered user: queued, then pushed with ack (an ack takes it
/// off the queue); in no history.
async fn system_message(State(admin): State<Arc<Admin>>, Writer(caller): Writer, body: Bytes) -> Answer {
    let request: SystemMessage = parse(&body)?;
    let mut message = request.message;
    if let Some(fields) = message.as_object_mut() {
        fields.insert("msType".into(), MS_SYSTEM.into());
        fields.insert("odType".into(), OD_NORMAL.into());
    }
    let mut msg: TimMessage = from_tim_json(&message)?;
    msg.mid = None;
    msg.from_tid = None;
    msg.timestamp = Some(crate::services::history::now_ns());
    msg.id = Some(rand::random());
    let (users, unknown) = registered(&admin.server, &request.nodes).await?;
    fits(&admin.server, &msg, users.len())?;
    let sent = users.len();
    // Queued for everyone before it is pushed, as a chat message is: the answer means stored,
    // and a session's ack removes its user's entry.
    let body = Body::message(msg);
    let entries: Vec<Stanza> = users.iter().map(|u| (*u, body.compact().clone(), body.mid())).collect();
    let queued =
        admin.server.offline.push_all(&entries).await.map_err(|e| engine_failed(&e, "admin system message"))?;
    let pushes = users.into_iter().zip(queued).map(|(u, entry)| (u, body.clone(), Fallback::Queued(entry))).collect();
    admin.server.push.messages(pushes).await;
    info!(users = sent, by = caller.who(), "system message sent");
    Ok(json(&serde_json::json!({ "sent": sent, "unknown": unknown })))
}

#[derive(Deserialize)]
struct PresenceBroadcast {
    nodes: Vec<String>,
    /// A `TimPresence` in TIM's JSON.
    presence: serde_json::Value,
    /// The user it is from (its `fromTid`), if any.
    from: Option<String>,
}

/// A presence to the online sessions of each user (ephemeral, as presence is).
async fn presence(State(admin): State<Arc<Admin>>, _: Writer, body: Bytes) -> Answer {
    let request: PresenceBroadcast = parse(&body)?;
    let mut presence: TimPresence = from_tim_json(&request.presence)?;
    // The sender is the server's to say: a registered `from`, or nobody.
    presence.from_tid = match &request.from {
        Some(from) => Some(Tid { node: existing_user(&admin.server, from).await?.node(), ..Tid::default() }),
        None => None,
    };
    let (users, unknown) = registered(&admin.server, &request.nodes).await?;
    fits(&admin.server, &presence, 1)?;
    let sessions = admin.server.push.frames(&users, FrameType::Presence, &presence, None).await;
    Ok(json(&serde_json::json!({ "sessions": sessions, "unknown": unknown })))
}

#[derive(Deserialize)]
struct Users {
    nodes: Vec<String>,
}

/// TIMPING (frame 13) to every session of the users: clients answer it, and a session that
/// is gone is found out by its failed write.
async fn ping(State(admin): State<Arc<Admin>>, _: Writer, body: Bytes) -> Answer {
    let request: Users = parse(&body)?;
    let (users, unknown) = registered(&admin.server, &request.nodes).await?;
    let frame = encode_server_empty(FrameType::Ping);
    let sessions = admin.server.push.encoded(&users, frame.clone(), frame, None).await;
    Ok(json(&serde_json::json!({ "sessions": sessions, "unknown": unknown })))
}

#[derive(Deserialize)]
struct NewVroom {
    /// The user who owns the room.
    owner: String,
}

/// A virtual room owned by a user, as its VROOM register would make it.
async fn new_vroom(State(admin): State<Arc<Admin>>, _: Writer, body: Bytes) -> Answer {
    let request: NewVroom = parse(&body)?;
    let owner = existing_user(&admin.server, &request.owner).await?;
    let req = TimReq { rtype: Some(crate::services::rooms::NEW), ..TimReq::default() };
    // Made without a session: none is subscribed.
    let ack = admin.server.rooms.handle(owner, 0, None, &req).await;
    Ok(json(&tim_json(&ack)))
}

/// The sender a user's client would be, for a request made on its behalf.
fn sender(user: UserId) -> Sender {
    Sender { user, tid: Tid { node: user.node(), ..Tid::default() } }
}

/// A message sent as a user, checked and delivered as if its client sent it: the stored
/// message (with its `mid`) for a 1:1 message, an empty answer for kinds without one.
async fn as_message(
    State(admin): State<Arc<Admin>>,
    Writer(caller): Writer,
    Named(user): Named,
    body: Bytes,
) -> Answer {
    let server = &admin.server;
    let msg: TimMessage = from_tim_json(&parse(&body)?)?;
    fits(server, &msg, 1)?;
    let failed = |e| engine_failed(&e, "admin message");
    let stored = match crate::flows::message::accept(server, &sender(user), msg).await.map_err(failed)? {
        Next::Store(accepted) => {
            // No session sends it: the sender's sessions all get the copy (conn 0 is none).
            let echoes = crate::flows::message::store_and_push(server, user, 0, Encoding::Json, vec![*accepted]).await;
            let echo = echoes.map_err(failed)?.into_iter().next().unwrap_or_default();
            // The echo is the frame type, then the message in TIM's JSON.
            serde_json::from_slice(echo.get(1..).unwrap_or_default()).unwrap_or(serde_json::Value::Null)
        }
        Next::Reply(ack) => tim_json(&ack),
        Next::Done => serde_json::Value::Null,
    };
    info!(user = %user.node(), by = caller.who(), "message sent as a user");
    Ok(json(&serde_json::json!({ "message": stored })))
}

/// The answer a client gets, as JSON.
fn reply_json(reply: Reply) -> Response {
    match reply {
        Reply::Ack(ack) => json(&tim_json(&ack)),
        Reply::Nodes(nodes) => json(&tim_json(&nodes)),
        Reply::Nothing => json(&serde_json::json!({})),
    }
}

/// A BUSINESS request (friends, blocks, groups) as a user.
async fn as_business(
    State(admin): State<Arc<Admin>>,
    Writer(caller): Writer,
    Named(user): Named,
    body: Bytes,
) -> Answer {
    let req: TimReq = from_tim_json(&parse(&body)?)?;
    info!(user = %user.node(), rtype = ?req.rtype, by = caller.who(), "business request as a user");
    Ok(reply_json(crate::flows::business::handle(&admin.server, user, &req).await))
}

/// A NODES request (profiles of users and groups) as a user.
async fn as_nodes(State(admin): State<Arc<Admin>>, _: Writer, Named(user): Named, body: Bytes) -> Answer {
    let req: TimNodes = from_tim_json(&parse(&body)?)?;
    Ok(reply_json(crate::flows::profiles::handle(&admin.server, user, req).await))
}
