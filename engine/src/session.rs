//! One client connection: the task that owns the WebSocket, from upgrade to close.
//!
//! Before login only auth (16) and ping (13) are accepted; anything else closes the socket, and
//! so does the auth timeout. After login the ping timeout applies, refreshed by pings only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use bytes::{Bytes, BytesMut};
use tim_net::codec::{Encoding, TimStruct};
use tim_net::frame::{big_data_length, encode_server, encode_server_empty, BigData, BigDataLength};
use tim_net::proto::{ErrorCode, TimAck, TimAuth, TimReq};
use tim_net::{ClientFrame, DecodeError, FrameType};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument, Span};

use crate::error::EngineError;
use crate::ident::UserId;
use crate::server::Server;
use crate::sessions::{OverEntry, SessionHandle};

/// Why a session ended (logged once).
#[derive(Debug)]
enum Close {
    ClientClosed,
    Kicked,
    AuthTimeout,
    PingTimeout,
    FrameBeforeLogin(u8),
    Oversize(usize),
    ReadError(String),
    WriteFailed,
}

/// A big-data frame arriving over several WebSocket messages.
struct Reassembly {
    buf: BytesMut,
    declared: usize,
}

struct Login {
    user: UserId,
    encoding: Encoding,
}

struct Session {
    server: Arc<Server>,
    ws: WebSocket,
    conn_id: u64,
    login: Option<Login>,
    kick: CancellationToken,
    deadline: Instant,
    big: Option<Reassembly>,
}

pub async fn run(server: Arc<Server>, ws: WebSocket, peer: SocketAddr) {
    let conn_id = server.next_conn_id();
    let span = info_span!("conn", id = conn_id, %peer, uid = tracing::field::Empty);
    let kick = server.shutdown.child_token();
    let deadline = Instant::now() + server.cfg.auth_timeout();
    let session = Session { server, ws, conn_id, login: None, kick, deadline, big: None };
    session.serve().instrument(span).await;
}

