//! The store's public vocabulary: ids, rows, batches, errors and the [`Store`] trait the engine
//! programs against.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// A slot: the unit of placement. Every key of the store starts with one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u16);

/// A table's stable number, allocated once when the table is first created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId(pub u32);

/// A row id: `slot << 33 | sequence`. Unique per table across the whole store, increasing
/// within a slot, and below 2^53 (JavaScript clients keep it exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowId(pub u64);

const SEQ_BITS: u32 = 33;

impl RowId {
    /// Largest sequence number a slot can issue per table.
    pub const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;

    pub fn new(slot: Slot, seq: u64) -> Self {
        Self((u64::from(slot.0) << SEQ_BITS) | (seq & Self::MAX_SEQ))
    }
    pub fn slot(self) -> Slot {
        Slot((self.0 >> SEQ_BITS) as u16)
    }
    pub fn seq(self) -> u64 {
        self.0 & Self::MAX_SEQ
    }
    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

/// A row: one optional value per column, in the table's column order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
}

/// Where a paged index read starts and in which direction it goes; the start id is inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    Asc(RowId),
    Desc(RowId),
}

impl Cursor {
    pub const OLDEST: Cursor = Cursor::Asc(RowId(0));
    pub const NEWEST: Cursor = Cursor::Desc(RowId(u64::MAX));
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// `id_of`: a column set to the id of the batch's insert number `.1` (0-based).
    Insert {
        table: TableId,
        slot: Slot,
        row: Row,
        id_of: Option<(usize, usize)>,
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
}

/// Writes applied atomically: all of them or none.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts a row into `slot`; its id is returned by the write, in insert order.
    pub fn insert(&mut self, table: TableId, slot: Slot, row: Row) -> &mut Self {
        self.ops.push(Op::Insert { table, slot, row, id_of: None });
        self
    }

    /// Inserts a row whose `column` holds the id (8 bytes, big-endian) that this batch's
    /// insert number `earlier` (0-based, in insert order) receives: rows that refer to each
    /// other are written in one batch although ids are issued only at commit.
    pub fn insert_referring(
        &mut self,
        table: TableId,
        slot: Slot,
        row: Row,
        column: usize,
        earlier: usize,
    ) -> &mut Self {
        self.ops.push(Op::Insert { table, slot, row, id_of: Some((column, earlier)) });
        self
    }

    /// How many inserts the batch holds (the number the next insert gets).
    pub fn inserts(&self) -> usize {
        self.ops.iter().filter(|op| matches!(op, Op::Insert { .. })).count()
    }

    /// Sets the given columns of an existing row (`None` clears one); others stay.
    pub fn update(&mut self, table: TableId, id: RowId, changes: Vec<(usize, Option<Bytes>)>) -> &mut Self {
        self.ops.push(Op::Update { table, id, changes });
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
    #[error("an insert refers to insert number {0} of its batch, which does not precede it")]
    NoSuchInsert(usize),
    #[error("the data is not in memory")]
    NotInMemory,
    #[error("a read on the blocking pool did not finish (shutdown or a panic)")]
    Interrupted,
}

/// The result of [`Store::write`]: the ids of the inserted rows, in insert order, once the
/// batch is committed (and synced, when the store syncs).
pub type WriteFuture = Pin<Box<dyn Future<Output = Result<Vec<RowId>, StoreError>> + Send>>;

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
    fn write(&self, batch: Batch) -> WriteFuture;
}
