//! The store against real RocksDB files in a temp dir.
// Test code: a failed unwrap or assertion is a failed test, which is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bytes::Bytes;
use tim_kv::{
    Batch, ColumnDef, Cursor, RocksStore, Row, RowId, SealKey, Slot, Store, StoreConfig, StoreError, TableDef,
};

const MSG: TableDef = TableDef {
    name: "timmessage",
    columns: &[ColumnDef::indexed("chatid"), ColumnDef::plain("fid"), ColumnDef::sealed("stanza")],
};
const USER: TableDef = TableDef { name: "timuser", columns: &[ColumnDef::unique("uuid"), ColumnDef::plain("pwd")] };
const KEY: [u8; 32] = [42; 32];

fn open(dir: &std::path::Path) -> RocksStore {
    RocksStore::open(&StoreConfig::new(dir), SealKey::new(&KEY), &[MSG, USER]).unwrap()
}

fn msg(chat: &[u8], body: &str) -> Row {
    let mut row = Row::new(3);
    row.set(0, Bytes::copy_from_slice(chat))
        .set(1, Bytes::from_static(b"f"))
        .set(2, Bytes::copy_from_slice(body.as_bytes()));
    row
}

fn bodies(rows: &[(RowId, Row)]) -> Vec<String> {
    rows.iter().map(|(_, r)| String::from_utf8(r.get(2).unwrap().to_vec()).unwrap()).collect()
}

#[tokio::test]
async fn index_paging_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t = store.table("timmessage").unwrap();
    let slot = Slot(9);
    let mut ids = Vec::new();
    for i in 0..25 {
        let mut b = Batch::new();
        b.insert(t, slot, msg(b"chat-a", &format!("a{i}")));
        b.insert(t, slot, msg(b"chat-a\0", &format!("x{i}"))); // a value that extends "chat-a"
        let got = store.write(b).await.unwrap();
        ids.push(got[0]);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase");
    assert!(ids.iter().all(|id| id.slot() == slot && id.0 < 1 << 53));

    let first = store.page(t, slot, 0, b"chat-a", Cursor::OLDEST, 10).unwrap();
    assert_eq!(bodies(&first), (0..10).map(|i| format!("a{i}")).collect::<Vec<_>>());
    let next = store.page(t, slot, 0, b"chat-a", Cursor::Asc(RowId(first[9].0 .0 + 1)), 100).unwrap();
    assert_eq!(next.len(), 15);

    let newest = store.page(t, slot, 0, b"chat-a", Cursor::NEWEST, 10).unwrap();
    assert_eq!(bodies(&newest), (15..25).rev().map(|i| format!("a{i}")).collect::<Vec<_>>());
    // Desc cursor is inclusive.
    let from = newest[9].0;
    let older = store.page(t, slot, 0, b"chat-a", Cursor::Desc(from), 100).unwrap();
    assert_eq!(older.len(), 16);
    assert_eq!(older[0].0, from);
    // Other slots and values are separate.
    assert!(store.page(t, Slot(10), 0, b"chat-a", Cursor::OLDEST, 10).unwrap().is_empty());
    assert!(store.page(t, slot, 0, b"chat", Cursor::OLDEST, 10).unwrap().is_empty());
    assert_eq!(store.find(t, slot, 0, b"chat-a").unwrap().unwrap().0, ids[0]);
    // Only indexed columns can be paged.
    assert!(matches!(store.page(t, slot, 1, b"f", Cursor::OLDEST, 1), Err(StoreError::UnknownColumn { .. })));
}

#[tokio::test]
async fn update_delete_and_unique() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let u = store.table("timuser").unwrap();
    let slot = Slot(1);
    let mut row = Row::new(2);
    row.set(0, Bytes::from_static(b"alice")).set(1, Bytes::from_static(b"h1"));
    let id = store
        .write({
            let mut b = Batch::new();
            b.insert(u, slot, row.clone());
            b
        })
        .await
        .unwrap()[0];
    // A second row with the same unique value fails, and so does the whole batch with it.
    let mut dup = Batch::new();
    let mut other = Row::new(2);
    other.set(0, Bytes::from_static(b"bob"));
    dup.insert(u, slot, other.clone()).insert(u, slot, row.clone());
    assert_eq!(store.write(dup).await, Err(StoreError::Duplicate { table: "timuser", column: "uuid" }));
    assert!(store.find(u, slot, 0, b"bob").unwrap().is_none(), "failed batch left nothing");
    // Same value in another slot is another key space.
    let mut b = Batch::new();
    b.insert(u, Slot(2), row.clone());
    store.write(b).await.unwrap();

    // Partial update keeps other columns and moves the index entry.
    let mut b = Batch::new();
    b.update(u, id, vec![(0, Some(Bytes::from_static(b"alice2")))]);
    store.write(b).await.unwrap();
    let got = store.get(u, id).unwrap().unwrap();
    assert_eq!(got.get(1).unwrap().as_ref(), b"h1");
    assert!(store.find(u, slot, 0, b"alice").unwrap().is_none());
    assert_eq!(store.find(u, slot, 0, b"alice2").unwrap().unwrap().0, id);
    // The freed value can be taken again, in the same batch that frees it.
    let mut b = Batch::new();
    b.delete(u, id).insert(u, slot, {
        let mut r = Row::new(2);
        r.set(0, Bytes::from_static(b"alice2"));
        r
    });
    let new_id = store.write(b).await.unwrap()[0];
    assert!(store.get(u, id).unwrap().is_none());
    assert_eq!(store.find(u, slot, 0, b"alice2").unwrap().unwrap().0, new_id);
    // Deleting a missing row is fine; updating one is NotFound.
    let mut b = Batch::new();
    b.delete(u, RowId::new(slot, 999));
    store.write(b).await.unwrap();
    let mut b = Batch::new();
    b.update(u, RowId::new(slot, 999), vec![]);
    assert!(matches!(store.write(b).await, Err(StoreError::NotFound { .. })));
}

