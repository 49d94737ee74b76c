//! The store against real RocksDB files in a temp dir.
// Test code: a failed unwrap or assertion is a failed test, which is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bytes::Bytes;
use tim_kv::{
    Batch, ColumnDef, Cursor, ExportedRow, RawEntry, RawWrite, Region, RocksStore, Row, RowId, SealKey, Slot,
    SlotDelta, Store, StoreConfig, StoreError, TableDef,
};

const MSG: TableDef = TableDef {
    id: 1,
    name: "timmessage",
    columns: &[ColumnDef::indexed("chatid"), ColumnDef::plain("fid"), ColumnDef::sealed("stanza")],
};
const USER: TableDef =
    TableDef { id: 2, name: "timuser", columns: &[ColumnDef::unique("uuid"), ColumnDef::plain("pwd")] };
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
        let mut b = Batch::new(slot);
        b.insert(t, msg(b"chat-a", &format!("a{i}")));
        b.insert(t, msg(b"chat-a\0", &format!("x{i}"))); // a value that extends "chat-a"
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
async fn look_ups_by_value_are_exact_across_table_files() {
    // Index filters hold the value part of each key: every look-up by value (both directions,
    // a value that is none's, the unique check) and the scan of the slot must still see
    // exactly what was written, whether it sits in a memtable or in one of several files.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t, u) = (store.table("timmessage").unwrap(), store.table("timuser").unwrap());
    let slot = Slot(5);
    let mut by_chat: std::collections::BTreeMap<String, Vec<RowId>> = Default::default();
    let rounds = 4;
    for round in 0..rounds {
        let mut b = Batch::new(slot);
        // Each round writes another two thirds of the values, so each file has some of them.
        let chats: Vec<String> = (0..60).filter(|v| (v + round) % 3 != 0).map(|v| format!("chat-{v}")).collect();
        for chat in &chats {
            b.insert(t, msg(chat.as_bytes(), &format!("{round}")));
        }
        let mut user = Row::new(2);
        user.set(0, Bytes::from(format!("user-number-{round}")));
        b.insert(u, user);
        let ids = store.write(b).await.unwrap();
        for (chat, id) in chats.iter().zip(&ids) {
            by_chat.entry(chat.clone()).or_default().push(*id);
        }
        if round + 1 < rounds {
            store.flush().unwrap(); // the last round stays in the memtable
        }
    }
    let ids_from = |chat: &str, cursor: Cursor| -> Vec<RowId> {
        store.page(t, slot, 0, chat.as_bytes(), cursor, 100).unwrap().into_iter().map(|(id, _)| id).collect()
    };
    for (chat, ids) in &by_chat {
        assert_eq!(&ids_from(chat, Cursor::OLDEST), ids, "{chat}, oldest first");
        let newest = ids_from(chat, Cursor::NEWEST);
        assert_eq!(newest, ids.iter().rev().copied().collect::<Vec<_>>(), "{chat}, newest first");
        let from_second = ids_from(chat, Cursor::Asc(ids[1]));
        assert_eq!(from_second.len(), ids.len() - 1, "{chat} from its second row");
    }
    assert!(store.page(t, slot, 0, b"chat-60", Cursor::NEWEST, 10).unwrap().is_empty());
    assert!(store.page(t, slot, 0, b"chat-1", Cursor::NEWEST, 10).unwrap().len() > 1, "positive control");
    // Each user's value is taken, whether in the oldest file or in the memtable. (The values
    // are long enough that the key's value part could be filtered wrongly.)
    for round in 0..rounds {
        let mut b = Batch::new(slot);
        let mut user = Row::new(2);
        user.set(0, Bytes::from(format!("user-number-{round}")));
        b.insert(u, user);
        assert_eq!(
            store.write(b).await,
            Err(StoreError::Duplicate { table: "timuser", column: "uuid" }),
            "user-{round}"
        );
    }
    // The slot's scan sees every index entry of every value.
    let entries = slot_entries(&store, slot);
    let index_entries = entries.iter().filter(|e| e.region == Region::Idx).count();
    assert_eq!(index_entries, by_chat.values().map(Vec::len).sum::<usize>() + rounds);
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
            let mut b = Batch::new(slot);
            b.insert(u, row.clone());
            b
        })
        .await
        .unwrap()[0];
    // A second row with the same unique value fails, and so does the whole batch with it.
    let mut dup = Batch::new(slot);
    let mut other = Row::new(2);
    other.set(0, Bytes::from_static(b"bob"));
    dup.insert(u, other.clone()).insert(u, row.clone());
    assert_eq!(store.write(dup).await, Err(StoreError::Duplicate { table: "timuser", column: "uuid" }));
    assert!(store.find(u, slot, 0, b"bob").unwrap().is_none(), "failed batch left nothing");
    // Same value in another slot is another key space.
    let mut b = Batch::new(Slot(2));
    b.insert(u, row.clone());
    store.write(b).await.unwrap();

    // Partial update keeps other columns and moves the index entry.
    let mut b = Batch::new(id.slot());
    b.update(u, id, vec![(0, Some(Bytes::from_static(b"alice2")))]);
    store.write(b).await.unwrap();
    let got = store.get(u, id).unwrap().unwrap();
    assert_eq!(got.get(1).unwrap().as_ref(), b"h1");
    assert!(store.find(u, slot, 0, b"alice").unwrap().is_none());
    assert_eq!(store.find(u, slot, 0, b"alice2").unwrap().unwrap().0, id);
    // The freed value can be taken again, in the same batch that frees it.
    let mut b = Batch::new(slot);
    b.delete(u, id).insert(u, {
        let mut r = Row::new(2);
        r.set(0, Bytes::from_static(b"alice2"));
        r
    });
    let new_id = store.write(b).await.unwrap()[0];
    assert!(store.get(u, id).unwrap().is_none());
    assert_eq!(store.find(u, slot, 0, b"alice2").unwrap().unwrap().0, new_id);
    // Deleting a missing row is fine; updating one is NotFound.
    let mut b = Batch::new(slot);
    b.delete(u, RowId::new(slot, 999));
    store.write(b).await.unwrap();
    let mut b = Batch::new(slot);
    b.update(u, RowId::new(slot, 999), vec![]);
    assert!(matches!(store.write(b).await, Err(StoreError::NotFound { .. })));
    // A batch stays inside its slot: a row of another slot fails the whole batch.
    let mut b = Batch::new(slot);
    b.insert(u, Row::new(2)).delete(u, RowId::new(Slot(slot.0 + 1), 1));
    assert_eq!(
        store.write(b).await,
        Err(StoreError::OtherSlot { slot: slot.0, id: RowId::new(Slot(slot.0 + 1), 1).0 })
    );
}

