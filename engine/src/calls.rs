//! Engine operations that run where their state lives: on the owner of a slot (the locks that
//! serialize a pair's or a group's changes, the relation cache, a user's session directory),
//! or on the node that holds some sessions. The caller runs the operation itself when this
//! node owns the slot (under the slot's guard), else sends it, encoded with postcard, to the
//! owner, whose [`Handler`] runs the same code.

use std::future::Future;
use std::sync::Weak;

use bytes::Bytes;
use futures_util::future::Either;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tim_kv::Slot;
use tim_net::proto::ErrorCode;
use tim_net::report::ErrorChain;
use tim_shard::{Cluster, EngineAnswer, EngineHandler, HandlerError, NodeId, RouteError};
use tracing::warn;

use crate::directory::Lease;
use crate::error::EngineError;
use crate::ident::{GroupId, UserId};
use crate::pairs::PairKind;
use crate::push::{Frames, Shipped};
use crate::server::Server;
use crate::vrooms::{RoomCall, RoomFrames};

/// An operation for the owner of a slot.
#[derive(Debug, Serialize, Deserialize)]
pub enum SlotCall {
    /// Stores a 1:1 message with a client id once (the history's idempotent append).
    AppendOnce {
        chat: [u8; 16],
        from: UserId,
        msg: Bytes,
        key: [u8; 24],
        /// The recipient, whose offline entry is written with the row when its queue is on
        /// the same node; `None` when the caller queues it (after an earlier entry).
        to: Option<UserId>,
    },
    /// Messages (thrift-compact) for the offline queues of users of the slot; answered with
    /// the entries' ids and the users' sessions ([`crate::push::queue`]).
    Queue {
        entries: Vec<(UserId, Bytes)>,
    },
    AreFriends {
        me: UserId,
        other: UserId,
    },
    Befriend {
        me: UserId,
        other: UserId,
    },
    Unfriend {
        me: UserId,
        other: UserId,
    },
    Block {
        me: UserId,
        other: UserId,
    },
    /// A login: the sessions it replaces ([`crate::directory::Admitted`]).
    Admit {
        user: UserId,
        lease: Lease,
    },
    /// A session ended: whether it was the user's last ([`crate::directory::Left`]).
    Leave {
        user: UserId,
        node: NodeId,
        conn: u64,
    },
    /// The sessions of users of the slot.
    Locate {
        users: Vec<UserId>,
    },
    GroupCreate {
        id: GroupId,
        founder: UserId,
        topic: String,
        gtype: i8,
    },
    GroupJoin {
        me: UserId,
        id: GroupId,
    },
    GroupPull {
        me: UserId,
        id: GroupId,
        user: UserId,
    },
    GroupReject {
        me: UserId,
        id: GroupId,
        user: UserId,
    },
    GroupKick {
        me: UserId,
        id: GroupId,
        user: UserId,
    },
    GroupBlockMember {
        me: UserId,
        id: GroupId,
        user: UserId,
    },
    GroupLeave {
        me: UserId,
        id: GroupId,
    },
    GroupBlockGroup {
        me: UserId,
        id: GroupId,
    },
    GroupCancel {
        me: UserId,
        id: GroupId,
    },
    /// The changes: a thrift-compact `TimRoomBean`.
    GroupModify {
        me: UserId,
        id: GroupId,
        changes: Bytes,
    },
    /// The changes: a thrift-compact `TimUserBean`.
    ProfileModify {
        user: UserId,
        changes: Bytes,
    },
    TokenHold {
        name_key: [u8; 32],
        token: String,
        user: UserId,
    },
    /// A place for a capped row of `owner` (friends, groups).
    PairHold {
        kind: PairKind,
        owner: UserId,
        other: UserId,
        max: usize,
    },
    PairRelease {
        kind: PairKind,
        owner: UserId,
        other: UserId,
    },
    Room {
        room: String,
        call: RoomCall,
    },
    TokenConsume {
        name_key: [u8; 32],
        token: String,
    },
    /// Rows of an export written back (`tim import`).
    Restore {
        rows: Vec<tim_kv::ExportedRow>,
    },
    /// Finishes the relation changes of the slot left half done (after an import).
    Repair,
}

