//! Pushing to users wherever their sessions are. The sessions are looked up in the directory
//! of each user's slot owner ([`Directory::locate`]), then each node that holds some gets one
//! ordered call with everything for it, in order; this node's sessions get theirs directly.
//! Messages ask for acks: when none of a user's sessions acks (or the user has none), the
//! message waits in the user's offline queue, once, or in its conversation's log past the
//! user's cursor. Frames without ack (presence, echoes to other devices, streams, big data)
//! are best effort.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tim_kv::RowId;
use tim_net::codec::{decode_body, TimStruct};
use tim_net::frame::encode_server;
use tim_net::proto::{TimAck, TimMessage};
use tim_net::report::ErrorChain;
use tim_net::{Encoding, FrameType};
use tim_shard::{Cluster, HandlerError, NodeId};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::error::EngineError;
use crate::model::ident::UserId;
use crate::seam::{self, at_node, Arrivals, NodeOp, Service};
use crate::services::chat_log::Span;
use crate::services::directory::{Directory, Located};
use crate::services::offline::OfflineQueue;
use crate::session::delivery::{Body, Stands};
use crate::session::outbound::start;
use crate::session::registry::{Frames, Sessions, SessionsOp};

/// Where an undelivered message ends up.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Fallback {
    /// Stored in the offline queue if no session acks.
    Store,
    /// Already in the offline queue (written before the sender was told the message was
    /// accepted): the acking session removes it.
    Queued(RowId),
    /// In a conversation's log: the acking session moves its cursor over the span.
    Logged(Span),
}

/// A message for one user's sessions on one node, as it travels.
#[derive(Debug, Serialize, Deserialize)]
struct Shipped {
    user: UserId,
    conns: Vec<u64>,
    /// The message, thrift-compact encoded.
    msg: Bytes,
    fallback: Fallback,
}

/// Messages handed to a node's sessions, in order with the other calls to it.
#[derive(Debug, Serialize, Deserialize)]
struct Deliver(Vec<Shipped>);

impl NodeOp for Deliver {
    fn service(&self) -> Service {
        Service::Push
    }
}

impl Arrivals for Push {
    fn at_node_now(&self, op: Bytes) -> Result<Bytes, HandlerError> {
        let Deliver(shipped) = seam::decode(&op)?;
        // Decoded for the sessions that read JSON; the others get the bytes as they came.
        let items = shipped
            .into_iter()
            .filter_map(|s| {
                let msg = decode_body(s.msg.clone(), Encoding::Compact).ok()?;
                Some((s.user, s.conns, Body::arrived(msg, s.msg), s.fallback))
            })
            .collect();
        self.deliver_here(items);
        seam::answer(Ok(()), "deliver")
    }
}

/// A message for one user's sessions on one node: the user, the sessions' connections, the
/// message, and where it goes when none acks.
type Item = (UserId, Vec<u64>, Arc<Body>, Fallback);

/// Pushes to users' sessions, wherever they are, falling back to their offline queues.
pub struct Push {
    data: Arc<Cluster>,
    directory: Arc<Directory>,
    sessions: Arc<Sessions>,
    offline: Arc<OfflineQueue>,
    /// The node's background tasks (deliveries whose acks are awaited).
    tasks: TaskTracker,
}

impl Push {
    pub fn new(
        data: Arc<Cluster>,
        directory: Arc<Directory>,
        sessions: Arc<Sessions>,
        offline: Arc<OfflineQueue>,
        tasks: TaskTracker,
    ) -> Self {
        Self { data, directory, sessions, offline, tasks }
    }

    /// Pushes messages with ack requests, in order: to each user's sessions everywhere,
    /// falling back as each says. A message several users get is one [`Body`], encoded once.
    pub async fn messages(&self, items: Vec<(UserId, Arc<Body>, Fallback)>) {
        let users: Vec<UserId> = items.iter().map(|(u, _, _)| *u).collect();
        let located = match self.directory.locate(&users).await {
            Ok(located) => located,
            Err(e) => {
                // Nobody known: the messages that are not queued yet are stored.
                warn!(error = %ErrorChain(&e), "sessions not found; messages go to the offline queue");
                HashMap::new()
            }
        };
        self.messages_located(items, &located).await;
    }

