//! The directory's entries: the leases of the users whose slots this node owns, by slot, and
//! the device limits they are admitted under.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tim_kv::Slot;
use tim_shard::NodeId;

use crate::model::ident::UserId;
use crate::model::lease::Lease;
use crate::model::partition;

/// TIM's device limits.
#[derive(Debug, Clone, Copy)]
pub struct DeviceLimits {
    /// Sessions per account.
    pub device_limit: usize,
    /// Sessions per account and device type.
    pub devicetype_limit: usize,
    /// Since the account's previous login, after which a login over a limit closes the
    /// oldest sessions in the way rather than being refused.
    pub auth_min: Duration,
}

struct Entry {
    /// Oldest first.
    leases: Vec<Lease>,
    last_login: Instant,
}

/// A user's entry as it travels with a slot that moves.
#[derive(Serialize, Deserialize)]
struct Carried {
    user: UserId,
    leases: Vec<Lease>,
    /// Since the user's last login.
    since_ms: u64,
}

#[derive(Default)]
struct Users {
    by_slot: HashMap<Slot, HashMap<UserId, Entry>>,
    /// Slots that arrived here with their entries: nothing to ask the nodes for.
    carried: HashSet<Slot>,
}

impl Users {
    fn entry(&mut self, user: UserId) -> Option<&mut Entry> {
        self.by_slot.get_mut(&partition::user(user))?.get_mut(&user)
    }

    fn remove(&mut self, user: UserId) {
        let slot = partition::user(user);
        if let Some(users) = self.by_slot.get_mut(&slot) {
            users.remove(&user);
            if users.is_empty() {
                self.by_slot.remove(&slot);
            }
        }
    }
}

/// The entries of the users whose slots this node owns, by slot.
pub struct Entries {
    users: Mutex<Users>,
    limits: DeviceLimits,
}

/// A login over the account's limits, within `auth_min` of its previous login (4111).
#[derive(Debug, PartialEq, Eq)]
pub struct OverEntry;

