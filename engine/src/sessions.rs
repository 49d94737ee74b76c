//! The sessions online on this node, per account, with TIM's multi-device limits
//! (tim-server.md §2.3.2) minus its off-by-one: `device_limit` sessions per account and
//! `devicetype_limit` per device type. A login over a limit closes the oldest sessions in the
//! way if the account's previous login is older than `auth_min_unix`; otherwise it gets 4111.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::sync::Arc;

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

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.outlet.is_closed()
    }

    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    pub fn push_delivery(&self, delivery: Arc<Delivery>) -> Result<(), Outbound> {
        self.push(Outbound::Delivery(delivery))
    }

    pub fn close(&self) {
        self.kick.cancel();
    }
}

struct Account {
    /// Oldest first.
    sessions: Vec<SessionHandle>,
    last_login: Instant,
    /// The account's message-class frames, across its sessions on this node.
    bucket: Bucket,
}

pub struct Limits {
    pub device_limit: usize,
    pub devicetype_limit: usize,
    pub auth_min: Duration,
    /// Most sessions on the node.
    pub connect_limit: usize,
    pub account_rate: Rate,
}

pub struct Sessions {
    accounts: Mutex<HashMap<UserId, Account>>,
    limits: Limits,
    /// Sessions on the node (kept with the map, under its lock).
    online: AtomicUsize,
}

/// Why a login is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Over the account's device limits (4111).
    OverEntry,
    /// The node holds `connect_limit` sessions (5104).
    NodeFull,
}

impl Sessions {
    pub fn new(limits: Limits) -> Self {
        Self { accounts: Mutex::new(HashMap::new()), limits, online: AtomicUsize::new(0) }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Account>> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a logged-in session, closing the oldest ones in the way when allowed.
    pub fn admit(&self, user: UserId, session: SessionHandle) -> Result<(), Refused> {
        let now = Instant::now();
        let mut accounts = self.lock();
        if self.online.load(Ordering::Relaxed) >= self.limits.connect_limit {
            return Err(Refused::NodeFull);
        }
        let rate = self.limits.account_rate;
        let account = accounts.entry(user).or_insert_with(|| Account {
            sessions: Vec::new(),
            last_login: now,
            bucket: Bucket::full(rate),
        });
        let same_type = |s: &SessionHandle| session.termtyp.is_some() && s.termtyp == session.termtyp;
        let typed = account.sessions.iter().filter(|s| same_type(s)).count();
        let over_type = session.termtyp.is_some() && typed >= self.limits.devicetype_limit;
        let over_device = account.sessions.len() >= self.limits.device_limit;
        if over_type || over_device {
            if !account.sessions.is_empty() && now.duration_since(account.last_login) < self.limits.auth_min {
                return Err(Refused::OverEntry);
            }
            let mut typed = typed;
            while typed >= self.limits.devicetype_limit {
                let Some(at) = account.sessions.iter().position(same_type) else {
                    break;
                };
                account.sessions.remove(at).close();
                self.online.fetch_sub(1, Ordering::Relaxed);
                typed -= 1;
            }
            while account.sessions.len() >= self.limits.device_limit {
                account.sessions.remove(0).close();
                self.online.fetch_sub(1, Ordering::Relaxed);
            }
        }
        account.sessions.push(session);
        self.online.fetch_add(1, Ordering::Relaxed);
        account.last_login = now;
        Ok(())
    }

    /// Removes a session that ended; `true` when it was the account's last one on this node.
    pub fn remove(&self, user: UserId, conn_id: u64) -> bool {
        let mut accounts = self.lock();
        let Some(account) = accounts.get_mut(&user) else {
            return false;
        };
        let before = account.sessions.len();
        account.sessions.retain(|s| s.conn_id != conn_id);
        let removed = account.sessions.len() < before;
        if removed {
            self.online.fetch_sub(1, Ordering::Relaxed);
        }
        if account.sessions.is_empty() {
            accounts.remove(&user);
        }
        removed && !accounts.contains_key(&user)
    }

    /// The sessions of an account on this node, oldest first.
    pub fn of(&self, user: UserId) -> Vec<SessionHandle> {
        self.lock().get(&user).map(|a| a.sessions.clone()).unwrap_or_default()
    }

    #[cfg(test)]
    fn conn_ids(&self, user: UserId) -> Vec<u64> {
        self.of(user).iter().map(|s| s.conn_id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(device_limit: usize, devicetype_limit: usize, auth_min: Duration) -> Limits {
        let account_rate = Rate { per_second: 0, burst: 0 };
        Limits { device_limit, devicetype_limit, auth_min, connect_limit: 100, account_rate }
    }

    fn handle(conn_id: u64, termtyp: Option<i8>) -> SessionHandle {
        let (outlet, _) = crate::outbound::queue(1, 1);
        SessionHandle::new(conn_id, termtyp, Encoding::Compact, outlet, CancellationToken::new())
    }

    fn user() -> UserId {
        UserId::parse("YpzSs1zsa8j").unwrap()
    }

    #[test]
    fn device_limit_is_exact_and_kicks_oldest_after_auth_min() {
        let quick = Sessions::new(limits(2, 5, Duration::from_secs(60)));
        quick.admit(user(), handle(1, None)).unwrap();
        quick.admit(user(), handle(2, None)).unwrap();
        assert_eq!(quick.admit(user(), handle(3, None)), Err(Refused::OverEntry), "limit 2 means 2, not 3");

        let kicking = Sessions::new(limits(2, 5, Duration::ZERO));
        let first = handle(1, None);
        kicking.admit(user(), first.clone()).unwrap();
        kicking.admit(user(), handle(2, None)).unwrap();
        kicking.admit(user(), handle(3, None)).unwrap();
        assert!(first.kick.is_cancelled());
        assert_eq!(kicking.conn_ids(user()), [2, 3]);
    }

    #[test]
    fn device_type_limit_kicks_the_same_type() {
        let s = Sessions::new(limits(5, 1, Duration::ZERO));
        let web = handle(1, Some(1));
        let phone = handle(2, Some(2));
        s.admit(user(), web.clone()).unwrap();
        s.admit(user(), phone.clone()).unwrap();
        s.admit(user(), handle(3, Some(1))).unwrap();
        assert!(web.kick.is_cancelled() && !phone.kick.is_cancelled());
        assert!(!s.remove(user(), 2));
        assert!(s.remove(user(), 3), "last session gone");
        assert!(s.conn_ids(user()).is_empty());
    }
}