impl Session {
    async fn serve(mut self) {
        debug!("connected");
        let close = loop {
            let result = tokio::select! {
                _ = self.kick.cancelled() => Err(Close::Kicked),
                _ = sleep_until(self.deadline) => Err(if self.login.is_some() { Close::PingTimeout } else { Close::AuthTimeout }),
                inbound = self.ws.recv() => match inbound {
                    None | Some(Ok(Message::Close(_))) => Err(Close::ClientClosed),
                    Some(Err(e)) => Err(read_error(e)),
                    Some(Ok(Message::Binary(data))) => self.on_message(data).await,
                    Some(Ok(Message::Text(text))) => self.on_message(Bytes::from(text)).await,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                },
            };
            if let Err(close) = result {
                break close;
            }
        };
        match &close {
            Close::ClientClosed => debug!("closed by the client"),
            Close::Kicked => debug!("closed by the server (shutdown or newer login)"),
            Close::AuthTimeout => info!("closing: no login within the auth timeout"),
            Close::PingTimeout => info!("closing: no ping within the ping timeout"),
            Close::FrameBeforeLogin(code) => {
                info!(frame_type = code, "closing: frame other than auth or ping before login")
            }
            Close::Oversize(len) => warn!(len, max = self.server.cfg.max_frame, "closing: frame over the size limit"),
            Close::ReadError(error) => info!(%error, "closing: websocket read failed"),
            Close::WriteFailed => info!("closing: write failed or timed out"),
        }
        if let Some(login) = &self.login {
            self.server.sessions.remove(login.user, self.conn_id);
        }
        // Best effort: a peer that stopped reading does not hold the task past the timeout.
        let _ = tokio::time::timeout(self.server.cfg.write_timeout(), self.ws.send(Message::Close(None))).await;
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), Close> {
        match tokio::time::timeout(self.server.cfg.write_timeout(), self.ws.send(Message::Binary(frame))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Close::WriteFailed),
        }
    }

    /// Replies in the session's encoding (before login: the request's).
    async fn reply<T: TimStruct>(
        &mut self,
        kind: FrameType,
        request_encoding: Encoding,
        body: &T,
    ) -> Result<(), Close> {
        let encoding = self.login.as_ref().map_or(request_encoding, |l| l.encoding);
        self.send(encode_server(kind, encoding, body)).await
    }

    async fn refuse(&mut self, tim_type: u8, encoding: Encoding, code: ErrorCode) -> Result<(), Close> {
        self.reply(FrameType::Ack, encoding, &TimAck::error(tim_type, code)).await
    }

    async fn on_message(&mut self, data: Bytes) -> Result<(), Close> {
        let max = self.server.cfg.max_frame;
        if let Some(mut big) = self.big.take() {
            if big.buf.len() + data.len() > big.declared {
                return self.refuse(FrameType::BigBinary as u8, Encoding::Compact, ErrorCode::BigData).await;
            }
            big.buf.extend_from_slice(&data);
            if big.buf.len() < big.declared {
                self.big = Some(big);
                return Ok(());
            }
            return self.on_big_data(big.buf.freeze()).await;
        }
        let Some(&head) = data.first() else {
            return Ok(());
        };
        let code = head & 0x7F;
        let frame = match ClientFrame::parse(data.clone(), max) {
            Ok(frame) => frame,
            Err(DecodeError::TooLarge { len, .. }) => return Err(Close::Oversize(len)),
            Err(e) => {
                debug!(error = %e, "undecodable frame");
                if self.login.is_none() {
                    return Err(Close::FrameBeforeLogin(code));
                }
                return self.refuse(code, Encoding::of_client_head(head), ErrorCode::ParamIncorrect).await;
            }
        };
        match (frame.kind, self.login.is_some()) {
            (FrameType::Auth, _) => self.on_auth(&frame).await,
            (FrameType::Ping, false) => Ok(()),
            (FrameType::Ping, true) => {
                self.deadline = Instant::now() + self.server.cfg.ping_timeout();
                self.send(encode_server_empty(FrameType::Ping)).await
            }
            (_, false) => Err(Close::FrameBeforeLogin(code)),
            // No frame of ours awaits an ack yet: late or unknown acks are dropped.
            (FrameType::Ack, true) => Ok(()),
            (kind, true) if kind.is_big_data() => match big_data_length(&data) {
                BigDataLength::Legacy | BigDataLength::Complete => self.on_big_data(data).await,
                BigDataLength::Incomplete(declared) if declared > max => Err(Close::Oversize(declared)),
                BigDataLength::Incomplete(declared) => {
                    let mut buf = BytesMut::with_capacity(declared.min(data.len() * 4));
                    buf.extend_from_slice(&data);
                    self.big = Some(Reassembly { buf, declared });
                    Ok(())
                }
                BigDataLength::Overrun => {
                    self.refuse(FrameType::BigBinary as u8, frame.encoding, ErrorCode::BigData).await
                }
            },
            (FrameType::Business, true) => {
                let (Some(login), Ok(req)) = (&self.login, frame.decode::<TimReq>()) else {
                    return self.refuse(code, frame.encoding, ErrorCode::ParamIncorrect).await;
                };
                let ack = crate::business::handle(&self.server, login.user, &req).await;
                self.reply(FrameType::Ack, frame.encoding, &ack).await
            }
            (FrameType::Register | FrameType::Token, true) => {
                self.refuse(code, frame.encoding, ErrorCode::ParamIncorrect).await
            }
            (_, true) => self.refuse(code, frame.encoding, ErrorCode::InterfaceIncorrect).await,
        }
    }

    /// A complete big-data frame. Delivery of big data is not built yet: the sender learns so
    /// with 4107; a malformed frame gets 4104.
    async fn on_big_data(&mut self, frame: Bytes) -> Result<(), Close> {
        let code = frame.first().map_or(FrameType::BigBinary as u8, |h| h & 0x7F);
        match BigData::parse(frame) {
            Ok(big) => {
                debug!(kind = ?big.kind, len = big.data.len(), "big data frame");
                self.refuse(code, Encoding::Compact, ErrorCode::InterfaceIncorrect).await
            }
            Err(_) => self.refuse(code, Encoding::Compact, ErrorCode::ParamIncorrect).await,
        }
    }

    async fn on_auth(&mut self, frame: &ClientFrame) -> Result<(), Close> {
        const AUTH: u8 = FrameType::Auth as u8;
        if self.login.is_some() {
            return self.reply(FrameType::Ack, frame.encoding, &TimAck::ok(AUTH)).await;
        }
        let Ok(auth) = frame.decode::<TimAuth>() else {
            return self.refuse(AUTH, frame.encoding, ErrorCode::ParamIncorrect).await;
        };
        let user = match authenticate(&self.server, &auth).await {
            Ok(user) => user,
            Err(e) => {
                if e.is_internal() {
                    warn!(error = %e, "login failed");
                }
                return self.refuse(AUTH, frame.encoding, e.wire_code()).await;
            }
        };
        let handle = SessionHandle::new(self.conn_id, auth.termtyp, self.kick.clone());
        if self.server.sessions.admit(user, handle) == Err(OverEntry) {
            return self.refuse(AUTH, frame.encoding, ErrorCode::OverEntry).await;
        }
        Span::current().record("uid", user.node());
        info!(termtyp = ?auth.termtyp, "logged in");
        self.login = Some(Login { user, encoding: frame.encoding });
        self.deadline = Instant::now() + self.server.cfg.ping_timeout();
        let ack = TimAck {
            t: Some(self.server.instance_tag),
            n: Some(user.node()),
            n2: Some(self.server.public_session_id(self.conn_id)),
            ..TimAck::ok(AUTH)
        };
        self.reply(FrameType::Ack, frame.encoding, &ack).await
    }
}

/// A token login when a token is given, else a password login.
async fn authenticate(server: &Server, auth: &TimAuth) -> Result<UserId, EngineError> {
    let name = auth.name.as_deref().unwrap_or_default();
    let domain = auth.domain.as_deref().unwrap_or_default();
    match auth.token.as_deref() {
        Some(token) if !token.is_empty() => server.accounts.consume_token(token, name, domain),
        _ => server.accounts.verify(name, auth.pwd.as_deref().unwrap_or_default(), domain).await,
    }
}

/// A read error; an over-long message is told apart so the log says what happened.
fn read_error(e: axum::Error) -> Close {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
    match e.into_inner().downcast::<WsError>() {
        Ok(ws) => match *ws {
            WsError::Capacity(CapacityError::MessageTooLong { size, .. }) => Close::Oversize(size),
            other => Close::ReadError(other.to_string()),
        },
        Err(other) => Close::ReadError(other.to_string()),
    }
}
