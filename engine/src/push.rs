//! Pushing to users wherever their sessions are. The sessions are looked up in the directory
//! of each user's slot owner ([`locate`]), then each node that holds some gets one ordered call
//! with everything for it, in order ([`crate::calls::NodeCall`]); this node's sessions get
//! theirs directly. Messages ask for acks: when none of a user's sessions acks (or the user
//! has none), the message waits in the user's offline queue, once. Frames without ack
//! (presence, echoes to other devices, streams, big data) are best effort. Offline entries
//! written through a user's owner come back with the user's sessions ([`queue`]), so a
//! message queued on another node needs no look-up of its own.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::{join_all, try_join_all};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tim_kv::{RowId, Slot};
use tim_net::codec::{body_bytes, decode_body, TimStruct};
use tim_net::frame::encode_server;
use tim_net::proto::{TimAck, TimMessage};
use tim_net::report::ErrorChain;
use tim_net::{Encoding, FrameType};
use tim_shard::NodeId;
use tracing::{debug, warn};

use crate::calls::{at_slot, NodeCall, SlotCall};
use crate::delivery::{start, start_with, Body, Payload};
use crate::directory::Lease;
use crate::error::EngineError;
use crate::ident::UserId;
use crate::partition;
use crate::server::Server;
use crate::sessions::Outbound;

/// Where an undelivered message ends up.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Fallback {
    /// Stored in the offline queue if no session acks.
    Store,
    /// Already in the offline queue (written before the sender was told the message was
    /// accepted): the acking session removes it.
    Queued(RowId),
}

/// A message for one user's sessions on one node, as it travels.
#[derive(Debug, Serialize, Deserialize)]
pub struct Shipped {
    pub user: UserId,
    pub conns: Vec<u64>,
    /// The message, thrift-compact encoded.
    pub msg: Bytes,
    pub fallback: Fallback,
}

/// Frames without ack for some sessions on one node, encoded once per encoding.
#[derive(Debug, Serialize, Deserialize)]
pub struct Frames {
    pub targets: Vec<(UserId, Vec<u64>)>,
    pub compact: Bytes,
    pub json: Bytes,
    /// The sessions close after this frame (TIMLOGOUT).
    pub last: bool,
}

/// Where `users`' sessions are: one lookup per slot owner, all at once.
pub async fn locate(server: &Server, users: &[UserId]) -> Result<Located, EngineError> {
    let mut by_slot: HashMap<Slot, Vec<UserId>> = HashMap::new();
    for user in users {
        let list = by_slot.entry(partition::user(*user)).or_default();
        if !list.contains(user) {
            list.push(*user);
        }
    }
    let lookups = by_slot.into_iter().map(|(slot, users)| async move {
        let here = async { Ok(server.locate_here(users.clone())) };
        let leases = at_slot(&server.data, slot, here, SlotCall::Locate { users: users.clone() }).await?;
        Ok::<_, EngineError>(users.into_iter().zip(leases))
    });
    let mut out = HashMap::new();
    for found in join_all(lookups).await {
        out.extend(found?);
    }
    Ok(out)
}

/// Where users' sessions are, by user.
pub type Located = HashMap<UserId, Vec<Lease>>;

/// Writes messages to their users' offline queues, through the owner of each user slot (one
/// call per slot, all at once), which also says where those users' sessions are: one round
/// trip where a write and a look-up took two. The entries' ids in order, and the sessions.
pub async fn queue(server: &Server, entries: Vec<(UserId, TimMessage)>) -> Result<(Vec<RowId>, Located), EngineError> {
    let mut by_slot: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (i, (user, _)) in entries.iter().enumerate() {
        let slot = partition::user(*user);
        match by_slot.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, at)) => at.push(i),
            None => by_slot.push((slot, vec![i])),
        }
    }
    let calls = by_slot.iter().map(|(slot, at)| {
        let part: Vec<(UserId, TimMessage)> = at.iter().filter_map(|i| entries.get(*i).cloned()).collect();
        let call =
            SlotCall::Queue { entries: part.iter().map(|(u, m)| (*u, body_bytes(m, Encoding::Compact))).collect() };
        at_slot(&server.data, *slot, queue_here(server, part), call)
    });
    let answers: Vec<Queued> = try_join_all(calls).await?;
    let mut ids = vec![RowId(0); entries.len()];
    let mut located = Located::new();
    for ((_, at), answer) in by_slot.iter().zip(answers) {
        if answer.ids.len() != at.len() {
            return Err(EngineError::Internal("a queue write returned fewer ids than it inserted"));
        }
        for (i, id) in at.iter().zip(answer.ids) {
            if let Some(slot) = ids.get_mut(*i) {
                *slot = id;
            }
        }
        located.extend(answer.sessions);
    }
    Ok((ids, located))
}

/// Entries written to the queues of users of one slot, and where those users' sessions are.
#[derive(Debug, Serialize, Deserialize)]
pub struct Queued {
    pub ids: Vec<RowId>,
    pub sessions: Vec<(UserId, Vec<Lease>)>,
}

