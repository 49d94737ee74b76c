//! The store's public vocabulary: ids, rows, batches, errors and the [`Store`] trait the engine
//! programs against.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A slot: the unit of placement. Every key of the store starts with one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Slot(pub u16);

/// A table's stable number, allocated once when the table is first created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableId(pub u32);

/// A row id: `era << 45 | slot << 33 | sequence`. Unique per table across the whole store,
/// increasing within a slot, and below 2^53 (JavaScript clients keep it exact).
///
/// The era of a slot grows when its data had to start over on another node (the slot was
/// adopted after its owner was removed): the ids issued from then on are above every id the
/// slot issued before, on any node, although the counter that issued those is gone
/// ([`era_entry`](crate::era_entry)). Within a slot, ids order by era, then sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RowId(pub u64);

const SEQ_BITS: u32 = 33;
const SLOT_MASK: u64 = 0xFFF;
const ERA_SHIFT: u32 = 45;

impl RowId {
    /// Largest sequence number a slot can issue per table and era.
    pub const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;
    /// Largest era: ids stay below 2^53.
    pub const MAX_ERA: u64 = (1 << (53 - ERA_SHIFT)) - 1;

    /// The id of sequence `seq` of `slot`, where `seq` is `era << 33 | sequence` (what
    /// [`RowId::seq`] returns).
    pub fn new(slot: Slot, seq: u64) -> Self {
        let era = (seq >> SEQ_BITS) & Self::MAX_ERA;
        Self((era << ERA_SHIFT) | ((u64::from(slot.0) & SLOT_MASK) << SEQ_BITS) | (seq & Self::MAX_SEQ))
    }
    pub fn slot(self) -> Slot {
        Slot(((self.0 >> SEQ_BITS) & SLOT_MASK) as u16)
    }
    /// The era and the sequence within it, as one number that orders the slot's ids.
    pub fn seq(self) -> u64 {
        (((self.0 >> ERA_SHIFT) & Self::MAX_ERA) << SEQ_BITS) | (self.0 & Self::MAX_SEQ)
    }
    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

/// A row: one optional value per column, in the table's column order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub(crate) cols: Vec<Option<Bytes>>,
}

impl Row {
    /// A row with every column absent.
    pub fn new(columns: usize) -> Self {
        Self { cols: vec![None; columns] }
    }

    /// Sets a column; a column beyond the row's width widens it.
    pub fn set(&mut self, column: usize, value: impl Into<Bytes>) -> &mut Self {
        if self.cols.len() <= column {
            self.cols.resize(column + 1, None);
        }
        if let Some(slot) = self.cols.get_mut(column) {
            *slot = Some(value.into());
        }
        self
    }

    pub fn get(&self, column: usize) -> Option<&Bytes> {
        self.cols.get(column).and_then(Option::as_ref)
    }

    /// A column of 8 bytes, big-endian (ids, times, counters); `None` when it is absent or of
    /// another length.
    pub fn u64_at(&self, column: usize) -> Option<u64> {
        self.get(column).and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(u64::from_be_bytes)
    }

    /// Bytes of its values.
    pub fn size(&self) -> usize {
        self.cols.iter().flatten().map(Bytes::len).sum()
    }
}

/// Where a paged index read starts and in which direction it goes; the start id is inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cursor {
    Asc(RowId),
    Desc(RowId),
}

impl Cursor {
    pub const OLDEST: Cursor = Cursor::Asc(RowId(0));
    pub const NEWEST: Cursor = Cursor::Desc(RowId(u64::MAX));

