//! Where the slots are, as this node knows it: a route to the owner of each slot it does not
//! own (from the owners' own lists, corrected by refusals), and the newest owner and epoch it
//! ever learned for each slot. The newest is never forgotten and is kept in the store, so a
//! removal attributes a dead member's slots from what the live members learned, and a node
//! restarted from an old copy of its data dir learns from its peers what moved since.

use std::collections::HashMap;
use std::sync::Mutex;

use tim_kv::{RawWrite, Slot, Store, StoreError};

use crate::placement::NodeId;
use crate::SLOTS;

/// The store record of the newest owners.
const RECORD: &str = "newest_owners";

pub(crate) struct Routes {
    table: Mutex<Table>,
}

struct Table {
    /// The route to each slot not owned here.
    current: HashMap<Slot, (NodeId, u64)>,
    /// The newest owner and epoch learned of each slot.
    newest: Vec<Option<(NodeId, u64)>>,
    /// Whether `newest` changed since it was kept.
    dirty: bool,
}

impl Routes {
    /// The routes of a node that starts: the newest owners it kept, no route yet.
    pub(crate) fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let mut newest = vec![None; usize::from(SLOTS)];
        if let Some(raw) = store.local(RECORD)? {
            let kept: Vec<(u16, NodeId, u64)> =
                postcard::from_bytes(&raw).map_err(|_| StoreError::Corrupt { table: RECORD, id: 0 })?;
            for (slot, node, epoch) in kept {
                if let Some(entry) = newest.get_mut(usize::from(slot)) {
                    *entry = Some((node, epoch));
                }
            }
        }
        Ok(Self { table: Mutex::new(Table { current: HashMap::new(), newest, dirty: false }) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record that forgets every newest owner (a node founding a cluster anew).
    pub(crate) fn cleared() -> (String, Option<Vec<u8>>) {
        (RECORD.to_owned(), None)
    }

    /// `node` owns `slot` at `epoch`: the route unless a newer one is known.
    pub(crate) fn learn(&self, slot: Slot, node: NodeId, epoch: u64) {
        let mut table = self.lock();
        let known = table.current.entry(slot).or_insert((node, epoch));
        if epoch >= known.1 {
            *known = (node, epoch);
        }
        if let Some(newest) = table.newest.get_mut(usize::from(slot.0)) {
            if newest.is_none_or(|(_, at)| epoch > at) {
                *newest = Some((node, epoch));
                table.dirty = true;
            }
        }
    }

    /// Forgets the route to `slot` (it led nowhere); the newest owner stays known.
    pub(crate) fn forget(&self, slot: Slot) {
        self.lock().current.remove(&slot);
    }

    pub(crate) fn get(&self, slot: Slot) -> Option<(NodeId, u64)> {
        self.lock().current.get(&slot).copied()
    }

    /// The newest owner and epoch learned of every slot it learned one of.
    pub(crate) fn newest(&self) -> Vec<(u16, NodeId, u64)> {
        listed(&self.lock().newest)
    }

    /// Keeps the newest owners in the store, when they changed.
    pub(crate) async fn save(&self, store: &dyn Store) -> Result<(), StoreError> {
        let raw = {
            let mut table = self.lock();
            if !table.dirty {
                return Ok(());
            }
            table.dirty = false;
            postcard::to_stdvec(&listed(&table.newest)).map_err(|_| StoreError::Corrupt { table: RECORD, id: 0 })?
        };
        let saved = store.write_raw(RawWrite::local(vec![(RECORD.to_owned(), Some(raw))])).await;
        if saved.is_err() {
            self.lock().dirty = true;
        }
        saved.map(drop)
    }
}

/// The slots with a newest owner, listed.
fn listed(newest: &[Option<(NodeId, u64)>]) -> Vec<(u16, NodeId, u64)> {
    (0..SLOTS).zip(newest).filter_map(|(slot, n)| n.map(|(node, epoch)| (slot, node, epoch))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_newest_owners_outlive_routes_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            tim_kv::RocksStore::open(&tim_kv::StoreConfig::new(dir.path()), tim_kv::SealKey::new(&[1; 32]), &[])
                .unwrap();
        let routes = Routes::load(&store).unwrap();
        routes.learn(Slot(3), NodeId(1), 5);
        routes.learn(Slot(3), NodeId(2), 4);
        assert_eq!(routes.get(Slot(3)), Some((NodeId(1), 5)), "an older route loses");
        routes.forget(Slot(3));
        assert_eq!(routes.get(Slot(3)), None);
        routes.save(&store).await.unwrap();
        let again = Routes::load(&store).unwrap();
        assert_eq!(again.newest(), vec![(3, NodeId(1), 5)]);
        assert_eq!(again.get(Slot(3)), None, "routes are found anew");
    }
}