/// An operation for a node's sessions, handled in the order the caller sent it.
#[derive(Debug, Serialize, Deserialize)]
pub enum NodeCall {
    Deliver(Vec<Shipped>),
    Frames(Frames),
    /// A user's sessions changed (a login or a logout): forget where they are.
    SessionsChanged {
        user: UserId,
    },
    /// Close sessions another login replaced.
    Kick {
        user: UserId,
        conns: Vec<u64>,
    },
    /// A virtual room's frames, best effort.
    Offer(RoomFrames),
}

/// A question for a node.
#[derive(Debug, Serialize, Deserialize)]
pub enum NodeQuery {
    /// The node's sessions of the users of these slots (a directory being rebuilt).
    SessionsIn { slots: Vec<u16> },
    /// A page of the node's online users: see [`crate::sessions::Sessions::users_after`].
    Online { after: Option<UserId>, limit: usize },
}

/// How an operation failed on another node, as its caller learns it.
#[derive(Debug, Serialize, Deserialize)]
pub enum Failure {
    /// A refusal with TIM's code, for the client.
    Refused(ErrorCode),
    /// The data was out of reach for a while.
    Transient(String),
    /// An internal fault (logged on that node with its causes).
    Internal(String),
}

impl Failure {
    fn from_error(e: &EngineError, op: &'static str) -> Self {
        match e {
            EngineError::Refused(code) => Self::Refused(*code),
            EngineError::Route(route) if route.is_transient() => Self::Transient(ErrorChain(e).to_string()),
            _ => {
                warn!(error = %ErrorChain(e), op, "internal fault in an operation for another node");
                Self::Internal(ErrorChain(e).to_string())
            }
        }
    }

