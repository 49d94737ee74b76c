//! The sessions connected to this node, by connection and by user. Which sessions a user has
//! across the cluster, and the device limits, are the directory's ([`crate::services::directory`]); this
//! registry turns the directory's leases into handles, and holds what is per node: the
//! node's connection count and the account rate buckets of the sessions here.
//!
//! It also remembers, for a user with sessions here, where all of the user's sessions are
//! ([`Sessions::known`]): a message's sender needs them for every message (its other devices
//! get a copy), and asking the directory each time was a call to another node per message.
//! The directory tells the nodes of a user's sessions when they change (a login or a logout
//! elsewhere), and a session added or removed here forgets them; what is remembered is asked
//! again after [`KNOWN_FOR`] anyway, in case a change was not told (a link that broke).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tim_net::Encoding;
use tim_shard::{EngineAnswer, HandlerError, NodeId};

use crate::model::ident::{encode_base58, UserId};
use crate::model::lease::Lease;
use crate::model::partition;
use crate::seam::{self, Arrivals, NodeOp, Service};
use crate::session::limits::{Bucket, Rate};
use crate::session::outbound::{Outbound, SessionHandle};

/// Most users one page of [`Sessions::users_after`] lists.
const MAX_PAGE: usize = 1000;

/// Frames without ack for some sessions on one node, encoded once per encoding.
#[derive(Debug, Serialize, Deserialize)]
pub struct Frames {
    pub targets: Vec<(UserId, Vec<u64>)>,
    pub compact: Bytes,
    pub json: Bytes,
    /// The sessions close after this frame (TIMLOGOUT).
    pub last: bool,
}

/// The operations on a node's sessions, run at once in the order sent.
#[derive(Debug, Serialize, Deserialize)]
pub enum SessionsOp {
    /// A user's sessions changed (a login or a logout): forget where they are.
    Changed {
        user: UserId,
    },
    /// Close sessions another login replaced.
    Kick {
        user: UserId,
        conns: Vec<u64>,
    },
    Frames(Frames),
}

impl NodeOp for SessionsOp {
    fn service(&self) -> Service {
        Service::Sessions
    }
}

/// Questions about a node's sessions.
#[derive(Debug, Serialize, Deserialize)]
pub enum SessionsQuery {
    /// The node's sessions of the users of these slots (a directory being rebuilt).
    In { slots: Vec<u16> },
    /// A page of the node's online users: see [`Sessions::users_after`].
    Online { after: Option<UserId>, limit: usize },
}

impl NodeOp for SessionsQuery {
    fn service(&self) -> Service {
        Service::Sessions
    }
}

impl Arrivals for Sessions {
    fn at_node(self: Arc<Self>, op: Bytes) -> EngineAnswer {
        let answer = match seam::decode(&op) {
            Ok(SessionsQuery::In { slots }) => seam::answer(Ok(self.sessions_in(&slots)), "sessions"),
            Ok(SessionsQuery::Online { after, limit }) => seam::answer(Ok(self.users_after(after, limit)), "online"),
            Err(e) => Err(e),
        };
        Box::pin(std::future::ready(answer))
    }

    fn at_node_now(&self, op: Bytes) -> Result<Bytes, HandlerError> {
        match seam::decode(&op)? {
            SessionsOp::Changed { user } => self.forget_where(user),
            SessionsOp::Kick { user, conns } => self.kick(user, &conns),
            SessionsOp::Frames(frames) => self.send_frames(frames),
        }
        seam::answer(Ok(()), "sessions")
    }
}

/// How long a user's sessions, as the directory gave them, are used without asking again.
/// Changes are told at once; this bounds how long a change that was not told (a notice lost
/// with a broken link) goes unseen: a device then misses copies of the other devices' messages,
/// which are best effort, for at most this long.
pub const KNOWN_FOR: Duration = Duration::from_secs(60);

struct Account {
    /// This node's sessions of the account, oldest first.
    sessions: Vec<SessionHandle>,
    /// The account's message-class frames, across its sessions on this node.
    bucket: Bucket,
    /// All of the account's sessions, as the directory said and when.
    everywhere: Option<(Instant, Vec<Lease>)>,
    /// Counts what made `everywhere` stale: a look-up that began before it is not remembered.
    changes: u64,
}

impl Account {
    fn changed(&mut self) {
        self.changes += 1;
        self.everywhere = None;
    }
}

/// A user's sessions everywhere, as this node knows them ([`Sessions::known`]).
pub enum Known {
    Sessions(Vec<Lease>),
    /// Not known (or no longer sure): look them up, then [`Sessions::remember`] them with
    /// this ticket.
    Ask(u64),
}