#[tokio::test]
async fn batches_of_several_slots_commit_together_and_an_insert_takes_an_earlier_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t, u) = (store.table("timmessage").unwrap(), store.table("timuser").unwrap());
    // A message in slot 3 and, in slot 7, a row that names it (the writer fills in its id).
    let mut history = Batch::new(Slot(3));
    history.insert(t, msg(b"chat", "hello"));
    let mut entry = Batch::new(Slot(7));
    entry.insert_with_id(t, msg(b"queue", "for bob"), 1, 0);
    let ids = store.write_all(vec![history, entry]).await.unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!((ids[0].slot(), ids[1].slot()), (Slot(3), Slot(7)));
    let queued = store.get(t, ids[1]).unwrap().unwrap();
    assert_eq!(queued.get(1).unwrap().as_ref(), ids[0].to_be_bytes());
    assert_eq!(bodies(&store.page(t, Slot(3), 0, b"chat", Cursor::OLDEST, 10).unwrap()), ["hello"]);

    // All or nothing: a unique value taken in slot 9 fails the rows of slot 3 with it.
    let taken = || {
        let mut row = Row::new(2);
        row.set(0, Bytes::from_static(b"alice"));
        row
    };
    let mut b = Batch::new(Slot(9));
    b.insert(u, taken());
    store.write(b).await.unwrap();
    let mut history = Batch::new(Slot(3));
    history.insert(t, msg(b"chat", "lost"));
    let mut clash = Batch::new(Slot(9));
    clash.insert(u, taken());
    assert_eq!(
        store.write_all(vec![history, clash]).await,
        Err(StoreError::Duplicate { table: "timuser", column: "uuid" })
    );
    // An id the write has not issued before the insert fails it too.
    let mut history = Batch::new(Slot(3));
    history.insert(t, msg(b"chat", "lost"));
    let mut ahead = Batch::new(Slot(7));
    ahead.insert_with_id(t, msg(b"queue", "lost"), 1, 1).insert(t, msg(b"queue", "lost"));
    assert_eq!(store.write_all(vec![history, ahead]).await, Err(StoreError::NoEarlierId { earlier: 1 }));
    assert_eq!(bodies(&store.page(t, Slot(3), 0, b"chat", Cursor::OLDEST, 10).unwrap()), ["hello"]);
    assert_eq!(bodies(&store.page(t, Slot(7), 0, b"queue", Cursor::OLDEST, 10).unwrap()), ["for bob"]);
    // The failed writes issued no ids that count: the next insert follows the first.
    let mut b = Batch::new(Slot(3));
    b.insert(t, msg(b"chat", "next"));
    assert_eq!(store.write(b).await.unwrap()[0].seq(), ids[0].seq() + 1);
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
                let mut b = Batch::new(Slot(3));
                b.insert(t, msg(b"c", &format!("{w}-{i}")));
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
        let mut b = Batch::new(Slot(5));
        b.insert(t, msg(b"c", "one")).insert(t, msg(b"c", "two"));
        last = store.write(b).await.unwrap()[1];
    }
    let store = open(dir.path());
    assert_eq!(store.table("timmessage"), Some(t), "table ids are stable");
    assert_eq!(bodies(&store.page(t, Slot(5), 0, b"c", Cursor::OLDEST, 10).unwrap()), ["one", "two"]);
    let mut b = Batch::new(Slot(5));
    b.insert(t, msg(b"c", "three"));
    let three = store.write(b).await.unwrap()[0];
    assert!(three > last, "ids are never reissued");
    // Not even when the newest row is gone before a restart.
    let mut b = Batch::new(three.slot());
    b.delete(t, three);
    store.write(b).await.unwrap();
    drop(store);
    let store = open(dir.path());
    let mut b = Batch::new(Slot(5));
    b.insert(t, msg(b"c", "four"));
    assert!(store.write(b).await.unwrap()[0] > three, "a deleted newest id is not reissued");
    // A table stored with other columns is refused.
    drop(store);
    const CHANGED: TableDef = TableDef { id: 1, name: "timmessage", columns: &[ColumnDef::plain("other")] };
    assert!(matches!(
        RocksStore::open(&StoreConfig::new(dir.path()), SealKey::new(&KEY), &[CHANGED]),
        Err(StoreError::SchemaMismatch(_))
    ));
}

