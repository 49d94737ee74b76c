//! One client connection: the task that owns the WebSocket, from upgrade to close.
//!
//! Before login only auth (16) and ping (13) are accepted; anything else closes the socket, and
//! so does the auth timeout. After login the ping timeout applies, refreshed by pings only.
//! Other tasks reach the session through its bounded outbound queue; frames that ask for an
//! ack are tracked, re-sent with a fresh ack id on timeout, and reported when acked or given
//! up.
//!
//! This module owns the socket I/O and the task's loop; the parts of a session's work are in
//! its children: `dispatch` (each frame type to its handler), `login` (auth and the offline
//! drain), `acks` (ack tracking), `burst` (chat messages of one inbound burst stored
//! together), `big_data` (big-data frames and their reassembly).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt};
use tim_net::codec::{Encoding, TimStruct};
use tim_net::frame::encode_server;
use tim_net::proto::{ErrorCode, Tid, TimAck};
use tim_net::FrameType;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::error::EngineError;
use crate::flows::business::Reply;
use crate::listeners::inbound::{ConnInfo, Inflight};
use crate::model::ident::UserId;
use crate::server::Server;
use crate::services::history::Accepted;
use crate::session::delivery::Delivery;
use crate::session::limits::Bucket;
use crate::session::outbound::{Inlet, Outlet};
use crate::session::outbound::{Outbound, SessionHandle};

mod acks;
mod burst;
pub mod delivery;
mod dispatch;
pub mod limits;
mod login;
mod order;
pub mod outbound;
mod reassembly;
pub mod registry;

use acks::{next_expired, Pending};
use reassembly::Reassembly;

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
    /// More frames awaiting acks than the outbound queue holds.
    TooManyUnacked,
    /// A login while the node holds `connect_limit` sessions.
    NodeFull,
    /// An operator ended the session (a ban): it was sent TIMLOGOUT.
    LoggedOut,
}

/// Most queued outbound frames written with one flush; bounds how long inbound frames wait.
const WRITE_BURST: usize = 64;
/// Most arrived inbound messages handled in one turn; bounds how long outbound frames wait.
const READ_BURST: usize = 64;

struct Login {
    user: UserId,
    /// The session's address as the server states it in messages it sends (`fromTid`).
    tid: Tid,
    encoding: Encoding,
    /// This session's own handle, for tasks that push to it (the offline drain).
    handle: SessionHandle,
    /// Set while an offline drain runs, so a second request does not start another.
    draining: Arc<AtomicBool>,
}

struct Session {
    server: Arc<Server>,
    ws: WebSocket,
    /// Tells the socket when a message is handled ([`crate::listeners::inbound`]).
    inflight: Arc<Inflight>,
    conn_id: u64,
    login: Option<Login>,
    kick: CancellationToken,
    deadline: Instant,
    big: Option<Reassembly>,
    outlet: Outlet,
    inlet: Inlet,
    pending: HashMap<u32, Pending>,
    /// This connection's message-class frames ([`crate::session::limits`]).
    bucket: Bucket,
    /// Acked deliveries whose offline entries are not deleted yet ([`Session::settle_acks`]).
    acked: Vec<Arc<Delivery>>,
    /// Chat messages accepted in this inbound burst, not stored yet ([`Session::store_burst`]),
    /// with their frame type and encoding for a refusal.
    burst: Vec<(u8, Encoding, Accepted)>,
    /// Created at the first frame that asks for an ack: an idle session does not carry a
    /// timer wheel (several KiB), nor the queue's own 192 bytes.
    ack_timers: Option<Box<DelayQueue<u32>>>,
    /// The virtual rooms this session is subscribed to, ended when it closes.
    rooms: Vec<String>,
    /// Targets whose messages wait for one refused as retryable ([`order`]); boxed, and made
    /// at the first such refusal.
    holds: Option<Box<order::Holds>>,
}

/// The session of a new connection, as the future its task runs.
///
/// A plain function returning the loop's future rather than an `async fn`, and a loop that
/// borrows its session: a future keeps what it was given beside any copy it moves into a
/// local or into a future it awaits, and every idle connection would carry the `Session`
/// two or three times.
pub fn run(server: Arc<Server>, ws: WebSocket, conn: ConnInfo) -> impl Future<Output = ()> {
    crate::metrics::add(&server.metrics.connections, 1);
    let conn_id = server.sessions.next_conn_id();
    let span = info_span!("conn", id = conn_id, peer = %conn.peer, uid = tracing::field::Empty);
    conn.inflight.arm();
    let kick = server.shutdown.child_token();
    let deadline = Instant::now() + server.cfg.auth_timeout();
    let (outlet, inlet) = crate::session::outbound::queue(server.cfg.outbound_queue, server.cfg.outbound_bytes);
    let bucket = Bucket::full(server.cfg.connection_rate());
    let mut session = Session {
        server,
        ws,
        inflight: conn.inflight,
        conn_id,
        login: None,
        kick,
        deadline,
        big: None,
        outlet,
        inlet,
        pending: HashMap::new(),
        acked: Vec::new(),
        bucket,
        burst: Vec::new(),
        ack_timers: None,
        rooms: Vec::new(),
        holds: None,
    };
    async move { session.serve().await }.instrument(span)
}