/// [`queue`] on the owner of the users' slot: the entries written, then the sessions looked
/// up (a session that starts after the look-up drains the queue and finds them).
pub async fn queue_here(server: &Server, entries: Vec<(UserId, TimMessage)>) -> Result<Queued, EngineError> {
    let ids = server.offline.push_all(&entries).await?;
    let mut users: Vec<UserId> = entries.into_iter().map(|(user, _)| user).collect();
    users.sort_unstable();
    users.dedup();
    let leases = server.locate_here(users.clone());
    Ok(Queued { ids, sessions: users.into_iter().zip(leases).collect() })
}

/// Pushes messages with ack requests, in order: to each user's sessions everywhere, falling
/// back as each says.
pub async fn push_messages(server: &Arc<Server>, items: Vec<(UserId, TimMessage, Fallback)>) {
    let users: Vec<UserId> = items.iter().map(|(u, _, _)| *u).collect();
    let located = match locate(server, &users).await {
        Ok(located) => located,
        Err(e) => {
            // Nobody known: the messages that are not queued yet are stored.
            warn!(error = %ErrorChain(&e), "sessions not found; messages go to the offline queue");
            HashMap::new()
        }
    };
    push_messages_located(server, items, &located).await;
}

/// [`push_messages`] to sessions located already: a user missing from `located` has none.
pub async fn push_messages_located(
    server: &Arc<Server>,
    items: Vec<(UserId, TimMessage, Fallback)>,
    located: &Located,
) {
    let me = server.data.node();
    let mut here = Vec::new();
    let mut by_node: HashMap<NodeId, Vec<Shipped>> = HashMap::new();
    let mut absent = Vec::new();
    for (user, msg, fallback) in items {
        let leases = located.get(&user).map(Vec::as_slice).unwrap_or_default();
        if leases.is_empty() {
            if let Fallback::Store = fallback {
                absent.push((user, msg));
            }
            continue;
        }
        let mut nodes: Vec<NodeId> = Vec::new();
        for lease in leases {
            if !nodes.contains(&lease.node) {
                nodes.push(lease.node);
            }
        }
        for node in nodes {
            let conns: Vec<u64> = leases.iter().filter(|l| l.node == node).map(|l| l.conn).collect();
            if node == me {
                here.push((user, conns, msg.clone(), fallback));
            } else {
                let shipped = Shipped { user, conns, msg: body_bytes(&msg, Encoding::Compact), fallback };
                by_node.entry(node).or_default().push(shipped);
            }
        }
    }
    deliver_here(server, here);
    // A node gossip shows down may still hold sessions (a view that lags): it is tried, in
    // the background, so a caller never waits for a node that may be gone.
    let (live, doubtful): (Vec<_>, Vec<_>) = by_node.into_iter().partition(|(node, _)| server.data.is_live(*node));
    for (node, shipped) in doubtful {
        let server_for_task = server.clone();
        server.tasks.spawn(async move { deliver_to(&server_for_task, node, shipped).await });
    }
    let calls = live.into_iter().map(|(node, shipped)| deliver_to(server, node, shipped));
    // An absent user's message is queued before this returns: whoever was answered (a recall's
    // sender, say) may log the user in next, and the drain must find it.
    futures_util::future::join(store_offline(server, absent), join_all(calls)).await;
}

/// Hands messages to the sessions of one other node; what it did not take is stored offline,
/// as each message's fallback says.
async fn deliver_to(server: &Server, node: NodeId, shipped: Vec<Shipped>) {
    let fallbacks: Vec<_> = shipped.iter().map(|s| (s.user, s.msg.clone(), s.fallback)).collect();
    if let Err(e) = server.call_node(node, NodeCall::Deliver(shipped)).await {
        // The link broke: what the node did not take is stored (a message it did take and
        // whose answer was lost may then come twice; clients drop duplicates by mid).
        debug!(%node, error = %ErrorChain(&e), "delivery to a node failed; storing offline");
        let stored = fallbacks
            .into_iter()
            .filter(|(_, _, f)| matches!(f, Fallback::Store))
            .filter_map(|(user, raw, _)| decode_body::<TimMessage>(raw, Encoding::Compact).ok().map(|m| (user, m)))
            .collect();
        store_offline(server, stored).await;
    }
}

/// [`push_messages`] of one message.
pub async fn push_to_user(server: &Arc<Server>, user: UserId, msg: TimMessage, fallback: Fallback) {
    push_messages(server, vec![(user, msg, fallback)]).await;
}

/// Stores messages for users who got none of them, in order.
async fn store_offline(server: &Server, messages: Vec<(UserId, TimMessage)>) {
    for (user, msg) in messages {
        if let Err(e) = server.offline.push(user, &msg).await {
            warn!(error = %ErrorChain(&e), uid = %user.node(), "message lost: not delivered and not stored offline");
        }
    }
}