    /// Where an ascending read goes on after `page`, read with a limit of `limit`: `None` when
    /// the page was not full (it held the last rows) or ended at the highest id.
    pub fn after<T>(page: &[(RowId, T)], limit: usize) -> Option<Cursor> {
        let (last, _) = page.last().filter(|_| page.len() >= limit)?;
        last.0.checked_add(1).map(|next| Cursor::Asc(RowId(next)))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Op {
    Insert {
        table: TableId,
        row: Row,
    },
    /// An insert whose `column` holds the id of the write's `earlier`-th returned id.
    InsertWithId {
        table: TableId,
        row: Row,
        column: usize,
        earlier: usize,
    },
    /// A row with an id given by the caller (copied from elsewhere): written as it is, and the
    /// slot's id counter moved past it.
    Put {
        table: TableId,
        id: RowId,
        row: Row,
    },
    Update {
        table: TableId,
        id: RowId,
        changes: Vec<(usize, Option<Bytes>)>,
    },
    Delete {
        table: TableId,
        id: RowId,
    },
    /// A row from an export: written when its id is free, nothing when the same row is there.
    Restore {
        table: TableId,
        id: RowId,
        row: Row,
    },
}

/// Writes to one slot, applied atomically: all of them or none. A batch never spans two
/// slots (a row of another slot is refused with [`StoreError::OtherSlot`]), so every slot can
/// live on a different node; writes that touch several slots are sequences of batches, or one
/// [`Store::write_all`] when one store holds them all.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    slot: Slot,
    pub(crate) ops: Vec<Op>,
    /// Committed without an fsync of its own (see [`Batch::relaxed`]).
    relaxed: bool,
}

impl Batch {
    pub fn new(slot: Slot) -> Self {
        Self { slot, ops: Vec::new(), relaxed: false }
    }

    /// Marks a batch whose loss in a crash is harmless, such as deleting an offline entry its
    /// recipient acked (lost, the message comes once more and the client drops it by `mid`).
    /// With `--sync` it is committed without waiting for an fsync of its own: the next synced
    /// write, or a memtable flush, makes it durable, since the write-ahead log is written in
    /// order. At low load this saves one fsync per acked message.
    pub fn relaxed(&mut self) -> &mut Self {
        self.relaxed = true;
        self
    }

    /// Whether the batch may be committed without an fsync of its own.
    pub fn is_relaxed(&self) -> bool {
        self.relaxed
    }

    /// The slot every row of the batch belongs to.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// Inserts a row; its id is returned by the write, in insert order.
    pub fn insert(&mut self, table: TableId, row: Row) -> &mut Self {
        self.ops.push(Op::Insert { table, row });
        self
    }

    /// Inserts a row whose `column` the writer sets to an id issued earlier in the same write
    /// (8 bytes, big-endian): the `earlier`-th id the write returns, counted over every batch
    /// of a [`Store::write_all`]. A row can so refer to a row of another slot written in the
    /// same commit, such as an offline entry to the history row that gives its message's id.
    pub fn insert_with_id(&mut self, table: TableId, row: Row, column: usize, earlier: usize) -> &mut Self {
        self.ops.push(Op::InsertWithId { table, row, column, earlier });
        self
    }

    /// Writes a row under an id it already has (a row copied from another store): inserted,
    /// or replacing the row of that id; later inserts of the slot get larger ids.
    pub fn put(&mut self, table: TableId, id: RowId, row: Row) -> &mut Self {
        self.ops.push(Op::Put { table, id, row });
        self
    }

    /// Sets the given columns of an existing row (`None` clears one); others stay.
    pub fn update(&mut self, table: TableId, id: RowId, changes: Vec<(usize, Option<Bytes>)>) -> &mut Self {
        self.ops.push(Op::Update { table, id, changes });
        self
    }

    /// Writes a row from an export under its id when that id is free (its id is then among
    /// the write's returned ids, in op order with the inserts); does nothing when the same row
    /// is there already, and fails with [`StoreError::Occupied`] when another row holds the
    /// id. Importing the same rows twice thus changes nothing the second time.
    pub fn restore(&mut self, table: TableId, id: RowId, row: Row) -> &mut Self {
        self.ops.push(Op::Restore { table, id, row });
        self
    }