/// The files of a store as a crash would leave them: copied while it is open, so the
/// write-ahead log in use is not closed (nor trimmed to what it got).
fn copy_as_crashed(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Size of the newest write-ahead log file in `dir`.
fn newest_log_len(dir: &std::path::Path) -> u64 {
    let logs = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path());
    let newest = logs.filter(|p| p.extension().is_some_and(|x| x == "log")).max().unwrap();
    std::fs::metadata(newest).unwrap().len()
}

#[tokio::test]
async fn a_reused_log_replays_only_its_own_records_after_a_crash() {
    // Spent write-ahead logs are reused. After a crash, recovery must replay what the reused
    // file got last, never the older records still behind them in the file: replayed, those
    // would bring back a deleted row and an overwritten value.
    let (dir, crashed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let slot = Slot(4);
    let store = open(dir.path());
    let t = store.table("timmessage").unwrap();
    let mut b = Batch::new(slot);
    for i in 0..200 {
        b.insert(t, msg(b"c", &format!("first {i}")));
    }
    let ids = store.write(b).await.unwrap();
    // Each round fills a log with large records and flushes, which spends it. Three rounds
    // stay under the level-0 compaction trigger, so no file changes while it is copied.
    for round in 0..3 {
        let mut b = Batch::new(slot);
        for id in &ids {
            b.update(t, *id, vec![(2, Some(Bytes::from(format!("round {round} {}", "x".repeat(500)))))]);
        }
        store.write(b).await.unwrap();
        store.flush().unwrap();
    }
    let mut b = Batch::new(slot);
    b.delete(t, ids[5]).update(t, ids[6], vec![(2, Some(Bytes::from_static(b"new")))]);
    store.write(b).await.unwrap();
    copy_as_crashed(dir.path(), crashed.path());
    drop(store);
    // Positive control: the log in use is a reused one, with a round's records (over 100 KB)
    // behind the last write's few hundred bytes.
    assert!(newest_log_len(crashed.path()) > 100_000, "the last write went to a reused log");
    let store = open(crashed.path());
    assert!(store.get(t, ids[5]).unwrap().is_none(), "the deletion holds");
    assert_eq!(store.get(t, ids[6]).unwrap().unwrap().get(2).unwrap().as_ref(), b"new");
    let kept = store.get(t, ids[7]).unwrap().unwrap();
    assert!(kept.get(2).unwrap().starts_with(b"round 2 "), "the last round holds");
    assert_eq!(store.page(t, slot, 0, b"c", Cursor::OLDEST, 1000).unwrap().len(), 199);
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
    let mut b = Batch::new(Slot(1));
    b.insert(t, row);
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

#[tokio::test]
async fn a_row_put_with_its_id_moves_the_counter_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t = store.table("timmessage").unwrap();
    let given = RowId::new(Slot(4), 500);
    let mut b = Batch::new(Slot(4));
    b.put(t, given, msg(b"c", "copied"));
    assert!(store.write(b).await.unwrap().is_empty(), "a put issues no id");
    let mut b = Batch::new(Slot(4));
    b.insert(t, msg(b"c", "next"));
    let next = store.write(b).await.unwrap()[0];
    assert!(next > given, "{next:?} after {given:?}");
    // A put over an existing row replaces it, index entries included.
    let mut b = Batch::new(Slot(4));
    b.put(t, given, msg(b"d", "replaced"));
    store.write(b).await.unwrap();
    assert_eq!(bodies(&store.page(t, Slot(4), 0, b"c", Cursor::OLDEST, 10).unwrap()), ["next"]);
    assert_eq!(bodies(&store.page(t, Slot(4), 0, b"d", Cursor::OLDEST, 10).unwrap()), ["replaced"]);
    // A restart continues after the put's id too.
    drop(store);
    let store = open(dir.path());
    let mut b = Batch::new(Slot(4));
    b.insert(t, msg(b"c", "after restart"));
    assert!(store.write(b).await.unwrap()[0] > next);
    // A put into another slot than the batch's is refused.
    let mut b = Batch::new(Slot(4));
    b.put(t, RowId::new(Slot(5), 1), msg(b"c", "x"));
    assert!(matches!(store.write(b).await, Err(StoreError::OtherSlot { .. })));
}

fn exported(store: &RocksStore, slot: Slot, max_bytes: usize) -> Vec<Vec<ExportedRow>> {
    let mut parts = Vec::new();
    let mut snapshots = 0;
    store
        .export_rows(slot, max_bytes, &mut || snapshots += 1, &mut |rows| {
            parts.push(rows);
            true
        })
        .unwrap();
    assert_eq!(snapshots, 1);
    parts
}

#[tokio::test]
async fn exported_rows_restore_into_another_store_once() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(dir_a.path()), open(dir_b.path()));
    let (m, u) = (a.table("timmessage").unwrap(), a.table("timuser").unwrap());
    for i in 0..50 {
        let mut batch = Batch::new(Slot(9));
        batch.insert(m, msg(b"chat", &format!("body {i}")));
        a.write(batch).await.unwrap();
    }
    let mut batch = Batch::new(Slot(9));
    batch.insert(u, Row::new(2).set(0, Bytes::from_static(b"alice")).set(1, Bytes::from_static(b"pw")).clone());
    a.write(batch).await.unwrap();
    let mut other_slot = Batch::new(Slot(10));
    other_slot.insert(m, msg(b"chat", "elsewhere"));
    a.write(other_slot).await.unwrap();

    let parts = exported(&a, Slot(9), 512);
    assert!(parts.len() > 2, "small parts: {}", parts.len());
    let rows: Vec<ExportedRow> = parts.into_iter().flatten().collect();
    assert_eq!(rows.len(), 51, "the slot's rows and no other slot's");
    assert_eq!(rows[0].row.get(2).unwrap(), &Bytes::from_static(b"body 0"), "sealed columns come opened");

    let restore = |rows: &[ExportedRow]| {
        let mut batch = Batch::new(Slot(9));
        for r in rows {
            batch.restore(r.table, r.id, r.row.clone());
        }
        b.write(batch)
    };
    assert_eq!(restore(&rows).await.unwrap().len(), 51, "every row written the first time");
    assert!(restore(&rows).await.unwrap().is_empty(), "nothing written the second time");
    assert_eq!(
        bodies(&b.page(m, Slot(9), 0, b"chat", Cursor::OLDEST, 100).unwrap()),
        bodies(&a.page(m, Slot(9), 0, b"chat", Cursor::OLDEST, 100).unwrap())
    );
    assert_eq!(exported(&b, Slot(9), 1 << 20).concat(), rows, "the copy exports as the original");

    // Ids go on after the restored ones.
    let mut batch = Batch::new(Slot(9));
    batch.insert(m, msg(b"chat", "new"));
    assert!(b.write(batch).await.unwrap()[0] > rows[49].id);

    // Another row at a restored id is refused, as is a second row with a unique value, and
    // the refused batch writes nothing.
    let mut changed = rows[3].clone();
    changed.row.set(2, Bytes::from_static(b"changed"));
    let mut batch = Batch::new(Slot(9));
    batch.restore(m, RowId::new(Slot(9), 900), msg(b"chat", "fresh")).restore(changed.table, changed.id, changed.row);
    assert!(matches!(b.write(batch).await, Err(StoreError::Occupied { .. })));
    assert!(b.get(m, RowId::new(Slot(9), 900)).unwrap().is_none(), "the batch is atomic");
    let mut batch = Batch::new(Slot(9));
    batch.restore(u, RowId::new(Slot(9), 77), rows[50].row.clone());
    assert!(matches!(b.write(batch).await, Err(StoreError::Duplicate { .. })));

    // A consumer that stops early gets no more parts.
    let mut seen = 0;
    a.export_rows(Slot(9), 512, &mut || {}, &mut |_| {
        seen += 1;
        false
    })
    .unwrap();
    assert_eq!(seen, 1);
}