/// Hands messages to this node's sessions now, in order; a message none of whose sessions
/// acks is stored by a tracked background task, when it is not queued already.
pub fn deliver_here(server: &Arc<Server>, items: Vec<(UserId, Vec<u64>, TimMessage, Fallback)>) {
    let mut watched = Vec::new();
    let mut absent = Vec::new();
    for (user, conns, msg, fallback) in items {
        let sessions = server.sessions.handles(user, &conns);
        match fallback {
            Fallback::Queued(entry) => {
                start(&sessions, FrameType::Message, Payload::Message(Box::new(msg)), vec![entry]);
            }
            Fallback::Store if sessions.is_empty() => absent.push((user, msg)),
            Fallback::Store => {
                let body = Body::new(Payload::Message(Box::new(msg.clone())));
                let outcome = start_with(&sessions, FrameType::Message, body, Vec::new());
                watched.push(async move { (user, msg, outcome.acked().await) });
            }
        }
    }
    if watched.is_empty() && absent.is_empty() {
        return;
    }
    let server_for_task = server.clone();
    server.tasks.spawn(async move {
        // Sessions that ended between the look-up and now: their messages are queued.
        store_offline(&server_for_task, absent).await;
        let mut outcomes: FuturesUnordered<_> = watched.into_iter().collect();
        let mut unacked = Vec::new();
        while let Some((user, msg, acked)) = outcomes.next().await {
            if !acked {
                unacked.push((user, msg));
            }
        }
        store_offline(&server_for_task, unacked).await;
    });
}

/// Sends `body` as a frame of `kind`, without ack request, to every session of `users` (but
/// `except`, a connection of this node), encoded once per encoding. Best effort.
pub async fn push_frames<T: TimStruct>(
    server: &Arc<Server>,
    users: &[UserId],
    kind: FrameType,
    body: &T,
    except: Option<u64>,
) -> usize {
    let compact = encode_server(kind, Encoding::Compact, body);
    let json = encode_server(kind, Encoding::Json, body);
    push_encoded(server, users, compact, json, except).await
}

/// [`push_frames`] of a frame already encoded in both encodings; how many sessions it was
/// sent to.
pub async fn push_encoded(
    server: &Arc<Server>,
    users: &[UserId],
    compact: Bytes,
    json: Bytes,
    except: Option<u64>,
) -> usize {
    match locate(server, users).await {
        Ok(located) => send_located(server, &located, compact, json, except, false).await,
        Err(e) => {
            debug!(error = %ErrorChain(&e), "sessions not found for online-only frames");
            0
        }
    }
}

/// [`push_encoded`] to sessions located already.
pub async fn push_located(
    server: &Arc<Server>,
    located: &HashMap<UserId, Vec<Lease>>,
    compact: Bytes,
    json: Bytes,
    except: Option<u64>,
) {
    send_located(server, located, compact, json, except, false).await;
}

/// Sends every session of `users` TIMLOGOUT (frame 20) and closes it (an operator's ban);
/// how many sessions there were.
pub async fn log_out(server: &Arc<Server>, users: &[UserId]) -> Result<usize, EngineError> {
    let located = locate(server, users).await?;
    let logout = TimAck::ok(FrameType::Logout as u8);
    let compact = encode_server(FrameType::Ack, Encoding::Compact, &logout);
    let json = encode_server(FrameType::Ack, Encoding::Json, &logout);
    Ok(send_located(server, &located, compact, json, None, true).await)
}

/// Sends a frame to sessions located already, closing them after it when `last`; how many
/// sessions it was sent to.
async fn send_located(
    server: &Arc<Server>,
    located: &HashMap<UserId, Vec<Lease>>,
    compact: Bytes,
    json: Bytes,
    except: Option<u64>,
    last: bool,
) -> usize {
    let me = server.data.node();
    let mut sent = 0;
    let mut by_node: HashMap<NodeId, Vec<(UserId, Vec<u64>)>> = HashMap::new();
    for (user, leases) in located {
        let user = *user;
        for lease in leases {
            if lease.node == me && Some(lease.conn) == except {
                continue;
            }
            sent += 1;
            let targets = by_node.entry(lease.node).or_default();
            match targets.iter_mut().find(|(u, _)| *u == user) {
                Some((_, conns)) => conns.push(lease.conn),
                None => targets.push((user, vec![lease.conn])),
            }
        }
    }
    let calls = by_node.into_iter().map(|(node, targets)| {
        let frames = Frames { targets, compact: compact.clone(), json: json.clone(), last };
        async move {
            if node == me {
                frames_here(server, frames);
            } else if let Err(e) = server.call_node(node, NodeCall::Frames(frames)).await {
                debug!(%node, error = %ErrorChain(&e), "online-only frames to a node failed");
            }
        }
    });
    join_all(calls).await;
    sent
}

/// Queues frames to this node's sessions. Best effort: a full queue cuts that session off.
pub fn frames_here(server: &Server, frames: Frames) {
    for (user, conns) in frames.targets {
        for session in server.sessions.handles(user, &conns) {
            let frame = if session.encoding() == Encoding::Json { frames.json.clone() } else { frames.compact.clone() };
            let _ = session.push(if frames.last { Outbound::Last(frame) } else { Outbound::Frame(frame) });
        }
    }
}