    /// Deletes a row; a missing row is no error.
    pub fn delete(&mut self, table: TableId, id: RowId) -> &mut Self {
        self.ops.push(Op::Delete { table, id });
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("rocksdb failed: {0}")]
    Rocks(String),
    #[error("io failed on the data dir: {0}")]
    Io(String),
    #[error("unknown table id {0}")]
    UnknownTable(u32),
    #[error("column {column} does not exist in table `{table}`")]
    UnknownColumn { table: &'static str, column: usize },
    #[error("row {id} of table `{table}` not found")]
    NotFound { table: &'static str, id: u64 },
    #[error("value of unique column `{column}` of table `{table}` already exists")]
    Duplicate { table: &'static str, column: &'static str },
    #[error("row {id} of table `{table}` holds another row")]
    Occupied { table: &'static str, id: u64 },
    #[error("row {id} of table `{table}` is corrupt")]
    Corrupt { table: &'static str, id: u64 },
    #[error("sealed column of row {id} of table `{table}` does not open with this key")]
    Unseal { table: &'static str, id: u64 },
    #[error("sealing a value of table `{table}` failed")]
    Seal { table: &'static str },
    #[error("slot {slot} of table `{table}` issued its last id")]
    SequenceExhausted { table: &'static str, slot: u16 },
    #[error("table `{0}` is stored with other columns than the ones declared")]
    SchemaMismatch(String),
    #[error("the store is closed")]
    Closed,
    /// A memory-only read ([`crate::read`]) needed the disk; it is retried where it may block.
    #[error("the data is not in memory")]
    NotInMemory,
    #[error("row {id} belongs to another slot than its batch's ({slot})")]
    OtherSlot { slot: u16, id: u64 },
    #[error("an index entry of slot {slot} is too short to end with a row id")]
    ShortIndexKey { slot: u16 },
    #[error("an insert takes the write's id number {earlier}, which it has not issued before it")]
    NoEarlierId { earlier: usize },
    #[error("slot {slot} changed more than a record of its changes holds")]
    ChangesLost { slot: u16 },
    #[error("a read on the blocking pool did not finish (shutdown or a panic)")]
    Interrupted,
    #[error("slot {slot} has staged effects that are not applied yet")]
    StagedAlready { slot: u16 },
    #[error("batches of one staging belong to slot {slot}, one of them to another")]
    StagedSlots { slot: u16 },
}

/// The column family of a raw entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Region {
    Meta,
    Rows,
    Idx,
}

impl Region {
    pub(crate) const ALL: [Region; 3] = [Region::Meta, Region::Rows, Region::Idx];
}

/// One stored key and value as they are on disk (sealed columns still sealed): what moves
/// when a slot moves to another store of the same deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawEntry {
    pub region: Region,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A row as an export carries it: sealed columns opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedRow {
    pub table: TableId,
    pub id: RowId,
    pub row: Row,
}

/// What a store reports for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFigures {
    /// RocksDB writes, one per group of batches (with the WAL's sync when syncing).
    pub commits: crate::latency::LatencySnapshot,
    /// Those of the commits that waited for the WAL's fsync.
    pub synced_commits: u64,
    /// Writes from their callers' side: queued, grouped and committed.
    pub writes: crate::latency::LatencySnapshot,
    pub memtable_bytes: u64,
    /// Keys put into the active memtables (of every family) and deletions there: what each
    /// write costs in skip-list inserts, counted until a memtable is switched for a flush.
    pub memtable_puts: u64,
    pub memtable_deletes: u64,
    pub pending_compaction_bytes: u64,
    pub running_compactions: u64,
    pub running_flushes: u64,
    pub live_data_bytes: u64,
    pub block_cache_bytes: u64,
}

/// A stored key, without its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawKey {
    pub region: Region,
    pub key: Vec<u8>,
}

/// What changed in a slot over a while: the keys written, with their values now, and the keys
/// deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotDelta {
    pub entries: Vec<RawEntry>,
    pub removed: Vec<RawKey>,
}

impl SlotDelta {
    /// Bytes of keys and values.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.key.len() + e.value.len()).sum::<usize>()
            + self.removed.iter().map(|k| k.key.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.removed.is_empty()
    }

    /// Splits into parts of about `max_bytes` (at least one part, maybe empty).
    pub fn split(self, max_bytes: usize) -> Vec<SlotDelta> {
        let mut parts = Vec::new();
        let mut part = SlotDelta::default();
        let mut bytes = 0;
        let mut room = |size: usize, part: &mut SlotDelta, parts: &mut Vec<SlotDelta>| {
            if bytes > 0 && bytes + size > max_bytes {
                parts.push(std::mem::take(part));
                bytes = 0;
            }
            bytes += size;
        };
        for key in self.removed {
            room(key.key.len(), &mut part, &mut parts);
            part.removed.push(key);
        }
        for entry in self.entries {
            room(entry.key.len() + entry.value.len(), &mut part, &mut parts);
            part.entries.push(entry);
        }
        parts.push(part);
        parts
    }
}

/// A write of raw entries into one slot, with node-local records, applied atomically. Without
/// entries and `clear` it writes the records alone ([`RawWrite::local`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawWrite {
    pub slot: Slot,
    /// Delete everything the store holds of the slot first.
    pub clear: bool,
    /// Entries of the slot (each key must be in it).
    pub entries: Vec<RawEntry>,
    /// Keys of the slot deleted (after `clear`, before `entries`).
    pub removed: Vec<RawKey>,
    /// Node-local records (outside every slot) set (`Some`) or deleted (`None`).
    pub local: Vec<(String, Option<Vec<u8>>)>,
}

impl RawWrite {
    /// Node-local records alone, no slot data.
    pub fn local(records: Vec<(String, Option<Vec<u8>>)>) -> Self {
        Self { slot: Slot(0), clear: false, entries: Vec::new(), removed: Vec::new(), local: records }
    }

    /// Deletes everything the store holds of `slot`, with node-local records.
    pub fn clearing(slot: Slot, records: Vec<(String, Option<Vec<u8>>)>) -> Self {
        Self { slot, clear: true, entries: Vec::new(), removed: Vec::new(), local: records }
    }
}

/// The result of [`Store::write`]: the ids of the inserted rows, in insert order, once the
/// batch is committed (and synced, when the store syncs).
pub type WriteFuture = Pin<Box<dyn Future<Output = Result<Vec<RowId>, StoreError>> + Send>>;

/// The result of [`Store::stage`].
pub type StageFuture = Pin<Box<dyn Future<Output = Result<StagedWrite, StoreError>> + Send>>;

/// Batches of one slot staged but not written ([`Store::stage`]): what each batch gets (its
/// ids, or why it failed), and the keys the successful ones change, with their values after
/// them (`removed` for keys they delete).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StagedWrite {
    pub results: Vec<Result<Vec<RowId>, StoreError>>,
    pub delta: SlotDelta,
}

/// Effects of a slot applied to its data ([`LogWrite::applied`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub slot: Slot,
    pub delta: SlotDelta,
    /// Staged by this store ([`Store::stage`]): its ids were issued here, and the slot may be
    /// staged again. Otherwise (effects of another node) the ids the slot issues next are
    /// read again from the data.
    pub staged_here: bool,
    /// The effects replace the slot's data (a snapshot): what it held is deleted first.
    pub replaces: bool,
}

/// One atomic write of replication state, for any number of slots: log entries appended,
/// dropped from an index on (never committed), or dropped up to an index (compacted);
/// committed effects applied to the slots' data; node-local records. Synced unless relaxed.
/// Log entries are opaque to the store, and never part of a slot's data (an export or a
/// hand-over does not carry them), but clearing a slot drops them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogWrite {
    pub truncated: Vec<(Slot, u64)>,
    pub appended: Vec<(Slot, u64, Vec<u8>)>,
    pub compacted: Vec<(Slot, u64)>,
    pub applied: Vec<Applied>,
    /// Slots whose staged effects were given up (their entries will never be applied here):
    /// the slot may be staged again, and its next ids are read again from the data.
    pub forgotten: Vec<Slot>,
    pub local: Vec<(String, Option<Vec<u8>>)>,
    pub relaxed: bool,
}