#[tokio::test]
async fn concurrent_writers_get_distinct_increasing_ids() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(dir.path()));
    let t = store.table("timmessage").unwrap();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..50 {
                let mut b = Batch::new();
                b.insert(t, Slot(3), msg(b"c", &format!("{w}-{i}")));
                ids.push(store.write(b).await.unwrap()[0]);
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let ids = task.await.unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "each writer sees its ids increase");
        all.extend(ids);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 400);
    assert_eq!(store.page(t, Slot(3), 0, b"c", Cursor::OLDEST, 1000).unwrap().len(), 400);
}

#[tokio::test]
async fn reopen_keeps_rows_and_continues_ids() {
    let dir = tempfile::tempdir().unwrap();
    let t;
    let last;
    {
        let store = open(dir.path());
        t = store.table("timmessage").unwrap();
        let mut b = Batch::new();
        b.insert(t, Slot(5), msg(b"c", "one")).insert(t, Slot(5), msg(b"c", "two"));
        last = store.write(b).await.unwrap()[1];
    }
    let store = open(dir.path());
    assert_eq!(store.table("timmessage"), Some(t), "table ids are stable");
    assert_eq!(bodies(&store.page(t, Slot(5), 0, b"c", Cursor::OLDEST, 10).unwrap()), ["one", "two"]);
    let mut b = Batch::new();
    b.insert(t, Slot(5), msg(b"c", "three"));
    let three = store.write(b).await.unwrap()[0];
    assert!(three > last, "ids are never reissued");
    // Not even when the newest row is gone before a restart.
    let mut b = Batch::new();
    b.delete(t, three);
    store.write(b).await.unwrap();
    drop(store);
    let store = open(dir.path());
    let mut b = Batch::new();
    b.insert(t, Slot(5), msg(b"c", "four"));
    assert!(store.write(b).await.unwrap()[0] > three, "a deleted newest id is not reissued");
    // A table stored with other columns is refused.
    drop(store);
    const CHANGED: TableDef = TableDef { name: "timmessage", columns: &[ColumnDef::plain("other")] };
    assert!(matches!(
        RocksStore::open(&StoreConfig::new(dir.path()), SealKey::new(&KEY), &[CHANGED]),
        Err(StoreError::SchemaMismatch(_))
    ));
}

#[tokio::test]
async fn an_insert_can_hold_the_id_of_an_earlier_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t, u) = (store.table("timmessage").unwrap(), store.table("timuser").unwrap());
    let mut b = Batch::new();
    b.insert(t, Slot(2), msg(b"c", "first"));
    assert_eq!(b.inserts(), 1);
    let mut user = Row::new(2);
    user.set(0, Bytes::from_static(b"u1"));
    b.insert_referring(u, Slot(7), user, 1, 0);
    let ids = store.write(b).await.unwrap();
    let row = store.get(u, ids[1]).unwrap().unwrap();
    assert_eq!(row.get(1).unwrap().as_ref(), ids[0].to_be_bytes());
    // A reference to an insert that does not precede it fails the whole batch.
    let mut b = Batch::new();
    b.insert(t, Slot(2), msg(b"c", "second"));
    b.insert_referring(u, Slot(7), Row::new(2), 1, 1);
    assert_eq!(store.write(b).await, Err(StoreError::NoSuchInsert(1)));
    assert_eq!(store.page(t, Slot(2), 0, b"c", Cursor::OLDEST, 10).unwrap().len(), 1);
}

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let bytes = std::fs::read(e.unwrap().path()).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

#[tokio::test]
async fn sealed_columns_are_not_plaintext_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t = store.table("timmessage").unwrap();
    let mut row = msg(b"visible-chat-marker", "sealed-body-marker-0123456789");
    row.set(1, Bytes::from_static(b"plain-fid-marker"));
    let mut b = Batch::new();
    b.insert(t, Slot(1), row);
    let id = store.write(b).await.unwrap()[0];
    store.flush().unwrap();
    assert!(files_contain(dir.path(), b"plain-fid-marker"), "the scan sees unsealed columns");
    assert!(!files_contain(dir.path(), b"sealed-body-marker"), "sealed column leaked to disk");
    assert_eq!(bodies(&[(id, store.get(t, id).unwrap().unwrap())]), ["sealed-body-marker-0123456789"]);
    drop(store);
    // Another key cannot open it.
    let other = RocksStore::open(&StoreConfig::new(dir.path()), SealKey::new(&[1; 32]), &[MSG, USER]).unwrap();
    assert!(matches!(other.get(t, id), Err(StoreError::Unseal { .. })));
}