    /// [`Push::messages`] to sessions located already: a user missing from `located` has none.
    /// Each message is encoded once, for this node's sessions and every other node alike.
    pub async fn messages_located(&self, items: Vec<(UserId, Arc<Body>, Fallback)>, located: &Located) {
        let me = self.data.node();
        let mut here = Vec::new();
        let mut by_node: HashMap<NodeId, Vec<Item>> = HashMap::new();
        let mut absent = Vec::new();
        for (user, body, fallback) in items {
            let leases = located.get(&user).map(Vec::as_slice).unwrap_or_default();
            if leases.is_empty() {
                if let Fallback::Store = fallback {
                    absent.push((user, body));
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
                let item = (user, conns, body.clone(), fallback);
                if node == me {
                    here.push(item);
                } else {
                    by_node.entry(node).or_default().push(item);
                }
            }
        }
        self.deliver_here(here);
        // A node gossip shows down may still hold sessions (a view that lags): it is tried, in
        // the background, so a caller never waits for a node that may be gone.
        let (live, doubtful): (Vec<_>, Vec<_>) = by_node.into_iter().partition(|(node, _)| self.data.is_live(*node));
        for (node, items) in doubtful {
            let (data, offline) = (self.data.clone(), self.offline.clone());
            self.tasks.spawn(async move { deliver_to(&data, &offline, node, items).await });
        }
        let calls = live.into_iter().map(|(node, items)| deliver_to(&self.data, &self.offline, node, items));
        // An absent user's message is queued before this returns: whoever was answered (a
        // recall's sender, say) may log the user in next, and the drain must find it.
        futures_util::future::join(store_offline(&self.offline, absent), join_all(calls)).await;
    }

    /// [`Push::messages`] of one message.
    pub async fn to_user(&self, user: UserId, msg: TimMessage, fallback: Fallback) {
        self.messages(vec![(user, Body::message(msg), fallback)]).await;
    }

    /// Hands messages to this node's sessions now, in order; a message none of whose sessions
    /// acks is stored by a tracked background task, when it is not queued already.
    fn deliver_here(&self, items: Vec<Item>) {
        let mut watched = Vec::new();
        let mut absent = Vec::new();
        for (user, conns, body, fallback) in items {
            let sessions = self.sessions.handles(user, &conns);
            match fallback {
                Fallback::Queued(entry) => {
                    start(&sessions, FrameType::Message, body, Stands::entries(vec![entry]));
                }
                Fallback::Logged(span) => {
                    start(&sessions, FrameType::Message, body, Stands::span(span));
                }
                Fallback::Store if sessions.is_empty() => absent.push((user, body)),
                Fallback::Store => {
                    let outcome = start(&sessions, FrameType::Message, body.clone(), Stands::default());
                    watched.push(async move { (user, body, outcome.acked().await) });
                }
            }
        }
        if watched.is_empty() && absent.is_empty() {
            return;
        }
        let offline = self.offline.clone();
        self.tasks.spawn(async move {
            // Sessions that ended between the look-up and now: their messages are queued.
            store_offline(&offline, absent).await;
            let mut outcomes: FuturesUnordered<_> = watched.into_iter().collect();
            let mut unacked = Vec::new();
            while let Some((user, body, acked)) = outcomes.next().await {
                if !acked {
                    unacked.push((user, body));
                }
            }
            store_offline(&offline, unacked).await;
        });
    }

    /// Sends `body` as a frame of `kind`, without ack request, to every session of `users`
    /// (but `except`, a connection of this node), encoded once per encoding. Best effort.
    pub async fn frames<T: TimStruct>(
        &self,
        users: &[UserId],
        kind: FrameType,
        body: &T,
        except: Option<u64>,
    ) -> usize {
        let compact = encode_server(kind, Encoding::Compact, body);
        let json = encode_server(kind, Encoding::Json, body);
        self.encoded(users, compact, json, except).await
    }

    /// [`Push::frames`] of a frame already encoded in both encodings; how many sessions it was
    /// sent to.
    pub async fn encoded(&self, users: &[UserId], compact: Bytes, json: Bytes, except: Option<u64>) -> usize {
        match self.directory.locate(users).await {
            Ok(located) => self.send_located(&located, compact, json, except, false).await,
            Err(e) => {
                debug!(error = %ErrorChain(&e), "sessions not found for online-only frames");
                0
            }
        }
    }

    /// [`Push::encoded`] to sessions located already.
    pub async fn encoded_located(&self, located: &Located, compact: Bytes, json: Bytes, except: Option<u64>) {
        self.send_located(located, compact, json, except, false).await;
    }

    /// Sends every session of `users` TIMLOGOUT (frame 20) and closes it (an operator's ban);
    /// how many sessions there were.
    pub async fn log_out(&self, users: &[UserId]) -> Result<usize, EngineError> {
        let located = self.directory.locate(users).await?;
        let logout = TimAck::ok(FrameType::Logout as u8);
        let compact = encode_server(FrameType::Ack, Encoding::Compact, &logout);
        let json = encode_server(FrameType::Ack, Encoding::Json, &logout);
        Ok(self.send_located(&located, compact, json, None, true).await)
    }

    /// Sends a frame to sessions located already, closing them after it when `last`; how many
    /// sessions it was sent to.
    async fn send_located(
        &self,
        located: &Located,
        compact: Bytes,
        json: Bytes,
        except: Option<u64>,
        last: bool,
    ) -> usize {
        let me = self.data.node();
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
                    self.sessions.send_frames(frames);
                } else if let Err(e) = at_node(&self.data, node, SessionsOp::Frames(frames)).await {
                    debug!(%node, error = %ErrorChain(&e), "online-only frames to a node failed");
                }
            }
        });
        join_all(calls).await;
        sent
    }
}

/// Hands messages to the sessions of one other node; what it did not take is stored offline,
/// as each message's fallback says.
async fn deliver_to(data: &Cluster, offline: &OfflineQueue, node: NodeId, items: Vec<Item>) {
    let mut unqueued = Vec::new();
    let mut shipped = Vec::with_capacity(items.len());
    for (user, conns, body, fallback) in items {
        shipped.push(Shipped { user, conns, msg: body.compact().clone(), fallback });
        if let Fallback::Store = fallback {
            unqueued.push((user, body));
        }
    }
    if let Err(e) = at_node(data, node, Deliver(shipped)).await {
        // The link broke: what the node did not take is stored (a message it did take and
        // whose answer was lost may then come twice; clients drop duplicates by mid).
        debug!(%node, error = %ErrorChain(&e), "delivery to a node failed; storing offline");
        store_offline(offline, unqueued).await;
    }
}

/// Stores messages for users who got none of them, in order, as they are encoded.
async fn store_offline(offline: &OfflineQueue, messages: Vec<(UserId, Arc<Body>)>) {
    for (user, body) in messages {
        if let Err(e) = offline.push_all(&[(user, body.compact().clone(), body.mid())]).await {
            warn!(error = %ErrorChain(&e), uid = %user.node(), "message lost: not delivered and not stored offline");
        }
    }
}