pub struct Limits {
    /// Most sessions on the node.
    pub connect_limit: usize,
    pub account_rate: Rate,
}

/// The node holds `connect_limit` sessions (5104).
#[derive(Debug, PartialEq, Eq)]
pub struct NodeFull;

pub struct Sessions {
    accounts: Mutex<HashMap<UserId, Account>>,
    limits: Limits,
    /// This node and its generation: the leases of its sessions.
    node: NodeId,
    generation: u64,
    next_conn: AtomicU64,
    next_ack: AtomicU32,
    /// Connection ids are shown to clients masked, so they do not reveal the connection count.
    conn_mask: u64,
    /// Opaque per-process value sent as `t` in login acks.
    instance_tag: i64,
}

impl Sessions {
    pub fn new(limits: Limits, node: NodeId, generation: u64) -> Self {
        let mut rng = rand::rngs::OsRng;
        Self {
            accounts: Mutex::new(HashMap::new()),
            limits,
            node,
            generation,
            next_conn: AtomicU64::new(0),
            next_ack: AtomicU32::new(1),
            conn_mask: rng.next_u64(),
            instance_tag: i64::from(rng.next_u32() as i32),
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A fresh ack id (never 0), for one send attempt of a frame that asks for an ack.
    pub fn next_ack_id(&self) -> u32 {
        loop {
            let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// The session id shown to the client (`n2` of the login ack).
    pub fn public_session_id(&self, conn_id: u64) -> String {
        encode_base58(conn_id ^ self.conn_mask)
    }

    /// Opaque per-process value sent as `t` in login acks.
    pub fn instance_tag(&self) -> i64 {
        self.instance_tag
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Account>> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a token from the account's bucket of message-class frames; `false` when the
    /// account is over its rate (or has no session here).
    pub fn take_token(&self, user: UserId) -> bool {
        let rate = self.limits.account_rate;
        if rate.per_second == 0 {
            return true;
        }
        self.lock().get_mut(&user).is_some_and(|a| a.bucket.take(rate, Instant::now()))
    }

    /// Sessions on the node.
    pub fn online(&self) -> usize {
        self.lock().values().map(|a| a.sessions.len()).sum()
    }

    /// Registers a logged-in session, unless the node is full.
    pub fn add(&self, user: UserId, session: SessionHandle) -> Result<(), NodeFull> {
        let mut accounts = self.lock();
        if accounts.values().map(|a| a.sessions.len()).sum::<usize>() >= self.limits.connect_limit {
            return Err(NodeFull);
        }
        let rate = self.limits.account_rate;
        let account = accounts.entry(user).or_insert_with(|| Account {
            sessions: Vec::new(),
            bucket: Bucket::full(rate),
            everywhere: None,
            changes: 0,
        });
        account.sessions.push(session);
        account.changed();
        Ok(())
    }

    /// Removes a session that ended.
    pub fn remove(&self, user: UserId, conn_id: u64) {
        let mut accounts = self.lock();
        let Some(account) = accounts.get_mut(&user) else { return };
        account.sessions.retain(|s| s.conn_id() != conn_id);
        account.changed();
        if account.sessions.is_empty() {
            accounts.remove(&user);
        }
    }

    /// Where `user`'s sessions are, if this node knows it (the user has a session here, and
    /// they were looked up less than [`KNOWN_FOR`] ago with no change told since).
    pub fn known(&self, user: UserId) -> Known {
        let accounts = self.lock();
        let Some(account) = accounts.get(&user) else { return Known::Ask(0) };
        match &account.everywhere {
            Some((at, leases)) if at.elapsed() < KNOWN_FOR => Known::Sessions(leases.clone()),
            _ => Known::Ask(account.changes),
        }
    }

    /// Remembers `user`'s sessions looked up with `ticket`, unless something changed since.
    pub fn remember(&self, user: UserId, ticket: u64, leases: Vec<Lease>) {
        let mut accounts = self.lock();
        if let Some(account) = accounts.get_mut(&user).filter(|a| a.changes == ticket) {
            account.everywhere = Some((Instant::now(), leases));
        }
    }

    /// Forgets where `user`'s sessions are: the directory told of a change.
    pub fn forget_where(&self, user: UserId) {
        if let Some(account) = self.lock().get_mut(&user) {
            account.changed();
        }
    }

    /// The handles of `user`'s sessions here among `conns` (a connection id of another user,
    /// say from an old lease, is no handle of this one).
    pub fn handles(&self, user: UserId, conns: &[u64]) -> Vec<SessionHandle> {
        let accounts = self.lock();
        let Some(account) = accounts.get(&user) else { return Vec::new() };
        account.sessions.iter().filter(|s| conns.contains(&s.conn_id())).cloned().collect()
    }

    /// Up to `limit` users with sessions here whose id is above `after`, in id order, with
    /// how many sessions each has here (a page of the online users).
    pub fn users_after(&self, after: Option<UserId>, limit: usize) -> Vec<(UserId, usize)> {
        let limit = limit.min(MAX_PAGE);
        let mut users: Vec<(UserId, usize)> = self
            .lock()
            .iter()
            .filter(|(user, _)| after.is_none_or(|after| **user > after))
            .map(|(user, account)| (*user, account.sessions.len()))
            .collect();
        if users.len() > limit {
            users.select_nth_unstable_by_key(limit, |(user, _)| *user);
            users.truncate(limit);
        }
        users.sort_unstable_by_key(|(user, _)| *user);
        users
    }

    /// Every session here of the users of `slots`, as leases: for a directory being rebuilt.
    pub fn sessions_in(&self, slots: &[u16]) -> Vec<(UserId, Lease)> {
        let (node, generation) = (self.node, self.generation);
        let accounts = self.lock();
        accounts
            .iter()
            .filter(|(user, _)| slots.contains(&partition::user(**user).0))
            .flat_map(|(user, a)| {
                a.sessions
                    .iter()
                    .map(move |s| (*user, Lease { node, generation, conn: s.conn_id(), termtyp: s.termtyp() }))
            })
            .collect()
    }

    /// Closes `user`'s sessions here among `conns`.
    pub fn kick(&self, user: UserId, conns: &[u64]) {
        self.handles(user, conns).iter().for_each(SessionHandle::close);
    }

    /// Queues frames to sessions here. Best effort: a full queue cuts that session off.
    pub fn send_frames(&self, frames: Frames) {
        for (user, conns) in frames.targets {
            for session in self.handles(user, &conns) {
                let frame =
                    if session.encoding() == Encoding::Json { frames.json.clone() } else { frames.compact.clone() };
                let _ = session.push(if frames.last { Outbound::Last(frame) } else { Outbound::Frame(frame) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tim_shard::NodeId;

    fn sessions() -> Sessions {
        Sessions::new(Limits { connect_limit: 10, account_rate: Rate { per_second: 0, burst: 0 } }, NodeId(1), 1)
    }

    fn handle(conn: u64) -> SessionHandle {
        let (outlet, _inlet) = crate::session::outbound::queue(4, 1024);
        SessionHandle::new(conn, None, Encoding::Compact, outlet, tokio_util::sync::CancellationToken::new())
    }

    fn lease(node: u64, conn: u64) -> Lease {
        Lease { node: NodeId(node), generation: 1, conn, termtyp: None }
    }

    fn ticket(known: Known) -> u64 {
        match known {
            Known::Ask(ticket) => ticket,
            Known::Sessions(leases) => panic!("known already: {leases:?}"),
        }
    }

    fn remembered(known: Known) -> Vec<Lease> {
        match known {
            Known::Sessions(leases) => leases,
            Known::Ask(_) => panic!("not known"),
        }
    }

    #[test]
    fn sessions_looked_up_are_remembered_until_a_change() {
        let (s, user) = (sessions(), UserId::from_be_bytes([0, 0, 0, 0, 0, 0, 0, 7]));
        let _ = s.add(user, handle(1));
        let asked = ticket(s.known(user));
        s.remember(user, asked, vec![lease(1, 1)]);
        assert_eq!(remembered(s.known(user)), [lease(1, 1)]);

        // Told of a change: asked again, and an answer to an earlier question is not kept.
        s.forget_where(user);
        let again = ticket(s.known(user));
        s.remember(user, asked, vec![lease(1, 1)]);
        assert!(matches!(s.known(user), Known::Ask(_)), "a look-up from before the change is stale");
        s.remember(user, again, vec![lease(1, 1), lease(2, 5)]);
        assert_eq!(remembered(s.known(user)), [lease(1, 1), lease(2, 5)]);

        // A session added or removed here is a change too.
        let _ = s.add(user, handle(2));
        let after_add = ticket(s.known(user));
        s.remember(user, after_add, vec![lease(1, 1), lease(1, 2)]);
        s.remove(user, 2);
        assert!(matches!(s.known(user), Known::Ask(_)), "a removal forgets");

        // A user without sessions here is not remembered.
        s.remove(user, 1);
        let none = ticket(s.known(user));
        s.remember(user, none, vec![lease(2, 5)]);
        assert!(matches!(s.known(user), Known::Ask(_)));
    }
}
