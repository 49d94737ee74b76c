//! The sessions connected to this node, by connection and by user. Which sessions a user has
//! across the cluster, and the device limits, are the directory's ([`crate::directory`]); this
//! registry turns the directory's leases into handles, and holds what is per node: the
//! node's connection count and the account rate buckets of the sessions here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tim_net::Encoding;
use tokio_util::sync::CancellationToken;

use crate::delivery::Delivery;
use crate::ident::UserId;
use crate::limits::{Bucket, Rate};
use crate::outbound::Outlet;

/// What other tasks hand a session to send.
pub enum Outbound {
    /// A frame already encoded in the session's encoding, sent without ack request.
    Frame(Bytes),
    /// A frame to send with ack requests and retries.
    Delivery(Arc<Delivery>),
    /// A last frame, after which the session closes (TIMLOGOUT).
    Last(Bytes),
}

/// A handle to one session: queue frames to it, or close it.
#[derive(Clone)]
pub struct SessionHandle {
    conn_id: u64,
    termtyp: Option<i8>,
    encoding: Encoding,
    outlet: Outlet,
    kick: CancellationToken,
}

impl SessionHandle {
    pub fn new(conn_id: u64, termtyp: Option<i8>, encoding: Encoding, outlet: Outlet, kick: CancellationToken) -> Self {
        Self { conn_id, termtyp, encoding, outlet, kick }
    }

    /// The encoding frames to this session must use.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Queues without waiting. A full queue means a slow reader: the session is cut off (its
    /// undelivered frames then take the offline path) and the push fails.
    pub fn push(&self, out: Outbound) -> Result<(), Outbound> {
        self.outlet.try_send(out).inspect_err(|_| self.kick.cancel())
    }

    /// Queues without waiting and without cutting a slow session off: `false` when the queue
    /// is full (or the session ended) and the frame is dropped (best-effort streams).
    pub fn offer(&self, out: Outbound) -> bool {
        self.outlet.try_send(out).is_ok()
    }

    pub fn push_delivery(&self, delivery: Arc<Delivery>) -> Result<(), Outbound> {
        self.push(Outbound::Delivery(delivery))
    }

    pub fn close(&self) {
        self.kick.cancel();
    }
}

struct Account {
    /// This node's sessions of the account, oldest first.
    sessions: Vec<SessionHandle>,
    /// The account's message-class frames, across its sessions on this node.
    bucket: Bucket,
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
}

impl Sessions {
    pub fn new(limits: Limits) -> Self {
        Self { accounts: Mutex::new(HashMap::new()), limits }
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
        let account =
            accounts.entry(user).or_insert_with(|| Account { sessions: Vec::new(), bucket: Bucket::full(rate) });
        account.sessions.push(session);
        Ok(())
    }

    /// Removes a session that ended.
    pub fn remove(&self, user: UserId, conn_id: u64) {
        let mut accounts = self.lock();
        let Some(account) = accounts.get_mut(&user) else { return };
        account.sessions.retain(|s| s.conn_id != conn_id);
        if account.sessions.is_empty() {
            accounts.remove(&user);
        }
    }

    /// The handles of `user`'s sessions here among `conns` (a connection id of another user,
    /// say from an old lease, is no handle of this one).
    pub fn handles(&self, user: UserId, conns: &[u64]) -> Vec<SessionHandle> {
        let accounts = self.lock();
        let Some(account) = accounts.get(&user) else { return Vec::new() };
        account.sessions.iter().filter(|s| conns.contains(&s.conn_id)).cloned().collect()
    }

    /// Up to `limit` users with sessions here whose id is above `after`, in id order, with
    /// how many sessions each has here (a page of the online users).
    pub fn users_after(&self, after: Option<UserId>, limit: usize) -> Vec<(UserId, usize)> {
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

    /// Every session here of the users `belongs` accepts: for a directory being rebuilt.
    pub fn all_of(&self, belongs: impl Fn(UserId) -> bool) -> Vec<(UserId, u64, Option<i8>)> {
        let accounts = self.lock();
        accounts
            .iter()
            .filter(|(user, _)| belongs(**user))
            .flat_map(|(user, a)| a.sessions.iter().map(|s| (*user, s.conn_id, s.termtyp)))
            .collect()
    }
}