impl Entries {
    pub fn new(limits: DeviceLimits) -> Self {
        Self { users: Mutex::default(), limits }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Users> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a logged-in session; the sessions it replaces (to be closed). `live` tells
    /// which leases still count.
    pub fn admit(&self, user: UserId, lease: Lease, live: impl Fn(&Lease) -> bool) -> Result<Vec<Lease>, OverEntry> {
        let now = Instant::now();
        let mut users = self.lock();
        let slot = users.by_slot.entry(partition::user(user)).or_default();
        let entry = slot.entry(user).or_insert_with(|| Entry { leases: Vec::new(), last_login: now });
        entry.leases.retain(|l| live(l));
        let same_type = |l: &Lease| lease.termtyp.is_some() && l.termtyp == lease.termtyp;
        let mut typed = entry.leases.iter().filter(|l| same_type(l)).count();
        let over_type = lease.termtyp.is_some() && typed >= self.limits.devicetype_limit;
        let over_device = entry.leases.len() >= self.limits.device_limit;
        let mut kicked = Vec::new();
        if over_type || over_device {
            if !entry.leases.is_empty() && now.duration_since(entry.last_login) < self.limits.auth_min {
                return Err(OverEntry);
            }
            while typed >= self.limits.devicetype_limit {
                let Some(at) = entry.leases.iter().position(same_type) else { break };
                kicked.push(entry.leases.remove(at));
                typed -= 1;
            }
            while entry.leases.len() >= self.limits.device_limit && !entry.leases.is_empty() {
                kicked.push(entry.leases.remove(0));
            }
        }
        entry.leases.push(lease);
        entry.last_login = now;
        Ok(kicked)
    }

    /// Removes an ended session; `true` when the user has no session left anywhere (a
    /// session that was replaced is gone already, and its end says nothing).
    pub fn leave(&self, user: UserId, node: NodeId, conn: u64, live: impl Fn(&Lease) -> bool) -> bool {
        let mut users = self.lock();
        let Some(entry) = users.entry(user) else { return false };
        let had = entry.leases.iter().any(|l| l.node == node && l.conn == conn);
        entry.leases.retain(|l| !(l.node == node && l.conn == conn) && live(l));
        let last = entry.leases.is_empty();
        if last {
            users.remove(user);
        }
        had && last
    }

    /// The user's sessions that still count, oldest first.
    pub fn sessions(&self, user: UserId, live: impl Fn(&Lease) -> bool) -> Vec<Lease> {
        let mut users = self.lock();
        let Some(entry) = users.entry(user) else { return Vec::new() };
        entry.leases.retain(|l| live(l));
        entry.leases.clone()
    }

    /// Drops the entries of a slot's users (the slot left this node).
    pub fn forget(&self, slot: Slot) {
        let mut users = self.lock();
        users.by_slot.remove(&slot);
        users.carried.remove(&slot);
    }

    /// Adds sessions that nodes reported for a slot that just arrived here.
    pub fn restore(&self, sessions: impl IntoIterator<Item = (UserId, Lease)>) {
        let now = Instant::now();
        let mut users = self.lock();
        for (user, lease) in sessions {
            let slot = users.by_slot.entry(partition::user(user)).or_default();
            let entry = slot.entry(user).or_insert_with(|| Entry { leases: Vec::new(), last_login: now });
            if !entry.leases.contains(&lease) {
                entry.leases.push(lease);
            }
        }
    }

    /// The entries of a slot handed over now, to travel with it.
    pub fn carry(&self, slot: Slot) -> Result<Vec<u8>, postcard::Error> {
        let users = self.lock();
        let carried: Vec<Carried> = users
            .by_slot
            .get(&slot)
            .into_iter()
            .flatten()
            .map(|(user, e)| Carried {
                user: *user,
                leases: e.leases.clone(),
                since_ms: e.last_login.elapsed().as_millis() as u64,
            })
            .collect();
        postcard::to_stdvec(&carried)
    }

    /// Takes the entries a slot arrived with (before it serves).
    pub fn adopt(&self, slot: Slot, raw: &[u8]) -> Result<(), postcard::Error> {
        let carried: Vec<Carried> = postcard::from_bytes(raw)?;
        let now = Instant::now();
        let mut users = self.lock();
        let entries = carried.into_iter().filter(|c| partition::user(c.user) == slot).map(|c| {
            let last_login = now.checked_sub(Duration::from_millis(c.since_ms)).unwrap_or(now);
            (c.user, Entry { leases: c.leases, last_login })
        });
        users.by_slot.insert(slot, entries.collect());
        users.carried.insert(slot);
        Ok(())
    }

    /// Whether the slot arrived with its entries (asked once, when it arrives).
    pub fn take_carried(&self, slot: Slot) -> bool {
        self.lock().carried.remove(&slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(device_limit: usize, devicetype_limit: usize, auth_min: Duration) -> DeviceLimits {
        DeviceLimits { device_limit, devicetype_limit, auth_min }
    }

    fn lease(node: u64, conn: u64, termtyp: Option<i8>) -> Lease {
        Lease { node: NodeId(node), generation: 1, conn, termtyp }
    }

    fn user() -> UserId {
        UserId::parse("YpzSs1zsa8j").unwrap()
    }

    fn conns(d: &Entries) -> Vec<(u64, u64)> {
        d.sessions(user(), |_| true).iter().map(|l| (l.node.0, l.conn)).collect()
    }

    #[test]
    fn device_limit_is_exact_across_nodes_and_kicks_oldest_after_auth_min() {
        let quick = Entries::new(limits(2, 5, Duration::from_secs(60)));
        quick.admit(user(), lease(1, 1, None), |_| true).unwrap();
        quick.admit(user(), lease(2, 1, None), |_| true).unwrap();
        assert_eq!(quick.admit(user(), lease(3, 1, None), |_| true), Err(OverEntry), "limit 2 means 2, not 3");

        let kicking = Entries::new(limits(2, 5, Duration::ZERO));
        kicking.admit(user(), lease(1, 1, None), |_| true).unwrap();
        kicking.admit(user(), lease(2, 7, None), |_| true).unwrap();
        assert_eq!(kicking.admit(user(), lease(3, 1, None), |_| true), Ok(vec![lease(1, 1, None)]));
        assert_eq!(conns(&kicking), [(2, 7), (3, 1)]);
    }

    #[test]
    fn device_type_limit_kicks_the_same_type() {
        let d = Entries::new(limits(5, 1, Duration::ZERO));
        d.admit(user(), lease(1, 1, Some(1)), |_| true).unwrap();
        d.admit(user(), lease(2, 2, Some(2)), |_| true).unwrap();
        assert_eq!(d.admit(user(), lease(3, 3, Some(1)), |_| true), Ok(vec![lease(1, 1, Some(1))]));
        assert!(!d.leave(user(), NodeId(2), 2, |_| true));
        assert!(d.leave(user(), NodeId(3), 3, |_| true), "last session gone");
        assert!(conns(&d).is_empty());
    }

    #[test]
    fn a_slot_carries_its_entries_to_the_next_owner() {
        let old = Entries::new(limits(1, 5, Duration::from_secs(60)));
        old.admit(user(), lease(1, 1, None), |_| true).unwrap();
        let slot = partition::user(user());
        let other = Slot(slot.0.wrapping_add(1) % tim_shard::SLOTS);
        assert_eq!(
            old.carry(other).unwrap(),
            postcard::to_stdvec(&Vec::<Carried>::new()).unwrap(),
            "not another slot's"
        );
        let raw = old.carry(slot).unwrap();

        let new = Entries::new(limits(1, 5, Duration::from_secs(60)));
        new.adopt(slot, &raw).unwrap();
        assert!(new.take_carried(slot) && !new.take_carried(slot), "asked once");
        assert_eq!(conns(&new), [(1, 1)]);
        // The limits hold on the new owner, with the time since the last login kept.
        assert_eq!(new.admit(user(), lease(2, 1, None), |_| true), Err(OverEntry));
        assert!(new.adopt(slot, b"\xff\xff").is_err(), "a state that does not decode is refused");
    }

    #[test]
    fn sessions_of_a_node_that_is_gone_do_not_count() {
        let d = Entries::new(limits(1, 1, Duration::from_secs(60)));
        d.admit(user(), lease(1, 1, None), |_| true).unwrap();
        // Node 1 restarted: its old session is no limit and no session.
        let restarted = |l: &Lease| l.node != NodeId(1);
        assert_eq!(d.admit(user(), lease(2, 5, None), restarted), Ok(vec![]));
        assert_eq!(conns(&d), [(2, 5)]);
        // The end of a replaced session says nothing about the user's presence.
        assert!(!d.leave(user(), NodeId(1), 1, |_| true));
        d.forget(partition::user(user()));
        assert!(conns(&d).is_empty());
        d.restore([(user(), lease(4, 9, None))]);
        assert_eq!(conns(&d), [(4, 9)]);
    }
}
