//! The RocksDB-backed [`Store`]: the only module that names `rocksdb`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode,
    Options, ReadOptions, ReadTier, SliceTransform, DB,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::changes::Changes;
use crate::keys;
use crate::latency::Latency;
use crate::schema::{IndexKind, TableDef};
use crate::seal::SealKey;
use crate::store::{
    Batch, Cursor, ExportedRow, LogWrite, RawEntry, RawWrite, Region, Row, RowId, Slot, SlotDelta, StageFuture, Store,
    StoreError, StoreFigures, TableId, WriteFuture, DEFER_FOR,
};
use crate::writer::{self, Work, WriteRequest};

pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_ROWS: &str = "rows";
pub(crate) const CF_IDX: &str = "idx";
pub(crate) const CF_LOG: &str = "log";

/// A column family: a region of the slots' data, or the replication log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Meta,
    Rows,
    Idx,
    Log,
}

impl Family {
    pub(crate) const ALL: [Family; 4] = [Family::Meta, Family::Rows, Family::Idx, Family::Log];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::Meta => CF_META,
            Family::Rows => CF_ROWS,
            Family::Idx => CF_IDX,
            Family::Log => CF_LOG,
        }
    }

    /// The data region it holds; `None` for the log.
    pub(crate) fn region(self) -> Option<Region> {
        match self {
            Family::Meta => Some(Region::Meta),
            Family::Rows => Some(Region::Rows),
            Family::Idx => Some(Region::Idx),
            Family::Log => None,
        }
    }
}

impl From<Region> for Family {
    fn from(region: Region) -> Self {
        match region {
            Region::Meta => Family::Meta,
            Region::Rows => Family::Rows,
            Region::Idx => Family::Idx,
        }
    }
}

/// Name of the `idx` family's prefix extractor, kept in every table file it filtered: a file
/// written under another name (or none) is read without its prefix filter, never wrongly.
const INDEX_PREFIX_EXTRACTOR: &str = "tim.index-value.1";

/// Share of the index family's write buffer (64 MiB) for a memtable's prefix filter: 1.3 MiB.
/// An index entry takes 45 bytes of memtable at the least and several entries usually share
/// a value, so each value gets at least 7 bits and usually over 10 (1–3 % false positives).
const MEMTABLE_BLOOM_RATIO: f64 = 0.02;

/// Spent write-ahead log files kept for reuse: two cover a flush in progress and the next
/// switch of memtables (each file is about a memtable's size).
const RECYCLED_LOGS: usize = 2;

/// Deleted keys [`Inner::may_hold`] skips before it answers "may hold".
const MAX_SKIPPED_KEYS: u64 = 1024;

/// Version byte in front of every row record.
const ROW_FORMAT: u8 = 1;

/// Most batches deferred at once; past it a batch is written as any other.
const MAX_DEFERRED: usize = 4096;

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory of the RocksDB files.
    pub path: PathBuf,
    /// Sync the WAL before a write is acknowledged (durable across power loss and `kill -9`).
    pub sync: bool,
    /// Block cache shared by all column families, in bytes.
    pub cache_bytes: usize,
    /// Memtable budget across column families, in bytes.
    pub memtable_bytes: usize,
    /// Table files RocksDB keeps open (the process has a hard limit on open files).
    pub max_open_files: i32,
    /// Write batches queued for the writer before callers wait.
    pub write_queue: usize,
    /// Most write batches committed together in one group.
    pub max_group: usize,
    /// Keep the files in memory (RocksDB's memory environment) instead of under `path`: the
    /// same store, gone when it is dropped. For unit tests.
    pub in_memory: bool,
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            sync: true,
            cache_bytes: 64 << 20,
            memtable_bytes: 64 << 20,
            max_open_files: 1024,
            write_queue: 4096,
            max_group: 512,
            in_memory: false,
        }
    }

    /// A store that lives in memory only (each one its own), for unit tests.
    pub fn in_memory() -> Self {
        let name = format!("/tim-kv-memory/{:016x}", rand::random::<u64>());
        Self { in_memory: true, sync: false, ..Self::new(name) }
    }
}

