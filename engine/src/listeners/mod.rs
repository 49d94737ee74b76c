//! The client listener: WebSocket `/tim` and HTTP `POST /tim2` on one port.

pub mod inbound;
pub mod web;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tim_net::frame::encode_server;
use tim_net::proto::{TimAck, TimAuth};
use tim_net::{ClientFrame, FrameType};
use tracing::debug;

use crate::error::EngineError;
use crate::listeners::inbound::{ConnInfo, MeteredListener, LARGE_FRAME};
use crate::listeners::web::{Asset, CSS, HTML, JS};
use crate::server::Server;

/// Read buffer of a WebSocket. Every idle connection keeps one, and most TIM frames are far
/// smaller; large messages still arrive whole, in more reads. 4 KiB → 1 KiB took idle memory from
/// 10.1 to 7.0 KiB per connection with no change in chat throughput (benches/README.md).
const WS_READ_BUFFER: usize = 1 << 10;
/// Frames are gathered up to this many bytes before they are written: a session writes the
/// frames queued for it with one flush (one write system call) rather than one each.
const WS_WRITE_BUFFER: usize = 4 << 10;

/// The chat page for people trying tim-rs: it speaks TIM's protocol over `/tim` (JSON
/// frames) and `/tim2`, like any client.
const CHAT_PAGE: &[Asset] = &[
    Asset { path: "/", kind: HTML, body: include_str!("../../web/chat/index.html") },
    Asset { path: "/chat.js", kind: JS, body: include_str!("../../web/chat/chat.js") },
    Asset { path: "/chat.css", kind: CSS, body: include_str!("../../web/chat/chat.css") },
];

pub async fn serve(server: Arc<Server>, listener: MeteredListener) -> std::io::Result<()> {
    let shutdown = server.shutdown.clone();
    // `/tim2` carries registrations and token requests only: a few hundred bytes.
    let tim2_limit = server.cfg.max_frame.min(LARGE_FRAME);
    let mut app =
        Router::new().route("/tim", get(upgrade)).route("/tim2", post(tim2).layer(DefaultBodyLimit::max(tim2_limit)));
    if server.cfg.chat_page {
        app = app.merge(crate::listeners::web::routes(CHAT_PAGE));
    }
    let app = app.with_state(server);
    axum::serve(listener, app.into_make_service_with_connect_info::<ConnInfo>())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// With an allow-list configured, a present Origin must be on it; a missing one (non-browser
/// clients) passes.
fn origin_allowed(server: &Server, headers: &HeaderMap) -> bool {
    if server.cfg.origin.is_empty() {
        return true;
    }
    match headers.get("origin") {
        None => true,
        Some(origin) => server.cfg.origin.iter().any(|allowed| origin.as_bytes() == allowed.as_bytes()),
    }
}

async fn upgrade(
    State(server): State<Arc<Server>>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&server, &headers) {
        debug!(peer = %conn.peer, "websocket refused: origin not allowed");
        return StatusCode::FORBIDDEN.into_response();
    }
    let max = server.cfg.max_frame;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .on_upgrade(move |socket| {
            let tasks = server.tasks.clone();
            tasks.track_future(crate::session::run(server, socket, conn))
        })
}

/// `POST /tim2`: register (14) and token (15); the reply is `0C` + TimAck in the request's
/// encoding. Other frame types get an empty 200, as TIM answers.
async fn tim2(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    if !origin_allowed(&server, &headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let frame = match ClientFrame::parse(body, server.cfg.max_frame) {
        Ok(frame) => frame,
        Err(e) => {
            debug!(error = %e, "tim2: undecodable frame");
            return StatusCode::OK.into_response();
        }
    };
    let kind = frame.kind;
    if !matches!(kind, FrameType::Register | FrameType::Token) {
        return StatusCode::OK.into_response();
    }
    let result = match frame.decode::<TimAuth>() {
        Err(_) => Err(EngineError::Refused(tim_net::proto::ErrorCode::ParamIncorrect)),
        Ok(auth) => {
            let (name, pwd, domain) =
                (auth.name.unwrap_or_default(), auth.pwd.unwrap_or_default(), auth.domain.unwrap_or_default());
            if kind == FrameType::Register {
                server.accounts.register(&name, &pwd, &domain).await.map(|user| user.node())
            } else {
                server.accounts.issue_token(&name, Some(&pwd), &domain).await
            }
        }
    };
    let ack = match result {
        Ok(n) => TimAck { n: Some(n), ..TimAck::ok(kind as u8) },
        Err(e) => TimAck::error(kind as u8, e.answer("tim2")),
    };
    ([("content-type", "application/octet-stream")], encode_server(FrameType::Ack, frame.encoding, &ack))
        .into_response()
}