impl Session {
    async fn serve(&mut self) {
        debug!("connected");
        let close = loop {
            let result = tokio::select! {
                _ = self.kick.cancelled() => Err(Close::Kicked),
                _ = sleep_until(self.deadline) => Err(if self.login.is_some() { Close::PingTimeout } else { Close::AuthTimeout }),
                // Boxed: the handlers' state (a login awaits a password hash) would otherwise be
                // part of every idle session's future.
                inbound = self.ws.recv() => Box::pin(self.on_inbound(inbound)).await,
                out = self.inlet.recv() => self.on_outbound(out).await,
                Some(expired) = next_expired(&mut self.ack_timers), if self.ack_timers.as_ref().is_some_and(|q| !q.is_empty()) => {
                    self.on_ack_timeout(expired.into_inner()).await
                }
            };
            if let Err(close) = result {
                break close;
            }
        };
        // Boxed: the deletion's future is large, and needed once.
        Box::pin(self.settle_acks()).await;
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
            Close::TooManyUnacked => info!("closing: too many frames waiting for acks"),
            Close::LoggedOut => info!("closed by an operator (logged out)"),
            Close::NodeFull => {
                warn!(limit = self.server.cfg.connect_limit, "closing: login over the node's connect limit")
            }
        }
        let user = self.login.as_ref().map(|login| login.user);
        crate::flows::login::log_out(&self.server, self.conn_id, user, std::mem::take(&mut self.rooms));
        // Best effort: a peer that stopped reading does not hold the task past the timeout.
        let _ = tokio::time::timeout(self.server.cfg.write_timeout(), self.ws.send(Message::Close(None))).await;
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), Close> {
        self.feed(frame).await?;
        self.flush().await
    }

    /// Queues a frame in the WebSocket's write buffer (written when the buffer fills).
    async fn feed(&mut self, frame: Bytes) -> Result<(), Close> {
        self.server.metrics.frame_out(&frame);
        match tokio::time::timeout(self.server.cfg.write_timeout(), self.ws.feed(Message::Binary(frame))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Close::WriteFailed),
        }
    }

    async fn flush(&mut self) -> Result<(), Close> {
        match tokio::time::timeout(self.server.cfg.write_timeout(), self.ws.flush()).await {
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

    /// Sends a business or profile reply.
    async fn answer(&mut self, reply: Reply, encoding: Encoding) -> Result<(), Close> {
        match reply {
            Reply::Ack(ack) => self.reply(FrameType::Ack, encoding, &ack).await,
            Reply::Nodes(nodes) => self.reply(FrameType::Nodes, encoding, &nodes).await,
            Reply::Nothing => Ok(()),
        }
    }

    async fn refuse(&mut self, tim_type: u8, encoding: Encoding, code: ErrorCode) -> Result<(), Close> {
        self.reply(FrameType::Ack, encoding, &TimAck::error(tim_type, code)).await
    }

    /// Refuses with the code of an engine error, logging internal ones.
    async fn refuse_with(&mut self, tim_type: u8, encoding: Encoding, e: EngineError) -> Result<(), Close> {
        self.refuse(tim_type, encoding, e.answer("request")).await
    }

    /// Refuses a chat message with `code`; a retryable refusal holds the connection's later
    /// messages to its target ([`order`]).
    async fn refuse_message(
        &mut self,
        key: Option<order::Key>,
        tim_type: u8,
        encoding: Encoding,
        code: ErrorCode,
    ) -> Result<(), Close> {
        if let (ErrorCode::BlockingOperation, Some(key)) = (code, key) {
            debug!(id = key.id(), "message refused as retryable: later ones to its target wait for it");
            self.holds.get_or_insert_with(Box::default).hold(key);
        }
        self.refuse(tim_type, encoding, code).await
    }

    /// Whether a chat message may go on now, or waits behind one refused before it.
    fn passes(&mut self, key: Option<&order::Key>) -> bool {
        match (self.holds.as_mut(), key) {
            (Some(holds), Some(key)) => holds.pass(key),
            _ => true,
        }
    }

    /// Handles the WebSocket messages that have arrived, up to [`READ_BURST`] of them, so a
    /// burst of chat messages is stored with one write and a burst of acks settled with one.
    async fn on_inbound(&mut self, first: Option<Result<Message, axum::Error>>) -> Result<(), Close> {
        let mut next = Some(first);
        let mut taken = 0;
        let handled = loop {
            let Some(inbound) = next else { break Ok(()) };
            let result = match inbound {
                None | Some(Ok(Message::Close(_))) => Err(Close::ClientClosed),
                Some(Err(e)) => Err(read_error(e)),
                Some(Ok(Message::Binary(data))) => self.on_message(data).await,
                Some(Ok(Message::Text(text))) => self.on_message(Bytes::from(text)).await,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
            };
            if result.is_err() {
                break result;
            }
            // A big-data frame still being reassembled keeps counting as one message.
            if self.big.is_none() {
                self.inflight.message_done();
            }
            taken += 1;
            next = if taken < READ_BURST { self.ws.recv().now_or_never() } else { None };
        };
        // Messages accepted before the socket closed are still stored and delivered.
        let stored = self.store_burst().await;
        self.settle_acks().await;
        handled.and(stored)
    }

    async fn on_outbound(&mut self, first: Outbound) -> Result<(), Close> {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(out) = next {
            let frame = match out {
                Outbound::Frame(frame) => Some(frame),
                Outbound::Delivery(delivery) => self.track(delivery, 1)?,
                Outbound::Last(frame) => {
                    self.feed(frame).await?;
                    self.flush().await?;
                    return Err(Close::LoggedOut);
                }
            };
            if let Some(frame) = frame {
                self.feed(frame).await?;
            }
            taken += 1;
            next = if taken < WRITE_BURST { self.inlet.try_recv() } else { None };
        }
        self.flush().await
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