/// The table store on RocksDB. Cheap to share behind an `Arc`; the writer thread stops when
/// the store is dropped.
pub struct RocksStore {
    inner: Arc<Inner>,
    /// `None` only while dropping.
    write_tx: Option<mpsc::Sender<WriteRequest>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// The runtime of the timers that bound how long a deferred batch waits; without one
    /// (a store opened outside a runtime) nothing is deferred.
    runtime: Option<tokio::runtime::Handle>,
}

impl Drop for RocksStore {
    /// Stops the writer after the queued batches and waits for it, so the database is closed
    /// (its lock released) when the drop returns.
    fn drop(&mut self) {
        self.write_tx = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

pub(crate) struct Inner {
    pub(crate) db: DB,
    pub(crate) changes: Changes,
    catalog: Catalog,
    seal: SealKey,
    cache: Cache,
    /// The writer's RocksDB writes, one per group (synced with `sync`).
    pub(crate) commits: Latency,
    /// Commits that waited for the WAL's fsync.
    pub(crate) synced_commits: AtomicU64,
    /// Writes as their callers wait for them: queued, grouped, committed.
    writes: Latency,
    pub(crate) deferred: Arc<Deferred>,
}

/// Relaxed batches waiting for the writer's next group ([`Store::defer`]). Apart from
/// [`Inner`]: a timer holds it, and must not keep the database open.
#[derive(Default)]
pub(crate) struct Deferred {
    batches: Mutex<Vec<Batch>>,
    /// A timer runs that will make the writer take the batches.
    armed: AtomicBool,
}

impl Deferred {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Batch>> {
        self.batches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The deferred batches, oldest first, leaving none.
    pub(crate) fn take(&self) -> Vec<Batch> {
        std::mem::take(&mut *self.lock())
    }
}

/// The declared tables, by id and by name.
struct Catalog {
    tables: HashMap<TableId, TableDef>,
    by_name: HashMap<&'static str, TableId>,
}

#[derive(Serialize, Deserialize)]
struct StoredSchema {
    id: u32,
    columns: Vec<String>,
}

fn rocks(e: rocksdb::Error) -> StoreError {
    match e.kind() {
        rocksdb::ErrorKind::Incomplete if crate::read::memory_only() => crate::read::missed(),
        _ => StoreError::Rocks(e.into_string()),
    }
}

/// Options of a read that may come from a reader: memory-only during an in-memory attempt.
fn read_options() -> ReadOptions {
    let mut opts = ReadOptions::default();
    if crate::read::memory_only() {
        opts.set_read_tier(ReadTier::BlockCache);
    }
    opts
}

impl RocksStore {
    /// Opens (or creates) the store and declares its tables. A declared table may add columns
    /// at the end of a stored one; any other difference is refused.
    pub fn open(config: &StoreConfig, seal: SealKey, tables: &[TableDef]) -> Result<Self, StoreError> {
        if !config.in_memory {
            std::fs::create_dir_all(&config.path).map_err(|e| StoreError::Io(e.to_string()))?;
        }
        let cache = Cache::new_lru_cache(config.cache_bytes);
        let cf_opts = family_options(&cache, true);
        // Index entries are only ever read by value (every entry of one chat, one queue, one
        // message's copies, or none at all, as a message's duplicate check almost always
        // finds): the filters hold the value part of each key instead of whole keys, so such
        // a look-up skips every table file, and every memtable, without that value. Unfiltered,
        // each look-up sought into every memtable, every level-0 file and every level.
        let mut idx_opts = family_options(&cache, false);
        idx_opts.set_prefix_extractor(SliceTransform::create(
            INDEX_PREFIX_EXTRACTOR,
            keys::index_value_part,
            Some(keys::is_index_key),
        ));
        idx_opts.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_open_files(config.max_open_files);
        db_opts.set_db_write_buffer_size(config.memtable_bytes);
        db_opts.set_keep_log_file_num(4);
        // Write-ahead log files are reused rather than made anew once their memtables are
        // flushed: a sync then writes the log's data only. Appended to a new file, every sync
        // also wrote the file's inode (its size grew), a second disk write per commit. RocksDB
        // turns reuse off with log archiving or the tolerate-corrupted-tail and absolute-
        // consistency recovery modes; none is set (recovery is point in time, the default).
        db_opts.set_recycle_log_file_num(RECYCLED_LOGS);
        let mut env = if config.in_memory { rocksdb::Env::mem_env() } else { rocksdb::Env::new() }.map_err(rocks)?;
        // Compactions yield the CPU to the sessions (the low-priority pool runs niced), so on a
        // busy core a compaction stretches rather than stalls message handling. Memtable
        // flushes keep normal priority: a starved flush would stop writes altogether.
        env.lower_thread_pool_cpu_priority();
        env.lower_thread_pool_io_priority();
        db_opts.set_env(&env);
        let cfs = [
            ColumnFamilyDescriptor::new(CF_META, cf_opts.clone()),
            ColumnFamilyDescriptor::new(CF_ROWS, cf_opts.clone()),
            ColumnFamilyDescriptor::new(CF_IDX, idx_opts),
            ColumnFamilyDescriptor::new(CF_LOG, cf_opts),
        ];
        let db = DB::open_cf_descriptors(&db_opts, &config.path, cfs).map_err(rocks)?;

        let catalog = declare_tables(&db, tables)?;
        let inner = Arc::new(Inner {
            db,
            changes: Changes::default(),
            catalog,
            seal,
            cache,
            commits: Latency::default(),
            synced_commits: AtomicU64::new(0),
            writes: Latency::default(),
            deferred: Arc::default(),
        });
        let (write_tx, write_rx) = mpsc::channel(config.write_queue.max(1));
        let writer_inner = Arc::clone(&inner);
        let (sync, max_group) = (config.sync, config.max_group.max(1));
        let writer = std::thread::Builder::new()
            .name("tim-kv-writer".into())
            .spawn(move || writer::run(writer_inner, write_rx, sync, max_group))
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let runtime = tokio::runtime::Handle::try_current().ok();
        Ok(Self { inner, write_tx: Some(write_tx), writer: Some(writer), runtime })
    }

    /// Writes memtables and the WAL to disk (at shutdown, and before files are inspected).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush_wal(true).map_err(rocks)?;
        for family in Family::ALL {
            self.inner.db.flush_cf(self.inner.cf(family.name())?).map_err(rocks)?;
        }
        Ok(())
    }
}

/// Options of a column family: LZ4 blocks in the shared cache, with bloom filters of whole
/// keys (`whole_keys`) or of what the family's prefix extractor takes.
fn family_options(cache: &Cache, whole_keys: bool) -> Options {
    let mut block = BlockBasedOptions::default();
    block.set_block_cache(cache);
    block.set_bloom_filter(10.0, false);
    block.set_whole_key_filtering(whole_keys);
    block.set_cache_index_and_filter_blocks(true);
    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_block_based_table_factory(&block);
    opts
}

/// Declares the tables: a stored table must keep its id and may only gain columns at the
/// end; a new table's id must not be another stored table's.
fn declare_tables(db: &DB, defs: &[TableDef]) -> Result<Catalog, StoreError> {
    let meta = db.cf_handle(CF_META).ok_or_else(|| StoreError::Rocks("meta column family missing".into()))?;
    let schema_prefix = keys::schema_key("");
    let mut stored_ids = HashMap::new();
    for item in db.prefix_iterator_cf(meta, &schema_prefix) {
        let (key, value) = item.map_err(rocks)?;
        if !key.starts_with(&schema_prefix) {
            break;
        }
        let name = String::from_utf8_lossy(key.get(schema_prefix.len()..).unwrap_or_default()).into_owned();
        let stored: StoredSchema =
            postcard::from_bytes(&value).map_err(|_| StoreError::SchemaMismatch(name.clone()))?;
        stored_ids.insert(stored.id, name);
    }
    let mut tables = HashMap::new();
    let mut by_name = HashMap::new();
    for def in defs {
        let key = keys::schema_key(def.name);
        let declared: Vec<String> = def.columns.iter().map(|c| c.name.to_owned()).collect();
        if tables.contains_key(&TableId(def.id)) {
            return Err(StoreError::SchemaMismatch(def.name.into()));
        }
        let id = match db.get_cf(meta, &key).map_err(rocks)? {
            Some(raw) => {
                let stored: StoredSchema =
                    postcard::from_bytes(&raw).map_err(|_| StoreError::SchemaMismatch(def.name.into()))?;
                if stored.id != def.id || !declared.starts_with(&stored.columns) {
                    return Err(StoreError::SchemaMismatch(def.name.into()));
                }
                stored.id
            }
            None if stored_ids.contains_key(&def.id) => return Err(StoreError::SchemaMismatch(def.name.into())),
            None => def.id,
        };
        let record = postcard::to_stdvec(&StoredSchema { id, columns: declared })
            .map_err(|_| StoreError::SchemaMismatch(def.name.into()))?;
        db.put_cf(meta, &key, record).map_err(rocks)?;
        tables.insert(TableId(id), *def);
        by_name.insert(def.name, TableId(id));
    }
    Ok(Catalog { tables, by_name })
}

impl Inner {
    pub(crate) fn cf(&self, name: &str) -> Result<&ColumnFamily, StoreError> {
        self.db.cf_handle(name).ok_or_else(|| StoreError::Rocks(format!("column family {name} missing")))
    }

    pub(crate) fn def(&self, table: TableId) -> Result<&TableDef, StoreError> {
        self.catalog.tables.get(&table).ok_or(StoreError::UnknownTable(table.0))
    }

    /// The index column id of `column`, checked against the table's declaration.
    pub(crate) fn indexed_column(&self, def: &TableDef, column: usize) -> Result<u16, StoreError> {
        match def.columns.get(column) {
            Some(c) if c.index != IndexKind::None => {
                u16::try_from(column).map_err(|_| StoreError::UnknownColumn { table: def.name, column })
            }
            _ => Err(StoreError::UnknownColumn { table: def.name, column }),
        }
    }

    fn place(table: TableId, id: RowId, column: usize) -> [u8; 14] {
        let mut place = [0u8; 14];
        let (t, rest) = place.split_at_mut(4);
        let (i, c) = rest.split_at_mut(8);
        t.copy_from_slice(&table.0.to_be_bytes());
        i.copy_from_slice(&id.0.to_be_bytes());
        c.copy_from_slice(&(column as u16).to_be_bytes());
        place
    }

    /// Encodes a row record, sealing the sealed columns.
    pub(crate) fn encode_row(
        &self,
        table: TableId,
        def: &TableDef,
        id: RowId,
        row: &Row,
    ) -> Result<Vec<u8>, StoreError> {
        if row.cols.len() > def.columns.len() {
            return Err(StoreError::UnknownColumn { table: def.name, column: row.cols.len() - 1 });
        }
        let mut sealed = Vec::new();
        for (column, (value, col)) in row.cols.iter().zip(def.columns).enumerate() {
            if let (Some(value), true) = (value, col.sealed) {
                let ct = self
                    .seal
                    .seal(&Self::place(table, id, column), value)
                    .ok_or(StoreError::Seal { table: def.name })?;
                sealed.push((column, ct));
            }
        }
        let cols: Vec<Option<&[u8]>> = row
            .cols
            .iter()
            .enumerate()
            .map(|(column, value)| match sealed.iter().find(|(c, _)| *c == column) {
                Some((_, ct)) => Some(ct.as_slice()),
                None => value.as_deref(),
            })
            .collect();
        let mut out = vec![ROW_FORMAT];
        postcard::to_io(&cols, &mut out).map_err(|_| StoreError::Corrupt { table: def.name, id: id.0 })?;
        Ok(out)
    }

    /// Decodes a row record, opening the sealed columns.
    pub(crate) fn decode_row(&self, table: TableId, def: &TableDef, id: RowId, raw: &[u8]) -> Result<Row, StoreError> {
        let corrupt = || StoreError::Corrupt { table: def.name, id: id.0 };
        let Some((&ROW_FORMAT, body)) = raw.split_first() else {
            return Err(corrupt());
        };
        let cols: Vec<Option<&[u8]>> = postcard::from_bytes(body).map_err(|_| corrupt())?;
        let mut row = Row::new(def.columns.len().max(cols.len()));
        for (column, value) in cols.into_iter().enumerate() {
            let Some(value) = value else { continue };
            let sealed = def.columns.get(column).is_some_and(|c| c.sealed);
            let plain = if sealed {
                self.seal
                    .open(&Self::place(table, id, column), value)
                    .ok_or(StoreError::Unseal { table: def.name, id: id.0 })?
            } else {
                value.to_vec()
            };
            row.set(column, Bytes::from(plain));
        }
        Ok(row)
    }

    /// Visits every key of `slot` in `regions` as one snapshot, in key order, until `visit`
    /// returns `false`; `snapshot_taken` runs once the snapshot exists (before the first visit).
    fn scan_slot(
        &self,
        slot: Slot,
        regions: &[Region],
        snapshot_taken: &mut dyn FnMut(),
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let prefix = keys::slot_prefix(slot);
        let end = keys::prefix_end(&prefix).ok_or(StoreError::OtherSlot { slot: slot.0, id: 0 })?;
        // One snapshot for the whole slot: the scan ends, however fast the slot is written.
        let snapshot = self.db.snapshot();
        snapshot_taken();
        for &region in regions {
            let mut opts = ReadOptions::default();
            opts.set_iterate_upper_bound(end.clone());
            // Across every value of the slot: prefix filters must not skip a file.
            opts.set_total_order_seek(true);
            let iter = snapshot.iterator_cf_opt(
                self.cf(cf_name(region))?,
                opts,
                IteratorMode::From(&prefix, Direction::Forward),
            );
            for item in iter {
                let (key, value) = item.map_err(rocks)?;
                if !visit(region, &key, &value)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Whether `region` may hold a key in `[from, to)`; `false` only when it surely holds
    /// none.
    pub(crate) fn may_hold(&self, family: Family, from: &[u8], to: &[u8]) -> Result<bool, StoreError> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(to.to_vec());
        opts.set_total_order_seek(true);
        opts.set_max_skippable_internal_keys(MAX_SKIPPED_KEYS);
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(family.name())?, opts);
        iter.seek(from);
        // An error here is mostly "too many deleted keys to skip": held, as far as it knows.
        Ok(iter.valid() || iter.status().is_err())
    }

    pub(crate) fn read_row(&self, table: TableId, id: RowId) -> Result<Option<Row>, StoreError> {
        let def = self.def(table)?;
        let raw =
            self.db.get_pinned_cf_opt(self.cf(CF_ROWS)?, keys::row_key(table, id), &read_options()).map_err(rocks)?;
        raw.map(|raw| self.decode_row(table, def, id, &raw)).transpose()
    }

    /// Whether any index entry starts with `prefix`, skipping the keys `skip` rejects.
    pub(crate) fn index_has(&self, prefix: &[u8], skip: impl Fn(&[u8]) -> bool) -> Result<bool, StoreError> {
        let mut opts = ReadOptions::default();
        opts.set_prefix_same_as_start(true);
        if let Some(end) = keys::prefix_end(prefix) {
            opts.set_iterate_upper_bound(end);
        }
        // A whole key (the smallest row id), not the bare prefix: the filters are looked up
        // by the value part of the target, which a bare prefix does not end with.
        let start = keys::index_key(prefix, RowId(0));
        for item in self.db.iterator_cf_opt(self.cf(CF_IDX)?, opts, IteratorMode::From(&start, Direction::Forward)) {
            let (key, _) = item.map_err(rocks)?;
            if !key.starts_with(prefix) {
                break;
            }
            if !skip(&key) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The last sequence that may have been issued for `(slot, table)`: the stored counter (the
    /// end of the last reserved block, written in the same atomic batch as the insert that took
    /// it); the newest row is consulted too, so ids are never reissued even if the counter key
    /// were lost; and the slot's era, below which no sequence is issued.
    pub(crate) fn load_counter(&self, table: TableId, slot: Slot) -> Result<u64, StoreError> {
        let stored = self
            .db
            .get_cf(self.cf(CF_META)?, keys::counter_key(slot, table))
            .map_err(rocks)?
            .and_then(|raw| raw.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        let era = self
            .db
            .get_cf(self.cf(CF_META)?, keys::era_key(slot))
            .map_err(rocks)?
            .and_then(|raw| raw.as_slice().try_into().ok().map(u64::from_be_bytes))
            .map_or(0, |era| era.min(RowId::MAX_ERA) << 33);
        let prefix = keys::table_prefix(slot, table);
        let mut newest = 0;
        if let Some(end) = keys::prefix_end(&prefix) {
            let mut iter = self.db.iterator_cf(self.cf(CF_ROWS)?, IteratorMode::From(&end, Direction::Reverse));
            if let Some(item) = iter.next() {
                let (key, _) = item.map_err(rocks)?;
                if key.starts_with(&prefix) {
                    newest = keys::index_key_id(&key).map_or(0, RowId::seq);
                }
            }
        }
        Ok(stored.max(newest).max(era))
    }
}

impl Store for RocksStore {
    fn table(&self, name: &str) -> Option<TableId> {
        self.inner.catalog.by_name.get(name).copied()
    }

    fn get(&self, table: TableId, id: RowId) -> Result<Option<Row>, StoreError> {
        self.inner.read_row(table, id)
    }

    fn ids(
        &self,
        table: TableId,
        slot: Slot,
        column: usize,
        value: &[u8],
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<RowId>, StoreError> {
        let inner = &*self.inner;
        let def = inner.def(table)?;
        let column = inner.indexed_column(def, column)?;
        let prefix = keys::index_prefix(slot, table, column, value);
        let mut opts = read_options();
        opts.set_prefix_same_as_start(true);
        let (start, direction) = match cursor {
            Cursor::Asc(from) => {
                if let Some(end) = keys::prefix_end(&prefix) {
                    opts.set_iterate_upper_bound(end);
                }
                (keys::index_key(&prefix, from), Direction::Forward)
            }
            Cursor::Desc(from) => {
                opts.set_iterate_lower_bound(prefix.clone());
                (keys::index_key(&prefix, from), Direction::Reverse)
            }
        };
        let mut ids = Vec::with_capacity(limit.min(1024));
        for item in inner.db.iterator_cf_opt(inner.cf(CF_IDX)?, opts, IteratorMode::From(&start, direction)) {
            if ids.len() >= limit {
                break;
            }
            let (key, _) = item.map_err(rocks)?;
            if !key.starts_with(&prefix) {
                break;
            }
            if let Some(id) = keys::index_key_id(&key) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    fn page(
        &self,
        table: TableId,
        slot: Slot,
        column: usize,
        value: &[u8],
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<(RowId, Row)>, StoreError> {
        let ids = self.ids(table, slot, column, value, cursor, limit)?;
        let inner = &*self.inner;
        let def = inner.def(table)?;
        let rows_cf = inner.cf(CF_ROWS)?;
        let raws =
            inner.db.multi_get_cf_opt(ids.iter().map(|id| (rows_cf, keys::row_key(table, *id))), &read_options());
        let mut out = Vec::with_capacity(ids.len());
        for (id, raw) in ids.into_iter().zip(raws) {
            if let Some(raw) = raw.map_err(rocks)? {
                out.push((id, inner.decode_row(table, def, id, &raw)?));
            }
        }
        Ok(out)
    }

    fn write_all(&self, batches: Vec<Batch>) -> WriteFuture {
        self.submit(Work::Batches(batches))
    }

    fn export_slot(
        &self,
        slot: Slot,
        max_bytes: usize,
        part: &mut dyn FnMut(Vec<RawEntry>) -> bool,
    ) -> Result<(), StoreError> {
        let mut parts = Parts::new(max_bytes, part);
        self.inner.scan_slot(slot, &Region::ALL, &mut || {}, &mut |region, key, value| {
            let size = key.len() + value.len();
            Ok(parts.push(RawEntry { region, key: key.to_vec(), value: value.to_vec() }, size))
        })?;
        parts.finish();
        Ok(())
    }

    fn export_rows(
        &self,
        slot: Slot,
        max_bytes: usize,
        snapshot_taken: &mut dyn FnMut(),
        part: &mut dyn FnMut(Vec<ExportedRow>) -> bool,
    ) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let mut parts = Parts::new(max_bytes, part);
        inner.scan_slot(slot, &[Region::Rows], snapshot_taken, &mut |_, key, value| {
            let (table, id) = keys::row_key_parts(key).ok_or(StoreError::Corrupt { table: "?", id: 0 })?;
            let def = inner.def(table)?;
            let row = inner.decode_row(table, def, id, value)?;
            Ok(parts.push(ExportedRow { table, id, row }, key.len() + value.len()))
        })?;
        parts.finish();
        Ok(())
    }

    fn figures(&self) -> StoreFigures {
        let db = &self.inner.db;
        let property = |name: &str| -> u64 {
            [CF_META, CF_ROWS, CF_IDX]
                .iter()
                .filter_map(|cf| self.inner.cf(cf).ok())
                .filter_map(|cf| db.property_int_value_cf(cf, name).ok().flatten())
                .sum()
        };
        let (entries, deletes) =
            (property("rocksdb.num-entries-active-mem-table"), property("rocksdb.num-deletes-active-mem-table"));
        StoreFigures {
            commits: self.inner.commits.snapshot(),
            synced_commits: self.inner.synced_commits.load(Ordering::Relaxed),
            writes: self.inner.writes.snapshot(),
            memtable_bytes: property("rocksdb.cur-size-all-mem-tables"),
            memtable_puts: entries.saturating_sub(deletes),
            memtable_deletes: deletes,
            pending_compaction_bytes: property("rocksdb.estimate-pending-compaction-bytes"),
            running_compactions: db.property_int_value("rocksdb.num-running-compactions").ok().flatten().unwrap_or(0),
            running_flushes: db.property_int_value("rocksdb.num-running-flushes").ok().flatten().unwrap_or(0),
            live_data_bytes: property("rocksdb.estimate-live-data-size"),
            block_cache_bytes: self.inner.cache.get_usage() as u64,
        }
    }

    fn write_raw(&self, write: RawWrite) -> WriteFuture {
        self.submit(Work::Raw(write))
    }

    fn holds(&self, slot: Slot) -> Result<bool, StoreError> {
        let prefix = keys::slot_prefix(slot);
        let end = keys::prefix_end(&prefix).ok_or(StoreError::OtherSlot { slot: slot.0, id: 0 })?;
        for family in Family::ALL {
            if self.inner.may_hold(family, &prefix, &end)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn defer(&self, batch: Batch) -> Result<(), Batch> {
        let (Some(runtime), Some(write_tx)) = (&self.runtime, &self.write_tx) else { return Err(batch) };
        if !batch.is_relaxed() {
            return Err(batch);
        }
        let deferred = &self.inner.deferred;
        {
            let mut batches = deferred.lock();
            if batches.len() >= MAX_DEFERRED {
                return Err(batch);
            }
            batches.push(batch);
        }
        // One timer at a time: at a steady load the next write takes the batches long before
        // it fires, and it finds nothing to do.
        if !deferred.armed.swap(true, Ordering::AcqRel) {
            // A weak sender: a store being dropped does not wait for this timer.
            let (deferred, write_tx) = (Arc::clone(deferred), write_tx.downgrade());
            runtime.spawn(async move {
                tokio::time::sleep(DEFER_FOR).await;
                deferred.armed.store(false, Ordering::Release);
                let waiting = !deferred.lock().is_empty();
                // An empty request without a reply: the writer takes the deferred batches with
                // it and logs their failures itself.
                if let (true, Some(write_tx)) = (waiting, write_tx.upgrade()) {
                    let _ = write_tx.send(WriteRequest { work: Work::Batches(Vec::new()), reply: None }).await;
                }
            });
        }
        Ok(())
    }

    fn track_changes(&self, slot: Slot) -> WriteFuture {
        self.inner.changes.track(slot);
        self.barrier()
    }

    fn untrack_changes(&self, slot: Slot) {
        self.inner.changes.untrack(slot);
    }

    fn changes(&self, slot: Slot) -> Result<SlotDelta, StoreError> {
        let keys = self.inner.changes.take(slot).map_err(|_| StoreError::ChangesLost { slot: slot.0 })?;
        let mut delta = SlotDelta::default();
        for key in keys {
            match self.inner.db.get_cf(self.inner.cf(cf_name(key.region))?, &key.key).map_err(rocks)? {
                Some(value) => delta.entries.push(RawEntry { region: key.region, key: key.key, value }),
                None => delta.removed.push(key),
            }
        }
        Ok(delta)
    }

    fn local(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.db.get_cf(self.inner.cf(CF_META)?, keys::local_key(name)).map_err(rocks)
    }

    fn stage(&self, batches: Vec<Batch>) -> StageFuture {
        let write_tx = self.write_tx.clone();
        Box::pin(async move {
            let write_tx = write_tx.ok_or(StoreError::Closed)?;
            let (reply, done) = oneshot::channel();
            write_tx
                .send(WriteRequest { work: Work::Stage(batches, reply), reply: None })
                .await
                .map_err(|_| StoreError::Closed)?;
            done.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn write_log(&self, write: LogWrite) -> WriteFuture {
        self.submit(Work::Log(write))
    }

    fn log_entries(&self, slot: Slot, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let inner = &*self.inner;
        let prefix = keys::slot_prefix(slot);
        let mut opts = ReadOptions::default();
        if let Some(end) = keys::prefix_end(&prefix) {
            opts.set_iterate_upper_bound(end);
        }
        let start = keys::log_key(slot, from);
        let iter = inner.db.iterator_cf_opt(inner.cf(CF_LOG)?, opts, IteratorMode::From(&start, Direction::Forward));
        let mut entries = Vec::new();
        for item in iter.take(max) {
            let (key, value) = item.map_err(rocks)?;
            let index = keys::log_index(&key).ok_or(StoreError::Corrupt { table: "log", id: 0 })?;
            entries.push((index, value.into_vec()));
        }
        Ok(entries)
    }
}

/// A scan's visitor: region, key and value; `false` to stop.
type Visit<'a> = dyn FnMut(Region, &[u8], &[u8]) -> Result<bool, StoreError> + 'a;

/// Gathers items into parts of about `max_bytes` for a caller's `part` callback.
struct Parts<'a, T> {
    max_bytes: usize,
    bytes: usize,
    items: Vec<T>,
    part: &'a mut dyn FnMut(Vec<T>) -> bool,
    stopped: bool,
}

impl<'a, T> Parts<'a, T> {
    fn new(max_bytes: usize, part: &'a mut dyn FnMut(Vec<T>) -> bool) -> Self {
        Self { max_bytes, bytes: 0, items: Vec::new(), part, stopped: false }
    }

    /// Adds an item; `false` once the caller wants no more.
    fn push(&mut self, item: T, size: usize) -> bool {
        self.items.push(item);
        self.bytes += size;
        if self.bytes < self.max_bytes {
            return true;
        }
        self.bytes = 0;
        self.stopped = !(self.part)(std::mem::take(&mut self.items));
        !self.stopped
    }

    /// Hands over the last part (maybe empty: an export that was not stopped ends with one).
    fn finish(self) {
        if !self.stopped {
            (self.part)(self.items);
        }
    }
}

fn cf_name(region: Region) -> &'static str {
    Family::from(region).name()
}

impl RocksStore {
    fn submit(&self, work: Work) -> WriteFuture {
        let write_tx = self.write_tx.clone();
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let started = std::time::Instant::now();
            let write_tx = write_tx.ok_or(StoreError::Closed)?;
            let (reply, done) = oneshot::channel();
            write_tx.send(WriteRequest { work, reply: Some(reply) }).await.map_err(|_| StoreError::Closed)?;
            let result = done.await.map_err(|_| StoreError::Closed)?;
            inner.writes.observe(started.elapsed());
            result
        })
    }
}
