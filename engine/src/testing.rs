//! Fixtures of the engine's unit tests.

use std::sync::Arc;

use tim_kv::{RocksStore, SealKey, StoreConfig};
use tim_shard::{Cluster, Member, NodeId, Ownership, Placement, Timeouts};

/// A user id of the tests: `n` in its high bytes.
pub fn user(n: u64) -> crate::model::ident::UserId {
    crate::model::ident::UserId::from_be_bytes((n << 8).to_be_bytes())
}

/// A node that runs alone on an in-memory store and owns every slot.
pub async fn standalone() -> Arc<Cluster> {
    let store = Arc::new(
        RocksStore::open(&StoreConfig::in_memory(), SealKey::new(&[3; 32]), crate::model::tables::ALL).unwrap(),
    );
    let ownership = Arc::new(Ownership::load(store.clone()).unwrap());
    ownership.bootstrap(Vec::new()).await.unwrap();
    let node = NodeId(1);
    let placement = Placement::new([Member { id: node, weight: 1 }], 1);
    Arc::new(Cluster::new(node, 1, store, ownership, placement, None, Timeouts::default()).unwrap())
}
