use tim_kv::{Batch, ColumnDef, Cursor, RocksStore, Row, SealKey, StoreConfig, TableDef};
use tokio::sync::oneshot;

use super::*;

const T: TableDef = TableDef { id: 1, name: "t", columns: &[ColumnDef::indexed("k")] };
const A: NodeId = NodeId(0xA);
const B: NodeId = NodeId(0xB);

fn open(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(RocksStore::open(&StoreConfig::new(dir), SealKey::new(&[1; 32]), &[T]).unwrap())
}

async fn put(store: &Arc<dyn Store>, slot: Slot, value: &'static [u8]) {
    let t = store.table("t").unwrap();
    let mut row = Row::new(1);
    row.set(0, bytes::Bytes::from_static(value));
    let mut batch = Batch::new(slot);
    batch.insert(t, row);
    store.write(batch).await.unwrap();
}

fn values(store: &Arc<dyn Store>, slot: Slot, value: &[u8]) -> usize {
    let t = store.table("t").unwrap();
    store.ids(t, slot, 0, value, Cursor::OLDEST, 100).unwrap().len()
}

/// Copies a slot from `from` to `to` the way a hand-over does, in parts of ~`part` bytes.
async fn copy(from: &Arc<dyn Store>, to: &Ownership, slot: Slot, epoch: u64, part: usize) -> bool {
    let copy_id = rand::random();
    let mut parts = Vec::new();
    from.export_slot(slot, part, &mut |entries| {
        parts.push(entries);
        true
    })
    .unwrap();
    let count = parts.len();
    for (i, entries) in parts.into_iter().enumerate() {
        let data = tim_kv::SlotDelta { entries, removed: vec![] };
        let part = Part { copy: copy_id, epoch, first: i == 0, last: i + 1 == count, data };
        if !to.receive(slot, part, || {}).await.unwrap() {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn a_new_node_serves_nothing_until_it_bootstraps() {
    let dir = tempfile::tempdir().unwrap();
    let own = Ownership::load(open(dir.path())).unwrap();
    assert!(own.is_empty());
    assert_eq!(own.serve(Slot(3), async { 1 }).await, Err(Refusal::NotOwner { slot: 3, moved_to: None }));
    own.bootstrap(Vec::new()).await.unwrap();
    assert_eq!(own.serve(Slot(3), async { 1 }).await, Ok(1));
    assert_eq!(own.owned().len(), usize::from(SLOTS));
    assert_eq!(own.owned_set().len(), usize::from(SLOTS));
    assert!(own.bootstrap(Vec::new()).await.is_err(), "a node that holds slots never bootstraps again");
}

/// The whole hand-over between two stores, with a request in flight at the fence, a request
/// during the switch on both sides, and the old owner restarted afterwards.
#[tokio::test]
async fn a_hand_over_leaves_exactly_one_owner_at_every_step() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (store_a, store_b) = (open(dir_a.path()), open(dir_b.path()));
    let a = Arc::new(Ownership::load(store_a.clone()).unwrap());
    let b = Ownership::load(store_b.clone()).unwrap();
    a.bootstrap(Vec::new()).await.unwrap();
    let slot = Slot(7);
    for _ in 0..20 {
        put(&store_a, slot, b"row").await;
    }

    // A request in flight on A when the hand-over starts: the fence waits for it.
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let in_flight = {
        let (a, store_a) = (a.clone(), store_a.clone());
        tokio::spawn(async move {
            a.serve(slot, async {
                let _ = started_tx.send(());
                let _ = release_rx.await;
                put(&store_a, slot, b"late").await;
            })
            .await
        })
    };
    started_rx.await.unwrap();
    let fence = {
        let a = a.clone();
        tokio::spawn(async move { a.fence(slot, B).await })
    };
    // The fence task gets every chance to run (single-threaded test runtime).
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!fence.is_finished(), "the fence waits for the request in flight");
    release_tx.send(()).unwrap();
    assert_eq!(in_flight.await.unwrap(), Ok(()));
    let epoch = fence.await.unwrap().unwrap();
    assert_eq!(epoch, 2);
    let all: SlotSet = (0..SLOTS).map(Slot).collect();
    assert_eq!(all.difference(&a.owned_set()).collect::<Vec<_>>(), [slot], "a fenced slot is not owned");
    // Fenced: A refuses; B does not serve it yet.
    assert_eq!(a.serve(slot, async {}).await, Err(Refusal::Moving { slot: 7 }));
    assert_eq!(b.serve(slot, async {}).await, Err(Refusal::NotOwner { slot: 7, moved_to: None }));
    assert!(a.serve(Slot(8), async {}).await.is_ok(), "other slots are served");

    // The copy, in small parts; B serves once the last part is in, with the late write.
    assert!(copy(&store_a, &b, slot, epoch, 64).await);
    assert_eq!(b.serve(slot, async {}).await, Ok(()));
    assert_eq!(values(&store_b, slot, b"row"), 20);
    assert_eq!(values(&store_b, slot, b"late"), 1, "the write that finished before the fence moved too");
    // A copy that is repeated (the sender missed the answer) changes nothing.
    assert!(!copy(&store_a, &b, slot, epoch, 64).await);
    // A paused between the last part and its switch: B serves, A still refuses writes.
    let t = store_a.table("t").unwrap();
    let mut row = Row::new(1);
    row.set(0, bytes::Bytes::from_static(b"paused"));
    let write = a.serve(slot, async {
        let mut batch = Batch::new(slot);
        batch.insert(t, row);
        store_a.write(batch).await
    });
    assert_eq!(write.await.map(|_| ()), Err(Refusal::Moving { slot: 7 }));
    assert_eq!(values(&store_a, slot, b"paused"), 0);

    a.give(slot, B, epoch).await.unwrap();
    assert_eq!(a.serve(slot, async {}).await, Err(Refusal::NotOwner { slot: 7, moved_to: Some((B, epoch)) }));
    assert_eq!(values(&store_a, slot, b"row"), 0, "the old owner's copy is deleted");

    // The old owner restarted (or resumed after a pause): its records still refuse the slot.
    drop(a);
    drop(store_a);
    let store_a = open(dir_a.path());
    let a = Ownership::load(store_a).unwrap();
    assert_eq!(a.state(slot), Some(SlotState::Given { to: B, epoch }));
    assert!(a.serve(slot, async {}).await.is_err());
    assert_eq!(a.serve(Slot(8), async { 8 }).await, Ok(8));
    let b = Ownership::load(store_b).unwrap();
    assert_eq!(b.state(slot), Some(SlotState::Owned { epoch }));
    assert_eq!(b.owned(), vec![(slot, epoch)]);
    assert_eq!(b.owned_set().difference(&SlotSet::default()).collect::<Vec<_>>(), [slot]);
    assert_eq!(all.difference(&a.owned_set()).collect::<Vec<_>>(), [slot], "a given slot is not owned");
}

/// Slots held together (one write to several slots): a fence of any of them waits for the
/// holder, what the holder runs on them does not take their guards again (a fence queued
/// behind the holder would make it wait for itself), a holder never waits for more guards
/// behind a fence (no cycle of waits), and a fenced slot refuses them all.
#[tokio::test]
async fn slots_held_together_are_fenced_only_after_their_holder_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(Ownership::load(open(dir.path())).unwrap());
    a.bootstrap(Vec::new()).await.unwrap();
    let fence_of = |slot| {
        let a = a.clone();
        tokio::spawn(async move { a.fence(Slot(slot), B).await })
    };
    // Slot 7 is held by another holder (outside this task's scope), with a fence queued on it.
    let other = a.hold(&[Slot(7)]).await.unwrap();
    let fence_7 = fence_of(7);
    let held = a.hold(&[Slot(9), Slot(4), Slot(9)]).await.unwrap();
    let fence_4 = fence_of(4);
    held.run(async {
        // One thread: the fence tasks run up to their waits while this task yields.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!fence_4.is_finished() && !fence_7.is_finished(), "the fences wait for the holders");
        assert_eq!(a.serve(Slot(4), async { 4 }).await, Ok(4), "served under the guard held");
        assert!(a.hold(&[Slot(5)]).await.is_ok(), "a holder takes a free slot more");
        assert_eq!(a.hold(&[Slot(5), Slot(7)]).await.err(), Some(Refusal::Moving { slot: 7 }));
    })
    .await
    .unwrap();
    assert_eq!(fence_4.await.unwrap().unwrap(), 2);
    drop(other);
    assert_eq!(fence_7.await.unwrap().unwrap(), 2);
    assert_eq!(a.hold(&[Slot(9), Slot(4)]).await.err(), Some(Refusal::Moving { slot: 4 }));
    assert!(a.hold(&[Slot(9), Slot(5)]).await.is_ok(), "other slots are held");
}