#[tokio::test]
async fn a_slot_moves_between_stores_in_chunks() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(dir_a.path()), open(dir_b.path()));
    let t = a.table("timmessage").unwrap();
    let mut last = RowId(0);
    for i in 0..50 {
        for slot in [Slot(3), Slot(4)] {
            let mut batch = Batch::new(slot);
            batch.insert(t, msg(b"chat", &format!("m{i}")));
            let id = a.write(batch).await.unwrap()[0];
            if slot == Slot(3) {
                last = id;
            }
        }
    }
    // Leftovers of an earlier, broken copy in the receiver are cleared by the first chunk.
    let mut junk = Batch::new(Slot(3));
    junk.insert(t, msg(b"junk", "stale"));
    b.write(junk).await.unwrap();

    let mut parts = Vec::new();
    a.export_slot(Slot(3), 300, &mut |entries| {
        parts.push(entries);
        true
    })
    .unwrap();
    let chunks = parts.len();
    for (i, entries) in parts.into_iter().enumerate() {
        let local = if i + 1 == chunks { vec![("owner-3".to_string(), Some(b"me".to_vec()))] } else { vec![] };
        b.write_raw(RawWrite { slot: Slot(3), clear: i == 0, entries, removed: vec![], local }).await.unwrap();
    }
    assert!(chunks > 5, "small chunks: {chunks}");
    let want = a.page(t, Slot(3), 0, b"chat", Cursor::OLDEST, 100).unwrap();
    let got = b.page(t, Slot(3), 0, b"chat", Cursor::OLDEST, 100).unwrap();
    assert_eq!(bodies(&got), bodies(&want));
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), want.iter().map(|(id, _)| *id).collect::<Vec<_>>());
    assert!(b.page(t, Slot(3), 0, b"junk", Cursor::OLDEST, 10).unwrap().is_empty(), "leftovers cleared");
    assert!(b.page(t, Slot(4), 0, b"chat", Cursor::OLDEST, 10).unwrap().is_empty(), "other slots stay");
    assert_eq!(b.local("owner-3").unwrap().as_deref(), Some(&b"me"[..]));
    // The receiver's ids continue after the sender's.
    let mut batch = Batch::new(Slot(3));
    batch.insert(t, msg(b"chat", "on b"));
    assert!(b.write(batch).await.unwrap()[0] > last);
    // A raw entry outside the slot is refused.
    let stray = RawEntry { region: Region::Rows, key: vec![0, 4, 1], value: vec![] };
    let raw = RawWrite { slot: Slot(3), clear: false, entries: vec![stray], removed: vec![], local: vec![] };
    assert!(matches!(b.write_raw(raw).await, Err(StoreError::OtherSlot { .. })));
    // So is an index entry without a row id at its end.
    let short = RawEntry { region: Region::Idx, key: vec![0, 3, 0, 0, 0, 1, 0, 0, 7, 0, 1], value: vec![] };
    let raw = RawWrite { slot: Slot(3), clear: false, entries: vec![short], removed: vec![], local: vec![] };
    assert_eq!(b.write_raw(raw).await, Err(StoreError::ShortIndexKey { slot: 3 }));
}