    fn into_error(self, slot: Slot) -> EngineError {
        match self {
            Self::Refused(code) => EngineError::Refused(code),
            Self::Transient(reason) => EngineError::Route(RouteError::Unavailable { slot: slot.0, reason }),
            Self::Internal(reason) => EngineError::Peer(reason),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, EngineError> {
    postcard::to_stdvec(value).map(Bytes::from).map_err(|_| EngineError::Internal("an operation did not encode"))
}

/// Runs `here` if this node owns `slot` (under its guard), else `call` on the owner.
///
/// A combinator rather than an `async fn`, so the future holds `here` once
/// ([`tim_shard::Held::run`] says why).
pub fn at_slot<T: DeserializeOwned, F: Future<Output = Result<T, EngineError>>>(
    data: &Cluster,
    slot: Slot,
    here: F,
    call: SlotCall,
) -> impl Future<Output = Result<T, EngineError>> + use<'_, T, F> {
    data.ownership().serve(slot, here).then(move |served| match served {
        Ok(result) => Either::Left(std::future::ready(result)),
        Err(_) => Either::Right(at_owner(data, slot, call)),
    })
}

/// Runs `call` on the owner of `slot`, another node.
async fn at_owner<T: DeserializeOwned>(data: &Cluster, slot: Slot, call: SlotCall) -> Result<T, EngineError> {
    let raw = data.call(slot, encode(&call)?).await?;
    let answer: Result<T, Failure> =
        postcard::from_bytes(&raw).map_err(|_| EngineError::Internal("an answer did not decode"))?;
    answer.map_err(|f| f.into_error(slot))
}

/// A profile bean sent in its thrift-compact form.
fn decode_bean<T: tim_net::codec::TimStruct>(raw: Bytes) -> Result<T, String> {
    tim_net::codec::decode_body(raw, tim_net::Encoding::Compact).map_err(|e| format!("undecodable profile: {e}"))
}

/// Answers other nodes' operations with this node's engine.
pub struct Handler(pub Weak<Server>);

fn answer<T: Serialize>(result: Result<T, EngineError>, op: &'static str) -> Result<Bytes, HandlerError> {
    let result = result.map_err(|e| Failure::from_error(&e, op));
    encode(&result).map_err(|e| HandlerError::Failed(e.to_string()))
}

impl EngineHandler for Handler {
    fn at_slot(&self, slot: Slot, body: Bytes) -> EngineAnswer {
        let server = self.0.upgrade();
        Box::pin(async move {
            let server = server.ok_or(HandlerError::Unready)?;
            let call: SlotCall = postcard::from_bytes(&body).map_err(|e| format!("undecodable operation: {e}"))?;
            match call {
                SlotCall::AppendOnce { chat, from, msg, key, to } => {
                    let msg: tim_net::proto::TimMessage = tim_net::codec::decode_body(msg, tim_net::Encoding::Compact)
                        .map_err(|e| format!("undecodable message: {e}"))?;
                    let appended = server.history.append_once_here(chat, from, &msg, &key, to, &server.offline);
                    answer(appended.await, "append")
                }
                SlotCall::Queue { entries } => {
                    let entries = entries
                        .into_iter()
                        .map(|(user, msg)| {
                            tim_net::codec::decode_body(msg, tim_net::Encoding::Compact).map(|m| (user, m))
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("undecodable message: {e}"))?;
                    answer(crate::push::queue_here(&server, entries).await, "queue")
                }
                SlotCall::AreFriends { me, other } => {
                    answer(server.rosters.are_friends_here(me, other).await, "friends")
                }
                SlotCall::Befriend { me, other } => answer(server.rosters.add_here(me, other).await, "befriend"),
                SlotCall::Unfriend { me, other } => answer(server.rosters.remove_here(me, other).await, "unfriend"),
                SlotCall::Block { me, other } => answer(server.rosters.block_here(me, other).await, "block"),
                SlotCall::Admit { user, lease } => answer(server.admit_here(user, lease), "admit"),
                SlotCall::Leave { user, node, conn } => answer(Ok(server.leave_here(user, node, conn)), "leave"),
                SlotCall::Locate { users } => answer(Ok(server.locate_here(users)), "locate"),
                SlotCall::GroupCreate { id, founder, topic, gtype } => {
                    answer(server.groups.create_here(id, founder, topic, gtype).await, "group create")
                }
                SlotCall::GroupJoin { me, id } => answer(server.groups.join_here(me, id).await, "group join"),
                SlotCall::GroupPull { me, id, user } => {
                    answer(server.groups.pull_here(me, id, user).await, "group pull")
                }
                SlotCall::GroupReject { me, id, user } => {
                    answer(server.groups.reject_here(me, id, user).await, "group reject")
                }
                SlotCall::GroupKick { me, id, user } => {
                    answer(server.groups.kick_here(me, id, user).await, "group kick")
                }
                SlotCall::GroupBlockMember { me, id, user } => {
                    answer(server.groups.block_member_here(me, id, user).await, "group block member")
                }
                SlotCall::GroupLeave { me, id } => answer(server.groups.leave_here(me, id).await, "group leave"),
                SlotCall::GroupBlockGroup { me, id } => {
                    answer(server.groups.block_group_here(me, id).await, "group block")
                }
                SlotCall::GroupCancel { me, id } => answer(server.groups.cancel_here(me, id).await, "group cancel"),
                SlotCall::GroupModify { me, id, changes } => {
                    let changes = decode_bean(changes)?;
                    answer(server.groups.modify_here(me, id, changes).await, "group modify")
                }
                SlotCall::Room { room, call } => answer(crate::vrooms::run_here(&server, room, call).await, "vroom"),
                SlotCall::PairHold { kind, owner, other, max } => match server.pair_table(kind) {
                    Some(table) => answer(table.hold_here(owner, other, max).await, "hold"),
                    None => Err(HandlerError::Failed("no capped table of that kind".to_owned())),
                },
                SlotCall::PairRelease { kind, owner, other } => {
                    if let Some(table) = server.pair_table(kind) {
                        table.release_here(owner, other);
                    }
                    answer(Ok(()), "release")
                }
                SlotCall::TokenHold { name_key, token, user } => {
                    answer(Ok(server.accounts.hold_token_here(name_key, token, user)), "token")
                }
                SlotCall::TokenConsume { name_key, token } => {
                    answer(Ok(server.accounts.consume_token_here(name_key, token)), "token")
                }
                SlotCall::Restore { rows } => answer(server.restore_here(slot, rows).await, "restore"),
                SlotCall::Repair => answer(server.repair_here(slot).await, "repair"),
                SlotCall::ProfileModify { user, changes } => {
                    let changes = decode_bean(changes)?;
                    answer(server.accounts.modify_profile_here(user, changes).await, "profile modify")
                }
            }
        })
    }

    fn at_node(&self, _from: NodeId, body: Bytes) -> EngineAnswer {
        let server = self.0.upgrade();
        Box::pin(async move {
            let server = server.ok_or(HandlerError::Unready)?;
            let query: NodeQuery = postcard::from_bytes(&body).map_err(|e| format!("undecodable question: {e}"))?;
            match query {
                NodeQuery::SessionsIn { slots } => answer(Ok(server.sessions_in(&slots)), "sessions"),
                NodeQuery::Online { after, limit } => {
                    answer(Ok(server.sessions.users_after(after, limit.min(crate::admin::MAX_PAGE))), "online")
                }
            }
        })
    }

    fn slot_state(&self, slot: Slot) -> Bytes {
        let Some(server) = self.0.upgrade() else { return Bytes::new() };
        match server.directory.carry(slot) {
            Ok(raw) => Bytes::from(raw),
            Err(e) => {
                // The receiver asks the nodes for the sessions instead.
                tracing::warn!(slot = slot.0, error = %ErrorChain(&e), "session directory not carried with its slot");
                Bytes::new()
            }
        }
    }

    fn adopt_slot_state(&self, slot: Slot, state: Bytes) {
        let Some(server) = self.0.upgrade() else { return };
        if let Err(e) = server.directory.adopt(slot, &state) {
            tracing::warn!(slot = slot.0, error = %ErrorChain(&e), "session directory of an arrived slot undecodable");
        }
    }

    fn at_node_now(&self, _from: NodeId, body: Bytes) -> Result<Bytes, HandlerError> {
        let server = self.0.upgrade().ok_or(HandlerError::Unready)?;
        let call: NodeCall = postcard::from_bytes(&body).map_err(|e| format!("undecodable operation: {e}"))?;
        match call {
            NodeCall::Deliver(shipped) => {
                let items = shipped
                    .into_iter()
                    .filter_map(|s| {
                        let msg = tim_net::codec::decode_body(s.msg, tim_net::Encoding::Compact).ok()?;
                        Some((s.user, s.conns, msg, s.fallback))
                    })
                    .collect();
                crate::push::deliver_here(&server, items);
            }
            NodeCall::Frames(frames) => crate::push::frames_here(&server, frames),
            NodeCall::Offer(frames) => server.rooms.offer_here(&server, frames),
            NodeCall::SessionsChanged { user } => server.sessions.forget_where(user),
            NodeCall::Kick { user, conns } => {
                for session in server.sessions.handles(user, &conns) {
                    session.close();
                }
            }
        }
        answer(Ok(()), "node call")
    }
}

impl Server {
    /// The capped pair table of a kind.
    fn pair_table(&self, kind: PairKind) -> Option<&crate::pairs::PairTable> {
        match kind {
            PairKind::Roster => Some(self.rosters.roster_table()),
            PairKind::Membership => Some(self.groups.member_table()),
            PairKind::Other => None,
        }
    }

    /// Runs a node operation on `node` (this one included), in order with the others sent to it.
    pub async fn call_node(&self, node: NodeId, call: NodeCall) -> Result<(), EngineError> {
        let raw = self.data.call_node_in_order(node, encode(&call)?).await?;
        let answer: Result<(), Failure> =
            postcard::from_bytes(&raw).map_err(|_| EngineError::Internal("an answer did not decode"))?;
        answer.map_err(|f| f.into_error(Slot(0)))
    }

    /// Asks `node` a question (this one included); the answer decoded as `T`.
    pub async fn ask_node<T: DeserializeOwned>(&self, node: NodeId, query: NodeQuery) -> Result<T, EngineError> {
        let raw = self.data.call_node(node, encode(&query)?).await?;
        let answer: Result<T, Failure> =
            postcard::from_bytes(&raw).map_err(|_| EngineError::Internal("an answer did not decode"))?;
        answer.map_err(|f| f.into_error(Slot(0)))
    }
}
