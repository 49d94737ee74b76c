//! Virtual rooms (22) and their streams (94, 97): in-memory live fan-out channels
//! (tim-server.md §2.3.10). The founder, and the users the founder grants (ADDAUTH, which TIM
//! leaves unimplemented), push; subscribers get each push as a `TimStream` (94) or raw (97),
//! by their subscription. Delivery is best effort: a subscriber whose queue is full misses the
//! frame (counted) and the room goes on. A room with no subscribers and no push for
//! `--vroom-idle` seconds is removed.
//!
//! A room lives in the memory of the owner of its slot, wherever its subscribers are
//! connected: each push is sent once to every node that holds subscribers, encoded once per
//! form, in order. Rooms are not stored: when the slot moves to another node (the cluster
//! grew or shrank), the room is gone, and SUB or a push answer 5101 as for any unknown room.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tim_net::codec::{body_bytes, Binary};
use tim_net::frame::{encode_server, BigData};
use tim_net::proto::{ErrorCode, TimAck, TimReq, TimStream};
use tim_net::report::ErrorChain;
use tim_net::{Encoding, FrameType};
use tim_shard::{Cluster, EngineAnswer, HandlerError, NodeId};
use tracing::{debug, info};

use crate::error::EngineError;
use crate::model::ident::{GroupId, UserId};
use crate::model::lease::Lease;
use crate::model::partition;
use crate::seam::{self, at_node, at_slot, Arrivals, NodeOp, Service, SlotOp};
use crate::session::outbound::Outbound;
use crate::session::registry::Sessions;

pub const NEW: i32 = 1;
pub const REMOVE: i32 = 2;
const ADDAUTH: i32 = 3;
const DELAUTH: i32 = 4;
pub const SUB: i32 = 5;
pub const UNSUB: i32 = 6;
/// `reqInt` of SUB asking for raw (97) deliveries.
const RAW: i64 = 1;
/// Most rooms a node holds, and one user founds on one node; NEW past either gets 5104.
const MAX_ROOMS: usize = 100_000;
const MAX_ROOMS_PER_USER: usize = 100;
/// Most rooms one session is subscribed to; SUB past it gets 5104.
pub const MAX_SUBSCRIPTIONS: usize = 1000;

const VROOM: u8 = FrameType::VRoom as u8;

/// How a subscriber gets the pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Stream,
    Raw,
}

/// A subscribing session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriber {
    pub user: UserId,
    pub lease: Lease,
    pub mode: Mode,
}

struct Room {
    founder: UserId,
    granted: HashSet<UserId>,
    /// By node and connection.
    subscribers: HashMap<(NodeId, u64), Subscriber>,
    last_push: Instant,
    next_id: i64,
}

/// The rooms of the slots this node owns.
pub struct Rooms {
    data: Arc<Cluster>,
    /// This node's sessions, which get the frames of subscribers here.
    sessions: Arc<Sessions>,
    rooms: Mutex<HashMap<String, Room>>,
    idle: Duration,
    /// Stream frames not delivered because a subscriber's queue was full.
    dropped: AtomicU64,
}

/// One push, as it travels to the room's node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Push {
    /// A `TimStream` from a client (94), thrift-compact: the server sets `id` and `fromNode`.
    Stream(Bytes),
    /// Raw bytes (97).
    Raw(Bytes),
}

/// The frames of one push or notice for subscribers on one node, one per form in use.
#[derive(Debug, Serialize, Deserialize)]
pub struct RoomFrames {
    pub targets: Vec<Subscriber>,
    pub raw: Option<Bytes>,
    pub compact: Option<Bytes>,
    pub json: Option<Bytes>,
}

/// A room operation, run on the owner of the room's slot. Each answers whether it did
/// something (Create: `false` when the id is taken).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum RoomCall {
    Create { founder: UserId },
    Remove { me: UserId },
    Authorize { me: UserId, user: UserId, grant: bool },
    Subscribe(Subscriber),
    Unsubscribe { node: NodeId, conn: u64 },
    Push { from: UserId, push: Push },
}

/// A [`RoomCall`] of one room, for the owner of the room's slot.
#[derive(Debug, Serialize, Deserialize)]
struct RoomOp {
    room: String,
    call: RoomCall,
}

impl SlotOp for RoomOp {
    fn service(&self) -> Service {
        Service::Rooms
    }
}