/// A slot that starts over empty in a new era (adopted after its owner was lost) issues ids
/// above every id of the earlier eras, in every table, and keeps them below 2^53; its era
/// moves with it; `holds` tells a slot with keys from one without.
#[tokio::test]
async fn a_new_era_issues_ids_above_every_earlier_one() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(dir_a.path()), open(dir_b.path()));
    let (t, u) = (a.table("timmessage").unwrap(), a.table("timuser").unwrap());
    let slot = Slot(4095);
    assert!(!a.holds(slot).unwrap());
    let mut before = Vec::new();
    for i in 0..3000 {
        let mut batch = Batch::new(slot);
        batch.insert(t, msg(b"chat", &format!("m{i}")));
        before.push(a.write(batch).await.unwrap()[0]);
    }
    assert!(a.holds(slot).unwrap() && !a.holds(Slot(4094)).unwrap());
    // The slot starts over on B: empty, in era 1.
    let era = tim_kv::era_entry(slot, 1);
    b.write_raw(RawWrite { slot, clear: true, entries: vec![era], removed: vec![], local: vec![] }).await.unwrap();
    let mut batch = Batch::new(slot);
    batch.insert(t, msg(b"chat", "after")).insert(u, Row::new(2));
    let after = b.write(batch).await.unwrap();
    assert!(after[0] > *before.iter().max().unwrap(), "{:?} after {:?}", after[0], before.last());
    assert!(after.iter().all(|id| id.slot() == slot && id.0 < 1 << 53 && id.seq() >> 33 == 1));
    // The era travels with the slot's data.
    let mut parts = Vec::new();
    b.export_slot(slot, 1 << 20, &mut |entries| {
        parts.push(entries);
        true
    })
    .unwrap();
    let c_dir = tempfile::tempdir().unwrap();
    let c = open(c_dir.path());
    for entries in parts {
        c.write_raw(RawWrite { slot, clear: true, entries, removed: vec![], local: vec![] }).await.unwrap();
    }
    let mut batch = Batch::new(slot);
    batch.insert(u, Row::new(2));
    assert!(c.write(batch).await.unwrap()[0] > after[1]);
    // The last era's ids stay below 2^53.
    let last = tim_kv::era_entry(slot, RowId::MAX_ERA);
    c.write_raw(RawWrite { slot, clear: true, entries: vec![last], removed: vec![], local: vec![] }).await.unwrap();
    let mut batch = Batch::new(slot);
    batch.insert(t, msg(b"chat", "last era"));
    let id = c.write(batch).await.unwrap()[0];
    assert!(id.0 < 1 << 53 && id.slot() == slot, "{id:?}");
}

