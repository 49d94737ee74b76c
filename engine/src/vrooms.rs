//! Virtual rooms (22) and their streams (94, 97): in-memory live fan-out channels
//! (tim-server.md §2.3.10). The founder, and the users the founder grants (ADDAUTH, which TIM
//! leaves unimplemented), push; subscribers get each push as a `TimStream` (94) or raw (97),
//! by their subscription. Delivery is best effort: a subscriber whose queue is full misses the
//! frame (counted) and the room goes on. A room with no subscribers and no push for
//! `--vroom-idle` seconds is removed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tim_net::codec::Binary;
use tim_net::frame::{encode_server, BigData};
use tim_net::proto::{ErrorCode, TimAck, TimReq, TimStream};
use tim_net::{Encoding, FrameType};
use tracing::info;

use crate::error::EngineError;
use crate::ident::{GroupId, UserId};
use crate::push::encoded_for;
use crate::sessions::{Outbound, SessionHandle};

const NEW: i32 = 1;
const REMOVE: i32 = 2;
const ADDAUTH: i32 = 3;
const DELAUTH: i32 = 4;
const SUB: i32 = 5;
const UNSUB: i32 = 6;
/// `reqInt` of SUB asking for raw (97) deliveries.
const RAW: i64 = 1;
/// Most rooms a node holds, and one user founds; NEW past either gets 5104.
const MAX_ROOMS: usize = 100_000;
const MAX_ROOMS_PER_USER: usize = 100;

const VROOM: u8 = FrameType::VRoom as u8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Stream,
    Raw,
}

struct Room {
    founder: UserId,
    granted: HashSet<UserId>,
    /// By connection id.
    subscribers: HashMap<u64, (SessionHandle, Mode)>,
    last_push: Instant,
    next_id: i64,
}

pub struct Rooms {
    rooms: Mutex<HashMap<String, Room>>,
    idle: Duration,
    /// Stream frames not delivered because a subscriber's queue was full.
    dropped: AtomicU64,
}

/// One push, as the subscribers get it.
pub enum Push {
    /// A `TimStream` from a client (94): the server sets `id` and `fromNode`.
    Stream(TimStream),
    /// Raw bytes (97).
    Raw(Bytes),
}

