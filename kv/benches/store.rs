//! Store micro benchmarks: inserting chat messages (through the writer thread, as the server
//! does) and paging a conversation's history.
//! Run: `cargo bench -p tim-kv --bench store` (see benches/README.md).

// Bench code: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::sync::Arc;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tim_kv::{Batch, ColumnDef, Cursor, RocksStore, Row, SealKey, Slot, Store, StoreConfig, TableDef};

/// The shape of the engine's history table: indexed conversation id, sender, sealed body.
const MESSAGES: TableDef = TableDef {
    id: 1,
    name: "timmessage",
    columns: &[ColumnDef::indexed("chatid"), ColumnDef::plain("fid"), ColumnDef::sealed("stanza")],
};
/// Messages in the paged conversation.
const HISTORY: usize = 10_000;
/// Writes in flight at once in the group-commit benchmark.
const CONCURRENT: u64 = 256;

fn message(chat: &[u8; 16]) -> Row {
    let mut row = Row::new(3);
    row.set(0, Bytes::copy_from_slice(chat))
        .set(1, Bytes::from_static(&[0, 0, 0, 0, 0, 1, 2, 3]))
        .set(2, Bytes::from(vec![0x5a; 120]));
    row
}

/// The slot of a conversation: 1,000 conversations over as many slots, as placement spreads
/// them (the store does not care which slots they are).
fn slot_of(conversation: u64) -> Slot {
    Slot((conversation % 1000) as u16)
}

fn one_message(store: &RocksStore, n: u64) -> Batch {
    let chat = u128::from(n % 1000).to_be_bytes();
    let mut batch = Batch::new(slot_of(n % 1000));
    batch.insert(store.table("timmessage").unwrap(), message(&chat));
    batch
}

fn open(dir: &std::path::Path) -> Arc<RocksStore> {
    let mut config = StoreConfig::new(dir);
    config.sync = false;
    Arc::new(RocksStore::open(&config, SealKey::new(&[9; 32]), &[MESSAGES]).unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

fn insert(c: &mut Criterion) {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut group = c.benchmark_group("store/insert");
    group.throughput(Throughput::Elements(1));
    // One message written and awaited alone: a write's round trip through the writer thread.
    group.bench_function("one", |b| {
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            black_box(runtime.block_on(store.write(one_message(&store, n))).unwrap());
        })
    });
    // Many messages written concurrently: group commit shares one RocksDB write among them.
    group.throughput(Throughput::Elements(CONCURRENT));
    group.bench_function("concurrent-256", |b| {
        b.iter_batched(
            || (0..CONCURRENT).map(|n| one_message(&store, n)).collect::<Vec<_>>(),
            |batches| {
                // Spawned, so all of them are queued before the first completes.
                let writes: Vec<_> = batches.into_iter().map(|batch| runtime.spawn(store.write(batch))).collect();
                runtime.block_on(async {
                    for write in writes {
                        black_box(write.await.unwrap().unwrap());
                    }
                })
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn page(c: &mut Criterion) {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let table = store.table("timmessage").unwrap();
    let chat = [7u8; 16];
    let slot = slot_of(7);
    runtime.block_on(async {
        for _ in 0..HISTORY / 100 {
            let mut batch = Batch::new(slot);
            for _ in 0..100 {
                batch.insert(table, message(&chat));
            }
            store.write(batch).await.unwrap();
        }
    });
    // From table files and the block cache, as an older conversation is read.
    store.flush().unwrap();
    let ids = store.ids(table, slot, 0, &chat, Cursor::OLDEST, HISTORY).unwrap();
    assert_eq!(ids.len(), HISTORY);
    let middle = ids[HISTORY / 2];
    let mut group = c.benchmark_group("store/page");
    group.throughput(Throughput::Elements(20));
    // The newest 20 messages of a 10,000-message conversation (PULLMESSAGE's first page).
    group.bench_function("newest-20", |b| {
        b.iter(|| black_box(store.page(table, slot, 0, &chat, Cursor::NEWEST, 20).unwrap()))
    });
    // 20 messages from the middle of it (scrolling back).
    group.bench_function("middle-20", |b| {
        b.iter(|| black_box(store.page(table, slot, 0, &chat, Cursor::Desc(middle), 20).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, insert, page);
criterion_main!(benches);