/// A clear writes a range deletion only where the slot holds keys; it finds a live key behind
/// more deleted ones than its look skips (it clears when in doubt).
#[tokio::test]
async fn a_clear_deletes_a_key_behind_many_deleted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t = store.table("timmessage").unwrap();
    let mut ids = Vec::new();
    for chunk in 0..3 {
        let mut batch = Batch::new(Slot(5));
        for i in 0..500 {
            batch.insert(t, msg(b"chat", &format!("m{chunk}-{i}")));
        }
        ids.extend(store.write(batch).await.unwrap());
    }
    let last = ids.pop().unwrap();
    let mut batch = Batch::new(Slot(5));
    for id in ids {
        batch.delete(t, id);
    }
    store.write(batch).await.unwrap();
    assert!(present(&store, t, last), "the last row is there before the clear");
    store
        .write_raw(RawWrite { slot: Slot(5), clear: true, entries: vec![], removed: vec![], local: vec![] })
        .await
        .unwrap();
    assert!(!present(&store, t, last), "the clear deleted it");
    assert!(slot_entries(&store, Slot(5)).is_empty());
    // An empty slot's clear leaves it empty, and writes to it go on.
    store
        .write_raw(RawWrite { slot: Slot(6), clear: true, entries: vec![], removed: vec![], local: vec![] })
        .await
        .unwrap();
    let mut batch = Batch::new(Slot(6));
    batch.insert(t, msg(b"chat", "after"));
    let id = store.write(batch).await.unwrap()[0];
    assert!(present(&store, t, id));
}

/// Every raw entry of a slot, in key order.
fn slot_entries(store: &RocksStore, slot: Slot) -> Vec<RawEntry> {
    let mut all = Vec::new();
    store
        .export_slot(slot, 1 << 20, &mut |entries| {
            all.extend(entries);
            true
        })
        .unwrap();
    all
}

#[tokio::test]
async fn a_slot_copied_while_written_catches_up_with_its_changes() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(dir_a.path()), open(dir_b.path()));
    let t = a.table("timmessage").unwrap();
    let mut ids = Vec::new();
    for i in 0..40 {
        let mut batch = Batch::new(Slot(3));
        batch.insert(t, msg(b"chat", &format!("m{i}")));
        ids.push(a.write(batch).await.unwrap()[0]);
    }
    a.track_changes(Slot(3)).await.unwrap();
    // The copy is read from one snapshot in small parts, on another thread; while they are
    // written to B, the slot is written: inserts, updates and deletes, some behind the copy's
    // position and some ahead of it. None of them is in the copy.
    let a = std::sync::Arc::new(a);
    let (tx, mut parts) = tokio::sync::mpsc::channel(1);
    let reader = {
        let a = a.clone();
        tokio::task::spawn_blocking(move || {
            a.export_slot(Slot(3), 200, &mut |entries| tx.blocking_send(entries).is_ok())
        })
    };
    let (mut first, mut round) = (true, 0);
    while let Some(entries) = parts.recv().await {
        b.write_raw(RawWrite { slot: Slot(3), clear: first, entries, removed: vec![], local: vec![] }).await.unwrap();
        let mut batch = Batch::new(Slot(3));
        batch.insert(t, msg(b"chat", &format!("during {round}")));
        if let Some(gone) = ids.pop().filter(|_| round < ids.len()) {
            batch.update(t, ids[round], vec![(1, Some(format!("edited {round}").into()))]);
            batch.delete(t, gone);
        }
        a.write(batch).await.unwrap();
        (first, round) = (false, round + 1);
    }
    reader.await.unwrap().unwrap();
    assert_ne!(slot_entries(&a, Slot(3)), slot_entries(&b, Slot(3)), "the copy alone is behind");
    let delta = a.changes(Slot(3)).unwrap();
    assert!(!delta.removed.is_empty() && !delta.entries.is_empty());
    b.write_raw(RawWrite {
        slot: Slot(3),
        clear: false,
        entries: delta.entries,
        removed: delta.removed,
        local: vec![],
    })
    .await
    .unwrap();
    assert_eq!(slot_entries(&a, Slot(3)), slot_entries(&b, Slot(3)), "copy plus changes is the slot");
    assert_eq!(a.changes(Slot(3)).unwrap(), SlotDelta::default(), "a take empties the record");

    // A raw write into the slot replaces what the record follows: the move must start over.
    a.write_raw(RawWrite { slot: Slot(3), clear: true, entries: vec![], removed: vec![], local: vec![] })
        .await
        .unwrap();
    assert!(matches!(a.changes(Slot(3)), Err(StoreError::ChangesLost { slot: 3 })));
    a.untrack_changes(Slot(3));
    assert!(matches!(a.changes(Slot(3)), Err(StoreError::ChangesLost { slot: 3 })), "untracked");
}