impl Rooms {
    pub fn new(idle: Duration) -> Self {
        Self { rooms: Mutex::new(HashMap::new()), idle, dropped: AtomicU64::new(0) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A VROOM request of `me`, whose session is `session`; the reply.
    pub fn handle(&self, me: UserId, session: &SessionHandle, req: &TimReq) -> TimAck {
        let rtype = req.rtype.unwrap_or(0);
        let node = req.node.clone();
        let done = TimAck { t: Some(i64::from(rtype)), n: node.clone(), ..TimAck::ok(VROOM) };
        let result = match (rtype, node.as_deref()) {
            (NEW, _) => self.create(me).map(|room| TimAck { n: Some(room), ..done.clone() }),
            (REMOVE, Some(room)) => self.remove(me, room).map(|()| done.clone()),
            (ADDAUTH | DELAUTH, Some(room)) => {
                let user = req.node2.as_deref().and_then(UserId::parse).ok_or(ErrorCode::AccountIncorrect);
                user.map_err(EngineError::from)
                    .and_then(|user| self.authorize(me, room, user, rtype == ADDAUTH))
                    .map(|()| TimAck { n2: req.node2.clone(), ..done.clone() })
            }
            (SUB, Some(room)) => {
                let mode = if req.req_int == Some(RAW) { Mode::Raw } else { Mode::Stream };
                self.subscribe(room, session, mode).map(|()| done.clone())
            }
            (UNSUB, Some(room)) => {
                self.unsubscribe(room, session);
                Ok(done.clone())
            }
            _ => Err(ErrorCode::ParamIncorrect.into()),
        };
        result.unwrap_or_else(|e| TimAck { ok: false, error: TimAck::error(VROOM, e.answer("vroom")).error, ..done })
    }

    fn create(&self, founder: UserId) -> Result<String, EngineError> {
        let mut rooms = self.lock();
        if rooms.len() >= MAX_ROOMS || rooms.values().filter(|r| r.founder == founder).count() >= MAX_ROOMS_PER_USER {
            return Err(ErrorCode::HeavyLoad.into());
        }
        loop {
            let node = GroupId::random().node();
            if rooms.contains_key(&node) {
                continue;
            }
            let room = Room {
                founder,
                granted: HashSet::new(),
                subscribers: HashMap::new(),
                last_push: Instant::now(),
                next_id: 1,
            };
            rooms.insert(node.clone(), room);
            return Ok(node);
        }
    }

    /// REMOVE: by the founder only (4105); every subscriber is told with
    /// `TimAck{ok, timType 22, t 2, n: room}`.
    fn remove(&self, me: UserId, node: &str) -> Result<(), EngineError> {
        let mut rooms = self.lock();
        let room = rooms.get(node).ok_or(ErrorCode::Undefined)?;
        if room.founder != me {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let Some(room) = rooms.remove(node) else { return Ok(()) };
        drop(rooms);
        let gone = TimAck { t: Some(i64::from(REMOVE)), n: Some(node.to_owned()), ..TimAck::ok(VROOM) };
        let subscribers = room.subscribers.into_values().map(|(session, _)| session);
        for (session, frame) in encoded_for(subscribers, FrameType::Ack, &gone) {
            self.offer(&session, frame);
        }
        Ok(())
    }

    /// ADDAUTH / DELAUTH: the founder grants or revokes `user`'s right to push (4105 for others).
    fn authorize(&self, me: UserId, node: &str, user: UserId, grant: bool) -> Result<(), EngineError> {
        let mut rooms = self.lock();
        let room = rooms.get_mut(node).ok_or(ErrorCode::Undefined)?;
        if room.founder != me {
            return Err(ErrorCode::PermissionDenied.into());
        }
        if grant {
            room.granted.insert(user);
        } else {
            room.granted.remove(&user);
        }
        Ok(())
    }

    /// SUB: unknown room 5101.
    fn subscribe(&self, node: &str, session: &SessionHandle, mode: Mode) -> Result<(), EngineError> {
        let mut rooms = self.lock();
        let room = rooms.get_mut(node).ok_or(ErrorCode::Undefined)?;
        room.subscribers.insert(session.conn_id(), (session.clone(), mode));
        Ok(())
    }

    fn unsubscribe(&self, node: &str, session: &SessionHandle) {
        if let Some(room) = self.lock().get_mut(node) {
            room.subscribers.remove(&session.conn_id());
        }
    }

    /// A push to room `node` by `from`: the founder or a granted user (else 4105; unknown room
    /// 5101). Fanned out to the subscribers, encoded once per form.
    pub fn push(&self, from: UserId, node: &str, push: Push) -> Result<(), EngineError> {
        let (subscribers, id) = {
            let mut rooms = self.lock();
            let room = rooms.get_mut(node).ok_or(ErrorCode::Undefined)?;
            if room.founder != from && !room.granted.contains(&from) {
                return Err(ErrorCode::PermissionDenied.into());
            }
            room.last_push = Instant::now();
            room.subscribers.retain(|_, (s, _)| !s.is_closed());
            let id = room.next_id;
            room.next_id += 1;
            (room.subscribers.values().cloned().collect::<Vec<_>>(), id)
        };
        let (stream, body) = match push {
            Push::Stream(stream) => {
                let body = stream.body.as_ref().map(|b| b.0.clone()).unwrap_or_default();
                (TimStream { id, vnode: node.to_owned(), from_node: from.node(), ..stream }, body)
            }
            Push::Raw(body) => {
                let stream = TimStream {
                    id,
                    vnode: node.to_owned(),
                    from_node: from.node(),
                    dtype: None,
                    body: Some(Binary(body.clone())),
                };
                (stream, body)
            }
        };
        // Encoded lazily: raw, compact, JSON.
        let mut frames: [Option<Bytes>; 3] = [None, None, None];
        for (session, mode) in subscribers {
            let slot = match (mode, session.encoding()) {
                (Mode::Raw, _) => 0,
                (Mode::Stream, Encoding::Compact) => 1,
                (Mode::Stream, Encoding::Json) => 2,
            };
            let Some(cache) = frames.get_mut(slot) else { continue };
            let frame = cache
                .get_or_insert_with(|| match mode {
                    Mode::Raw => BigData::encode_delivery(FrameType::BigBinaryStream, node, &body),
                    Mode::Stream => encode_server(FrameType::Stream, session.encoding(), &stream),
                })
                .clone();
            self.offer(&session, frame);
        }
        Ok(())
    }

    /// Queues a frame without waiting and without cutting a slow session off: a full queue
    /// loses this frame only.
    fn offer(&self, session: &SessionHandle, frame: Bytes) {
        if !session.offer(Outbound::Frame(frame)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes the rooms idle past `--vroom-idle` that have no subscribers (closed sessions do
    /// not count); the number removed.
    pub fn sweep(&self) -> usize {
        let mut rooms = self.lock();
        let before = rooms.len();
        rooms.retain(|_, room| {
            room.subscribers.retain(|_, (s, _)| !s.is_closed());
            !room.subscribers.is_empty() || room.last_push.elapsed() < self.idle
        });
        let removed = before - rooms.len();
        if removed > 0 {
            let dropped = self.dropped.load(Ordering::Relaxed);
            info!(removed, rooms = rooms.len(), stream_frames_dropped_total = dropped, "idle virtual rooms removed");
        }
        removed
    }

    /// Runs [`Rooms::sweep`] every `every` until `stop`.
    pub async fn sweep_every(self: Arc<Self>, every: Duration, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    self.sweep();
                }
            }
        }
    }
}
