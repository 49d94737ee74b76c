//! The TLDB-compatible table store of tim-rs on RocksDB (reference/tldb.md §5).
//!
//! Tables of named columns with auto-increment row ids, single-column equality indexes (plain
//! or unique), ordered paging by index, partial updates, deletes and atomic batches. Every key
//! starts with its slot (big-endian `u16`), so one slot is one contiguous key range; sealed
//! columns are encrypted with AES-256-GCM. Writes go through one writer thread that commits
//! concurrent batches together (group commit), so a synced write costs one fsync per group.
//!
//! For replication, the writer also stages a slot's batches without writing them (their ids
//! and effects, to be applied once the slot's replicas agree), and a `log` column family keeps
//! replication log entries by slot and index, apart from the slots' data.

mod changes;
mod keys;
mod latency;
mod read;
mod rocks;
mod schema;
mod seal;
mod store;
mod writer;

pub use keys::era_entry;
pub use latency::{Latency, LatencySnapshot, BOUNDS_US};
pub use read::read;
pub use rocks::{RocksStore, StoreConfig};
pub use schema::{ColumnDef, IndexKind, TableDef};
pub use seal::SealKey;
pub use store::{
    Applied, Batch, Cursor, ExportedRow, LogWrite, RawEntry, RawKey, RawWrite, Region, Row, RowId, Slot, SlotDelta,
    StageFuture, StagedWrite, Store, StoreError, StoreFigures, TableId, WriteFuture, DEFER_FOR,
};