/// Whether row `id` is still there.
fn present(store: &RocksStore, t: tim_kv::TableId, id: RowId) -> bool {
    store.get(t, id).unwrap().is_some()
}

#[tokio::test]
async fn a_deferred_deletion_is_committed_before_later_writes_by_its_timer_and_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t = store.table("timmessage").unwrap();
    let mut b = Batch::new(Slot(4));
    b.insert(t, msg(b"q", "one")).insert(t, msg(b"q", "two")).insert(t, msg(b"q", "three"));
    let ids = store.write(b).await.unwrap();
    let relaxed_delete = |id: RowId| {
        let mut b = Batch::new(id.slot());
        b.relaxed().delete(t, id);
        b
    };

    // Only relaxed batches wait.
    let mut synced = Batch::new(Slot(4));
    synced.delete(t, ids[0]);
    assert!(store.defer(synced).is_err(), "a batch that must be synced is written, not deferred");

    // A barrier (any write queued after it) finds it committed.
    store.defer(relaxed_delete(ids[0])).unwrap();
    store.barrier().await.unwrap();
    assert!(!present(&store, t, ids[0]));

    // With nothing else written, the timer makes the writer take it.
    store.defer(relaxed_delete(ids[1])).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while present(&store, t, ids[1]) {
        assert!(std::time::Instant::now() < deadline, "a deferred deletion waited past its timer");
        tokio::time::sleep(tim_kv::DEFER_FOR).await;
    }

    // One still waiting when the store closes is committed first, and the database closes
    // at once: it opens again.
    store.defer(relaxed_delete(ids[2])).unwrap();
    drop(store);
    let store = open(dir.path());
    assert!(!present(&store, t, ids[2]), "committed at close");
    assert_eq!(bodies(&store.page(t, Slot(4), 0, b"q", Cursor::OLDEST, 10).unwrap()), Vec::<String>::new());
}

fn user(name: &str) -> Row {
    let mut row = Row::new(2);
    row.set(0, Bytes::copy_from_slice(name.as_bytes())).set(1, Bytes::from_static(b"h"));
    row
}

fn inserting(slot: Slot, table: tim_kv::TableId, row: Row) -> Batch {
    let mut b = Batch::new(slot);
    b.insert(table, row);
    b
}