/// A push's or a notice's frames for subscribers on one node, best effort.
#[derive(Debug, Serialize, Deserialize)]
struct Offer(RoomFrames);

impl NodeOp for Offer {
    fn service(&self) -> Service {
        Service::Rooms
    }
}

impl Arrivals for Rooms {
    fn at_slot(self: Arc<Self>, _slot: tim_kv::Slot, op: Bytes) -> EngineAnswer {
        Box::pin(async move {
            let RoomOp { room, call } = seam::decode(&op)?;
            seam::answer(self.run_here(room, call).await, "vroom")
        })
    }

    fn at_node_now(&self, op: Bytes) -> Result<Bytes, HandlerError> {
        let Offer(frames) = seam::decode(&op)?;
        self.offer_here(frames);
        seam::answer(Ok(()), "vroom offer")
    }
}

impl Rooms {
    pub fn new(data: Arc<Cluster>, sessions: Arc<Sessions>, idle: Duration) -> Self {
        Self { data, sessions, rooms: Mutex::new(HashMap::new()), idle, dropped: AtomicU64::new(0) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the rooms of a slot that left this node.
    pub fn forget(&self, slot: tim_kv::Slot) {
        self.lock().retain(|node, _| slot_of_room(node) != Some(slot));
    }

    fn create(&self, node: &str, founder: UserId) -> Result<bool, EngineError> {
        let mut rooms = self.lock();
        if rooms.len() >= MAX_ROOMS || rooms.values().filter(|r| r.founder == founder).count() >= MAX_ROOMS_PER_USER {
            return Err(ErrorCode::HeavyLoad.into());
        }
        if rooms.contains_key(node) {
            return Ok(false);
        }
        let room = Room {
            founder,
            granted: HashSet::new(),
            subscribers: HashMap::new(),
            last_push: Instant::now(),
            next_id: 1,
        };
        rooms.insert(node.to_owned(), room);
        Ok(true)
    }

    /// REMOVE: by the founder only (4105); the subscribers, to be told.
    fn remove(&self, me: UserId, node: &str) -> Result<Vec<Subscriber>, EngineError> {
        let mut rooms = self.lock();
        let room = rooms.get(node).ok_or(ErrorCode::Undefined)?;
        if room.founder != me {
            return Err(ErrorCode::PermissionDenied.into());
        }
        Ok(rooms.remove(node).map(|r| r.subscribers.into_values().collect()).unwrap_or_default())
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
    fn subscribe(&self, node: &str, subscriber: Subscriber) -> Result<(), EngineError> {
        let mut rooms = self.lock();
        let room = rooms.get_mut(node).ok_or(ErrorCode::Undefined)?;
        room.subscribers.insert((subscriber.lease.node, subscriber.lease.conn), subscriber);
        Ok(())
    }

    fn unsubscribe(&self, node: &str, at: NodeId, conn: u64) {
        if let Some(room) = self.lock().get_mut(node) {
            room.subscribers.remove(&(at, conn));
        }
    }

    /// A push by `from`: the founder or a granted user (else 4105; unknown room 5101). Its
    /// id and the subscribers that still count.
    fn push_here(
        &self,
        from: UserId,
        node: &str,
        live: impl Fn(&Lease) -> bool,
    ) -> Result<(i64, Vec<Subscriber>), EngineError> {
        let mut rooms = self.lock();
        let room = rooms.get_mut(node).ok_or(ErrorCode::Undefined)?;
        if room.founder != from && !room.granted.contains(&from) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        room.last_push = Instant::now();
        room.subscribers.retain(|_, s| live(&s.lease));
        let id = room.next_id;
        room.next_id += 1;
        Ok((id, room.subscribers.values().copied().collect()))
    }

    /// Removes the rooms idle past `--vroom-idle` that have no subscribers (sessions of nodes
    /// that are gone do not count); the number removed.
    fn sweep(&self) -> usize {
        let mut rooms = self.lock();
        let before = rooms.len();
        rooms.retain(|_, room| {
            room.subscribers.retain(|_, s| self.data.runs(s.lease.node, s.lease.generation));
            !room.subscribers.is_empty() || room.last_push.elapsed() < self.idle
        });
        let removed = before - rooms.len();
        if removed > 0 {
            let dropped = self.dropped.load(Ordering::Relaxed);
            info!(removed, rooms = rooms.len(), stream_frames_dropped_total = dropped, "idle virtual rooms removed");
        }
        removed
    }

    /// Queues frames to this node's subscribers without waiting and without cutting a slow
    /// session off: a full queue loses this frame only (counted).
    fn offer_here(&self, frames: RoomFrames) {
        for target in frames.targets {
            for session in self.sessions.handles(target.user, &[target.lease.conn]) {
                let frame = match (target.mode, session.encoding()) {
                    (Mode::Raw, _) => frames.raw.clone(),
                    (Mode::Stream, Encoding::Compact) => frames.compact.clone(),
                    (Mode::Stream, Encoding::Json) => frames.json.clone(),
                };
                if let Some(frame) = frame {
                    if !session.offer(Outbound::Frame(frame)) {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// A VROOM request of `me`, from this node's session `conn`; the reply.
    pub async fn handle(&self, me: UserId, conn: u64, termtyp: Option<i8>, req: &TimReq) -> TimAck {
        let rtype = req.rtype.unwrap_or(0);
        let node = req.node.clone();
        let done = TimAck { t: Some(i64::from(rtype)), n: node.clone(), ..TimAck::ok(VROOM) };
        let lease = Lease::here(&self.data, conn, termtyp);
        let result = match (rtype, node.as_deref()) {
            (NEW, _) => self.create_room(me).await.map(|room| TimAck { n: Some(room), ..done.clone() }),
            (REMOVE, Some(room)) => self.at_room(room, RoomCall::Remove { me }).await.map(|_| done.clone()),
            (ADDAUTH | DELAUTH, Some(room)) => match req.node2.as_deref().and_then(UserId::parse) {
                Some(user) => self
                    .at_room(room, RoomCall::Authorize { me, user, grant: rtype == ADDAUTH })
                    .await
                    .map(|_| TimAck { n2: req.node2.clone(), ..done.clone() }),
                None => Err(ErrorCode::AccountIncorrect.into()),
            },
            (SUB, Some(room)) => {
                let mode = if req.req_int == Some(RAW) { Mode::Raw } else { Mode::Stream };
                let subscriber = Subscriber { user: me, lease, mode };
                self.at_room(room, RoomCall::Subscribe(subscriber)).await.map(|_| done.clone())
            }
            (UNSUB, Some(room)) => {
                self.at_room(room, RoomCall::Unsubscribe { node: lease.node, conn }).await.map(|_| done.clone())
            }
            _ => Err(ErrorCode::ParamIncorrect.into()),
        };
        result.unwrap_or_else(|e| TimAck { ok: false, error: TimAck::error(VROOM, e.answer("vroom")).error, ..done })
    }

    /// NEW: a room with a fresh id, made on the owner of its slot.
    async fn create_room(&self, founder: UserId) -> Result<String, EngineError> {
        loop {
            let node = GroupId::random().node();
            let slot = slot_of_room(&node).ok_or(EngineError::Internal("a drawn room id does not parse"))?;
            let call = RoomCall::Create { founder };
            let here = self.run_here(node.clone(), call.clone());
            if at_slot(&self.data, slot, here, RoomOp { room: node.clone(), call }).await? {
                return Ok(node);
            }
        }
    }

    /// A push to room `node` by `from` (94 or 97).
    pub async fn push(&self, from: UserId, node: &str, push: Push) -> Result<(), EngineError> {
        self.at_room(node, RoomCall::Push { from, push }).await.map(|_| ())
    }

    /// Ends this node's session `conn`'s subscriptions (its session closed).
    pub async fn leave_all(&self, conn: u64, rooms: Vec<String>) {
        let node = self.data.node();
        for room in rooms {
            if let Err(e) = self.at_room(&room, RoomCall::Unsubscribe { node, conn }).await {
                debug!(%room, error = %ErrorChain(&e), "subscription not ended");
            }
        }
    }

    /// Runs a room operation on the owner of the room's slot; an unknown or malformed room 5101.
    async fn at_room(&self, node: &str, call: RoomCall) -> Result<bool, EngineError> {
        let slot = slot_of_room(node).ok_or(ErrorCode::Undefined)?;
        let here = self.run_here(node.to_owned(), call.clone());
        at_slot(&self.data, slot, here, RoomOp { room: node.to_owned(), call }).await
    }

    /// Runs a room operation here, on the owner of the room's slot.
    async fn run_here(&self, room: String, call: RoomCall) -> Result<bool, EngineError> {
        let live = |l: &Lease| self.data.runs(l.node, l.generation);
        match call {
            RoomCall::Create { founder } => self.create(&room, founder),
            RoomCall::Remove { me } => {
                let subscribers = self.remove(me, &room)?;
                let gone = TimAck { t: Some(i64::from(REMOVE)), n: Some(room.clone()), ..TimAck::ok(VROOM) };
                let frames = |targets| RoomFrames {
                    targets,
                    raw: Some(encode_server(FrameType::Ack, Encoding::Compact, &gone)),
                    compact: Some(encode_server(FrameType::Ack, Encoding::Compact, &gone)),
                    json: Some(encode_server(FrameType::Ack, Encoding::Json, &gone)),
                };
                self.fan_out(subscribers, frames).await;
                Ok(true)
            }
            RoomCall::Authorize { me, user, grant } => self.authorize(me, &room, user, grant).map(|()| true),
            RoomCall::Subscribe(subscriber) => self.subscribe(&room, subscriber).map(|()| true),
            RoomCall::Unsubscribe { node, conn } => {
                self.unsubscribe(&room, node, conn);
                Ok(true)
            }
            RoomCall::Push { from, push } => {
                let (id, subscribers) = self.push_here(from, &room, live)?;
                let (stream, body) = match push {
                    Push::Stream(raw) => {
                        let stream: TimStream = tim_net::codec::decode_body(raw, Encoding::Compact)
                            .map_err(|_| EngineError::Internal("a stream did not decode"))?;
                        let body = stream.body.as_ref().map(|b| b.0.clone()).unwrap_or_default();
                        (TimStream { id, vnode: room.clone(), from_node: from.node(), ..stream }, body)
                    }
                    Push::Raw(body) => {
                        let stream = TimStream {
                            id,
                            vnode: room.clone(),
                            from_node: from.node(),
                            dtype: None,
                            body: Some(Binary(body.clone())),
                        };
                        (stream, body)
                    }
                };
                let raw_wanted = subscribers.iter().any(|s| s.mode == Mode::Raw);
                let stream_wanted = subscribers.iter().any(|s| s.mode == Mode::Stream);
                let raw = raw_wanted.then(|| BigData::encode_delivery(FrameType::BigBinaryStream, &room, &body));
                let compact = stream_wanted.then(|| encode_server(FrameType::Stream, Encoding::Compact, &stream));
                let json = stream_wanted.then(|| encode_server(FrameType::Stream, Encoding::Json, &stream));
                let frames =
                    |targets| RoomFrames { targets, raw: raw.clone(), compact: compact.clone(), json: json.clone() };
                self.fan_out(subscribers, frames).await;
                Ok(true)
            }
        }
    }

    /// Sends frames to subscribers: one ordered call per node that holds some.
    async fn fan_out(&self, subscribers: Vec<Subscriber>, frames: impl Fn(Vec<Subscriber>) -> RoomFrames) {
        let mut by_node: HashMap<NodeId, Vec<Subscriber>> = HashMap::new();
        for s in subscribers {
            by_node.entry(s.lease.node).or_default().push(s);
        }
        let me = self.data.node();
        let calls = by_node.into_iter().map(|(node, targets)| {
            let frames = frames(targets);
            async move {
                if node == me {
                    self.offer_here(frames);
                } else if let Err(e) = at_node(&self.data, node, Offer(frames)).await {
                    debug!(%node, error = %ErrorChain(&e), "room frames to a node failed");
                }
            }
        });
        join_all(calls).await;
    }
}

/// The slot of a room (its id is shaped as a group's).
fn slot_of_room(node: &str) -> Option<tim_kv::Slot> {
    GroupId::parse(node).map(partition::group)
}

/// The thrift-compact form of a client's stream, for [`Push::Stream`].
pub fn stream_push(stream: &TimStream) -> Push {
    Push::Stream(body_bytes(stream, Encoding::Compact))
}

/// Runs [`Rooms::sweep`] every `every` until `stop`.
pub async fn sweep_every(rooms: std::sync::Weak<Rooms>, every: Duration, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let Some(rooms) = rooms.upgrade() else { return };
                rooms.sweep();
            }
        }
    }
}