/// Longest a deferred batch waits for the writer when nothing else is written
/// ([`Store::defer`]).
pub const DEFER_FOR: std::time::Duration = std::time::Duration::from_millis(5);

/// The table store. Reads are point lookups and short range scans that finish in microseconds
/// on cached data; writes are queued to the writer and awaited.
pub trait Store: Send + Sync + 'static {
    /// The id of a table declared at open, by name.
    fn table(&self, name: &str) -> Option<TableId>;

    /// A row by id; `None` when absent.
    fn get(&self, table: TableId, id: RowId) -> Result<Option<Row>, StoreError>;

    /// The oldest row of `slot` whose indexed `column` equals `value`.
    fn find(
        &self,
        table: TableId,
        slot: Slot,
        column: usize,
        value: &[u8],
    ) -> Result<Option<(RowId, Row)>, StoreError> {
        Ok(self.page(table, slot, column, value, Cursor::OLDEST, 1)?.into_iter().next())
    }

    /// The ids of up to `limit` rows of `slot` whose indexed `column` equals `value`, in id
    /// order from the cursor (inclusive); reads the index only.
    fn ids(
        &self,
        table: TableId,
        slot: Slot,
        column: usize,
        value: &[u8],
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<RowId>, StoreError>;

    /// Up to `limit` rows of `slot` whose indexed `column` equals `value`, in id order from
    /// the cursor (inclusive).
    fn page(
        &self,
        table: TableId,
        slot: Slot,
        column: usize,
        value: &[u8],
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<(RowId, Row)>, StoreError>;

    /// Applies a batch atomically.
    fn write(&self, batch: Batch) -> WriteFuture {
        self.write_all(vec![batch])
    }

    /// Applies batches of several slots as one atomic commit (one fsync): all of them or
    /// none. The ids come back in order over all the batches.
    fn write_all(&self, batches: Vec<Batch>) -> WriteFuture;

    /// The slot's raw entries as they are now (one snapshot), in key order, handed to `part`
    /// in parts of about `max_bytes`; at least one part, the last maybe empty. Stops early
    /// when `part` returns `false`. Blocks while it reads.
    fn export_slot(
        &self,
        slot: Slot,
        max_bytes: usize,
        part: &mut dyn FnMut(Vec<RawEntry>) -> bool,
    ) -> Result<(), StoreError>;

    /// The slot's rows as they are now (one snapshot), sealed columns opened, in key order
    /// (table, then id), handed to `part` in parts of about `max_bytes`; at least one part,
    /// the last maybe empty. `snapshot_taken` runs once the snapshot exists, before the first
    /// part. Stops early when `part` returns `false`. Blocks while it reads.
    fn export_rows(
        &self,
        slot: Slot,
        max_bytes: usize,
        snapshot_taken: &mut dyn FnMut(),
        part: &mut dyn FnMut(Vec<ExportedRow>) -> bool,
    ) -> Result<(), StoreError>;

    /// The store's figures now, for `/metrics`.
    fn figures(&self) -> StoreFigures;

    /// Applies a raw write atomically, in order with the batches (the writer forgets what it
    /// cached of the slot). Returns no ids.
    fn write_raw(&self, write: RawWrite) -> WriteFuture;

    /// Queues a relaxed batch (a deletion that may be lost in a crash) to be committed with
    /// the writer's next group, without waking the writer for it and without waiting: within
    /// [`DEFER_FOR`] when nothing else is written. The batch comes back when it cannot wait
    /// (it is not relaxed, too many wait, or the store has no runtime for its timer); the
    /// writer logs a deferred batch that fails. A deferred batch is committed before any write
    /// queued after this returns, so [`Store::barrier`] waits for it too.
    fn defer(&self, batch: Batch) -> Result<(), Batch> {
        Err(batch)
    }

    /// Resolves once every write queued before it is committed.
    fn barrier(&self) -> WriteFuture {
        self.write_raw(RawWrite::local(Vec::new()))
    }

    /// Starts recording which keys of `slot` writes change (for an online move), dropping an
    /// earlier record. Resolves after the writes queued before: a read that starts then sees
    /// every change that is not recorded.
    fn track_changes(&self, slot: Slot) -> WriteFuture;

    /// Stops recording the changes of `slot`.
    fn untrack_changes(&self, slot: Slot);

    /// The keys of `slot` changed since its tracking started or since the last call, with
    /// their values now; [`StoreError::ChangesLost`] when the record could not follow.
    fn changes(&self, slot: Slot) -> Result<SlotDelta, StoreError>;

    /// A node-local record written by [`Store::write_raw`].
    fn local(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Whether the store holds any key of `slot`.
    fn holds(&self, slot: Slot) -> Result<bool, StoreError>;

    /// Stages batches of one slot as the writer would commit them, in order with the writes
    /// queued before, and writes nothing: for a replicated slot, whose effects are written
    /// once its replicas agree ([`Store::write_log`] applies them). Nothing else of the slot
    /// is staged until they are applied or forgotten ([`StoreError::StagedAlready`]), so each
    /// staging sees every effect before it.
    fn stage(&self, batches: Vec<Batch>) -> StageFuture;

    /// Writes replication state atomically, in order with the batches.
    fn write_log(&self, write: LogWrite) -> WriteFuture;

    /// Up to `max` log entries of `slot` from index `from`, in index order.
    fn log_entries(&self, slot: Slot, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
}