fn applied(slot: Slot, delta: SlotDelta, staged_here: bool) -> tim_kv::LogWrite {
    tim_kv::LogWrite {
        applied: vec![tim_kv::Applied { slot, delta, staged_here, replaces: false }],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_staged_write_is_invisible_until_applied_and_ids_go_on_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let u = store.table("timuser").unwrap();
    let slot = Slot(9);
    // Two batches in one staging: the second takes the unique value the first took.
    let staged = store.stage(vec![inserting(slot, u, user("ann")), inserting(slot, u, user("ann"))]).await.unwrap();
    let id = staged.results[0].clone().unwrap()[0];
    assert_eq!(staged.results[1], Err(StoreError::Duplicate { table: "timuser", column: "uuid" }));
    assert!(store.get(u, id).unwrap().is_none(), "nothing is written while staged");
    assert!(store.find(u, slot, 0, b"ann").unwrap().is_none());
    // Nothing else of the slot goes through before it is applied; other slots do.
    assert_eq!(
        store.stage(vec![inserting(slot, u, user("bo"))]).await.err(),
        Some(StoreError::StagedAlready { slot: 9 })
    );
    assert_eq!(store.write(inserting(slot, u, user("bo"))).await, Err(StoreError::StagedAlready { slot: 9 }));
    store.write(inserting(Slot(10), u, user("bo"))).await.unwrap();

    store.write_log(applied(slot, staged.delta, true)).await.unwrap();
    assert_eq!(store.find(u, slot, 0, b"ann").unwrap().unwrap().0, id);
    // The next staging sees it and goes on with the next id.
    let next = store.stage(vec![inserting(slot, u, user("ann")), inserting(slot, u, user("cy"))]).await.unwrap();
    assert_eq!(next.results[0], Err(StoreError::Duplicate { table: "timuser", column: "uuid" }));
    assert_eq!(next.results[1].clone().unwrap()[0], RowId(id.0 + 1));
    // Given up, the slot is staged afresh, its ids read again from the data: above every id
    // applied (the ids given up were never visible).
    store.write_log(tim_kv::LogWrite { forgotten: vec![slot], ..Default::default() }).await.unwrap();
    let again = store.stage(vec![inserting(slot, u, user("cy"))]).await.unwrap();
    assert!(again.results[0].clone().unwrap()[0] > id);
    assert!(store.stage(vec![inserting(slot, u, user("dee")), inserting(Slot(11), u, user("eve"))]).await.is_err());
}

#[tokio::test]
async fn effects_staged_on_one_store_apply_on_another_as_they_were() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(dir_a.path()), open(dir_b.path()));
    let (t, u) = (a.table("timmessage").unwrap(), a.table("timuser").unwrap());
    let slot = Slot(5);
    let mut first = Batch::new(slot);
    first.insert(t, msg(b"chat", "one")).insert(t, msg(b"chat", "two")).insert(u, user("ann"));
    let staged = a.stage(vec![first]).await.unwrap();
    let ids = staged.results[0].clone().unwrap();
    a.write_log(applied(slot, staged.delta.clone(), true)).await.unwrap();
    b.write_log(applied(slot, staged.delta, false)).await.unwrap();
    // An update and a delete travel as their effects too.
    let mut second = Batch::new(slot);
    second.update(t, ids[0], vec![(2, Some(Bytes::from_static(b"one, edited")))]).delete(t, ids[1]);
    second.update(u, ids[2], vec![(0, Some(Bytes::from_static(b"anne")))]);
    let staged = a.stage(vec![second]).await.unwrap();
    assert!(!staged.delta.removed.is_empty(), "a deleted row and a moved index entry are removed keys");
    a.write_log(applied(slot, staged.delta.clone(), true)).await.unwrap();
    b.write_log(applied(slot, staged.delta, false)).await.unwrap();
    assert_eq!(slot_entries(&a, slot), slot_entries(&b, slot));
    assert_eq!(bodies(&b.page(t, slot, 0, b"chat", Cursor::OLDEST, 10).unwrap()), vec!["one, edited"]);
    assert!(b.find(u, slot, 0, b"ann").unwrap().is_none() && b.find(u, slot, 0, b"anne").unwrap().is_some());
    // The store that applied them issues ids after them.
    let next = b.write(inserting(slot, t, msg(b"chat", "three"))).await.unwrap()[0];
    assert!(next > ids[1]);
    // Effects stay inside their slot's data.
    let stray = SlotDelta {
        entries: vec![RawEntry {
            region: Region::Rows,
            key: vec![0, 6, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
            value: vec![1],
        }],
        removed: vec![],
    };
    assert!(matches!(b.write_log(applied(slot, stray, false)).await, Err(StoreError::OtherSlot { .. })));
}

#[tokio::test]
async fn log_entries_are_appended_dropped_and_compacted_apart_from_the_slots_data() {
    let dir = tempfile::tempdir().unwrap();
    let (s3, s4) = (Slot(3), Slot(4));
    {
        let store = open(dir.path());
        let mut write = tim_kv::LogWrite::default();
        write.appended.extend((1..=5).map(|i| (s3, i, vec![i as u8; 3])));
        write.appended.extend((1..=2).map(|i| (s4, i, vec![9])));
        write.local.push(("rep/3".into(), Some(b"promise".to_vec())));
        store.write_log(write).await.unwrap();
        assert_eq!(store.log_entries(s3, 1, 10).unwrap().len(), 5);
        assert_eq!(store.log_entries(s3, 4, 10).unwrap(), vec![(4, vec![4; 3]), (5, vec![5; 3])]);
        assert_eq!(store.log_entries(s3, 1, 2).unwrap().len(), 2);
        // Dropped from 4 on, then up to 2, with a new entry 4 in the same write.
        let write = tim_kv::LogWrite {
            truncated: vec![(s3, 4)],
            appended: vec![(s3, 4, vec![40])],
            compacted: vec![(s3, 2)],
            ..Default::default()
        };
        store.write_log(write).await.unwrap();
        assert_eq!(store.log_entries(s3, 0, 10).unwrap(), vec![(3, vec![3; 3]), (4, vec![40])]);
        assert_eq!(store.log_entries(s4, 0, 10).unwrap().len(), 2, "another slot's log is its own");
        assert!(slot_entries(&store, s3).is_empty(), "the log is no part of the slot's data");
        assert!(store.holds(s3).unwrap(), "a slot with a log is held");
    }
    // Durable, and cleared with the slot.
    let store = open(dir.path());
    assert_eq!(store.log_entries(s3, 0, 10).unwrap().len(), 2);
    assert_eq!(store.local("rep/3").unwrap(), Some(b"promise".to_vec()));
    store.write_raw(RawWrite::clearing(s3, Vec::new())).await.unwrap();
    assert!(store.log_entries(s3, 0, 10).unwrap().is_empty());
    assert!(!store.holds(s3).unwrap());
    assert_eq!(store.log_entries(s4, 0, 10).unwrap().len(), 2);
}