#[tokio::test]
async fn a_hand_over_resumed_after_a_restart_keeps_its_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let own = Ownership::load(store.clone()).unwrap();
    own.bootstrap(Vec::new()).await.unwrap();
    let epoch = own.fence(Slot(1), B).await.unwrap();
    drop(own);
    let own = Ownership::load(store).unwrap();
    assert_eq!(own.fence(Slot(1), B).await.unwrap(), epoch, "the same hand-over");
    assert!(own.fence(Slot(1), A).await.is_err(), "not towards another node");
    assert!(own.give(Slot(2), B, 2).await.is_err(), "only a fenced slot is given");
}

/// An empty part.
fn part(copy: u64, epoch: u64, first: bool, last: bool) -> Part {
    Part { copy, epoch, first, last, ..Part::default() }
}

/// Parts of an earlier attempt that arrive late, and parts older than a later hand-over, are
/// refused: a slow network cannot make a node the owner of a slot that moved on.
#[tokio::test]
async fn late_parts_cannot_make_a_second_owner() {
    let (dir_b, dir_c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (store_b, store_c) = (open(dir_b.path()), open(dir_c.path()));
    let (b, c) = (Ownership::load(store_b.clone()).unwrap(), Ownership::load(store_c).unwrap());
    let slot = Slot(9);
    // Attempt 1 sends its first part, then the sender starts over (attempt 2).
    assert!(b.receive(slot, part(1, 2, true, false), || {}).await.unwrap());
    assert!(b.receive(slot, part(2, 2, true, false), || {}).await.unwrap());
    // Attempt 1's last part arrives late: refused, B is no owner.
    assert!(matches!(b.receive(slot, part(1, 2, false, true), || {}).await, Err(OwnershipError::StalePart(9))));
    assert_eq!(b.state(slot), None);
    assert!(b.receive(slot, part(2, 2, false, true), || {}).await.unwrap());
    assert_eq!(b.state(slot), Some(SlotState::Owned { epoch: 2 }));
    // B hands the slot to C at epoch 3.
    assert_eq!(b.fence(slot, NodeId(0xC)).await.unwrap(), 3);
    assert!(c.receive(slot, part(7, 3, true, true), || {}).await.unwrap());
    b.give(slot, NodeId(0xC), 3).await.unwrap();
    // A repeat of the epoch-2 hand-over reaches B again: it moved on, nothing changes.
    assert!(!b.receive(slot, part(2, 2, true, true), || {}).await.unwrap());
    assert_eq!(b.state(slot), Some(SlotState::Given { to: NodeId(0xC), epoch: 3 }));
    assert_eq!(c.state(slot), Some(SlotState::Owned { epoch: 3 }));
}
